//! The burn-train side: the per-epoch temperature hook and the temperature metric.
//!
//! burn-train 0.21 has no epoch callback. The one user-pluggable piece its training loop calls
//! synchronously, on the training thread, once per epoch (after validation, before the next
//! epoch, in the single-device, multi-device and DDP strategies) is
//! `EarlyStoppingStrategy::should_stop(epoch, store)`. [`TemperatureHook`] is such a strategy: it
//! sets every registered [`Temperature`] from its schedule for the epoch about to start, then asks
//! a wrapped early-stopping strategy, if any, whether to stop. Metric loggers and renderers run
//! asynchronously and could race with the next epoch, so they are not used to change state.
//!
//! Epochs: burn-train numbers them from 1; schedules take 0-based epochs. After epoch `e`
//! (1-based) the hook sets `T = schedule.at(e)`, the temperature of the `(e+1)`-th epoch. Before
//! `launch`, call [`TemperatureHook::start_at`] with the first epoch to run: 0 for a new run, `k`
//! when resuming from the checkpoint of epoch `k`, so a resumed run continues with the temperature
//! the interrupted run would have had.
//!
//! Per iteration: a hook that knows the run's length ([`TemperatureHook::over`]) is also
//! [`tick`](TemperatureHook::tick)ed by the training step before every forward pass, which moves
//! the [`ScheduleKind::Anneal`](crate::schedule::ScheduleKind::Anneal) schedules step by step
//! (the per-epoch kinds keep their epoch's value).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::ParamId;
use burn::train::EarlyStoppingStrategy;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::store::EventStoreClient;
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

use crate::quantizer::Temperature;
use crate::schedule::TemperatureSchedule;

/// An early-stopping strategy that never stops: the default inner strategy of the hook.
#[derive(Clone, Copy, Debug, Default)]
pub struct NeverStop;

impl EarlyStoppingStrategy for NeverStop {
    fn should_stop(&mut self, _epoch: usize, _store: &EventStoreClient) -> bool {
        false
    }
}

/// Raises the temperatures at each epoch boundary (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct TemperatureHook<S = NeverStop> {
    cells: Vec<(Temperature, TemperatureSchedule)>,
    inner: S,
    /// `(epochs, steps per epoch)` of the run, when known.
    run: Option<(usize, usize)>,
    /// The run's next tick (0-based), shared by the clones the training step holds.
    step: Arc<AtomicUsize>,
    /// Ticks per optimizer step: the number of devices that each run one batch of a step.
    ticks_per_step: usize,
}

impl TemperatureHook<NeverStop> {
    /// A hook with no temperature yet and no early stopping.
    pub fn new() -> Self {
        Self {
            cells: Vec::new(),
            inner: NeverStop,
            run: None,
            step: Arc::new(AtomicUsize::new(0)),
            ticks_per_step: 1,
        }
    }
}

impl Default for TemperatureHook<NeverStop> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> TemperatureHook<S> {
    /// Drives `temperature` (shared by a group of quantizers) with `schedule`.
    ///
    /// From then on the cell is scheduled: loading a record no longer sets it.
    pub fn with(mut self, temperature: &Temperature, schedule: TemperatureSchedule) -> Self {
        temperature.mark_scheduled();
        self.cells.push((temperature.clone(), schedule));
        self
    }

    /// Keeps a real early-stopping strategy: it is asked after the temperatures are set.
    pub fn with_early_stopping<T: EarlyStoppingStrategy>(self, inner: T) -> TemperatureHook<T> {
        TemperatureHook {
            cells: self.cells,
            inner,
            run: self.run,
            step: self.step,
            ticks_per_step: self.ticks_per_step,
        }
    }

    /// The run is `epochs` epochs of `steps_per_epoch` steps: [`ScheduleKind::Anneal`]
    /// schedules then know where they are, and [`Self::tick`] moves them every step.
    ///
    /// [`ScheduleKind::Anneal`]: crate::schedule::ScheduleKind::Anneal
    pub fn over(mut self, epochs: usize, steps_per_epoch: usize) -> Self {
        self.run = Some((epochs.max(1), steps_per_epoch.max(1)));
        self
    }

