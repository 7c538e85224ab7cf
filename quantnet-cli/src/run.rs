//! Run configuration, run directories and the summary every run writes.
//!
//! A run directory holds `config.toml` (the configuration used, complete: `quantnet train
//! --config RUN/config.toml` repeats the run), `checkpoint/` (burn-train's, per epoch),
//! `metrics.csv`, `model.mpk` (the final model) and `summary.json`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use quantnet_burn::train::LrSchedule;
use quantnet_burn::{
    GradientMode, Granularity, LevelSet, Method, QuantizerConfig, TemperatureSchedule,
    ThresholdInit,
};
use quantnet_models::data::Dataset;
use quantnet_models::qat::{
    CalibrationWeights, ClipDomain, OptimizerKind, QatConfig, QuantLrGroup, TrainPhase,
};
use quantnet_models::{Arch, QuantPolicy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serde through `Display`/`FromStr`: `config.toml` holds the words the flags take.
pub(crate) mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(crate) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Levels as given (`fp`/`32`, a level-set name or list, and for activations a bit count `N`:
/// unsigned `N`-bit), parsed once; shown and saved as given.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Precision<const ACTS: bool> {
    text: String,
    levels: Option<LevelSet>,
}

/// `--weights`: `fp` or a level set (`2` is ternary).
pub(crate) type WeightPrecision = Precision<false>;
/// `--acts`: `32`/`fp`, a bit count (`2` is unsigned 2-bit) or a level set.
pub(crate) type ActPrecision = Precision<true>;

impl<const ACTS: bool> Precision<ACTS> {
    /// The levels; `None` for full precision.
    pub(crate) fn levels(&self) -> Option<&LevelSet> {
        self.levels.as_ref()
    }
}

impl<const ACTS: bool> FromStr for Precision<ACTS> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text).map_err(|e| format!("{e:#}"))
    }
}

impl<const ACTS: bool> Precision<ACTS> {
    fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let levels = if matches!(trimmed, "fp" | "32" | "float") {
            None
        } else if let (true, Ok(bits)) = (ACTS, trimmed.parse::<u32>()) {
            Some(LevelSet::unsigned(bits).map_err(|e| match e {
                quantnet_burn::Error::InvalidLevels { reason, .. } => {
                    anyhow::anyhow!("`{trimmed}`: {reason}")
                }
                other => other.into(),
            })?)
        } else {
            Some(trimmed.parse::<LevelSet>()?)
        };
        Ok(Self {
            text: trimmed.to_string(),
            levels,
        })
    }
}

impl<const ACTS: bool> fmt::Display for Precision<ACTS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<const ACTS: bool> Serialize for Precision<ACTS> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, const ACTS: bool> Deserialize<'de> for Precision<ACTS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text::deserialize(d)
    }
}

/// How each activation range is set from the calibration sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ActRange {
    /// The range whose hard quantization of the sample has the least squared error.
    Mse,
    /// The `act_percentile` of the sample (the paper: the maximum).
    Percentile,
}

impl FromStr for ActRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "mse" => Ok(Self::Mse),
            "percentile" => Ok(Self::Percentile),
            other => Err(format!("`{other}`: expected mse or percentile")),
        }
    }
}

