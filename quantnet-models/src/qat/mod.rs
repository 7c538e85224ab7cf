//! The quantization-aware-training recipe as a library (feature `train`), for any model that
//! implements [`ImageModel`] (a [`crate::models::QatModel`] that takes images).
//!
//! [`Qat::run`] takes a model (full precision, or already quantized), the data and an artifact
//! directory, and does what `quantnet train` does:
//!
//! 1. **Pretrain** in full precision for [`QatConfig::pretrain_epochs`] when the run quantizes
//!    anything (0: the model comes trained).
//! 2. **Quantize**: weight quantizers from the trained weights (`β = 5p/4q`, thresholds from
//!    the policy), batch-norm statistics re-estimated for them, then activation quantizers
//!    calibrated on a seeded sample of training images run through the weights as training's
//!    first step will see them.
//! 3. **Train** with burn-train's `Learner`: the temperature hook anneals every step, validation
//!    on the whole test set runs hard-quantized, a checkpoint per epoch ([`Qat::resume`]
//!    continues from the last one), α/β/thresholds at [`QatConfig::quant_lr_mult`] times the
//!    learning rate.
//! 4. **Finish**: batch norm re-estimated for the hard network, `model.mpk` (and `init.mpk`, the
//!    quantized network before training) and `metrics.csv`
//!    written, and a [`QatReport`] (hard accuracy: the model's accuracy; soft: a diagnostic).
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::backend::{Autodiff, Flex};
//! use quantnet_burn::LevelSet;
//! use quantnet_models::data::{Dataset, Split};
//! use quantnet_models::qat::{Qat, QatConfig, QatData};
//! use quantnet_models::{Arch, Model, QuantPolicy};
//!
//! type B = Autodiff<Flex>;
//! // The repository's fixture: the first 600 + 200 Fashion-MNIST images.
//! let dir = std::path::Path::new("../fixtures/fashion-mnist");
//! let fashion = Dataset::FashionMnist;
//! let data = QatData::new(
//!     fashion.load(dir, Split::Train).unwrap(),
//!     fashion.load(dir, Split::Test).unwrap(),
//!     fashion.normalisation(),
//! )
//! .limit_train(256, 42);
//! // Ternary weights, 2-bit activations, the recipe's defaults for everything else but the
//! // length of this run.
//! let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), Some(LevelSet::unsigned(2).unwrap()));
//! let config = QatConfig::new(policy).with_epochs(1);
//! let device = Default::default();
//! let model = Model::new(Arch::Lenet5, fashion.input(), &device);
//! let dir = std::env::temp_dir().join(format!("quantnet-qat-doc-{}", std::process::id()));
//! let (_model, report) = Qat::new(config, &dir)
//!     .quiet(true)
//!     .run::<B, _>(model, &data, &device)
//!     .unwrap();
//! assert_eq!(report.epochs.len(), 1);
//! assert!(report.full_precision_accuracy.is_some());
//! assert_eq!(report.temperatures, (Some(500.0), Some(500.0)));
//! println!("test accuracy (hard-quantized): {:.2}%", report.test_accuracy_hard);
//! # std::fs::remove_dir_all(dir).unwrap();
//! # }
//! ```

pub(crate) mod fit;
pub mod progress;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::config::Config;
use burn::data::dataloader::batcher::Batcher;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use quantnet_burn::collective::Collective;
use quantnet_burn::train::{LrSchedule, TemperatureHook};
use quantnet_burn::{QatBackend, QuantBackend, QuantMode, TemperatureSchedule};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, ImageBatch, ImageBatcher, ImageSet, ImageSource, Images, Shard, Split};
use crate::error::{Error, Result};
use crate::models::{ImageModel, QatTrainModel};
use crate::quantize::{self, QuantPolicy, Temperatures};
use crate::train::{Pass, layer_stats};

pub use progress::{PlainRenderer, Renderers};
pub use report::{EpochReport, QatReport};

/// `FromStr` and `Display` for a unit enum, in the snake-case words its serde form uses.
macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl std::str::FromStr for $ty {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self> {
                match text.trim() {
                    $($name => Ok(Self::$variant),)+
                    other => Err(Error::Invalid(format!(
                        "`{other}`: expected {}",
                        [$($name),+].join(" or ")
                    ))),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $(Self::$variant => $name,)+
                })
            }
        }
    };
}

text_enum!(OptimizerKind { Adam => "adam", Sgd => "sgd" });
text_enum!(ClipDomain { Wq => "wq", W => "w" });
text_enum!(QuantLrGroup { Acts => "acts", All => "all" });
text_enum!(TrainPhase { Joint => "joint", Acts => "acts" });
text_enum!(CalibrationWeights { Soft => "soft", Hard => "hard" });