    /// Every optimizer step is ticked `devices` times, once by each device's training step
    /// (burn-train's multi-device strategy runs one batch per device and then one optimizer
    /// step): the `devices` ticks of a step run at that step's temperatures, so the schedule
    /// moves per optimizer step as on one device.
    pub fn ticked_by(mut self, devices: usize) -> Self {
        self.ticks_per_step = devices.max(1);
        self
    }

    /// The fraction of the run done at 0-based `step`: 0 at the first step, 1 at the last.
    /// Without [`Self::over`], steps are epochs and the run's length is unknown (0).
    fn progress(&self, step: usize) -> f32 {
        match self.run {
            Some((epochs, per_epoch)) => {
                let last = (epochs * per_epoch).saturating_sub(1).max(1);
                (step as f32 / last as f32).min(1.0)
            }
            None => 0.0,
        }
    }

    fn set_at_step(&self, step: usize) {
        let per_epoch = self.run.map_or(1, |(_, s)| s);
        let (epoch, progress) = (step / per_epoch, self.progress(step));
        for (temperature, schedule) in &self.cells {
            temperature.set(schedule.at_run(epoch, progress));
        }
    }

    /// Sets every temperature for the 0-based `epoch` about to run (its first step).
    pub fn start_at(&self, epoch: usize) {
        let step = epoch * self.run.map_or(1, |(_, s)| s);
        self.step
            .store(step * self.ticks_per_step, Ordering::SeqCst);
        self.set_at_step(step);
    }

    /// Sets the temperatures of the step about to run and counts it: call once per training
    /// step and device ([`Self::ticked_by`]), before the forward pass. Does nothing unless the
    /// run's length is known.
    pub fn tick(&self) {
        if self.run.is_some() {
            let step = self.step.fetch_add(1, Ordering::SeqCst) / self.ticks_per_step;
            self.set_at_step(step);
            for (temperature, _) in &self.cells {
                temperature.push_step(temperature.get());
            }
        }
    }

    /// Optimizer steps ticked so far (the index of the next one).
    pub fn steps_ticked(&self) -> usize {
        self.step.load(Ordering::SeqCst) / self.ticks_per_step
    }

    /// Sets the temperatures of the run's last step (what a finished run's quantizers hold)
    /// when the run's length is known ([`Self::over`]).
    pub fn finish(&self) {
        if let Some((epochs, per_epoch)) = self.run {
            let last = epochs * per_epoch - 1;
            self.step
                .store(last * self.ticks_per_step, Ordering::SeqCst);
            // The end of the run whatever the step count (a one-step run ends at T_end too).
            for (temperature, schedule) in &self.cells {
                temperature.set(schedule.at_run(epochs - 1, 1.0));
            }
        }
    }
}

impl<S: EarlyStoppingStrategy> EarlyStoppingStrategy for TemperatureHook<S> {
    fn should_stop(&mut self, epoch: usize, store: &EventStoreClient) -> bool {
        // `epoch` (1-based) has ended; the next one is `epoch` in 0-based numbering.
        self.start_at(epoch);
        self.inner.should_stop(epoch, store)
    }
}

/// Reports a [`Temperature`] as a numeric metric (one value per iteration, so the epoch mean is
/// the epoch's temperature).
#[derive(Clone)]
pub struct TemperatureMetric {
    name: MetricName,
    temperature: Temperature,
    state: NumericMetricState,
}

impl TemperatureMetric {
    /// A metric named `name` (for instance "Temperature (weights)") reading `temperature`.
    pub fn new(name: &str, temperature: &Temperature) -> Self {
        temperature.record_steps();
        Self {
            name: Arc::new(name.to_string()),
            temperature: temperature.clone(),
            state: NumericMetricState::new(),
        }
    }
}

impl Metric for TemperatureMetric {
    type Input = ();

