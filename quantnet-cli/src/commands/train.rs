//! `quantnet train`: full precision, or quantized from a full-precision start, on real data.
//!
//! 1. The model: `--from` a run directory (its final model), or a fresh one trained for
//!    `pretrain_epochs` in full precision first when the run quantizes anything.
//! 2. Quantize: weight quantizers from the trained weights (β = 5p/4q, k-means thresholds), then
//!    activation quantizers calibrated on `calibration_images` training images.
//! 3. Train with burn-train's Learner; the temperature hook raises T every epoch; validation on
//!    the whole test set runs hard-quantized; a checkpoint per epoch (`--resume` continues).
//! 4. Report the hard-quantized test accuracy (the model's accuracy) and the soft one (a
//!    diagnostic), write `model.mpk`, `metrics.csv` and `summary.json`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder, DataLoaderIterator};
use burn::data::dataset::InMemDataset;
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, SgdConfig};
use burn::record::{BinFileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::store::EventStoreClient;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::renderer::{
    EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{EarlyStoppingStrategy, Learner, SupervisedTraining};
use quantnet_burn::train::{GroupLr, LrSchedule, RunLr, TemperatureHook, TemperatureMetric};
use quantnet_burn::{QuantBackend, QuantMode};
use quantnet_models::data::{ImageBatch, ImageBatcher, ImageItem, Split};
use quantnet_models::quantize::{self, calibrate_acts, quantize_weights};
use quantnet_models::train::{
    LayerMetric, LayerStats, MonitorOptions, Monitored, SoftHardGapMetric, layer_stats,
};
use quantnet_models::{Model, QuantPolicy, Temperatures};

use crate::backend::{BackendName, WithBackend, dispatch};
use crate::cli::TrainArgs;
use crate::run::{RunConfig, Summary, write_atomic};

/// Prints plain progress lines: about ten per epoch, with the epoch's running metrics.
struct PlainRenderer {
    phase: String,
    names: Vec<(burn::train::metric::MetricId, String)>,
    metrics: Vec<(burn::train::metric::MetricId, String)>,
    last: Option<(usize, usize, bool)>,
}

impl PlainRenderer {
    fn new(phase: &str) -> Self {
        Self {
            phase: phase.to_string(),
            names: Vec::new(),
            metrics: Vec::new(),
            last: None,
        }
    }

    fn update(&mut self, state: MetricState) {
        let entry = match state {
            MetricState::Generic(e) | MetricState::Numeric(e, _) => e,
        };
        // Per-layer α/β/occupancy go to the logs and metrics.csv, not the progress lines.
        let per_layer = self.names.iter().any(|(id, name)| {
            *id == entry.metric_id
                && ["alpha ", "beta ", "occupancy "]
                    .iter()
                    .any(|p| name.starts_with(p))
        });
        if per_layer {
            return;
        }
        // burn-train formats numeric metrics as "epoch X - batch Y": keep the epoch's value.
        let text = entry.serialized_entry.formatted;
        let value = text
            .split(" - ")
            .next()
            .unwrap_or(&text)
            .trim_start_matches("epoch ")
            .to_string();
        match self
            .metrics
            .iter_mut()
            .find(|(id, _)| *id == entry.metric_id)
        {
            Some(slot) => slot.1 = value,
            None => self.metrics.push((entry.metric_id, value)),
        }
    }

    fn render(&mut self, valid: bool, item: &TrainingProgress) {
        let Some(progress) = &item.progress else {
            return;
        };
        let total = progress.items_total.max(1);
        let decile = progress.items_processed * 10 / total;
        let epoch = item.global_progress.items_processed;
        if self.last == Some((epoch, decile, valid)) || (valid && progress.items_processed < total)
        {
            return;
        }
        self.last = Some((epoch, decile, valid));
        let metrics: Vec<String> = self
            .metrics
            .iter()
            .map(|(id, value)| {
                let name = self
                    .names
                    .iter()
                    .find(|(i, _)| i == id)
                    .map_or("?", |(_, n)| n.as_str());
                format!("{name} {value}")
            })
            .collect();
        println!(
            "{} epoch {}/{} {} {:>3}% ({}/{})  {}",
            self.phase,
            epoch,
            item.global_progress.items_total,
            if valid { "test (hard)" } else { "train" },
            progress.items_processed * 100 / total,
            progress.items_processed,
            progress.items_total,
            metrics.join("  ")
        );
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        if self.last.is_some_and(|(_, _, valid)| valid) {
            // The first training update after a validation: drop the test metrics.
            self.metrics.clear();
        }
        self.update(state);
    }
    fn update_valid(&mut self, state: MetricState) {
        if self.last.is_some_and(|(_, _, valid)| !valid) {
            // The first validation update: show the test metrics, not the training ones.
            self.metrics.clear();
            self.last = None;
        }
        self.update(state);
    }
    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        self.render(false, &item);
    }
    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        self.render(true, &item);
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
    fn update_test(&mut self, _: burn::train::renderer::EvaluationName, _: MetricState) {}
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, definition: burn::train::metric::MetricDefinition) {
        self.names.push((definition.metric_id, definition.name));
    }
}