/// The optimizer of every phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (β = 0.9, 0.999).
    Adam,
    /// SGD with momentum 0.9, no dampening (the paper's).
    Sgd,
}

/// Where the gradient-norm clipping is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipDomain {
    /// One global norm over the soft-quantized weights' gradients (before the quantizer's
    /// chain rule) and every other parameter's: the official code.
    Wq,
    /// Burn's optimizer clipping: each parameter tensor's gradient on its own.
    W,
}

/// Whose α/β/thresholds take [`QatConfig::quant_lr_mult`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantLrGroup {
    /// The activation quantizers'.
    Acts,
    /// The weight quantizers' too.
    All,
}

/// What the main phase trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainPhase {
    /// Everything.
    Joint,
    /// Only the activation quantizers' α and β, weights hard and fixed (the paper's second
    /// phase, for a model whose weights are already quantized).
    Acts,
}

/// The weights the activation calibration sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationWeights {
    /// Soft, at the first step's temperature: what training starts from.
    Soft,
    /// Hard-quantized.
    Hard,
}

/// The recipe. The defaults are the README's main job (the quantized phase of LeNet-5 on
/// Fashion-MNIST); only the policy (what is quantized, to which levels) has none.
#[derive(Config, Debug)]
pub struct QatConfig {
    /// What is quantized.
    pub policy: QuantPolicy,
    /// Epochs of the main phase (quantized, or full precision for a float policy).
    #[config(default = 2)]
    pub epochs: usize,
    /// Full-precision epochs before quantizing (only when the policy quantizes something).
    #[config(default = 1)]
    pub pretrain_epochs: usize,
    /// Images per step.
    #[config(default = 64)]
    pub batch_size: usize,
    /// Learning rate of the main phase (`None`: 1e-3 for full precision, 1e-4 for quantized
    /// fine-tuning).
    pub lr: Option<f64>,
    /// Learning rate of the full-precision pretraining.
    #[config(default = 1e-3)]
    pub pretrain_lr: f64,
    /// Learning-rate schedule of each phase.
    #[config(default = "LrSchedule::Constant")]
    pub lr_schedule: LrSchedule,
    /// L2 weight decay of the optimizer (0: none).
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// The optimizer.
    #[config(default = "OptimizerKind::Adam")]
    pub optimizer: OptimizerKind,
    /// Weight temperature schedule.
    #[config(default = "TemperatureSchedule::anneal(5.0, 500.0)")]
    pub weights_temperature: TemperatureSchedule,
    /// Activation temperature schedule.
    #[config(default = "TemperatureSchedule::anneal(10.0, 500.0)")]
    pub acts_temperature: TemperatureSchedule,
    /// Training images sampled to calibrate the activation quantizers (the paper: 1000).
    #[config(default = 1000)]
    pub calibration_images: usize,
    /// The weights the calibration sees.
    #[config(default = "CalibrationWeights::Soft")]
    pub calibrate: CalibrationWeights,
    /// Re-estimate batch-norm statistics for the quantized network (before calibration and
    /// before the hard evaluation); models without batch norm are unaffected.
    #[config(default = true)]
    pub bn_reestimate: bool,
    /// Clip the gradient's L2 norm to this value (the paper: 5).
    pub clip: Option<f32>,
    /// Where the clipping norm is taken (runs without quantized weights always clip per tensor).
    #[config(default = "ClipDomain::Wq")]
    pub clip_in: ClipDomain,
    /// Learning-rate multiplier of the `qn` quantizers' α, β (and learned thresholds); the
    /// baselines' learned scales train at the base learning rate.
    #[config(default = 100.0)]
    pub quant_lr_mult: f64,
    /// Whose scales take the multiplier.
    #[config(default = "QuantLrGroup::All")]
    pub quant_lr_group: QuantLrGroup,
    /// What the main phase trains.
    #[config(default = "TrainPhase::Joint")]
    pub phase: TrainPhase,
    /// Seed of the calibration sample, the batch-norm batches and the shuffling (seed the
    /// backend, `B::seed`, before building the model for its initialisation).
    #[config(default = 42)]
    pub seed: u64,
}

impl QatConfig {
    /// The main phase's learning rate.
    pub fn main_lr(&self) -> f64 {
        self.lr
            .unwrap_or(if self.policy.is_float() { 1e-3 } else { 1e-4 })
    }

