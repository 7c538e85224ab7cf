//! `quantnet fit`: an activation quantizer fitted to real images, end to end.
//!
//! The steps are the paper's for an activation quantizer (paper-spec §3–§4): calibrate on a
//! sample of training images (`β = 5p/(4q)`, `α = 1/β`, k-means thresholds in the `β·x` domain,
//! frozen), then learn `α` and `β` through the soft quantizer while the temperature rises
//! linearly each epoch. The objective here is the reconstruction error `mean((Q(x) − x)²)` of the
//! pixel intensities in [0, 1] (a network would use its task loss). The score is always the *hard*
//! quantizer's error, compared with the uniform min–max quantizer of the same levels.

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use quantnet_burn::init::{self, ThresholdInit};
use quantnet_burn::{
    GradientMode, LevelSet, QuantBackend, QuantParams, TemperatureSchedule, hard_quantize,
    soft_quantize,
};
use quantnet_models::data::{MnistKind, Split, mnist};

use crate::backend::{WithBackend, dispatch};
use crate::cli::{Dataset, FitArgs};

struct FitJob {
    levels: LevelSet,
    values: Vec<f32>,
    image_size: usize,
    epochs: usize,
    schedule: TemperatureSchedule,
    lr: f32,
    batch_size: usize,
}

/// Adam on one scalar (β1 = 0.9, β2 = 0.999).
struct Adam {
    m: f64,
    v: f64,
    t: i32,
}

impl Adam {
    fn step(&mut self, value: f32, grad: f32, lr: f32) -> f32 {
        let g = f64::from(grad);
        self.t += 1;
        self.m = 0.9 * self.m + 0.1 * g;
        self.v = 0.999 * self.v + 0.001 * g * g;
        let m = self.m / (1.0 - 0.9f64.powi(self.t));
        let v = self.v / (1.0 - 0.999f64.powi(self.t));
        (f64::from(value) - f64::from(lr) * m / (v.sqrt() + 1e-8)) as f32
    }
}

fn mse<B: burn::tensor::backend::Backend>(a: Tensor<B, 1>, b: Tensor<B, 1>) -> Result<f32> {
    scalar((a - b).powi_scalar(2).mean())
}

fn scalar<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> Result<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a result back from the device: {e:?}"))
        .map(|v| v[0])
}

impl WithBackend for FitJob {
    type Output = ();

    fn run<B>(self, device: B::Device) -> Result<()>
    where
        B: AutodiffBackend + QuantBackend,
        B::InnerBackend: QuantBackend,
    {
        let levels = &self.levels;
        let q = self.values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (mut alpha, mut beta) = init::initial_scales(levels, q).context("calibrating β")?;
        let scaled: Vec<f32> = self.values.iter().map(|v| v * beta).collect();
        let thresholds = init::thresholds(&scaled, levels, ThresholdInit::KMeans, None)?;
        println!("calibration: q = max|x| = {q}, beta = {beta:.4}, alpha = {alpha:.4}");
        println!("k-means thresholds (beta*x domain): {thresholds:?}");

        let all = Tensor::<B, 1>::from_data(
            TensorData::new(self.values.clone(), [self.values.len()]),
            &device,
        );
        let hard_mse = |alpha: f32, beta: f32, thresholds: &[f32]| -> Result<f32> {
            let p = QuantParams::<B>::new(levels, alpha, beta, thresholds, &device)?;
            mse(hard_quantize(all.clone(), &p), all.clone())
        };
        // The uniform min–max quantizer of the same levels: step q/(2^k − 1), round to nearest.
        let top = levels.levels()[levels.len() - 1];
        let uniform = hard_mse(q / top, top / q, &levels.midpoint_thresholds())?;
        let initial = hard_mse(alpha, beta, &thresholds)?;
        println!(
            "hard MSE at initialisation: {initial:.6} (uniform min-max quantizer: {uniform:.6})"
        );
        println!("| epoch | T | alpha | beta | soft MSE | hard MSE |");
        println!("|---|---|---|---|---|---|");

        let per_batch = self.batch_size * self.image_size;
        let batches = self.values.len().div_ceil(per_batch);
        let (mut adam_alpha, mut adam_beta) = (
            Adam {
                m: 0.0,
                v: 0.0,
                t: 0,
            },
            Adam {
                m: 0.0,
                v: 0.0,
                t: 0,
            },
        );
        for epoch in 0..self.epochs {
            let t = self.schedule.at(epoch);
            let mut soft_total = 0.0f64;
            for b in 0..batches {
                let chunk =
                    &self.values[b * per_batch..((b + 1) * per_batch).min(self.values.len())];
                let x = Tensor::<B, 1>::from_data(
                    TensorData::new(chunk.to_vec(), [chunk.len()]),
                    &device,
                );
                let mut p = QuantParams::<B>::new(levels, alpha, beta, &thresholds, &device)?;
                p.alpha = p.alpha.require_grad();
                p.beta = p.beta.require_grad();
                let loss = (soft_quantize(x.clone(), &p, t, GradientMode::Exact) - x)
                    .powi_scalar(2)
                    .mean();
                let grads = loss.backward();
                soft_total += f64::from(scalar(loss.inner())?) * chunk.len() as f64;
                let grad = |t: &Tensor<B, 1>| -> Result<f32> {
                    scalar(t.grad(&grads).context("α and β require gradients")?)
                };
                let (ga, gb) = (grad(&p.alpha)?, grad(&p.beta)?);
                alpha = adam_alpha.step(alpha, ga, self.lr);
                beta = adam_beta.step(beta, gb, self.lr);
                if !(alpha.is_finite() && beta.is_finite()) {
                    bail!(
                        "training diverged at epoch {epoch} (alpha = {alpha}, beta = {beta}); lower --lr"
                    );
                }
            }
            let hard = hard_mse(alpha, beta, &thresholds)?;
            let soft = soft_total / self.values.len() as f64;
            println!(
                "| {} | {t} | {alpha:.4} | {beta:.4} | {soft:.6} | {hard:.6} |",
                epoch + 1
            );
        }
        let fitted = hard_mse(alpha, beta, &thresholds)?;
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
    let kind = match args.dataset {
        Dataset::Mnist => MnistKind::Mnist,
        Dataset::FashionMnist => MnistKind::FashionMnist,
    };
    let dir = mnist::locate(kind, args.data_dir.as_deref())?;
    let train = mnist::load(&dir, Split::Train)?;
    let samples = args.samples.min(train.len());
    eprintln!(
        "{} training images from {}; sampling {samples} (seed {})",
        train.len(),
        dir.display(),
        args.seed
    );
    // A seeded partial Fisher–Yates shuffle picks the sample.
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut state = args
        .seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in 0..samples {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = i + (state >> 33) as usize % (train.len() - i);
        order.swap(i, j);
    }
    let values = order[..samples]
        .iter()
        .flat_map(|&i| train.image(i).iter().map(|&p| f32::from(p) / 255.0))
        .collect();
    let job = FitJob {
        levels,
        values,
        image_size: train.rows * train.cols,
        epochs: args.epochs,
        schedule,
        lr: args.lr,
        batch_size: args.batch_size,
    };
    dispatch(args.backend, job)
}