/// Wall time per epoch, taken at burn-train's per-epoch call (after validation).
#[derive(Clone)]
struct EpochClock {
    start: Arc<Mutex<Instant>>,
    seconds: Arc<Mutex<Vec<f64>>>,
}

impl EpochClock {
    fn new() -> Self {
        Self {
            start: Arc::new(Mutex::new(Instant::now())),
            seconds: Arc::default(),
        }
    }

    fn seconds(&self) -> Vec<f64> {
        self.seconds.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl EarlyStoppingStrategy for EpochClock {
    fn should_stop(&mut self, _epoch: usize, _store: &EventStoreClient) -> bool {
        if let (Ok(mut start), Ok(mut seconds)) = (self.start.lock(), self.seconds.lock()) {
            seconds.push(start.elapsed().as_secs_f64());
            *start = Instant::now();
        }
        false
    }
}

struct Data {
    train: Vec<ImageItem>,
    test: Vec<ImageItem>,
    batcher: ImageBatcher,
}

fn load_data(cfg: &RunConfig, dir: &Path) -> Result<Data> {
    let dir = dir.to_path_buf();
    let train = cfg.dataset.load(&dir, Split::Train)?;
    let test = cfg.dataset.load(&dir, Split::Test)?;
    let (means, stds) = cfg.dataset.normalisation();
    let batcher = train.batcher();
    let expected = cfg.dataset.input();
    if (batcher.channels, batcher.rows, batcher.cols)
        != (expected.channels, expected.height, expected.width)
    {
        bail!(
            "{}: images are {}×{}×{}, expected {}×{}×{}",
            dir.display(),
            batcher.channels,
            batcher.rows,
            batcher.cols,
            expected.channels,
            expected.height,
            expected.width
        );
    }
    let mut train_items = train.items_normalised(usize::MAX, &means, &stds);
    if let Some(limit) = cfg.limit.filter(|&l| l < train_items.len()) {
        // A seeded sample, not the first N: image folders are sorted by class.
        let keep = quantnet_models::data::sample_indices(train_items.len(), limit, cfg.seed);
        train_items = keep.into_iter().map(|i| train_items[i].clone()).collect();
    }
    let data = Data {
        train: train_items,
        test: test.items_normalised(usize::MAX, &means, &stds),
        batcher,
    };
    println!(
        "{} from {}: {} training images, {} test images",
        cfg.dataset,
        dir.display(),
        data.train.len(),
        data.test.len()
    );
    Ok(data)
}

fn loader<B: Backend>(
    items: Vec<ImageItem>,
    batcher: ImageBatcher,
    batch_size: usize,
    shuffle: Option<u64>,
) -> Arc<dyn DataLoader<B, ImageBatch<B>>> {
    let builder = DataLoaderBuilder::new(batcher)
        .batch_size(batch_size)
        .num_workers(1);
    let builder = match shuffle {
        Some(seed) => builder.shuffle(seed),
        None => builder,
    };
    builder.build(InMemDataset::new(items))
}

/// A training loader that, at its first iteration, first runs the wrapped loader's shuffle for
/// `skip` epochs: Burn's loader reshuffles at every epoch from one seeded generator (restarted
/// by `to_device`, which burn-train calls), so a run resumed after `skip` epochs would
/// otherwise see epoch 1's order again instead of the uninterrupted run's.
struct SkipEpochs<B: Backend> {
    inner: Arc<dyn DataLoader<B, ImageBatch<B>>>,
    skip: Arc<AtomicUsize>,
}

impl<B: Backend> DataLoader<B, ImageBatch<B>> for SkipEpochs<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ImageBatch<B>> + 'a> {
        for _ in 0..self.skip.swap(0, Ordering::SeqCst) {
            // Taking one batch makes sure the worker thread's shuffle has happened.
            let _ = self.inner.iter().next();
        }
        self.inner.iter()
    }