    /// The temperature hook of the main phase: the two schedules driving `temperatures`.
    pub fn hook(&self, temperatures: &Temperatures) -> TemperatureHook {
        TemperatureHook::new()
            .with(&temperatures.weights, self.weights_temperature)
            .with(&temperatures.acts, self.acts_temperature)
    }

    /// Everything that can be checked before training.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Err(Error::Config { field, reason });
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        for (field, lr) in [("lr", self.main_lr()), ("pretrain_lr", self.pretrain_lr)] {
            if !(lr.is_finite() && lr > 0.0) {
                return bad(field, format!("must be a positive number, got {lr}"));
            }
        }
        for (field, v) in [
            ("weight_decay", self.weight_decay),
            ("quant_lr_mult", self.quant_lr_mult),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(field, format!("must be a non-negative number, got {v}"));
            }
        }
        if let Some(clip) = self.clip
            && !(clip.is_finite() && clip > 0.0)
        {
            return bad("clip", format!("must be a positive number, got {clip}"));
        }
        if self.calibration_images == 0 {
            return bad("calibration_images", "must be at least 1".into());
        }
        if self.phase == TrainPhase::Acts && self.policy.acts.is_none() {
            return bad(
                "phase",
                "acts trains only the activation quantizers, but the policy quantizes no \
                 activations"
                    .into(),
            );
        }
        for (field, schedule) in [
            ("weights_temperature", self.weights_temperature),
            ("acts_temperature", self.acts_temperature),
        ] {
            if let Err(e) = schedule.check_run(self.epochs) {
                return bad(field, e.to_string());
            }
        }
        Ok(())
    }
}

/// Training and test images, normalised as they are read, with the batcher that stacks them.
#[derive(Clone, Debug)]
pub struct QatData {
    /// Training images.
    pub train: Images,
    /// Test images (validation runs on all of them, hard-quantized).
    pub test: Images,
    /// Stacks items into batches.
    pub batcher: ImageBatcher,
}

impl QatData {
    /// Every image of `train` and `test`, normalised with per-channel `(means, stds)` as
    /// they are read (the sets stay bytes in memory).
    pub fn new(train: ImageSet, test: ImageSet, normalisation: (Vec<f32>, Vec<f32>)) -> Self {
        Self {
            batcher: train.batcher(),
            train: Images::bytes(train, normalisation.clone()),
            test: Images::bytes(test, normalisation),
        }
    }

    /// Image folders read from disk as they are used ([`crate::data::FolderSet`]): the
    /// training images with the paper's ImageNet augmentation (random crop, flip; drawn from
    /// `seed`), the test images centre-cropped; `size × size` RGB.
    ///
    /// # Errors
    /// As [`crate::data::FolderSet::open`].
    pub fn folders(train: &Path, test: &Path, size: usize, seed: u64) -> Result<Self> {
        let (train, batcher) = Images::folder(train, size, Some(seed))?;
        let (test, _) = Images::folder(test, size, None)?;
        Ok(Self {
            train,
            test,
            batcher,
        })
    }

    /// `dataset` from `dir`: image folders streamed from disk ([`QatData::folders`], the
    /// images of [`Dataset::input`]'s size), the other sets decoded into memory as bytes.
    ///
    /// # Errors
    /// As the data set's loader.
    pub fn load(dataset: Dataset, dir: &Path, seed: u64) -> Result<Self> {
        let (train, batcher) = Images::load(dataset, dir, Split::Train, seed)?;
        let (test, _) = Images::load(dataset, dir, Split::Test, seed)?;
        Ok(Self {
            train,
            test,
            batcher,
        })
    }

    /// Images per evaluation batch ([`Images::eval_batch_size`] of the test images).
    pub fn eval_batch_size(&self) -> usize {
        self.test.eval_batch_size()
    }

    /// Keeps a seeded sample of `limit` training images (not the first ones: image folders are
    /// sorted by class); the test set stays whole.
    pub fn limit_train(mut self, limit: usize, seed: u64) -> Self {
        if limit < self.train.len() {
            let keep = crate::data::sample_indices(self.train.len(), limit, seed);
            self.train = self.train.select(&keep);
        }
        self
    }

    /// Steps per epoch at `batch_size`.
    pub fn steps_per_epoch(&self, batch_size: usize) -> usize {
        self.steps_per_epoch_on(batch_size, 1)
    }

    /// Optimizer steps per epoch at `batch_size` images per step split over `devices` devices
    /// ([`Qat::run_on`]): burn-train gives each device a contiguous share of the training set
    /// (the last one the remainder) and steps until the longest share is done.
    pub fn steps_per_epoch_on(&self, batch_size: usize, devices: usize) -> usize {
        let devices = devices.max(1);
        let per_device = (batch_size / devices).max(1);
        let share = self.train.len() / devices;
        let last = self.train.len() - share * (devices - 1);
        last.div_ceil(per_device)
    }
}

