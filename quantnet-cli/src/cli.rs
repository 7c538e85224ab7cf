//! Command-line definitions (clap).

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::backend::{BackendName, DeviceList};

/// Quantization Networks (Yang et al., CVPR 2019) for Burn.
#[derive(Debug, Parser)]
#[command(name = "quantnet", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The command line as parsed: [`command`]'s.
pub(crate) fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The command line, with the help of every `train` flag that sets a run-config field ending
/// in the value the field takes when the flag is not given, read from `RunConfig::default()`
/// (whose recipe values are the library's `QatConfig`'s): the defaults are written once, in
/// the config types, not in the help texts.
pub(crate) fn command() -> clap::Command {
    let defaults = match toml::Table::try_from(crate::run::RunConfig::default()) {
        Ok(table) => table,
        Err(_) => return Cli::command(),
    };
    Cli::command().mut_subcommand("train", |train| {
        let ids: Vec<String> = train
            .get_arguments()
            .filter(|a| !matches!(a.get_action(), clap::ArgAction::SetTrue))
            .map(|a| a.get_id().to_string())
            .collect();
        ids.into_iter()
            .fold(train, |train, id| match defaults.get(&id) {
                Some(value) => train.mut_arg(id, |arg| with_default(arg, value)),
                None => train,
            })
    })
}