    fn update(&mut self, _item: &(), _metadata: &MetricMetadata) -> SerializedEntry {
        // burn-train updates metrics on its own thread, after the step: the temperature the
        // step ran at (recorded by `TemperatureHook::tick`), not the cell's value by then.
        let t = f64::from(
            self.temperature
                .pop_step()
                .unwrap_or_else(|| self.temperature.get()),
        );
        self.state
            .update(t, 1, FormatOptions::new(self.name()).precision(2))
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: true,
        }
        .into()
    }
}

impl Numeric for TemperatureMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// The parameters of a [`GroupLr`] group, found in the module at every step.
///
/// A fixed list of ids is not enough: loading a record (a checkpoint on resume) gives the
/// parameters the record's ids, so a group collected from a fresh module beforehand would match
/// nothing. A selector reads the ids from the module being stepped.
pub trait ParamGroup<M>: Send + Sync {
    /// The ids of the group's parameters in `module`.
    fn ids(&self, module: &M) -> HashSet<ParamId>;
}

impl<M, F> ParamGroup<M> for F
where
    F: Fn(&M) -> Vec<ParamId> + Send + Sync,
{
    fn ids(&self, module: &M) -> HashSet<ParamId> {
        self(module).into_iter().collect()
    }
}

/// An optimizer that steps one group of parameters with its own learning-rate multiplier and
/// the rest with the base rate: separate learning rates for quantizer scales, as the official
/// code's separate optimizers for α and β.
///
/// burn-train drives one optimizer with one rate; this wraps any of Burn's optimizers. Each
/// step asks the [`ParamGroup`] which parameters of the module are in the group, splits the
/// gradients into the group and the rest and takes two inner steps, each parameter being
/// updated once. Gradient clipping, if the inner optimizer has it, applies per group. A
/// parameter that occurs in several places of the module (a shared weight quantizer) is one
/// parameter after the step too ([`tie_shared_params`](crate::tie_shared_params)).
/// burn-train's multi-device strategy with the optimizer on the main device (what quantnet
/// uses) calls `step` with the devices' gradients summed; its sharded strategy calls
/// `step_multi`, which uses the base rate for every parameter.
pub struct GroupLr<O, G> {
    inner: O,
    group: Arc<G>,
    multiplier: f64,
}

impl<O: Clone, G> Clone for GroupLr<O, G> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            group: self.group.clone(),
            multiplier: self.multiplier,
        }
    }
}

impl<O, G> GroupLr<O, G> {
    /// Steps the parameters that `group` selects at `multiplier` × the base learning rate.
    pub fn new(inner: O, group: G, multiplier: f64) -> Self {
        Self {
            inner,
            group: Arc::new(group),
            multiplier,
        }
    }
}

impl<M, B, O, G> burn::optim::Optimizer<M, B> for GroupLr<O, G>
where
    M: burn::module::AutodiffModule<B>,
    B: burn::tensor::backend::AutodiffBackend,
    O: burn::optim::Optimizer<M, B>,
    G: ParamGroup<M> + 'static,
{
    type Record = O::Record;

    fn step(&mut self, lr: f64, module: M, mut grads: burn::optim::GradientsParams) -> M {
        let mut group = burn::optim::GradientsParams::new();
        for id in self.group.ids(&module) {
            if let Some(g) = grads.remove::<B::InnerBackend, 1>(id) {
                group.register::<B::InnerBackend, 1>(id, g);
            }
        }
        let module = if group.is_empty() || self.multiplier == 0.0 {
            module
        } else {
            self.inner.step(lr * self.multiplier, module, group)
        };
        // A parameter shared by several layers was stepped in its first place only.
        crate::tie::tie_shared_params(self.inner.step(lr, module, grads))
    }

    fn step_multi(&mut self, lr: f64, module: M, grads: burn::optim::MultiGradientsParams) -> M {
        crate::tie::tie_shared_params(self.inner.step_multi(lr, module, grads))
    }

    fn to_record(&self) -> Self::Record {
        self.inner.to_record()
    }

    fn load_record(self, record: Self::Record) -> Self {
        Self {
            inner: self.inner.load_record(record),
            ..self
        }
    }
}