/// One run of the recipe: a config and an artifact directory.
#[derive(Clone, Debug)]
pub struct Qat {
    config: QatConfig,
    dir: PathBuf,
    resume: bool,
    quiet: bool,
    renderers: Option<Renderers>,
    group: Option<Arc<dyn Collective>>,
    average_bn: bool,
}

impl Qat {
    /// A run writing into `dir` (`pretrain/` and `train/`: burn-train's logs and checkpoints;
    /// `model.mpk`, `metrics.csv`).
    pub fn new(config: QatConfig, dir: impl Into<PathBuf>) -> Self {
        Self {
            config,
            dir: dir.into(),
            resume: false,
            quiet: false,
            renderers: None,
            group: None,
            average_bn: false,
        }
    }

    /// Trains as one rank of `group` (processes started together, e.g. by `mpirun`; see
    /// `quantnet_models::dist::Mpi`): data parallelism over processes.
    ///
    /// Every rank runs the same recipe on the same data with its own directory (give each rank
    /// its own, e.g. `OUT/ranks/R` for R > 0) and its own devices. In a training phase, each
    /// optimizer step takes `batch_size` images over all ranks: rank r reads its share of
    /// every epoch ([`crate::data::shard_order`]: the epoch's seeded order in steps of
    /// `batch_size`, `batch_size / ranks` images of each for each rank, the images after the
    /// last whole step left out), and the optimizer steps every rank with the mean gradient
    /// ([`AllReduced`](quantnet_burn::collective::AllReduced): one flat buffer per step). So the
    /// models stay equal and a step is one process's step over `batch_size` images, up to float
    /// summation order and batch norm, whose batch statistics (and running statistics, until
    /// the hard network's re-estimation, or see [`Qat::average_batch_norm`]) are per rank. The
    /// temperature and learning-rate schedules and the quantizer-scale group advance as in one
    /// process. Validation and the final evaluation are split: each rank evaluates every
    /// `ranks`-th test image from its rank, and the metrics are gathered. Quantization and
    /// calibration run whole on every rank and give the same result there. The run refuses to
    /// start when the ranks' configs, data or device counts differ.
    pub fn distributed(mut self, group: Arc<dyn Collective>) -> Self {
        self.group = Some(group);
        self
    }

    /// Over ranks ([`Qat::distributed`]): average the batch norms' running statistics over
    /// the ranks after the full-precision phase (before quantization and calibration) and after
    /// the main phase (before the hard network's re-estimation and the final evaluation). Off
    /// by default: each rank keeps the statistics of its own share of the data, rank 0's being
    /// the ones saved unless the policy re-estimates them at the end.
    pub fn average_batch_norm(mut self, average: bool) -> Self {
        self.average_bn = average;
        self
    }

    /// `model` with its batch-norm running statistics averaged over the ranks when asked to.
    fn averaged<B: Backend, M: burn::module::Module<B>>(&self, model: M) -> M {
        match (&self.group, self.average_bn) {
            (Some(group), true) => {
                self.say(format_args!(
                    "averaged the batch-norm running statistics over the {} processes",
                    group.size()
                ));
                quantnet_burn::collective::average_batch_norm(model, &**group)
            }
            _ => model,
        }
    }

    /// The hard and soft test accuracy; over ranks, each evaluates every `size`-th image from
    /// its rank and the counts are summed.
    fn final_accuracy<B, M>(
        &self,
        model: &mut M,
        data: &QatData,
        devices: &[B::Device],
    ) -> (f64, f64)
    where
        B: QatBackend,
        M: QatTrainModel<B>,
    {
        let Some(group) = &self.group else {
            let (hard, soft, _) = hard_and_soft_accuracy(
                model,
                &data.test,
                data.batcher,
                data.eval_batch_size(),
                devices,
            );
            return (hard, soft);
        };
        let share = self
            .shard()
            .map(|s| s.eval_share(data.test.len()))
            .unwrap_or_default();
        let n = share.len() as f64;
        let (hard, soft) = if share.is_empty() {
            (0.0, 0.0)
        } else {
            let part = data.test.select(&share);
            let (hard, soft, _) =
                hard_and_soft_accuracy(model, &part, data.batcher, data.eval_batch_size(), devices);
            (hard, soft)
        };
        // Images right, as counts (exact in f32 below 2^24 images).
        let mut counts = [
            (hard * n / 100.0).round() as f32,
            (soft * n / 100.0).round() as f32,
            n as f32,
        ];
        group.all_reduce_sum(&mut counts);
        let total = f64::from(counts[2]).max(1.0);
        (
            100.0 * f64::from(counts[0]) / total,
            100.0 * f64::from(counts[1]) / total,
        )
    }