    fn num_items(&self) -> usize {
        self.inner.num_items()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, ImageBatch<B>>> {
        Arc::new(Self {
            inner: self.inner.to_device(device),
            skip: Arc::new(AtomicUsize::new(self.skip.load(Ordering::SeqCst))),
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, ImageBatch<B>>> {
        Arc::new(Self {
            inner: self.inner.slice(start, end),
            skip: Arc::new(AtomicUsize::new(self.skip.load(Ordering::SeqCst))),
        })
    }
}

/// The epochs of the checkpoints in `dir/checkpoint`, highest last.
fn checkpoint_epochs(dir: &Path) -> Vec<usize> {
    let mut epochs: Vec<usize> = std::fs::read_dir(dir.join("checkpoint"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("model-")?.split('.').next()?.parse().ok()
        })
        .collect();
    epochs.sort_unstable();
    epochs
}

/// [`quantize::BN_REESTIMATION_BATCHES`] batches of `cfg.batch_size` training images, a seeded
/// sample (cycled through when the training set is smaller), made one at a time.
fn bn_batches<'a, B: Backend>(
    data: &'a Data,
    cfg: &RunConfig,
    device: &'a B::Device,
) -> impl Iterator<Item = burn::tensor::Tensor<B, 4>> + 'a {
    let wanted = quantize::BN_REESTIMATION_BATCHES * cfg.batch_size;
    // In a random order: batches of class-sorted folders must mix classes.
    let sample = quantnet_models::data::shuffled_indices(
        data.train.len(),
        wanted.min(data.train.len()),
        cfg.seed,
    );
    let order: Vec<usize> = sample.iter().copied().cycle().take(wanted).collect();
    let batch_size = cfg.batch_size;
    (0..order.len() / batch_size).map(move |b| {
        let items = order[b * batch_size..(b + 1) * batch_size]
            .iter()
            .map(|&i| data.train[i].clone())
            .collect();
        let batch: ImageBatch<B> = data.batcher.batch(items, device);
        batch.images
    })
}

/// Loads a run's final model (with its own policy) onto `device`.
pub(crate) fn load_run<B: Backend>(
    dir: &Path,
    temps: &Temperatures,
    device: &B::Device,
) -> Result<(RunConfig, Model<B>)> {
    let cfg = RunConfig::read(&dir.join("config.toml"))
        .with_context(|| format!("{} is not a quantnet run directory", dir.display()))?;
    let policy = cfg.policy()?;
    let mut model = Model::new(cfg.model, cfg.dataset.input(), device);
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

fn save_model<B: Backend>(model: &Model<B>, dir: &Path) -> Result<()> {
    // The recorder sets the extension itself: write `model-partial.mpk`, then rename.
    let path = dir.join("model.mpk");
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .record(model.clone().into_record(), dir.join("model-partial"))
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(dir.join("model-partial.mpk"), &path)
        .with_context(|| format!("writing {}", path.display()))
}

struct Phase<'a> {
    name: &'a str,
    lr: f64,
    dir: PathBuf,
    epochs: usize,
    resume_from: Option<usize>,
    hook: TemperatureHook,
    /// Train only the activation quantizers (`--phase acts`).
    acts_only: bool,
}

/// One burn-train run of `phase.epochs` epochs; returns the trained model and seconds per epoch.
fn fit<B>(
    model: Model<B::InnerBackend>,
    phase: Phase<'_>,
    cfg: &RunConfig,
    data: &Data,
    temps: &Temperatures,
) -> Result<(Model<B::InnerBackend>, Vec<f64>)>
where
    B: AutodiffBackend + QuantBackend,
    B::InnerBackend: QuantBackend,
{
    let dir = phase
        .dir
        .to_str()
        .context("the run directory's path is not UTF-8")?
        .to_string();
    let clock = EpochClock::new();
    let start = phase.resume_from.unwrap_or(0);
    phase.hook.start_at(start);
    let train_loader: Arc<dyn DataLoader<B, ImageBatch<B>>> = Arc::new(SkipEpochs {
        inner: loader::<B>(
            data.train.clone(),
            data.batcher,
            cfg.batch_size,
            Some(cfg.seed),
        ),
        skip: Arc::new(AtomicUsize::new(start)),
    });
    if start > 0 {
        stash_logs(&phase.dir, start)?;
    }
    let stats = layer_stats(&model)?;
    // With quantized weights the norm is taken over ∂ℓ/∂ŵ by the training step; otherwise the
    // two domains coincide and the optimizer clips.
    let weights_quantized = stats.iter().any(|s| s.occupancy.is_some());
    let clip_in_wq = cfg
        .clip
        .filter(|_| cfg.clip_in == "wq" && weights_quantized);
    let clipping = cfg
        .clip
        .filter(|_| clip_in_wq.is_none())
        .map(GradientClippingConfig::Norm);
    let monitor = MonitorOptions {
        soft_gap: !stats.is_empty(),
        layer_stats: !stats.is_empty(),
        clip_in_wq,
    };
    let mut model = <Model<B> as AutodiffModule<B>>::from_inner(model);
    if phase.acts_only {
        let n = quantize::train_only_act_quantizers(&mut model);
        println!("training only the {n} activation quantizer(s); everything else is fixed");
    }
    // The quantizer scales' learning-rate group, read from the module at every step (on resume,
    // burn-train loads the checkpoint's record, and with it other parameter ids).
    // `slots()` borrows mutably: walk a clone (tensors are shared, ids kept).
    let with_weights = cfg.quant_lr_group == "all";
    let quantizer_params = move |m: &Monitored<B>| -> Vec<ParamId> {
        let mut model = m.model().clone();
        let slots = model.slots();
        let acts = slots.acts.into_iter().filter_map(|(_, a)| {
            a.quantizer
                .as_ref()
                .map(|q| [q.alpha.id, q.beta.id, q.thresholds.id])
        });
        let mut ids: Vec<ParamId> = acts.flatten().collect();
        if with_weights {
            for (_, mut layer) in slots.weights {
                if let Some(q) = layer.quantizer().as_ref() {
                    ids.extend([q.alpha.id, q.beta.id, q.thresholds.id]);
                }
            }
        }
        ids
    };
    let model = Monitored::new(model, monitor).with_hook(phase.hook.clone());
    // The builder's type depends on the optimizer's, so it is spelled out once per optimizer.
    macro_rules! launch {
        ($optimizer:expr) => {{
            let mut training = SupervisedTraining::new(
                dir.clone(),
                train_loader.clone(),
                loader::<B::InnerBackend>(data.test.clone(), data.batcher, 500, None),
            )
            .metrics((AccuracyMetric::new(), LossMetric::new()))
            .metric_train_numeric(TemperatureMetric::new("Weight temperature", &temps.weights))
            .metric_train_numeric(TemperatureMetric::new("Act temperature", &temps.acts))
            .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
            .early_stopping(phase.hook.clone().with_early_stopping(clock.clone()))
            .renderer(PlainRenderer::new(phase.name))
            .num_epochs(phase.epochs);
            if monitor.soft_gap {
                training = training.metric_valid_numeric(SoftHardGapMetric::new());
            }
            for metric in LayerMetric::for_layers(&stats) {
                training = if metric.is_numeric() {
                    training.metric_valid_numeric(metric)
                } else {
                    training.metric_valid(metric)
                };
            }
            if start > 0 {
                training = training.checkpoint(start);
            }
            training
                .launch(Learner::new(
                    model,
                    GroupLr::new($optimizer, quantizer_params, cfg.quant_lr_mult),
                    RunLr::new(
                        phase.lr,
                        cfg.lr_schedule.parse::<LrSchedule>()?,
                        phase.epochs,
                        data.train.len().div_ceil(cfg.batch_size),
                    ),
                ))
                .model
                .into_model()
        }};
    }
    let decay = (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32));
    let trained = if cfg.optimizer == "sgd" {
        launch!(
            SgdConfig::new()
                .with_momentum(Some(MomentumConfig::new().with_dampening(0.0)))
                .with_weight_decay(decay)
                .with_gradient_clipping(clipping)
                .init()
        )
    } else {
        launch!(
            AdamConfig::new()
                .with_weight_decay(decay)
                .with_grad_clipping(clipping)
                .init()
        )
    };
    if start > 0 {
        renumber_logs(&phase.dir, start)?;
    }
    Ok((trained, clock.seconds()))
}

/// burn-train (0.21) writes a resumed run's first epoch into `epoch-1` again, over the first
/// epoch's logs (its log store starts at 1 and then follows the real epoch numbers: the resumed
/// run's later epochs land in the right folders). Before resuming after `start` epochs: set
/// `epoch-1..=start` aside and drop the later ones (an interrupted epoch's partial logs).
fn stash_logs(dir: &Path, start: usize) -> Result<()> {
    // An earlier resume that was itself interrupted: put its logs in order first.
    let marker = dir.join("train-before-resume").join("start");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        renumber_logs(dir, text.trim().parse().context("a corrupt resume marker")?)?;
    }
    for split in ["train", "valid"] {
        let logs = dir.join(split);
        if !logs.is_dir() {
            continue;
        }
        let stash = dir.join(format!("{split}-before-resume"));
        std::fs::create_dir_all(&stash).with_context(|| format!("creating {}", stash.display()))?;
        std::fs::write(stash.join("start"), start.to_string())?;
        for entry in std::fs::read_dir(&logs)? {
            let path = entry?.path();
            let epoch = path
                .file_name()
                .and_then(|n| n.to_str()?.strip_prefix("epoch-")?.parse::<usize>().ok());
            match epoch {
                Some(e) if e <= start => std::fs::rename(&path, stash.join(format!("epoch-{e}")))?,
                Some(_) => std::fs::remove_dir_all(&path)?,
                None => {}
            }
        }
    }
    Ok(())
}