/// `arg` with `[default: VALUE]` after its help.
fn with_default(arg: clap::Arg, value: &toml::Value) -> clap::Arg {
    let note = match value {
        toml::Value::String(text) => format!("[default: {text}]"),
        // As Rust writes it (100, 0.001), which is how the flag takes it; TOML writes 100.0.
        // An f32 field (99.9) reads back from TOML as the f64 nearest it: shown as the f32.
        toml::Value::Float(x) if f64::from(*x as f32) == *x => format!("[default: {}]", *x as f32),
        toml::Value::Float(x) => format!("[default: {x}]"),
        other => format!("[default: {other}]"),
    };
    let help = arg
        .get_help()
        .map_or_else(|| note.clone(), |h| format!("{h} {note}"));
    let long = arg.get_long_help().map(|h| format!("{h}\n\n{note}"));
    let arg = arg.help(help);
    match long {
        Some(long) => arg.long_help(long),
        None => arg,
    }
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// Print (or plot) the soft and hard quantizer over a range of inputs.
    ///
    /// The CSV has the header `x,soft,hard,dsoft_dx`; `dsoft_dx` is the derivative the backward
    /// pass uses in the chosen gradient mode.
    Quantizer(QuantizerArgs),
    /// Fit an activation quantizer to real images: calibrate beta = 5p/4q and k-means thresholds
    /// on sampled training images, then learn alpha and beta through the soft quantizer with a
    /// rising temperature, and report the hard-quantization error against a uniform quantizer.
    Fit(FitArgs),
    /// Train a model on real data: full precision, or quantized from a full-precision start
    /// (pretraining first, or `--from` a finished run). Writes a run directory with config.toml,
    /// checkpoints, metrics.csv, model.mpk and summary.json.
    Train(TrainArgs),
    /// Evaluate a run's final model on the whole test set: hard-quantized accuracy (the model's
    /// accuracy) and soft accuracy (a diagnostic).
    Eval(EvalArgs),
    /// Export a run's final model as a .qnet file (quantized weights as bit-packed level codes,
    /// the rest as float32, with a checksum; prints the size report), a Burn record or ONNX.
    Export(ExportArgs),
    /// Print a run's model: per-layer precision, level sets, temperatures, alpha and beta.
    Info(InfoArgs),
    /// Data sets: `quantnet data fetch NAME` downloads and verifies one.
    Data(DataArgs),
    /// Time the quantizer's forward+backward against a same-size copy and the naive composition
    /// of n sigmoids, side by side, and print GB/s and ratios; `bench train`: a model's training
    /// step and inference, full precision and quantized, per backend.
    Bench(BenchArgs),
    /// Run a grid of training runs from a TOML file (`[fixed]` run-config fields, `[axes]` lists),
    /// one after the other and resumable; writes results.csv, results.md (mean ± sd over seeds,
    /// full precision beside each row) and accuracy-vs-bits.png.
    Sweep(SweepArgs),
    /// Draw a run's pictures: training.png (per-epoch hard accuracy, soft-hard gap, loss,
    /// temperature) and weights.png (each quantized weight layer's histogram with its levels
    /// and thresholds, at initialisation and at the end).
    Plot(PlotArgs),
    /// Classify images with an exported model (.qnet) on the integer engine: one line per image
    /// with its predicted class and score.
    Infer(InferArgs),
    /// Run a trained detector (ssd-small, ssd300) on images and write each with its detected
    /// boxes drawn (NAME.detections.png) and listed (NAME.detections.csv, pixels).
    Detect(DetectArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct DetectArgs {
    /// The images (any size: each is resized to the detector's input).
    #[arg(required = true, value_name = "IMAGE")]
    pub(crate) images: Vec<PathBuf>,
    /// The detector run directory whose model.mpk runs.
    #[arg(
        long = "from",
        value_name = "RUN_DIR",
        required_unless_present = "model_file"
    )]
    pub(crate) run: Option<PathBuf>,
    /// An exported detector (.qnet, or a Burn-native .mpk) to run instead.
    #[arg(long, conflicts_with = "run")]
    pub(crate) model_file: Option<PathBuf>,
    /// Boxes scoring below this are not drawn.
    #[arg(long, default_value_t = 0.3)]
    pub(crate) min_score: f32,
    /// Cut each image into PIXELS × PIXELS windows, each run through the detector, their boxes
    /// merged by NMS (default: the run's --tile; none for an exported model).
    #[arg(long, value_name = "PIXELS")]
    pub(crate) tile: Option<u32>,
    /// Folder for the pictures and lists.
    #[arg(long, default_value = "detections")]
    pub(crate) out: PathBuf,
    /// Where it runs.
    #[command(flatten)]
    pub(crate) target: DeviceArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SweepArgs {
    /// The grid files (TOML): a `[fixed]` table of run-config fields shared by every cell and an
    /// `[axes]` table of lists, e.g. method = ["qn", "ste"], seed = [1, 2]; several grids make one
    /// sweep (for instance methods that cannot share a grid's precisions).
    #[arg(required = true, value_name = "GRID")]
    pub(crate) grids: Vec<PathBuf>,
    /// Output folder: cells/NAME (one run directory per cell, with NAME.toml and NAME.log),
    /// results.csv, results.md, accuracy-vs-bits.png. Finished cells are skipped on a rerun.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Backend every cell trains on.
    #[arg(long, value_enum, default_value_t = BackendName::Cpu)]
    pub(crate) backend: BackendName,
    /// Check the grid and list its cells without running anything.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PlotArgs {
    /// The run directory.
    pub(crate) run: PathBuf,
    /// Folder for the pictures (default: the run directory).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct QuantizerArgs {
    /// Target levels: 1 (binary), 2 (ternary), 3pm2, 3pm4, 5, uN (unsigned N-bit), sN (signed
    /// N-bit, symmetric), or an explicit list like -4,-2,-1,0,1,2,4.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) levels: String,
    /// Temperature T of the soft quantizer.
    #[arg(long, default_value_t = 10.0, allow_hyphen_values = true)]
    pub(crate) temperature: f32,
    /// Output scale alpha.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub(crate) alpha: f32,
    /// Input scale beta.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub(crate) beta: f32,
    /// Thresholds b_1,...,b_n in the beta*x domain (default: midpoints between adjacent levels).
    #[arg(long, allow_hyphen_values = true, value_delimiter = ',')]
    pub(crate) thresholds: Option<Vec<f32>>,
    /// Smallest x.
    #[arg(long, default_value_t = -2.0, allow_hyphen_values = true)]
    pub(crate) x_min: f32,
    /// Largest x.
    #[arg(long, default_value_t = 2.0, allow_hyphen_values = true)]
    pub(crate) x_max: f32,
    /// Number of evenly spaced points from x-min to x-max.
    #[arg(long, default_value_t = 401)]
    pub(crate) points: usize,
    /// Gradient mode of the backward pass.
    #[arg(long, value_enum, default_value_t = Gradient::Exact)]
    pub(crate) gradient: Gradient,
    /// Print the CSV to stdout.
    #[arg(long)]
    pub(crate) csv: bool,
    /// Draw soft curves at several temperatures over the hard staircase into this PNG file.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// Backend to compute on.
    #[arg(long, value_enum, default_value_t = BackendName::Cpu)]
    pub(crate) backend: BackendName,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// One training step (forward, cross-entropy, backward, Adam) of a real model on synthetic
    /// input of its shape, full precision and quantized, and its hard-quantized inference, per
    /// backend side by side.
    Train(BenchTrainArgs),
    /// Inference of an exported model (or a freshly quantized one of an architecture) on the
    /// integer engine, the engine's f32 mode and Burn's hard forward, per batch size and thread
    /// count, side by side.
    Infer(BenchInferArgs),
}

/// Which engine runs an exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EngineName {
    /// Burn's hard-quantized forward of the decoded model (the backend of --backend).
    Burn,
    /// quantnet-infer on integer codes (CPU).
    Int,
    /// quantnet-infer's f32 mode: the same loops on floats (CPU).
    F32,
}

