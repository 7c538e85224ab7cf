//! The quantizer op: a backend extension with its own forward and backward.
//!
//! Soft (training), paper Eq. (7):
//!
//! ```text
//! y = α · ( Σ_{i=1..n} s_i · σ(T·(β·x − b_i)) − o )
//! ```
//!
//! Hard (inference), paper Eq. (12): the sigmoids become unit steps `A(z) = 1 if z ≥ 0 else 0`, so
//! `y = α·(Σ_i s_i·A(β·x − b_i) − o)` is exactly `α·y_k` for the level `y_k` of the interval that
//! `β·x` falls in.
//!
//! **Tie rule.** `β·x == b_i` maps to the *upper* level (`A(0) = 1`, as in the paper). The official
//! code uses a strict `>` and maps ties down; the difference is a set of measure zero.
//!
//! **Gradients** ([`GradientMode`]): with `D = Σ_i s_i·σ'(T_g·(βx − b_i))·λ`, the backward pass
//! computes
//!
//! ```text
//! ∂ℓ/∂x   = g·α·β·D
//! ∂ℓ/∂α   = Σ g·(Σ_i s_i σ_i − o)
//! ∂ℓ/∂β   = Σ g·α·x·D
//! ∂ℓ/∂b_i = −α·s_i·λ·Σ g·σ'(T_g·(βx − b_i))        (only when the thresholds require a gradient)
//! ```
//!
//! where `σ' = σ(1 − σ)`. [`GradientMode::Exact`] uses `T_g = λ = T` (the true derivative);
//! [`GradientMode::Official`] uses `T_g = 1`, `λ = min(T, cap)`, the official code's weight rule
//! (paper-spec §2.3), which keeps weight gradients from vanishing as `T` grows.
//!
//! **Numerical stability.** The official code clamps every sigmoid argument to ±10, which leaves a
//! soft/hard gap of up to 4.5e-5·s_i forever and a derivative floor. We do not clamp: every sigmoid
//! is evaluated as `1/(1 + exp(−z))`, which is exactly 0 or 1 when `exp` overflows or underflows and
//! never NaN, and `σ'` is evaluated in a form that is 0, not NaN, in both tails. So the output and
//! all gradients stay finite for any finite input and scale at temperatures up to
//! [`crate::schedule::MAX_TEMPERATURE`] (checked in the tests for `T ∈ [0.1, 1e4]` and
//! `|x| ≤ 1e6`); the gain `T·σ'` of the exact gradient grows with `T`, and far above that bound
//! it can overflow f32, so schedules refuse runs that would go there
//! ([`crate::schedule::TemperatureSchedule::check_run`]).
//!
//! **Memory.** The autodiff node keeps `x` (as a checkpoint of the parent), and two tensors of the
//! size of `x` (`S = Σ s_i σ_i` and `D`), whatever the number of levels. The generic body loops
//! over the thresholds and never materialises an `N × n` tensor; the fused kernels (CubeCL on wgpu
//! and cuda, rayon on flex) compute `y`, `S` and `D` in one pass over `x`.

mod autodiff;
mod conv;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod flex_conv;
#[cfg(feature = "flex")]
mod flex_norm;
mod norm;

pub use conv::{conv2d, conv2d_bias_grad};
pub use norm::{BatchNormForward, BatchNormGrads, batch_norm};

use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::levels::LevelSet;

/// The temperature cap of the official code's weight rule (`anybit.py:143,171`).
pub const OFFICIAL_TEMPERATURE_CAP: f32 = 2000.0;

/// Which derivative the backward pass uses (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradientMode {
    /// The exact derivative of the soft quantizer at temperature `T`.
    #[default]
    Exact,
    /// The official code's weight rule: the sigmoid derivative at `T = 1`, scaled by
    /// `min(T, cap)`. `∂ℓ/∂α` still uses the soft output at the true `T`. The official code uses
    /// it for weights only; its activation backward is the exact derivative (for `s_i = 1`).
    Official {
        /// The cap on the gain (2000 in the official code).
        cap: f32,
    },
}

