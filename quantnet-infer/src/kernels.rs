//! The instruction-set kernels: the one module of the workspace that allows `unsafe`.
//!
//! Every quantized conv and linear layer is an implicit GEMM over blocks of [`ROWS`] output
//! pixels × [`LANES`] output channels. The kernels here compute one block's integer sums
//! (`int_block`: u8 activation codes × s8 weight levels → i32) or float sums (`f32_block`,
//! the full-precision layers and the engine's f32 mode), and the integer-threshold epilogue
//! (`threshold_block`). Each has a portable body and is compiled three times: for the
//! baseline CPU (scalar), with AVX2, and with AVX-512 (+VNNI for the integer sums); [`Isa`]
//! picks one at run time (`QUANTNET_ISA=scalar|avx2|avx512` forces one, so the tests run every
//! path on one machine).
//!
//! Integer sums are exact on every path, and the float bodies are the same Rust code on every
//! path (Rust never contracts `a·b + c` into a fused multiply-add), so all paths give the same
//! bits.
//!
//! `unsafe` appears for two reasons only, each block with its SAFETY note: calling a
//! `#[target_feature]` function after checking at run time that the CPU has the feature, and
//! loading SIMD vectors through pointers into slices whose bounds were checked first.
#![allow(unsafe_code)]

use crate::error::{Error, Result};

/// Output channels per block: one 512-bit vector of i32 sums.
pub const LANES: usize = 16;
/// Output pixels per block (the accumulators a kernel keeps in registers).
pub const ROWS: usize = 8;

/// An instruction-set path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, the integer reference (i32 multiply-adds).
    Scalar,
    /// AVX2: `vpmaddubsw` (u8×s8 pairs to i16) then `vpmaddwd` to i32; used for a layer only
    /// when no pair sum can saturate i16 (`2·max|y_w|·max a ≤ 32767`).
    Avx2,
    /// AVX-512 with VNNI: `vpdpbusd` (four u8×s8 products summed into each i32 lane).
    Avx512,
}

impl Isa {
    /// Every path, slowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// The name `QUANTNET_ISA` and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512-vnni",
        }
    }

    /// Whether this CPU runs the path (detected once).
    pub fn available(self) -> bool {
        static DETECTED: std::sync::OnceLock<[bool; 3]> = std::sync::OnceLock::new();
        DETECTED.get_or_init(|| Isa::ALL.map(Isa::detect))[self as usize]
    }

    fn detect(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest path this CPU runs.
    pub fn best() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.available())
            .unwrap_or(&Isa::Scalar)
    }

    /// The path `QUANTNET_ISA` names (`scalar`, `avx2`, `avx512`), or the best one when it is
    /// unset or empty.
    ///
    /// # Errors
    /// [`Error::Isa`] for another name, or a path this CPU does not run.
    pub fn from_env() -> Result<Isa> {
        match std::env::var("QUANTNET_ISA") {
            Ok(v) if !v.trim().is_empty() => v.trim().parse(),
            _ => Ok(Isa::best()),
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = Error;
    fn from_str(s: &str) -> Result<Isa> {
        let isa = match s {
            "scalar" => Isa::Scalar,
            "avx2" => Isa::Avx2,
            "avx512" | "avx512-vnni" | "vnni" => Isa::Avx512,
            other => {
                return Err(Error::Isa(format!(
                    "unknown instruction set `{other}` (QUANTNET_ISA): scalar, avx2 or avx512"
                )));
            }
        };
        if !isa.available() {
            return Err(Error::Isa(format!(
                "this CPU has no {} path (QUANTNET_ISA={s}); it runs {}",
                isa.name(),
                Isa::best().name()
            )));
        }
        Ok(isa)
    }
}

/// The operands of one block: `acc[r·16 + j] = Σ_g Σ_t acts[bases[r] + offs[g] + t] ·
/// w[(g·16 + j)·4 + t]` for rows `r < bases.len()` (at most [`ROWS`]), `t < 4`.
#[derive(Clone, Copy)]
pub(crate) struct IntBlock<'a> {
    /// Activation codes (NHWC, spatially padded): the layer's whole input.
    pub acts: &'a [u8],
    /// Where each output pixel's receptive field starts in `acts` (set per call).
    pub bases: &'a [usize],
    /// Where each group of 4 input channels of each tap lies, relative to a base.
    offs: &'a [usize],
    /// One block of 16 output channels of packed weights: `[G][16][4]` s8 levels.
    w: &'a [i8],
    /// The largest of `offs` (computed once by [`IntBlock::new`]).
    off_max: usize,
}