    fn shard(&self) -> Option<Shard> {
        fit::shard(self.group.as_ref(), self.config.batch_size)
    }

    /// The epoch of the main phase's last checkpoint (at most the run's length); over ranks,
    /// the last one every rank has: a rank killed while the others wrote their checkpoint
    /// lacks it, and all must resume from the same epoch.
    fn last_common_checkpoint(&self, main_dir: &Path) -> Result<Option<usize>> {
        let epochs = fit::checkpoint_epochs(main_dir);
        let last = epochs.iter().copied().rfind(|&e| e <= self.config.epochs);
        let (Some(group), true) = (&self.group, self.resume) else {
            return Ok(last);
        };
        let all = group.all_gather(last.map_or(0, |e| e as u64 + 1));
        let common = all.iter().copied().min().unwrap_or(0);
        if common == 0 {
            return Ok(None);
        }
        let epoch = (common - 1) as usize;
        if !epochs.contains(&epoch) {
            return Err(Error::Config {
                field: "distributed",
                reason: format!(
                    "training: this rank has no checkpoint of epoch {epoch}, the last one every \
                     rank has, in {}",
                    main_dir.display()
                ),
            });
        }
        Ok(Some(epoch))
    }

    /// When distributed: every rank must run the same config on the same data with as many
    /// devices; the batch must split over ranks and devices.
    fn check_ranks(&self, data: &QatData, devices: usize) -> Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let (size, batch) = (group.size(), self.config.batch_size);
        if !batch.is_multiple_of(size * devices) {
            return Err(Error::Config {
                field: "batch_size",
                reason: format!(
                    "{batch} images per step do not split evenly over {size} ranks × {devices} \
                     device(s)"
                ),
            });
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}", self.config).hash(&mut hasher);
        (data.train.len(), data.test.len(), devices, self.average_bn).hash(&mut hasher);
        let all = group.all_gather(hasher.finish());
        if let Some(other) = all.iter().position(|&h| h != all[0]) {
            return Err(Error::Config {
                field: "distributed",
                reason: format!(
                    "training: rank {other} runs another command than rank 0 (config, data or device \
                     count differ): \
                     every rank must run the same one"
                ),
            });
        }
        if fit::steps_per_epoch(data, batch, devices, self.shard()) == 0 {
            return Err(Error::Config {
                field: "batch_size",
                reason: format!(
                    "{} training images make no whole step of {batch}",
                    data.train.len()
                ),
            });
        }
        Ok(())
    }

    /// No progress lines (by default the recipe prints what it does and about ten lines per
    /// epoch to stdout, as `quantnet train` shows them).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Each training phase's progress goes to the renderer `renderers` makes for it (instead of
    /// [`PlainRenderer`]'s lines): burn-train's TUI, a logger, a test's recorder. The recipe's
    /// own lines (what it quantized, the accuracies) still follow [`Qat::quiet`].
    pub fn renderer(mut self, renderers: Renderers) -> Self {
        self.renderers = Some(renderers);
        self
    }

    fn say(&self, line: std::fmt::Arguments<'_>) {
        if !self.quiet {
            PlainRenderer::say(line);
        }
    }

    fn progress(&self) -> fit::Progress<'_> {
        fit::Progress {
            quiet: self.quiet,
            renderers: self.renderers.as_ref(),
        }
    }

    /// Continue from the last checkpoint of the main phase in the directory, if there is one
    /// (the model given to [`Qat::run`] then only provides the structure).
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// The config.
    pub fn config(&self) -> &QatConfig {
        &self.config
    }

    /// Runs the recipe on `model` (on the inner backend of `B`: what `Model::new` or a user's
    /// `init` gives for the device) and returns the trained model, hard-quantized where the
    /// policy says, with the report. A model that already has quantizers with the policy's
    /// level sets keeps them (a run continued from a quantized model).
    ///
    /// # Errors
    /// [`Error::Config`] for a config that cannot run; [`Error::Layer`] for a layer whose
    /// weights or activations cannot set a quantizer; I/O errors from the artifact directory.
    pub fn run<B, M>(&self, model: M, data: &QatData, device: &B::Device) -> Result<(M, QatReport)>
    where
        B: QatBackend,
        M: QatTrainModel<B>,
    {
        self.run_on::<B, M>(model, data, std::slice::from_ref(device))
    }

    /// [`Qat::run`] with the training phases on several devices, through burn-train's
    /// multi-device strategy: each optimizer step runs `batch_size / N` images on each of the N
    /// devices, and the optimizer on the first device steps with the mean of their gradients,
    /// so a step is one device's step over `batch_size` images (up to batch norm, whose batch
    /// statistics are per device). The step count, the learning-rate and temperature schedules,
    /// clipping (per device, then averaged), checkpoints and resume are those of one device.
    /// Quantization, calibration and validation run on the first device; the final evaluation
    /// splits the test set over all of them. burn-train gives each device a contiguous share
    /// of the training set, the last one the remainder: when that leaves the last share with
    /// more batches, the epoch's last steps run on fewer devices (their gradient is then scaled
    /// down by the missing devices' share). A device may be listed twice: on the CPU this runs
    /// the multi-device code path with one device.
    ///
    /// # Errors
    /// As [`Qat::run`]; [`Error::Config`] when there is no device or `batch_size` does not
    /// split evenly over the devices.
    pub fn run_on<B, M>(
        &self,
        model: M,
        data: &QatData,
        devices: &[B::Device],
    ) -> Result<(M, QatReport)>
    where
        B: QatBackend,
        M: QatTrainModel<B>,
    {
        let cfg = &self.config;
        cfg.validate()?;
        let device = split_over(cfg, devices)?;
        let n = devices.len();
        if data.train.is_empty() || data.test.is_empty() {
            return Err(Error::Config {
                field: "data",
                reason: "needs training and test images".into(),
            });
        }
        self.check_ranks(data, n)?;
        let policy = &cfg.policy;
        let temps = Temperatures::default();
        let quantized = !policy.is_float();
        let main_dir = self.dir.join("train");
        let steps = fit::steps_per_epoch(data, cfg.batch_size, n, self.shard());
        let done = self.last_common_checkpoint(&main_dir)?;
        let mut report = QatReport {
            train_images: data.train.len(),
            test_images: data.test.len(),
            ..QatReport::default()
        };

        let (model, resume_from) = if let (true, Some(epoch)) = (self.resume, done) {
            self.say(format_args!(
                "resuming from the checkpoint of epoch {epoch}"
            ));
            let mut model = model;
            quantize::skeleton(&mut model, policy, &temps, device)?;
            (model, Some(epoch))
        } else {
            let mut model = model;
            quantize::attach(&mut model, &temps);
            if quantized && cfg.pretrain_epochs > 0 {
                self.say(format_args!(
                    "full-precision pretraining: {} epoch(s)",
                    cfg.pretrain_epochs
                ));
                let phase = fit::Phase {
                    name: "pretrain",
                    lr: cfg.pretrain_lr,
                    dir: self.dir.join("pretrain"),
                    epochs: cfg.pretrain_epochs,
                    resume_from: None,
                    hook: TemperatureHook::new(),
                    acts_only: false,
                    group: self.group.clone(),
                };
                let (trained, _) =
                    fit::fit::<B, M>(model, phase, cfg, data, &temps, devices, self.progress())?;
                model = self.averaged(trained);
                let fp = crate::train::accuracy(
                    &model,
                    &data.test,
                    data.batcher,
                    data.eval_batch_size(),
                    device,
                );
                self.say(format_args!("full precision: test accuracy {fp:.2}%"));
                report.full_precision_accuracy = Some(fp);
                report.pretrain_epochs = cfg.pretrain_epochs;
            }
            let model = self.quantize::<B, M>(model, data, &temps, device, &mut report)?;
            if quantized {
                // The quantized network before training (`quantnet plot` draws its weights).
                let mut init = model.clone();
                quantize::settle(&mut init);
                save_model_as(&init, &self.dir, "init")?;
            }
            (model, None)
        };
        let hook = cfg.hook(&temps).over(cfg.epochs, steps).ticked_by(n);
        let phase = fit::Phase {
            name: if quantized { "quantized" } else { "train" },
            lr: cfg.main_lr(),
            dir: main_dir.clone(),
            epochs: cfg.epochs,
            resume_from,
            hook: hook.clone(),
            acts_only: cfg.phase == TrainPhase::Acts,
            group: self.group.clone(),
        };
        let (model, seconds) =
            fit::fit::<B, M>(model, phase, cfg, data, &temps, devices, self.progress())?;
        let mut model = self.averaged(model);
        quantize::attach(&mut model, &temps);
        // The temperatures of the last step (the hook has already moved to the next epoch),
        // batch norm for the hard network (training gathered the statistics under soft
        // quantizers), quantizers settled: the part a user's own Learner takes, on images.
        let reestimated = crate::train::parts::reestimates(cfg, &model);
        let mut model = crate::train::finish::<B, M, _, _>(
            model,
            cfg,
            &cfg.hook(&temps).over(cfg.epochs, 1),
            bn_pass::<B, M>(data, cfg, device),
        );
        if reestimated {
            self.say(format_args!(
                "re-estimated the batch-norm statistics of the hard network ({} batches)",
                quantize::BN_REESTIMATION_BATCHES
            ));
        }
        save_model(&model, &self.dir)?;
        report.layers = layer_stats(&model)?;
        report.epochs = report::read_epochs(
            &main_dir,
            cfg.epochs,
            &seconds,
            (policy.weights.is_some(), policy.acts.is_some()),
            &report.layers,
        );
        report.seconds_per_epoch = seconds;
        if let (Some(group), Some(shard)) = (&self.group, self.shard()) {
            average_epoch_metrics(&mut report.epochs, &**group, shard, data.test.len());
        }
        write_atomic(
            &self.dir.join("metrics.csv"),
            report.metrics_csv().as_bytes(),
        )?;
        let (hard, soft) = self.final_accuracy(&mut model, data, devices);
        report.test_accuracy_hard = hard;
        report.test_accuracy_soft = soft;
        report.temperatures = (
            policy.weights.as_ref().map(|_| temps.weights.get()),
            policy.acts.as_ref().map(|_| temps.acts.get()),
        );
        Ok((model, report))
    }

    /// Step 2: weight quantizers, batch-norm statistics for them, activation calibration.
    fn quantize<B, M>(
        &self,
        model: M,
        data: &QatData,
        temps: &Temperatures,
        device: &B::Device,
        report: &mut QatReport,
    ) -> Result<M>
    where
        B: QatBackend,
        M: QatTrainModel<B>,
    {
        let cfg = &self.config;
        let policy = &cfg.policy;
        let quantized = !policy.is_float();
        // A seeded sample of the training images (the paper: 1000 at random).
        // Read a batch at a time as calibration runs (an image folder is decoded per image).
        let sample =
            crate::data::sample_indices(data.train.len(), cfg.calibration_images, cfg.seed);
        let calibration = sample.chunks(100).map(|c| {
            let items = c.iter().map(|&i| data.train.item(i)).collect();
            let batch: ImageBatch<B::InnerBackend> = data.batcher.batch(items, device);
            batch.images
        });
        // The parts a user's own Learner takes (`train::prepare`), on images.
        let hook = cfg
            .hook(temps)
            .over(cfg.epochs, data.steps_per_epoch(cfg.batch_size));
        let (model, (w, a)) = crate::train::prepare::<B, M, _, _, _, _>(
            model,
            cfg,
            temps,
            &hook,
            device,
            Pass::new(calibration, |m: &M, x: Tensor<B::InnerBackend, 4>| {
                let n = x.dims()[0];
                drop(m.forward(x));
                n
            }),
            bn_pass::<B, M>(data, cfg, device),
        )?;
        if quantized {
            self.say(format_args!(
                "quantized {w} weight layer(s), calibrated {a} activation quantizer(s)"
            ));
        }
        report.quantized = (w, a);
        Ok(model)
    }
}

