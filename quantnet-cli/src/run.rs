//! Run configuration, run directories and the summary every run writes.
//!
//! A run directory holds `config.toml` (the configuration used, complete: `quantnet train
//! --config RUN/config.toml` repeats the run), `checkpoint/` (burn-train's, per epoch),
//! `metrics.csv`, `model.mpk` (the final model) and `summary.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use quantnet_burn::{GradientMode, LevelSet, QuantizerConfig, TemperatureSchedule, ThresholdInit};
use quantnet_models::data::Dataset;
use quantnet_models::qat::{
    CalibrationWeights, ClipDomain, OptimizerKind, QatConfig, QuantLrGroup, TrainPhase,
};
use quantnet_models::{Arch, QuantPolicy};
use serde::{Deserialize, Serialize};

/// Everything a training run is made from. The defaults are the README's main job: LeNet-5 on
/// Fashion-MNIST, one full-precision epoch, then two with ternary weights and 2-bit activations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RunConfig {
    /// Architecture.
    pub(crate) model: Arch,
    /// Data set.
    pub(crate) dataset: Dataset,
    /// Folder holding the data set (default: the standard places).
    pub(crate) data_dir: Option<PathBuf>,
    /// Weight levels: `fp`, or a level set (`1`, `2`, `3pm2`, `3pm4`, `5`, `sN`, a list).
    pub(crate) weights: String,
    /// Activation levels: `32`/`fp`, a bit count `N` (unsigned N-bit), or a level set.
    pub(crate) acts: String,
    /// Quantize the first conv and the last linear too.
    pub(crate) quantize_all: bool,
    /// Gradient rule of the weight quantizers: `exact`, `official` or `official:CAP`.
    pub(crate) gradient: String,
    /// Gradient rule of the activation quantizers (same forms).
    pub(crate) act_gradient: String,
    /// The weights during activation calibration: `soft` (at the first step's temperature, as
    /// training sees them) or `hard`.
    pub(crate) calibrate: String,
    /// Activation range from the calibration sample: `mse` or `percentile`.
    pub(crate) act_range: String,
    /// Re-estimate batch-norm statistics for the quantized network (before calibration and
    /// before the hard evaluation and saving); models without batch norm are unaffected.
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
    /// Learning-rate schedule of each phase: `const`, `cosine` or `step:EPOCHS,GAMMA`.
    pub(crate) lr_schedule: String,
    /// L2 weight decay of the optimizer (every trained parameter; 0: none).
    pub(crate) weight_decay: f64,
    /// Weight temperature schedule (`anneal:T0,TEND`, `linear:T0`, `exp:T0,G`, `const:T`).
    pub(crate) weights_temperature: String,
    /// Activation temperature schedule.
    pub(crate) acts_temperature: String,
    /// Training images sampled to calibrate the activation quantizers (the paper: 1000).
    pub(crate) calibration_images: usize,
    /// Clip the gradient's L2 norm to this value (the paper: 5).
    pub(crate) clip: Option<f32>,
    /// Where the clipping norm is taken: `wq` (one global norm over the soft-quantized weights'
    /// gradients, before the quantizer's chain rule, and the other parameters': the official
    /// code) or `w` (Burn's optimizer clipping, which clips each parameter tensor's gradient on
    /// its own: a per-tensor norm, not a global one). Runs without quantized weights always
    /// use Burn's per-tensor clipping.
    pub(crate) clip_in: String,
    /// Learning-rate multiplier of the quantizers' α, β (and learned thresholds): Adam's steps
    /// are of the size of the learning rate whatever the parameter's scale, and β is 3–25.
    pub(crate) quant_lr_mult: f64,
    /// Whose α/β/thresholds take `quant_lr_mult`: `acts` (the activation quantizers') or `all`
    /// (the weight quantizers' too).
    pub(crate) quant_lr_group: String,
    /// Optimizer: `adam`, or `sgd` (momentum 0.9, no dampening: the paper's).
    pub(crate) optimizer: String,
    /// What trains: `joint` (everything), or `acts` (only the activation quantizers' α and β;
    /// the paper's second phase, run `--from` a weight-quantized run).
    pub(crate) phase: String,
    /// Activation range `q` at this percentile of the calibration activations instead of the
    /// maximum (the paper's rule; `None`).
    pub(crate) act_percentile: Option<f32>,
    /// Activation thresholds: `uniform` (midpoints, the default) or `kmeans` (the paper).
    pub(crate) act_thresholds: String,
    /// Seed of the initialisation and the shuffling.
    pub(crate) seed: u64,
    /// Train on the first N training images only (the test set is always whole).
    pub(crate) limit: Option<usize>,
    /// A run directory to start from (its final model).
    pub(crate) from: Option<PathBuf>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: Arch::Lenet5,
            dataset: Dataset::FashionMnist,
            data_dir: None,
            weights: "2".into(),
            acts: "2".into(),
            quantize_all: false,
            gradient: "exact".into(),
            act_gradient: "official:1".into(),
            calibrate: "soft".into(),
            act_range: "mse".into(),
            bn_reestimate: true,
            epochs: 2,
            pretrain_epochs: 1,
            batch_size: 64,
            lr: None,
            pretrain_lr: 1e-3,
            lr_schedule: "const".into(),
            weight_decay: 0.0,
            weights_temperature: "anneal:5,500".into(),
            acts_temperature: "anneal:10,500".into(),
            calibration_images: 1000,
            clip: None,
            clip_in: "wq".into(),
            optimizer: "adam".into(),
            phase: "joint".into(),
            quant_lr_mult: 100.0,
            quant_lr_group: "all".into(),
            act_percentile: Some(99.9),
            act_thresholds: "uniform".into(),
            seed: 42,
            limit: None,
            from: None,
        }
    }
}

