//! `quantnet train`: parses the flags into a run config, finds the data, picks the backend and
//! runs the library recipe ([`quantnet_models::qat`]); writes the run directory's
//! `config.toml` and `summary.json` around what the recipe writes (`model.mpk`, `metrics.csv`,
//! burn-train's logs and checkpoints).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use quantnet_models::Model;
use quantnet_models::qat::{Qat, QatData};
use quantnet_models::quantize::{self, Temperatures};

use quantnet_burn::QatBackend;
use quantnet_burn::collective::Collective;

use crate::backend::{DeviceList, WithBackend, dispatch};
use crate::cli::TrainArgs;
use crate::run::{RunConfig, Summary, load_run};

/// The data set of `cfg` from `dir`, checked against the model's input, `--limit` applied.
fn load_data(cfg: &RunConfig, dir: &Path, lead: bool) -> Result<QatData> {
    let data = QatData::load(cfg.dataset, dir, cfg.seed)?;
    let (b, expected) = (data.batcher, cfg.dataset.input());
    if (b.channels, b.rows, b.cols) != (expected.channels, expected.height, expected.width) {
        bail!(
            "{}: images are {}×{}×{}, expected {}×{}×{}",
            dir.display(),
            b.channels,
            b.rows,
            b.cols,
            expected.channels,
            expected.height,
            expected.width
        );
    }
    let data = match cfg.limit {
        Some(limit) => data.limit_train(limit, cfg.seed),
        None => data,
    };
    if !lead {
        return Ok(data);
    }
    println!(
        "{} from {}: {} training images, {} test images{}",
        cfg.dataset,
        dir.display(),
        data.train.len(),
        data.test.len(),
        if data.train.is_streamed() {
            " (read from disk as training uses them)"
        } else {
            ""
        }
    );
    Ok(data)
}

struct TrainJob {
    data_dir: PathBuf,
    cfg: RunConfig,
    out: PathBuf,
    resume: bool,
    devices: DeviceList,
    /// The processes this run trains over (`--distributed`).
    group: Option<Arc<dyn Collective>>,
    average_batch_norm: bool,
}

impl WithBackend for TrainJob {
    type Output = Summary;

    fn run<B: QatBackend>(self, device: B::Device) -> Result<Summary> {
        self.run_on::<B>(vec![device])
    }

    fn run_on<B: QatBackend>(self, devices: Vec<B::Device>) -> Result<Summary> {
        let Self {
            data_dir,
            cfg,
            out,
            resume,
            devices: list,
            group,
            average_batch_norm,
        } = self;
        let lead = group.as_ref().is_none_or(|g| g.rank() == 0);
        let device = devices.first().context("no device")?.clone();
        let recipe = cfg.recipe()?;
        let data = load_data(&cfg, &data_dir, lead)?;
        B::seed(&device, cfg.seed);
        let model = match (&cfg.from, resume) {
            (Some(from), false) => {
                // Loaded on the autodiff backend and then made inner with `valid()`, which
                // keeps every parameter's trainable flag; a record loaded on the inner
                // backend comes back frozen (Burn 0.21 takes the flag from the tensor).
                let temps = Temperatures::default();
                let (from_cfg, model) = load_run::<B>(from, &temps, &device)?;
                let mut model = model.valid();
                quantize::attach(&mut model, &temps);
                if (from_cfg.model, from_cfg.dataset.input()) != (cfg.model, cfg.dataset.input()) {
                    bail!(
                        "--from {}: a {} for {}, not a {} for {}",
                        from.display(),
                        from_cfg.model,
                        from_cfg.dataset,
                        cfg.model,
                        cfg.dataset
                    );
                }
                if lead {
                    println!(
                        "starting from {} ({})",
                        from.display(),
                        from_cfg.precision_tag()
                    );
                }
                model
            }
            _ => Model::new(cfg.model, cfg.dataset.input(), &device),
        };
        let policy = &recipe.policy;
        let quantized = !policy.is_float();
        let mut qat = Qat::new(recipe.clone(), &out).resume(resume).quiet(!lead);
        if let Some(group) = group {
            qat = qat
                .distributed(group)
                .average_batch_norm(average_batch_norm);
        }
        let (_, report) = qat.run_on::<B, _>(model, &data, &devices)?;
        let summary = Summary {
            model: cfg.model.to_string(),
            dataset: cfg.dataset.to_string(),
            backend: list.backend.name().into(),
            devices: list.names(),
            weights: cfg.weights.to_string(),
            acts: cfg.acts.to_string(),
            epochs: cfg.epochs,
            pretrain_epochs: if cfg.from.is_none() && quantized {
                cfg.pretrain_epochs
            } else {
                0
            },
            train_images: report.train_images,
            test_images: report.test_images,
            test_accuracy_fp: report.full_precision_accuracy,
            test_accuracy_hard: report.test_accuracy_hard,
            test_accuracy_soft: Some(report.test_accuracy_soft),
            seconds_per_epoch: report.seconds_per_epoch,
            temperature: crate::run::Temperatures {
                weights: report.temperatures.0,
                acts: report.temperatures.1,
            },
            layers: report.layers,
        };
        summary.write(&out)?;
        Ok(summary)
    }
}

fn default_out(cfg: &RunConfig) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!(
        "{}-{}-{}-{stamp}",
        cfg.model,
        cfg.dataset,
        cfg.precision_tag()
    ))
}

