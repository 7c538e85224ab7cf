//! The instruction-set kernels: the one module of the workspace that allows `unsafe`.
//!
//! Every quantized conv and linear layer is an implicit GEMM. For the integer layers a tile of
//! output pixels' receptive fields is packed into a `Panel` (one stream read at constant
//! offsets), and `int_panel` multiplies it with one or more blocks of [`LANES`] output channels
//! (u8 activation codes × s8 weight levels → i32), keeping rows × blocks sums in registers.
//! `f32_block` computes float sums of [`ROWS`] pixels (the full-precision layers and the
//! engine's f32 mode), and `threshold_block` / `float_epi_block` are the epilogues. Each has a
//! portable body and is compiled three times: for the baseline CPU (scalar), with AVX2, and
//! with AVX-512 (+VNNI for the integer sums); [`Isa`] picks one at run time
//! (`QUANTNET_ISA=scalar|avx2|avx512` forces one, so the tests run every path on one machine).
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

/// Rows of the largest packed tile (a panel).
pub(crate) const PANEL_ROWS: usize = 24;

/// The tile shape for a layer with `blocks` 16-channel output blocks and `pixels` output
/// pixels: `(rows, blocks per kernel call)`. About 24 accumulators (rows × blocks) stay in
/// registers; wide layers share each broadcast code among 4 blocks, narrow ones each weight
/// vector among 24 rows, and a layer with fewer than 6 pixels (a batch-1 linear layer) runs
/// one row at a time.
pub(crate) fn tile_shape(blocks: usize, pixels: usize) -> (usize, usize) {
    match (pixels, blocks) {
        (0..6, _) => (1, 4),
        (_, 1) => (PANEL_ROWS, 1),
        (_, 2 | 3) => (12, 2),
        _ => (6, 4),
    }
}

/// The rows of a tile a stride-1 conv reads in place (consecutive pixels of one output row,
/// `ow` wide): 16 for one block of output channels, 8 for more (two blocks per call); `None`
/// when `ow` is no multiple of them. Reading in place beats packing even where a panel would be
/// shared by four blocks (measured on ResNet-20's 64-channel convs).
pub(crate) fn direct_rows(blocks: usize, ow: usize) -> Option<usize> {
    let rows: &[usize] = if blocks == 1 { &[16, 8] } else { &[8] };
    rows.iter().copied().find(|r| ow.is_multiple_of(*r))
}

/// The bytes of one panel chunk for a layer with `cs` bytes per input pixel: the largest of
/// 64, 32, 16, 8, 4 that divides it (the engine's maps have multiples of 16).
///
/// # Panics
/// Unless `cs` is a multiple of 4 (the weight packing's groups).
pub(crate) fn chunk_bytes(cs: usize) -> usize {
    assert!(cs.is_multiple_of(4), "a multiple of 4 bytes per pixel");
    [64, 32, 16, 8, 4]
        .into_iter()
        .find(|k| cs.is_multiple_of(*k))
        .unwrap_or(4)
}

/// Activation codes of up to `rows` output pixels packed for the integer kernels:
/// `data[(j·rows + r)·k + i]` is byte `i` of chunk `j` of row `r`'s receptive field, where chunk
/// `j` is `k` consecutive input channels of one tap. Packing turns the rows' scattered
/// receptive fields (any stride, padding, image boundary) into one stream read at constant
/// offsets.
pub(crate) struct Panel {
    data: Vec<u8>,
    rows: usize,
    k: usize,
    /// Where each chunk starts: `j·rows·k`.
    starts: Vec<usize>,
}

impl Panel {
    /// An empty panel of `rows` rows of `chunks` chunks of `k` bytes (k: 4, 8, 16, 32 or 64).
    pub(crate) fn new(rows: usize, k: usize, chunks: usize) -> Self {
        assert!(matches!(k, 4 | 8 | 16 | 32 | 64) && (1..=PANEL_ROWS).contains(&rows));
        Self {
            data: vec![0; chunks * rows * k],
            rows,
            k,
            starts: (0..chunks).map(|j| j * rows * k).collect(),
        }
    }

    /// The panel as the kernels read it.
    pub(crate) fn tile(&self) -> Tile<'_> {
        Tile::new(&self.data, &self.starts, self.rows, self.k)
    }

    /// Packs the receptive fields starting at `bases` (at most `rows`; rows past them keep
    /// old codes, whose sums the caller ignores), chunk `j` at `acts[base + offs[j]..][..k]`.
    ///
    /// # Panics
    /// If a chunk lies outside `acts`, or there are more bases than rows or offsets than chunks.
    pub(crate) fn pack(&mut self, acts: &[u8], bases: &[usize], offs: &[usize]) {
        assert!(bases.len() <= self.rows && offs.len() == self.starts.len());
        match self.k {
            4 => self.pack_k::<4>(acts, bases, offs),
            8 => self.pack_k::<8>(acts, bases, offs),
            16 => self.pack_k::<16>(acts, bases, offs),
            32 => self.pack_k::<32>(acts, bases, offs),
            _ => self.pack_k::<64>(acts, bases, offs),
        }
    }

    fn pack_k<const K: usize>(&mut self, acts: &[u8], bases: &[usize], offs: &[usize]) {
        for (chunk, &off) in self.data.chunks_exact_mut(self.rows * K).zip(offs) {
            for (dst, &base) in chunk.chunks_exact_mut(K).zip(bases) {
                let src: &[u8; K] = acts[base + off..base + off + K].try_into().unwrap();
                dst.copy_from_slice(src);
            }
        }
    }
}

/// Where an integer kernel reads its codes: `rows` rows of `starts.len()` chunks of `k` bytes,
/// row `r` of chunk `j` at `data[base + starts[j] + r·k..][..k]`. A packed [`Panel`], or (a
/// stride-1 conv whose pixels hold exactly `k` bytes) the layer's input itself: `rows`
/// consecutive output pixels of one output row, read where they lie.
#[derive(Clone, Copy)]
pub(crate) struct Tile<'a> {
    data: &'a [u8],
    base: usize,
    starts: &'a [usize],
    /// The largest of `starts` (what bounds every read, with `base`, `rows` and `k`).
    far: usize,
    rows: usize,
    k: usize,
}

impl<'a> Tile<'a> {
    /// Chunks at `starts` (from `base` 0) of `rows` rows `k` bytes apart (k: 4 to 64).
    pub(crate) fn new(data: &'a [u8], starts: &'a [usize], rows: usize, k: usize) -> Self {
        assert!(matches!(k, 4 | 8 | 16 | 32 | 64) && (1..=PANEL_ROWS).contains(&rows));
        Self {
            data,
            base: 0,
            starts,
            far: starts.iter().max().copied().unwrap_or(0),
            rows,
            k,
        }
    }

    /// This tile from `base`.
    pub(crate) fn at(self, base: usize) -> Self {
        Self { base, ..self }
    }

    fn chunks(&self) -> usize {
        self.starts.len()
    }

    /// Row `r` of chunk `j`.
    fn codes(&self, j: usize, r: usize) -> &[u8] {
        &self.data[self.base + self.starts[j] + r * self.k..][..self.k]
    }
}