/// Each epoch's metrics over every rank's share: training loss and accuracy as the mean of the
/// ranks' (every rank read as many images), validation metrics (each rank validated its
/// [`Shard::eval_share`] of `test_len` images) as the mean weighted by the shares' sizes.
/// burn-train logged this rank's share only.
fn average_epoch_metrics(
    epochs: &mut [report::EpochReport],
    group: &dyn Collective,
    shard: Shard,
    test_len: usize,
) {
    let weight = shard.eval_share(test_len).len() as f64;
    let mut sums: Vec<f32> = epochs
        .iter()
        .flat_map(|e| {
            [
                e.train_loss,
                e.train_accuracy,
                e.test_loss.map(|v| v * weight),
                e.test_accuracy_hard.map(|v| v * weight),
                e.soft_hard_gap.map(|v| v * weight),
            ]
        })
        .map(|v| v.unwrap_or(0.0) as f32)
        .collect();
    group.all_reduce_sum(&mut sums);
    let (size, total) = (group.size() as f64, test_len.max(1) as f64);
    let mean = |v: Option<f64>, sum: f32, over: f64| v.map(|_| f64::from(sum) / over);
    for (e, s) in epochs.iter_mut().zip(sums.chunks(5)) {
        e.train_loss = mean(e.train_loss, s[0], size);
        e.train_accuracy = mean(e.train_accuracy, s[1], size);
        e.test_loss = mean(e.test_loss, s[2], total);
        e.test_accuracy_hard = mean(e.test_accuracy_hard, s[3], total);
        e.soft_hard_gap = mean(e.soft_hard_gap, s[4], total);
    }
}