/// `exact`, `official` or `official:CAP`.
fn gradient_mode(text: &str, flag: &str) -> Result<GradientMode> {
    match text.trim() {
        "exact" => Ok(GradientMode::Exact),
        "official" => Ok(GradientMode::official()),
        other => match other.strip_prefix("official:").map(str::parse::<f32>) {
            Some(Ok(cap)) if cap.is_finite() && cap > 0.0 => Ok(GradientMode::Official { cap }),
            _ => bail!("{flag} `{other}`: expected exact, official or official:CAP (CAP > 0)"),
        },
    }
}

/// `fp`/`32` or a level set.
fn levels(text: &str, what: &str, bits_are_unsigned: bool) -> Result<Option<LevelSet>> {
    let text = text.trim();
    if matches!(text, "fp" | "32" | "float") {
        return Ok(None);
    }
    if bits_are_unsigned && let Ok(bits) = text.parse::<u32>() {
        return Ok(Some(LevelSet::unsigned(bits).with_context(|| {
            format!("--{what} {text}: not a valid bit count")
        })?));
    }
    Ok(Some(
        text.parse::<LevelSet>()
            .with_context(|| format!("--{what} {text}"))?,
    ))
}

impl RunConfig {
    /// Checks every field and derives the quantization policy.
    pub(crate) fn policy(&self) -> Result<QuantPolicy> {
        let gradient = gradient_mode(&self.gradient, "--gradient")?;
        let act_gradient = gradient_mode(&self.act_gradient, "--act-gradient")?;
        let act_mse = match self.act_range.as_str() {
            "mse" => true,
            "percentile" => false,
            other => bail!("--act-range `{other}`: expected mse or percentile"),
        };
        let act_thresholds = match self.act_thresholds.as_str() {
            "kmeans" => ThresholdInit::KMeans,
            "uniform" => ThresholdInit::Uniform,
            other => bail!("act-thresholds `{other}`: expected kmeans or uniform"),
        };
        if let Some(p) = self.act_percentile
            && !(p > 0.0 && p <= 100.0)
        {
            bail!("--act-percentile must be in (0, 100], got {p}");
        }
        Ok(QuantPolicy {
            weights: levels(&self.weights, "weights", false)?
                .map(|l| QuantizerConfig::weights(l).with_gradient(gradient)),
            acts: levels(&self.acts, "acts", true)?.map(|l| {
                QuantizerConfig::activations(l)
                    .with_threshold_init(act_thresholds)
                    .with_gradient(act_gradient)
            }),
            quantize_all: self.quantize_all,
            act_percentile: self.act_percentile,
            act_mse,
        })
    }

    /// The two temperature schedules.
    pub(crate) fn schedules(&self) -> Result<(TemperatureSchedule, TemperatureSchedule)> {
        let w = self
            .weights_temperature
            .parse()
            .context("--temperature (weights)")?;
        let a = self.acts_temperature.parse().context("--act-temperature")?;
        Ok((w, a))
    }

    /// The temperature hook of the main phase: the two schedules driving `temps`.
    pub(crate) fn hook(
        &self,
        temps: &quantnet_models::Temperatures,
    ) -> Result<quantnet_burn::train::TemperatureHook> {
        let (w, a) = self.schedules()?;
        Ok(quantnet_burn::train::TemperatureHook::new()
            .with(&temps.weights, w)
            .with(&temps.acts, a))
    }

