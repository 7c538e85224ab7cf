//! A fused CPU kernel for Burn's flex backend.
//!
//! Flex tensors expose their memory, so the op runs as one parallel pass (rayon, chunks of
//! [`CHUNK`] elements) that reads `x` once and writes `y` (and `S`, `D` for training) once, as the
//! CubeCL kernel does on GPUs, instead of the `~5n` tensor passes of the generic body. The
//! arithmetic is the CubeCL kernel's: one `exp(−|z|)` per threshold gives both `σ` and `σ'`.
//! f32 and f64 tensors take this path; other dtypes (f16, bf16) take the generic body.

use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, TensorData, TensorMetadata};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{QuantBackend, QuantPrimitives, SoftArgs, SoftForward, generic};

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 16 * 1024;

macro_rules! kernels {
    ($e:ty, $sig:ident, $soft:ident, $state:ident) => {
        /// `(σ(z), σ'(z))` from one exponential; exact 0/1 in the tails, never NaN.
        #[inline(always)]
        fn $sig(z: $e) -> ($e, $e) {
            let e = (-z.abs()).exp();
            let inv = 1.0 / (1.0 + e);
            (if z >= 0.0 { inv } else { e * inv }, e * inv * inv)
        }

        fn $soft(x: &[$e], [alpha, beta]: [$e; 2], b: &[$e], s: &[$e], t: $e, o: $e, y: &mut [$e]) {
            y.par_chunks_mut(CHUNK).enumerate().for_each(|(c, ys)| {
                let xs = &x[c * CHUNK..c * CHUNK + ys.len()];
                for (y, &x) in ys.iter_mut().zip(xs) {
                    let bx = beta * x;
                    let mut sum = 0.0;
                    for (&b, &s) in b.iter().zip(s) {
                        sum += s * $sig(t * (bx - b)).0;
                    }
                    *y = alpha * (sum - o);
                }
            });
        }

        #[allow(clippy::too_many_arguments)]
        fn $state(
            x: &[$e],
            [alpha, beta]: [$e; 2],
            b: &[$e],
            s: &[$e],
            [t, o, tg, gain]: [$e; 4],
            y: &mut [$e],
            sums: &mut [$e],
            ds: &mut [$e],
        ) {
            let same = tg == t;
            y.par_chunks_mut(CHUNK)
                .zip(sums.par_chunks_mut(CHUNK))
                .zip(ds.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, ((ys, ss), dss))| {
                    let xs = &x[c * CHUNK..c * CHUNK + ys.len()];
                    for (((y, sum_out), d_out), &x) in ys.iter_mut().zip(ss).zip(dss).zip(xs) {
                        let bx = beta * x;
                        let (mut sum, mut d) = (0.0, 0.0);
                        for (&b, &s) in b.iter().zip(s) {
                            let z = bx - b;
                            let (sig, dsig) = $sig(t * z);
                            sum += s * sig;
                            d += s * if same { dsig } else { $sig(tg * z).1 };
                        }
                        *y = alpha * (sum - o);
                        *sum_out = sum;
                        *d_out = d * gain;
                    }
                });
        }
    };
}

macro_rules! hard {
    ($e:ty, $hard:ident) => {
        fn $hard(x: &[$e], [alpha, beta]: [$e; 2], b: &[$e], s: &[$e], o: $e, y: &mut [$e]) {
            y.par_chunks_mut(CHUNK).enumerate().for_each(|(c, ys)| {
                let xs = &x[c * CHUNK..c * CHUNK + ys.len()];
                for (y, &x) in ys.iter_mut().zip(xs) {
                    let bx = beta * x;
                    // A(βx − b_i) = 1 when βx ≥ b_i: ties go to the upper level.
                    let sum: $e = b
                        .iter()
                        .zip(s)
                        .filter(|(b, _)| bx >= **b)
                        .map(|(_, s)| *s)
                        .sum();
                    *y = alpha * (sum - o);
                }
            });
        }
    };
}

kernels!(f64, sig_dsig_f64, soft_f64, soft_state_f64);
hard!(f32, hard_f32);
hard!(f64, hard_f64);
use fast::{soft_f32, soft_state_f32};

