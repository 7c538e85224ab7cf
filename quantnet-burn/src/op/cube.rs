//! Fused CubeCL kernels for the CubeCL backends (wgpu, cuda).
//!
//! One thread per element: it reads `x` once, loops over the `n` thresholds in registers and writes
//! `y` (and, for training, `S` and `D`) once, instead of the `~5n` full-tensor passes of the generic
//! body. Each sigmoid and its derivative share one `exp(−|z|)`:
//! `σ(z) = 1/(1+e)` for `z ≥ 0`, `e/(1+e)` otherwise, and `σ'(z) = e/(1+e)²`, with `e = exp(−|z|)`
//! in `(0, 1]`, so nothing overflows and nothing is NaN for any finite input.

use burn::tensor::TensorMetadata;
use burn::tensor::ops::FloatTensor;
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::{QuantBackend, QuantPrimitives, SoftArgs, SoftForward};

/// `(σ(z), σ'(z))` from one exponential.
#[cube]
fn sigmoid_and_derivative<F: Float>(z: F) -> (F, F) {
    let e = F::exp(-F::abs(z));
    let inv = F::new(1.0) / (F::new(1.0) + e);
    let mut sig = e * inv;
    if z >= F::new(0.0) {
        sig = inv;
    }
    (sig, e * inv * inv)
}

/// `σ(z)` alone.
#[cube]
fn sigmoid<F: Float>(z: F) -> F {
    let e = F::exp(-F::abs(z));
    let inv = F::new(1.0) / (F::new(1.0) + e);
    let mut sig = e * inv;
    if z >= F::new(0.0) {
        sig = inv;
    }
    sig
}

#[cube(launch)]
fn soft_kernel<F: Float>(
    x: &Array<F>,
    alpha: &Array<F>,
    beta: &Array<F>,
    thresholds: &Array<F>,
    steps: &Array<F>,
    output: &mut Array<F>,
    temperature: InputScalar,
    offset: InputScalar,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let t = temperature.get::<F>();
    let bx = beta[0] * x[pos];
    let mut sum = F::new(0.0);
    for i in 0..thresholds.len() {
        sum += steps[i] * sigmoid::<F>(t * (bx - thresholds[i]));
    }
    output[pos] = alpha[0] * (sum - offset.get::<F>());
}

#[cube(launch)]
fn soft_state_kernel<F: Float>(
    x: &Array<F>,
    alpha: &Array<F>,
    beta: &Array<F>,
    thresholds: &Array<F>,
    steps: &Array<F>,
    output: &mut Array<F>,
    sum_out: &mut Array<F>,
    derivative_out: &mut Array<F>,
    temperature: InputScalar,
    offset: InputScalar,
    grad_temperature: InputScalar,
    grad_scale: InputScalar,
    #[comptime] same_temperature: bool,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let t = temperature.get::<F>();
    let tg = grad_temperature.get::<F>();
    let bx = beta[0] * x[pos];
    let mut sum = F::new(0.0);
    let mut derivative = F::new(0.0);
    for i in 0..thresholds.len() {
        let z = bx - thresholds[i];
        let (sig, dsig) = sigmoid_and_derivative::<F>(t * z);
        sum += steps[i] * sig;
        if comptime![same_temperature] {
            derivative += steps[i] * dsig;
        } else {
            let (_sig_g, dsig_g) = sigmoid_and_derivative::<F>(tg * z);
            derivative += steps[i] * dsig_g;
        }
    }
    output[pos] = alpha[0] * (sum - offset.get::<F>());
    sum_out[pos] = sum;
    derivative_out[pos] = derivative * grad_scale.get::<F>();
}

#[cube(launch)]
fn hard_kernel<F: Float>(
    x: &Array<F>,
    alpha: &Array<F>,
    beta: &Array<F>,
    thresholds: &Array<F>,
    steps: &Array<F>,
    output: &mut Array<F>,
    offset: InputScalar,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let bx = beta[0] * x[pos];
    let mut sum = F::new(0.0);
    for i in 0..thresholds.len() {
        // A(βx − b_i) = 1 when βx ≥ b_i: ties go to the upper level.
        if bx >= thresholds[i] {
            sum += steps[i];
        }
    }
    output[pos] = alpha[0] * (sum - offset.get::<F>());
}