/// `exact`, `official` (the official cap) or `official:CAP` (`CAP > 0`).
impl std::str::FromStr for GradientMode {
    type Err = crate::Error;

    fn from_str(text: &str) -> crate::Result<Self> {
        match text.trim() {
            "exact" => Ok(Self::Exact),
            "official" => Ok(Self::official()),
            other => match other.strip_prefix("official:").map(str::parse::<f32>) {
                Some(Ok(cap)) if cap.is_finite() && cap > 0.0 => Ok(Self::Official { cap }),
                _ => Err(crate::Error::parse(
                    other,
                    "expected exact, official or official:CAP (CAP > 0)",
                )),
            },
        }
    }
}

/// The form [`GradientMode::from_str`](std::str::FromStr) reads.
impl std::fmt::Display for GradientMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact => f.write_str("exact"),
            Self::Official { cap } if *cap == OFFICIAL_TEMPERATURE_CAP => f.write_str("official"),
            Self::Official { cap } => write!(f, "official:{cap}"),
        }
    }
}

impl GradientMode {
    /// The official rule with the official cap, [`OFFICIAL_TEMPERATURE_CAP`].
    pub fn official() -> Self {
        Self::Official {
            cap: OFFICIAL_TEMPERATURE_CAP,
        }
    }
}

/// Scalars of one soft-quantizer call: the forward temperature and offset and, for the backward
/// pass, the temperature `T_g` at which `σ'` is evaluated and the gain `λ` it is scaled by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftArgs {
    /// Forward temperature `T`.
    pub temperature: f32,
    /// Offset `o` (from the level set).
    pub offset: f32,
    /// `T_g`: the temperature of the sigmoid derivative in the backward pass.
    pub grad_temperature: f32,
    /// `λ`: the gain applied to that derivative.
    pub grad_scale: f32,
}

impl SoftArgs {
    /// The arguments for temperature `temperature`, offset `offset` and gradient mode `mode`.
    ///
    /// # Panics
    /// If `temperature` is not finite and positive (see [`check_temperature`] for a checked
    /// version), or an official cap is not positive.
    pub fn new(temperature: f32, offset: f32, mode: GradientMode) -> Self {
        if let Err(err) = check_temperature(temperature) {
            panic!("{err}");
        }
        let (grad_temperature, grad_scale) = match mode {
            GradientMode::Exact => (temperature, temperature),
            GradientMode::Official { cap } => {
                assert!(
                    cap > 0.0,
                    "the official gradient cap must be positive, got {cap}"
                );
                (1.0, temperature.min(cap))
            }
        };
        Self {
            temperature,
            offset,
            grad_temperature,
            grad_scale,
        }
    }
}

/// Checks that a temperature is finite and positive.
///
/// # Errors
/// [`Error::InvalidParameter`] otherwise.
pub fn check_temperature(temperature: f32) -> Result<f32> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(temperature)
    } else {
        Err(Error::InvalidParameter {
            name: "temperature",
            value: temperature.to_string(),
            reason: "must be finite and greater than 0".into(),
        })
    }
}

/// The parameters of one quantizer as backend primitives: `α`, `β` (shape `[1]`), thresholds `b_i`
/// and step heights `s_i` (shape `[n]`).
#[derive(Clone, Debug)]
pub struct QuantPrimitives<B: Backend> {
    /// Output scale `α`, shape `[1]`.
    pub alpha: FloatTensor<B>,
    /// Input scale `β`, shape `[1]`.
    pub beta: FloatTensor<B>,
    /// Thresholds `b_i` in the `β·x` domain, shape `[n]`.
    pub thresholds: FloatTensor<B>,
    /// Step heights `s_i`, shape `[n]`.
    pub steps: FloatTensor<B>,
}