/// After a resumed run: its first epoch's `epoch-1` folder is epoch `start + 1`; the set-aside
/// first `start` come back (see [`stash_logs`]).
fn renumber_logs(dir: &Path, start: usize) -> Result<()> {
    for split in ["train", "valid"] {
        let logs = dir.join(split);
        let stash = dir.join(format!("{split}-before-resume"));
        if !stash.is_dir() {
            continue;
        }
        std::fs::create_dir_all(&logs)?;
        let first = logs.join("epoch-1");
        if first.is_dir() {
            std::fs::rename(&first, logs.join(format!("epoch-{}", start + 1)))?;
        }
        for e in 1..=start {
            let from = stash.join(format!("epoch-{e}"));
            if from.is_dir() {
                std::fs::rename(from, logs.join(format!("epoch-{e}")))?;
            }
        }
        std::fs::remove_dir_all(&stash)?;
    }
    Ok(())
}

/// Per-epoch metrics from burn-train's logs (`DIR/{train,valid}/epoch-N/NAME.log`, lines of
/// `value,count`): the count-weighted mean.
fn epoch_mean(dir: &Path, split: &str, epoch: usize, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log_path(dir, split, epoch, name)).ok()?;
    let (mut sum, mut n) = (0.0, 0.0);
    for line in text.lines() {
        let (v, c) = line.split_once(',')?;
        let (v, c): (f64, f64) = (v.trim().parse().ok()?, c.trim().parse().ok()?);
        sum += v * c;
        n += c;
    }
    (n > 0.0).then(|| sum / n)
}