impl EngineName {
    pub(crate) fn name(self) -> &'static str {
        match self {
            EngineName::Burn => "burn",
            EngineName::Int => "int",
            EngineName::F32 => "f32",
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchInferArgs {
    /// The exported model to time.
    #[arg(long, required_unless_present = "model")]
    pub(crate) model_file: Option<PathBuf>,
    /// Or an architecture, freshly initialised and quantized (--weights, --acts; activations
    /// calibrated on random input) at its usual input shape.
    #[arg(long, conflicts_with = "model_file")]
    pub(crate) model: Option<quantnet_models::Arch>,
    /// Weight levels for --model.
    #[arg(long, default_value = "2", allow_hyphen_values = true)]
    pub(crate) weights: crate::run::WeightPrecision,
    /// Activation levels for --model.
    #[arg(long, default_value = "2", allow_hyphen_values = true)]
    pub(crate) acts: crate::run::ActPrecision,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64])]
    pub(crate) batch: Vec<usize>,
    /// Thread counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    pub(crate) threads: Vec<usize>,
    /// Engines to time.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [EngineName::Int, EngineName::F32, EngineName::Burn])]
    pub(crate) engine: Vec<EngineName>,
    /// Timed runs per cell, interleaved across engines (the median is reported).
    #[arg(long, default_value_t = 25)]
    pub(crate) runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    pub(crate) warmup: usize,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the integer engine's multiply-adds/s per layer (batch = the largest --batch, one
    /// thread).
    #[arg(long)]
    pub(crate) layers: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct InferArgs {
    /// The exported model (.qnet).
    #[arg(long)]
    pub(crate) model_file: PathBuf,
    /// Image files (PNG, JPEG): resized (shorter side) and centre-cropped to the model's input,
    /// grey or RGB as the model takes, normalised as its data set.
    #[arg(required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// The data set whose normalisation applies (default: the one the file records).
    #[arg(long)]
    pub(crate) dataset: Option<quantnet_models::data::Dataset>,
    /// Run on floats (the engine's f32 mode) instead of integers.
    #[arg(long)]
    pub(crate) f32: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchTrainArgs {
    /// The model: lenet5, tfc, sfc, lfc, vgg-small, resnet20, resnet18, resnet50, alexnet-bn (at
    /// MNIST's input for LeNet-5 and the FC nets, CIFAR-10's for VGG-small and ResNet-20,
    /// ImageNet's for the rest).
    #[arg(long, default_value = "lenet5")]
    pub(crate) model: quantnet_models::Arch,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
    /// Timed steps (the median is reported, with the fastest and slowest).
    #[arg(long, default_value_t = 10)]
    pub(crate) steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: usize,
    /// Weight levels of the quantized step (`fp`: only the full-precision step is measured).
    #[arg(long, default_value = "2", allow_hyphen_values = true)]
    pub(crate) weights: crate::run::WeightPrecision,
    /// Activation levels of the quantized step.
    #[arg(long, default_value = "2", allow_hyphen_values = true)]
    pub(crate) acts: crate::run::ActPrecision,
    /// Backends to time (each must be compiled in).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BackendName::Cpu])]
    pub(crate) backend: Vec<BackendName>,
    /// One JSON object per line (backend × precision) instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Step as one rank of an MPI job (`mpirun -np N quantnet bench train --distributed mpi`):
    /// each rank steps `--batch / N` images and the gradients are all-reduced; rank 0 prints
    /// its times and what the all-reduce sent and cost.
    #[arg(long, value_enum)]
    pub(crate) distributed: Option<Distributed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Gradient {
    /// The exact derivative at temperature T.
    Exact,
    /// The official code's weight rule: sigmoid derivative at T = 1, scaled by min(T, 2000).
    Official,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    /// What else to time (without one: the quantizer op).
    #[command(subcommand)]
    pub(crate) command: Option<BenchCommand>,
    /// Backends to time (each must be compiled in).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BackendName::Cpu])]
    pub(crate) backend: Vec<BackendName>,
    /// Tensor sizes in elements.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize << 20, 1 << 24])]
    pub(crate) sizes: Vec<usize>,
    /// Timed steps per path (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Untimed warm-up steps per path (shader compilation, allocator warm-up).
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: usize,
}

#[derive(Debug, clap::Args)]
pub(crate) struct FitArgs {
    /// Data set whose training images are quantized.
    #[arg(long, default_value = "fashion-mnist")]
    pub(crate) dataset: quantnet_models::data::Dataset,
    /// Folder holding the data set (or a folder with a `mnist`/`fashion-mnist` subfolder).
    /// Default: $QUANTNET_DATA, ../shared/data, ./data, ~/.cache/quantnet/data.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Target levels (activation sets are unsigned: u1, u2, ...).
    #[arg(long, default_value = "u2", allow_hyphen_values = true)]
    pub(crate) levels: String,
    /// Images sampled for calibration and fitting (the paper samples 1000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) samples: usize,
    /// Epochs over the sample.
    #[arg(long, default_value_t = 8)]
    pub(crate) epochs: usize,
    /// T0 of the linear schedule T = T0 (epoch + 1).
    #[arg(long, default_value_t = 10.0, allow_hyphen_values = true)]
    pub(crate) temperature: f32,
    /// Adam learning rate for alpha and beta.
    #[arg(long, default_value_t = 0.01, allow_hyphen_values = true)]
    pub(crate) lr: f32,
    /// Images per step.
    #[arg(long, default_value_t = 50)]
    pub(crate) batch_size: usize,
    /// Seed of the image sample.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Backend to compute on.
    #[arg(long, value_enum, default_value_t = BackendName::Cpu)]
    pub(crate) backend: BackendName,
}

/// Every run-config field as an optional flag: serialised (given flags only) in `config.toml`'s
/// form and merged over the config file, so a flag and a config entry are parsed the same way.
#[derive(Debug, Default, clap::Args, serde::Serialize)]
pub(crate) struct RunOptions {
    /// Architecture: lenet5, tfc, sfc, lfc, vgg-small, resnet20, resnet18, resnet50, alexnet-bn.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) model: Option<quantnet_models::Arch>,
    /// Data set: mnist, fashion-mnist, cifar10, imagenet (an image folder).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dataset: Option<quantnet_models::data::Dataset>,
    /// Folder holding the data set (or a parent of it); without it the data set is looked for
    /// in $QUANTNET_DATA, ../shared/data, ./data and ~/.cache/quantnet/data.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Weight levels: fp, 1 (binary), 2 (ternary), 3pm2, 3pm4, 5, sN, or a list like -4,-2,0,2,4.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) weights: Option<crate::run::WeightPrecision>,
    /// Activation levels: 32 (full precision), N (unsigned N-bit), or a level set.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) acts: Option<crate::run::ActPrecision>,
    /// Quantize the first conv and the last linear too (the paper keeps them full precision).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) quantize_all: bool,
    /// Gradient rule of the weight quantizers: exact, official (sigmoid derivative at T = 1
    /// times min(T, 2000), the official code's) or official:CAP (gain min(T, CAP)).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", with = "text_option")]
    pub(crate) gradient: Option<quantnet_burn::GradientMode>,
    /// Gradient rule of the activation quantizers (same forms; official:1 is the sigmoid
    /// derivative at T = 1 without gain, a smooth straight-through estimator).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", with = "text_option")]
    pub(crate) act_gradient: Option<quantnet_burn::GradientMode>,
    /// The weights during activation calibration: soft (as training will see them at its first
    /// step) or hard.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) calibrate: Option<quantnet_models::qat::CalibrationWeights>,
    /// How each activation range is set from the calibration sample: mse (the range whose hard
    /// quantization error is least, for midpoint thresholds: with --act-thresholds kmeans it is
    /// optimal for a slightly different quantizer) or percentile (see --act-percentile).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) act_range: Option<crate::run::ActRange>,
    /// Re-estimate batch-norm statistics (200 batches, no gradient) for the quantized network
    /// before calibration and before the hard evaluation and saving: true or false (models
    /// without batch norm are unaffected).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bn_reestimate: Option<bool>,
    /// Training epochs (quantized, or full precision with --weights fp --acts 32).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) epochs: Option<usize>,
    /// Full-precision epochs before quantizing (without --from).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pretrain_epochs: Option<usize>,
    /// Images per step.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batch_size: Option<usize>,
    /// Learning rate (default 1e-3 for full precision, 1e-4 for quantized fine-tuning).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lr: Option<f64>,
    /// Learning rate of the full-precision pretraining.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pretrain_lr: Option<f64>,
    /// Learning-rate schedule of each phase, per step: const, cosine (down to 0 at the last
    /// step) or `step:EPOCHS,GAMMA[,FIRST]` (times GAMMA every EPOCHS epochs, from epoch FIRST;
    /// default FIRST = EPOCHS).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lr_schedule: Option<quantnet_burn::train::LrSchedule>,
    /// L2 weight decay (every trained parameter, quantizer scales included: those in the
    /// --quant-lr-mult group decay at that multiple of the rate too).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) weight_decay: Option<f64>,
    /// Weight temperature schedule: anneal:T0,TEND (geometric over the run, raised every
    /// step), linear:T0 (the paper's T0·(epoch+1)), exp:T0,GROWTH or const:T, optionally
    /// ,cap=C.
    #[arg(long = "temperature", value_name = "SCHEDULE")]
    #[serde(skip_serializing_if = "Option::is_none", with = "text_option")]
    pub(crate) weights_temperature: Option<quantnet_burn::TemperatureSchedule>,
    /// Activation temperature schedule (same forms).
    #[arg(long = "act-temperature", value_name = "SCHEDULE")]
    #[serde(skip_serializing_if = "Option::is_none", with = "text_option")]
    pub(crate) acts_temperature: Option<quantnet_burn::TemperatureSchedule>,
    /// Training images used to calibrate the activation quantizers.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) calibration_images: Option<usize>,
    /// Clip the gradient L2 norm (the paper: 5 for weights only, 20 with activations).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) clip: Option<f32>,
    /// Where --clip measures the norm: wq (one global norm over the soft-quantized weights'
    /// gradients and the other parameters', as the official code) or w (Burn's
    /// optimizer clipping: each parameter tensor's gradient clipped to the norm on its own, not a
    /// global norm). Without quantized weights, clipping is always Burn's per-tensor clipping.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) clip_in: Option<quantnet_models::qat::ClipDomain>,
    /// Learning-rate multiplier of the qn quantizers' alpha and beta (Adam steps every parameter
    /// by about the learning rate, and beta is 3-25); see --quant-lr-group. The baselines'
    /// learned scales (lsq, pact, dsq) train at the base learning rate.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) quant_lr_mult: Option<f64>,
    /// Whose scales take --quant-lr-mult: all (every quantizer's) or acts (the activation
    /// quantizers' only). Binary weights' β is never trained: their hard function ignores it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) quant_lr_group: Option<quantnet_models::qat::QuantLrGroup>,
    /// Optimizer: adam, or sgd (momentum 0.9, as the paper).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) optimizer: Option<quantnet_models::qat::OptimizerKind>,
    /// What trains: joint (everything) or acts (only the activation quantizers'
    /// alpha and beta: the paper's second phase, after a weights-only run given with --from).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) phase: Option<quantnet_models::qat::TrainPhase>,
    /// Calibrate activation ranges at this percentile with --act-range percentile (100 is the
    /// maximum, the paper's rule).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) act_percentile: Option<f32>,
    /// Activation thresholds: uniform or kmeans (the paper).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", with = "text_option")]
    pub(crate) act_thresholds: Option<quantnet_burn::ThresholdInit>,
    /// Weight thresholds: kmeans (the paper; with the ±0.05 band around 0) or uniform
    /// (the midpoints between levels). The baselines always round to the nearest level.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", with = "text_option")]
    pub(crate) thresholds: Option<quantnet_burn::ThresholdInit>,
    /// Weight scales: tensor (one alpha/beta per layer, the paper's), channel (one per
    /// output channel, each set by the same rule from its channel's weights) or shared (one
    /// quantization function for every quantized weight layer: the paper's ablation); qn only.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", with = "text_option")]
    pub(crate) granularity: Option<quantnet_burn::Granularity>,
    /// Quantizer method: qn (Quantization Networks), ste (uniform, straight-through),
    /// bwn / twn (binary / ternary weights only), lsq (learned step size), pact (learned
    /// activation clipping; weights as ste), dsq (differentiable soft quantization). See
    /// docs/methods.md.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", with = "text_option")]
    pub(crate) method: Option<quantnet_burn::Method>,
    /// Seed (initialisation, shuffling).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seed: Option<u64>,
    /// Train on the first N training images only (the test set is always whole).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limit: Option<usize>,
    /// Start from this run directory's final model (e.g. a full-precision run).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<PathBuf>,
    /// Detectors: train and evaluate every box as this one class (e.g. tree, for the
    /// neon-trees tiles labelled Tree, Alive and Dead).
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) merge_classes: Option<String>,
    /// Detectors: read each training image N times per epoch, each with a new augmentation
    /// draw (a few large images give many crops).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) repeats: Option<usize>,
    /// Detectors: cut every image into PIXELS × PIXELS windows, each a sample resized to the
    /// detector's input (large aerial tiles with small objects); boxes go to the window holding
    /// their centre.
    #[arg(long, value_name = "PIXELS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tile: Option<u32>,
    /// Detectors: the training transform zooms out up to this factor (SSD's: 4; 1 turns
    /// zooming out off, for small objects).
    #[arg(long, value_name = "FACTOR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_expand: Option<f32>,
    /// Detectors: cut the images into disjoint --tile windows and put every third window in
    /// the test set (a split inside each image, for a few large images), instead of splitting
    /// images.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) split_windows: Option<bool>,
}

/// [`crate::run::text`] for optional fields (only `Some` is serialised).
mod text_option {
    pub(crate) fn serialize<T: std::fmt::Display, S: serde::Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// A TOML run config (a run's config.toml works); the flags below override it.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The run's settings given as flags; they override the config file's.
    #[command(flatten)]
    pub(crate) options: RunOptions,
    /// Continue the run in this directory from its last checkpoint (its config.toml is used).
    #[arg(long, conflicts_with_all = ["config", "out", "from"])]
    pub(crate) resume: Option<PathBuf>,
    /// Run directory (default: runs/MODEL-DATASET-PRECISION-TIMESTAMP).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Where it runs.
    #[command(flatten)]
    pub(crate) target: DeviceArgs,
    /// Train as one process of a job over several processes or machines, started by the
    /// launcher: `mpirun -np N quantnet train --distributed mpi --out DIR ...` (or `srun`).
    /// Each step's batch is split over the processes and every process steps with the mean
    /// gradient; rank 0 writes DIR, rank R > 0 keeps its checkpoints in DIR/ranks/R. Needs a
    /// quantnet built with `--features mpi` (docs/distributed.md).
    #[arg(long, value_enum)]
    pub(crate) distributed: Option<Distributed>,
    /// With --distributed: average the batch norms' running statistics over the processes
    /// after full-precision training (before calibration) and after quantized training (before
    /// the final evaluation); otherwise each process keeps its own share's.
    #[arg(long, requires = "distributed")]
    pub(crate) average_batch_norm: bool,
}

/// How the processes of a job talk (`--distributed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Distributed {
    /// MPI (Open MPI, MPICH): one process per rank, started by `mpirun` or `srun`.
    Mpi,
}