/// What the training forward pass produces: the output and the state the backward pass needs.
#[derive(Clone, Debug)]
pub struct SoftForward<B: Backend> {
    /// `y`, shaped like `x`.
    pub output: FloatTensor<B>,
    /// `S = Σ_i s_i σ(T(βx − b_i))`, shaped like `x`.
    pub sum: FloatTensor<B>,
    /// `D = λ·Σ_i s_i σ'(T_g(βx − b_i))`, shaped like `x`.
    pub derivative: FloatTensor<B>,
}

/// Which of the soft quantizer's gradients a backward pass needs (besides the thresholds').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftNeeds {
    /// `∂ℓ/∂x`.
    pub input: bool,
    /// `∂ℓ/∂α`.
    pub alpha: bool,
    /// `∂ℓ/∂β`.
    pub beta: bool,
}

/// The soft quantizer's gradients, each present when [`SoftNeeds`] asked for it.
#[derive(Clone, Debug)]
pub struct SoftGrads<B: Backend> {
    /// `∂ℓ/∂x = g·D·α·β`, shaped like `x`.
    pub input: Option<FloatTensor<B>>,
    /// `∂ℓ/∂α = Σ g·(S − o)`, shape `[1]`.
    pub alpha: Option<FloatTensor<B>>,
    /// `∂ℓ/∂β = α·Σ g·D·x`, shape `[1]`.
    pub beta: Option<FloatTensor<B>>,
}

/// An autodiff backend whose inner backend has the quantizer op too: what training needs
/// (the soft quantizer on the autodiff backend, the hard one on the inner backend for
/// validation). Implemented for every such backend.
pub trait QatBackend:
    burn::tensor::backend::AutodiffBackend<InnerBackend: QuantBackend> + QuantBackend
{
}

impl<B> QatBackend for B
where
    B: burn::tensor::backend::AutodiffBackend + QuantBackend,
    B::InnerBackend: QuantBackend,
{
}

/// A Burn backend that can run the quantizer op, and the conv and batch-norm training paths of
/// [`conv2d`] and [`batch_norm`].
///
/// Implemented for NdArray and Burn's lazy `Fusion` backend with the generic tensor-op bodies
/// below, for `CubeBackend` (wgpu, cuda) with fused CubeCL kernels, for Flex with a fused CPU
/// kernel and its own conv backward, and for `Autodiff<B>` of any of them with custom backwards.
pub trait QuantBackend: Backend {
    /// The soft quantizer's output only (inference at finite `T`, or the inner op of autodiff when
    /// nothing is tracked).
    fn quant_soft(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> FloatTensor<Self> {
        Self::quant_soft_with_state(x, p, args).output
    }

    /// The soft quantizer's output together with `S` and `D` for the backward pass.
    fn quant_soft_with_state(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> SoftForward<Self> {
        generic::soft_with_state::<Self>(x, p, args)
    }

    /// The hard quantizer `α·(Σ_i s_i·A(βx − b_i) − o)`.
    fn quant_hard(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        offset: f32,
    ) -> FloatTensor<Self> {
        generic::hard::<Self>(x, p, offset)
    }

    /// `r_i = λ·Σ_d g_d·σ'(T_g·(βx_d − b_i))` for each threshold (shape `[n]`); the threshold
    /// gradient is `−α·s_i·r_i`.
    fn quant_threshold_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> FloatTensor<Self> {
        generic::threshold_grad::<Self>(x, grad, p, args)
    }

    /// The soft quantizer's backward pass, all but the thresholds: from the output gradient `g`,
    /// `x` and the forward's state ([`SoftForward`]'s `S` and `D`), the gradients `needs` asks
    /// for: `∂ℓ/∂x = g·D·α·β`, `∂ℓ/∂α = Σ g·(S − o)` and `∂ℓ/∂β = α·Σ g·D·x` (both `[1]`).
    /// Tensor ops by default (a pass over memory each); one pass over `g`, `x`, `S`, `D` on
    /// flex, with the sums accumulated in f64.
    #[allow(clippy::too_many_arguments)]
    fn quant_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        sum: FloatTensor<Self>,
        derivative: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
        needs: SoftNeeds,
    ) -> SoftGrads<Self> {
        generic::backward::<Self>(grad, x, sum, derivative, p, args, needs)
    }

    /// A 2-D convolution whose backward pass (on `Autodiff<Self>`) uses
    /// [`conv2d_input_grad`](Self::conv2d_input_grad) and
    /// [`conv2d_weight_grad`](Self::conv2d_weight_grad) (see [`conv2d`]). The forward is Burn's.
    fn quant_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d(x, weight, bias, options)
    }

