//! A model that is not an image classifier, quantized with the recipe's parts inside the user's
//! own burn-train setup.
//!
//! `cargo run --release -p quantnet-examples --example tabular_regression [-- --epochs N]
//! [--qat-epochs N] [--seed S] [--out DIR]`
//!
//! The data: the red wine quality set that the `linfa-datasets` crate ships (1,599 wines, 11
//! physico-chemical measurements, a quality score from 3 to 8), split 80/20 with a seeded
//! shuffle, features and score standardised with the training part's means and deviations.
//! The model: an MLP `11 → 64 → 64 → 1` with its own batch type, mean-squared-error loss,
//! training and validation steps, trained by the user's own burn-train `Learner`. quantnet's
//! part is the few lines marked below: list the layers (`impl QatModel`), quantize the weights
//! (ternary; the first and the last layer stay full precision), calibrate the 2-bit activation
//! quantizers on the user's batches through the user's own step, and train on with the model in
//! a `QatStep` (the per-step temperature anneal), the quantizer scales in their own
//! learning-rate group, and the temperature hook as early stopping. It prints
//! `full precision: test RMSE X` and `test RMSE (hard-quantized): Y` (in quality points).

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::{AutodiffModule, Module};
use burn::nn::LinearConfig;
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::AdamConfig;
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use burn::train::metric::LossMetric;
use burn::train::{
    InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
};
use quantnet_burn::nn::{QuantAct, QuantLinear};
use quantnet_burn::train::{GroupLr, TemperatureMetric};
use quantnet_burn::{LevelSet, QuantBackend};
use quantnet_models::QuantPolicy;
use quantnet_models::models::{QatModel, Slots};
use quantnet_models::qat::{PlainRenderer, QatConfig, QuantLrGroup};
use quantnet_models::quantize::{Temperatures, calibrate_acts_by, quantize_weights};
use quantnet_models::train::{QatStep, quantizer_scale_ids};

type B = Autodiff<Flex>;
type Inner = Flex;

const FEATURES: usize = 11;

// ---- The user's model, batch and steps (plain Burn, with quantnet's layer slots) -----------

#[derive(Module, Debug)]
struct Net<B: Backend> {
    fc1: QuantLinear<B>,
    act1: QuantAct<B>,
    fc2: QuantLinear<B>,
    act2: QuantAct<B>,
    fc3: QuantLinear<B>,
}

impl<B: Backend> Net<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            fc1: QuantLinear::float(LinearConfig::new(FEATURES, 64).init(device)),
            act1: QuantAct::float(),
            fc2: QuantLinear::float(LinearConfig::new(64, 64).init(device)),
            act2: QuantAct::float(),
            fc3: QuantLinear::float(LinearConfig::new(64, 1).init(device)),
        }
    }
}

impl<B: QuantBackend> Net<B> {
    fn output(&self, rows: Rows<B>) -> RegressionOutput<B> {
        let x = self.act1.forward(relu(self.fc1.forward(rows.x)));
        let x = self.act2.forward(relu(self.fc2.forward(x)));
        let y = self.fc3.forward(x);
        let loss = MseLoss::new().forward(y.clone(), rows.y.clone(), Reduction::Mean);
        RegressionOutput::new(loss, y, rows.y)
    }
}

impl<B: AutodiffBackend + QuantBackend> TrainStep for Net<B> {
    type Input = Rows<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, rows: Rows<B>) -> TrainOutput<RegressionOutput<B>> {
        let item = self.output(rows);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: QuantBackend> InferenceStep for Net<B> {
    type Input = Rows<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, rows: Rows<B>) -> RegressionOutput<B> {
        self.output(rows)
    }
}

/// One wine: standardised features and score.
#[derive(Clone, Debug)]
struct Wine {
    x: [f32; FEATURES],
    y: f32,
}

/// A batch of wines.
#[derive(Clone, Debug)]
struct Rows<B: Backend> {
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
}

#[derive(Clone)]
struct WineBatcher;

impl<B: Backend> Batcher<B, Wine, Rows<B>> for WineBatcher {
    fn batch(&self, items: Vec<Wine>, device: &B::Device) -> Rows<B> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|w| w.x).collect();
        let y: Vec<f32> = items.iter().map(|w| w.y).collect();
        Rows {
            x: Tensor::from_data(TensorData::new(x, [n, FEATURES]), device),
            y: Tensor::from_data(TensorData::new(y, [n, 1]), device),
        }
    }
}

// ---- quantnet: the one impl a user adds to their model -------------------------------------

impl<B: Backend> QatModel<B> for Net<B> {
    fn slots(&mut self) -> Slots<'_, B> {
        Slots::new()
            .with_linear("fc1", &mut self.fc1)
            .with_act("act1", &mut self.act1)
            .with_linear("fc2", &mut self.fc2)
            .with_act("act2", &mut self.act2)
            .with_linear("fc3", &mut self.fc3)
    }
}

// ---- The data ---------------------------------------------------------------------------------

/// The wines split 80/20 by a seeded shuffle, standardised with the training part's statistics;
/// also the score's standard deviation (to report errors in quality points).
fn wines(seed: u64) -> (Vec<Wine>, Vec<Wine>, f32) {
    let data = linfa_datasets::winequality();
    let (records, targets) = (data.records(), data.targets());
    let mut order: Vec<usize> = (0..records.nrows()).collect();
    // Fisher–Yates with xorshift64*: the same split for the same seed on every machine.
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..order.len()).rev() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        order.swap(i, (r % (i as u64 + 1)) as usize);
    }
    let train_len = order.len() * 4 / 5;
    let (train, test) = order.split_at(train_len);
    let stats = |values: &dyn Fn(usize) -> f64| {
        let n = train.len() as f64;
        let mean = train.iter().map(|&i| values(i)).sum::<f64>() / n;
        let var = train
            .iter()
            .map(|&i| (values(i) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt().max(1e-12))
    };
    let columns: Vec<(f64, f64)> = (0..FEATURES).map(|c| stats(&|i| records[[i, c]])).collect();
    let score = stats(&|i| targets[i] as f64);
    let wine = |&i: &usize| Wine {
        x: std::array::from_fn(|c| ((records[[i, c]] - columns[c].0) / columns[c].1) as f32),
        y: ((targets[i] as f64 - score.0) / score.1) as f32,
    };
    (
        train.iter().map(wine).collect(),
        test.iter().map(wine).collect(),
        score.1 as f32,
    )
}