/// Everything a training run is made from, typed: `config.toml` and the flags are parsed into it
/// once. The defaults are the README's main job: LeNet-5 on Fashion-MNIST, one full-precision
/// epoch, then two with ternary weights and 2-bit activations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RunConfig {
    /// Architecture.
    pub(crate) model: Arch,
    /// Data set.
    pub(crate) dataset: Dataset,
    /// Folder holding the data set (default: the standard places).
    pub(crate) data_dir: Option<PathBuf>,
    /// Weight levels.
    pub(crate) weights: WeightPrecision,
    /// Activation levels.
    pub(crate) acts: ActPrecision,
    /// Quantize the first conv and the last linear too.
    pub(crate) quantize_all: bool,
    /// Gradient rule of the weight quantizers.
    #[serde(with = "text")]
    pub(crate) gradient: GradientMode,
    /// Gradient rule of the activation quantizers.
    #[serde(with = "text")]
    pub(crate) act_gradient: GradientMode,
    /// The weights during activation calibration.
    pub(crate) calibrate: CalibrationWeights,
    /// Activation range from the calibration sample.
    pub(crate) act_range: ActRange,
    /// Re-estimate batch-norm statistics for the quantized network.
    pub(crate) bn_reestimate: bool,
    /// Quantized (or, for `weights = "fp"`, full-precision) training epochs.
    pub(crate) epochs: usize,
    /// Full-precision epochs before quantizing, when not starting `from` a run.
    pub(crate) pretrain_epochs: usize,
    /// Images per step.
    pub(crate) batch_size: usize,
    /// Learning rate of the main phase (default: 1e-3 for full precision, 1e-4 when
    /// fine-tuning a quantized model).
    pub(crate) lr: Option<f64>,
    /// Learning rate of the full-precision pretraining.
    pub(crate) pretrain_lr: f64,
    /// Learning-rate schedule of each phase.
    pub(crate) lr_schedule: LrSchedule,
    /// L2 weight decay of the optimizer (0: none).
    pub(crate) weight_decay: f64,
    /// Weight temperature schedule.
    #[serde(with = "text")]
    pub(crate) weights_temperature: TemperatureSchedule,
    /// Activation temperature schedule.
    #[serde(with = "text")]
    pub(crate) acts_temperature: TemperatureSchedule,
    /// Training images sampled to calibrate the activation quantizers (the paper: 1000).
    pub(crate) calibration_images: usize,
    /// Clip the gradient's L2 norm to this value (the paper: 5).
    pub(crate) clip: Option<f32>,
    /// Where the clipping norm is taken.
    pub(crate) clip_in: ClipDomain,
    /// Learning-rate multiplier of the quantizers' α, β (and learned thresholds).
    pub(crate) quant_lr_mult: f64,
    /// Whose scales take `quant_lr_mult`.
    pub(crate) quant_lr_group: QuantLrGroup,
    /// Optimizer.
    pub(crate) optimizer: OptimizerKind,
    /// What trains.
    pub(crate) phase: TrainPhase,
    /// Activation range at this percentile of the calibration activations (`None`: the maximum).
    pub(crate) act_percentile: Option<f32>,
    /// Activation thresholds.
    #[serde(with = "text")]
    pub(crate) act_thresholds: ThresholdInit,
    /// Weight thresholds (`qn`; the baselines round to the nearest level).
    #[serde(with = "text")]
    pub(crate) thresholds: ThresholdInit,
    /// One `α`/`β` per weight tensor, per output channel, or one shared by every quantized weight
    /// layer (`qn`).
    #[serde(with = "text")]
    pub(crate) granularity: Granularity,
    /// The quantizer method (ours or a baseline).
    #[serde(with = "text")]
    pub(crate) method: Method,
    /// Seed of the initialisation and the shuffling.
    pub(crate) seed: u64,
    /// Train on a seeded sample of N training images only (the test set is always whole).
    pub(crate) limit: Option<usize>,
    /// A run directory to start from (its final model).
    pub(crate) from: Option<PathBuf>,
    /// Detectors: every box as this one class (e.g. "tree").
    pub(crate) merge_classes: Option<String>,
    /// Detectors: each training image read this many times per epoch (new augmentation draws).
    pub(crate) repeats: usize,
    /// Detectors: the object classes, as read from the data (written by `train`).
    pub(crate) classes: Option<Vec<String>>,
    /// Detectors: cut every image into windows of this many pixels a side.
    pub(crate) tile: Option<u32>,
    /// Detectors: the largest zoom-out of the training transform (SSD: 4; 1: none).
    pub(crate) max_expand: f32,
    /// Detectors: split disjoint `tile` windows (every third a test window) instead of images.
    pub(crate) split_windows: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        let recipe = QatConfig::new(QuantPolicy::float());
        let parse = |text: &str| text.parse().expect("a valid default");
        // The quantizers' defaults are the library's: the recipe's policy at the default
        // precision (ternary weights, 2-bit activations).
        let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), LevelSet::unsigned(2).ok());
        let weights = policy
            .weights
            .clone()
            .expect("the recipe quantizes weights");
        let acts = policy
            .acts
            .clone()
            .expect("the recipe quantizes activations");
        Self {
            model: Arch::Lenet5,
            dataset: Dataset::FashionMnist,
            data_dir: None,
            weights: parse("2"),
            acts: Precision {
                text: "2".into(),
                levels: LevelSet::unsigned(2).ok(),
            },
            quantize_all: false,
            gradient: weights.gradient,
            act_gradient: acts.gradient,
            calibrate: recipe.calibrate,
            act_range: if policy.act_mse {
                ActRange::Mse
            } else {
                ActRange::Percentile
            },
            bn_reestimate: recipe.bn_reestimate,
            epochs: recipe.epochs,
            pretrain_epochs: recipe.pretrain_epochs,
            batch_size: recipe.batch_size,
            lr: None,
            pretrain_lr: recipe.pretrain_lr,
            lr_schedule: recipe.lr_schedule,
            weight_decay: recipe.weight_decay,
            weights_temperature: recipe.weights_temperature,
            acts_temperature: recipe.acts_temperature,
            calibration_images: recipe.calibration_images,
            clip: None,
            clip_in: recipe.clip_in,
            optimizer: recipe.optimizer,
            phase: recipe.phase,
            quant_lr_mult: recipe.quant_lr_mult,
            quant_lr_group: recipe.quant_lr_group,
            act_percentile: policy.act_percentile,
            act_thresholds: acts.threshold_init,
            thresholds: weights.threshold_init,
            granularity: weights.granularity,
            method: weights.method,
            seed: recipe.seed,
            limit: None,
            from: None,
            merge_classes: None,
            repeats: 1,
            classes: None,
            tile: None,
            max_expand: 4.0,
            split_windows: false,
        }
    }
}

