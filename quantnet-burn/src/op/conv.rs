//! The conv training path: Burn's forward, and a backward that calls
//! [`QuantBackend::conv2d_input_grad`] and [`QuantBackend::conv2d_weight_grad`].
//!
//! Burn 0.21's flex backend has no conv backward of its own: Burn's generic defaults run a
//! `conv_transpose2d` that flex computes image by image with a scalar col2im, and a weight
//! gradient written as a conv whose "kernel" is the whole output image (a degenerate GEMM with
//! serial transposes around it). Backends cannot be patched from outside, so the layers call
//! [`conv2d`] instead of Burn's, and `Autodiff<B>` registers this module's backward, which asks
//! `B` for the two gradients: flex answers with im2col GEMMs and, for stride 1, a forward conv
//! with the flipped kernel (`flex_conv.rs`); every other backend with Burn's own (CubeCL has
//! implicit-GEMM kernels for them).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};

use super::QuantBackend;

/// A 2-D convolution, `[batch, c_in, h, w] -> [batch, c_out, h', w']`, with the backward of
/// [`QuantBackend`]: the same values as `burn::tensor::module::conv2d` and, on flex, a faster
/// backward pass.
///
/// # Shapes
/// `x`: `[batch, c_in, h, w]`, `weight`: `[c_out, c_in / groups, k_h, k_w]`, `bias`: `[c_out]`.
pub fn conv2d<B: QuantBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let y = B::quant_conv2d(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        options,
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// `∂ℓ/∂x` of a 1×1 conv with stride `s` (no groups): the stride-1 1×1 conv of `∂ℓ/∂y` with
/// the transposed weight gives the gradient at the positions the conv read (`o·s − p`), and
/// every other position gets 0. Only forward convs, reshapes and concatenations: correct on
/// every backend.
pub(super) fn strided_pointwise_input_grad<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    let [_, _, h, w] = x.shape().dims();
    let wrap4 = |t: FloatTensor<B>| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    let weight_t = wrap4(weight).swap_dims(0, 1);
    let pointwise = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let read = burn::tensor::module::conv2d(wrap4(output_grad), weight_t, None, pointwise);
    let [n, c, oh, ow] = read.dims();
    let [sh, sw] = options.stride;
    let (device, dtype) = (read.device(), read.dtype());
    let zeros = |shape: [usize; 6]| Tensor::<B, 6>::zeros(shape, (&device, dtype));
    // [n, c, oh, sh, ow, sw] with the values at (·, ·, i, 0, j, 0): row i·sh, column j·sw.
    let mut t = read.reshape([n, c, oh, 1, ow, 1]);
    if sw > 1 {
        t = Tensor::cat(vec![t, zeros([n, c, oh, 1, ow, sw - 1])], 5);
    }
    if sh > 1 {
        t = Tensor::cat(vec![t, zeros([n, c, oh, sh - 1, ow, sw])], 3);
    }
    let spread = t.reshape([n, c, oh * sh, ow * sw]);
    // Input row `i` is spread row `i + p`: crop the padding, and pad the end to the input size.
    let fit = |t: Tensor<B, 4>, dim: usize, pad: usize, size: usize| {
        let have = t.dims()[dim];
        let t = if have < pad + size {
            let mut shape = t.dims();
            shape[dim] = pad + size - have;
            let zeros = Tensor::<B, 4>::zeros(shape, (&device, dtype));
            Tensor::cat(vec![t, zeros], dim)
        } else {
            t
        };
        t.narrow(dim, pad, size)
    };
    let dx = fit(
        fit(spread, 2, options.padding[0], h),
        3,
        options.padding[1],
        w,
    );
    dx.into_primitive().tensor()
}

/// The saved inputs: checkpoints of `x`, `weight` and (when there is one) `bias`.
#[derive(Debug, Clone)]
struct ConvState {
    x: NodeId,
    weight: NodeId,
    bias: Option<NodeId>,
    options: ConvOptions<2>,
}

#[derive(Debug)]
struct ConvBackward;

/// One backward for both arities: parents `[x, weight]` or `[x, weight, bias]`. It registers
/// the gradients of the tracked parents.
impl<B: QuantBackend, const N: usize> Backward<B, N> for ConvBackward {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let mut nodes = [None; 3];
        for (node, parent) in nodes.iter_mut().zip(ops.parents) {
            *node = parent.map(|p| p.id);
        }
        let [node_x, node_weight, node_bias] = nodes;
        let state = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(state.x);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(state.weight);
        if let (Some(node), Some(_)) = (node_bias, state.bias) {
            grads.register::<B>(node, conv2d_bias_grad::<B>(grad.clone()));
        }
        if let Some(node) = node_x {
            let g = B::conv2d_input_grad(
                x.clone(),
                weight.clone(),
                grad.clone(),
                state.options.clone(),
            );
            grads.register::<B>(node, g);
        }
        if let Some(node) = node_weight {
            let g = B::conv2d_weight_grad(x, weight, grad, state.options);
            grads.register::<B>(node, g);
        }
    }
}

/// `∂ℓ/∂bias` of a conv: `∂ℓ/∂y` (`[batch, c_out, h', w']`) summed over the batch and the
/// positions. Burn's `conv2d_bias_backward` swaps the batch and channel axes first, which copies
/// the whole gradient into a new layout; here the contiguous `[batch, c_out, h'·w']` view is
/// summed over its last axis, then over the batch (two reductions, no copy).
pub fn conv2d_bias_grad<B: Backend>(output_grad: FloatTensor<B>) -> FloatTensor<B> {
    let [batch, channels, height, width] = output_grad.shape().dims();
    let grad = B::float_reshape(output_grad, [batch, channels, height * width].into());
    let per_image = B::float_sum_dim(grad, 2);
    let total = B::float_sum_dim(per_image, 0);
    B::float_reshape(total, [channels].into())
}

/// [`QuantBackend::quant_conv2d`] on `Autodiff<B>`: `B`'s forward, this module's backward.
pub(super) fn autodiff_conv2d<B: QuantBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
    options: ConvOptions<2>,
) -> FloatTensor<Autodiff<B, C>> {
    match bias {
        Some(bias) => tracked::<B, C, 3>([x, weight, bias], options),
        None => tracked::<B, C, 2>([x, weight], options),
    }
}

/// The conv of `inputs = [x, weight]` or `[x, weight, bias]`, recorded for the backward pass when
/// any of them is tracked.
fn tracked<B: QuantBackend, C: CheckpointStrategy, const N: usize>(
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    options: ConvOptions<2>,
) -> FloatTensor<Autodiff<B, C>> {
    let forward = |inputs: [FloatTensor<Autodiff<B, C>>; N], options| {
        let mut primitives = inputs.into_iter().map(|t| t.primitive);
        let x = primitives.next().expect("x");
        let weight = primitives.next().expect("weight");
        B::quant_conv2d(x, weight, primitives.next(), options)
    };
    let parents = inputs.each_ref().map(|t| t.node.clone());
    match ConvBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let ids = inputs.each_ref().map(|t| prep.checkpoint(t));
            let state = ConvState {
                x: ids[0],
                weight: ids[1],
                bias: ids.get(2).copied(),
                options: options.clone(),
            };
            prep.finish(state, forward(inputs, options))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(inputs, options)),
    }
}