    /// `∂ℓ/∂x` of a 2-D convolution given `∂ℓ/∂y`: Burn's by default; on flex a forward conv with
    /// the flipped kernel (stride 1) or one GEMM plus col2im.
    ///
    /// A 1×1 kernel with a stride above 1 (ResNet's downsampling shortcut) is computed from tensor
    /// ops instead of the backend's kernel: Burn 0.21's CubeCL input gradient, and its transposed
    /// conv, are wrong there (on wgpu, every input position the conv reads got 0 in
    /// `tests/integration/conv.rs`'s stride-2 1×1 case).
    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let kernel = weight.shape();
        if kernel[2] == 1 && kernel[3] == 1 && options.stride != [1, 1] && options.groups == 1 {
            return conv::strided_pointwise_input_grad::<Self>(x, weight, output_grad, options);
        }
        <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// `∂ℓ/∂w` of a 2-D convolution given `∂ℓ/∂y`: Burn's by default, one GEMM over im2row
    /// columns on flex.
    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, output_grad, options)
    }

    /// Batch norm's training forward on `x = [batch, channels, positions]` (see [`batch_norm`]):
    /// the output and the batch statistics. Tensor ops by default, one fused pass on flex.
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormForward<Self> {
        norm::generic::train::<Self>(x, gamma, beta, epsilon)
    }

    /// The gradients of [`batch_norm_train`](Self::batch_norm_train) given `∂ℓ/∂y`.
    fn batch_norm_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormGrads<Self> {
        norm::generic::backward::<Self>(x, output_grad, mean, var, gamma, epsilon)
    }

    /// Batch norm's inference transform with the running statistics.
    fn batch_norm_eval(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        norm::generic::eval::<Self>(x, mean, var, gamma, beta, epsilon)
    }
}

#[cfg(feature = "ndarray")]
impl<E, I, Q> QuantBackend for burn_ndarray::NdArray<E, I, Q>
where
    E: burn_ndarray::FloatNdArrayElement,
    I: burn_ndarray::IntNdArrayElement,
    Q: burn_ndarray::QuantElement,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<E>>,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<I>>,
{
}

#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> QuantBackend for burn_fusion::Fusion<B> {}

/// The generic bodies: plain tensor ops, one pass per threshold, memory `O(N)`.
pub(crate) mod generic {
    use super::*;

    type T1<B> = Tensor<B, 1>;

    fn wrap<B: Backend>(t: FloatTensor<B>) -> T1<B> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    fn unwrap<B: Backend>(t: T1<B>) -> FloatTensor<B> {
        t.into_primitive().tensor()
    }