/// `--backend` or `--devices`: where `train` and `eval` run.
#[derive(Debug, clap::Args)]
pub(crate) struct DeviceArgs {
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = BackendName::Cpu)]
    pub(crate) backend: BackendName,
    /// Run on several devices of one backend (`cuda:0,cuda:1`, `wgpu:0,wgpu:1`, `cpu,cpu`):
    /// training splits each step's batch evenly over them and steps with the mean gradient,
    /// evaluation splits the test set (docs/distributed.md). Names the backend, so it replaces
    /// --backend.
    #[arg(long, value_name = "LIST", conflicts_with = "backend")]
    pub(crate) devices: Option<DeviceList>,
}

impl DeviceArgs {
    /// The backend and its devices: `--devices`, or `--backend`'s default device.
    pub(crate) fn list(&self) -> DeviceList {
        self.devices
            .clone()
            .unwrap_or_else(|| DeviceList::single(self.backend))
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    /// The run directory whose model.mpk is evaluated.
    #[arg(
        long = "from",
        value_name = "RUN_DIR",
        required_unless_present = "model_file"
    )]
    pub(crate) run: Option<PathBuf>,
    /// A .qnet file (from `quantnet export`) to evaluate instead.
    #[arg(long, conflicts_with = "run")]
    pub(crate) model_file: Option<PathBuf>,
    /// Data set (default: the run's, or the one recorded in the .qnet file).
    #[arg(long)]
    pub(crate) dataset: Option<quantnet_models::data::Dataset>,
    /// Folder holding the data set (default: the run's, then the standard places).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Write summary.json (the same fields as a training run) into this folder.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// What runs a --model-file .qnet: Burn's hard forward (on --backend), or quantnet-infer
    /// on integer codes (`int`) or on floats (`f32`), on the CPU.
    #[arg(long, value_enum, default_value_t = EngineName::Burn, requires = "model_file")]
    pub(crate) engine: EngineName,
    /// Threads for `--engine int|f32` (default: every core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Also write the predicted class of every test image to this file, one per line in
    /// test-set order (`cmp` two engines' files to check they agree image by image).
    #[arg(long, requires = "model_file")]
    pub(crate) predictions: Option<PathBuf>,
    /// Where it runs.
    #[command(flatten)]
    pub(crate) target: DeviceArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct InfoArgs {
    /// The run directory.
    #[arg(long = "from", value_name = "RUN_DIR")]
    pub(crate) run: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The run directory whose final model is exported (or give it with --from).
    #[arg(value_name = "RUN_DIR", required_unless_present = "from")]
    pub(crate) run: Option<PathBuf>,
    /// The run directory (same as the positional RUN_DIR).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "run")]
    pub(crate) from: Option<PathBuf>,
    /// The file to write: FILE.qnet (bit-packed codes), FILE.mpk (a Burn record whose
    /// quantized weights are Burn's own quantized tensors, with FILE.json beside it), or
    /// FILE.onnx (ONNX opset 13 with quantize/dequantize nodes; input: images in [0, 1], NCHW).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// qnet, burn or onnx (default: from the extension of --out; qnet for any other).
    #[arg(long)]
    pub(crate) format: Option<String>,
}