    /// The library recipe this config describes (checked: every string field parsed).
    pub(crate) fn recipe(&self) -> Result<QatConfig> {
        let (weights_temperature, acts_temperature) = self.schedules()?;
        let choose = |value: &str, flag: &str, options: &[&str]| -> Result<usize> {
            options
                .iter()
                .position(|o| *o == value)
                .with_context(|| format!("--{flag} `{value}`: expected {}", options.join(" or ")))
        };
        let recipe = QatConfig::new(self.policy()?)
            .with_epochs(self.epochs)
            .with_pretrain_epochs(if self.from.is_some() {
                0
            } else {
                self.pretrain_epochs
            })
            .with_batch_size(self.batch_size)
            .with_lr(self.lr)
            .with_pretrain_lr(self.pretrain_lr)
            .with_lr_schedule(
                self.lr_schedule
                    .parse::<quantnet_burn::train::LrSchedule>()
                    .context("--lr-schedule")?,
            )
            .with_weight_decay(self.weight_decay)
            .with_optimizer(
                [OptimizerKind::Adam, OptimizerKind::Sgd]
                    [choose(&self.optimizer, "optimizer", &["adam", "sgd"])?],
            )
            .with_weights_temperature(weights_temperature)
            .with_acts_temperature(acts_temperature)
            .with_calibration_images(self.calibration_images)
            .with_calibrate(
                [CalibrationWeights::Soft, CalibrationWeights::Hard]
                    [choose(&self.calibrate, "calibrate", &["soft", "hard"])?],
            )
            .with_bn_reestimate(self.bn_reestimate)
            .with_clip(self.clip)
            .with_clip_in(
                [ClipDomain::Wq, ClipDomain::W][choose(&self.clip_in, "clip-in", &["wq", "w"])?],
            )
            .with_quant_lr_mult(self.quant_lr_mult)
            .with_quant_lr_group(
                [QuantLrGroup::Acts, QuantLrGroup::All]
                    [choose(&self.quant_lr_group, "quant-lr-group", &["acts", "all"])?],
            )
            .with_phase(
                [TrainPhase::Joint, TrainPhase::Acts]
                    [choose(&self.phase, "phase", &["joint", "acts"])?],
            )
            .with_seed(self.seed);
        Ok(recipe)
    }

    /// Sets `temps` to the temperatures of the run's last step.
    pub(crate) fn set_final_temperatures(
        &self,
        temps: &quantnet_models::Temperatures,
    ) -> Result<()> {
        self.hook(temps)?.over(self.epochs, 1).finish();
        Ok(())
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
        let recipe = self.recipe()?;
        if recipe.phase == TrainPhase::Acts && recipe.policy.acts.is_none() {
            bail!(
                "--phase acts trains only the activation quantizers, but --acts `{}` quantizes no \
                 activations",
                self.acts
            );
        }
        let (w, a) = self.schedules()?;
        w.check_run(self.epochs).context("--temperature")?;
        a.check_run(self.epochs).context("--act-temperature")?;
        recipe.validate().map_err(|e| {
            // The recipe names its fields; the CLI's flags are the same words with dashes.
            anyhow::anyhow!("--{}", e.to_string().replacen('_', "-", 2))
        })?;
        self.model
            .check_input(self.dataset.input())
            .map_err(anyhow::Error::msg)?;
        Ok(())
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
        let w = levels(&self.weights, "weights", false).ok().flatten();
        let a = levels(&self.acts, "acts", true).ok().flatten();
        match (w, a) {
            (None, None) => "fp".into(),
            (w, a) => format!(
                "w{}-a{}",
                w.map_or("fp".into(), |l| l.name()),
                a.map_or("fp".into(), |l| l.name())
            ),
        }
    }
}

/// Loads a run's final model (with its own policy) onto `device`.
pub(crate) fn load_run<B: burn::tensor::backend::Backend>(
    dir: &Path,
    temps: &quantnet_models::Temperatures,
    device: &B::Device,
) -> Result<(RunConfig, quantnet_models::Model<B>)> {
    use burn::module::Module;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    use quantnet_models::quantize;
    let cfg = RunConfig::read(&dir.join("config.toml"))
        .with_context(|| format!("{} is not a quantnet run directory", dir.display()))?;
    let policy = cfg.policy()?;
    let mut model = quantnet_models::Model::new(cfg.model, cfg.dataset.input(), device);
    quantize::skeleton(&mut model, &policy, temps, device)?;
    let path = dir.join("model.mpk");
    if !path.is_file() {
        bail!(
            "{} has no model.mpk (the run did not finish; `quantnet train --resume {}`)",
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
    pub(crate) weights: String,
    pub(crate) acts: String,
    pub(crate) epochs: usize,
    pub(crate) pretrain_epochs: usize,
    pub(crate) train_images: usize,
    pub(crate) test_images: usize,
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