    /// The gradients of [`QuantBackend::quant_backward`] as tensor ops.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward<B: Backend>(
        grad: FloatTensor<B>,
        x: FloatTensor<B>,
        sum: FloatTensor<B>,
        derivative: FloatTensor<B>,
        p: QuantPrimitives<B>,
        args: SoftArgs,
        needs: SoftNeeds,
    ) -> SoftGrads<B> {
        let scalar = || Shape::new([1]);
        // g·D, shared by ∂ℓ/∂x and ∂ℓ/∂β.
        let grad_d = (needs.input || needs.beta).then(|| B::float_mul(grad.clone(), derivative));
        let beta = needs.beta.then(|| {
            let gdx = B::float_sum(B::float_mul(grad_d.clone().expect("computed for β"), x));
            B::float_mul(B::float_reshape(gdx, scalar()), p.alpha.clone())
        });
        let alpha = needs.alpha.then(|| {
            let g = B::float_sum(B::float_mul(
                grad,
                B::float_sub_scalar(sum, args.offset.into()),
            ));
            B::float_reshape(g, scalar())
        });
        let input = grad_d.filter(|_| needs.input).map(|grad_d| {
            let rank = grad_d.shape().num_dims();
            let ab = B::float_reshape(B::float_mul(p.alpha, p.beta), Shape::from(vec![1; rank]));
            B::float_mul(grad_d, ab)
        });
        SoftGrads { input, alpha, beta }
    }

    /// `x` flattened, and its shape to restore.
    fn flat<B: Backend>(x: FloatTensor<B>) -> (T1<B>, Shape) {
        let shape = x.shape();
        let n = shape.num_elements();
        (wrap(B::float_reshape(x, Shape::new([n]))), shape)
    }

    fn restore<B: Backend>(t: T1<B>, shape: &Shape) -> FloatTensor<B> {
        B::float_reshape(unwrap(t), shape.clone())
    }

    /// `1/(1 + exp(−z))`, in the input's dtype (Burn's default `sigmoid` computes in f32). `exp`
    /// overflows to `inf` for very negative `z`, which gives exactly 0, never NaN. A true division,
    /// not `recip`: ndarray's f32 `recip` is an approximation with a relative error of 5e-5.
    pub(super) fn sigmoid<B: Backend>(z: T1<B>) -> T1<B> {
        let denominator = z.neg().exp().add_scalar(1.0);
        denominator.ones_like() / denominator
    }

    pub(crate) fn soft_with_state<B: Backend>(
        x: FloatTensor<B>,
        p: QuantPrimitives<B>,
        args: SoftArgs,
    ) -> SoftForward<B> {
        let (x, shape) = flat::<B>(x);
        let [alpha, beta, thresholds, steps] =
            [p.alpha, p.beta, p.thresholds, p.steps].map(wrap::<B>);
        let bx = x * beta;
        let mut sum = bx.zeros_like();
        let mut derivative = bx.zeros_like();
        let same_t = args.grad_temperature == args.temperature;
        for i in 0..steps.dims()[0] {
            let s_i = steps.clone().slice(i..i + 1);
            let z = bx.clone() - thresholds.clone().slice(i..i + 1);
            let sig = sigmoid(z.clone().mul_scalar(args.temperature));
            let sig_g = if same_t {
                sig.clone()
            } else {
                sigmoid(z.mul_scalar(args.grad_temperature))
            };
            // σ' = σ(1 − σ): exact 0 in both tails, never NaN.
            let dsig = sig_g.clone() * sig_g.neg().add_scalar(1.0);
            sum = sum + sig * s_i.clone();
            derivative = derivative + dsig * s_i;
        }
        let derivative = derivative.mul_scalar(args.grad_scale);
        let output = sum.clone().sub_scalar(args.offset) * alpha;
        SoftForward {
            output: restore(output, &shape),
            sum: restore(sum, &shape),
            derivative: restore(derivative, &shape),
        }
    }

    pub(crate) fn hard<B: Backend>(
        x: FloatTensor<B>,
        p: QuantPrimitives<B>,
        offset: f32,
    ) -> FloatTensor<B> {
        let (x, shape) = flat::<B>(x);
        let [alpha, beta, thresholds, steps] =
            [p.alpha, p.beta, p.thresholds, p.steps].map(wrap::<B>);
        let bx = x * beta;
        let mut sum = bx.zeros_like();
        for i in 0..steps.dims()[0] {
            let b_i = thresholds.clone().slice(i..i + 1);
            // A(βx − b_i) = 1 when βx ≥ b_i: ties go to the upper level.
            let step = bx.clone().greater_equal(b_i.expand(bx.shape())).float();
            sum = sum + step.cast(bx.dtype()) * steps.clone().slice(i..i + 1);
        }
        restore(sum.sub_scalar(offset) * alpha, &shape)
    }

    pub(super) fn threshold_grad<B: Backend>(
        x: FloatTensor<B>,
        grad: FloatTensor<B>,
        p: QuantPrimitives<B>,
        args: SoftArgs,
    ) -> FloatTensor<B> {
        let (x, _) = flat::<B>(x);
        let (grad, _) = flat::<B>(grad);
        let bx = x * wrap::<B>(p.beta);
        let thresholds = wrap::<B>(p.thresholds);
        let n = thresholds.dims()[0];
        let per_threshold = (0..n)
            .map(|i| {
                let z = bx.clone() - thresholds.clone().slice(i..i + 1);
                let sig = sigmoid(z.mul_scalar(args.grad_temperature));
                (sig.clone() * sig.neg().add_scalar(1.0) * grad.clone()).sum()
            })
            .collect::<Vec<_>>();
        unwrap(Tensor::cat(per_threshold, 0).mul_scalar(args.grad_scale))
    }
}