/// Root-mean-square error of `model` on `wines`, in quality points (the inner backend: quantized
/// layers compute hard).
fn rmse(model: &Net<Inner>, wines: &[Wine], score_sd: f32) -> f64 {
    let rows: Rows<Inner> = WineBatcher.batch(wines.to_vec(), &Default::default());
    let out = InferenceStep::step(model, rows);
    let mse: f32 = out.loss.into_scalar();
    f64::from(mse).sqrt() * f64::from(score_sd)
}

// ---- The run ------------------------------------------------------------------------------------

struct Args {
    epochs: usize,
    qat_epochs: usize,
    seed: u64,
    out: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        epochs: 60,
        qat_epochs: 30,
        seed: 42,
        out: std::env::temp_dir().join("quantnet-tabular-regression"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--epochs" => args.epochs = number(value()?)? as usize,
            "--qat-epochs" => args.qat_epochs = number(value()?)? as usize,
            "--seed" => args.seed = number(value()?)?,
            "--out" => args.out = value()?.into(),
            other => {
                return Err(format!(
                    "unknown argument `{other}` (expected --epochs N, --qat-epochs N, --seed S, \
                     --out DIR)"
                ));
            }
        }
    }
    if args.epochs == 0 || args.qat_epochs == 0 {
        return Err("--epochs and --qat-epochs must be at least 1".into());
    }
    Ok(args)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let (train, test, score_sd) = wines(args.seed);
    println!(
        "red wine quality (linfa-datasets): {} training and {} test wines, score sd {score_sd:.3}",
        train.len(),
        test.len()
    );
    let batch_size = 32;
    let loaders = || {
        let train = DataLoaderBuilder::new(WineBatcher)
            .batch_size(batch_size)
            .shuffle(args.seed)
            .num_workers(1)
            .build(InMemDataset::new(train.clone()));
        let valid = DataLoaderBuilder::new(WineBatcher)
            .batch_size(test.len())
            .num_workers(1)
            .build(InMemDataset::new(test.clone()));
        (train, valid)
    };
    let device = Default::default();
    <B as Backend>::seed(&device, args.seed);
    let _ = std::fs::remove_dir_all(&args.out);

    // The user's full-precision training, unchanged.
    let (train_loader, valid_loader) = loaders();
    let fp = SupervisedTraining::new(args.out.join("fp"), train_loader, valid_loader)
        .metrics((LossMetric::new(),))
        .renderer(PlainRenderer::new("full precision"))
        .num_epochs(args.epochs)
        .launch(Learner::new(
            Net::<B>::new(&device),
            AdamConfig::new().init(),
            1e-3,
        ));
    let mut model = fp.model;
    let fp_rmse = rmse(&model, &test, score_sd);
    println!("full precision: test RMSE {fp_rmse:.4}");

    // ---- quantnet: the recipe's parts ------------------------------------------------------
    let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), Some(LevelSet::unsigned(2)?));
    let temps = Temperatures::default();
    let steps = train.len().div_ceil(batch_size);
    let hook = QatConfig::new(policy.clone())
        .hook(&temps)
        .over(args.qat_epochs, steps);
    hook.start_at(0);
    let weights = quantize_weights(&mut model, &policy, &temps)?;
    let calibration: Vec<Rows<Inner>> = (train.chunks(200))
        .map(|c| WineBatcher.batch(c.to_vec(), &device))
        .collect();
    let acts = calibrate_acts_by(
        &mut model,
        &policy,
        &temps,
        &device,
        calibration,
        |m, rows| {
            let n = rows.y.dims()[0];
            drop(InferenceStep::step(m, rows));
            n
        },
    )?;
    println!(
        "quantized {weights} weight layer(s) to ternary, calibrated {acts} 2-bit activation \
         quantizer(s); before fine-tuning: test RMSE {:.4}",
        rmse(&model, &test, score_sd)
    );
    let step = QatStep::new(Net::<B>::from_inner(model)).with_hook(hook.clone());
    let optimizer = GroupLr::new(
        AdamConfig::new().init(),
        |m: &QatStep<B, Net<B>>| quantizer_scale_ids(m, QuantLrGroup::All),
        100.0,
    );
    // ---- back to the user's training, with the model in its `QatStep` -----------------------
    let (train_loader, valid_loader) = loaders();
    let quantized = SupervisedTraining::new(args.out.join("qat"), train_loader, valid_loader)
        .metrics((LossMetric::new(),))
        .metric_train_numeric(TemperatureMetric::new("Weight temperature", &temps.weights))
        .metric_train_numeric(TemperatureMetric::new("Act temperature", &temps.acts))
        .early_stopping(hook)
        .renderer(PlainRenderer::new("quantized"))
        .num_epochs(args.qat_epochs)
        .launch(Learner::new(step, optimizer, 1e-4));
    let model = quantized.model.into_model();
    let hard = rmse(&model, &test, score_sd);
    println!("test RMSE (hard-quantized): {hard:.4}");
    println!(
        "the hard-quantized error is {:+.1} % of the full-precision error",
        100.0 * (hard / fp_rmse - 1.0)
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