/// The inputs made contiguous, and the launch geometry for `x`.
struct Launch<R: CubeRuntime> {
    x: CubeTensor<R>,
    p: [CubeTensor<R>; 4],
    cube_dim: CubeDim,
    cube_count: cubecl::CubeCount,
}

impl<R: CubeRuntime> Launch<R> {
    fn new(x: CubeTensor<R>, p: [CubeTensor<R>; 4]) -> Self {
        let dtype = x.dtype();
        let p = p.map(|t| {
            assert_eq!(
                t.dtype(),
                dtype,
                "quantizer parameters must have the dtype of the quantized tensor"
            );
            into_contiguous(t)
        });
        let x = into_contiguous(x);
        let n = x.shape().num_elements();
        let cube_dim = CubeDim::new(&x.client, n);
        let cube_count = calculate_cube_count_elemwise(&x.client, n, cube_dim);
        Self {
            x,
            p,
            cube_dim,
            cube_count,
        }
    }

    fn empty(&self) -> CubeTensor<R> {
        empty_device_dtype(
            self.x.client.clone(),
            self.x.device.clone(),
            self.x.shape(),
            self.x.dtype(),
        )
    }
}

fn params<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    p: QuantPrimitives<CubeBackend<R, F, I, BT>>,
) -> [CubeTensor<R>; 4] {
    [p.alpha, p.beta, p.thresholds, p.steps]
}

impl<R, F, I, BT> QuantBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn quant_soft(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> FloatTensor<Self> {
        let l = Launch::new(x, params(p));
        let output = l.empty();
        let dtype = l.x.dtype();
        let client = l.x.client.clone();
        let [alpha, beta, thresholds, steps] = l.p;
        soft_kernel::launch::<R>(
            &client,
            l.cube_count,
            l.cube_dim,
            l.x.into_array_arg(),
            alpha.into_array_arg(),
            beta.into_array_arg(),
            thresholds.into_array_arg(),
            steps.into_array_arg(),
            output.clone().into_array_arg(),
            InputScalar::new(args.temperature, dtype),
            InputScalar::new(args.offset, dtype),
            dtype.into(),
        );
        output
    }

    fn quant_soft_with_state(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> SoftForward<Self> {
        let l = Launch::new(x, params(p));
        let [output, sum, derivative] = [l.empty(), l.empty(), l.empty()];
        let dtype = l.x.dtype();
        let client = l.x.client.clone();
        let [alpha, beta, thresholds, steps] = l.p;
        soft_state_kernel::launch::<R>(
            &client,
            l.cube_count,
            l.cube_dim,
            l.x.into_array_arg(),
            alpha.into_array_arg(),
            beta.into_array_arg(),
            thresholds.into_array_arg(),
            steps.into_array_arg(),
            output.clone().into_array_arg(),
            sum.clone().into_array_arg(),
            derivative.clone().into_array_arg(),
            InputScalar::new(args.temperature, dtype),
            InputScalar::new(args.offset, dtype),
            InputScalar::new(args.grad_temperature, dtype),
            InputScalar::new(args.grad_scale, dtype),
            args.grad_temperature == args.temperature,
            dtype.into(),
        );
        SoftForward {
            output,
            sum,
            derivative,
        }
    }

    fn quant_hard(
        x: FloatTensor<Self>,
        p: QuantPrimitives<Self>,
        offset: f32,
    ) -> FloatTensor<Self> {
        let l = Launch::new(x, params(p));
        let output = l.empty();
        let dtype = l.x.dtype();
        let client = l.x.client.clone();
        let [alpha, beta, thresholds, steps] = l.p;
        hard_kernel::launch::<R>(
            &client,
            l.cube_count,
            l.cube_dim,
            l.x.into_array_arg(),
            alpha.into_array_arg(),
            beta.into_array_arg(),
            thresholds.into_array_arg(),
            steps.into_array_arg(),
            output.clone().into_array_arg(),
            InputScalar::new(offset, dtype),
            dtype.into(),
        );
        output
    }
}