/// A learning-rate schedule over a run: `const`, `cosine` (from the base rate down to 0 at the
/// run's last step) or `step:E,G[,F]` (× `G` every `E` epochs, from epoch `F`).
///
/// Serialised as that text.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// `lr·(1 + cos(π·s/(N−1)))/2` at step `s` of `N`.
    Cosine,
    /// `lr·gamma^k` after `k` decays, at epochs `first`, `first + every`, `first + 2·every`, …
    /// (`step:EVERY,GAMMA` decays at every multiple of `every`; `step:EVERY,GAMMA,FIRST` is the
    /// official code's `--step_size FIRST --decay_step EVERY`, and the paper's ×0.1 at epochs
    /// 30 and 45 is `step:15,0.1,30`).
    Step {
        /// Epochs between two decays (≥ 1).
        every: usize,
        /// The decay factor (> 0).
        gamma: f64,
        /// The (0-based) epoch of the first decay (≥ 1).
        first: usize,
    },
}

/// The form [`LrSchedule::from_str`](std::str::FromStr) reads.
impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Constant => f.write_str("const"),
            Self::Cosine => f.write_str("cosine"),
            Self::Step {
                every,
                gamma,
                first,
            } if first == every => write!(f, "step:{every},{gamma}"),
            Self::Step {
                every,
                gamma,
                first,
            } => write!(f, "step:{every},{gamma},{first}"),
        }
    }
}

impl TryFrom<String> for LrSchedule {
    type Error = crate::Error;

    fn try_from(text: String) -> crate::error::Result<Self> {
        text.parse()
    }
}

impl From<LrSchedule> for String {
    fn from(schedule: LrSchedule) -> Self {
        schedule.to_string()
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = crate::Error;

    fn from_str(text: &str) -> crate::error::Result<Self> {
        let bad = |reason: &str| crate::Error::parse(text, reason);
        match text.trim() {
            "const" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            other => {
                let args = other
                    .strip_prefix("step:")
                    .ok_or_else(|| bad("expected const, cosine or step:EPOCHS,GAMMA[,FIRST]"))?;
                let parts: Vec<&str> = args.split(',').map(str::trim).collect();
                let (every, gamma, first) = match parts[..] {
                    [every, gamma] => (every, gamma, None),
                    [every, gamma, first] => (every, gamma, Some(first)),
                    _ => return Err(bad("step needs EPOCHS,GAMMA[,FIRST] (e.g. step:10,0.1)")),
                };
                let every: usize = every.parse().map_err(|_| bad("EPOCHS: an integer"))?;
                let gamma: f64 = gamma.parse().map_err(|_| bad("GAMMA: a number"))?;
                let first: usize = match first {
                    Some(f) => f.parse().map_err(|_| bad("FIRST: an integer"))?,
                    None => every,
                };
                if every == 0 || first == 0 || !(gamma.is_finite() && gamma > 0.0) {
                    return Err(bad(
                        "EPOCHS and FIRST must be at least 1 and GAMMA positive",
                    ));
                }
                Ok(Self::Step {
                    every,
                    gamma,
                    first,
                })
            }
        }
    }
}

/// [`LrSchedule`] for burn-train's [`Learner`](burn::train::Learner): one rate per training
/// step over a run of `epochs × steps_per_epoch` steps. Its record is the step count, so a
/// resumed run continues the schedule.
#[derive(Clone, Debug)]
pub struct RunLr {
    base: f64,
    schedule: LrSchedule,
    steps_per_epoch: usize,
    total: usize,
    step: usize,
}

impl RunLr {
    /// `schedule` from the base rate `base` over `epochs` epochs of `steps_per_epoch` steps.
    pub fn new(base: f64, schedule: LrSchedule, epochs: usize, steps_per_epoch: usize) -> Self {
        let steps_per_epoch = steps_per_epoch.max(1);
        Self {
            base,
            schedule,
            steps_per_epoch,
            total: epochs.max(1) * steps_per_epoch,
            step: 0,
        }
    }

