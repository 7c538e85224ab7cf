//! `quantnet fit`: an activation quantizer fitted to real images, end to end.
//!
//! The steps are the paper's for an activation quantizer (paper-spec §3–§4): calibrate a
//! [`QuantAct`] on a sample of training images (`β = 5p/(4q)`, `α = 1/β`, k-means thresholds in
//! the `β·x` domain, frozen), then learn `α` and `β` with Burn's Adam through the soft quantizer
//! while the temperature rises linearly each epoch. The objective here is the reconstruction error
//! `mean((Q(x) − x)²)` of the pixel intensities in [0, 1] (a network would use its task loss). The
//! score is always the *hard* quantizer's error, compared with the uniform min–max quantizer of
//! the same levels.

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use quantnet_burn::nn::QuantAct;
use quantnet_burn::{
    LevelSet, QuantParams, QuantizerConfig, Temperature, TemperatureSchedule, ThresholdInit,
    hard_quantize,
};
use quantnet_models::data::Split;

use quantnet_burn::QatBackend;

use crate::backend::{WithBackend, dispatch};
use crate::cli::FitArgs;

struct FitJob {
    levels: LevelSet,
    values: Vec<f32>,
    image_size: usize,
    epochs: usize,
    schedule: TemperatureSchedule,
    lr: f64,
    batch_size: usize,
}

fn mse<B: Backend>(a: Tensor<B, 1>, b: Tensor<B, 1>) -> Result<f32> {
    scalar((a - b).powi_scalar(2).mean())
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> Result<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a result back from the device: {e:?}"))
        .map(|v| v[0])
}

/// `(α, β)` of a quantizer, as positive numbers (the quantizer uses their magnitudes).
fn scales<B: Backend>(act: &QuantAct<B>) -> Result<(f32, f32)> {
    let q = act.quantizer.as_ref().context("the slot has a quantizer")?;
    Ok((scalar(q.alpha.val().abs())?, scalar(q.beta.val().abs())?))
}

impl WithBackend for FitJob {
    type Output = ();

    fn run<B: QatBackend>(self, device: B::Device) -> Result<()> {
        let levels = &self.levels;
        let temperature = Temperature::new(self.schedule.at(0));
        let config =
            QuantizerConfig::activations(levels.clone()).with_threshold_init(ThresholdInit::KMeans);
        let inner =
            QuantAct::<B::InnerBackend>::calibrate(&config, &self.values, &temperature, &device)
                .context("calibrating")?;
        let mut act = <QuantAct<B> as AutodiffModule<B>>::from_inner(inner);
        let q = self.values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (alpha, beta) = scales(&act)?;
        let thresholds = act
            .quantizer
            .as_ref()
            .map(|q| q.thresholds.val())
            .context("the slot has a quantizer")?
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the thresholds: {e:?}"))?;
        println!("calibration: q = max|x| = {q}, beta = {beta:.4}, alpha = {alpha:.4}");
        println!("k-means thresholds (beta*x domain): {thresholds:?}");

        let all = Tensor::<B::InnerBackend, 1>::from_data(
            TensorData::new(self.values.clone(), [self.values.len()]),
            &device,
        );
        // On the inner backend the quantizer is hard.
        let hard_mse = |act: &QuantAct<B>| mse(act.valid().forward(all.clone()), all.clone());
        // The uniform min–max quantizer of the same levels: step q/(2^k − 1), round to nearest.
        let top = levels.levels()[levels.len() - 1];
        let p = QuantParams::<B::InnerBackend>::new(
            levels,
            q / top,
            top / q,
            &levels.midpoint_thresholds(),
            &device,
        )?;
        let uniform = mse(hard_quantize(all.clone(), &p), all.clone())?;
        let initial = hard_mse(&act)?;
        println!(
            "hard MSE at initialisation: {initial:.6} (uniform min-max quantizer: {uniform:.6})"
        );
        println!("| epoch | T | alpha | beta | soft MSE | hard MSE |");
        println!("|---|---|---|---|---|---|");

        let mut optim = AdamConfig::new().init();
        let per_batch = self.batch_size * self.image_size;
        for epoch in 0..self.epochs {
            let t = self.schedule.at(epoch);
            temperature.set(t);
            let mut soft_total = 0.0f64;
            for chunk in self.values.chunks(per_batch) {
                let x = Tensor::<B, 1>::from_data(
                    TensorData::new(chunk.to_vec(), [chunk.len()]),
                    &device,
                );
                // On the autodiff backend the quantizer is soft.
                let loss = (act.forward(x.clone()) - x).powi_scalar(2).mean();
                soft_total += f64::from(scalar(loss.clone().inner())?) * chunk.len() as f64;
                let grads = GradientsParams::from_grads(loss.backward(), &act);
                act = optim.step(self.lr, act, grads);
            }
            let (alpha, beta) = scales(&act)?;
            if !(alpha.is_finite() && beta.is_finite()) {
                bail!(
                    "training diverged at epoch {epoch} (alpha = {alpha}, beta = {beta}); lower --lr"
                );
            }
            let hard = hard_mse(&act)?;
            let soft = soft_total / self.values.len() as f64;
            println!(
                "| {} | {t} | {alpha:.4} | {beta:.4} | {soft:.6} | {hard:.6} |",
                epoch + 1
            );
        }
        let fitted = hard_mse(&act)?;
        println!(
            "hard MSE: {fitted:.6} after fitting, {initial:.6} at initialisation, {uniform:.6} for the uniform quantizer ({:+.1}% vs uniform)",
            100.0 * (fitted / uniform - 1.0)
        );
        Ok(())
    }
}

pub(crate) fn run(args: FitArgs) -> Result<()> {
    let levels: LevelSet = args.levels.parse().context("parsing --levels")?;
    if levels.levels()[0] < 0.0 {
        bail!(
            "--levels {levels}: pixel intensities are non-negative; use an unsigned set such as u2"
        );
    }
    let schedule = TemperatureSchedule::linear(args.temperature);
    schedule.validate().context("checking --temperature")?;
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be finite and greater than 0, got {}", args.lr);
    }
    if args.batch_size == 0 || args.samples == 0 || args.epochs == 0 {
        bail!("--samples, --epochs and --batch-size must be at least 1");
    }
    let dir = super::data::locate_or_fetch(args.dataset, args.data_dir.as_deref())?;
    let train = args.dataset.load(&dir, Split::Train)?;
    let samples = args.samples.min(train.len());
    eprintln!(
        "{} training images from {}; sampling {samples} (seed {})",
        train.len(),
        dir.display(),
        args.seed
    );
    let values = quantnet_models::data::sample_indices(train.len(), samples, args.seed)
        .into_iter()
        .flat_map(|i| train.image(i).iter().map(|&p| f32::from(p) / 255.0))
        .collect();
    let job = FitJob {
        levels,
        values,
        image_size: train.channels * train.rows * train.cols,
        epochs: args.epochs,
        schedule,
        lr: f64::from(args.lr),
        batch_size: args.batch_size,
    };
    dispatch(args.backend, job)
}