/// The first of `devices` (where the model is built, quantized and evaluated), after checking
/// that there is one and that `cfg.batch_size` splits evenly over them (every device runs the
/// same share of each step).
pub(crate) fn split_over<'a, D>(cfg: &QatConfig, devices: &'a [D]) -> Result<&'a D> {
    let Some(device) = devices.first() else {
        return Err(Error::Config {
            field: "devices",
            reason: "needs at least one device".into(),
        });
    };
    let n = devices.len();
    if !cfg.batch_size.is_multiple_of(n) {
        return Err(Error::Config {
            field: "batch_size",
            reason: format!(
                "{} images per step do not split evenly over {n} devices",
                cfg.batch_size
            ),
        });
    }
    Ok(device)
}

/// The batch-norm passes of [`crate::train::prepare`] and [`crate::train::finish`] on images:
/// [`quantize::BN_REESTIMATION_BATCHES`] batches of the config's batch size, a seeded sample of
/// the training images (cycled through when the training set is smaller), made one at a time,
/// each run through the model's autodiff twin.
#[allow(clippy::type_complexity)] // Two `impl` types: no alias can name them.
fn bn_pass<'a, B: QatBackend, M: QatTrainModel<B>>(
    data: &'a QatData,
    cfg: &QatConfig,
    device: &'a B::Device,
) -> Pass<
    impl Iterator<Item = Tensor<B::InnerBackend, 4>> + 'a,
    impl FnMut(&M::TrainModule, Tensor<B::InnerBackend, 4>),
