//! burn-train glue (feature `train`): every [`Model`] is a classification `TrainStep` and
//! `InferenceStep` on [`ImageBatch`]es, with cross-entropy loss.

use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    AccuracyInput, Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricMetadata,
    MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use quantnet_burn::{QuantBackend, QuantMode};

use crate::data::ImageBatch;
use crate::models::{Model, QatModel, WeightLayer};

fn classify<B: QuantBackend, M: QatModel<B>>(
    model: &M,
    images: Tensor<B, 4>,
    targets: Tensor<B, 1, Int>,
) -> ClassificationOutput<B> {
    let output = model.forward(images);
    let loss = CrossEntropyLossConfig::new()
        .init(&output.device())
        .forward(output.clone(), targets.clone());
    ClassificationOutput::new(loss, output, targets)
}

impl<B: AutodiffBackend + QuantBackend> TrainStep for Model<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let item = classify(self, batch.images, batch.targets);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: QuantBackend> InferenceStep for Model<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        classify(self, batch.images, batch.targets)
    }
}

/// Accuracy (%) of `model` on `items`, in batches of `batch_size`, on `model`'s backend.
pub fn accuracy<B: QuantBackend, M: QatModel<B>>(
    model: &M,
    items: &[crate::data::ImageItem],
    batcher: crate::data::ImageBatcher,
    batch_size: usize,
    device: &B::Device,
) -> f64 {
    use burn::data::dataloader::batcher::Batcher;
    if items.is_empty() {
        return 0.0;
    }
    let mut correct = 0usize;
    for chunk in items.chunks(batch_size.max(1)) {
        let batch: ImageBatch<B> = batcher.batch(chunk.to_vec(), device);
        correct += hits(model.forward(batch.images), batch.targets);
    }
    100.0 * correct as f64 / items.len() as f64
}

/// One quantizer's state: scales, level set and (for weight quantizers) the fraction of the
/// layer's weights at each level.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerStats {
    /// The slot's name (as in [`Model::slots`]).
    pub name: String,
    /// "conv", "linear" or "activation".
    pub kind: String,
    /// The level set's name.
    pub levels: String,
    /// `α`.
    pub alpha: f32,
    /// `β`.
    pub beta: f32,
    /// Fraction of the weights at each level (weight quantizers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupancy: Option<Vec<f32>>,
}

/// α, β and the weight-level occupancy of every quantizer of `model`, in slot order.
///
/// # Errors
/// [`crate::Error::Invalid`] if values cannot be read back from the device.
pub fn layer_stats<B: QuantBackend, M: QatModel<B>>(model: &M) -> crate::Result<Vec<LayerStats>> {
    let scalar = |t: Tensor<B, 1>, what: &str| -> crate::Result<f32> {
        Ok(crate::quantize::read_f32(t.into_data(), what)?
            .first()
            .copied()
            .unwrap_or(f32::NAN))
    };
    let mut model = model.clone();
    let slots = model.slots();
    let mut out = Vec::new();
    for (name, mut layer) in slots.weights {
        // Only quantized layers' weights are read: reading a lazily initialised weight would
        // initialise it here, changing the order the random initialisation is drawn in.
        let Some(q) = layer.quantizer().clone() else {
            continue;
        };
        let weight = layer.weight();
        out.push(LayerStats {
            kind: layer.kind().into(),
            levels: q.level_set().name(),
            alpha: scalar(q.alpha.val().abs(), "α")?,
            beta: scalar(q.beta.val().abs(), "β")?,
            occupancy: Some(
                q.occupancy(weight)
                    .map_err(|e| crate::Error::Invalid(format!("{name}: {e}")))?,
            ),
            name,
        });
    }
    for (name, slot) in slots.acts {
        if let Some(q) = &slot.quantizer {
            out.push(LayerStats {
                kind: "activation".into(),
                levels: q.level_set().name(),
                alpha: scalar(q.alpha.val().abs(), "α")?,
                beta: scalar(q.beta.val().abs(), "β")?,
                occupancy: None,
                name,
            });
        }
    }
    Ok(out)
}

/// What [`Monitored`] measures on every validation batch besides loss and accuracy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MonitorOptions {
    /// Also run the batch through the soft quantizers (at the current temperatures) to report
    /// the soft-minus-hard accuracy gap. Costs a second forward pass.
    pub soft_gap: bool,
    /// Report each quantizer's α, β and weight-level occupancy.
    pub layer_stats: bool,
    /// Clip the gradient norm in the `ŵ` domain, as the official code ([`step_clipped_in_wq`]).
    pub clip_in_wq: Option<f32>,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        Self {
            soft_gap: true,
            layer_stats: true,
            clip_in_wq: None,
        }
    }
}

