//! Layers: a convolution (every linear layer is one, with a kernel as large as its input map),
//! run on integer codes or on floats, with its fused epilogue; max and average pooling.

use crate::kernels::{
    self, CodedThresholds, EpiOut, F32Block, FloatEpi, FloatPanel, Isa, LANES, PANEL_ROWS, Panel,
    PlaneConv, QuantEpi, ROWS, Residual, Thresholds, Tile,
};

/// Values whose buffers the process keeps for its next maps ([`Map`]'s pool).
pub trait Pooled: Copy + Default + 'static {
    /// The kept buffers of this type.
    #[doc(hidden)]
    fn pool() -> &'static Pool<Self>;
}

static BYTES: Pool<u8> = Pool::new(Vec::new());
static FLOATS: Pool<f32> = Pool::new(Vec::new());

impl Pooled for u8 {
    fn pool() -> &'static Pool<u8> {
        &BYTES
    }
}

impl Pooled for f32 {
    fn pool() -> &'static Pool<f32> {
        &FLOATS
    }
}

/// Buffers kept per type: a forward pass holds a few maps at a time per thread.
const POOLED: usize = 16;
/// Bytes kept per type at most (larger maps are freed).
const POOLED_BYTES: usize = 1 << 30;

type Pool<T> = std::sync::Mutex<Vec<Vec<T>>>;

/// `len` zeros in the smallest buffer `pool` keeps that holds them, or in a new one.
fn take<T: Pooled>(pool: &Pool<T>, len: usize) -> Vec<T> {
    let kept = {
        let mut p = pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fits = (p.iter().enumerate())
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity());
        fits.map(|(i, _)| i).map(|i| p.swap_remove(i))
    };
    match kept {
        Some(mut v) => {
            v.clear();
            v.resize(len, T::default());
            v
        }
        None => vec![T::default(); len],
    }
}

/// Keeps `v` in `pool` for a later [`take`] (in place of a smaller one when the pool is full).
fn give<T: Pooled>(pool: &Pool<T>, v: Vec<T>) {
    let bytes = |v: &Vec<T>| v.capacity() * std::mem::size_of::<T>();
    if v.capacity() == 0 {
        return;
    }
    let mut p = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let kept: usize = p.iter().map(bytes).sum();
    if p.len() < POOLED && kept + bytes(&v) <= POOLED_BYTES {
        p.push(v);
    } else if let Some((i, _)) = (p.iter().enumerate())
        .filter(|(_, k)| k.capacity() < v.capacity())
        .min_by_key(|(_, k)| k.capacity())
        && kept - bytes(&p[i]) + bytes(&v) <= POOLED_BYTES
    {
        p[i] = v;
    }
}

/// A batch of feature maps, NHWC, with `cs ≥ c` values per pixel (the channels past `c` are
/// padding). Its buffer comes from, and returns to, a pool the process keeps: once warm, a
/// forward pass neither allocates nor touches fresh pages (which cost up to a fifth of
/// ResNet-20's time when the allocator had returned them to the system between passes).
#[derive(Clone, Debug, PartialEq)]
pub struct Map<T: Pooled> {
    /// Images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Values per pixel.
    pub cs: usize,
    /// `n·h·w·cs` values.
    pub data: Vec<T>,
}

impl<T: Pooled> Drop for Map<T> {
    fn drop(&mut self) {
        give(T::pool(), std::mem::take(&mut self.data));
    }
}

impl<T: Pooled> Map<T> {
    /// A map of `T::default()`.
    pub fn zeros(n: usize, h: usize, w: usize, c: usize, cs: usize) -> Self {
        Self {
            n,
            h,
            w,
            c,
            cs,
            data: take(T::pool(), n * h * w * cs),
        }
    }

    /// This map with `pad` pixels of `T::default()` around each image.
    fn padded(&self, pad: usize) -> std::borrow::Cow<'_, Self> {
        if pad == 0 {
            return std::borrow::Cow::Borrowed(self);
        }
        let (hp, wp) = (self.h + 2 * pad, self.w + 2 * pad);
        let mut out = Self::zeros(self.n, hp, wp, self.c, self.cs);
        let row = self.w * self.cs;
        for n in 0..self.n {
            for y in 0..self.h {
                let src = ((n * self.h + y) * self.w) * self.cs;
                let dst = ((n * hp + y + pad) * wp + pad) * self.cs;
                out.data[dst..dst + row].copy_from_slice(&self.data[src..src + row]);
            }
        }
        std::borrow::Cow::Owned(out)
    }
}

/// An activation quantizer's hard function: `y = Σ_i s_i·[|β|·x ≥ b_i] − o`, value `|α|·y`.
#[derive(Clone, Debug, PartialEq)]
pub struct ActQuant {
    /// `|α|`.
    pub alpha: f32,
    /// `|β|`.
    pub beta: f32,
    /// Thresholds `b_i`.
    pub thresholds: Vec<f32>,
    /// The levels `Y`.
    pub levels: Vec<f32>,
}

impl ActQuant {
    fn steps(&self) -> Vec<f32> {
        self.levels.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Whether its levels are `0, 1, …, n` (n ≤ 255): the codes are the levels, and the
    /// integer path can carry them.
    pub fn is_unsigned_grid(&self) -> bool {
        self.levels.len() <= 256 && self.levels.iter().enumerate().all(|(i, &y)| y == i as f32)
    }
}

/// Batch norm (inference): `(x − μ)·γ/√(σ² + ε) + β` in f64, as quantnet's flex kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// `γ`.
    pub gamma: Vec<f32>,
    /// `β`.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
    /// `ε`.
    pub epsilon: f64,
}

/// What follows a convolution, per output channel, in order: scale, bias, batch norm, residual
/// add, ReLU, activation quantizer.
#[derive(Clone, Debug, Default)]
pub struct Epilogue {
    /// Bias.
    pub bias: Option<Vec<f32>>,
    /// Batch norm.
    pub bn: Option<BatchNorm>,
    /// Whether a shortcut is added (after batch norm, before ReLU).
    pub residual: bool,
    /// When the shortcut is the codes of an unsigned-grid quantizer (`|α|`, its largest code):
    /// the layer then runs its epilogue as integer thresholds, one set per shortcut code, when
    /// given codes with that `|α|` (other shortcuts take the float epilogue).
    pub coded_residual: Option<(f32, u8)>,
    /// ReLU.
    pub relu: bool,
    /// The activation quantizer.
    pub quant: Option<ActQuant>,
}

/// A convolution's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

/// Weights as the file holds them, `[cout][cin][kh][kw]`.
#[derive(Clone, Debug)]
pub enum Weights {
    /// Float values.
    Float(Vec<f32>),
    /// Integer levels and one scale per output channel (value `α_c·y`).
    Levels {
        /// Levels `y`, integers in −128..=127.
        levels: Vec<i8>,
        /// `α_c`.
        alpha: Vec<f32>,
    },
}