/// The last logged value of a text metric in an epoch.
fn epoch_last(dir: &Path, split: &str, epoch: usize, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(log_path(dir, split, epoch, name)).ok()?;
    text.lines().last().map(str::to_string)
}

/// burn-train's log file of metric `name` (spaces become underscores).
fn log_path(dir: &Path, split: &str, epoch: usize, name: &str) -> PathBuf {
    dir.join(split)
        .join(format!("epoch-{epoch}"))
        .join(format!("{}.log", name.replace(' ', "_")))
}

fn write_metrics(
    dir: &Path,
    phase_dir: &Path,
    epochs: usize,
    seconds: &[f64],
    policy: &QuantPolicy,
    layers: &[LayerStats],
) -> Result<()> {
    let mut csv = String::from(
        "epoch,train_loss,train_accuracy,test_loss,test_accuracy_hard,soft_hard_gap,\
         weights_temperature,acts_temperature,seconds",
    );
    for layer in layers {
        csv.push_str(&format!(",alpha {0},beta {0}", layer.name));
        if layer.occupancy.is_some() {
            csv.push_str(&format!(",occupancy {}", layer.name));
        }
    }
    csv.push('\n');
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    // `seconds` holds the epochs this process ran: the last `seconds.len()` (a resumed run
    // timed only those after its checkpoint).
    let untimed = epochs.saturating_sub(seconds.len());
    let surplus = seconds.len().saturating_sub(epochs);
    for epoch in 1..=epochs {
        // The temperatures burn-train logged every step (their epoch mean), not the schedule's.
        let t = |name: &str, on: bool| {
            if on {
                cell(epoch_mean(phase_dir, "train", epoch, name))
            } else {
                String::new()
            }
        };
        let timed = (epoch > untimed)
            .then(|| seconds.get(surplus + epoch - 1 - untimed).copied())
            .flatten();
        csv.push_str(&format!(
            "{epoch},{},{},{},{},{},{},{},{}",
            cell(epoch_mean(phase_dir, "train", epoch, "Loss")),
            cell(epoch_mean(phase_dir, "train", epoch, "Accuracy")),
            cell(epoch_mean(phase_dir, "valid", epoch, "Loss")),
            cell(epoch_mean(phase_dir, "valid", epoch, "Accuracy")),
            cell(epoch_mean(phase_dir, "valid", epoch, "Soft-hard gap")),
            t("Weight temperature", policy.weights.is_some()),
            t("Act temperature", policy.acts.is_some()),
            cell(timed),
        ));
        for layer in layers {
            for what in ["alpha", "beta"] {
                let name = format!("{what} {}", layer.name);
                csv.push(',');
                csv.push_str(&cell(epoch_mean(phase_dir, "valid", epoch, &name)));
            }
            if layer.occupancy.is_some() {
                let name = format!("occupancy {}", layer.name);
                csv.push(',');
                csv.push_str(&epoch_last(phase_dir, "valid", epoch, &name).unwrap_or_default());
            }
        }
        csv.push('\n');
    }
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())
}