    /// The rate at (0-based) step `s`.
    pub fn at(&self, s: usize) -> f64 {
        match self.schedule {
            LrSchedule::Constant => self.base,
            LrSchedule::Cosine => {
                let f = s.min(self.total - 1) as f64 / (self.total - 1).max(1) as f64;
                self.base * 0.5 * (1.0 + (std::f64::consts::PI * f).cos())
            }
            LrSchedule::Step {
                every,
                gamma,
                first,
            } => {
                let epoch = s / self.steps_per_epoch;
                let decays = if epoch < first {
                    0
                } else {
                    (epoch - first) / every + 1
                };
                self.base * gamma.powi(decays.min(i32::MAX as usize) as i32)
            }
        }
    }
}

impl burn::optim::lr_scheduler::LrScheduler for RunLr {
    type Record<B: burn::tensor::backend::Backend> = usize;

    fn step(&mut self) -> f64 {
        let lr = self.at(self.step);
        self.step += 1;
        lr
    }

    fn to_record<B: burn::tensor::backend::Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: burn::tensor::backend::Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_over_a_run_moves_anneal_every_step_and_the_per_epoch_kinds_every_epoch() {
        // 2 epochs of 3 steps: anneal 5 → 500 over steps 0..=5 (5·100^(k/5)); linear 10 per
        // epoch.
        let (w, a) = (Temperature::new(1.0), Temperature::new(1.0));
        let hook = TemperatureHook::new()
            .with(&w, TemperatureSchedule::anneal(5.0, 500.0))
            .with(&a, TemperatureSchedule::linear(10.0))
            .over(2, 3);
        let ticker = hook.clone();
        hook.start_at(0);
        let mut seen = Vec::new();
        for epoch in 0..2 {
            for _ in 0..3 {
                ticker.tick();
                seen.push((w.get(), a.get()));
            }
            // What `should_stop(epoch + 1)` does at the epoch boundary.
            hook.start_at(epoch + 1);
        }
        for (k, (tw, ta)) in seen.iter().enumerate() {
            let expected = 5.0 * 100f32.powf(k as f32 / 5.0);
            assert!(
                (tw - expected).abs() < 1e-3 * expected,
                "step {k}: {tw} vs {expected}"
            );
            assert_eq!(*ta, if k < 3 { 10.0 } else { 20.0 }, "step {k}");
        }
        // Resuming at epoch 1 starts at step 3; finishing sets the last step's temperatures.
        hook.start_at(1);
        ticker.tick();
        assert!((w.get() - 5.0 * 100f32.powf(0.6)).abs() < 1e-2);
        hook.finish();
        assert!((w.get() - 500.0).abs() < 1e-2);
        assert_eq!(a.get(), 20.0);
        // Without the run's length, ticks change nothing.
        let plain = TemperatureHook::new().with(&w, TemperatureSchedule::linear(3.0));
        plain.start_at(0);
        plain.tick();
        assert_eq!(w.get(), 3.0);
    }

    #[test]
    fn a_hook_ticked_by_two_devices_moves_once_per_optimizer_step() {
        // 1 epoch of 3 optimizer steps on 2 devices: 6 ticks, two per step, each pair at that
        // step's temperature (anneal 5 → 500: 5, 50, 500), as one device's 3 ticks.
        let w = Temperature::new(1.0);
        let hook = TemperatureHook::new()
            .with(&w, TemperatureSchedule::anneal(5.0, 500.0))
            .over(2, 3)
            .ticked_by(2);
        hook.start_at(0);
        let mut seen = Vec::new();
        for _ in 0..6 {
            hook.tick();
            seen.push(w.get());
        }
        let want = [5.0, 5.0, 5.0 * 100f32.powf(0.2), 5.0 * 100f32.powf(0.2)];
        for (k, (t, want)) in seen.iter().zip(want).enumerate() {
            assert!((t - want).abs() < 1e-3 * want, "tick {k}: {seen:?}");
        }
        // The epoch boundary and a resume land on the step, not the tick: epoch 1 starts at
        // step 3 whatever the ticks of epoch 0 were.
        hook.start_at(1);
        hook.tick();
        hook.tick();
        assert!(
            (w.get() - 5.0 * 100f32.powf(0.6)).abs() < 1e-2,
            "{}",
            w.get()
        );
        hook.tick();
        assert!(
            (w.get() - 5.0 * 100f32.powf(0.8)).abs() < 1e-2,
            "{}",
            w.get()
        );
        hook.finish();
        assert!((w.get() - 500.0).abs() < 1e-2);
    }