/// The quantizer's parameters as tensors, built from a [`LevelSet`] and validated.
///
/// `α` and `β` are per-tensor (shape `[1]`), the paper's setting. Per-channel scales
/// ([`Granularity::Channel`](crate::Granularity::Channel)) stay outside the op: the
/// [`Quantizer`](crate::Quantizer) scales around it (`α_c·op(β_c·x; α = β = 1)`), so the op
/// functions refuse other shapes.
#[derive(Clone, Debug)]
pub struct QuantParams<B: Backend> {
    /// Output scale `α`, shape `[1]`.
    pub alpha: Tensor<B, 1>,
    /// Input scale `β`, shape `[1]`.
    pub beta: Tensor<B, 1>,
    /// Thresholds `b_i` in the `β·x` domain, shape `[n]`. Frozen unless this tensor requires a
    /// gradient (paper-spec §2.2: the paper freezes them).
    pub thresholds: Tensor<B, 1>,
    /// Step heights `s_i` (fixed by the level set), shape `[n]`.
    pub steps: Tensor<B, 1>,
    /// Offset `o` (fixed by the level set).
    pub offset: f32,
}

impl<B: Backend> QuantParams<B> {
    /// Parameters for `levels` with scales `alpha`, `beta` and `thresholds` (`n = |Y| − 1` values,
    /// increasing, in the `β·x` domain).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if a scale is not finite, or the thresholds are not `n` finite,
    /// non-decreasing values.
    pub fn new(
        levels: &LevelSet,
        alpha: f32,
        beta: f32,
        thresholds: &[f32],
        device: &B::Device,
    ) -> Result<Self> {
        for (name, value) in [("alpha", alpha), ("beta", beta)] {
            if !value.is_finite() {
                return Err(Error::InvalidParameter {
                    name,
                    value: value.to_string(),
                    reason: "must be finite".into(),
                });
            }
        }
        let bad_thresholds = |reason: String| Error::InvalidParameter {
            name: "thresholds",
            value: format!("{thresholds:?}"),
            reason,
        };
        if thresholds.len() != levels.num_steps() {
            return Err(bad_thresholds(format!(
                "level set {levels} has {} levels and needs {} thresholds",
                levels.len(),
                levels.num_steps()
            )));
        }
        if thresholds.iter().any(|b| !b.is_finite()) {
            return Err(bad_thresholds("every threshold must be finite".into()));
        }
        if thresholds.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad_thresholds("thresholds must be non-decreasing".into()));
        }
        let vec = |v: &[f32]| Tensor::<B, 1>::from_floats(v, device);
        Ok(Self {
            alpha: vec(&[alpha]),
            beta: vec(&[beta]),
            thresholds: vec(thresholds),
            steps: vec(&levels.steps()),
            offset: levels.offset(),
        })
    }

    /// Parameters with the midpoint thresholds of `levels` (round to nearest in the `β·x` domain).
    ///
    /// # Errors
    /// As [`QuantParams::new`].
    pub fn with_midpoints(
        levels: &LevelSet,
        alpha: f32,
        beta: f32,
        device: &B::Device,
    ) -> Result<Self> {
        Self::new(levels, alpha, beta, &levels.midpoint_thresholds(), device)
    }

    /// The same parameters in another float dtype (e.g. `DType::F64` for gradient checks, or a
    /// half type to match a half-precision model). The quantized tensor and its parameters must
    /// share one dtype.
    pub fn cast(self, dtype: burn::tensor::DType) -> Self {
        Self {
            alpha: self.alpha.cast(dtype),
            beta: self.beta.cast(dtype),
            thresholds: self.thresholds.cast(dtype),
            steps: self.steps.cast(dtype),
            offset: self.offset,
        }
    }

    /// Panics unless `α` and `β` hold one value each: the fused kernels read only the first
    /// (per-channel parameters given to them would silently use channel 0's scales).
    fn check_scalar_scales(&self) {
        let (a, b) = (self.alpha.dims(), self.beta.dims());
        assert!(
            a == [1] && b == [1],
            "the quantizer op takes one α and one β (got {a:?} and {b:?}): per-channel scales go \
             through `Quantizer::forward`/`hard`"
        );
    }

    fn primitives(&self) -> QuantPrimitives<B> {
        let p = |t: &Tensor<B, 1>| t.clone().into_primitive().tensor();
        QuantPrimitives {
            alpha: p(&self.alpha),
            beta: p(&self.beta),
            thresholds: p(&self.thresholds),
            steps: p(&self.steps),
        }
    }
}

