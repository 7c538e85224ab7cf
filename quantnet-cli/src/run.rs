//! Run configuration, run directories and the summary every run writes.
//!
//! A run directory holds `config.toml` (the configuration used, complete: `quantnet train
//! --config RUN/config.toml` repeats the run), `checkpoint/` (burn-train's, per epoch),
//! `metrics.csv`, `model.mpk` (the final model) and `summary.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use quantnet_burn::{GradientMode, LevelSet, QuantizerConfig, TemperatureSchedule, ThresholdInit};
use quantnet_models::data::Dataset;
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
        self.policy()?;
        self.schedules()?;
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        for (name, lr) in [
            ("--lr", self.lr.unwrap_or(1e-3)),
            ("--pretrain-lr", self.pretrain_lr),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                bail!("{name} must be a positive number, got {lr}");
            }
        }
        self.lr_schedule
            .parse::<quantnet_burn::train::LrSchedule>()
            .context("--lr-schedule")?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "--weight-decay must be a non-negative number, got {}",
                self.weight_decay
            );
        }
        if self.limit == Some(0) {
            bail!("--limit must be at least 1 image");
        }
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        let (w, a) = self.schedules()?;
        w.check_run(self.epochs).context("--temperature")?;
        a.check_run(self.epochs).context("--act-temperature")?;
        if let Some(clip) = self.clip
            && !(clip.is_finite() && clip > 0.0)
        {
            bail!("--clip must be a positive number, got {clip}");
        }
        if !(self.quant_lr_mult.is_finite() && self.quant_lr_mult >= 0.0) {
            bail!(
                "--quant-lr-mult must be a non-negative number, got {}",
                self.quant_lr_mult
            );
        }
        if !matches!(self.quant_lr_group.as_str(), "acts" | "all") {
            bail!(
                "--quant-lr-group `{}`: expected acts or all",
                self.quant_lr_group
            );
        }
        if !matches!(self.optimizer.as_str(), "adam" | "sgd") {
            bail!("--optimizer `{}`: expected adam or sgd", self.optimizer);
        }
        if !matches!(self.calibrate.as_str(), "soft" | "hard") {
            bail!("--calibrate `{}`: expected soft or hard", self.calibrate);
        }
        if !matches!(self.clip_in.as_str(), "wq" | "w") {
            bail!("--clip-in `{}`: expected wq or w", self.clip_in);
        }
        match self.phase.as_str() {
            "joint" => {}
            "acts" if self.policy()?.acts.is_some() => {}
            "acts" => bail!(
                "--phase acts trains only the activation quantizers, but --acts `{}` quantizes no \
                 activations",
                self.acts
            ),
            other => bail!("--phase `{other}`: expected joint or acts"),
        }
        if self.calibration_images == 0 {
            bail!("--calibration-images must be at least 1");
        }
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

    /// The main phase's learning rate.
    pub(crate) fn main_lr(&self) -> Result<f64> {
        Ok(self.lr.unwrap_or(if self.policy()?.is_float() {
            1e-3
        } else {
            1e-4
        }))
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
