//! Batch normalisation as one op: [`batch_norm`] runs a Burn `BatchNorm` module with the same
//! results (outputs, gradients, running statistics) and a backward of its own.
//!
//! Burn 0.21's `BatchNorm` is about fifteen tensor ops forward and twenty-five backward, most of
//! them broadcasts of a `[1, C, 1, 1]` tensor against the activations. On flex a broadcast binary
//! op walks a strided iterator element by element, and those walks were a third of a ResNet-20
//! training step (docs/bench.md). Here the forward, the backward and the inference transform are
//! each one [`QuantBackend`] call: flex runs them as parallel passes over contiguous channel
//! planes (`flex_norm.rs`); every other backend runs the tensor-op bodies below.
//!
//! With `M = batch·h·w` values per channel, `x̂ = (x − μ)/√(σ² + ε)` (biased `σ²`, as Burn):
//!
//! ```text
//! y      = γ·x̂ + β
//! ∂ℓ/∂β  = Σ g          ∂ℓ/∂γ = Σ g·x̂
//! ∂ℓ/∂x  = γ/(M·√(σ² + ε)) · (M·g − ∂ℓ/∂β − x̂·∂ℓ/∂γ)
//! ```

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::nn::BatchNorm;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::QuantBackend;

/// The training forward's output and the batch statistics (per channel, biased variance).
#[derive(Debug, Clone)]
pub struct BatchNormForward<B: Backend> {
    /// `γ·x̂ + β`, shaped like the input `[batch, channels, positions]`.
    pub output: FloatTensor<B>,
    /// The batch mean, `[channels]`.
    pub mean: FloatTensor<B>,
    /// The biased batch variance, `[channels]`.
    pub var: FloatTensor<B>,
}

/// The gradients of the training forward.
#[derive(Debug, Clone)]
pub struct BatchNormGrads<B: Backend> {
    /// `∂ℓ/∂x`, `[batch, channels, positions]`.
    pub x: FloatTensor<B>,
    /// `∂ℓ/∂γ`, `[channels]`.
    pub gamma: FloatTensor<B>,
    /// `∂ℓ/∂β`, `[channels]`.
    pub beta: FloatTensor<B>,
}

/// Runs `bn` on `x` as Burn's `BatchNorm::forward` does, with the same outputs, gradients and
/// running-statistics updates: the batch statistics (and an update of the running ones) when the
/// backend tracks gradients, the running statistics otherwise.
///
/// # Shapes
/// `x`: `[batch, channels, ...]` (rank ≥ 2); the output has the same shape.
///
/// # Panics
/// If `D < 2`, as Burn's.
pub fn batch_norm<B: QuantBackend, const D: usize>(
    bn: &BatchNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    assert!(
        D >= 2,
        "batch norm needs [batch, channels, ...], got a {D}-D tensor"
    );
    let dims = x.dims();
    let x3_dtype = x.dtype();
    let device = x.device();
    let (batch, channels) = (dims[0], dims[1]);
    let positions = dims[2..].iter().product::<usize>();
    let x3 = x
        .reshape([batch, channels, positions])
        .into_primitive()
        .tensor();
    let wrap = |t: FloatTensor<B>| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let y = if B::ad_enabled(&device) {
        let out = B::batch_norm_train(
            x3,
            bn.gamma.val().into_primitive().tensor(),
            bn.beta.val().into_primitive().tensor(),
            bn.epsilon,
        );
        let momentum = bn.momentum;
        let update = |state: &burn::module::RunningState<Tensor<B, 1>>, batch: FloatTensor<B>| {
            let running = state.value_sync().to_device(&device);
            // In the running state's dtype (Burn's module keeps it in the default float type).
            let batch = wrap(batch).detach().cast(running.dtype());
            state
                .update((running.mul_scalar(1.0 - momentum) + batch.mul_scalar(momentum)).detach());
        };
        update(&bn.running_mean, out.mean);
        update(&bn.running_var, out.var);
        out.output
    } else {
        let dtype = x3_dtype;
        let mean = bn.running_mean.value().to_device(&device).cast(dtype);
        let var = bn.running_var.value().to_device(&device).cast(dtype);
        B::batch_norm_eval(
            x3,
            mean.into_primitive().tensor(),
            var.into_primitive().tensor(),
            bn.gamma.val().into_primitive().tensor(),
            bn.beta.val().into_primitive().tensor(),
            bn.epsilon,
        )
    };
    Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(y)).reshape(dims)
}

/// The tensor-op bodies, for every backend without kernels of its own.
pub(crate) mod generic {
    use super::*;

    type T<B, const D: usize> = Tensor<B, D>;

    fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> T<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    fn unwrap<B: Backend, const D: usize>(t: T<B, D>) -> FloatTensor<B> {
        t.into_primitive().tensor()
    }

    /// `[C]` as `[1, C, 1]`.
    fn per_channel<B: Backend>(t: FloatTensor<B>) -> T<B, 3> {
        wrap::<B, 1>(t).unsqueeze_dims(&[0, 2])
    }