impl Weights {
    /// The float values (`fl(α_c·y)` for levels, as the file decodes them).
    pub fn values(&self, g: &Geometry) -> Vec<f32> {
        match self {
            Weights::Float(v) => v.clone(),
            Weights::Levels { levels, alpha } => {
                let per = g.cin * g.kh * g.kw;
                levels
                    .iter()
                    .enumerate()
                    .map(|(i, &y)| alpha[i / per] * f32::from(y))
                    .collect()
            }
        }
    }
}

/// Per output channel, padded to whole blocks of 16.
fn lanes<T: Copy + Default>(v: &[T], blocks: usize) -> Vec<[T; LANES]> {
    (0..blocks)
        .map(|b| std::array::from_fn(|j| v.get(b * LANES + j).copied().unwrap_or_default()))
        .collect()
}

/// The epilogue's per-channel tables, in blocks of 16.
#[derive(Clone, Debug)]
struct EpiTables {
    scale: Option<Vec<[f32; LANES]>>,
    bias: Option<Vec<[f32; LANES]>>,
    bn: Option<[Vec<[f64; LANES]>; 3]>,
    relu: bool,
    quant: Option<(ActQuant, Vec<f32>, f32)>,
}

impl EpiTables {
    fn new(e: &Epilogue, scale: Option<&[f32]>, blocks: usize) -> Self {
        let bn = e.bn.as_ref().map(|bn| {
            let k: Vec<f64> = bn
                .gamma
                .iter()
                .zip(&bn.var)
                .map(|(&g, &v)| f64::from(g) / (f64::from(v) + bn.epsilon).sqrt())
                .collect();
            let mean: Vec<f64> = bn.mean.iter().map(|&m| f64::from(m)).collect();
            let beta: Vec<f64> = bn.beta.iter().map(|&b| f64::from(b)).collect();
            [
                lanes(&mean, blocks),
                lanes(&k, blocks),
                lanes(&beta, blocks),
            ]
        });
        Self {
            scale: scale.map(|s| lanes(s, blocks)),
            bias: e.bias.as_ref().map(|b| lanes(b, blocks)),
            bn,
            relu: e.relu,
            quant: e.quant.as_ref().map(|q| {
                let o = -q.levels[0];
                (q.clone(), q.steps(), o)
            }),
        }
    }

    fn block(&self, b: usize) -> FloatEpi<'_> {
        FloatEpi {
            scale: self.scale.as_ref().map(|s| &s[b]),
            bias: self.bias.as_ref().map(|s| &s[b]),
            bn: self.bn.as_ref().map(|[m, k, s]| [&m[b], &k[b], &s[b]]),
            relu: self.relu,
            quant: self.quant.as_ref().map(|(q, steps, o)| QuantEpi {
                beta: q.beta,
                alpha: q.alpha,
                thresholds: &q.thresholds,
                steps,
                offset: *o,
            }),
        }
    }
}

/// Integer thresholds equivalent to a non-residual epilogue ending in an unsigned-grid
/// quantizer: per channel, `code = base + ±#{t : z ≥ thr_t}` for every reachable sum `z`.
#[derive(Clone, Debug)]
struct IntThresholds {
    /// `[block][t][16]`.
    thr: Vec<i32>,
    mask: Vec<[i32; LANES]>,
    base: Vec<[i32; LANES]>,
    n: usize,
}

/// [`IntThresholds`] per shortcut code, for a residual layer whose shortcut is codes of `|α|`
/// `alpha`: `thr` is `[block][code][t][16]`; one mask and base per block serve every code.
#[derive(Clone, Debug)]
struct CodedSets {
    alpha: f32,
    codes: usize,
    thr: Vec<i32>,
    mask: Vec<[i32; LANES]>,
    base: Vec<[i32; LANES]>,
}

/// How a layer computes.
#[derive(Clone, Debug)]
enum Kernel {
    /// Codes in, packed s8 levels `[block][G][16][4]`.
    Int {
        w: Vec<i8>,
        /// Input channels per pixel in the codes (a multiple of 4).
        cs: usize,
        thresholds: Option<IntThresholds>,
        coded: Option<CodedSets>,
    },
    /// Floats in, packed `[block][K][16]`.
    Float { w: Vec<f32>, cs: usize },
    /// Floats in, `cs` per pixel, through the epilogue alone (a batch norm after a max pool).
    Pointwise { cs: usize },
}

/// A convolution (or linear layer) with its epilogue, packed for one input layout.
#[derive(Clone, Debug)]
pub struct Conv {
    /// Its shape.
    pub geo: Geometry,
    kernel: Kernel,
    tables: EpiTables,
    /// Whether it writes codes (an unsigned-grid quantizer and the integer path) or floats.
    codes_out: bool,
    /// The path its integer sums run on.
    isa: Isa,
    has_residual: bool,
    /// A float layer's epilogue as thresholds on its sums' order keys ([`kernels::float_key`]), when it
    /// writes codes and adds no shortcut.
    key_thresholds: Option<IntThresholds>,
    /// Its index among the layers of the engine that built it (their order of packing).
    pub(crate) id: usize,
}

/// A layer's input or output.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    /// Codes (level values `y`) of an unsigned-grid quantizer, with its `|α|`.
    Codes(Map<u8>, f32),
    /// Float values.
    Floats(Map<f32>),
}

impl Act {
    /// The values as floats (`fl(α·y)` for codes).
    pub fn floats(&self) -> std::borrow::Cow<'_, Map<f32>> {
        match self {
            Act::Floats(m) => std::borrow::Cow::Borrowed(m),
            Act::Codes(m, alpha) => std::borrow::Cow::Owned(Map {
                n: m.n,
                h: m.h,
                w: m.w,
                c: m.c,
                cs: m.cs,
                data: m.data.iter().map(|&y| alpha * f32::from(y)).collect(),
            }),
        }
    }

    /// Its shape `(n, h, w, c)`.
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        match self {
            Act::Codes(m, _) => (m.n, m.h, m.w, m.c),
            Act::Floats(m) => (m.n, m.h, m.w, m.c),
        }
    }
}

/// The input a layer is packed for.
#[derive(Clone, Copy, Debug)]
pub enum Input {
    /// Codes of an unsigned-grid quantizer with levels `0..=max`, `|α| = alpha`, `cs` bytes
    /// per pixel.
    Codes {
        /// `|α|` of the quantizer that made them.
        alpha: f32,
        /// The largest code.
        max: u8,
        /// Bytes per pixel.
        cs: usize,
    },
    /// Floats, `cs` per pixel.
    Floats {
        /// Values per pixel.
        cs: usize,
    },
}

impl Input {
    /// Values (bytes or floats) per pixel.
    pub fn cs(self) -> usize {
        match self {
            Input::Codes { cs, .. } | Input::Floats { cs } => cs,
        }
    }
}

/// The largest `|z|` for which every partial sum is an exactly representable f32 integer.
const EXACT: i64 = 1 << 24;