/// The f32 kernels, written so that the compiler vectorises them: elements in blocks of
/// [`fast::BLOCK`] held on the stack, thresholds in the outer loop and the block in the inner
/// one, and an inlined, branch-free `exp` (Cephes' polynomial, within 2 ulp of libm's on the
/// range used) instead of a libm call per (element, threshold). f64 keeps the scalar kernels
/// above (the gradient checks' dtype).
mod fast {
    use super::CHUNK;
    use rayon::prelude::*;

    /// Elements per inner block.
    pub(super) const BLOCK: usize = 256;

    /// `e^a` for `a ≤ 0`: exactly 0 below −87 (where f32's normal range ends), Cephes' degree-5
    /// polynomial on the reduced argument otherwise.
    #[inline(always)]
    fn exp_neg(a: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // Adding and removing 1.5·2^23 rounds to the nearest integer without a libm call.
        const ROUND: f32 = 12_582_912.0;
        let clamped = a.max(-87.0);
        let n = (clamped * LOG2E + ROUND) - ROUND;
        let r = clamped - n * LN2_HI - n * LN2_LO;
        let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
        let poly = p * r * r + r + 1.0;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // The exponent bias is added in float: an integer `+` would carry an overflow check in
        // builds with debug assertions, and that branch stops the loop from vectorising.
        let scale = f32::from_bits(((n + 127.0) as i32 as u32) << 23);
        if a < -87.0 { 0.0 } else { poly * scale }
    }

    /// `(σ(z), σ'(z))`, branch-free; exact 0/1 in the tails, never NaN.
    #[inline(always)]
    fn sig_dsig(z: f32) -> (f32, f32) {
        let e = exp_neg(-z.abs());
        let inv = 1.0 / (1.0 + e);
        (if z >= 0.0 { inv } else { e * inv }, e * inv * inv)
    }

    /// `Σ_i s_i σ(t(bx − b_i))` for a block of `bx`, and (when `tg` is given)
    /// `Σ_i s_i σ'(tg(bx − b_i))`.
    #[inline(always)]
    fn block_sums(
        bx: &[f32],
        b: &[f32],
        s: &[f32],
        t: f32,
        tg: Option<f32>,
        sum: &mut [f32],
        d: &mut [f32],
    ) {
        sum.fill(0.0);
        d.fill(0.0);
        for (&b, &s) in b.iter().zip(s) {
            match tg {
                None => {
                    for (sum, &bx) in sum.iter_mut().zip(bx) {
                        *sum += s * sig_dsig(t * (bx - b)).0;
                    }
                }
                Some(tg) if tg == t => {
                    for ((sum, d), &bx) in sum.iter_mut().zip(d.iter_mut()).zip(bx) {
                        let (sig, dsig) = sig_dsig(t * (bx - b));
                        *sum += s * sig;
                        *d += s * dsig;
                    }
                }
                Some(tg) => {
                    for ((sum, d), &bx) in sum.iter_mut().zip(d.iter_mut()).zip(bx) {
                        let z = bx - b;
                        *sum += s * sig_dsig(t * z).0;
                        *d += s * sig_dsig(tg * z).1;
                    }
                }
            }
        }
    }

