//! `QuantBackend` for `Autodiff<B>`: the soft quantizer's custom backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{ConvOptions, FloatTensor};

use super::{QuantBackend, QuantPrimitives, SoftArgs, SoftForward, SoftNeeds};

/// Unwraps the parameters to the inner backend (no gradient is tracked through the result).
fn inner<B: QuantBackend, C: CheckpointStrategy>(
    p: QuantPrimitives<Autodiff<B, C>>,
) -> QuantPrimitives<B> {
    QuantPrimitives {
        alpha: p.alpha.primitive,
        beta: p.beta.primitive,
        thresholds: p.thresholds.primitive,
        steps: p.steps.primitive,
    }
}

fn from_inner<B: QuantBackend, C: CheckpointStrategy>(
    t: FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    <Autodiff<B, C> as AutodiffBackend>::from_inner(t)
}

/// Everything the backward pass needs. `S` and `D` have the size of `x`; nothing grows with `n`.
#[derive(Debug, Clone)]
struct SoftState<B: QuantBackend> {
    x: NodeId,
    params: QuantPrimitives<B>,
    sum: FloatTensor<B>,
    derivative: FloatTensor<B>,
    args: SoftArgs,
}

#[derive(Debug)]
struct SoftQuantBackward;

impl<B: QuantBackend> Backward<B, 4> for SoftQuantBackward {
    type State = SoftState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_alpha, node_beta, node_thresholds] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let SoftState {
            x,
            params,
            sum,
            derivative,
            args,
        } = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
        let needs = SoftNeeds {
            input: node_x.is_some(),
            alpha: node_alpha.is_some(),
            beta: node_beta.is_some(),
        };
        if let Some(node) = node_thresholds {
            // ∂ℓ/∂b_i = −α·s_i·λ·Σ g·σ'(T_g(βx − b_i))
            let r = B::quant_threshold_grad(x.clone(), grad.clone(), params.clone(), args);
            let scale = B::float_neg(B::float_mul(params.steps.clone(), params.alpha.clone()));
            grads.register::<B>(node.id, B::float_mul(r, scale));
        }
        let g = B::quant_backward(grad, x, sum, derivative, params, args, needs);
        for (node, grad) in [
            (node_x, g.input),
            (node_alpha, g.alpha),
            (node_beta, g.beta),
        ] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: QuantBackend, C: CheckpointStrategy> QuantBackend for Autodiff<B, C> {
    fn quant_soft(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> FloatTensor<Self> {
        let parents = [
            x.node.clone(),
            p.alpha.node.clone(),
            p.beta.node.clone(),
            p.thresholds.node.clone(),
        ];
        match SoftQuantBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let params = inner(p);
                let SoftForward {
                    output,
                    sum,
                    derivative,
                } = B::quant_soft_with_state(x.primitive, params.clone(), args);
                let state = SoftState {
                    x: x_id,
                    params,
                    sum,
                    derivative,
                    args,
                };
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quant_soft(x.primitive, inner(p), args)),
        }
    }

    fn quant_soft_with_state(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> SoftForward<Self> {
        let out = B::quant_soft_with_state(x.primitive, inner(p), args);
        SoftForward {
            output: from_inner::<B, C>(out.output),
            sum: from_inner::<B, C>(out.sum),
            derivative: from_inner::<B, C>(out.derivative),
        }
    }

    fn quant_hard(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        offset: f32,
    ) -> FloatTensor<Self> {
        // A step function: its gradient is zero almost everywhere, so nothing is tracked.
        from_inner::<B, C>(B::quant_hard(x.primitive, inner(p), offset))
    }

    fn quant_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        super::conv::autodiff_conv2d::<B, C>(x, weight, bias, options)
    }

    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> super::BatchNormForward<Self> {
        super::norm::autodiff_train::<B, C>(x, gamma, beta, epsilon)
    }

    fn quant_threshold_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> FloatTensor<Self> {
        from_inner::<B, C>(B::quant_threshold_grad(
            x.primitive,
            grad.primitive,
            inner(p),
            args,
        ))
    }
}