impl ExportArgs {
    /// The run directory, positional or `--from`.
    pub(crate) fn run_dir(&self) -> &std::path::Path {
        // clap requires one of the two.
        self.run
            .as_deref()
            .or(self.from.as_deref())
            .unwrap_or(std::path::Path::new("."))
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct DataArgs {
    #[command(subcommand)]
    pub(crate) command: DataCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DataCommand {
    /// Download a data set's standard archives (with progress), verify their checksums and put
    /// them where the loaders look.
    Fetch(FetchArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct FetchArgs {
    /// mnist, fashion-mnist or cifar10.
    pub(crate) dataset: quantnet_models::data::Dataset,
    /// Destination folder (default: ~/.cache/quantnet/data/NAME).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Download from this URL prefix, or copy from this local folder, instead of the standard
    /// mirrors.
    #[arg(long)]
    pub(crate) mirror: Option<String>,
}

impl TrainArgs {
    /// The run config: the `--config` file (or the defaults), then the flags given.
    pub(crate) fn config(&self) -> anyhow::Result<crate::run::RunConfig> {
        use anyhow::Context;
        let base = match &self.config {
            Some(path) => crate::run::RunConfig::read(path)?,
            None => crate::run::RunConfig::default(),
        };
        let mut table = toml::Table::try_from(&base).context("serialising the run config")?;
        table.extend(toml::Table::try_from(&self.options).context("serialising the flags")?);
        table
            .try_into()
            .context("the flags do not make a valid run config")
    }
}