impl Conv {
    /// Packs a layer for `input`: the integer path when the input is codes, the weights are
    /// levels and every sum stays exact (`|z| < 2²⁴`), the float path otherwise (weights decoded
    /// to `fl(α_c·y)`, codes to `fl(α·y)`). With `isa` AVX2 and sums that could saturate its
    /// i16 pairs the layer's integer sums run on the scalar path. With `int` false (the
    /// engine's f32 mode) every layer runs on floats and writes floats.
    pub fn new(
        geo: Geometry,
        weights: &Weights,
        epi: &Epilogue,
        input: Input,
        isa: Isa,
        int: bool,
    ) -> Self {
        let blocks = geo.cout.div_ceil(LANES);
        let k = geo.kh * geo.kw;
        let int_in = match (input, weights) {
            (Input::Codes { alpha, max, cs }, Weights::Levels { levels, alpha: wa }) if int => {
                let reach = zrange(geo, levels, max);
                let exact = reach.iter().all(|&(lo, hi)| lo > -EXACT && hi < EXACT);
                exact.then_some((alpha, max, cs, levels, wa, reach))
            }
            _ => None,
        };
        let quant_codes = int && epi.quant.as_ref().is_some_and(ActQuant::is_unsigned_grid);
        if let Some((alpha_in, max, cs, levels, wa, reach)) = int_in {
            let mut w = vec![0i8; blocks * k * cs / 4 * LANES * 4];
            let groups = k * cs / 4;
            for co in 0..geo.cout {
                for ci in 0..geo.cin {
                    for t in 0..k {
                        let y = levels[(co * geo.cin + ci) * k + t];
                        let g = t * cs / 4 + ci / 4;
                        w[(((co / LANES) * groups + g) * LANES + co % LANES) * 4 + ci % 4] = y;
                    }
                }
            }
            let scale: Vec<f32> = wa.iter().map(|a| a * alpha_in).collect();
            let tables = EpiTables::new(epi, Some(&scale), blocks);
            let wmax = levels
                .iter()
                .map(|y| i32::from(*y).abs())
                .max()
                .unwrap_or(0);
            let isa = if isa == Isa::Avx2 && 2 * wmax * i32::from(max) > i32::from(i16::MAX) {
                Isa::Scalar
            } else {
                isa
            };
            let thresholds = (quant_codes && !epi.residual)
                .then(|| int_thresholds(&tables, &reach, blocks, isa, None, None, |z| z as f32));
            let coded = match epi.coded_residual {
                Some((alpha, max)) if quant_codes && epi.residual => {
                    // The epilogue falls with z where the scale times batch norm's slope is
                    // negative, whatever the shortcut adds.
                    let decreasing: Vec<bool> = (0..blocks * LANES)
                        .map(|c| {
                            let slope = epi
                                .bn
                                .as_ref()
                                .map_or(1.0, |bn| f64::from(bn.gamma[c.min(bn.gamma.len() - 1)]));
                            c < geo.cout && f64::from(scale[c]) * slope < 0.0
                        })
                        .collect();
                    let sets: Vec<IntThresholds> = (0..=max)
                        .map(|y| {
                            let shortcut = alpha * f32::from(y);
                            int_thresholds(
                                &tables,
                                &reach,
                                blocks,
                                isa,
                                Some(shortcut),
                                Some(&decreasing),
                                |z| z as f32,
                            )
                        })
                        .collect();
                    let n = sets[0].n;
                    let codes = sets.len();
                    let mut thr = vec![0i32; blocks * codes * n * LANES];
                    for (y, set) in sets.iter().enumerate() {
                        for b in 0..blocks {
                            let at = (b * codes + y) * n * LANES;
                            thr[at..at + n * LANES]
                                .copy_from_slice(&set.thr[b * n * LANES..(b + 1) * n * LANES]);
                        }
                    }
                    Some(CodedSets {
                        alpha,
                        codes,
                        thr,
                        mask: sets[0].mask.clone(),
                        base: sets[0].base.clone(),
                    })
                }
                _ => None,
            };
            Self {
                geo,
                kernel: Kernel::Int {
                    w,
                    cs,
                    thresholds,
                    coded,
                },
                tables,
                codes_out: quant_codes,
                isa,
                has_residual: epi.residual,
                key_thresholds: None,
                id: 0,
            }
        } else {
            let cs = input.cs();
            let values = weights.values(&geo);
            let mut w = vec![0f32; blocks * k * geo.cin * LANES];
            for co in 0..geo.cout {
                for ci in 0..geo.cin {
                    for t in 0..k {
                        let kk = t * geo.cin + ci;
                        w[((co / LANES) * k * geo.cin + kk) * LANES + co % LANES] =
                            values[(co * geo.cin + ci) * k + t];
                    }
                }
            }
            let tables = EpiTables::new(epi, None, blocks);
            Self {
                geo,
                kernel: Kernel::Float { w, cs },
                key_thresholds: key_thresholds(&tables, geo.cout, blocks, isa, quant_codes, epi),
                tables,
                codes_out: quant_codes,
                isa,
                has_residual: epi.residual,
                id: 0,
            }
        }
    }

    /// The epilogue alone, per channel of a `channels`-channel float map: what follows a max
    /// pool that sits between a conv and its batch norm (VGG-small). With `int` (the engine's
    /// integer mode) an unsigned-grid quantizer writes codes.
    pub fn pointwise(channels: usize, epi: &Epilogue, input: Input, isa: Isa, int: bool) -> Self {
        let geo = Geometry {
            cin: channels,
            cout: channels,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
        };
        let blocks = channels.div_ceil(LANES);
        let tables = EpiTables::new(epi, None, blocks);
        let codes_out = int && epi.quant.as_ref().is_some_and(ActQuant::is_unsigned_grid);
        Self {
            geo,
            kernel: Kernel::Pointwise { cs: input.cs() },
            key_thresholds: key_thresholds(&tables, channels, blocks, isa, codes_out, epi),
            tables,
            codes_out,
            isa,
            has_residual: epi.residual,
            id: 0,
        }
    }

    /// Whether the layer runs on integer codes.
    pub fn is_int(&self) -> bool {
        matches!(self.kernel, Kernel::Int { .. })
    }

    /// The instruction-set path of its integer sums.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Output channels per pixel in its output (`cout` rounded up to 16).
    pub fn out_stride(&self) -> usize {
        self.geo.cout.div_ceil(LANES) * LANES
    }

    /// What the next layer is packed for, given this layer's quantizer.
    pub fn output(&self) -> Input {
        match (&self.tables.quant, self.codes_out) {
            (Some((q, _, _)), true) => Input::Codes {
                alpha: q.alpha,
                max: (q.levels.len() - 1) as u8,
                cs: self.out_stride(),
            },
            _ => Input::Floats {
                cs: self.out_stride(),
            },
        }
    }