/// Test accuracy (%) hard-quantized (the model's accuracy) and with the soft quantizers at the
/// current temperatures (a diagnostic), and the seconds the hard pass took.
pub(crate) fn hard_and_soft_accuracy<B: QuantBackend>(
    model: &mut Model<B>,
    items: &[ImageItem],
    batcher: ImageBatcher,
    device: &B::Device,
) -> (f64, f64, f64) {
    let started = Instant::now();
    let hard = quantnet_models::train::accuracy(model, items, batcher, 500, device);
    let seconds = started.elapsed().as_secs_f64();
    quantize::set_mode(model, QuantMode::Soft);
    let soft = quantnet_models::train::accuracy(model, items, batcher, 500, device);
    quantize::set_mode(model, QuantMode::Auto);
    (hard, soft, seconds)
}

struct TrainJob {
    data_dir: PathBuf,
    cfg: RunConfig,
    out: PathBuf,
    resume: bool,
    backend: BackendName,
}

impl WithBackend for TrainJob {
    type Output = Summary;

    fn run<B>(self, device: B::Device) -> Result<Summary>
    where
        B: AutodiffBackend + QuantBackend,
        B::InnerBackend: QuantBackend,
    {
        let TrainJob {
            data_dir,
            cfg,
            out,
            resume,
            backend,
        } = self;
        let policy = cfg.policy()?;
        let data = load_data(&cfg, &data_dir)?;
        B::seed(&device, cfg.seed);
        let temps = Temperatures::default();
        let quantized = !policy.is_float();
        let main_dir = out.join("train");
        let done = checkpoint_epochs(&main_dir)
            .into_iter()
            .rfind(|&e| e <= cfg.epochs);

        let model = if let (true, Some(epoch)) = (resume, done) {
            println!("resuming from the checkpoint of epoch {epoch}");
            let mut model = Model::new(cfg.model, cfg.dataset.input(), &device);
            quantize::skeleton(&mut model, &policy, &temps, &device)?;
            (model, Some(epoch))
        } else {
            let mut model = match &cfg.from {
                Some(from) => {
                    // Loaded on the autodiff backend and then made inner with `valid()`, which
                    // keeps every parameter's trainable flag; a record loaded on the inner
                    // backend comes back frozen (Burn 0.21 takes the flag from the tensor).
                    let (from_cfg, model) = load_run::<B>(from, &temps, &device)?;
                    let mut model = model.valid();
                    quantize::attach(&mut model, &temps);
                    if (from_cfg.model, from_cfg.dataset.input())
                        != (cfg.model, cfg.dataset.input())
                    {
                        bail!(
                            "--from {}: a {} for {}, not a {} for {}",
                            from.display(),
                            from_cfg.model,
                            from_cfg.dataset,
                            cfg.model,
                            cfg.dataset
                        );
                    }
                    println!(
                        "starting from {} ({})",
                        from.display(),
                        from_cfg.precision_tag()
                    );
                    model
                }
                None => {
                    let model = Model::new(cfg.model, cfg.dataset.input(), &device);
                    if quantized && cfg.pretrain_epochs > 0 {
                        println!(
                            "full-precision pretraining: {} epoch(s)",
                            cfg.pretrain_epochs
                        );
                        let phase = Phase {
                            name: "pretrain",
                            lr: cfg.pretrain_lr,
                            dir: out.join("pretrain"),
                            epochs: cfg.pretrain_epochs,
                            resume_from: None,
                            hook: TemperatureHook::new(),
                            acts_only: false,
                        };
                        let (model, _) = fit::<B>(model, phase, &cfg, &data, &temps)?;
                        let fp = quantnet_models::train::accuracy(
                            &model,
                            &data.test,
                            data.batcher,
                            500,
                            &device,
                        );
                        println!("full precision: test accuracy {fp:.2}%");
                        model
                    } else {
                        model
                    }
                }
            };
            let w = quantize_weights(&mut model, &policy, &temps)?;
            // A seeded sample of the training images (the paper: 1000 at random).
            let sample: Vec<ImageItem> = quantnet_models::data::sample_indices(
                data.train.len(),
                cfg.calibration_images,
                cfg.seed,
            )
            .into_iter()
            .map(|i| data.train[i].clone())
            .collect();
            let calibration: Vec<_> = sample
                .chunks(100)
                .map(|c| {
                    let batch: ImageBatch<B::InnerBackend> =
                        data.batcher.batch(c.to_vec(), &device);
                    batch.images
                })
                .collect();
            // Soft calibration: the weights as training's first step will see them.
            let soft = cfg.calibrate == "soft";
            if soft {
                cfg.hook(&temps)?
                    .over(cfg.epochs, data.train.len().div_ceil(cfg.batch_size))
                    .start_at(0);
            }
            if quantized && cfg.bn_reestimate && model.has_batch_norm() {
                // Batch-norm statistics for the quantized weights calibration sees.
                let mode = if soft {
                    QuantMode::Soft
                } else {
                    QuantMode::Hard
                };
                model = quantize::reestimate_batch_norm_with::<B>(
                    model,
                    mode,
                    bn_batches::<B::InnerBackend>(&data, &cfg, &device),
                );
            }
            if soft {
                quantize::set_weight_mode(&mut model, QuantMode::Soft);
            }
            let a = calibrate_acts(&mut model, &policy, &temps, calibration)?;
            if soft {
                quantize::set_weight_mode(&mut model, QuantMode::Auto);
            }
            if quantized {
                println!("quantized {w} weight layer(s), calibrated {a} activation quantizer(s)");
            }
            (model, None)
        };
        let (model, resume_from) = model;
        let hook = cfg
            .hook(&temps)?
            .over(cfg.epochs, data.train.len().div_ceil(cfg.batch_size));
        let phase = Phase {
            name: if quantized { "quantized" } else { "train" },
            lr: cfg.main_lr()?,
            dir: main_dir.clone(),
            epochs: cfg.epochs,
            resume_from,
            hook: hook.clone(),
            acts_only: cfg.phase == "acts",
        };
        let (mut model, seconds) = fit::<B>(model, phase, &cfg, &data, &temps)?;
        quantize::attach(&mut model, &temps);
        // The temperatures of the last epoch (the hook has already moved to the next one).
        cfg.set_final_temperatures(&temps)?;
        if quantized && cfg.bn_reestimate && model.has_batch_norm() {
            // Training gathered the statistics under soft quantizers: fit them to the hard
            // network that is evaluated and exported.
            model = quantize::reestimate_batch_norm_with::<B>(
                model,
                QuantMode::Hard,
                bn_batches::<B::InnerBackend>(&data, &cfg, &device),
            );
            println!(
                "re-estimated the batch-norm statistics of the hard network ({} batches)",
                quantize::BN_REESTIMATION_BATCHES
            );
        }
        save_model(&model, &out)?;
        let layers = layer_stats(&model)?;
        write_metrics(&out, &main_dir, cfg.epochs, &seconds, &policy, &layers)?;

        let (hard, soft, _) = hard_and_soft_accuracy(&mut model, &data.test, data.batcher, &device);
        let summary = Summary {
            model: cfg.model.to_string(),
            dataset: cfg.dataset.to_string(),
            backend: backend.name().into(),
            weights: cfg.weights.clone(),
            acts: cfg.acts.clone(),
            epochs: cfg.epochs,
            pretrain_epochs: if cfg.from.is_none() && quantized {
                cfg.pretrain_epochs
            } else {
                0
            },
            train_images: data.train.len(),
            test_images: data.test.len(),
            test_accuracy_hard: hard,
            test_accuracy_soft: Some(soft),
            seconds_per_epoch: seconds,
            temperature: crate::run::Temperatures {
                weights: policy.weights.as_ref().map(|_| temps.weights.get()),
                acts: policy.acts.as_ref().map(|_| temps.acts.get()),
            },
            layers,
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

/// Config file, then flags.
fn config_from(args: &TrainArgs) -> Result<RunConfig> {
    let mut cfg = match &args.config {
        Some(path) => RunConfig::read(path)?,
        None => RunConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => {$(
            if let Some(v) = &args.$field {
                cfg.$field = v.clone().into();
            }
        )*};
    }
    set!(
        model,
        dataset,
        weights,
        acts,
        gradient,
        act_gradient,
        calibrate,
        act_range,
        bn_reestimate,
        epochs,
        pretrain_epochs,
        batch_size,
        pretrain_lr,
        lr_schedule,
        weight_decay,
        calibration_images,
        seed,
        optimizer,
        phase,
        clip_in,
        act_thresholds,
        quant_lr_mult,
        quant_lr_group
    );
    if args.lr.is_some() {
        cfg.lr = args.lr;
    }
    if args.act_percentile.is_some() {
        cfg.act_percentile = args.act_percentile;
    }
    if let Some(v) = &args.temperature {
        cfg.weights_temperature = v.clone();
    }
    if let Some(v) = &args.act_temperature {
        cfg.acts_temperature = v.clone();
    }
    if args.data_dir.is_some() {
        cfg.data_dir = args.data_dir.clone();
    }
    if args.limit.is_some() {
        cfg.limit = args.limit;
    }
    if args.clip.is_some() {
        cfg.clip = args.clip;
    }
    if args.from.is_some() {
        cfg.from = args.from.clone();
    }
    if args.quantize_all {
        cfg.quantize_all = true;
    }
    Ok(cfg)
}

pub(crate) fn run(args: TrainArgs) -> Result<()> {
    let (cfg, out, resume) = match &args.resume {
        Some(dir) => {
            let cfg = RunConfig::read(&dir.join("config.toml")).with_context(|| {
                format!("--resume {}: not a quantnet run directory", dir.display())
            })?;
            (cfg, dir.clone(), true)
        }
        None => {
            let cfg = config_from(&args)?;
            let out = args.out.clone().unwrap_or_else(|| default_out(&cfg));
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
    // Find (or download) the data before creating anything, so that a missing data set leaves
    // no run behind.
    let data_dir = super::data::locate_or_fetch(cfg.dataset, cfg.data_dir.as_deref())?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    cfg.write(&out)?;
    println!(
        "run {}: {} on {}, weights {}, activations {}, {} epoch(s), backend {}",
        out.display(),
        cfg.model,
        cfg.dataset,
        cfg.weights,
        cfg.acts,
        cfg.epochs,
        args.backend.name()
    );
    let summary = dispatch(
        args.backend,
        TrainJob {
            data_dir,
            cfg,
            out: out.clone(),
            resume,
            backend: args.backend,
        },
    )?;
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
