//! One burn-train run of a phase: loaders, metrics, checkpoints, the quantizer learning-rate
//! group, clipping, the temperature hook, exact resume.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder, DataLoaderIterator};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, ParamId};
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::backend::Backend;
use burn::train::metric::store::EventStoreClient;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    EarlyStoppingStrategy, ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining,
};
use quantnet_burn::QatBackend;
use quantnet_burn::collective::{AllReduced, Collective};
use quantnet_burn::train::{GroupLr, RunLr, TemperatureHook, TemperatureMetric};

use super::{ClipDomain, QatConfig, QatData, Renderers, write_error};
use crate::data::{ImageBatch, ImageBatcher, Images, Shard, StreamLoader};
use crate::error::{Error, Result};
use crate::models::QatTrainModel;
use crate::quantize::{self, Temperatures};
use crate::train::{LayerMetric, MonitorOptions, Monitored, SoftHardGapMetric, layer_stats};

/// `$launch!(optimizer)` with the optimizer `$cfg` names (`optimizer`, `weight_decay`) and the
/// optimizer's own gradient clipping `$clipping`: the launch of a burn-train run is spelled once
/// per optimizer type (the builder's type depends on it), by classifiers and detectors alike.
macro_rules! with_optimizer {
    ($cfg:expr, $clipping:expr, $launch:ident) => {{
        let decay = ($cfg.weight_decay > 0.0)
            .then(|| burn::optim::decay::WeightDecayConfig::new($cfg.weight_decay as f32));
        match $cfg.optimizer {
            $crate::qat::OptimizerKind::Sgd => $launch!(
                burn::optim::SgdConfig::new()
                    .with_momentum(Some(
                        burn::optim::momentum::MomentumConfig::new().with_dampening(0.0)
                    ))
                    .with_weight_decay(decay)
                    .with_gradient_clipping($clipping)
                    .init()
            ),
            $crate::qat::OptimizerKind::Adam => $launch!(
                burn::optim::AdamConfig::new()
                    .with_weight_decay(decay)
                    .with_grad_clipping($clipping)
                    .init()
            ),
        }
    }};
}
pub(crate) use with_optimizer;

/// Wall time per epoch, taken at burn-train's per-epoch call (after validation).
#[derive(Clone)]
pub(crate) struct EpochClock {
    start: Arc<Mutex<Instant>>,
    seconds: Arc<Mutex<Vec<f64>>>,
}

impl EpochClock {
    pub(crate) fn new() -> Self {
        Self {
            start: Arc::new(Mutex::new(Instant::now())),
            seconds: Arc::default(),
        }
    }