/// The soft quantizer (training), with the custom backward of `mode`.
///
/// # Shapes
/// `x`: any shape; the output has the same shape.
///
/// # Panics
/// If `temperature` is not finite and positive, or `α` or `β` is not one value (per-channel
/// scales go through [`crate::Quantizer::forward`]).
pub fn soft_quantize<B: QuantBackend, const D: usize>(
    x: Tensor<B, D>,
    params: &QuantParams<B>,
    temperature: f32,
    mode: GradientMode,
) -> Tensor<B, D> {
    params.check_scalar_scales();
    let args = SoftArgs::new(temperature, params.offset, mode);
    let y = B::quant_soft(x.into_primitive().tensor(), params.primitives(), args);
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The hard quantizer (inference): exactly `α·y_k` on the level grid. It has no gradient.
///
/// # Shapes
/// `x`: any shape; the output has the same shape.
///
/// # Panics
/// If `α` or `β` is not one value (per-channel scales go through [`crate::Quantizer::hard`]).
pub fn hard_quantize<B: QuantBackend, const D: usize>(
    x: Tensor<B, D>,
    params: &QuantParams<B>,
) -> Tensor<B, D> {
    params.check_scalar_scales();
    let y = B::quant_hard(
        x.into_primitive().tensor(),
        params.primitives(),
        params.offset,
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The soft quantizer written as a composition of Burn ops (`n` sigmoids, each differentiated by
/// Burn's autodiff): the oracle the custom op is tested against, and the "naive" path in the
/// benchmarks. Its gradient is always the exact one.
///
/// # Panics
/// If `temperature` is not finite and positive.
pub fn soft_quantize_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    params: &QuantParams<B>,
    temperature: f32,
) -> Tensor<B, D> {
    check_temperature(temperature).unwrap_or_else(|err| panic!("{err}"));
    let shape = x.shape();
    let n = params.thresholds.dims()[0];
    let bx = x.flatten::<1>(0, D - 1) * params.beta.clone();
    let mut sum = bx.zeros_like();
    for i in 0..n {
        let z = (bx.clone() - params.thresholds.clone().slice(i..i + 1)).mul_scalar(temperature);
        sum = sum + generic::sigmoid(z) * params.steps.clone().slice(i..i + 1);
    }
    (sum.sub_scalar(params.offset) * params.alpha.clone()).reshape(shape)
}
