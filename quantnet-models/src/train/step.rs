//! The recipe's parts for a user's own burn-train setup: [`QatStep`] wraps the user's training
//! step, [`quantizer_scale_ids`] names the parameters of the quantizer-scale learning-rate
//! group ([`quantnet_burn::train::GroupLr`]).

use burn::module::{AutodiffModule, Module, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use quantnet_burn::train::TemperatureHook;
use quantnet_burn::{Method, QuantBackend, Quantizer};

use crate::models::{QatModel, Slots};
use crate::qat::QuantLrGroup;

/// A user's model with the recipe's duties around its own training step: before every step it
/// ticks the temperature hook (the per-step anneal) and ties parameters that several layers
/// share (a weight quantizer shared by every layer), then runs the model's [`TrainStep`]; with
/// [`QatStep::with_clip_in_wq`] the step runs on a copy whose quantized weights are leaves
/// holding `ŵ`, and the gradient norm is clipped over `∂ℓ/∂ŵ` as the official code clips
/// ([`super::clip::clipped_step_by`]); [`QatStep::with_grad_scale`] multiplies every gradient
/// (`1/N` when burn-train sums the gradients of N devices). Validation runs the model's
/// [`InferenceStep`]. Give burn-train's `Learner` a `QatStep` where it took the model, and the
/// hook (a clone of the one here) as its early-stopping strategy, which raises epoch-wise
/// schedules and ends the anneal.
#[derive(Module, Debug)]
pub struct QatStep<B: Backend, M: Module<B>> {
    model: M,
    /// Always `None`: Burn's module derive needs a field that names the backend.
    marker: Option<Param<Tensor<B, 1>>>,
    /// Ticked before every training step.
    #[module(skip)]
    hook: Option<TemperatureHook>,
    /// The largest gradient norm over `∂ℓ/∂ŵ` and the other parameters.
    #[module(skip)]
    clip_in_wq: Option<f32>,
    /// Multiplies every gradient (after clipping).
    #[module(skip)]
    grad_scale: f32,
}

impl<B: Backend, M: Module<B>> QatStep<B, M> {
    /// Wraps `model`, without a hook.
    pub fn new(model: M) -> Self {
        Self {
            model,
            marker: None,
            hook: None,
            clip_in_wq: None,
            grad_scale: 1.0,
        }
    }

    /// Clips the gradient's L2 norm to `max_norm` in the `ŵ` domain (the paper: 5). The inner
    /// optimizer should then not clip as well.
    pub fn with_clip_in_wq(mut self, max_norm: f32) -> Self {
        self.clip_in_wq = Some(max_norm);
        self
    }

    /// Multiplies every gradient by `scale` after clipping: `1/N` when each of N devices runs one
    /// batch of a step and burn-train sums their gradients (the gradients are scaled after the
    /// backward pass, not the loss before it: the same for powers of two).
    pub fn with_grad_scale(mut self, scale: f32) -> Self {
        self.grad_scale = scale;
        self
    }

    /// Ticks `hook` before every training step. Give it the hook that knows the run's length
    /// ([`TemperatureHook::over`]), cloned after `over` (the clones share their step count).
    pub fn with_hook(mut self, hook: TemperatureHook) -> Self {
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

impl<B, M> TrainStep for QatStep<B, M>
where
    B: AutodiffBackend + QuantBackend,
    M: TrainStep + AutodiffModule<B> + QatModel<B>,
{
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: M::Input) -> TrainOutput<M::Output> {
        let duties = Duties {
            hook: self.hook.as_ref(),
            clip_in_wq: self.clip_in_wq,
            grad_scale: self.grad_scale,
        };
        duties.step(&self.model, |m: &M| m.step(item))
    }
}

/// The recipe's duties around a training step, shared by [`QatStep`] (any model's own step)
/// and [`super::Monitored`] (the whole recipe's classification step): tick the hook, tie shared
/// parameters, run `step` (on a copy with `ŵ` leaves when clipping in the `ŵ` domain), scale
/// the gradients.
pub(crate) struct Duties<'a> {
    pub(crate) hook: Option<&'a TemperatureHook>,
    pub(crate) clip_in_wq: Option<f32>,
    pub(crate) grad_scale: f32,
}

impl Duties<'_> {
    pub(crate) fn step<B, M, O>(
        &self,
        model: &M,
        step: impl FnOnce(&M) -> TrainOutput<O>,
    ) -> TrainOutput<O>
    where
        B: AutodiffBackend + QuantBackend,
        M: AutodiffModule<B> + QatModel<B>,
    {
        if let Some(hook) = self.hook {
            hook.tick();
        }
        // A parameter shared by several layers must be one tensor in the forward pass (a
        // loaded checkpoint gives each place its own copy): its gradient is then every place's,
        // found through the first, which keeps the model's id. `GroupLr` ties them again after
        // the optimizer's step.
        let model = quantnet_burn::tie_shared_params(model.clone());
        if let Some(max_norm) = self.clip_in_wq {
            return super::clip::clipped_step_by(&model, max_norm, self.grad_scale, step).0;
        }
        let mut out = step(&model);
        if self.grad_scale != 1.0 {
            out.grads = super::clip::scale_grads(&model, out.grads, self.grad_scale);
        }
        out
    }
}

impl<B: Backend, M: InferenceStep + Module<B>> InferenceStep for QatStep<B, M> {
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: M::Input) -> M::Output {
        self.model.step(item)
    }
}

impl<B: Backend, M: QatModel<B>> QatModel<B> for QatStep<B, M> {
    fn slots(&mut self) -> Slots<'_, B> {
        self.model.slots()
    }

    fn float_layers(&self, n: usize) -> Vec<usize> {
        self.model.float_layers(n)
    }
}

/// The parameters of `model` that train at the recipe's quantizer learning-rate multiplier
/// (`QatConfig::quant_lr_mult`): the α, β and thresholds of its Quantization Networks
/// quantizers, the activation quantizers' and, with [`QuantLrGroup::All`], the weight
/// quantizers' too. The baselines' learned scales (LSQ's step, PACT's clip, DSQ's step) train at
/// the base learning rate, as their papers do.
///
/// For [`quantnet_burn::train::GroupLr`], which asks at every step (a resumed run loads other
/// parameter ids): `GroupLr::new(optimizer, |m: &QatStep<B, M>| quantizer_scale_ids(m,
/// QuantLrGroup::All), 100.0)`.
pub fn quantizer_scale_ids<B: Backend, M: QatModel<B>>(
    model: &M,
    group: QuantLrGroup,
) -> Vec<ParamId> {
    // `slots()` borrows mutably: walk a clone (tensors are shared, ids kept).
    let mut model = model.clone();
    let slots = model.slots();
    let is_qn = |q: &&Quantizer<B>| q.method() == Method::Qn;
    let ids = |q: &Quantizer<B>| [q.alpha.id, q.beta.id, q.thresholds.id];
    let mut out: Vec<ParamId> = (slots.acts.into_iter())
        .filter_map(|(_, a)| a.quantizer.as_ref().filter(is_qn).map(ids))
        .flatten()
        .collect();
    if group == QuantLrGroup::All {
        for (_, mut layer) in slots.weights {
            if let Some(q) = layer.quantizer().as_ref().filter(is_qn) {
                out.extend(ids(q));
            }
        }
    }
    out
}