impl RunConfig {
    /// The quantization policy.
    ///
    /// # Errors
    /// When the method cannot quantize what the precisions ask for (`bwn` with quantized
    /// activations, for instance).
    pub(crate) fn policy(&self) -> Result<QuantPolicy> {
        let policy = QuantPolicy {
            weights: self.weights.levels().map(|l| {
                QuantizerConfig::weights(l.clone())
                    .with_gradient(self.gradient)
                    .with_threshold_init(self.thresholds)
            }),
            acts: self.acts.levels().map(|l| {
                QuantizerConfig::activations(l.clone())
                    .with_threshold_init(self.act_thresholds)
                    .with_gradient(self.act_gradient)
            }),
            quantize_all: self.quantize_all,
            act_percentile: self.act_percentile,
            act_mse: self.act_range == ActRange::Mse,
        };
        // A refused setting is named by its flag.
        let flag = |flag: &'static str| {
            move |e| match e {
                quantnet_models::Error::Config { reason, .. } => anyhow::anyhow!("{flag} {reason}"),
                other => other.into(),
            }
        };
        policy
            .with_method(self.method)
            .map_err(flag("--method"))?
            .with_granularity(self.granularity)
            .map_err(flag("--granularity"))
    }

    /// The library recipe this config describes.
    ///
    /// # Errors
    /// As [`Self::policy`].
    pub(crate) fn recipe(&self) -> Result<QatConfig> {
        Ok(QatConfig::new(self.policy()?)
            .with_epochs(self.epochs)
            .with_pretrain_epochs(if self.from.is_some() {
                0
            } else {
                self.pretrain_epochs
            })
            .with_batch_size(self.batch_size)
            .with_lr(self.lr)
            .with_pretrain_lr(self.pretrain_lr)
            .with_lr_schedule(self.lr_schedule)
            .with_weight_decay(self.weight_decay)
            .with_optimizer(self.optimizer)
            .with_weights_temperature(self.weights_temperature)
            .with_acts_temperature(self.acts_temperature)
            .with_calibration_images(self.calibration_images)
            .with_calibrate(self.calibrate)
            .with_bn_reestimate(self.bn_reestimate)
            .with_clip(self.clip)
            .with_clip_in(self.clip_in)
            .with_quant_lr_mult(self.quant_lr_mult)
            .with_quant_lr_group(self.quant_lr_group)
            .with_phase(self.phase)
            .with_seed(self.seed))
    }

    /// Sets `temps` to the temperatures of the run's last step.
    pub(crate) fn set_final_temperatures(&self, temps: &quantnet_models::Temperatures) {
        // The schedules do not depend on the policy: a recipe of the float policy has them.
        QatConfig::new(QuantPolicy::float())
            .with_weights_temperature(self.weights_temperature)
            .with_acts_temperature(self.acts_temperature)
            .hook(temps)
            .over(self.epochs, 1)
            .finish();
    }

    /// Everything that can be checked before loading data.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(p) = self.act_percentile
            && !(p > 0.0 && p <= 100.0)
        {
            bail!("--act-percentile must be in (0, 100], got {p}");
        }
        if self.limit == Some(0) {
            bail!("--limit must be at least 1 image");
        }
        if self.phase == TrainPhase::Acts && self.acts.levels().is_none() {
            bail!(
                "--phase acts trains only the activation quantizers, but --acts `{}` quantizes no \
                 activations",
                self.acts
            );
        }
        self.weights_temperature
            .check_run(self.epochs)
            .context("--temperature")?;
        self.acts_temperature
            .check_run(self.epochs)
            .context("--act-temperature")?;
        self.recipe()?.validate().map_err(|e| match e {
            // The recipe names its fields; the flags are the same words with dashes.
            quantnet_models::Error::Config { field, reason } => {
                anyhow::anyhow!("--{} {reason}", field.replace('_', "-"))
            }
            other => other.into(),
        })?;
        self.model
            .check_input(self.input())
            .map_err(anyhow::Error::msg)?;
        match (self.model.detector(), self.dataset) {
            (Some(_), Dataset::Voc) => {
                if self.limit.is_some() {
                    bail!("--limit is for classifiers, not detectors");
                }
                if self.repeats == 0 {
                    bail!("--repeats must be at least 1");
                }
                if self.tile == Some(0) {
                    bail!("--tile must be at least 1 pixel");
                }
                if self.split_windows && self.tile.is_none() {
                    bail!("--split-windows splits --tile windows: give --tile PIXELS");
                }
                if !(self.max_expand >= 1.0 && self.max_expand.is_finite()) {
                    bail!("--max-expand must be at least 1, got {}", self.max_expand);
                }
            }
            (Some(_), other) => bail!(
                "{} is a detector: it trains on --dataset voc (VOC annotations), not {other}",
                self.model
            ),
            (None, Dataset::Voc) => bail!(
                "voc is a detection data set: train a detector on it (--model ssd-small or ssd300), \
                 not {}",
                self.model
            ),
            (None, _) => {
                // Detector settings would be ignored: say so rather than train without them.
                let d = Self::default();
                let given: Vec<&str> = [
                    ("--merge-classes", self.merge_classes != d.merge_classes),
                    ("--repeats", self.repeats != d.repeats),
                    ("--tile", self.tile != d.tile),
                    ("--max-expand", self.max_expand != d.max_expand),
                    ("--split-windows", self.split_windows != d.split_windows),
                ]
                .into_iter()
                .filter_map(|(flag, set)| set.then_some(flag))
                .collect();
                if !given.is_empty() {
                    bail!(
                        "{} {} for detectors (ssd-small, ssd300); {} is a classifier",
                        given.join(", "),
                        if given.len() == 1 { "is" } else { "are" },
                        self.model
                    );
                }
            }
        }
        Ok(())
    }

    /// The model's input: the data set's for a classifier; a detector's own size with the
    /// run's classes (VOC's 20 until the data is read).
    pub(crate) fn input(&self) -> quantnet_models::InputShape {
        match self.model.detector() {
            Some(kind) => quantnet_models::InputShape {
                channels: 3,
                height: kind.image_size(),
                width: kind.image_size(),
                classes: self
                    .classes
                    .as_ref()
                    .map_or(self.dataset.input().classes, Vec::len),
            },
            None => self.dataset.input(),
        }
    }

    /// Reads a TOML config file.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid run config", path.display()))
    }

    /// Writes `config.toml` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string(self).context("serialising the run config")?;
        write_atomic(&dir.join("config.toml"), text.as_bytes())
    }

    /// A short tag such as `w2-a2` or `fp`.
    pub(crate) fn precision_tag(&self) -> String {
        let name = |l: Option<&LevelSet>| l.map_or("fp".into(), LevelSet::name);
        match (self.weights.levels(), self.acts.levels()) {
            (None, None) => "fp".into(),
            (w, a) => format!("w{}-a{}", name(w), name(a)),
        }
    }
}