/// The integer sums of a tile of codes against `blocks` consecutive 16-channel blocks of
/// weights (`w`: `[blocks][chunks·k/4][16][4]` s8 levels, each block `chunks·k·16` bytes):
/// `acc[(b·rows + r)·16 + j] = Σ_g Σ_t tile(r, g, t) · w[b][g][j][t]`, for every tile row.
/// Exact: the same i32 values on every path.
///
/// # Panics
/// If `w` or `acc` is too short, or the tile reaches past its data.
pub(crate) fn int_panel(isa: Isa, p: &Tile<'_>, w: &[i8], blocks: usize, acc: &mut [i32]) {
    let per_block = p.chunks() * p.k * LANES;
    assert!(w.len() >= blocks * per_block, "weights for {blocks} blocks");
    assert!(
        acc.len() >= blocks * p.rows * LANES,
        "sums for {blocks} blocks"
    );
    assert!(
        p.chunks() == 0 || p.base + p.far + p.rows * p.k <= p.data.len(),
        "a tile past its codes"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was chosen by `Isa`, whose constructors only return paths
        // `Isa::available` confirmed on this CPU (AVX-512 F/BW/VL/VNNI); the lengths of `w` and
        // `acc`, and the farthest code the tile reads, were checked above.
        Isa::Avx512 if Isa::Avx512.available() => unsafe { x86::panel_avx512(p, w, blocks, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 confirmed on this CPU by `Isa::available`; lengths checked as above.
        Isa::Avx2 if Isa::Avx2.available() => unsafe { x86::panel_avx2(p, w, blocks, acc) },
        _ => panel_scalar(p, w, blocks, acc),
    }
}

/// The scalar integer path (the reference the others are tested against).
fn panel_scalar(p: &Tile<'_>, w: &[i8], blocks: usize, acc: &mut [i32]) {
    let per_block = p.chunks() * p.k * LANES;
    for b in 0..blocks {
        let wb = &w[b * per_block..(b + 1) * per_block];
        for r in 0..p.rows {
            let out = &mut acc[(b * p.rows + r) * LANES..][..LANES];
            out.fill(0);
            for j in 0..p.chunks() {
                let codes = p.codes(j, r);
                for (c4, a) in codes.chunks_exact(4).enumerate() {
                    let wg = &wb[(j * p.k / 4 + c4) * LANES * 4..][..LANES * 4];
                    for (o, wj) in out.iter_mut().zip(wg.chunks_exact(4)) {
                        *o += (0..4)
                            .map(|t| i32::from(a[t]) * i32::from(wj[t]))
                            .sum::<i32>();
                    }
                }
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

/// The float sums of one block (the same code compiled for each path: same bits): the layers
/// with fewer than 4 blocks of output channels, where packing a panel costs more than it saves.
pub(crate) fn f32_block(isa: Isa, b: &F32Block<'_>, acc: &mut [f32; ROWS * LANES]) {
    assert!(b.bases.len() <= ROWS && b.w.len() == b.offs.len() * LANES);
    let far = b.bases.iter().max().zip(b.offs.iter().max());
    assert!(
        far.is_none_or(|(base, off)| base + off < b.acts.len()),
        "a receptive field past the activations"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW/VL confirmed on this CPU by `Isa::available`; `w`'s length and
        // every activation index checked above.
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

/// A stride-1 float conv with the output pixels in the vector lanes (the stems: 1–4 input
/// channels, where a pixel's receptive field is too short to fill the lanes with channels).
/// One image's input is planar and padded, `planes[c][y][x]`; `w` is one 16-channel block
/// `[k][16]` with `k` in the layer's order (tap-major, then input channel).
pub(crate) struct PlaneConv<'a> {
    /// `[cin][hp][wp]`.
    pub planes: &'a [f32],
    /// Padded height and width.
    pub hp: usize,
    /// Padded width.
    pub wp: usize,
    /// Input channels.
    pub cin: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// One block's weights.
    pub w: &'a [f32],
    /// The block's output channels that exist (1–16): with 8 or fewer, 8 are computed.
    pub width: usize,
}

/// The float sums of the `n ≤ 16` output pixels `(oy, ox0..ox0 + n)` of a [`PlaneConv`], as
/// `out[px·16 + j]` (the layout the epilogue reads), on AVX-512 (the caller runs the row kernel
/// elsewhere): each output's products added in increasing `k`, the same bits as `f32_block`.
///
/// # Panics
/// Unless this CPU has AVX-512, or if the pixels' receptive fields or the weights lie outside
/// the slices.
pub(crate) fn plane_row(p: &PlaneConv<'_>, oy: usize, ox0: usize, n: usize, out: &mut [f32; 256]) {
    assert!(
        Isa::Avx512.available(),
        "the planar kernel runs on AVX-512 only"
    );
    assert!((1..=LANES).contains(&n) && p.w.len() == p.kh * p.kw * p.cin * LANES);
    let last = ((p.cin - 1) * p.hp + oy + p.kh - 1) * p.wp + ox0 + p.kw - 1 + n;
    assert!(
        p.cin > 0 && oy + p.kh <= p.hp && last <= p.planes.len(),
        "a field past the planes"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 F/BW/VL confirmed on this CPU just above; every load was bounded just
    // above (the farthest one ends at `last`), and the weights hold `k·16` values.
    unsafe {
        if p.width <= 8 {
            x86::plane_row_avx512::<8>(p, oy, ox0, n, out);
        } else {
            x86::plane_row_avx512::<16>(p, oy, ox0, n, out);
        }
    }
}

/// The register tile an AVX-512 kernel call uses for a panel of `rows` rows with `left` channel
/// blocks still to do: `(rows, blocks)`, or `None` for a panel shape no tile is compiled for
/// (those run the portable body).
fn register_tile(rows: usize, left: usize) -> Option<(usize, usize)> {
    let blocks = match (rows, left) {
        (24 | 16, _) | (12 | 8 | 6 | 1, 1) => 1,
        (12 | 8, _) | (6 | 1, 2 | 3) => 2,
        (6 | 1, _) => 4,
        _ => return None,
    };
    Some((rows, blocks))
}

/// Float activations of up to `rows` output pixels packed for the float kernels:
/// `data[k·rows + r]` is value `k` of row `r`'s receptive field, `acts[base_r + offs[k]]`
/// (the full-precision layers and the engine's f32 mode).
pub(crate) struct FloatPanel {
    data: Vec<f32>,
    rows: usize,
    k: usize,
}

impl FloatPanel {
    /// An empty panel of `rows` rows of `k` values.
    pub(crate) fn new(rows: usize, k: usize) -> Self {
        assert!((1..=PANEL_ROWS).contains(&rows));
        Self {
            data: vec![0.0; rows * k],
            rows,
            k,
        }
    }

    /// Packs the receptive fields starting at `bases` (at most `rows`; rows past them keep old
    /// values, whose sums the caller ignores).
    ///
    /// # Panics
    /// If a value lies outside `acts`, or there are more bases than rows or offsets than `k`.
    pub(crate) fn pack(&mut self, acts: &[f32], bases: &[usize], offs: &[usize]) {
        assert!(bases.len() <= self.rows && offs.len() == self.k);
        for (dst, &off) in self.data.chunks_exact_mut(self.rows).zip(offs) {
            for (d, &base) in dst.iter_mut().zip(bases) {
                *d = acts[base + off];
            }
        }
    }
}

/// The float sums of a packed panel against `blocks` consecutive 16-channel blocks of weights
/// (`w`: `[blocks][k][16]`): `acc[(b·rows + r)·16 + j] = Σ_k panel(r, k)·w[b][k][j]`, each
/// product rounded then added in increasing `k` (no fused multiply-add): the same bits on every
/// path.
///
/// # Panics
/// If `w` or `acc` is too short.
pub(crate) fn f32_panel(isa: Isa, p: &FloatPanel, w: &[f32], blocks: usize, acc: &mut [f32]) {
    assert!(
        w.len() >= blocks * p.k * LANES,
        "weights for {blocks} blocks"
    );
    assert!(
        acc.len() >= blocks * p.rows * LANES,
        "sums for {blocks} blocks"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW/VL confirmed on this CPU by `Isa::available`; the lengths of `w`
        // and `acc` were checked above and the panel holds `rows·k` values by construction.
        Isa::Avx512 if Isa::Avx512.available() => unsafe {
            x86::f32_panel_avx512(p, w, blocks, acc)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 confirmed on this CPU by `Isa::available`.
        Isa::Avx2 if Isa::Avx2.available() => unsafe { x86::f32_panel_avx2(p, w, blocks, acc) },
        _ => f32_panel_body(p, w, blocks, acc),
    }
}

/// The portable float panel (the scalar path, and AVX2's compile of it).
#[inline(always)]
fn f32_panel_body(p: &FloatPanel, w: &[f32], blocks: usize, acc: &mut [f32]) {
    let per_block = p.k * LANES;
    for b in 0..blocks {
        let wb = &w[b * per_block..(b + 1) * per_block];
        for r in 0..p.rows {
            let mut sums = [0f32; LANES];
            for (a, wk) in p.data[r..]
                .iter()
                .step_by(p.rows)
                .zip(wb.chunks_exact(LANES))
            {
                for (s, x) in sums.iter_mut().zip(wk) {
                    *s += a * x;
                }
            }
            acc[(b * p.rows + r) * LANES..][..LANES].copy_from_slice(&sums);
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

/// The order key of a float: `a < b ⇔ key(a) < key(b)` for non-NaN values (−0 just below +0).
pub(crate) fn float_key(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    b ^ ((b >> 31) & 0x7FFF_FFFF)
}

/// [`threshold_block`] on the order keys ([`float_key`]) of f32 sums: a float layer's epilogue
/// as thresholds. AVX-512 forms the keys in registers; the other paths copy them first.
pub(crate) fn key_threshold_block(
    isa: Isa,
    t: &Thresholds<'_>,
    acc: &[f32; ROWS * LANES],
    rows: usize,
    out: &mut [u8],
    stride: usize,
    width: usize,
) {
    assert!(rows <= ROWS && width <= LANES && t.thr.len().is_multiple_of(LANES));
    assert!(rows == 0 || (rows - 1) * stride + width <= out.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW/VL confirmed on this CPU by `Isa::available`; `acc` holds
        // ROWS·16 values of 4 bytes, read as their bits.
        Isa::Avx512 if Isa::Avx512.available() => unsafe {
            x86::threshold_avx512_at(t, acc.as_ptr().cast(), true, rows, out, stride, width)
        },
        _ => threshold_block(isa, t, &acc.map(float_key), rows, out, stride, width),
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

/// [`Thresholds`] for a residual layer whose shortcut is codes: one set of `n` thresholds per
/// shortcut code `y < codes`, `thr[(y·n + t)·16 + j]`, picked per lane by the shortcut's code at
/// that lane. One mask and base serve every set: whether the epilogue rises or falls with `z`
/// does not depend on what is added to it.
pub(crate) struct CodedThresholds<'a> {
    /// `[codes][n][16]` thresholds.
    pub thr: &'a [i32],
    /// Shortcut codes `0..codes`.
    pub codes: usize,
    /// Per channel: 0, or −1 to negate the count.
    pub mask: &'a [i32; LANES],
    /// Per channel: the code the count starts from.
    pub base: &'a [i32; LANES],
}

/// Applies [`CodedThresholds`] to `rows` rows of `acc` whose shortcut codes are at
/// `shortcut[r·stride..][..width]`, writing codes at `out[r·stride..][..width]`. Shortcut codes
/// must be below `codes` (a quantizer's codes are): past it the codes written are unspecified.
///
/// # Panics
/// If a slice is too short.
#[allow(clippy::too_many_arguments)]
pub(crate) fn coded_threshold_block(
    isa: Isa,
    t: &CodedThresholds<'_>,
    acc: &[i32; ROWS * LANES],
    rows: usize,
    shortcut: &[u8],
    out: &mut [u8],
    stride: usize,
    width: usize,
) {
    assert!(rows <= ROWS && width <= LANES && t.codes >= 1);
    assert!(t.thr.len().is_multiple_of(t.codes * LANES));
    let need = if rows == 0 {
        0
    } else {
        (rows - 1) * stride + width
    };
    assert!(out.len() >= need && shortcut.len() >= need);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW/VL confirmed on this CPU by `Isa::available`; lengths checked
        // above; the lane selection reads 4 sets at most.
        Isa::Avx512 if Isa::Avx512.available() && t.codes <= 4 => unsafe {
            x86::coded_threshold_avx512(t, acc, rows, shortcut, out, stride, width)
        },
        _ => coded_threshold_body(t, acc, rows, shortcut, out, stride, width),
    }
}

fn coded_threshold_body(
    t: &CodedThresholds<'_>,
    acc: &[i32; ROWS * LANES],
    rows: usize,
    shortcut: &[u8],
    out: &mut [u8],
    stride: usize,
    width: usize,
) {
    let n = t.thr.len() / (t.codes * LANES);
    for r in 0..rows {
        for j in 0..width {
            let y = usize::from(shortcut[r * stride + j]).min(t.codes - 1);
            let z = acc[r * LANES + j];
            let cnt = (0..n)
                .filter(|&l| z >= t.thr[(y * n + l) * LANES + j])
                .count() as i32;
            out[r * stride + j] = (t.base[j] + ((cnt ^ t.mask[j]) - t.mask[j])) as u8;
        }
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

/// A shortcut added in the epilogue, from the row the epilogue writes on: floats, or codes
/// with their `|α|` (each added as `fl(α·y)`, the value Burn adds).
#[derive(Clone, Copy)]
pub(crate) enum Residual<'a> {
    /// Values.
    Floats(&'a [f32]),
    /// Codes and `|α|`.
    Codes(&'a [u8], f32),
}

impl Residual<'_> {
    fn len(&self) -> usize {
        match self {
            Residual::Floats(v) => v.len(),
            Residual::Codes(c, _) => c.len(),
        }
    }

    /// The `width` values at `at` as floats, zero past `width`.
    fn row(&self, at: usize, width: usize) -> [f32; LANES] {
        let mut v = [0f32; LANES];
        match self {
            Residual::Floats(x) => v[..width].copy_from_slice(&x[at..at + width]),
            Residual::Codes(c, alpha) => {
                for (v, &y) in v.iter_mut().zip(&c[at..at + width]) {
                    *v = alpha * f32::from(y);
                }
            }
        }
        v
    }
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
    residual: Option<Residual<'_>>,
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
    residual: Option<Residual<'_>>,
    mut out: EpiOut<'_>,
    stride: usize,
    width: usize,
) {
    for r in 0..rows {
        let a: &[f32; LANES] = acc[r * LANES..(r + 1) * LANES].try_into().unwrap();
        let res = residual.map(|s| s.row(r * stride, width));
        let v = epi_row(e, a, res.as_ref().map(|x| &x[..width]));
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
    use super::{
        CodedThresholds, EpiOut, F32Block, FloatEpi, FloatPanel, LANES, PlaneConv, ROWS, Residual,
        Thresholds, Tile,
    };
    use std::arch::x86_64::*;

    /// The AVX-512 VNNI panel kernel: a register tile of `R` rows × `C` blocks per call (the
    /// scalar path for panel shapes without one).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL/VNNI; `w` must hold `blocks` blocks and `acc`
    /// `blocks·rows·16` sums (checked by `int_panel`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn panel_avx512(p: &Tile<'_>, w: &[i8], blocks: usize, acc: &mut [i32]) {
        macro_rules! tile {
            ($r:literal, $c:literal, $b0:expr) => {
                match p.k {
                    // SAFETY: the caller's contract, with blocks `b0..b0 + C` inside `blocks`.
                    4 => unsafe { tile_avx512::<$r, $c, 4>(p, w, $b0, acc) },
                    // SAFETY: as above.
                    8 => unsafe { tile_avx512::<$r, $c, 8>(p, w, $b0, acc) },
                    // SAFETY: as above.
                    16 => unsafe { tile_avx512::<$r, $c, 16>(p, w, $b0, acc) },
                    // SAFETY: as above.
                    32 => unsafe { tile_avx512::<$r, $c, 32>(p, w, $b0, acc) },
                    // SAFETY: as above.
                    _ => unsafe { tile_avx512::<$r, $c, 64>(p, w, $b0, acc) },
                }
            };
        }
        let mut b0 = 0;
        while b0 < blocks {
            let Some(tile) = super::register_tile(p.rows, blocks - b0) else {
                let per_block = p.chunks() * p.k * LANES;
                let rest = blocks - b0;
                let acc = &mut acc[b0 * p.rows * LANES..];
                super::panel_scalar(p, &w[b0 * per_block..], rest, acc);
                return;
            };
            match tile {
                (24, 1) => tile!(24, 1, b0),
                (16, 1) => tile!(16, 1, b0),
                (12, 1) => tile!(12, 1, b0),
                (12, 2) => tile!(12, 2, b0),
                (8, 1) => tile!(8, 1, b0),
                (8, 2) => tile!(8, 2, b0),
                (6, 1) => tile!(6, 1, b0),
                (6, 2) => tile!(6, 2, b0),
                (6, 4) => tile!(6, 4, b0),
                (1, 1) => tile!(1, 1, b0),
                (1, 2) => tile!(1, 2, b0),
                (1, 4) => tile!(1, 4, b0),
                _ => unreachable!("register_tile returned {tile:?}"),
            }
            b0 += tile.1;
        }
    }

    /// `R` rows × `C` blocks of sums in `R·C` registers: per group of 4 input channels, `C`
    /// weight vectors loaded, each row's 4 codes broadcast once and multiplied into every
    /// block (`vpdpbusd`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile_avx512<const R: usize, const C: usize, const K: usize>(
        p: &Tile<'_>,
        w: &[i8],
        b0: usize,
        acc: &mut [i32],
    ) {
        debug_assert!(p.rows == R && p.k == K);
        let per_block = p.chunks() * K * LANES;
        let mut sums = [[_mm512_setzero_si512(); C]; R];
        // SAFETY: `base` and every start are inside the codes (checked by `int_panel`), and
        // blocks `b0..b0 + C` lie in `w` (the caller's contract).
        let (a0, mut wp) = unsafe { (p.data.as_ptr().add(p.base), w.as_ptr().add(b0 * per_block)) };
        for &start in p.starts {
            // SAFETY: as above.
            let a = unsafe { a0.add(start) };
            for c4 in 0..K / 4 {
                // SAFETY: chunk `j`'s weights are `K·16` bytes at `wp` (plus `c·per_block` for
                // block `c`), inside `w`'s `blocks·per_block`; its codes are `R·K` bytes at `a`,
                // inside the data (`base + far + rows·k ≤ len`, checked). Unaligned loads.
                unsafe {
                    let wv: [__m512i; C] = std::array::from_fn(|c| {
                        _mm512_loadu_si512(wp.add(c * per_block + c4 * 64).cast())
                    });
                    for (r, row) in sums.iter_mut().enumerate() {
                        let code = a.add(r * K + c4 * 4).cast::<i32>().read_unaligned();
                        let av = _mm512_set1_epi32(code);
                        for (s, w) in row.iter_mut().zip(&wv) {
                            *s = _mm512_dpbusd_epi32(*s, av, *w);
                        }
                    }
                }
            }
            // SAFETY: one chunk further, at most one past the end after the last chunk.
            wp = unsafe { wp.add(K * LANES) };
        }
        for (r, row) in sums.iter().enumerate() {
            for (c, s) in row.iter().enumerate() {
                let at = ((b0 + c) * R + r) * LANES;
                // SAFETY: `acc` holds `blocks·R·16` sums and `b0 + c < blocks`.
                unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(at).cast(), *s) };
            }
        }
    }

    /// The AVX2 panel kernel: `vpmaddubsw` (u8×s8 pairs → i16, which the layer guarantees
    /// cannot saturate) then `vpmaddwd` by 1 (→ i32), two 8-channel halves per block, a few
    /// rows at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2; lengths as for `panel_avx512`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn panel_avx2(p: &Tile<'_>, w: &[i8], blocks: usize, acc: &mut [i32]) {
        for b in 0..blocks {
            let mut r0 = 0;
            while r0 < p.rows {
                let left = p.rows - r0;
                let rc = if left >= 6 {
                    6
                } else if left >= 4 {
                    4
                } else {
                    1
                };
                macro_rules! rows {
                    ($rc:literal) => {
                        // SAFETY: the caller's contract; rows `r0..r0 + RC` lie in the panel.
                        unsafe {
                            match p.k {
                                4 => rows_avx2::<$rc, 4>(p, w, b, r0, acc),
                                8 => rows_avx2::<$rc, 8>(p, w, b, r0, acc),
                                16 => rows_avx2::<$rc, 16>(p, w, b, r0, acc),
                                32 => rows_avx2::<$rc, 32>(p, w, b, r0, acc),
                                _ => rows_avx2::<$rc, 64>(p, w, b, r0, acc),
                            }
                        }
                    };
                }
                match rc {
                    6 => rows!(6),
                    4 => rows!(4),
                    _ => rows!(1),
                }
                r0 += rc;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn rows_avx2<const RC: usize, const K: usize>(
        p: &Tile<'_>,
        w: &[i8],
        b: usize,
        r0: usize,
        acc: &mut [i32],
    ) {
        let per_block = p.chunks() * K * LANES;
        let mut lo = [_mm256_setzero_si256(); RC];
        let mut hi = [_mm256_setzero_si256(); RC];
        let ones = _mm256_set1_epi16(1);
        // SAFETY: row `r0` of the tile and block `b` lie in the codes and in `w` (the caller's
        // contract, `int_panel`'s checks).
        let (a0, mut wp) = unsafe {
            (
                p.data.as_ptr().add(p.base + r0 * K),
                w.as_ptr().add(b * per_block),
            )
        };
        for &start in p.starts {
            // SAFETY: as above.
            let a = unsafe { a0.add(start) };
            for c4 in 0..K / 4 {
                // SAFETY: as in `tile_avx512`: the chunk's `K·16` weight bytes and the rows'
                // codes lie inside `w` and the panel.
                unsafe {
                    let w0 = _mm256_loadu_si256(wp.add(c4 * 64).cast());
                    let w1 = _mm256_loadu_si256(wp.add(c4 * 64 + 32).cast());
                    for r in 0..RC {
                        let code = a.add(r * K + c4 * 4).cast::<i32>().read_unaligned();
                        let av = _mm256_set1_epi32(code);
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones);
                        lo[r] = _mm256_add_epi32(lo[r], p0);
                        hi[r] = _mm256_add_epi32(hi[r], p1);
                    }
                }
            }
            // SAFETY: one chunk further, at most one past the end after the last chunk.
            wp = unsafe { wp.add(K * LANES) };
        }
        for r in 0..RC {
            let at = (b * p.rows + r0 + r) * LANES;
            // SAFETY: `acc` holds `blocks·rows·16` sums; `b < blocks`, `r0 + r < rows`.
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
                // SAFETY: `bases[r] + off < acts.len()` for every row and offset (checked by
                // `f32_block`).
                let a = _mm512_set1_ps(unsafe { b.acts.as_ptr().add(bases[r] + off).read() });
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

    /// The planar row kernel: `CH` output channels (8 or 16) × 16 pixels in `CH` registers; per
    /// `k`, one (masked) load of 16 consecutive input values, multiplied by each channel's
    /// weight and added; then a 16 × 16 transpose to pixel-major rows (channels past `CH` zero).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL; the caller bounded every load (`plane_row`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn plane_row_avx512<const CH: usize>(
        p: &PlaneConv<'_>,
        oy: usize,
        ox0: usize,
        n: usize,
        out: &mut [f32; 256],
    ) {
        let mask = lane_mask(n);
        let mut acc = [_mm512_setzero_ps(); LANES];
        let mut wk = p.w.as_ptr();
        for ky in 0..p.kh {
            for kx in 0..p.kw {
                for c in 0..p.cin {
                    let at = (c * p.hp + oy + ky) * p.wp + ox0 + kx;
                    // SAFETY: `at + n ≤ planes.len()` and `k·16 + 16 ≤ w.len()` (the caller's
                    // bounds); masked lanes are not read.
                    unsafe {
                        let x = _mm512_maskz_loadu_ps(mask, p.planes.as_ptr().add(at));
                        for (j, a) in acc[..CH].iter_mut().enumerate() {
                            let w = _mm512_set1_ps(wk.add(j).read());
                            *a = _mm512_add_ps(*a, _mm512_mul_ps(x, w));
                        }
                        wk = wk.add(LANES);
                    }
                }
            }
        }
        // acc[j] holds channel j of the 16 pixels: transpose to out[px][j].
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (acc[i & !1], acc[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // u[4g + j], lane L: rows 4g..4g + 3 of column 4L + j.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (g, j) = (i / 4, i % 4);
            let (a, b) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
            if j % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            }
        });
        for j in 0..4 {
            let a0 = _mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]);
            let a1 = _mm512_shuffle_f32x4::<0xEE>(u[j], u[4 + j]);
            let b0 = _mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]);
            let b1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + j], u[12 + j]);
            let rows = [
                (j, _mm512_shuffle_f32x4::<0x88>(a0, b0)),
                (4 + j, _mm512_shuffle_f32x4::<0xDD>(a0, b0)),
                (8 + j, _mm512_shuffle_f32x4::<0x88>(a1, b1)),
                (12 + j, _mm512_shuffle_f32x4::<0xDD>(a1, b1)),
            ];
            for (px, v) in rows {
                // SAFETY: `out` holds 16 rows of 16.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(px * LANES), v) };
            }
        }
    }

    /// The AVX-512 float panel kernel: a register tile of `R` rows × `C` blocks per call (the
    /// portable body for panel shapes without one).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL; `w` must hold `blocks` blocks and `acc`
    /// `blocks·rows·16` sums (checked by `f32_panel`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn f32_panel_avx512(
        p: &FloatPanel,
        w: &[f32],
        blocks: usize,
        acc: &mut [f32],
    ) {
        let mut b0 = 0;
        while b0 < blocks {
            let Some(tile) = super::register_tile(p.rows, blocks - b0) else {
                let per_block = p.k * LANES;
                let rest = blocks - b0;
                let acc = &mut acc[b0 * p.rows * LANES..];
                super::f32_panel_body(p, &w[b0 * per_block..], rest, acc);
                return;
            };
            // SAFETY (every arm): the caller's contract, with blocks `b0..b0 + C` inside
            // `blocks` (`register_tile` takes no more than are left).
            unsafe {
                match tile {
                    (24, 1) => f32_tile_avx512::<24, 1>(p, w, b0, acc),
                    (16, 1) => f32_tile_avx512::<16, 1>(p, w, b0, acc),
                    (12, 1) => f32_tile_avx512::<12, 1>(p, w, b0, acc),
                    (12, 2) => f32_tile_avx512::<12, 2>(p, w, b0, acc),
                    (8, 1) => f32_tile_avx512::<8, 1>(p, w, b0, acc),
                    (8, 2) => f32_tile_avx512::<8, 2>(p, w, b0, acc),
                    (6, 1) => f32_tile_avx512::<6, 1>(p, w, b0, acc),
                    (6, 2) => f32_tile_avx512::<6, 2>(p, w, b0, acc),
                    (6, 4) => f32_tile_avx512::<6, 4>(p, w, b0, acc),
                    (1, 1) => f32_tile_avx512::<1, 1>(p, w, b0, acc),
                    (1, 2) => f32_tile_avx512::<1, 2>(p, w, b0, acc),
                    (1, 4) => f32_tile_avx512::<1, 4>(p, w, b0, acc),
                    _ => unreachable!("register_tile returned {tile:?}"),
                }
            }
            b0 += tile.1;
        }
    }

    /// `R` rows × `C` blocks of float sums in registers: per `k`, `C` weight vectors loaded,
    /// each row's value broadcast once, multiplied into every block (`vmulps`) and added
    /// (`vaddps`): the portable body's operations in its order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn f32_tile_avx512<const R: usize, const C: usize>(
        p: &FloatPanel,
        w: &[f32],
        b0: usize,
        acc: &mut [f32],
    ) {
        debug_assert!(p.rows == R);
        let per_block = p.k * LANES;
        let mut sums = [[_mm512_setzero_ps(); C]; R];
        let mut a = p.data.as_ptr();
        // SAFETY: blocks `b0..b0 + C` lie in `w` (the caller's contract).
        let mut wp = unsafe { w.as_ptr().add(b0 * per_block) };
        for _ in 0..p.k {
            // SAFETY: value `k` of the `R` rows lies at `a` in the panel (`rows·k` values), and
            // weight row `k` of block `c` at `wp + c·per_block` in `w`. Unaligned loads.
            unsafe {
                let wv: [__m512; C] =
                    std::array::from_fn(|c| _mm512_loadu_ps(wp.add(c * per_block)));
                for (r, row) in sums.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(a.add(r).read());
                    for (s, w) in row.iter_mut().zip(&wv) {
                        *s = _mm512_add_ps(*s, _mm512_mul_ps(av, *w));
                    }
                }
                a = a.add(R);
                wp = wp.add(LANES);
            }
        }
        for (r, row) in sums.iter().enumerate() {
            for (c, s) in row.iter().enumerate() {
                let at = ((b0 + c) * R + r) * LANES;
                // SAFETY: `acc` holds `blocks·R·16` sums and `b0 + c < blocks`.
                unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(at), *s) };
            }
        }
    }

    /// The float panel compiled for AVX2 (the portable body).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn f32_panel_avx2(p: &FloatPanel, w: &[f32], blocks: usize, acc: &mut [f32]) {
        super::f32_panel_body(p, w, blocks, acc);
    }

    /// The mask of the first `width` of 16 lanes.
    fn lane_mask(width: usize) -> __mmask16 {
        if width >= 16 {
            0xFFFF
        } else {
            (1u16 << width) - 1
        }
    }

    /// Stores a threshold count's codes under `mask`: `base + cnt` per lane, or `base − cnt`
    /// where `sign` is −1 (the epilogue falls with the sum).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW; the bytes under `mask` at `at` must be writable.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn store_count(
        at: *mut u8,
        mask: __mmask16,
        cnt: __m512i,
        sign: __m512i,
        base: __m512i,
    ) {
        let code = _mm512_add_epi32(base, _mm512_sub_epi32(_mm512_xor_si512(cnt, sign), sign));
        // SAFETY: as the caller promised, the masked bytes at `at` are writable.
        unsafe { _mm512_mask_cvtepi32_storeu_epi8(at.cast(), mask, code) }
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
        // SAFETY: the caller's promise, passed on; `acc` holds ROWS·16 sums.
        unsafe { threshold_avx512_at(t, acc.as_ptr(), false, rows, out, stride, width) }
    }

    /// [`threshold_avx512`] on the ROWS·16 values at `acc`: the sums themselves, or with `keys`
    /// the order keys of the f32 values whose bits they are (formed in registers).
    ///
    /// # Safety
    /// As [`threshold_avx512`]; `acc` must point to ROWS·16 readable 4-byte values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn threshold_avx512_at(
        t: &Thresholds<'_>,
        acc: *const i32,
        keys: bool,
        rows: usize,
        out: &mut [u8],
        stride: usize,
        width: usize,
    ) {
        // SAFETY: the caller's promise, passed on.
        unsafe {
            match t.thr.len() / LANES {
                1 => threshold_rows::<1>(t, acc, keys, rows, out, stride, width),
                3 => threshold_rows::<3>(t, acc, keys, rows, out, stride, width),
                _ => threshold_any(t, acc, keys, rows, out, stride, width),
            }
        }
    }

    /// Row `r` of the values at `acc`: as they are, or their order keys.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; `acc` must hold `(r + 1)·16` readable values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sums_row(acc: *const i32, keys: bool, r: usize) -> __m512i {
        // SAFETY: the caller's promise.
        let z = unsafe { _mm512_loadu_si512(acc.add(r * LANES).cast()) };
        if keys {
            let flip = _mm512_and_si512(_mm512_srai_epi32::<31>(z), _mm512_set1_epi32(0x7FFF_FFFF));
            _mm512_xor_si512(z, flip)
        } else {
            z
        }
    }

    /// [`threshold_avx512`] for `N` thresholds (1- and 2-bit activations), held in registers
    /// across the rows; the same counts as `threshold_any`.
    ///
    /// # Safety
    /// As [`threshold_avx512`], with `t.thr` holding `N·16` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn threshold_rows<const N: usize>(
        t: &Thresholds<'_>,
        acc: *const i32,
        keys: bool,
        rows: usize,
        out: &mut [u8],
        stride: usize,
        width: usize,
    ) {
        let mask = lane_mask(width);
        // SAFETY: `t.thr` holds N rows of 16 values; `acc` holds ROWS·16 values with
        // `r < rows ≤ ROWS`; the byte stores are masked to `width` at `r·stride`, inside the
        // length the caller checked.
        unsafe {
            let thr: [__m512i; N] =
                std::array::from_fn(|l| _mm512_loadu_si512(t.thr.as_ptr().add(l * LANES).cast()));
            let sign = _mm512_loadu_si512(t.mask.as_ptr().cast());
            let base = _mm512_loadu_si512(t.base.as_ptr().cast());
            let one = _mm512_set1_epi32(1);
            for r in 0..rows {
                let z = sums_row(acc, keys, r);
                let mut cnt = _mm512_setzero_si512();
                for th in &thr {
                    let ge = _mm512_cmpge_epi32_mask(z, *th);
                    cnt = _mm512_mask_add_epi32(cnt, ge, cnt, one);
                }
                store_count(out.as_mut_ptr().add(r * stride), mask, cnt, sign, base);
            }
        }
    }

    /// [`threshold_avx512`] for any number of thresholds.
    ///
    /// # Safety
    /// As [`threshold_avx512`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn threshold_any(
        t: &Thresholds<'_>,
        acc: *const i32,
        keys: bool,
        rows: usize,
        out: &mut [u8],
        stride: usize,
        width: usize,
    ) {
        let mask = lane_mask(width);
        // SAFETY: table rows are 16 values (`thr` a multiple of 16, `mask`/`base` arrays),
        // `acc` holds ROWS·16 values with `r < rows ≤ ROWS`, and the byte stores are masked to
        // `width` at `r·stride`, inside the length the caller checked.
        unsafe {
            let sign = _mm512_loadu_si512(t.mask.as_ptr().cast());
            let base = _mm512_loadu_si512(t.base.as_ptr().cast());
            let one = _mm512_set1_epi32(1);
            for r in 0..rows {
                let z = sums_row(acc, keys, r);
                let mut cnt = _mm512_setzero_si512();
                for thr in t.thr.chunks_exact(LANES) {
                    let th = _mm512_loadu_si512(thr.as_ptr().cast());
                    let ge = _mm512_cmpge_epi32_mask(z, th);
                    cnt = _mm512_mask_add_epi32(cnt, ge, cnt, one);
                }
                store_count(out.as_mut_ptr().add(r * stride), mask, cnt, sign, base);
            }
        }
    }

    /// The coded-shortcut threshold epilogue: per threshold level, each lane's threshold picked
    /// from the (at most 4) sets by its shortcut code, then counted as in `threshold_avx512`;
    /// 1 or 3 thresholds per set (1- and 2-bit activations) from registers ([`coded_rows`]).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL; `t.codes ≤ 4` and the lengths checked by
    /// `coded_threshold_block`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn coded_threshold_avx512(
        t: &CodedThresholds<'_>,
        acc: &[i32; ROWS * LANES],
        rows: usize,
        shortcut: &[u8],
        out: &mut [u8],
        stride: usize,
        width: usize,
    ) {
        // SAFETY: the caller's promise, passed on.
        unsafe {
            match t.thr.len() / (t.codes * LANES) {
                1 => coded_rows::<1>(t, acc, rows, shortcut, out, stride, width),
                3 => coded_rows::<3>(t, acc, rows, shortcut, out, stride, width),
                _ => coded_any(t, acc, rows, shortcut, out, stride, width),
            }
        }
    }

    /// [`coded_threshold_avx512`] for `N` thresholds per set (1- and 2-bit activations): the
    /// `4·N` threshold vectors loaded once into registers, each lane's picked by three blends on
    /// the bits of its shortcut code; the same counts as `coded_any`.
    ///
    /// # Safety
    /// As [`coded_threshold_avx512`], with `N` thresholds per set.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn coded_rows<const N: usize>(
        t: &CodedThresholds<'_>,
        acc: &[i32; ROWS * LANES],
        rows: usize,
        shortcut: &[u8],
        out: &mut [u8],
        stride: usize,
        width: usize,
    ) {
        let mask = lane_mask(width);
        // SAFETY: the sets are `N·16` values each, `codes ≤ 4` of them (a set past the last is
        // the last, never selected); `acc` holds ROWS·16 values with `r < rows ≤ ROWS`; shortcut
        // loads and code stores are masked to `width` at `r·stride`, inside the lengths the
        // caller checked.
        unsafe {
            let sets: [[__m512i; 4]; N] = std::array::from_fn(|l| {
                std::array::from_fn(|y| {
                    let y = y.min(t.codes - 1);
                    _mm512_loadu_si512(t.thr.as_ptr().add((y * N + l) * LANES).cast())
                })
            });
            let sign = _mm512_loadu_si512(t.mask.as_ptr().cast());
            let base = _mm512_loadu_si512(t.base.as_ptr().cast());
            let one = _mm512_set1_epi32(1);
            let two = _mm512_set1_epi32(2);
            for r in 0..rows {
                let z = _mm512_loadu_si512(acc.as_ptr().add(r * LANES).cast());
                let y = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                    mask,
                    shortcut.as_ptr().add(r * stride).cast(),
                ));
                let odd = _mm512_test_epi32_mask(y, one);
                let upper = _mm512_test_epi32_mask(y, two);
                let mut cnt = _mm512_setzero_si512();
                for set in &sets {
                    let low = _mm512_mask_blend_epi32(odd, set[0], set[1]);
                    let high = _mm512_mask_blend_epi32(odd, set[2], set[3]);
                    let th = _mm512_mask_blend_epi32(upper, low, high);
                    let ge = _mm512_cmpge_epi32_mask(z, th);
                    cnt = _mm512_mask_add_epi32(cnt, ge, cnt, one);
                }
                store_count(out.as_mut_ptr().add(r * stride), mask, cnt, sign, base);
            }
        }
    }

    /// [`coded_threshold_avx512`] for any number of thresholds per set: per threshold level,
    /// two `vpermt2d` and a blend from memory.
    ///
    /// # Safety
    /// As [`coded_threshold_avx512`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn coded_any(
        t: &CodedThresholds<'_>,
        acc: &[i32; ROWS * LANES],
        rows: usize,
        shortcut: &[u8],
        out: &mut [u8],
        stride: usize,
        width: usize,
    ) {
        let mask = lane_mask(width);
        let n = t.thr.len() / (t.codes * LANES);
        // SAFETY: the sets are `n·16` values each, `codes ≤ 4` of them (set `y` for y past the
        // last one is the last one, never selected); `acc` holds ROWS·16 values with
        // `r < rows ≤ ROWS`; shortcut loads and code stores are masked to `width` at
        // `r·stride`, inside the lengths the caller checked.
        unsafe {
            let set = |y: usize, l: usize| {
                let y = y.min(t.codes - 1);
                _mm512_loadu_si512(t.thr.as_ptr().add((y * n + l) * LANES).cast())
            };
            let sign = _mm512_loadu_si512(t.mask.as_ptr().cast());
            let base = _mm512_loadu_si512(t.base.as_ptr().cast());
            let one = _mm512_set1_epi32(1);
            let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let two = _mm512_set1_epi32(2);
            for r in 0..rows {
                let z = _mm512_loadu_si512(acc.as_ptr().add(r * LANES).cast());
                let y = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                    mask,
                    shortcut.as_ptr().add(r * stride).cast(),
                ));
                // Lane j reads entry 16·y + j of (set 0, set 1) or of (set 2, set 3).
                let idx = _mm512_add_epi32(_mm512_slli_epi32::<4>(y), lane);
                let upper = _mm512_cmpge_epi32_mask(y, two);
                let mut cnt = _mm512_setzero_si512();
                for l in 0..n {
                    let low = _mm512_permutex2var_epi32(set(0, l), idx, set(1, l));
                    let th = if t.codes > 2 {
                        let high = _mm512_permutex2var_epi32(set(2, l), idx, set(3, l));
                        _mm512_mask_blend_epi32(upper, low, high)
                    } else {
                        low
                    };
                    let ge = _mm512_cmpge_epi32_mask(z, th);
                    cnt = _mm512_mask_add_epi32(cnt, ge, cnt, one);
                }
                store_count(out.as_mut_ptr().add(r * stride), mask, cnt, sign, base);
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
        residual: Option<Residual<'_>>,
        mut out: EpiOut<'_>,
        stride: usize,
        width: usize,
    ) {
        let mask = lane_mask(width);
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
                match residual {
                    Some(Residual::Floats(res)) => {
                        let x = _mm512_maskz_loadu_ps(mask, res.as_ptr().add(r * stride));
                        v = _mm512_add_ps(v, x);
                    }
                    Some(Residual::Codes(res, alpha)) => {
                        let y = _mm_maskz_loadu_epi8(mask, res.as_ptr().add(r * stride).cast());
                        let y = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(y));
                        v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(alpha), y));
                    }
                    None => {}
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
                match &mut out {
                    EpiOut::Codes(o) => {
                        let codes = _mm512_cvttps_epi32(v);
                        let at = o.as_mut_ptr().add(r * stride);
                        _mm512_mask_cvtepi32_storeu_epi8(at.cast(), mask, codes);
                    }
                    EpiOut::Floats(o) => {
                        let x = match e.quant {
                            Some(q) => _mm512_mul_ps(_mm512_set1_ps(q.alpha), v),
                            None => v,
                        };
                        let at = o.as_mut_ptr().add(r * stride);
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
        residual: Option<Residual<'_>>,
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

    /// Every path gives the scalar sums bit for bit, for every tile shape the layers use (and
    /// odd ones, which AVX-512 runs on the scalar path), every chunk size, and the extreme
    /// codes (255 × −128 with AVX2's pairs kept below saturation by a small weight range).
    #[test]
    fn every_path_gives_the_scalar_sums() {
        let mut next = rng(7);
        for case in 0..120 {
            let rows = [24, 12, 6, 1, 5, 8, 16][case % 7];
            let k = [16, 32, 64, 4, 8][(case / 7) % 5];
            let blocks = 1 + (next() % 6) as usize;
            let chunks = 1 + (next() % 9) as usize;
            let acts: Vec<u8> = (0..1024)
                .map(|_| {
                    if case % 5 == 0 {
                        255
                    } else {
                        (next() % 16) as u8
                    }
                })
                .collect();
            // Weights within ±64: 2·255·64 < 32767, so AVX2 may run too.
            let w: Vec<i8> = (0..blocks * chunks * k * LANES)
                .map(|_| ((next() % 129) as i32 - 64) as i8)
                .collect();
            let offs: Vec<usize> = (0..chunks).map(|_| (next() % 400) as usize).collect();
            let used = 1 + (next() % rows as u64) as usize;
            let bases: Vec<usize> = (0..used).map(|_| (next() % 500) as usize).collect();
            let mut panel = Panel::new(rows, k, chunks);
            panel.pack(&acts, &bases, &offs);
            let mut want = vec![0; blocks * rows * LANES];
            panel_scalar(&panel.tile(), &w, blocks, &mut want);
            // A hand-written sum for one entry (last block, row 0, channel 3): the layout's
            // definition.
            let b = blocks - 1;
            let direct: i32 = (0..chunks)
                .flat_map(|j| (0..k).map(move |i| (j, i)))
                .map(|(j, i)| {
                    let wi = b * chunks * k * LANES + ((j * k + i) / 4 * LANES + 3) * 4 + i % 4;
                    i32::from(acts[bases[0] + offs[j] + i]) * i32::from(w[wi])
                })
                .sum();
            assert_eq!(want[b * rows * LANES + 3], direct);
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let mut got = vec![0; blocks * rows * LANES];
                int_panel(isa, &panel.tile(), &w, blocks, &mut got);
                assert_eq!(got, want, "{isa}, case {case}: {rows} rows, k {k}");
            }
        }
    }

    /// The float panel gives the portable body's bits on every path and tile shape, and its
    /// sums are products added in increasing `k` (checked against that loop written out).
    #[test]
    fn every_float_path_gives_the_same_bits() {
        let mut next = rng(11);
        let mut unit = move || (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        for case in 0..36 {
            let rows = [24, 12, 6, 1, 5, 8, 16][case % 7];
            let blocks = 1 + case % 5;
            let k = 1 + (case * 7) % 40;
            let acts: Vec<f32> = (0..600).map(|_| unit()).collect();
            let w: Vec<f32> = (0..blocks * k * LANES).map(|_| unit()).collect();
            let offs: Vec<usize> = (0..k).map(|i| (i * 13) % 97).collect();
            let bases: Vec<usize> = (0..rows).map(|r| r * 17 % 400).collect();
            let mut panel = FloatPanel::new(rows, k);
            panel.pack(&acts, &bases, &offs);
            let mut want = vec![0f32; blocks * rows * LANES];
            f32_panel_body(&panel, &w, blocks, &mut want);
            let (b, r, j) = (blocks - 1, rows - 1, 5);
            let mut direct = 0f32;
            for i in 0..k {
                direct += acts[bases[r] + offs[i]] * w[(b * k + i) * LANES + j];
            }
            assert_eq!(want[(b * rows + r) * LANES + j].to_bits(), direct.to_bits());
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let mut got = vec![0f32; blocks * rows * LANES];
                f32_panel(isa, &panel, &w, blocks, &mut got);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{isa}, case {case}");
            }
        }
    }

    /// The planar stem kernel gives `f32_block`'s bits (the same products added in the same
    /// order), for 1–4 input channels, kernels 1–5 and rows of 1–16 pixels.
    #[test]
    fn the_planar_stem_kernel_gives_the_float_blocks_bits() {
        if !Isa::Avx512.available() {
            eprintln!("no AVX-512 on this CPU: the planar kernel is not used here");
            return;
        }
        let mut next = rng(5);
        let mut unit = move || (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        for case in 0..40 {
            let cin = 1 + case % 4;
            let k = [1, 3, 5][case % 3];
            let (hp, wp) = (k + case % 4, k + 15 + case % 5);
            let ow = wp - k + 1;
            let planes: Vec<f32> = (0..cin * hp * wp).map(|_| unit()).collect();
            let w: Vec<f32> = (0..k * k * cin * LANES).map(|_| unit()).collect();
            // The same image NHWC, and the float block's offsets (tap-major, then channel).
            let mut acts = vec![0f32; hp * wp * cin];
            for c in 0..cin {
                for p in 0..hp * wp {
                    acts[p * cin + c] = planes[c * hp * wp + p];
                }
            }
            let offs: Vec<usize> = (0..k * k)
                .flat_map(|t| (0..cin).map(move |c| ((t / k) * wp + t % k) * cin + c))
                .collect();
            let conv = PlaneConv {
                planes: &planes,
                hp,
                wp,
                cin,
                kh: k,
                kw: k,
                w: &w,
                width: [16, 6, 9, 8][case % 4],
            };
            let oy = hp - k;
            for ox0 in [0, ow.saturating_sub(16), ow - 1] {
                let n = 16.min(ow - ox0);
                let mut out = [0f32; 256];
                plane_row(&conv, oy, ox0, n, &mut out);
                for r0 in (0..n).step_by(ROWS) {
                    let rows = ROWS.min(n - r0);
                    let bases: Vec<usize> =
                        (0..rows).map(|i| (oy * wp + ox0 + r0 + i) * cin).collect();
                    let block = F32Block {
                        acts: &acts,
                        bases: &bases,
                        offs: &offs,
                        w: &w,
                    };
                    let mut want = [0f32; ROWS * LANES];
                    f32_block(Isa::Scalar, &block, &mut want);
                    for i in (0..rows * LANES).filter(|i| i % LANES < conv.width) {
                        assert_eq!(
                            out[r0 * LANES + i].to_bits(),
                            want[i].to_bits(),
                            "case {case}, pixel {}, channel {}",
                            ox0 + r0 + i / LANES,
                            i % LANES
                        );
                    }
                }
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