    pub(crate) fn seconds(&self) -> Vec<f64> {
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

/// Threads that decode images read from files: one per core.
fn loader_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn loader<B: Backend>(
    items: Images,
    batcher: ImageBatcher,
    batch_size: usize,
    shuffle: Option<u64>,
) -> Arc<dyn DataLoader<B, ImageBatch<B>>> {
    if items.is_streamed() {
        // Images read from files: decoded on one thread per core, at most two batches per
        // thread ahead of training (Burn's own loader would queue up to 100 batches).
        let workers = loader_threads();
        return Arc::new(StreamLoader::new(
            items,
            batcher,
            batch_size,
            shuffle,
            workers,
            2 * workers,
        ));
    }
    let builder = DataLoaderBuilder::new(batcher)
        .batch_size(batch_size)
        .num_workers(1);
    let builder = match shuffle {
        Some(seed) => builder.shuffle(seed),
        None => builder,
    };
    builder.build(items)
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
pub(crate) fn checkpoint_epochs(dir: &Path) -> Vec<usize> {
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

/// Where a phase's progress goes: the user's renderers, else plain lines unless quiet.
#[derive(Clone, Copy)]
pub(crate) struct Progress<'a> {
    pub(crate) quiet: bool,
    pub(crate) renderers: Option<&'a Renderers>,
}

pub(crate) struct Phase<'a> {
    pub(crate) name: &'a str,
    pub(crate) lr: f64,
    pub(crate) dir: PathBuf,
    pub(crate) epochs: usize,
    pub(crate) resume_from: Option<usize>,
    pub(crate) hook: TemperatureHook,
    /// Train only the activation quantizers.
    pub(crate) acts_only: bool,
    /// Over ranks: the group that averages the gradients (each rank reads its [`shard`]).
    pub(crate) group: Option<Arc<dyn Collective>>,
}

/// This rank's share of every epoch over `group` at `batch_size` images per global step.
pub(crate) fn shard(group: Option<&Arc<dyn Collective>>, batch_size: usize) -> Option<Shard> {
    group.map(|g| Shard {
        rank: g.rank(),
        size: g.size(),
        batch: batch_size / g.size().max(1),
    })
}

/// Optimizer steps per epoch on `devices` devices: over ranks, the whole global steps of the
/// shard; otherwise as [`QatData::steps_per_epoch_on`].
pub(crate) fn steps_per_epoch(
    data: &QatData,
    batch_size: usize,
    devices: usize,
    shard: Option<Shard>,
) -> usize {
    match shard {
        Some(shard) => shard.steps(data.train.len()),
        None => data.steps_per_epoch_on(batch_size, devices),
    }
}

/// One burn-train run of `phase.epochs` epochs; returns the trained model and seconds per epoch.
pub(crate) fn fit<B, M>(
    model: M,
    phase: Phase<'_>,
    cfg: &QatConfig,
    data: &QatData,
    temps: &Temperatures,
    devices: &[B::Device],
    progress: Progress<'_>,
) -> Result<(M, Vec<f64>)>
where
    B: QatBackend,
    M: QatTrainModel<B>,
{
    let dir = phase
        .dir
        .to_str()
        .ok_or_else(|| Error::Invalid("the run directory's path is not UTF-8".into()))?
        .to_string();
    let quiet = progress.quiet;
    let clock = EpochClock::new();
    let start = phase.resume_from.unwrap_or(0);
    // Each device runs its share of a step's images (`Qat::run_on` checked the split).
    let n_devices = devices.len().max(1);
    phase.hook.start_at(start);
    let shard = shard(phase.group.as_ref(), cfg.batch_size);
    let train_loader: Arc<dyn DataLoader<B, ImageBatch<B>>> = match shard {
        // This rank's share of every epoch, from the epoch the run starts at.
        Some(shard) => {
            let workers = if data.train.is_streamed() {
                loader_threads()
            } else {
                1
            };
            Arc::new(StreamLoader::shard(
                data.train.clone(),
                data.batcher,
                shard.batch / n_devices,
                cfg.seed,
                shard,
                start as u64,
                workers,
                2 * workers,
            ))
        }
        None => Arc::new(SkipEpochs {
            inner: loader::<B>(
                data.train.clone(),
                data.batcher,
                cfg.batch_size / n_devices,
                Some(cfg.seed),
            ),
            skip: Arc::new(AtomicUsize::new(start)),
        }),
    };
    if start > 0 {
        stash_logs(&phase.dir, start)?;
    }
    let stats = layer_stats(&model)?;
    // With quantized weights the norm is taken over ∂ℓ/∂ŵ by the training step; otherwise the
    // two domains coincide and the optimizer clips.
    let weights_quantized = stats.iter().any(|s| s.occupancy.is_some());
    let clip_in_wq = cfg
        .clip
        .filter(|_| cfg.clip_in == ClipDomain::Wq && weights_quantized);
    let clipping = cfg
        .clip
        .filter(|_| clip_in_wq.is_none())
        .map(GradientClippingConfig::Norm);
    let monitor = MonitorOptions {
        soft_gap: !stats.is_empty(),
        layer_stats: !stats.is_empty(),
        clip_in_wq,
        // burn-train sums the devices' gradients; the optimizer gets their mean.
        grad_scale: 1.0 / n_devices as f32,
    };
    let mut model = M::TrainModule::from_inner(model);
    if phase.acts_only {
        let n = quantize::train_only_act_quantizers(&mut model);
        if !quiet {
            super::PlainRenderer::say(format_args!(
                "training only the {n} activation quantizer(s); everything else is fixed"
            ));
        }
    }
    // The quantizer scales' learning-rate group, read from the module at every step (on resume,
    // burn-train loads the checkpoint's record, and with it other parameter ids).
    // `slots()` borrows mutably: walk a clone (tensors are shared, ids kept). The multiplier is
    // Quantization Networks' (its α, β): the baselines' learned scales (LSQ's step, PACT's
    // clip, DSQ's step) train at the base learning rate, as their papers do.
    let group = cfg.quant_lr_group;
    let quantizer_params = move |m: &Monitored<B, M::TrainModule>| -> Vec<ParamId> {
        crate::train::quantizer_scale_ids(m.model(), group)
    };
    let model = Monitored::new(model, monitor).with_hook(phase.hook.clone());
    let steps_per_epoch = steps_per_epoch(data, cfg.batch_size, n_devices, shard);
    let strategy = match devices {
        [device] => ExecutionStrategy::single(device.clone()),
        _ => ExecutionStrategy::multi(devices.to_vec(), MultiDeviceOptim::OptimMainDevice),
    };
    // Over ranks, each validates its share of the test set ([`Shard::eval_share`]); the run
    // sums the shares' metrics afterwards.
    let valid = match shard {
        Some(shard) => data.test.select(&shard.eval_share(data.test.len())),
        None => data.test.clone(),
    };
    // What the all-reduce sent (over ranks), read from the optimizer before the Learner takes it.
    let sent: Arc<Mutex<quantnet_burn::collective::AllReduceStats>>;
    // The builder's type depends on the optimizer's, so it is spelled out once per optimizer.
    macro_rules! launch {
        ($optimizer:expr) => {{
            let mut training = SupervisedTraining::new(
                dir.clone(),
                train_loader.clone(),
                loader::<B::InnerBackend>(
                    valid.clone(),
                    data.batcher,
                    data.eval_batch_size(),
                    None,
                ),
            )
            .metrics((AccuracyMetric::new(), LossMetric::new()))
            .metric_train_numeric(TemperatureMetric::new("Weight temperature", &temps.weights))
            .metric_train_numeric(TemperatureMetric::new("Act temperature", &temps.acts))
            .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
            .early_stopping(phase.hook.clone().with_early_stopping(clock.clone()))
            .renderer(Renderers::for_phase(progress.renderers, phase.name, quiet))
            .num_epochs(phase.epochs)
            .with_training_strategy(strategy.into());
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
            let optimizer = AllReduced::over(
                GroupLr::new($optimizer, quantizer_params, cfg.quant_lr_mult),
                phase.group.clone(),
            );
            sent = optimizer.stats();
            training
                .launch(Learner::new(
                    model,
                    optimizer,
                    RunLr::new(phase.lr, cfg.lr_schedule, phase.epochs, steps_per_epoch),
                ))
                .model
                .into_model()
        }};
    }
    let trained = with_optimizer!(cfg, clipping, launch);
    if let (Some(group), false, Ok(sent)) = (&phase.group, quiet, sent.lock()) {
        let training: f64 = clock.seconds().iter().sum();
        super::PlainRenderer::say(format_args!(
            "all-reduced {} bytes per step over {} processes, {} steps: {:.1} s of the phase's \
             {:.1} s ({:.1} %, waiting for the slowest process included)",
            sent.bytes_per_step,
            group.size(),
            sent.steps,
            sent.seconds,
            training,
            100.0 * sent.seconds / training.max(f64::MIN_POSITIVE)
        ));
    }
    if start > 0 {
        renumber_logs(&phase.dir, start)?;
    }
    Ok((trained, clock.seconds()))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| write_error(to, e))
}

/// burn-train (0.21) writes a resumed run's first epoch into `epoch-1` again, over the first
/// epoch's logs (its log store starts at 1 and then follows the real epoch numbers: the resumed
/// run's later epochs land in the right folders). Before resuming after `start` epochs: set
/// `epoch-1..=start` aside and drop the later ones (an interrupted epoch's partial logs).
fn stash_logs(dir: &Path, start: usize) -> Result<()> {
    // An earlier resume that was itself interrupted: put its logs in order first.
    let marker = dir.join("train-before-resume").join("start");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let earlier = text.trim().parse().map_err(|_| Error::Corrupt {
            path: marker.clone(),
            reason: "not an epoch number".into(),
        })?;
        renumber_logs(dir, earlier)?;
    }
    for split in ["train", "valid"] {
        let logs = dir.join(split);
        if !logs.is_dir() {
            continue;
        }
        let stash = dir.join(format!("{split}-before-resume"));
        std::fs::create_dir_all(&stash).map_err(|e| write_error(&stash, e))?;
        std::fs::write(stash.join("start"), start.to_string())
            .map_err(|e| write_error(&stash, e))?;
        let entries = std::fs::read_dir(&logs).map_err(|source| Error::Io {
            path: logs.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let epoch = path
                .file_name()
                .and_then(|n| n.to_str()?.strip_prefix("epoch-")?.parse::<usize>().ok());
            match epoch {
                Some(e) if e <= start => rename(&path, &stash.join(format!("epoch-{e}")))?,
                Some(_) => std::fs::remove_dir_all(&path).map_err(|e| write_error(&path, e))?,
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
        std::fs::create_dir_all(&logs).map_err(|e| write_error(&logs, e))?;
        let first = logs.join("epoch-1");
        if first.is_dir() {
            rename(&first, &logs.join(format!("epoch-{}", start + 1)))?;
        }
        for e in 1..=start {
            let from = stash.join(format!("epoch-{e}"));
            if from.is_dir() {
                rename(&from, &logs.join(format!("epoch-{e}")))?;
            }
        }
        std::fs::remove_dir_all(&stash).map_err(|e| write_error(&stash, e))?;
    }
    Ok(())
}