/// A [`Model`] trained by burn-train with quantization diagnostics on validation: its
/// [`InferenceStep`] output carries, besides the hard-quantized classification, the soft model's
/// hits on the same batch and every quantizer's α, β and occupancy ([`MonitorInput`]), which
/// the metrics [`SoftHardGapMetric`] and [`LayerMetric`] report per epoch. Training steps are
/// those of the model.
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
    M: QatModel<B> + burn::module::AutodiffModule<B>,
    M::InnerModule: QatModel<B::InnerBackend>,
{
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        if let Some(hook) = &self.hook {
            hook.tick();
        }
        if let Some(max_norm) = self.options.clip_in_wq {
            // `Monitored` adds no parameters: the model's gradients are the wrapper's.
            return step_clipped_in_wq(&self.model, batch, max_norm).0;
        }
        let item = classify(&self.model, batch.images, batch.targets);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

/// Correct predictions among `output`'s rows.
fn hits<B: Backend>(output: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> usize {
    let hits: i64 = output
        .argmax(1)
        .flatten::<1>(0, 1)
        .equal(targets)
        .int()
        .sum()
        .into_scalar()
        .elem();
    usize::try_from(hits).unwrap_or(0)
}

impl<B: QuantBackend, M: QatModel<B>> InferenceStep for Monitored<B, M> {
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

/// Soft-model accuracy minus hard-model accuracy on the same validation batches, in points:
/// how much the step functions cost at the current temperature.
#[derive(Clone)]
pub struct SoftHardGapMetric {
    state: NumericMetricState,
    name: MetricName,
}

impl SoftHardGapMetric {
    /// The metric ("Soft-hard gap").
    pub fn new() -> Self {
        Self {
            state: NumericMetricState::new(),
            name: Arc::new("Soft-hard gap".to_string()),
        }
    }
}

impl Default for SoftHardGapMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for SoftHardGapMetric {
    type Input = MonitorInput;

    fn update(&mut self, item: &MonitorInput, _metadata: &MetricMetadata) -> SerializedEntry {
        let gap = match (item.soft_hits, item.hard_hits) {
            (Some(soft), Some(hard)) if item.batch > 0 => {
                100.0 * (soft as f64 - hard as f64) / item.batch as f64
            }
            _ => f64::NAN,
        };
        self.state.update(
            gap,
            item.batch.max(1),
            FormatOptions::new(self.name()).unit("pt").precision(2),
        )
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("pt".into()),
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for SoftHardGapMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// Which part of a quantizer's state a [`LayerMetric`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerValue {
    /// `α`.
    Alpha,
    /// `β`.
    Beta,
    /// The fraction of the weights at each level (text: the fractions separated by spaces).
    Occupancy,
}

/// One quantizer's α, β (numeric) or weight-level occupancy (text), per validation epoch, named
/// "alpha conv2", "beta conv2", "occupancy conv2" (ASCII: burn-train names log files after
/// metrics).
#[derive(Clone)]
pub struct LayerMetric {
    layer: String,
    value: LayerValue,
    name: MetricName,
    state: NumericMetricState,
}

impl LayerMetric {
    /// The metric for `value` of the quantizer in slot `layer`.
    pub fn new(layer: &str, value: LayerValue) -> Self {
        let what = match value {
            LayerValue::Alpha => "alpha",
            LayerValue::Beta => "beta",
            LayerValue::Occupancy => "occupancy",
        };
        Self {
            layer: layer.to_string(),
            value,
            name: Arc::new(format!("{what} {layer}")),
            state: NumericMetricState::new(),
        }
    }

    /// The metrics of every quantizer in `stats`: α and β, and occupancy where there is one.
    pub fn for_layers(stats: &[LayerStats]) -> Vec<Self> {
        stats
            .iter()
            .flat_map(|s| {
                let mut v = vec![
                    Self::new(&s.name, LayerValue::Alpha),
                    Self::new(&s.name, LayerValue::Beta),
                ];
                if s.occupancy.is_some() {
                    v.push(Self::new(&s.name, LayerValue::Occupancy));
                }
                v
            })
            .collect()
    }

    /// Whether this metric is numeric (α, β) or text (occupancy).
    pub fn is_numeric(&self) -> bool {
        self.value != LayerValue::Occupancy
    }
}

impl Metric for LayerMetric {
    type Input = MonitorInput;

    fn update(&mut self, item: &MonitorInput, _metadata: &MetricMetadata) -> SerializedEntry {
        let stats = item
            .layers
            .as_ref()
            .and_then(|layers| layers.iter().find(|s| s.name == self.layer));
        match self.value {
            LayerValue::Occupancy => {
                let text = stats
                    .and_then(|s| s.occupancy.as_ref())
                    .map(|o| {
                        o.iter()
                            .map(|v| format!("{v:.4}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                SerializedEntry::new(format!("{} {text}", self.name), text)
            }
            LayerValue::Alpha | LayerValue::Beta => {
                let v = stats.map_or(f64::NAN, |s| {
                    f64::from(if self.value == LayerValue::Alpha {
                        s.alpha
                    } else {
                        s.beta
                    })
                });
                self.state
                    .update(v, 1, FormatOptions::new(self.name()).precision(5))
            }
        }
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        if self.is_numeric() {
            NumericAttributes {
                unit: None,
                higher_is_better: true,
            }
            .into()
        } else {
            MetricAttributes::None
        }
    }
}

impl Numeric for LayerMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// Sum of squares of the gradients of a module's float parameters.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Moves a module's parameter gradients from `from` into `to`, multiplied by `scale`.
struct MoveScaled<'a> {
    from: &'a mut GradientsParams,
    to: &'a mut GradientsParams,
    scale: f32,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for MoveScaled<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
            self.to.register(param.id, g.mul_scalar(self.scale));
        }
    }
}

/// A quantized weight's soft value `ŵ` (with its graph back to `w`, `α`, `β`) and the id of the
/// leaf parameter that stands in for it in the shadow network.
enum SoftWeight<B: Backend> {
    Conv(Tensor<B, 4>, ParamId),
    Linear(Tensor<B, 2>, ParamId),
}

/// Replaces `weight` by a new leaf parameter holding its soft-quantized value `ŵ` (detached);
/// returns `ŵ` (not detached) and the leaf's id.
fn leaf<B: AutodiffBackend + QuantBackend, const D: usize>(
    weight: &mut Param<Tensor<B, D>>,
    quantizer: &quantnet_burn::Quantizer<B>,
) -> (Tensor<B, D>, ParamId) {
    let w_hat = quantizer.forward(weight.val());
    let id = ParamId::new();
    *weight = Param::initialized(id, w_hat.clone().detach().require_grad());
    (w_hat, id)
}

/// A training step whose gradients are clipped the way the official code clips them: the L2
/// norm is taken over `∂ℓ/∂ŵ` (the soft-quantized weights' gradients, before the quantizer's
/// chain rule) together with every other parameter's gradient, but not the weight quantizers'
/// α/β; if it exceeds `max_norm`, every gradient (α and β included, which the official code
/// derives from the clipped `∂ℓ/∂ŵ`) is scaled by `max_norm / norm` (paper-spec §2.3, §8).
///
/// Two backward passes: one through the network with each quantized weight replaced by a leaf
/// holding `ŵ`, then one through the weight quantizers alone, seeded with the (clipped)
/// `∂ℓ/∂ŵ`. Without clipping the gradients equal those of a plain step (up to float rounding).
///
/// Returns the step output and the norm before clipping.
pub fn step_clipped_in_wq<B, M>(
    model: &M,
    batch: ImageBatch<B>,
    max_norm: f32,
) -> (TrainOutput<ClassificationOutput<B>>, f32)
where
    B: AutodiffBackend + QuantBackend,
    M: QatModel<B> + burn::module::AutodiffModule<B>,
{
    // 1. The network with every quantized weight replaced by a leaf holding its soft value ŵ.
    let mut shadow = model.clone();
    let mut soft = Vec::new();
    for (_, layer) in shadow.slots().weights {
        soft.extend(match layer {
            WeightLayer::Conv(c) => c.quantizer.take().map(|q| {
                let (w_hat, id) = leaf(&mut c.conv.weight, &q);
                SoftWeight::Conv(w_hat, id)
            }),
            WeightLayer::Linear(l) => l.quantizer.take().map(|q| {
                let (w_hat, id) = leaf(&mut l.linear.weight, &q);
                SoftWeight::Linear(w_hat, id)
            }),
        });
    }
    let item = classify(&shadow, batch.images, batch.targets);
    let mut shadow_grads = GradientsParams::from_grads(item.loss.backward(), &shadow);

    // 2. The norm over ∂ℓ/∂ŵ and every other parameter (the weight quantizers are not in the
    //    shadow, so their α/β are left out).
    let mut norm = SquaredNorm::<B> {
        grads: &shadow_grads,
        sum: None,
    };
    shadow.visit(&mut norm);
    let norm = norm.sum.map_or(0.0, |s| {
        let s: f32 = s.into_scalar().elem();
        s.sqrt()
    });
    let scale = if norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    };

    // 3. The chain rule through the weight quantizers: the gradient of Σ ŵ(w)·(scale·∂ℓ/∂ŵ)
    //    with respect to w, α and β, through the graphs of the ŵ made in step 1.
    let surrogate = soft
        .into_iter()
        .filter_map(|s| match s {
            SoftWeight::Conv(w_hat, id) => {
                let g = shadow_grads.remove::<B::InnerBackend, 4>(id)?;
                Some((w_hat * Tensor::from_inner(g.mul_scalar(scale))).sum())
            }
            SoftWeight::Linear(w_hat, id) => {
                let g = shadow_grads.remove::<B::InnerBackend, 2>(id)?;
                Some((w_hat * Tensor::from_inner(g.mul_scalar(scale))).sum())
            }
        })
        .reduce(|a, b| a + b);
    let mut grads = match surrogate {
        Some(s) => GradientsParams::from_grads(s.backward(), model),
        None => GradientsParams::new(),
    };

    // 4. Every other parameter's gradient, scaled the same way.
    shadow.visit(&mut MoveScaled {
        from: &mut shadow_grads,
        to: &mut grads,
        scale,
    });
    (TrainOutput { grads, item }, norm)
}