    /// One SGD step (lr 1) of `sum(linear(x))` with `optimizer`; returns the stepped module.
    fn sgd_step<O>(optimizer: &mut O, module: burn::nn::Linear<AB>) -> burn::nn::Linear<AB>
    where
        O: burn::optim::Optimizer<burn::nn::Linear<AB>, AB>,
    {
        let x = burn::tensor::Tensor::<AB, 2>::ones([1, 2], &Default::default());
        let grads = module.forward(x).sum().backward();
        let grads = burn::optim::GradientsParams::from_grads(grads, &module);
        optimizer.step(1.0, module, grads)
    }

    type AB = crate::testing::TestAutodiffBackend;

    fn bias(m: &burn::nn::Linear<AB>) -> f32 {
        m.bias.as_ref().unwrap().val().into_scalar()
    }

    fn weight(m: &burn::nn::Linear<AB>) -> Vec<f32> {
        m.weight.val().into_data().to_vec().unwrap()
    }

    #[test]
    fn the_metric_reports_the_temperature_each_step_ran_at() {
        // burn-train reads metrics after the steps, on its own thread: by then the cell holds
        // a later step's T. The metric takes the recorded per-step values in order.
        let w = Temperature::new(1.0);
        let hook = TemperatureHook::new()
            .with(&w, TemperatureSchedule::anneal(5.0, 500.0))
            .over(1, 3);
        let _metric = TemperatureMetric::new("Weight temperature", &w);
        hook.start_at(0);
        for _ in 0..3 {
            hook.tick();
        }
        assert_eq!(w.get(), 500.0);
        let seen: Vec<f32> = std::iter::from_fn(|| w.pop_step()).collect();
        assert_eq!(seen.len(), 3);
        for (t, want) in seen.iter().zip([5.0, 50.0, 500.0]) {
            assert!((t - want).abs() < 1e-3 * want, "{seen:?}");
        }
        // A cell no metric reads keeps nothing.
        let a = Temperature::new(1.0);
        let hook = TemperatureHook::new()
            .with(&a, TemperatureSchedule::constant(2.0))
            .over(1, 2);
        hook.tick();
        assert_eq!(a.pop_step(), None);
        // finish() is the run's end even when the hook was told one step per epoch (the CLI's
        // final temperatures after a one-epoch run).
        let hook = TemperatureHook::new()
            .with(&w, TemperatureSchedule::anneal(5.0, 500.0))
            .over(1, 1);
        hook.finish();
        assert_eq!(w.get(), 500.0);
    }

