//! A fused CPU kernel for Burn's flex backend.
//!
//! Flex tensors expose their memory, so the op runs as one parallel pass (rayon, chunks of
//! [`CHUNK`] elements) that reads `x` once and writes `y` (and `S`, `D` for training) once, as the
//! CubeCL kernel does on GPUs, instead of the `~5n` tensor passes of the generic body. The
//! arithmetic is the CubeCL kernel's: one `exp(−|z|)` per threshold gives both `σ` and `σ'`.
//! f32 and f64 tensors take this path; other dtypes (f16, bf16) take the generic body.

use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, TensorData, TensorMetadata};
use std::sync::OnceLock;

use burn_flex::{Flex, FlexTensor};
use macerator::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use super::{QuantBackend, QuantPrimitives, SoftArgs, SoftForward, SoftGrads, SoftNeeds, generic};

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

/// The instruction set the flex kernels run with: the widest this CPU has (macerator's runtime
/// detection, which Burn's flex uses too), or the one `QUANTNET_ISA` names (`scalar`, `sse4`,
/// `avx2`, `avx512`; the integer engine reads the same variable), so that tests run every path.
/// Every path does the same arithmetic in the same order (no fused multiply-adds), so the
/// results are the same bit for bit.
///
/// # Panics
/// When `QUANTNET_ISA` names an unknown path or one this CPU lacks.
pub(crate) fn arch() -> Arch {
    static ARCH: OnceLock<Arch> = OnceLock::new();
    *ARCH.get_or_init(|| match std::env::var("QUANTNET_ISA") {
        Ok(name) if !name.trim().is_empty() => {
            isa(name.trim()).unwrap_or_else(|err| panic!("QUANTNET_ISA={name}: {err}"))
        }
        _ => Arch::new(),
    })
}