pub(crate) fn run(args: TrainArgs) -> Result<()> {
    super::as_ranks(args.distributed, |group| run_as(args, group))
}

/// Where rank `rank` of a run in `out` keeps its files: `out` for rank 0, `out/ranks/R`.
fn rank_dir(out: &Path, rank: usize) -> PathBuf {
    if rank == 0 {
        out.to_path_buf()
    } else {
        out.join("ranks").join(rank.to_string())
    }
}

/// How a run was launched (`launch.json`): a resumed run must be launched the same way, or
/// its data split and step would change.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Launch {
    ranks: usize,
    devices: Vec<String>,
    /// `--average-batch-norm`.
    #[serde(default)]
    average_batch_norm: bool,
}

impl Launch {
    fn describe(&self) -> String {
        format!(
            "{} process(es) × devices {}{}",
            self.ranks,
            self.devices.join(","),
            if self.average_batch_norm {
                " with --average-batch-norm"
            } else {
                ""
            }
        )
    }

    /// Refuses to resume `dir` with another launch than the one that started it (runs from
    /// before `launch.json` was written are not checked).
    fn check_resume(&self, dir: &Path) -> Result<()> {
        let path = dir.join("launch.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let started: Launch = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a launch record", path.display()))?;
        if &started != self {
            bail!(
                "--resume {}: the run was started on {}, not {}: resume it as it was started",
                dir.display(),
                started.describe(),
                self.describe()
            );
        }
        Ok(())
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("serialising the launch")?;
        crate::run::write_atomic(&dir.join("launch.json"), text.as_bytes())
    }
}

fn run_as(args: TrainArgs, group: Option<Arc<dyn Collective>>) -> Result<()> {
    let rank = group.as_ref().map_or(0, |g| g.rank());
    let lead = rank == 0;
    let (cfg, out, resume) = match &args.resume {
        Some(dir) => {
            let dir = rank_dir(dir, rank);
            let cfg = RunConfig::read(&dir.join("config.toml")).with_context(|| {
                format!("--resume {}: not a quantnet run directory", dir.display())
            })?;
            (cfg, dir, true)
        }
        None => {
            let cfg = args.config()?;
            let out = match (&args.out, &group) {
                (Some(out), _) => rank_dir(out, rank),
                (None, None) => default_out(&cfg),
                (None, Some(_)) => {
                    bail!("--distributed needs --out: every process must name the same run")
                }
            };
            if out.join("config.toml").exists() {
                bail!(
                    "{} already holds a run; pass --resume {} to continue it or another --out",
                    out.display(),
                    out.display()
                );
            }
            (cfg, out, false)
        }
    };
    cfg.validate()?;
    let list = args.target.list();
    let n = list.names().len();
    if !cfg.batch_size.is_multiple_of(n) {
        bail!(
            "--batch-size {} does not split evenly over {n} devices: each step runs the same \
             number of images on every device",
            cfg.batch_size
        );
    }
    let launch = Launch {
        ranks: group.as_ref().map_or(1, |g| g.size()),
        devices: list.names(),
        average_batch_norm: args.average_batch_norm,
    };
    if resume {
        launch.check_resume(&out)?;
    }
    if let (false, Some(from)) = (resume, &cfg.from) {
        for file in ["config.toml", "model.mpk"] {
            if !from.join(file).is_file() {
                bail!(
                    "--from {}: not a quantnet run directory (no {file})",
                    from.display()
                );
            }
        }
    }
    // Check the devices and find (or download) the data before creating anything, so that a
    // device that does not exist or a missing data set leaves no run behind.
    crate::backend::check_devices(&list)?;
    if cfg.model.detector().is_some() && resume {
        bail!("detector runs cannot be resumed yet: start a new run");
    }
    if cfg.model.detector().is_some() && group.is_some() {
        bail!("--distributed: detectors train in one process for now (--devices works)");
    }
    let data_dir = super::data::locate_or_fetch(cfg.dataset, cfg.data_dir.as_deref())?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    cfg.write(&out)?;
    launch.write(&out)?;
    if lead {
        println!(
            "run {}: {} on {}, weights {}, activations {}, {} epoch(s), backend {}{}",
            out.display(),
            cfg.model,
            cfg.dataset,
            cfg.weights,
            cfg.acts,
            cfg.epochs,
            list.names().join(","),
            match &group {
                Some(g) => format!(", {} processes", g.size()),
                None => String::new(),
            }
        );
    }
    if cfg.model.detector().is_some() {
        return super::detect::train(cfg, &out, &data_dir, list);
    }
    let summary = dispatch(
        list.clone(),
        TrainJob {
            data_dir,
            cfg,
            out: out.clone(),
            resume,
            devices: list,
            group,
            average_batch_norm: args.average_batch_norm,
        },
    )?;
    if !lead {
        return Ok(());
    }
    let per_epoch = summary.seconds_per_epoch.iter().sum::<f64>()
        / summary.seconds_per_epoch.len().max(1) as f64;
    println!(
        "test accuracy (hard-quantized): {:.2}%   (soft, diagnostic: {:.2}%)   {:.1} s/epoch",
        summary.test_accuracy_hard,
        summary.test_accuracy_soft.unwrap_or(f64::NAN),
        per_epoch
    );
    println!(
        "wrote {}/{{model.mpk,metrics.csv,summary.json}}",
        out.display()
    );
    Ok(())
}