impl<'a> IntBlock<'a> {
    /// A block over `acts` with tap offsets `offs` and weights `w` (`offs.len()·64` bytes).
    ///
    /// # Panics
    /// If `w` does not hold `offs.len()·64` bytes.
    pub(crate) fn new(acts: &'a [u8], offs: &'a [usize], w: &'a [i8]) -> Self {
        assert_eq!(w.len(), offs.len() * LANES * 4, "weights per group");
        Self {
            acts,
            bases: &[],
            offs,
            w,
            off_max: offs.iter().max().copied().unwrap_or(0),
        }
    }

    /// This block for the output pixels at `bases`.
    pub(crate) fn at(&self, bases: &'a [usize]) -> Self {
        Self { bases, ..*self }
    }

    /// Panics unless every load the kernels make lies inside the slices (what makes the
    /// pointer loads below sound).
    fn check(&self) {
        assert!(self.bases.len() <= ROWS, "at most {ROWS} rows per block");
        let far = self.bases.iter().max().copied().unwrap_or(0) + self.off_max + 4;
        assert!(
            self.offs.is_empty() || self.bases.is_empty() || far <= self.acts.len(),
            "a receptive field past the activations"
        );
    }
}

/// The integer sums of one block into `acc` (`[ROWS][LANES]`, rows past `bases.len()` left as
/// they are), on `isa`. Exact: the same i32 values on every path.
pub(crate) fn int_block(isa: Isa, b: &IntBlock<'_>, acc: &mut [i32; ROWS * LANES]) {
    b.check();
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was chosen by `Isa`, whose constructors only return paths
        // `Isa::available` confirmed on this CPU (AVX-512 F/BW/VL/VNNI); `check` bounded every load.
        Isa::Avx512 if Isa::Avx512.available() => unsafe { x86::int_avx512(b, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 confirmed on this CPU by `Isa::available`; `check` bounded every load.
        Isa::Avx2 if Isa::Avx2.available() => unsafe { x86::int_avx2(b, acc) },
        _ => int_scalar(b, acc),
    }
}

/// The scalar integer path (the reference the others are tested against).
fn int_scalar(b: &IntBlock<'_>, acc: &mut [i32; ROWS * LANES]) {
    for (r, &base) in b.bases.iter().enumerate() {
        let out = &mut acc[r * LANES..(r + 1) * LANES];
        out.fill(0);
        for (g, &off) in b.offs.iter().enumerate() {
            let a = &b.acts[base + off..base + off + 4];
            let w = &b.w[g * LANES * 4..(g + 1) * LANES * 4];
            for (j, o) in out.iter_mut().enumerate() {
                let w = &w[j * 4..j * 4 + 4];
                *o += (0..4)
                    .map(|t| i32::from(a[t]) * i32::from(w[t]))
                    .sum::<i32>();
            }
        }
    }
}

/// The operands of one float block: `acc[r·16 + j] = Σ_k acts[bases[r] + offs[k]] ·
/// w[k·16 + j]`, summed in increasing `k`.
pub(crate) struct F32Block<'a> {
    /// Activations (NHWC, spatially padded).
    pub acts: &'a [f32],
    /// Where each output pixel's receptive field starts.
    pub bases: &'a [usize],
    /// Where each (tap, input channel) lies relative to a base.
    pub offs: &'a [usize],
    /// One block of 16 output channels: `[K][16]`.
    pub w: &'a [f32],
}

