//! Gradient clipping in the `ŵ` domain, as the official code clips (paper-spec §2.3, §8).

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use burn::train::{ClassificationOutput, TrainOutput};
use quantnet_burn::QuantBackend;

use super::classify;
use crate::data::ImageBatch;
use crate::models::{ImageModel, QatModel, WeightLayer};

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

/// `grads` of `module`'s parameters multiplied by `scale` (other entries dropped).
pub(crate) fn scale_grads<B: AutodiffBackend, M: burn::module::AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    scale: f32,
) -> GradientsParams {
    let mut scaled = GradientsParams::new();
    module.visit(&mut MoveScaled {
        from: &mut grads,
        to: &mut scaled,
        scale,
    });
    scaled
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
    M: ImageModel<B> + burn::module::AutodiffModule<B>,
{
    clipped_step_by(model, max_norm, 1.0, |shadow: &M| {
        let item = classify(shadow, batch.images, batch.targets);
        TrainOutput::new(shadow, item.loss.backward(), item)
    })
}

/// [`step_clipped_in_wq`] for any model and training step, every gradient also multiplied by
/// `grad_scale` after the clip: `step` runs the model's own step on the model it is given (a
/// copy whose quantized weights are leaves holding `ŵ`) and builds its gradients from that model
/// (`TrainOutput::new(model, …)`, as Burn's steps do). Returns the step's output and the norm
/// before clipping.
pub fn clipped_step_by<B, M, O>(
    model: &M,
    max_norm: f32,
    grad_scale: f32,
    step: impl FnOnce(&M) -> TrainOutput<O>,
) -> (TrainOutput<O>, f32)
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
    let TrainOutput {
        grads: mut shadow_grads,
        item,
    } = step(&shadow);

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
    let scale = grad_scale
        * if norm > max_norm {
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