    /// Multiply-adds per image for an `h × w` input.
    pub fn macs(&self, h: usize, w: usize) -> usize {
        if matches!(self.kernel, Kernel::Pointwise { .. }) {
            return 0;
        }
        let (oh, ow) = self.out_hw(h, w);
        oh * ow * self.geo.cout * self.geo.cin * self.geo.kh * self.geo.kw
    }

    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let g = &self.geo;
        (
            (h + 2 * g.pad - g.kh) / g.stride + 1,
            (w + 2 * g.pad - g.kw) / g.stride + 1,
        )
    }

    /// Runs the layer; `residual` (codes or floats of the output's shape) is added when the
    /// epilogue has a residual add.
    ///
    /// # Panics
    /// If the input is not what the layer was packed for (an engine bug).
    pub fn forward(&self, x: &Act, residual: Option<&Act>) -> Act {
        let g = &self.geo;
        let (n, h, w, _) = x.dims();
        let (oh, ow) = self.out_hw(h, w);
        let (hp, wp) = (h + 2 * g.pad, w + 2 * g.pad);
        let stride = self.out_stride();
        assert_eq!(self.has_residual, residual.is_some(), "residual input");
        let residual = residual.map(|r| match r {
            Act::Floats(m) => (m.n, m.h, m.w, m.cs, Residual::Floats(&m.data)),
            Act::Codes(m, alpha) => (m.n, m.h, m.w, m.cs, Residual::Codes(&m.data, *alpha)),
        });
        let residual = residual.map(|(rn, rh, rw, rcs, r)| {
            assert_eq!((rn, rh, rw, rcs), (n, oh, ow, stride), "residual shape");
            r
        });
        let pixels = n * oh * ow;
        // Where each output pixel's receptive field starts, pixel after pixel (no divisions).
        let cursor = |cs: usize| Cursor {
            oh,
            ow,
            step: g.stride * cs,
            row: g.stride * wp * cs,
            image: hp * wp * cs,
            at: (0, 0, 0),
        };
        let mut codes = self
            .codes_out
            .then(|| Map::<u8>::zeros(n, oh, ow, g.cout, stride));
        let mut floats = (!self.codes_out).then(|| Map::<f32>::zeros(n, oh, ow, g.cout, stride));
        let blocks = g.cout.div_ceil(LANES);
        let mut acc_f = [0f32; ROWS * LANES];
        match (&self.kernel, x) {
            (
                Kernel::Int {
                    w,
                    cs,
                    thresholds,
                    coded,
                },
                Act::Codes(m, _),
            ) => {
                assert_eq!(m.cs, *cs, "input channel stride");
                let input = m.padded(g.pad);
                let k = kernels::chunk_bytes(*cs);
                let offs: Vec<usize> = (0..g.kh * g.kw)
                    .flat_map(|t| {
                        let (ky, kx) = (t / g.kw, t % g.kw);
                        (0..cs / k).map(move |c| (ky * wp + kx) * cs + c * k)
                    })
                    .collect();
                let per_block = offs.len() * k * LANES;
                // A stride-1 conv whose pixels are one chunk wide reads its input in place, a
                // tile being consecutive pixels of one output row; other layers pack panels.
                let direct = (g.stride == 1 && k == *cs)
                    .then(|| kernels::direct_rows(blocks, ow))
                    .flatten();
                let (rows, per_call) = match direct {
                    Some(rows) => (rows, kernels::tile_shape(blocks, pixels).1.min(2)),
                    None => kernels::tile_shape(blocks, pixels),
                };
                let mut panel = Panel::new(rows, k, if direct.is_some() { 0 } else { offs.len() });
                let in_place = Tile::new(&input.data, &offs, rows, k);
                // Slack past the last block's rows, so that every window of ROWS rows is whole.
                let mut acc = vec![0i32; (per_call * rows + ROWS) * LANES];
                let mut bases = [0usize; PANEL_ROWS];
                let mut pixel = cursor(*cs);
                for q0 in (0..pixels).step_by(rows) {
                    let used = rows.min(pixels - q0);
                    bases[..used].fill_with(|| pixel.next_base());
                    let tile = if direct.is_some() {
                        in_place.at(bases[0])
                    } else {
                        panel.pack(&input.data, &bases[..used], &offs);
                        panel.tile()
                    };
                    for b0 in (0..blocks).step_by(per_call) {
                        let calls = per_call.min(blocks - b0);
                        kernels::int_panel(self.isa, &tile, &w[b0 * per_block..], calls, &mut acc);
                        for b in b0..b0 + calls {
                            let width = LANES.min(g.cout - b * LANES);
                            for r0 in (0..used).step_by(ROWS) {
                                let n = ROWS.min(used - r0);
                                let from = ((b - b0) * rows + r0) * LANES;
                                let z: &[i32; ROWS * LANES] =
                                    acc[from..from + ROWS * LANES].try_into().unwrap();
                                let at = (q0 + r0) * stride + b * LANES;
                                match (thresholds, coded, residual, &mut codes) {
                                    (Some(t), _, _, Some(out)) => {
                                        let th = Thresholds {
                                            thr: &t.thr[b * t.n * LANES..(b + 1) * t.n * LANES],
                                            mask: &t.mask[b],
                                            base: &t.base[b],
                                        };
                                        kernels::threshold_block(
                                            self.isa,
                                            &th,
                                            z,
                                            n,
                                            &mut out.data[at..],
                                            stride,
                                            width,
                                        );
                                    }
                                    (
                                        None,
                                        Some(c),
                                        Some(Residual::Codes(shortcut, alpha)),
                                        Some(out),
                                    ) if alpha.to_bits() == c.alpha.to_bits() => {
                                        let per = c.thr.len() / blocks;
                                        let th = CodedThresholds {
                                            thr: &c.thr[b * per..(b + 1) * per],
                                            codes: c.codes,
                                            mask: &c.mask[b],
                                            base: &c.base[b],
                                        };
                                        kernels::coded_threshold_block(
                                            self.isa,
                                            &th,
                                            z,
                                            n,
                                            &shortcut[at..],
                                            &mut out.data[at..],
                                            stride,
                                            width,
                                        );
                                    }
                                    _ => {
                                        for (f, z) in acc_f.iter_mut().zip(z) {
                                            *f = *z as f32;
                                        }
                                        self.epilogue(
                                            b,
                                            &acc_f,
                                            n,
                                            residual,
                                            at,
                                            &mut codes,
                                            &mut floats,
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (Kernel::Float { w, cs }, x) => {
                let values = x.floats();
                assert_eq!(values.cs, *cs, "input channel stride");
                let input = values.padded(g.pad);
                let offs: Vec<usize> = (0..g.kh * g.kw)
                    .flat_map(|t| {
                        let (ky, kx) = (t / g.kw, t % g.kw);
                        (0..g.cin).map(move |c| (ky * wp + kx) * cs + c)
                    })
                    .collect();
                let per_block = offs.len() * LANES;
                if self.isa == Isa::Avx512 && g.stride == 1 && *cs <= 4 && ow >= 8 {
                    // A stem (1–4 input channels, stride 1, output rows of 8 or more: not a
                    // linear layer, whose single output pixel would fill one lane of 16) with
                    // its output pixels in the lanes, on a planar copy of each padded image.
                    let plane = hp * wp;
                    let mut planes = vec![0f32; g.cin * plane];
                    let mut out = [0f32; 16 * LANES];
                    for img in 0..n {
                        let image = &input.data[img * plane * cs..(img + 1) * plane * cs];
                        for (p, px) in image.chunks_exact(*cs).enumerate() {
                            for (c, v) in px[..g.cin].iter().enumerate() {
                                planes[c * plane + p] = *v;
                            }
                        }
                        for oy in 0..oh {
                            for ox0 in (0..ow).step_by(16) {
                                let px = 16.min(ow - ox0);
                                for b in 0..blocks {
                                    let conv = PlaneConv {
                                        planes: &planes,
                                        hp,
                                        wp,
                                        cin: g.cin,
                                        kh: g.kh,
                                        kw: g.kw,
                                        w: &w[b * per_block..(b + 1) * per_block],
                                        width: LANES.min(g.cout - b * LANES),
                                    };
                                    kernels::plane_row(&conv, oy, ox0, px, &mut out);
                                    for r0 in (0..px).step_by(ROWS) {
                                        let z: &[f32; ROWS * LANES] = out
                                            [r0 * LANES..(r0 + ROWS) * LANES]
                                            .try_into()
                                            .unwrap();
                                        let q = (img * oh + oy) * ow + ox0 + r0;
                                        let at = q * stride + b * LANES;
                                        let rows = ROWS.min(px - r0);
                                        self.epilogue(
                                            b,
                                            z,
                                            rows,
                                            residual,
                                            at,
                                            &mut codes,
                                            &mut floats,
                                        );
                                    }
                                }
                            }
                        }
                    }
                } else if blocks < 4 {
                    // Narrow layers (a stem) read the activations in place: a panel would
                    // cost more to pack than it saves.
                    let mut pixel = cursor(*cs);
                    for q0 in (0..pixels).step_by(ROWS) {
                        let rows = ROWS.min(pixels - q0);
                        let mut bases = [0usize; ROWS];
                        bases[..rows].fill_with(|| pixel.next_base());
                        for b in 0..blocks {
                            let block = F32Block {
                                acts: &input.data,
                                bases: &bases[..rows],
                                offs: &offs,
                                w: &w[b * per_block..(b + 1) * per_block],
                            };
                            kernels::f32_block(self.isa, &block, &mut acc_f);
                            let at = q0 * stride + b * LANES;
                            self.epilogue(b, &acc_f, rows, residual, at, &mut codes, &mut floats);
                        }
                    }
                } else {
                    // Wide layers share one packed panel among up to 4 blocks per call.
                    let (rows, per_call) = kernels::tile_shape(blocks, pixels);
                    let mut panel = FloatPanel::new(rows, offs.len());
                    // Slack past the last block's rows: every window of ROWS rows is whole.
                    let mut acc = vec![0f32; (per_call * rows + ROWS) * LANES];
                    let mut bases = [0usize; PANEL_ROWS];
                    let mut pixel = cursor(*cs);
                    for q0 in (0..pixels).step_by(rows) {
                        let used = rows.min(pixels - q0);
                        bases[..used].fill_with(|| pixel.next_base());
                        panel.pack(&input.data, &bases[..used], &offs);
                        for b0 in (0..blocks).step_by(per_call) {
                            let calls = per_call.min(blocks - b0);
                            let wb = &w[b0 * per_block..];
                            kernels::f32_panel(self.isa, &panel, wb, calls, &mut acc);
                            for b in b0..b0 + calls {
                                for r0 in (0..used).step_by(ROWS) {
                                    let from = ((b - b0) * rows + r0) * LANES;
                                    let z: &[f32; ROWS * LANES] =
                                        acc[from..from + ROWS * LANES].try_into().unwrap();
                                    let at = (q0 + r0) * stride + b * LANES;
                                    let n = ROWS.min(used - r0);
                                    self.epilogue(b, z, n, residual, at, &mut codes, &mut floats);
                                }
                            }
                        }
                    }
                }
            }
            (Kernel::Pointwise { cs }, x) => {
                let values = x.floats();
                assert_eq!(values.cs, *cs, "input channel stride");
                assert!(*cs >= blocks * LANES, "whole blocks of channels");
                for q0 in (0..pixels).step_by(ROWS) {
                    let rows = ROWS.min(pixels - q0);
                    for b in 0..blocks {
                        for r in 0..rows {
                            let from = (q0 + r) * cs + b * LANES;
                            acc_f[r * LANES..(r + 1) * LANES]
                                .copy_from_slice(&values.data[from..from + LANES]);
                        }
                        let at = q0 * stride + b * LANES;
                        self.epilogue(b, &acc_f, rows, residual, at, &mut codes, &mut floats);
                    }
                }
            }
            (Kernel::Int { .. }, Act::Floats(_)) => panic!("an integer layer given floats"),
        }
        match (codes, floats, &self.tables.quant) {
            (Some(c), _, Some((q, _, _))) => Act::Codes(c, q.alpha),
            (_, Some(f), _) => Act::Floats(f),
            _ => unreachable!("a layer writes codes or floats"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn epilogue(
        &self,
        b: usize,
        acc: &[f32; ROWS * LANES],
        rows: usize,
        residual: Option<Residual<'_>>,
        at: usize,
        codes: &mut Option<Map<u8>>,
        floats: &mut Option<Map<f32>>,
    ) {
        let stride = self.out_stride();
        let width = LANES.min(self.geo.cout - b * LANES);
        if let (Some(t), Some(c), None) = (&self.key_thresholds, codes.as_mut(), &residual) {
            let th = Thresholds {
                thr: &t.thr[b * t.n * LANES..(b + 1) * t.n * LANES],
                mask: &t.mask[b],
                base: &t.base[b],
            };
            let out = &mut c.data[at..];
            kernels::key_threshold_block(self.isa, &th, acc, rows, out, stride, width);
            return;
        }
        let epi = self.tables.block(b);
        let res = residual.map(|r| match r {
            Residual::Floats(v) => Residual::Floats(&v[at..]),
            Residual::Codes(c, alpha) => Residual::Codes(&c[at..], alpha),
        });
        let out = match (codes, floats) {
            (Some(c), _) => EpiOut::Codes(&mut c.data[at..]),
            (_, Some(f)) => EpiOut::Floats(&mut f.data[at..]),
            _ => unreachable!("a layer writes codes or floats"),
        };
        kernels::float_epi_block(self.isa, &epi, acc, rows, res, out, stride, width);
    }
}

/// Output pixels in order (image, row, column) and where each one's receptive field starts in
/// the padded input, advanced by additions.
struct Cursor {
    oh: usize,
    ow: usize,
    /// Bytes (or values) between horizontally adjacent outputs' fields.
    step: usize,
    /// Between vertically adjacent ones.
    row: usize,
    /// Between images.
    image: usize,
    /// The next pixel: (image, output row, output column).
    at: (usize, usize, usize),
}

impl Cursor {
    fn next_base(&mut self) -> usize {
        let (n, y, x) = self.at;
        let base = n * self.image + y * self.row + x * self.step;
        self.at = if x + 1 < self.ow {
            (n, y, x + 1)
        } else if y + 1 < self.oh {
            (n, y + 1, 0)
        } else {
            (n + 1, 0, 0)
        };
        base
    }
}

/// Per output channel, the smallest and largest sum `z` the layer can produce: codes in
/// `0..=max` meet every weight (zero padding reaches 0).
fn zrange(geo: Geometry, levels: &[i8], max: u8) -> Vec<(i64, i64)> {
    let per = geo.cin * geo.kh * geo.kw;
    (0..geo.cout)
        .map(|co| {
            let w = &levels[co * per..(co + 1) * per];
            let pos: i64 = w.iter().map(|&y| i64::from(y.max(0))).sum();
            let neg: i64 = w.iter().map(|&y| i64::from(y.min(0))).sum();
            (neg * i64::from(max), pos * i64::from(max))
        })
        .collect()
}

/// The thresholds that make [`kernels::threshold_block`] give the float epilogue's code for
/// every reachable `z`, found by binary search over `z` with the float epilogue itself (so
/// they are exact by construction: the epilogue is monotone in `z`, increasing or decreasing
/// with the sign of its slope).
///
/// With `shortcut`, the epilogue adds that value as its residual (a residual layer's thresholds
/// for one shortcut code). `decreasing` (per channel) fixes the direction instead of reading it
/// from the codes at the ends of the range (which cannot tell when the code is constant there).
#[allow(clippy::too_many_arguments)]
fn int_thresholds(
    t: &EpiTables,
    reach: &[(i64, i64)],
    blocks: usize,
    isa: Isa,
    shortcut: Option<f32>,
    decreasing: Option<&[bool]>,
    value: fn(i64) -> f32,
) -> IntThresholds {
    let row = shortcut.map(|v| [v; LANES]);
    let n = t.quant.as_ref().map_or(0, |(q, _, _)| q.levels.len() - 1);
    let mut thr = vec![i32::MAX; blocks * n * LANES];
    let mut mask = vec![[0i32; LANES]; blocks];
    let mut base = vec![[0i32; LANES]; blocks];
    for b in 0..blocks {
        let epi = t.block(b);
        // The code of sums `z` (one per channel of the block).
        let code = |z: [i64; LANES]| -> [i64; LANES] {
            let mut acc = [0f32; ROWS * LANES];
            for j in 0..LANES {
                acc[j] = value(z[j]);
            }
            let mut out = [0u8; LANES];
            kernels::float_epi_block(
                isa,
                &epi,
                &acc,
                1,
                row.as_ref().map(|r| Residual::Floats(r)),
                EpiOut::Codes(&mut out),
                LANES,
                LANES,
            );
            out.map(i64::from)
        };
        let lo: [i64; LANES] = std::array::from_fn(|j| reach.get(b * LANES + j).map_or(0, |r| r.0));
        let hi: [i64; LANES] = std::array::from_fn(|j| reach.get(b * LANES + j).map_or(0, |r| r.1));
        let (at_lo, at_hi) = (code(lo), code(hi));
        for j in 0..LANES {
            let falls = decreasing.map_or(at_hi[j] < at_lo[j], |d| d[b * LANES + j]);
            if falls {
                mask[b][j] = -1;
                base[b][j] = n as i32;
            }
        }
        for level in 1..=n as i64 {
            // Per lane: the boundary of {z : code(z) ≥ level} by bisection.
            let (mut a, mut c) = (lo, hi);
            let decreasing: [bool; LANES] = std::array::from_fn(|j| mask[b][j] == -1);
            // Invariant (increasing): code(c) ≥ level is the answer's side; we search the
            // smallest such z. (Decreasing): the largest such z.
            for _ in 0..40 {
                let mid: [i64; LANES] = std::array::from_fn(|j| a[j] + (c[j] - a[j]) / 2);
                let at = code(mid);
                for j in 0..LANES {
                    if c[j] - a[j] <= 1 {
                        continue;
                    }
                    let reached = at[j] >= level;
                    if decreasing[j] == reached {
                        a[j] = mid[j];
                    } else {
                        c[j] = mid[j];
                    }
                }
            }
            let (ca, cc) = (code(a), code(c));
            for j in 0..LANES {
                let t = if decreasing[j] {
                    // The largest z with code ≥ level; the count of `z ≥ U + 1` is subtracted.
                    let u = if cc[j] >= level {
                        Some(c[j])
                    } else if ca[j] >= level {
                        Some(a[j])
                    } else {
                        None
                    };
                    match u {
                        None => i32::MIN,
                        Some(u) if u >= hi[j] => i32::MAX,
                        Some(u) => (u + 1) as i32,
                    }
                } else {
                    let m = if ca[j] >= level {
                        Some(a[j])
                    } else if cc[j] >= level {
                        Some(c[j])
                    } else {
                        None
                    };
                    match m {
                        None => i32::MAX,
                        Some(m) if m <= lo[j] => i32::MIN,
                        Some(m) => m as i32,
                    }
                };
                thr[(b * n + level as usize - 1) * LANES + j] = t;
            }
        }
    }
    IntThresholds { thr, mask, base, n }
}

/// The float of an order key ([`kernels::float_key`] is its own inverse on the bits).
fn key_float(k: i64) -> f32 {
    let k = k as i32;
    f32::from_bits((k ^ ((k >> 31) & 0x7FFF_FFFF)) as u32)
}

/// A float layer's epilogue (bias, batch norm, ReLU, an unsigned-grid quantizer; no shortcut)
/// as per-channel thresholds on the order keys of its f32 sums: the epilogue is monotone in the
/// sum, so the thresholds found by bisection over every finite f32 with the float epilogue
/// itself give its codes exactly (NaN sums, which finite inputs never give, are not covered).
fn key_thresholds(
    tables: &EpiTables,
    cout: usize,
    blocks: usize,
    isa: Isa,
    codes_out: bool,
    epi: &Epilogue,
) -> Option<IntThresholds> {
    let finite = (
        i64::from(kernels::float_key(f32::MIN)),
        i64::from(kernels::float_key(f32::MAX)),
    );
    (codes_out && !epi.residual).then(|| {
        int_thresholds(
            tables,
            &vec![finite; cout],
            blocks,
            isa,
            None,
            None,
            key_float,
        )
    })
}

/// `dst[i] = max(dst[i], src[i])`, 16 at a time (a select, not a branch: it vectorises).
fn max_into<T: Copy + PartialOrd>(dst: &mut [T], src: &[T]) {
    let mut d = dst.chunks_exact_mut(LANES);
    let mut s = src.chunks_exact(LANES);
    for (o, v) in (&mut d).zip(&mut s) {
        for i in 0..LANES {
            o[i] = if v[i] > o[i] { v[i] } else { o[i] };
        }
    }
    for (o, &v) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *o = if v > *o { v } else { *o };
    }
}

/// Max pooling, `k × k`, stride `s`, padding `p` (padded positions never win), on codes or
/// floats.
pub fn max_pool(x: &Act, k: usize, s: usize, p: usize) -> Act {
    fn pool<T: Pooled + PartialOrd>(m: &Map<T>, k: usize, s: usize, p: usize) -> Map<T> {
        let oh = (m.h + 2 * p - k) / s + 1;
        let ow = (m.w + 2 * p - k) / s + 1;
        let mut out = Map::zeros(m.n, oh, ow, m.c, m.cs);
        if p == 0 {
            // Every window lies inside the map: its taps are fixed offsets from its corner.
            let taps: Vec<usize> = (0..k * k).map(|t| ((t / k) * m.w + t % k) * m.cs).collect();
            for (q, dst) in out.data.chunks_exact_mut(m.cs).enumerate() {
                let (n, rest) = (q / (oh * ow), q % (oh * ow));
                let corner = ((n * m.h + rest / ow * s) * m.w + rest % ow * s) * m.cs;
                dst.copy_from_slice(&m.data[corner..corner + m.cs]);
                for &t in &taps[1..] {
                    max_into(dst, &m.data[corner + t..corner + t + m.cs]);
                }
            }
            return out;
        }
        for n in 0..m.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let dst = ((n * oh + oy) * ow + ox) * m.cs;
                    let out = &mut out.data[dst..dst + m.cs];
                    let mut first = true;
                    for ky in 0..k {
                        let Some(y) = (oy * s + ky).checked_sub(p).filter(|&y| y < m.h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(x) = (ox * s + kx).checked_sub(p).filter(|&x| x < m.w) else {
                                continue;
                            };
                            let src = ((n * m.h + y) * m.w + x) * m.cs;
                            let src = &m.data[src..src + m.cs];
                            if first {
                                out.copy_from_slice(src);
                                first = false;
                            } else {
                                max_into(out, src);
                            }
                        }
                    }
                }
            }
        }
        out
    }
    match x {
        Act::Codes(m, a) => Act::Codes(pool(m, k, s, p), *a),
        Act::Floats(m) => Act::Floats(pool(m, k, s, p)),
    }
}

/// Global average pooling to a `1 × 1` map (the mean of each channel's values, summed in
/// pixel order).
pub fn global_avg_pool(x: &Act) -> Map<f32> {
    let m = x.floats();
    let hw = m.h * m.w;
    let mut out = Map::zeros(m.n, 1, 1, m.c, m.cs);
    for n in 0..m.n {
        for c in 0..m.cs {
            let sum: f32 = (0..hw).map(|i| m.data[(n * hw + i) * m.cs + c]).sum();
            out.data[n * m.cs + c] = sum / hw as f32;
        }
    }
    out
}

/// Adaptive average pooling to `oh × ow` (PyTorch's bins: rows `⌊i·h/oh⌋..⌈(i+1)·h/oh⌉`, the
/// mean summed in pixel order). A map already `oh × ow` passes through unchanged (codes stay
/// codes).
pub fn adaptive_avg_pool(x: &Act, oh: usize, ow: usize) -> Act {
    let (_, h, w, _) = x.dims();
    if (h, w) == (oh, ow) {
        return x.clone();
    }
    let m = x.floats();
    let mut out = Map::zeros(m.n, oh, ow, m.c, m.cs);
    let bins = |i: usize, o: usize, s: usize| (i * s / o, ((i + 1) * s).div_ceil(o));
    for n in 0..m.n {
        for oy in 0..oh {
            let (y0, y1) = bins(oy, oh, h);
            for ox in 0..ow {
                let (x0, x1) = bins(ox, ow, w);
                let count = ((y1 - y0) * (x1 - x0)) as f32;
                let dst = ((n * oh + oy) * ow + ox) * m.cs;
                for c in 0..m.cs {
                    let mut sum = 0f32;
                    for y in y0..y1 {
                        for x in x0..x1 {
                            sum += m.data[((n * h + y) * w + x) * m.cs + c];
                        }
                    }
                    out.data[dst + c] = sum / count;
                }
            }
        }
    }
    Act::Floats(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A float layer's epilogue as thresholds on its sums' order keys gives the float epilogue's
    /// codes: random biases, batch norms (slopes of either sign, and 0), 1–4-bit quantizers with
    /// uneven thresholds; sums spread over many magnitudes, ±0, and the floats just below, at
    /// and above every threshold; every path this CPU has.
    #[test]
    fn key_thresholds_give_the_float_epilogues_codes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let cout: usize = 20;
        let blocks = cout.div_ceil(LANES);
        for case in 0..12 {
            let bits = 1 + case % 4;
            let n = (1 << bits) - 1;
            let mut thresholds: Vec<f32> =
                (0..n).map(|_| (rand() * n as f64 * 1.3) as f32).collect();
            thresholds.sort_by(f32::total_cmp);
            let per = |f: &mut dyn FnMut() -> f32| (0..cout).map(|_| f()).collect::<Vec<f32>>();
            let epi = Epilogue {
                bias: Some(per(&mut || (rand() * 2.0 - 1.0) as f32)),
                bn: Some(BatchNorm {
                    gamma: per(&mut || match (rand() * 5.0) as u32 {
                        0 => 0.0,
                        1 | 2 => -(rand() as f32) * 2.0,
                        _ => rand() as f32 * 2.0,
                    }),
                    beta: per(&mut || (rand() * 2.0 - 1.0) as f32),
                    mean: per(&mut || (rand() * 2.0 - 1.0) as f32),
                    var: per(&mut || (rand() * 3.0 + 0.01) as f32),
                    epsilon: 1e-5,
                }),
                relu: true,
                quant: Some(ActQuant {
                    alpha: 0.37,
                    beta: (0.5 + rand() * 3.0) as f32,
                    thresholds,
                    levels: (0..=n).map(|y| y as f32).collect(),
                }),
                ..Epilogue::default()
            };
            let tables = EpiTables::new(&epi, None, blocks);
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let t = key_thresholds(&tables, cout, blocks, isa, true, &epi).unwrap();
                let mut sums: Vec<f32> = vec![0.0, -0.0, f32::MAX, f32::MIN, 1e-30, -1e-30];
                for _ in 0..300 {
                    let mag = 10f64.powf(rand() * 8.0 - 4.0);
                    sums.push((if rand() < 0.5 { -mag } else { mag }) as f32);
                }
                for &k in &t.thr {
                    if k != i32::MIN && k != i32::MAX {
                        for d in [-1, 0, 1] {
                            sums.push(key_float(i64::from(k) + d));
                        }
                    }
                }
                for chunk in sums.chunks(ROWS) {
                    for b in 0..blocks {
                        let width = LANES.min(cout - b * LANES);
                        let mut acc = [0f32; ROWS * LANES];
                        for (r, v) in chunk.iter().enumerate() {
                            acc[r * LANES..(r + 1) * LANES].fill(*v);
                        }
                        let rows = chunk.len();
                        let mut want = vec![0u8; ROWS * LANES];
                        kernels::float_epi_block(
                            isa,
                            &tables.block(b),
                            &acc,
                            rows,
                            None,
                            EpiOut::Codes(&mut want),
                            LANES,
                            width,
                        );
                        let th = Thresholds {
                            thr: &t.thr[b * t.n * LANES..(b + 1) * t.n * LANES],
                            mask: &t.mask[b],
                            base: &t.base[b],
                        };
                        let mut got = vec![0u8; ROWS * LANES];
                        kernels::key_threshold_block(isa, &th, &acc, rows, &mut got, LANES, width);
                        for r in 0..rows {
                            for j in 0..width {
                                assert_eq!(
                                    got[r * LANES + j],
                                    want[r * LANES + j],
                                    "case {case}, {isa}, sum {}, channel {}",
                                    chunk[r],
                                    b * LANES + j
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A map made after a filled one was dropped holds zeros (the process's pool hands the
    /// buffer back; other tests share it, so the reuse itself is checked on a pool of its own).
    #[test]
    fn pooled_maps_come_back_zeroed() {
        let mut m = Map::<f32>::zeros(3, 5, 7, 1000, 1024);
        m.data.fill(2.5);
        drop(m);
        let again = Map::<f32>::zeros(3, 5, 7, 1000, 1000);
        assert_eq!(again.data.len(), 3 * 5 * 7 * 1000);
        assert!(
            again.data.iter().all(|&v| v == 0.0),
            "a reused buffer is zeroed"
        );
    }

    /// A padded copy has zeros around each image and the map inside, in a buffer reused from
    /// maps that held other values.
    #[test]
    fn padded_maps_are_zero_around_each_image_in_a_reused_buffer() {
        let (n, h, w, cs) = (3, 5, 4, 8);
        for pad in [1, 2, 3] {
            let (hp, wp) = (h + 2 * pad, w + 2 * pad);
            // Leave dirty buffers of every size around the one the copy takes.
            for extra in 0..4 {
                let mut junk = Map::<u8>::zeros(n, hp, wp, cs, cs + extra);
                junk.data.fill(9);
            }
            let mut m = Map::<u8>::zeros(n, h, w, cs, cs);
            for (i, v) in m.data.iter_mut().enumerate() {
                *v = 1 + (i % 200) as u8;
            }
            let p = m.padded(pad);
            for img in 0..n {
                for y in 0..hp {
                    for x in 0..wp {
                        for c in 0..cs {
                            let got = p.data[((img * hp + y) * wp + x) * cs + c];
                            let inside = (pad..pad + h).contains(&y) && (pad..pad + w).contains(&x);
                            let want = if inside {
                                m.data[((img * h + y - pad) * w + x - pad) * cs + c]
                            } else {
                                0
                            };
                            assert_eq!(got, want, "pad {pad}, image {img}, ({y}, {x}), {c}");
                        }
                    }
                }
            }
        }
    }

    /// The pool hands out the smallest kept buffer that fits, zeroed; keeps at most
    /// [`POOLED`] buffers, replacing the smallest by a larger one.
    #[test]
    fn the_pool_hands_out_the_smallest_buffer_that_fits() {
        let pool: Pool<u8> = Pool::new(Vec::new());
        let filled = |len: usize| vec![7u8; len];
        let (small, large) = (filled(100), filled(1000));
        let (small_ptr, large_ptr) = (small.as_ptr(), large.as_ptr());
        give(&pool, large);
        give(&pool, small);
        let a = take(&pool, 50);
        assert_eq!((a.as_ptr(), a.len()), (small_ptr, 50));
        assert!(a.iter().all(|&v| v == 0));
        let b = take(&pool, 50);
        assert_eq!(b.as_ptr(), large_ptr, "the only one left that fits");
        let c = take(&pool, 5000);
        assert_eq!(c.len(), 5000, "nothing fits: a new buffer");
        for len in 1..=POOLED + 1 {
            give(&pool, filled(len));
        }
        give(&pool, c);
        let kept: Vec<usize> = pool.lock().unwrap().iter().map(Vec::capacity).collect();
        assert_eq!(kept.len(), POOLED);
        assert!(kept.contains(&5000) && !kept.contains(&1), "{kept:?}");
    }

    /// Max pooling against its definition (the largest value in each window's part inside the
    /// map), with and without padding, on codes and floats, 20 channels (a block of 16 and 4).
    #[test]
    fn max_pooling_takes_each_windows_largest_value() {
        let (h, w, c) = (7, 6, 20);
        let mut m = Map::<u8>::zeros(2, h, w, c, c);
        for (i, v) in m.data.iter_mut().enumerate() {
            *v = ((i * 37 + i / 7) % 251) as u8;
        }
        for (k, st, p) in [(2, 2, 0), (3, 2, 1), (3, 1, 0)] {
            let Act::Codes(out, _) = max_pool(&Act::Codes(m.clone(), 1.0), k, st, p) else {
                panic!("codes in, codes out")
            };
            let Act::Floats(fout) = max_pool(
                &Act::Floats(Act::Codes(m.clone(), 1.0).floats().into_owned()),
                k,
                st,
                p,
            ) else {
                panic!("floats in, floats out")
            };
            let (oh, ow) = ((h + 2 * p - k) / st + 1, (w + 2 * p - k) / st + 1);
            assert_eq!((out.h, out.w), (oh, ow));
            for n in 0..2 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ch in 0..c {
                            let mut best = 0u8;
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (y, x) = (
                                        (oy * st + ky) as i64 - p as i64,
                                        (ox * st + kx) as i64 - p as i64,
                                    );
                                    if (0..h as i64).contains(&y) && (0..w as i64).contains(&x) {
                                        let at = ((n * h + y as usize) * w + x as usize) * c + ch;
                                        best = best.max(m.data[at]);
                                    }
                                }
                            }
                            let at = ((n * oh + oy) * ow + ox) * c + ch;
                            assert_eq!(out.data[at], best, "k {k} s {st} p {p}");
                            assert_eq!(fout.data[at], f32::from(best), "k {k} s {st} p {p}");
                        }
                    }
                }
            }
        }
    }

    /// PyTorch's bins for 3 → 2: rows and columns `0..2` and `1..3` (overlapping), so the
    /// output means are of the 2×2 corners: with values 1..=9 row by row,
    /// (1+2+4+5)/4 = 3, (2+3+5+6)/4 = 4, (4+5+7+8)/4 = 6, (5+6+8+9)/4 = 7. A 1×1 map grows to
    /// copies of its value; a map of the output size passes through as it is (codes stay codes).
    #[test]
    fn adaptive_average_pooling_uses_pytorchs_bins() {
        let mut m = Map::<f32>::zeros(1, 3, 3, 1, 1);
        m.data = (1..=9).map(|v| v as f32).collect();
        let Act::Floats(out) = adaptive_avg_pool(&Act::Floats(m), 2, 2) else {
            panic!("floats in, floats out")
        };
        assert_eq!(out.data, [3.0, 4.0, 6.0, 7.0]);
        let mut one = Map::<u8>::zeros(1, 1, 1, 1, 1);
        one.data[0] = 3;
        let Act::Floats(grown) = adaptive_avg_pool(&Act::Codes(one.clone(), 0.5), 2, 3) else {
            panic!("codes averaged are floats")
        };
        assert_eq!(grown.data, [1.5; 6]);
        let same = Act::Codes(one, 0.5);
        assert_eq!(adaptive_avg_pool(&same, 1, 1), same);
    }
}