/// The float sums of one block (the same code compiled for each path: same bits).
pub(crate) fn f32_block(isa: Isa, b: &F32Block<'_>, acc: &mut [f32; ROWS * LANES]) {
    assert!(b.bases.len() <= ROWS && b.w.len() == b.offs.len() * LANES);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW/VL confirmed on this CPU by `Isa::available`; `w` length checked.
        Isa::Avx512 if Isa::Avx512.available() => unsafe { x86::f32_avx512(b, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 confirmed on this CPU by `Isa::available`.
        Isa::Avx2 if Isa::Avx2.available() => unsafe { x86::f32_avx2(b, acc) },
        _ => f32_body(b, acc),
    }
}

#[inline(always)]
fn f32_body(b: &F32Block<'_>, acc: &mut [f32; ROWS * LANES]) {
    match b.bases.len() {
        ROWS => f32_rows::<ROWS>(b, acc),
        _ => f32_rows::<1>(b, acc),
    }
}

#[inline(always)]
fn f32_rows<const R: usize>(b: &F32Block<'_>, acc: &mut [f32; ROWS * LANES]) {
    for r0 in (0..b.bases.len()).step_by(R) {
        let mut sums = [[0f32; LANES]; R];
        for (k, &off) in b.offs.iter().enumerate() {
            let w: &[f32; LANES] = b.w[k * LANES..(k + 1) * LANES].try_into().unwrap();
            for (r, s) in sums.iter_mut().enumerate() {
                let a = b.acts[b.bases[r0 + r] + off];
                for j in 0..LANES {
                    s[j] += a * w[j];
                }
            }
        }
        for (r, s) in sums.iter().enumerate() {
            acc[(r0 + r) * LANES..(r0 + r + 1) * LANES].copy_from_slice(s);
        }
    }
}

/// The integer-threshold epilogue of one block: for each row `r` and channel `j`,
/// `cnt = #{t : acc ≥ thr[t·16 + j]}`, `code = base[j] + (cnt ^ mask[j]) − mask[j]` (a mask of
/// −1 negates the count: channels whose epilogue decreases), written to `out[r·stride + j]`
/// for `j < width`.
pub(crate) struct Thresholds<'a> {
    /// `[n][16]` thresholds.
    pub thr: &'a [i32],
    /// Per channel: 0, or −1 to negate the count.
    pub mask: &'a [i32; LANES],
    /// Per channel: the code the count starts from.
    pub base: &'a [i32; LANES],
}

/// Applies [`Thresholds`] to `rows` rows of `acc`, writing codes at `out[r·stride..][..width]`.
pub(crate) fn threshold_block(
    isa: Isa,
    t: &Thresholds<'_>,
    acc: &[i32; ROWS * LANES],
    rows: usize,
    out: &mut [u8],
    stride: usize,
    width: usize,
) {
    assert!(rows <= ROWS && width <= LANES && t.thr.len().is_multiple_of(LANES));
    assert!(rows == 0 || (rows - 1) * stride + width <= out.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW/VL confirmed on this CPU by `Isa::available`.
        Isa::Avx512 if Isa::Avx512.available() => unsafe {
            x86::threshold_avx512(t, acc, rows, out, stride, width)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 confirmed on this CPU by `Isa::available`.
        Isa::Avx2 if Isa::Avx2.available() => unsafe {
            x86::threshold_avx2(t, acc, rows, out, stride, width)
        },
        _ => threshold_body(t, acc, rows, out, stride, width),
    }
}

#[inline(always)]
fn threshold_body(
    t: &Thresholds<'_>,
    acc: &[i32; ROWS * LANES],
    rows: usize,
    out: &mut [u8],
    stride: usize,
    width: usize,
) {
    for r in 0..rows {
        let z: &[i32; LANES] = acc[r * LANES..(r + 1) * LANES].try_into().unwrap();
        let mut cnt = [0i32; LANES];
        for thr in t.thr.chunks_exact(LANES) {
            for j in 0..LANES {
                cnt[j] += i32::from(z[j] >= thr[j]);
            }
        }
        let mut codes = [0u8; LANES];
        for j in 0..LANES {
            codes[j] = (t.base[j] + ((cnt[j] ^ t.mask[j]) - t.mask[j])) as u8;
        }
        out[r * stride..r * stride + width].copy_from_slice(&codes[..width]);
    }
}

/// The float epilogue of a layer, per output channel of one 16-channel block: `v = acc·scale
/// + bias`, batch norm in f64 (`(v − μ)·k + β`, as flex computes it), the residual added,
/// ReLU, then the activation quantizer's hard function `y = Σ_i s_i·[β_q·v ≥ b_i] − o`.
///
/// Each stage is optional; the arithmetic is the canonical code-domain forward
/// (docs/inference.md).
#[derive(Clone, Copy)]
pub(crate) struct FloatEpi<'a> {
    /// Per channel: the product of the weight and input scales (`None`: 1).
    pub scale: Option<&'a [f32; LANES]>,
    /// Per channel bias.
    pub bias: Option<&'a [f32; LANES]>,
    /// Per channel batch norm: mean, `γ/√(σ² + ε)`, shift.
    pub bn: Option<[&'a [f64; LANES]; 3]>,
    /// ReLU.
    pub relu: bool,
    /// The activation quantizer.
    pub quant: Option<QuantEpi<'a>>,
}

/// An activation quantizer's hard function in the epilogue.
#[derive(Clone, Copy)]
pub(crate) struct QuantEpi<'a> {
    /// `|β|`.
    pub beta: f32,
    /// `|α|`.
    pub alpha: f32,
    /// Thresholds `b_i`.
    pub thresholds: &'a [f32],
    /// Steps `s_i`.
    pub steps: &'a [f32],
    /// Offset `o`.
    pub offset: f32,
}