    #[test]
    fn learning_rate_schedules_over_a_run() {
        use burn::optim::lr_scheduler::LrScheduler;
        type Nd = crate::testing::TestBackend;
        // 2 epochs of 3 steps from 1e-3. Cosine: (1 + cos(π·s/5))/2 at s = 0..5.
        let mut cosine = RunLr::new(1e-3, "cosine".parse().unwrap(), 2, 3);
        let rates: Vec<f64> = (0..6).map(|_| cosine.step()).collect();
        let want = [1.0, 0.904508, 0.654508, 0.345492, 0.095492, 0.0];
        for (r, w) in rates.iter().zip(want) {
            assert!((r - 1e-3 * w).abs() < 1e-9, "{rates:?}");
        }
        // step:1,0.1 decays at each epoch boundary.
        let mut step = RunLr::new(1e-3, "step:1,0.1".parse().unwrap(), 2, 3);
        let rates: Vec<f64> = (0..6).map(|_| step.step()).collect();
        for (r, w) in rates.iter().zip([1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4]) {
            assert!((r - w).abs() < 1e-12, "{rates:?}");
        }
        // step:2,0.1,3 over 8 epochs of 1 step: decays at epochs 3, 5 and 7 (the official code's
        // step size 3, decay step 2); step:2,0.1 is step:2,0.1,2 and prints as written.
        let late = RunLr::new(1.0, "step:2,0.1,3".parse().unwrap(), 8, 1);
        let rates: Vec<f64> = (0..8).map(|s| late.at(s)).collect();
        let want = [1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001];
        for (r, w) in rates.iter().zip(want) {
            assert!((r - w).abs() < 1e-12, "{rates:?}");
        }
        let every: LrSchedule = "step:2,0.1".parse().unwrap();
        assert_eq!(every, "step:2,0.1,2".parse().unwrap());
        assert_eq!(every.to_string(), "step:2,0.1");
        assert_eq!(
            "step:15,0.1,30".parse::<LrSchedule>().unwrap().to_string(),
            "step:15,0.1,30"
        );
        // The record is the step count: a resumed schedule continues.
        let mut fresh = RunLr::new(1e-3, LrSchedule::Cosine, 2, 3);
        let record = LrScheduler::to_record::<Nd>(&cosine);
        assert_eq!(record, 6);
        fresh = LrScheduler::load_record::<Nd>(fresh, 4);
        assert!((fresh.step() - 1e-3 * 0.095492).abs() < 1e-9);
        assert_eq!(RunLr::new(2e-3, LrSchedule::Constant, 1, 1).at(99), 2e-3);
        for bad in [
            "step:0,0.1",
            "step:2",
            "step:2,-1",
            "step:2,0.1,0",
            "step:1,2,3,4",
            "linear",
        ] {
            assert!(bad.parse::<LrSchedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn group_lr_finds_its_group_in_the_module_after_a_record_is_loaded() {
        use burn::module::Module;
        use burn::nn::LinearConfig;
        use burn::optim::SgdConfig;
        let device = Default::default();
        // Resume: a fresh module takes a checkpoint's record, and with it the record's ids.
        let fresh = LinearConfig::new(2, 1).init::<AB>(&device);
        let fresh_bias_id = fresh.bias.as_ref().unwrap().id;
        let saved = LinearConfig::new(2, 1).init::<AB>(&device);
        let loaded = fresh.load_record(saved.clone().into_record());
        assert_eq!(
            loaded.bias.as_ref().unwrap().id,
            saved.bias.as_ref().unwrap().id
        );
        assert_ne!(loaded.bias.as_ref().unwrap().id, fresh_bias_id);

        // The group (the bias) at multiplier 0 is frozen: the selector finds it in the loaded
        // module. ∂sum/∂b = 1 and ∂sum/∂w = x = 1, so SGD at lr 1 moves the rest by -1.
        let select = |m: &burn::nn::Linear<AB>| vec![m.bias.as_ref().unwrap().id];
        let mut optimizer = GroupLr::new(SgdConfig::new().init(), select, 0.0);
        let stepped = sgd_step(&mut optimizer, loaded.clone());
        assert_eq!(bias(&stepped), bias(&loaded));
        for (after, before) in weight(&stepped).iter().zip(weight(&loaded)) {
            assert!((after - (before - 1.0)).abs() < 1e-6);
        }

        // The ids collected from the fresh module before loading (the old resume path) select
        // nothing: the bias moves at the base rate.
        let stale = move |_: &burn::nn::Linear<AB>| vec![fresh_bias_id];
        let mut optimizer = GroupLr::new(SgdConfig::new().init(), stale, 0.0);
        let stepped = sgd_step(&mut optimizer, loaded.clone());
        assert!((bias(&stepped) - (bias(&loaded) - 1.0)).abs() < 1e-6);

        // A multiplier of 3 steps the group three times as far.
        let mut optimizer = GroupLr::new(SgdConfig::new().init(), select, 3.0);
        let stepped = sgd_step(&mut optimizer, loaded.clone());
        assert!((bias(&stepped) - (bias(&loaded) - 3.0)).abs() < 1e-5);
    }
}