    pub(super) fn soft_f32(
        x: &[f32],
        [alpha, beta]: [f32; 2],
        b: &[f32],
        s: &[f32],
        t: f32,
        o: f32,
        y: &mut [f32],
    ) {
        y.par_chunks_mut(CHUNK).enumerate().for_each(|(c, ys)| {
            let xs = &x[c * CHUNK..c * CHUNK + ys.len()];
            let (mut bx, mut sum, mut d) = ([0.0; BLOCK], [0.0; BLOCK], [0.0; BLOCK]);
            for (ys, xs) in ys.chunks_mut(BLOCK).zip(xs.chunks(BLOCK)) {
                let k = xs.len();
                for (bx, &x) in bx.iter_mut().zip(xs) {
                    *bx = beta * x;
                }
                block_sums(&bx[..k], b, s, t, None, &mut sum[..k], &mut d[..k]);
                for (y, &sum) in ys.iter_mut().zip(&sum[..k]) {
                    *y = alpha * (sum - o);
                }
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn soft_state_f32(
        x: &[f32],
        [alpha, beta]: [f32; 2],
        b: &[f32],
        s: &[f32],
        [t, o, tg, gain]: [f32; 4],
        y: &mut [f32],
        sums: &mut [f32],
        ds: &mut [f32],
    ) {
        y.par_chunks_mut(CHUNK)
            .zip(sums.par_chunks_mut(CHUNK))
            .zip(ds.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, ((ys, ss), dss))| {
                let xs = &x[c * CHUNK..c * CHUNK + ys.len()];
                let mut bx = [0.0; BLOCK];
                let blocks = ys
                    .chunks_mut(BLOCK)
                    .zip(ss.chunks_mut(BLOCK))
                    .zip(dss.chunks_mut(BLOCK))
                    .zip(xs.chunks(BLOCK));
                for (((ys, ss), dss), xs) in blocks {
                    let k = xs.len();
                    for (bx, &x) in bx.iter_mut().zip(xs) {
                        *bx = beta * x;
                    }
                    block_sums(&bx[..k], b, s, t, Some(tg), ss, dss);
                    for ((y, &sum), d) in ys.iter_mut().zip(ss.iter()).zip(dss.iter_mut()) {
                        *y = alpha * (sum - o);
                        *d *= gain;
                    }
                }
            });
    }
}

/// The dtype every one of `tensors` has, when it is f32 or f64: the dtypes the flex kernels
/// (this file's, `flex_conv.rs`'s and `flex_norm.rs`'s) handle.
pub(super) fn kernel_dtype(tensors: &[&FlexTensor]) -> Option<DType> {
    let dtype = tensors.first()?.dtype();
    let same = tensors.iter().all(|t| t.dtype() == dtype);
    (same && matches!(dtype, DType::F32 | DType::F64)).then_some(dtype)
}

/// The element types of the flex kernels.
pub(super) trait Scalar:
    burn::tensor::Element + Default + std::ops::AddAssign + std::ops::Mul<Output = Self> + Send + Sync
{
    /// The values of a contiguous tensor of this dtype.
    fn slice(t: &FlexTensor) -> &[Self];
    /// `v` rounded to this type.
    fn from_f64(v: f64) -> Self;
}

macro_rules! scalar {
    ($e:ty) => {
        impl Scalar for $e {
            fn slice(t: &FlexTensor) -> &[Self] {
                t.as_slice::<$e>()
                    .expect("a contiguous tensor of the checked dtype")
            }
            #[allow(clippy::cast_possible_truncation)]
            fn from_f64(v: f64) -> Self {
                v as $e
            }
        }
    };
}
scalar!(f32);
scalar!(f64);

/// A tensor holding `values`.
pub(super) fn from_values<E: Scalar>(values: Vec<E>, shape: impl Into<Vec<usize>>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

/// Whether the fused path handles `x` with these parameters (same f32/f64 dtype everywhere).
fn fused_dtype(x: &FlexTensor, p: &QuantPrimitives<Flex>) -> Option<DType> {
    kernel_dtype(&[x, &p.alpha, &p.beta, &p.thresholds, &p.steps])
}

/// `g·D·α·β` in one parallel pass.
fn input_grad_typed<E: Scalar>(
    grad: &FlexTensor,
    derivative: &FlexTensor,
    alpha: &FlexTensor,
    beta: &FlexTensor,
) -> FlexTensor {
    let (g, d) = (grad.to_contiguous(), derivative.to_contiguous());
    let scalar = |t: &FlexTensor| E::slice(&t.to_contiguous())[0];
    let ab = scalar(alpha) * scalar(beta);
    let (g, d) = (E::slice(&g), E::slice(&d));
    let mut out = vec![E::default(); g.len()];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let at = c * CHUNK;
        for ((o, &g), &d) in o.iter_mut().zip(&g[at..]).zip(&d[at..]) {
            *o = g * d * ab;
        }
    });
    from_values(out, grad.shape())
}

fn empty(shape: &Shape, dtype: DType) -> FlexTensor {
    FlexTensor::empty(shape.clone(), dtype)
}

macro_rules! dispatch {
    ($e:ty, $x:expr, $p:expr, |$xs:ident, $scales:ident, $b:ident, $s:ident| $body:expr) => {{
        let xc = $x.to_contiguous();
        let $xs: &[$e] = xc
            .as_slice::<$e>()
            .expect("contiguous tensor of the checked dtype");
        // A contiguous copy of a parameter's values (its dtype was checked by `fused_dtype`).
        let values = |t: &FlexTensor| -> Vec<$e> {
            t.to_contiguous()
                .as_slice::<$e>()
                .expect("checked dtype")
                .to_vec()
        };
        let $scales = [values(&$p.alpha)[0], values(&$p.beta)[0]];
        let $b = values(&$p.thresholds);
        let $s = values(&$p.steps);
        $body
    }};
}

impl QuantBackend for Flex {
    fn quant_input_grad(
        grad: FlexTensor,
        derivative: FlexTensor,
        alpha: FlexTensor,
        beta: FlexTensor,
    ) -> FlexTensor {
        match kernel_dtype(&[&grad, &derivative, &alpha, &beta]) {
            Some(DType::F64) => input_grad_typed::<f64>(&grad, &derivative, &alpha, &beta),
            Some(_) => input_grad_typed::<f32>(&grad, &derivative, &alpha, &beta),
            None => generic::input_grad::<Self>(grad, derivative, alpha, beta),
        }
    }

    fn batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> super::BatchNormForward<Self> {
        super::flex_norm::train(x, gamma, beta, epsilon)
    }

    fn batch_norm_backward(
        x: FlexTensor,
        output_grad: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        gamma: FlexTensor,
        epsilon: f64,
    ) -> super::BatchNormGrads<Self> {
        super::flex_norm::backward(x, output_grad, mean, var, gamma, epsilon)
    }

    fn batch_norm_eval(
        x: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        super::flex_norm::eval(x, mean, var, gamma, beta, epsilon)
    }

    fn conv2d_input_grad(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        super::flex_conv::conv2d_input_grad(x, weight, output_grad, options)
    }

    fn conv2d_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        super::flex_conv::conv2d_weight_grad(x, weight, output_grad, options)
    }

    fn quant_soft(x: FlexTensor, p: QuantPrimitives<Self>, args: SoftArgs) -> FlexTensor {
        let Some(dtype) = fused_dtype(&x, &p) else {
            return generic::soft_with_state::<Self>(x, p, args).output;
        };
        let shape = x.shape();
        let mut out = empty(&shape, dtype);
        match dtype {
            DType::F64 => dispatch!(f64, x, p, |xs, scales, b, s| soft_f64(
                xs,
                scales,
                &b,
                &s,
                args.temperature.into(),
                args.offset.into(),
                out.storage_mut::<f64>()
            )),
            _ => dispatch!(f32, x, p, |xs, scales, b, s| soft_f32(
                xs,
                scales,
                &b,
                &s,
                args.temperature,
                args.offset,
                out.storage_mut::<f32>()
            )),
        }
        out
    }

    fn quant_soft_with_state(
        x: FlexTensor,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
    ) -> SoftForward<Self> {
        let Some(dtype) = fused_dtype(&x, &p) else {
            return generic::soft_with_state::<Self>(x, p, args);
        };
        let shape = x.shape();
        let (mut output, mut sum, mut derivative) = (
            empty(&shape, dtype),
            empty(&shape, dtype),
            empty(&shape, dtype),
        );
        let SoftArgs {
            temperature: t,
            offset: o,
            grad_temperature: tg,
            grad_scale: gain,
        } = args;
        match dtype {
            DType::F64 => dispatch!(f64, x, p, |xs, scales, b, s| soft_state_f64(
                xs,
                scales,
                &b,
                &s,
                [t, o, tg, gain].map(f64::from),
                output.storage_mut::<f64>(),
                sum.storage_mut::<f64>(),
                derivative.storage_mut::<f64>(),
            )),
            _ => dispatch!(f32, x, p, |xs, scales, b, s| soft_state_f32(
                xs,
                scales,
                &b,
                &s,
                [t, o, tg, gain],
                output.storage_mut::<f32>(),
                sum.storage_mut::<f32>(),
                derivative.storage_mut::<f32>(),
            )),
        }
        SoftForward {
            output,
            sum,
            derivative,
        }
    }

    fn quant_hard(x: FlexTensor, p: QuantPrimitives<Self>, offset: f32) -> FlexTensor {
        let Some(dtype) = fused_dtype(&x, &p) else {
            return generic::hard::<Self>(x, p, offset);
        };
        let shape = x.shape();
        let mut out = empty(&shape, dtype);
        match dtype {
            DType::F64 => dispatch!(f64, x, p, |xs, scales, b, s| hard_f64(
                xs,
                scales,
                &b,
                &s,
                offset.into(),
                out.storage_mut::<f64>()
            )),
            _ => dispatch!(f32, x, p, |xs, scales, b, s| hard_f32(
                xs,
                scales,
                &b,
                &s,
                offset,
                out.storage_mut::<f32>()
            )),
        }
        out
    }
}