/// Where a float epilogue writes.
pub(crate) enum EpiOut<'a> {
    /// Level values `y` as bytes (integer levels in 0..=255).
    Codes(&'a mut [u8]),
    /// Values: `fl(α·y)` with a quantizer, `v` without.
    Floats(&'a mut [f32]),
}

/// One row of the float epilogue: `acc` (16 sums as f32) and the residual to `y` or `v`.
#[inline(always)]
pub(crate) fn epi_row(
    e: &FloatEpi<'_>,
    acc: &[f32; LANES],
    residual: Option<&[f32]>,
) -> [f32; LANES] {
    let mut v = *acc;
    if let Some(s) = e.scale {
        for j in 0..LANES {
            v[j] *= s[j];
        }
    }
    if let Some(b) = e.bias {
        for j in 0..LANES {
            v[j] += b[j];
        }
    }
    if let Some([m, k, sh]) = e.bn {
        for j in 0..LANES {
            v[j] = ((f64::from(v[j]) - m[j]) * k[j] + sh[j]) as f32;
        }
    }
    if let Some(r) = residual {
        for j in 0..LANES.min(r.len()) {
            v[j] += r[j];
        }
    }
    if e.relu {
        for x in &mut v {
            *x = if *x > 0.0 { *x } else { 0.0 };
        }
    }
    if let Some(q) = e.quant {
        let mut bv = [0f32; LANES];
        for j in 0..LANES {
            bv[j] = q.beta * v[j];
        }
        let mut y = [0f32; LANES];
        for (b, s) in q.thresholds.iter().zip(q.steps) {
            for j in 0..LANES {
                y[j] += if bv[j] >= *b { *s } else { 0.0 };
            }
        }
        for x in &mut y {
            *x -= q.offset;
        }
        v = y;
    }
    v
}

/// The float epilogue of `rows` rows: `acc` holds i32 sums (`int`) or f32 sums; `residual`
/// gives each row's shortcut values (`[rows][stride]`); outputs go to `out[r·stride..][..width]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn float_epi_block(
    isa: Isa,
    e: &FloatEpi<'_>,
    acc: &[f32; ROWS * LANES],
    rows: usize,
    residual: Option<&[f32]>,
    out: EpiOut<'_>,
    stride: usize,
    width: usize,
) {
    assert!(rows <= ROWS && width <= LANES);
    let need = if rows == 0 {
        0
    } else {
        (rows - 1) * stride + width
    };
    let out_len = match &out {
        EpiOut::Codes(o) => o.len(),
        EpiOut::Floats(o) => o.len(),
    };
    assert!(out_len >= need && residual.is_none_or(|r| r.len() >= need));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW/VL confirmed on this CPU by `Isa::available`; lengths checked.
        Isa::Avx512 if Isa::Avx512.available() => unsafe {
            x86::epi_avx512(e, acc, rows, residual, out, stride, width)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 confirmed on this CPU by `Isa::available`.
        Isa::Avx2 if Isa::Avx2.available() => unsafe {
            x86::epi_avx2(e, acc, rows, residual, out, stride, width)
        },
        _ => epi_body(e, acc, rows, residual, out, stride, width),
    }
}

