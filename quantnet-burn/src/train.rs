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

use std::sync::Arc;

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
}

impl TemperatureHook<NeverStop> {
    /// A hook with no temperature yet and no early stopping.
    pub fn new() -> Self {
        Self {
            cells: Vec::new(),
            inner: NeverStop,
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
        }
    }

    /// Sets every temperature for the 0-based `epoch` about to run.
    pub fn start_at(&self, epoch: usize) {
        for (temperature, schedule) in &self.cells {
            temperature.set(schedule.at(epoch));
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
        let t = f64::from(self.temperature.get());
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

/// An optimizer that steps one group of parameters (by id) with its own learning-rate
/// multiplier and the rest with the base rate: separate learning rates for quantizer scales, as
/// the official code's separate optimizers for α and β.
///
/// burn-train drives one optimizer with one rate; this wraps any of Burn's optimizers. Each
/// step splits the gradients into the group and the rest and takes two inner steps, each
/// parameter being updated once. Gradient clipping, if the inner optimizer has it, applies per
/// group. Multi-device steps (`step_multi`) use the base rate for every parameter.
#[derive(Clone)]
pub struct GroupLr<O> {
    inner: O,
    group: Arc<std::collections::HashSet<burn::module::ParamId>>,
    multiplier: f64,
}

impl<O> GroupLr<O> {
    /// Steps the parameters in `group` at `multiplier` × the base learning rate.
    pub fn new(
        inner: O,
        group: impl IntoIterator<Item = burn::module::ParamId>,
        multiplier: f64,
    ) -> Self {
        Self {
            inner,
            group: Arc::new(group.into_iter().collect()),
            multiplier,
        }
    }
}

impl<M, B, O> burn::optim::Optimizer<M, B> for GroupLr<O>
where
    M: burn::module::AutodiffModule<B>,
    B: burn::tensor::backend::AutodiffBackend,
    O: burn::optim::Optimizer<M, B>,
{
    type Record = O::Record;

    fn step(&mut self, lr: f64, module: M, mut grads: burn::optim::GradientsParams) -> M {
        let mut group = burn::optim::GradientsParams::new();
        for &id in self.group.iter() {
            if let Some(g) = grads.remove::<B::InnerBackend, 1>(id) {
                group.register::<B::InnerBackend, 1>(id, g);
            }
        }
        let module = if group.is_empty() || self.multiplier == 0.0 {
            module
        } else {
            self.inner.step(lr * self.multiplier, module, group)
        };
        self.inner.step(lr, module, grads)
    }

    fn step_multi(&mut self, lr: f64, module: M, grads: burn::optim::MultiGradientsParams) -> M {
        self.inner.step_multi(lr, module, grads)
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