/// Loads a run's final model (with its own policy) onto `device`.
pub(crate) fn load_run<B: burn::tensor::backend::Backend>(
    dir: &Path,
    temps: &quantnet_models::Temperatures,
    device: &B::Device,
) -> Result<(RunConfig, quantnet_models::Model<B>)> {
    load_run_file(dir, "model.mpk", temps, device)
}

/// Loads the model saved as `file` in a run directory (`model.mpk`, or `init.mpk`: the
/// quantized network before training).
pub(crate) fn load_run_file<B: burn::tensor::backend::Backend>(
    dir: &Path,
    file: &str,
    temps: &quantnet_models::Temperatures,
    device: &B::Device,
) -> Result<(RunConfig, quantnet_models::Model<B>)> {
    use burn::module::Module;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    use quantnet_models::quantize;
    let cfg = RunConfig::read(&dir.join("config.toml"))
        .with_context(|| format!("{} is not a quantnet run directory", dir.display()))?;
    let policy = cfg.policy()?;
    let mut model = quantnet_models::Model::new(cfg.model, cfg.input(), device);
    quantize::skeleton(&mut model, &policy, temps, device)?;
    let path = dir.join(file);
    if !path.is_file() {
        bail!(
            "{} has no {file} (the run did not finish; `quantnet train --resume {}`)",
            dir.display(),
            dir.display()
        );
    }
    let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(path.clone(), device)
        .with_context(|| format!("loading {}", path.display()))?;
    let mut model = model.load_record(record);
    quantize::check_levels(&mut model).with_context(|| format!("loading {}", path.display()))?;
    quantize::attach(&mut model, temps);
    Ok((cfg, model))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a failure never
/// leaves a half-written file in place of a good one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// What every run directory ends with (`summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) model: String,
    pub(crate) dataset: String,
    pub(crate) backend: String,
    /// The devices it ran on (`--devices`; one entry, the backend's default device, otherwise).
    #[serde(default)]
    pub(crate) devices: Vec<String>,
    pub(crate) weights: String,
    pub(crate) acts: String,
    pub(crate) epochs: usize,
    pub(crate) pretrain_epochs: usize,
    pub(crate) train_images: usize,
    pub(crate) test_images: usize,
    /// Test accuracy (%) of the full-precision model this run pretrained (`null` when it did
    /// not pretrain: a full-precision run, or one started `--from` another).
    #[serde(default)]
    pub(crate) test_accuracy_fp: Option<f64>,
    /// Test accuracy (%) with hard quantization: the model's accuracy.
    pub(crate) test_accuracy_hard: f64,
    /// Test accuracy (%) with the soft quantizers at the final temperature (a diagnostic;
    /// `null` for an exported model, which holds only hard weights).
    pub(crate) test_accuracy_soft: Option<f64>,
    /// Wall time of each epoch of this run (training and validation), seconds.
    pub(crate) seconds_per_epoch: Vec<f64>,
    /// The temperatures of the last epoch.
    pub(crate) temperature: Temperatures,
    /// Per quantized layer: level set, α, β, and (weights) the fraction at each level.
    pub(crate) layers: Vec<quantnet_models::train::LayerStats>,
}

/// Final temperatures (absent where nothing is quantized).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Temperatures {
    pub(crate) weights: Option<f32>,
    pub(crate) acts: Option<f32>,
}

impl Summary {
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("serialising the summary")?;
        write_atomic(&dir.join("summary.json"), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default run is the library's recipe at ternary weights and 2-bit activations: its
    /// quantizer settings are read from `QuantPolicy::recipe`, its training settings from
    /// `QatConfig::new`, not restated.
    #[test]
    fn the_default_run_is_the_library_recipe() {
        let run = RunConfig::default().recipe().unwrap();
        let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), LevelSet::unsigned(2).ok());
        assert_eq!(run.policy, policy);
        let library = QatConfig::new(policy);
        assert_eq!(format!("{run:?}"), format!("{library:?}"));
    }
}