/// The path named `name`, when this CPU runs it.
fn isa(name: &str) -> Result<Arch, String> {
    if name == "scalar" {
        return Ok(Arch::Scalar);
    }
    #[cfg(target_arch = "x86_64")]
    {
        // The x86-64 levels contain one another: a CPU runs every level up to its best.
        let level = |arch: Arch| match arch {
            Arch::Scalar => 0,
            Arch::V2 => 1,
            Arch::V3 => 2,
            Arch::V4 => 3,
            _ => 4,
        };
        let arch = match name {
            "sse4" => Arch::V2,
            "avx2" => Arch::V3,
            "avx512" | "avx512-vnni" | "vnni" => Arch::V4,
            other => {
                return Err(format!(
                    "unknown path `{other}`: scalar, sse4, avx2 or avx512"
                ));
            }
        };
        if level(arch) <= level(Arch::new()) {
            Ok(arch)
        } else {
            Err(format!("this CPU has no {name} path"))
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err(format!(
        "unknown path `{name}` on this architecture: scalar"
    ))
}

/// Every path this CPU runs, the scalar one first (for tests).
#[cfg(test)]
pub(crate) fn available_isas() -> Vec<(&'static str, Arch)> {
    ["scalar", "sse4", "avx2", "avx512"]
        .into_iter()
        .filter_map(|name| isa(name).ok().map(|arch| (name, arch)))
        .collect()
}

/// The f32 kernels, written so that the compiler vectorises them: elements in blocks of
/// [`fast::BLOCK`] held on the stack, thresholds in the outer loop and the block in the inner
/// one, and an inlined, branch-free `exp` (Cephes' polynomial, within 2 ulp of libm's on the
/// range used) instead of a libm call per (element, threshold). Each chunk runs through
/// [`arch`]'s dispatch: the same safe Rust compiled once per instruction set. f64 keeps the
/// scalar kernels above (the gradient checks' dtype).
mod fast {
    use super::CHUNK;
    use macerator::{Arch, Simd, WithSimd};
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
        // 2^n from the bits of `n + 127 + 2^23` (an integer below 2^23 in the mantissa's low
        // bits; the shift drops the exponent): a bit cast and a shift, where `as i32` is a
        // saturating conversion that compiles to scalar code with NaN and range checks and keeps
        // the loop from vectorising. `n` is an integer in [−126, 0] here.
        let scale = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
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

    /// One chunk of the soft forward, `y = α(S − o)`.
    struct Soft<'a> {
        x: &'a [f32],
        scales: [f32; 2],
        b: &'a [f32],
        s: &'a [f32],
        t_o: [f32; 2],
        y: &'a mut [f32],
    }

    impl WithSimd for Soft<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: Simd>(self) {
            let Self {
                x,
                scales: [alpha, beta],
                b,
                s,
                t_o: [t, o],
                y,
            } = self;
            let (mut bx, mut sum, mut d) = ([0.0; BLOCK], [0.0; BLOCK], [0.0; BLOCK]);
            for (ys, xs) in y.chunks_mut(BLOCK).zip(x.chunks(BLOCK)) {
                let k = xs.len();
                for (bx, &x) in bx.iter_mut().zip(xs) {
                    *bx = beta * x;
                }
                block_sums(&bx[..k], b, s, t, None, &mut sum[..k], &mut d[..k]);
                for (y, &sum) in ys.iter_mut().zip(&sum[..k]) {
                    *y = alpha * (sum - o);
                }
            }
        }
    }

    /// One chunk of the soft forward with the backward's state `S` and `D`.
    struct SoftState<'a> {
        x: &'a [f32],
        scales: [f32; 2],
        b: &'a [f32],
        s: &'a [f32],
        scalars: [f32; 4],
        y: &'a mut [f32],
        sums: &'a mut [f32],
        ds: &'a mut [f32],
    }

    impl WithSimd for SoftState<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: Simd>(self) {
            let Self {
                x,
                scales: [alpha, beta],
                b,
                s,
                scalars: [t, o, tg, gain],
                y,
                sums,
                ds,
            } = self;
            let mut bx = [0.0; BLOCK];
            let blocks = y
                .chunks_mut(BLOCK)
                .zip(sums.chunks_mut(BLOCK))
                .zip(ds.chunks_mut(BLOCK))
                .zip(x.chunks(BLOCK));
            for (((ys, ss), dss), xs) in blocks {
                for (bx, &x) in bx.iter_mut().zip(xs) {
                    *bx = beta * x;
                }
                block_sums(&bx[..xs.len()], b, s, t, Some(tg), ss, dss);
                for ((y, &sum), d) in ys.iter_mut().zip(ss.iter()).zip(dss.iter_mut()) {
                    *y = alpha * (sum - o);
                    *d *= gain;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn soft_f32(
        arch: Arch,
        x: &[f32],
        scales: [f32; 2],
        b: &[f32],
        s: &[f32],
        t: f32,
        o: f32,
        y: &mut [f32],
    ) {
        y.par_chunks_mut(CHUNK).enumerate().for_each(|(c, y)| {
            let x = &x[c * CHUNK..c * CHUNK + y.len()];
            arch.dispatch(Soft {
                x,
                scales,
                b,
                s,
                t_o: [t, o],
                y,
            });
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn soft_state_f32(
        arch: Arch,
        x: &[f32],
        scales: [f32; 2],
        b: &[f32],
        s: &[f32],
        scalars: [f32; 4],
        y: &mut [f32],
        sums: &mut [f32],
        ds: &mut [f32],
    ) {
        y.par_chunks_mut(CHUNK)
            .zip(sums.par_chunks_mut(CHUNK))
            .zip(ds.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, ((y, sums), ds))| {
                let x = &x[c * CHUNK..c * CHUNK + y.len()];
                arch.dispatch(SoftState {
                    x,
                    scales,
                    b,
                    s,
                    scalars,
                    y,
                    sums,
                    ds,
                });
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
    burn::tensor::Element
    + Default
    + std::ops::AddAssign
    + std::ops::Mul<Output = Self>
    + Send
    + Sync
    + Copy
{
    /// The values of a contiguous tensor of this dtype.
    fn slice(t: &FlexTensor) -> &[Self];
    /// `v` rounded to this type.
    fn from_f64(v: f64) -> Self;
    /// This value as an f64 (exact).
    fn to_f64(self) -> f64;
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
            #[inline(always)]
            fn to_f64(self) -> f64 {
                f64::from(self)
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

/// The soft quantizer's backward pass in one parallel pass over `g`, `x`, `S` and `D`:
/// `∂ℓ/∂x = g·D·α·β` when asked for, and the two sums `Σ g·(S − o)` (∂ℓ/∂α) and `Σ g·D·x`
/// (∂ℓ/∂β, before the factor `α`), each chunk's in f64 and the chunks' added in order, so the
/// result does not depend on the number of threads.
#[allow(clippy::too_many_arguments)]
fn backward_typed<E: Scalar>(
    grad: &FlexTensor,
    x: &FlexTensor,
    sum: &FlexTensor,
    derivative: &FlexTensor,
    [alpha, beta]: [E; 2],
    offset: E,
    needs: SoftNeeds,
) -> SoftGrads<Flex> {
    let contiguous = [grad, x, sum, derivative].map(FlexTensor::to_contiguous);
    let [g, x, s, d] = [0, 1, 2, 3].map(|i| E::slice(&contiguous[i]));
    let ab = alpha * beta;
    let o = offset.to_f64();
    let arch = arch();
    let chunk = |c: usize, out: Option<&mut [E]>| {
        let range = c * CHUNK..((c + 1) * CHUNK).min(g.len());
        arch.dispatch(BackwardChunk {
            g: &g[range.clone()],
            x: &x[range.clone()],
            s: &s[range.clone()],
            d: &d[range],
            ab,
            o,
            out,
        })
    };
    let chunks = g.len().div_ceil(CHUNK);
    let mut input = needs.input.then(|| vec![E::default(); g.len()]);
    let partial: Vec<[f64; 2]> = match input.as_mut() {
        Some(out) => out
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, out)| chunk(c, Some(out)))
            .collect(),
        None => (0..chunks)
            .into_par_iter()
            .map(|c| chunk(c, None))
            .collect(),
    };
    let [mut sa, mut sb] = [0.0f64; 2];
    for [a, b] in partial {
        sa += a;
        sb += b;
    }
    let scalar = |v: f64| from_values(vec![E::from_f64(v)], [1]);
    SoftGrads {
        input: input.map(|values| from_values(values, grad.shape())),
        alpha: needs.alpha.then(|| scalar(sa)),
        // α·Σ g·D·x, the product in the tensor's dtype as the generic body forms it.
        beta: needs
            .beta
            .then(|| from_values(vec![E::from_f64(sb) * alpha], [1])),
    }
}

/// One chunk of [`backward_typed`]: its share of `∂ℓ/∂x` into `out` when given, and its two sums.
struct BackwardChunk<'a, E> {
    g: &'a [E],
    x: &'a [E],
    s: &'a [E],
    d: &'a [E],
    ab: E,
    o: f64,
    out: Option<&'a mut [E]>,
}

impl<E: Scalar> WithSimd for BackwardChunk<'_, E> {
    type Output = [f64; 2];

    #[inline(always)]
    fn with_simd<S: Simd>(self) -> [f64; 2] {
        let Self {
            g,
            x,
            s,
            d,
            ab,
            o,
            out,
        } = self;
        if let Some(out) = out {
            for ((out, &g), &d) in out.iter_mut().zip(g).zip(d) {
                *out = g * d * ab;
            }
        }
        // Eight accumulators, so that the loop vectorises (f64 addition is not reassociated).
        let (mut sa, mut sb) = ([0.0f64; 8], [0.0f64; 8]);
        let whole = g.len() / 8 * 8;
        for i in (0..whole).step_by(8) {
            for l in 0..8 {
                let gi = g[i + l].to_f64();
                sa[l] += gi * (s[i + l].to_f64() - o);
                sb[l] += gi * d[i + l].to_f64() * x[i + l].to_f64();
            }
        }
        for i in whole..g.len() {
            let gi = g[i].to_f64();
            sa[0] += gi * (s[i].to_f64() - o);
            sb[0] += gi * d[i].to_f64() * x[i].to_f64();
        }
        [sa.iter().sum(), sb.iter().sum()]
    }
}

/// A zero-filled tensor's values (`calloc`'d: the pages are mapped when the kernel writes
/// them). `FlexTensor::empty` allocates bytes and then copies them into an aligned buffer, a
/// second pass over fresh memory.
fn zeroed<E: Scalar>(shape: &Shape) -> Vec<E> {
    vec![E::default(); shape.num_elements()]
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
    fn quant_backward(
        grad: FlexTensor,
        x: FlexTensor,
        sum: FlexTensor,
        derivative: FlexTensor,
        p: QuantPrimitives<Self>,
        args: SoftArgs,
        needs: SoftNeeds,
    ) -> SoftGrads<Self> {
        let scalar = |t: &FlexTensor| t.to_contiguous();
        match kernel_dtype(&[&grad, &x, &sum, &derivative, &p.alpha, &p.beta]) {
            Some(DType::F64) => {
                let [a, b] = [&p.alpha, &p.beta].map(|t| f64::slice(&scalar(t))[0]);
                let o = f64::from(args.offset);
                backward_typed::<f64>(&grad, &x, &sum, &derivative, [a, b], o, needs)
            }
            Some(_) => {
                let [a, b] = [&p.alpha, &p.beta].map(|t| f32::slice(&scalar(t))[0]);
                backward_typed::<f32>(&grad, &x, &sum, &derivative, [a, b], args.offset, needs)
            }
            None => generic::backward::<Self>(grad, x, sum, derivative, p, args, needs),
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
        match dtype {
            DType::F64 => dispatch!(f64, x, p, |xs, scales, b, s| {
                let mut out = zeroed(&shape);
                let [t, o] = [args.temperature, args.offset].map(f64::from);
                soft_f64(xs, scales, &b, &s, t, o, &mut out);
                from_values(out, shape)
            }),
            _ => dispatch!(f32, x, p, |xs, scales, b, s| {
                let mut out = zeroed(&shape);
                soft_f32(
                    arch(),
                    xs,
                    scales,
                    &b,
                    &s,
                    args.temperature,
                    args.offset,
                    &mut out,
                );
                from_values(out, shape)
            }),
        }
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
        let SoftArgs {
            temperature: t,
            offset: o,
            grad_temperature: tg,
            grad_scale: gain,
        } = args;
        fn state<E: Scalar>(
            output: Vec<E>,
            sum: Vec<E>,
            derivative: Vec<E>,
            shape: &Shape,
        ) -> SoftForward<Flex> {
            SoftForward {
                output: from_values(output, shape.clone()),
                sum: from_values(sum, shape.clone()),
                derivative: from_values(derivative, shape.clone()),
            }
        }
        match dtype {
            DType::F64 => dispatch!(f64, x, p, |xs, scales, b, s| {
                let [mut y, mut sums, mut ds] = [(); 3].map(|()| zeroed(&shape));
                let scalars = [t, o, tg, gain].map(f64::from);
                soft_state_f64(xs, scales, &b, &s, scalars, &mut y, &mut sums, &mut ds);
                state(y, sums, ds, &shape)
            }),
            _ => dispatch!(f32, x, p, |xs, scales, b, s| {
                let [mut y, mut sums, mut ds] = [(); 3].map(|()| zeroed(&shape));
                let scalars = [t, o, tg, gain];
                soft_state_f32(
                    arch(),
                    xs,
                    scales,
                    &b,
                    &s,
                    scalars,
                    &mut y,
                    &mut sums,
                    &mut ds,
                );
                state(y, sums, ds, &shape)
            }),
        }
    }

    fn quant_hard(x: FlexTensor, p: QuantPrimitives<Self>, offset: f32) -> FlexTensor {
        let Some(dtype) = fused_dtype(&x, &p) else {
            return generic::hard::<Self>(x, p, offset);
        };
        let shape = x.shape();
        match dtype {
            DType::F64 => dispatch!(f64, x, p, |xs, scales, b, s| {
                let mut out = zeroed(&shape);
                hard_f64(xs, scales, &b, &s, offset.into(), &mut out);
                from_values(out, shape)
            }),
            _ => dispatch!(f32, x, p, |xs, scales, b, s| {
                let mut out = zeroed(&shape);
                hard_f32(xs, scales, &b, &s, offset, &mut out);
                from_values(out, shape)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs that cover the saturated tails, the thresholds themselves and an odd length (a
    /// partial block and a partial chunk).
    fn inputs(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let u = ((i as u64 * 2_654_435_761) % 10_007) as f32 / 10_007.0;
                if i % 97 == 0 { 0.5 } else { 4.0 * u - 2.0 }
            })
            .collect()
    }

    /// Every instruction-set path computes the soft forward, its state and the backward's sums
    /// bit for bit as the scalar path does (same operations in the same order, no FMA).
    #[test]
    fn every_instruction_set_path_gives_the_scalar_paths_bits() {
        let len = 2 * CHUNK + 1001;
        let x = inputs(len);
        let g: Vec<f32> = inputs(len).iter().map(|v| v * 0.37 + 0.1).collect();
        // Ternary thresholds and 3pm4's six, at a low and a high temperature; `tg ≠ t` once.
        let cases: [(&[f32], &[f32], [f32; 4]); 3] = [
            (&[-0.5, 0.5], &[1.0, 1.0], [5.0, 1.0, 5.0, 5.0]),
            (
                &[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5],
                &[1.0; 6],
                [200.0, 3.0, 200.0, 200.0],
            ),
            (&[-0.5, 0.5], &[1.0, 1.0], [30.0, 1.0, 1.0, 30.0]),
        ];
        let run = |arch: Arch, (b, s, scalars): (&[f32], &[f32], [f32; 4])| {
            let [mut y, mut sums, mut ds, mut y2] = [(); 4].map(|()| vec![0.0f32; len]);
            let scales = [0.8, 1.25];
            soft_state_f32(arch, &x, scales, b, s, scalars, &mut y, &mut sums, &mut ds);
            soft_f32(arch, &x, scales, b, s, scalars[0], scalars[1], &mut y2);
            let mut dx = vec![0.0f32; len];
            let chunk = BackwardChunk {
                g: &g,
                x: &x,
                s: &sums,
                d: &ds,
                ab: 1.0,
                o: f64::from(scalars[1]),
                out: Some(&mut dx),
            };
            let reduced = arch.dispatch(chunk);
            (y, y2, sums, ds, dx, reduced)
        };
        let isas = available_isas();
        assert_eq!(isas[0].0, "scalar");
        for case in cases {
            let reference = run(Arch::Scalar, case);
            // The output-only forward is the forward with state's output.
            assert_eq!(reference.0, reference.1);
            for &(name, arch) in &isas[1..] {
                assert!(run(arch, case) == reference, "{name} differs from scalar");
            }
        }
        // This machine kind has AVX-512: the test must have exercised the wide paths too.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            assert_eq!(
                isas.len(),
                4,
                "{:?}",
                isas.iter().map(|i| i.0).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn unknown_or_missing_paths_are_refused_by_name() {
        assert!(isa("scalar").is_ok());
        let err = isa("neon9").unwrap_err();
        assert!(err.contains("unknown path `neon9`"), "{err}");
    }
}
