//! [`Monitored`]: the model burn-train trains, with quantization diagnostics on validation.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::{AccuracyInput, Adaptor, ItemLazy, LossInput};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use quantnet_burn::{QuantBackend, QuantMode};

use super::{classify, hits};
use crate::data::ImageBatch;
use crate::models::ImageModel;
use crate::stats::{LayerStats, layer_stats};

/// What [`Monitored`] measures on every validation batch besides loss and accuracy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MonitorOptions {
    /// Also run the batch through the soft quantizers (at the current temperatures) to report
    /// the soft-minus-hard accuracy gap. Costs a second forward pass.
    pub soft_gap: bool,
    /// Report each quantizer's α, β and weight-level occupancy.
    pub layer_stats: bool,
    /// Clip the gradient norm in the `ŵ` domain, as the official code ([`super::step_clipped_in_wq`]).
    pub clip_in_wq: Option<f32>,
    /// Multiplies every training gradient (after clipping): `1/N` when each of N devices runs
    /// one batch of a step and burn-train sums their gradients, so that the optimizer sees the
    /// mean over the step's N batches, the gradient of one device running all of them.
    pub grad_scale: f32,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        Self {
            soft_gap: true,
            layer_stats: true,
            clip_in_wq: None,
            grad_scale: 1.0,
        }
    }
}

/// A model ([`crate::Model`] or any [`ImageModel`]) trained by burn-train with quantization
/// diagnostics on validation: its [`InferenceStep`] output carries, besides the hard-quantized
/// classification, the soft model's hits on the same batch and every quantizer's α, β and
/// occupancy ([`MonitorInput`]), which the metrics [`super::SoftHardGapMetric`] and
/// [`super::LayerMetric`] report per epoch. Training steps are those of the model.
///
/// The layer stats are read once per validation copy: burn-train makes one with `valid()` at
/// the start of every validation epoch and the model does not change during it, so the first
/// batch's stats serve the whole epoch.
#[derive(burn::module::Module, Debug)]
pub struct Monitored<B: Backend, M: Module<B>> {
    model: M,
    /// Always `None`: Burn's module derive needs a field that names the backend.
    marker: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    options: MonitorOptions,
    #[module(skip)]
    layers: StatsCache,
    /// Ticked before every training step (per-iteration temperatures).
    #[module(skip)]
    hook: Option<quantnet_burn::train::TemperatureHook>,
}

/// The layer stats of one validation copy. Cloning (which is what `valid()` does to a skipped
/// field) gives an empty cache, so every copy reads its own model.
#[derive(Debug, Default)]
struct StatsCache(std::sync::OnceLock<Option<Arc<Vec<LayerStats>>>>);

impl Clone for StatsCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<B: Backend, M: Module<B>> Monitored<B, M> {
    /// Wraps `model`.
    pub fn new(model: M, options: MonitorOptions) -> Self {
        Self {
            model,
            marker: None,
            options,
            layers: StatsCache::default(),
            hook: None,
        }
    }

    /// Ticks `hook` before every training step, so that schedules that move every iteration
    /// ([`quantnet_burn::schedule::ScheduleKind::Anneal`]) do. Give it a hook that knows the
    /// run's length ([`quantnet_burn::train::TemperatureHook::over`]), a clone of the one
    /// burn-train calls at epoch boundaries.
    pub fn with_hook(mut self, hook: quantnet_burn::train::TemperatureHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model.
    pub fn into_model(self) -> M {
        self.model
    }
}

impl<B, M> TrainStep for Monitored<B, M>
where
    B: AutodiffBackend + QuantBackend,
    M: ImageModel<B> + burn::module::AutodiffModule<B>,
    M::InnerModule: ImageModel<B::InnerBackend>,
{
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        // The recipe's duties are `QatStep`'s; `Monitored` adds no parameters, so the model's
        // gradients are the wrapper's.
        let duties = super::step::Duties {
            hook: self.hook.as_ref(),
            clip_in_wq: self.options.clip_in_wq,
            grad_scale: self.options.grad_scale,
        };
        duties.step(&self.model, |m: &M| {
            let item = classify(m, batch.images, batch.targets);
            TrainOutput::new(m, item.loss.backward(), item)
        })
    }
}

impl<B: QuantBackend, M: ImageModel<B>> InferenceStep for Monitored<B, M> {
    type Input = ImageBatch<B>;
    type Output = MonitoredOutput<ClassificationOutput<B>>;

    fn step(&self, batch: ImageBatch<B>) -> MonitoredOutput<ClassificationOutput<B>> {
        let n = batch.targets.dims()[0];
        let gap = self.options.soft_gap.then(|| {
            let mut soft = self.model.clone();
            crate::quantize::set_mode(&mut soft, QuantMode::Soft);
            hits(soft.forward(batch.images.clone()), batch.targets.clone())
        });
        let classification = classify(&self.model, batch.images, batch.targets);
        let monitor = MonitorInput {
            batch: n,
            hard_hits: gap.map(|_| {
                hits(
                    classification.output.clone(),
                    classification.targets.clone(),
                )
            }),
            soft_hits: gap,
            // A read-back failure leaves the layer metrics without a value for this epoch.
            layers: if self.options.layer_stats {
                self.layers
                    .0
                    .get_or_init(|| layer_stats(&self.model).ok().map(Arc::new))
                    .clone()
            } else {
                None
            },
        };
        MonitoredOutput {
            classification,
            monitor,
        }
    }
}

/// A validation step's output: the classification (`C`, burn-train's
/// `ClassificationOutput<B>`) and the quantization diagnostics. Generic over the classification
/// so that its synchronised form is whatever burn-train makes of `C`.
pub struct MonitoredOutput<C> {
    /// Loss, logits and targets (hard-quantized model).
    pub classification: C,
    /// Host-side diagnostics.
    pub monitor: MonitorInput,
}

/// The diagnostics of one validation batch.
#[derive(Clone, Debug, Default)]
pub struct MonitorInput {
    /// Items in the batch.
    pub batch: usize,
    /// Correct predictions of the hard model (with `soft_hits`).
    pub hard_hits: Option<usize>,
    /// Correct predictions of the soft model.
    pub soft_hits: Option<usize>,
    /// Every quantizer's state.
    pub layers: Option<Arc<Vec<LayerStats>>>,
}

impl<C: ItemLazy> ItemLazy for MonitoredOutput<C> {
    type ItemSync = MonitoredOutput<C::ItemSync>;

    fn sync(self) -> Self::ItemSync {
        MonitoredOutput {
            classification: self.classification.sync(),
            monitor: self.monitor,
        }
    }
}

impl<B: Backend, C: Adaptor<AccuracyInput<B>>> Adaptor<AccuracyInput<B>> for MonitoredOutput<C> {
    fn adapt(&self) -> AccuracyInput<B> {
        self.classification.adapt()
    }
}

impl<B: Backend, C: Adaptor<LossInput<B>>> Adaptor<LossInput<B>> for MonitoredOutput<C> {
    fn adapt(&self) -> LossInput<B> {
        self.classification.adapt()
    }
}

impl<C> Adaptor<MonitorInput> for MonitoredOutput<C> {
    fn adapt(&self) -> MonitorInput {
        self.monitor.clone()
    }
}