#[inline(always)]
fn epi_body(
    e: &FloatEpi<'_>,
    acc: &[f32; ROWS * LANES],
    rows: usize,
    residual: Option<&[f32]>,
    mut out: EpiOut<'_>,
    stride: usize,
    width: usize,
) {
    for r in 0..rows {
        let a: &[f32; LANES] = acc[r * LANES..(r + 1) * LANES].try_into().unwrap();
        let res = residual.map(|s| &s[r * stride..r * stride + width]);
        let v = epi_row(e, a, res);
        match &mut out {
            EpiOut::Codes(o) => {
                for (o, y) in o[r * stride..r * stride + width].iter_mut().zip(&v) {
                    *o = *y as u8;
                }
            }
            EpiOut::Floats(o) => {
                let alpha = e.quant.map(|q| q.alpha);
                for (o, y) in o[r * stride..r * stride + width].iter_mut().zip(&v) {
                    *o = match alpha {
                        Some(a) => a * *y,
                        None => *y,
                    };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{EpiOut, F32Block, FloatEpi, IntBlock, LANES, ROWS, Thresholds};
    use std::arch::x86_64::*;

    /// The AVX-512 VNNI integer block: one `vpdpbusd` per (row, group of 4 channels).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL/VNNI, and `b` must have passed `IntBlock::check`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn int_avx512(b: &IntBlock<'_>, acc: &mut [i32; ROWS * LANES]) {
        let rows = b.bases.len();
        let mut r0 = 0;
        while r0 + ROWS <= rows {
            // SAFETY: the caller's contract (features, checked bounds).
            unsafe { rows_avx512::<ROWS>(b, r0, acc) };
            r0 += ROWS;
        }
        while r0 < rows {
            // SAFETY: as above.
            unsafe { rows_avx512::<1>(b, r0, acc) };
            r0 += 1;
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows_avx512<const R: usize>(
        b: &IntBlock<'_>,
        r0: usize,
        acc: &mut [i32; ROWS * LANES],
    ) {
        let mut sums = [_mm512_setzero_si512(); R];
        let a = b.acts.as_ptr();
        let w = b.w.as_ptr();
        let bases: [usize; R] = std::array::from_fn(|r| b.bases[r0 + r]);
        for (g, &off) in b.offs.iter().enumerate() {
            // SAFETY: `w` holds `offs.len()·64` bytes (checked), so group `g`'s 64 bytes are in
            // bounds; `base + off + 4 ≤ acts.len()` for every row (checked), so each 4-byte
            // read is in bounds. Unaligned loads are allowed by both intrinsics.
            unsafe {
                let wv = _mm512_loadu_si512(w.add(g * 64).cast());
                for r in 0..R {
                    let av =
                        _mm512_set1_epi32(a.add(bases[r] + off).cast::<i32>().read_unaligned());
                    sums[r] = _mm512_dpbusd_epi32(sums[r], av, wv);
                }
            }
        }
        for (r, s) in sums.iter().enumerate() {
            let at = (r0 + r) * LANES;
            // SAFETY: `acc` has ROWS·16 i32 and `r0 + r < bases.len() ≤ ROWS`.
            unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(at).cast(), *s) };
        }
    }

    /// The AVX2 integer block: `vpmaddubsw` (u8×s8 pairs → i16, which the caller guarantees
    /// cannot saturate) then `vpmaddwd` by 1 (→ i32), two 8-channel halves per group.
    ///
    /// # Safety
    /// The CPU must have AVX2, and `b` must have passed `IntBlock::check`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn int_avx2(b: &IntBlock<'_>, acc: &mut [i32; ROWS * LANES]) {
        let rows = b.bases.len();
        let mut r0 = 0;
        while r0 + 4 <= rows {
            // SAFETY: the caller's contract.
            unsafe { rows_avx2::<4>(b, r0, acc) };
            r0 += 4;
        }
        while r0 < rows {
            // SAFETY: the caller's contract.
            unsafe { rows_avx2::<1>(b, r0, acc) };
            r0 += 1;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn rows_avx2<const R: usize>(
        b: &IntBlock<'_>,
        r0: usize,
        acc: &mut [i32; ROWS * LANES],
    ) {
        let mut lo = [_mm256_setzero_si256(); R];
        let mut hi = [_mm256_setzero_si256(); R];
        let ones = _mm256_set1_epi16(1);
        let a = b.acts.as_ptr();
        let w = b.w.as_ptr();
        let bases: [usize; R] = std::array::from_fn(|r| b.bases[r0 + r]);
        for (g, &off) in b.offs.iter().enumerate() {
            // SAFETY: as in `rows_avx512`: group `g`'s 64 weight bytes and each row's 4 code
            // bytes were bounds-checked by `IntBlock::check`.
            unsafe {
                let w0 = _mm256_loadu_si256(w.add(g * 64).cast());
                let w1 = _mm256_loadu_si256(w.add(g * 64 + 32).cast());
                for r in 0..R {
                    let av =
                        _mm256_set1_epi32(a.add(bases[r] + off).cast::<i32>().read_unaligned());
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones);
                    lo[r] = _mm256_add_epi32(lo[r], p0);
                    hi[r] = _mm256_add_epi32(hi[r], p1);
                }
            }
        }
        for r in 0..R {
            let at = (r0 + r) * LANES;
            // SAFETY: `acc` has ROWS·16 i32 and `r0 + r < ROWS`.
            unsafe {
                _mm256_storeu_si256(acc.as_mut_ptr().add(at).cast(), lo[r]);
                _mm256_storeu_si256(acc.as_mut_ptr().add(at + 8).cast(), hi[r]);
            }
        }
    }

    /// The float block with AVX-512 intrinsics: per `k`, the 16 weights times each row's
    /// broadcast activation, multiplied then added (`vmulps`, `vaddps`: no fused multiply-add,
    /// as the portable body), in increasing `k`: the same bits.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL; `b.w` must hold `offs.len()·16` values (checked by the
    /// caller).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn f32_avx512(b: &F32Block<'_>, acc: &mut [f32; ROWS * LANES]) {
        let rows = b.bases.len();
        let mut r0 = 0;
        while r0 < rows {
            let take = if rows - r0 >= ROWS { ROWS } else { 1 };
            // SAFETY: the caller's contract.
            unsafe {
                if take == ROWS {
                    f32_rows_avx512::<ROWS>(b, r0, acc);
                } else {
                    f32_rows_avx512::<1>(b, r0, acc);
                }
            }
            r0 += take;
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn f32_rows_avx512<const R: usize>(
        b: &F32Block<'_>,
        r0: usize,
        acc: &mut [f32; ROWS * LANES],
    ) {
        let mut sums = [_mm512_setzero_ps(); R];
        let bases: [usize; R] = std::array::from_fn(|r| b.bases[r0 + r]);
        for (k, &off) in b.offs.iter().enumerate() {
            // SAFETY: `w` holds `offs.len()·16` floats (checked), so row `k` is in bounds.
            let wv = unsafe { _mm512_loadu_ps(b.w.as_ptr().add(k * LANES)) };
            for r in 0..R {
                // A checked load: the activation index is data-dependent.
                let a = _mm512_set1_ps(b.acts[bases[r] + off]);
                sums[r] = _mm512_add_ps(sums[r], _mm512_mul_ps(a, wv));
            }
        }
        for (r, s) in sums.iter().enumerate() {
            // SAFETY: `acc` has ROWS·16 floats and `r0 + r < ROWS`.
            unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add((r0 + r) * LANES), *s) };
        }
    }

    /// The float block compiled for AVX2 (the portable body).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn f32_avx2(b: &F32Block<'_>, acc: &mut [f32; ROWS * LANES]) {
        super::f32_body(b, acc);
    }

    /// The threshold epilogue with AVX-512 intrinsics (the portable body's integer operations:
    /// the same codes).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL; `out` must hold `(rows − 1)·stride + width` bytes and
    /// `t.thr` a multiple of 16 values (checked by the caller).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn threshold_avx512(
        t: &Thresholds<'_>,
        acc: &[i32; ROWS * LANES],
        rows: usize,
        out: &mut [u8],
        stride: usize,
        width: usize,
    ) {
        let mask: __mmask16 = if width >= 16 {
            0xFFFF
        } else {
            (1u16 << width) - 1
        };
        // SAFETY: table rows are 16 values (`thr` a multiple of 16, `mask`/`base` arrays),
        // `acc` holds ROWS·16 values with `r < rows ≤ ROWS`, and the byte stores are masked to
        // `width` at `r·stride`, inside the length the caller checked.
        unsafe {
            let sign = _mm512_loadu_si512(t.mask.as_ptr().cast());
            let base = _mm512_loadu_si512(t.base.as_ptr().cast());
            let one = _mm512_set1_epi32(1);
            for r in 0..rows {
                let z = _mm512_loadu_si512(acc.as_ptr().add(r * LANES).cast());
                let mut cnt = _mm512_setzero_si512();
                for thr in t.thr.chunks_exact(LANES) {
                    let th = _mm512_loadu_si512(thr.as_ptr().cast());
                    let ge = _mm512_cmpge_epi32_mask(z, th);
                    cnt = _mm512_mask_add_epi32(cnt, ge, cnt, one);
                }
                let code =
                    _mm512_add_epi32(base, _mm512_sub_epi32(_mm512_xor_si512(cnt, sign), sign));
                _mm512_mask_cvtepi32_storeu_epi8(
                    out.as_mut_ptr().add(r * stride).cast(),
                    mask,
                    code,
                );
            }
        }
    }

    /// The threshold epilogue compiled for AVX2 (the portable body).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn threshold_avx2(
        t: &Thresholds<'_>,
        acc: &[i32; ROWS * LANES],
        rows: usize,
        out: &mut [u8],
        stride: usize,
        width: usize,
    ) {
        super::threshold_body(t, acc, rows, out, stride, width);
    }

    /// The float epilogue with AVX-512 intrinsics: the portable body's operations one for one
    /// (`vmulps`/`vaddps`, f64 batch norm through `vcvtps2pd`/`vcvtpd2ps`, ReLU as
    /// `vmaxps(v, 0)`, which returns +0 for −0 and NaN as `v > 0 ? v : 0` does, the quantizer as
    /// masked adds in threshold order), so the same bits.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL; `out` (and `residual`) must hold
    /// `(rows − 1)·stride + width` values (checked by the caller).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn epi_avx512(
        e: &FloatEpi<'_>,
        acc: &[f32; ROWS * LANES],
        rows: usize,
        residual: Option<&[f32]>,
        out: EpiOut<'_>,
        stride: usize,
        width: usize,
    ) {
        let mask: __mmask16 = if width >= 16 {
            0xFFFF
        } else {
            (1u16 << width) - 1
        };
        // SAFETY (every load below): the per-channel tables are `[_; 16]` arrays, `acc` holds
        // ROWS·16 values and `r < rows ≤ ROWS`; residual and output accesses are masked to
        // `width` values at `r·stride`, inside the lengths the caller checked.
        unsafe {
            let scale = e.scale.map(|s| _mm512_loadu_ps(s.as_ptr()));
            let bias = e.bias.map(|s| _mm512_loadu_ps(s.as_ptr()));
            let bn = e.bn.map(|[m, k, sh]| {
                let pair = |t: &[f64; LANES]| {
                    (
                        _mm512_loadu_pd(t.as_ptr()),
                        _mm512_loadu_pd(t.as_ptr().add(8)),
                    )
                };
                (pair(m), pair(k), pair(sh))
            });
            let zero = _mm512_setzero_ps();
            for r in 0..rows {
                let mut v = _mm512_loadu_ps(acc.as_ptr().add(r * LANES));
                if let Some(s) = scale {
                    v = _mm512_mul_ps(v, s);
                }
                if let Some(b) = bias {
                    v = _mm512_add_ps(v, b);
                }
                if let Some(((m0, m1), (k0, k1), (s0, s1))) = bn {
                    let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
                    let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                        _mm512_castps_pd(v),
                    )));
                    let lo = _mm512_add_pd(_mm512_mul_pd(_mm512_sub_pd(lo, m0), k0), s0);
                    let hi = _mm512_add_pd(_mm512_mul_pd(_mm512_sub_pd(hi, m1), k1), s1);
                    let (lo, hi) = (_mm512_cvtpd_ps(lo), _mm512_cvtpd_ps(hi));
                    v = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                        _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                        _mm256_castps_pd(hi),
                    ));
                }
                if let Some(res) = residual {
                    let x = _mm512_maskz_loadu_ps(mask, res.as_ptr().add(r * stride));
                    v = _mm512_add_ps(v, x);
                }
                if e.relu {
                    v = _mm512_max_ps(v, zero);
                }
                if let Some(q) = e.quant {
                    let bv = _mm512_mul_ps(_mm512_set1_ps(q.beta), v);
                    let mut y = zero;
                    for (b, s) in q.thresholds.iter().zip(q.steps) {
                        let hit = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(bv, _mm512_set1_ps(*b));
                        y = _mm512_mask_add_ps(y, hit, y, _mm512_set1_ps(*s));
                    }
                    v = _mm512_sub_ps(y, _mm512_set1_ps(q.offset));
                }
                match &out {
                    EpiOut::Codes(o) => {
                        let codes = _mm512_cvttps_epi32(v);
                        let at = o.as_ptr().add(r * stride).cast_mut();
                        _mm512_mask_cvtepi32_storeu_epi8(at.cast(), mask, codes);
                    }
                    EpiOut::Floats(o) => {
                        let x = match e.quant {
                            Some(q) => _mm512_mul_ps(_mm512_set1_ps(q.alpha), v),
                            None => v,
                        };
                        let at = o.as_ptr().add(r * stride).cast_mut();
                        _mm512_mask_storeu_ps(at, mask, x);
                    }
                }
            }
        }
    }

    /// The float epilogue compiled for AVX2 (the portable body).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn epi_avx2(
        e: &FloatEpi<'_>,
        acc: &[f32; ROWS * LANES],
        rows: usize,
        residual: Option<&[f32]>,
        out: EpiOut<'_>,
        stride: usize,
        width: usize,
    ) {
        super::epi_body(e, acc, rows, residual, out, stride, width);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (SplitMix64) for the kernel tests.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    /// Every path gives the scalar sums bit for bit, for every row count and the extreme codes
    /// (255 × −128 with AVX2's pairs kept below saturation by a small weight range).
    #[test]
    fn every_path_gives_the_scalar_sums() {
        let mut next = rng(7);
        for case in 0..40 {
            let groups = 1 + (next() % 40) as usize;
            let rows = 1 + (next() % ROWS as u64) as usize;
            let acts: Vec<u8> = (0..groups * 4 + 64)
                .map(|_| {
                    if case % 5 == 0 {
                        255
                    } else {
                        (next() % 16) as u8
                    }
                })
                .collect();
            // Weights within ±64: 2·255·64 < 32767, so AVX2 may run too.
            let w: Vec<i8> = (0..groups * 64)
                .map(|_| ((next() % 129) as i32 - 64) as i8)
                .collect();
            let offs: Vec<usize> = (0..groups).map(|g| g * 4).collect();
            let bases: Vec<usize> = (0..rows).map(|_| (next() % 61) as usize).collect();
            let block = IntBlock {
                bases: &bases,
                ..IntBlock::new(&acts, &offs, &w)
            };
            let mut want = [0; ROWS * LANES];
            int_scalar(&block, &mut want);
            // A hand-written sum for one entry (row 0, channel 3): the layout's definition.
            let direct: i32 = (0..groups)
                .flat_map(|g| (0..4).map(move |t| (g, t)))
                .map(|(g, t)| {
                    i32::from(acts[bases[0] + offs[g] + t]) * i32::from(w[(g * 16 + 3) * 4 + t])
                })
                .sum();
            assert_eq!(want[3], direct);
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let mut got = [0; ROWS * LANES];
                int_block(isa, &block, &mut got);
                assert_eq!(
                    got[..rows * LANES],
                    want[..rows * LANES],
                    "{isa}, case {case}"
                );
            }
        }
    }

    #[test]
    fn thresholds_count_up_or_down() {
        // Channel 0 counts thresholds passed (base 0); channel 1 counts down from 3.
        let mut thr = vec![i32::MAX; 3 * LANES];
        (thr[0], thr[LANES], thr[2 * LANES]) = (-5, 0, 7);
        (thr[1], thr[LANES + 1], thr[2 * LANES + 1]) = (-5, 0, 7);
        let mut mask = [0; LANES];
        let mut base = [0; LANES];
        mask[1] = -1;
        base[1] = 3;
        let t = Thresholds {
            thr: &thr,
            mask: &mask,
            base: &base,
        };
        let mut acc = [0; ROWS * LANES];
        for (r, z) in [-6, -5, 0, 6, 7, 100].into_iter().enumerate() {
            acc[r * LANES] = z;
            acc[r * LANES + 1] = z;
        }
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let mut out = vec![0u8; 6 * 2];
            threshold_block(isa, &t, &acc, 6, &mut out, 2, 2);
            assert_eq!(out, [0, 3, 1, 2, 2, 1, 2, 1, 3, 0, 3, 0], "{isa}");
        }
    }
}