> {
    let batch_size = cfg.batch_size;
    let order = quantize::bn_order(data.train.len(), batch_size, cfg.seed);
    let batches = (0..order.len() / batch_size).map(move |b| {
        let items = order[b * batch_size..(b + 1) * batch_size]
            .iter()
            .map(|&i| data.train.item(i))
            .collect();
        let batch: ImageBatch<B::InnerBackend> = data.batcher.batch(items, device);
        batch.images
    });
    Pass::new(
        batches,
        |m: &M::TrainModule, x: Tensor<B::InnerBackend, 4>| {
            drop(m.forward(Tensor::from_inner(x).detach()));
        },
    )
}

/// Test accuracy (%) hard-quantized (the model's accuracy) and with the soft quantizers at the
/// current temperatures (a diagnostic), and the seconds the hard pass took; in batches of
/// `batch_size`, the items split over `devices` ([`crate::train::accuracy_on`]).
pub fn hard_and_soft_accuracy<B, M, S>(
    model: &mut M,
    items: &S,
    batcher: ImageBatcher,
    batch_size: usize,
    devices: &[B::Device],
) -> (f64, f64, f64)
where
    B: QuantBackend,
    M: ImageModel<B>,
    S: ImageSource + ?Sized,
{
    let started = std::time::Instant::now();
    let hard = crate::train::accuracy_on(model, items, batcher, batch_size, devices);
    let seconds = started.elapsed().as_secs_f64();
    quantize::set_mode(model, QuantMode::Soft);
    let soft = crate::train::accuracy_on(model, items, batcher, batch_size, devices);
    quantize::set_mode(model, QuantMode::Auto);
    (hard, soft, seconds)
}

/// Writes `model.mpk` into `dir` (through `model-partial.mpk` and a rename).
fn save_model<B: Backend, M: burn::module::Module<B>>(model: &M, dir: &Path) -> Result<()> {
    save_model_as(model, dir, "model")
}

/// Writes `NAME.mpk` into `dir` (through `NAME-partial.mpk` and a rename).
pub(crate) fn save_model_as<B: Backend, M: burn::module::Module<B>>(
    model: &M,
    dir: &Path,
    name: &str,
) -> Result<()> {
    let path = dir.join(format!("{name}.mpk"));
    let partial = dir.join(format!("{name}-partial"));
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .record(model.clone().into_record(), partial.clone())
        .map_err(|source| Error::Record {
            path: path.clone(),
            source,
        })?;
    std::fs::rename(partial.with_extension("mpk"), &path).map_err(|e| write_error(&path, e))
}

pub(crate) fn write_error(path: &Path, source: std::io::Error) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| write_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| write_error(path, e))
}