    /// The per-channel mean of `[N, C, L]`, `[C]`.
    fn channel_mean<B: Backend>(x: T<B, 3>) -> T<B, 1> {
        x.mean_dim(2).mean_dim(0).reshape([-1])
    }

    /// The per-channel sum of `[N, C, L]`, `[C]`.
    fn channel_sum<B: Backend>(x: T<B, 3>) -> T<B, 1> {
        x.sum_dim(2).sum_dim(0).reshape([-1])
    }

    pub(crate) fn train<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: FloatTensor<B>,
        epsilon: f64,
    ) -> BatchNormForward<B> {
        let x = wrap::<B, 3>(x);
        let mean = channel_mean(x.clone());
        let centred = x - mean.clone().unsqueeze_dims::<3>(&[0, 2]);
        let var = channel_mean(centred.clone().square());
        let inv_std = var.clone().add_scalar(epsilon).sqrt().recip();
        let y = centred * (inv_std * wrap::<B, 1>(gamma)).unsqueeze_dims::<3>(&[0, 2])
            + per_channel::<B>(beta);
        BatchNormForward {
            output: unwrap(y),
            mean: unwrap(mean),
            var: unwrap(var),
        }
    }

    pub(crate) fn backward<B: Backend>(
        x: FloatTensor<B>,
        grad: FloatTensor<B>,
        mean: FloatTensor<B>,
        var: FloatTensor<B>,
        gamma: FloatTensor<B>,
        epsilon: f64,
    ) -> BatchNormGrads<B> {
        let (x, g) = (wrap::<B, 3>(x), wrap::<B, 3>(grad));
        let [n, _, l] = x.dims();
        let m = (n * l) as f64;
        let inv_std = wrap::<B, 1>(var).add_scalar(epsilon).sqrt().recip();
        let x_hat = (x - per_channel::<B>(mean)) * inv_std.clone().unsqueeze_dims::<3>(&[0, 2]);
        let d_beta = channel_sum(g.clone());
        let d_gamma = channel_sum(g.clone() * x_hat.clone());
        let scale = (wrap::<B, 1>(gamma) * inv_std).div_scalar(m);
        let dx = (g.mul_scalar(m)
            - d_beta.clone().unsqueeze_dims::<3>(&[0, 2])
            - x_hat * d_gamma.clone().unsqueeze_dims::<3>(&[0, 2]))
            * scale.unsqueeze_dims::<3>(&[0, 2]);
        BatchNormGrads {
            x: unwrap(dx),
            gamma: unwrap(d_gamma),
            beta: unwrap(d_beta),
        }
    }

    pub(crate) fn eval<B: Backend>(
        x: FloatTensor<B>,
        mean: FloatTensor<B>,
        var: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: FloatTensor<B>,
        epsilon: f64,
    ) -> FloatTensor<B> {
        // Burn's order of operations: ((x − μ) / √(σ² + ε))·γ + β.
        let std = per_channel::<B>(var).add_scalar(epsilon).sqrt();
        let y = (wrap::<B, 3>(x) - per_channel::<B>(mean)) / std * per_channel::<B>(gamma)
            + per_channel::<B>(beta);
        unwrap(y)
    }
}

/// What the backward pass keeps: `x` (checkpointed), the batch statistics and `γ`.
#[derive(Debug, Clone)]
struct NormState<B: Backend> {
    x: NodeId,
    mean: FloatTensor<B>,
    var: FloatTensor<B>,
    gamma: FloatTensor<B>,
    epsilon: f64,
}

#[derive(Debug)]
struct NormBackward;

impl<B: QuantBackend> Backward<B, 3> for NormBackward {
    type State = NormState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(s.x);
        let g = B::batch_norm_backward(x, grad, s.mean, s.var, s.gamma, s.epsilon);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, g.x);
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, g.gamma);
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, g.beta);
        }
    }
}

/// [`QuantBackend::batch_norm_train`] on `Autodiff<B>`: `B`'s forward, this module's backward.
pub(super) fn autodiff_train<B: QuantBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: FloatTensor<Autodiff<B, C>>,
    epsilon: f64,
) -> BatchNormForward<Autodiff<B, C>> {
    let lift = <Autodiff<B, C> as AutodiffBackend>::from_inner;
    let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
    match NormBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_id = prep.checkpoint(&x);
            let out = B::batch_norm_train(
                x.primitive,
                gamma.primitive.clone(),
                beta.primitive,
                epsilon,
            );
            let state = NormState {
                x: x_id,
                mean: out.mean.clone(),
                var: out.var.clone(),
                gamma: gamma.primitive,
                epsilon,
            };
            BatchNormForward {
                output: prep.finish(state, out.output),
                mean: lift(out.mean),
                var: lift(out.var),
            }
        }
        OpsKind::UnTracked(prep) => {
            let out = B::batch_norm_train(x.primitive, gamma.primitive, beta.primitive, epsilon);
            BatchNormForward {
                output: prep.finish(out.output),
                mean: lift(out.mean),
                var: lift(out.var),
            }
        }
    }
}
