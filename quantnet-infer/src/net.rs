//! The networks: a `.qnet` file's tensors packed into layers, per architecture, and their
//! forward pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{self, CodedEntry, FloatEntry, Manifest};
use crate::kernels::Isa;
use crate::layer::{
    Act, ActQuant, BatchNorm, Conv, Epilogue, Geometry, Input, Map, Weights, adaptive_avg_pool,
    global_avg_pool, max_pool,
};

/// The input a model was built for (the manifest's `input`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    /// Image channels.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
}

/// What a `.qnet` file says about its model (the manifest's top-level fields), as this crate
/// reads it: the architecture by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The architecture (`lenet5`, `resnet20`, ...).
    pub arch: String,
    /// Its input.
    pub input: InputShape,
    /// The data set it was trained on, if known.
    #[serde(default)]
    pub dataset: Option<String>,
    /// The activation levels, if activations are quantized.
    #[serde(default)]
    pub acts: Option<Vec<f32>>,
}

/// How the engine computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Quantized layers on integer codes (the point of the engine).
    Int,
    /// Every layer on floats with the decoded weights, through the same loops and layouts:
    /// what leaving Burn buys without low-bit arithmetic.
    F32,
}

impl Mode {
    /// `int` or `f32`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Int => "int",
            Mode::F32 => "f32",
        }
    }
}

/// The tensors of a file by module path without the model's name (`conv2.conv.weight`), and
/// which were used.
struct Store<'a> {
    floats: BTreeMap<String, &'a FloatEntry>,
    coded: BTreeMap<String, &'a CodedEntry>,
    payload: &'a [u8],
    path: PathBuf,
    used: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

fn strip(path: &str) -> String {
    path.split_once('.')
        .map_or(path, |(_, rest)| rest)
        .to_string()
}

impl<'a> Store<'a> {
    fn new(m: &'a Manifest<Header>, payload: &'a [u8], path: &Path) -> Self {
        Self {
            floats: m.floats.iter().map(|f| (strip(&f.path), f)).collect(),
            coded: m.coded.iter().map(|c| (strip(&c.path), c)).collect(),
            payload,
            path: path.to_path_buf(),
            used: Default::default(),
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.floats.contains_key(key) || self.coded.contains_key(key)
    }

    fn float(&self, key: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let f = self.floats.get(key)?;
        self.used.borrow_mut().insert(key.to_string());
        Some((f.shape.clone(), format::floats(f, self.payload)))
    }

    fn need(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.float(key)
            .ok_or_else(|| self.corrupt(format!("the file has no tensor {key}")))
    }

    /// A weight `[out][in][kh][kw]` (conv) or `[in][out]` (linear), as levels when they are
    /// integers in −128..=127, as floats otherwise; a linear layer's weight is returned in
    /// conv layout for an input map of `map` (h, w, c), flattened as NCHW.
    fn weight(
        &self,
        key: &str,
        map: Option<(usize, usize, usize)>,
    ) -> Result<(Vec<usize>, Weights)> {
        let (shape, w) = if let Some(c) = self.coded.get(key) {
            self.used.borrow_mut().insert(key.to_string());
            let integral = c
                .levels
                .iter()
                .all(|&y| y.fract() == 0.0 && (-128.0..=127.0).contains(&y));
            let w = if integral {
                let codes = format::codes(c, self.payload)?;
                let out_axis = if c.shape.len() == 2 { 1 } else { 0 };
                let count = c.shape[out_axis];
                let alpha = match &c.channel_scales {
                    Some(s) if s.axis == out_axis => s.alpha.clone(),
                    Some(s) => {
                        return Err(Error::Unsupported(format!(
                            "{key}: per-channel scales along axis {} (the engine takes them along \
                             the output channels, axis {out_axis})",
                            s.axis
                        )));
                    }
                    None => vec![c.alpha; count],
                };
                Weights::Levels {
                    levels: codes.iter().map(|&k| c.levels[k as usize] as i8).collect(),
                    alpha,
                }
            } else {
                Weights::Float(format::decode(c, self.payload)?)
            };
            (c.shape.clone(), w)
        } else {
            let (shape, v) = self.need(key)?;
            (shape, Weights::Float(v))
        };
        let Some((h, wd, ch)) = map else {
            return Ok((shape, w));
        };
        if shape.len() != 2 || shape[0] != h * wd * ch {
            return Err(self.corrupt(format!(
                "{key}: shape {shape:?} does not take a {ch}×{h}×{wd} input"
            )));
        }
        let (din, dout) = (shape[0], shape[1]);
        // [in][out] with in = (c, y, x) → [out][c][y][x]: the same index order, transposed.
        let transpose =
            |n: usize| -> Vec<usize> { (0..n).map(|i| (i % din) * dout + i / din).collect() };
        let order = transpose(din * dout);
        let w = match w {
            Weights::Float(v) => Weights::Float(order.iter().map(|&i| v[i]).collect()),
            Weights::Levels { levels, alpha } => Weights::Levels {
                levels: order.iter().map(|&i| levels[i]).collect(),
                alpha,
            },
        };
        Ok((vec![dout, ch, h, wd], w))
    }

    fn bn(&self, prefix: &str, epsilon: f64) -> Result<BatchNorm> {
        Ok(BatchNorm {
            gamma: self.need(&format!("{prefix}.gamma"))?.1,
            beta: self.need(&format!("{prefix}.beta"))?.1,
            mean: self.need(&format!("{prefix}.running_mean"))?.1,
            var: self.need(&format!("{prefix}.running_var"))?.1,
            epsilon,
        })
    }

    /// The activation quantizer of slot `prefix`, if it has one.
    fn act(&self, prefix: &str) -> Result<Option<ActQuant>> {
        let key = |p: &str| format!("{prefix}.quantizer.{p}");
        if !self.has(&key("alpha")) {
            return Ok(None);
        }
        let one = |p: &str| -> Result<f32> {
            let (_, v) = self.need(&key(p))?;
            match v.as_slice() {
                [x] => Ok(x.abs()),
                _ => Err(Error::Unsupported(format!(
                    "{}: a per-channel activation quantizer",
                    key(p)
                ))),
            }
        };
        let q = ActQuant {
            alpha: one("alpha")?,
            beta: one("beta")?,
            thresholds: self.need(&key("thresholds"))?.1,
            levels: self.need(&key("levels"))?.1,
        };
        if q.thresholds.len() + 1 != q.levels.len() {
            return Err(self.corrupt(format!("{prefix}: thresholds and levels disagree")));
        }
        Ok(Some(q))
    }

    fn unused(&self) -> Option<String> {
        let used = self.used.borrow();
        self.floats
            .keys()
            .chain(self.coded.keys())
            .find(|k| !used.contains(*k))
            .cloned()
    }
}

/// A layer as the file describes it, before packing: what an exporter needs.
#[derive(Clone, Debug)]
pub(crate) struct Source {
    /// Its shape (a linear layer's is a conv's as large as its input map).
    pub(crate) geo: Geometry,
    /// Its weight in conv layout `[out][in][kh][kw]`; `None` for a pointwise epilogue.
    pub(crate) weights: Option<Weights>,
    /// What follows the sums.
    pub(crate) epi: Epilogue,
    /// A linear layer: its input is flattened (NCHW order).
    pub(crate) linear: bool,
}

/// Builds layers in forward order, threading each layer's output layout into the next.
struct Builder<'a> {
    store: Store<'a>,
    isa: Isa,
    mode: Mode,
    names: Vec<String>,
    /// The layers as described, kept when `keep` (for an exporter).
    sources: Vec<Source>,
    keep: bool,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        key: &str,
        input: Input,
        (k, stride, pad): (usize, usize, usize),
        bias: bool,
        epi: Epilogue,
    ) -> Result<Conv> {
        let (shape, w) = self.store.weight(&format!("{key}.weight"), None)?;
        self.finish(name, key, input, shape, w, (k, stride, pad), bias, epi)
    }

    /// The epilogue `epi` alone over a `channels`-channel map.
    fn pointwise(&mut self, name: &str, channels: usize, input: Input, epi: Epilogue) -> Conv {
        let mut conv = Conv::pointwise(channels, &epi, input, self.isa, self.mode == Mode::Int);
        self.record(name, &mut conv, None, epi, false);
        conv
    }

    /// Numbers `conv` as the next layer, and keeps its description when asked to.
    fn record(
        &mut self,
        name: &str,
        conv: &mut Conv,
        weights: Option<Weights>,
        epi: Epilogue,
        linear: bool,
    ) {
        conv.id = self.names.len();
        self.names.push(name.to_string());
        if self.keep {
            self.sources.push(Source {
                geo: conv.geo,
                weights,
                epi,
                linear,
            });
        }
    }

    /// A linear layer on an `h × w × c` map.
    fn linear(
        &mut self,
        name: &str,
        key: &str,
        input: Input,
        map: (usize, usize, usize),
        bias: bool,
        epi: Epilogue,
    ) -> Result<Conv> {
        let (shape, w) = self.store.weight(&format!("{key}.weight"), Some(map))?;
        self.finish(name, key, input, shape, w, (0, 1, 0), bias, epi)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        name: &str,
        key: &str,
        input: Input,
        shape: Vec<usize>,
        w: Weights,
        (k, stride, pad): (usize, usize, usize),
        bias: bool,
        mut epi: Epilogue,
    ) -> Result<Conv> {
        let [cout, cin, kh, kw] = shape[..] else {
            return Err(self
                .store
                .corrupt(format!("{key}: shape {shape:?} is not a conv's")));
        };
        if k > 0 && (kh != k || kw != k) {
            return Err(self
                .store
                .corrupt(format!("{key}: a {kh}×{kw} kernel, not {k}×{k}")));
        }
        if bias {
            epi.bias = Some(self.store.need(&format!("{key}.bias"))?.1);
        }
        let geo = Geometry {
            cin,
            cout,
            kh,
            kw,
            stride,
            pad,
        };
        let mut conv = Conv::new(geo, &w, &epi, input, self.isa, self.mode == Mode::Int);
        let weights = self.keep.then_some(w);
        self.record(name, &mut conv, weights, epi, k == 0);
        Ok(conv)
    }
}

/// A residual block.
#[derive(Clone, Debug)]
struct Block {
    /// The convs of the main path (the last has the residual epilogue).
    convs: Vec<Conv>,
    downsample: Option<Conv>,
}

/// What a network's forward pass does at each step ([`Engine::run_net`]): the engine computes
/// on maps ([`Compute`]), an exporter records a graph.
pub(crate) trait Exec {
    /// What flows between the steps.
    type T;
    /// A conv (or linear or pointwise layer) on `x`, with the shortcut `residual` if it adds one.
    fn conv(&mut self, conv: &Conv, x: &Self::T, residual: Option<&Self::T>) -> Self::T;
    /// Max pooling, `k × k` windows, stride `s`, padding `p`.
    fn max_pool(&mut self, x: &Self::T, k: usize, s: usize, p: usize) -> Self::T;
    /// The mean of each channel.
    fn global_avg_pool(&mut self, x: &Self::T) -> Self::T;
    /// Adaptive average pooling to `h × w`.
    fn adaptive_avg_pool(&mut self, x: &Self::T, h: usize, w: usize) -> Self::T;
}

/// The engine's forward: every conv through `F` (which may time or record it).
struct Compute<F>(F);

impl<F: FnMut(&Conv, &Act, Option<&Act>) -> Act> Exec for Compute<F> {
    type T = Act;
    fn conv(&mut self, conv: &Conv, x: &Act, residual: Option<&Act>) -> Act {
        (self.0)(conv, x, residual)
    }
    fn max_pool(&mut self, x: &Act, k: usize, s: usize, p: usize) -> Act {
        max_pool(x, k, s, p)
    }
    fn global_avg_pool(&mut self, x: &Act) -> Act {
        Act::Floats(global_avg_pool(x))
    }
    fn adaptive_avg_pool(&mut self, x: &Act, h: usize, w: usize) -> Act {
        adaptive_avg_pool(x, h, w)
    }
}

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Net {
    Lenet {
        conv1: Conv,
        conv2: Conv,
        fc: [Conv; 3],
    },
    Fc {
        hidden: Vec<Conv>,
        out: Conv,
    },
    Residual {
        stem: Conv,
        pool: bool,
        blocks: Vec<Block>,
        fc: Conv,
    },
    /// VGG-small: convs, every second one followed by a 2×2 max pool and then its batch norm,
    /// ReLU and quantizer (`post`); a linear layer.
    Vgg {
        convs: Vec<(Conv, Option<Conv>)>,
        fc: Conv,
    },
    /// AlexNet-BN: five convs (a 3×3 stride-2 max pool after the quantizer of the first,
    /// second and fifth: it commutes with ReLU and the quantizer), an adaptive average pool to
    /// 6×6, three linear layers.
    Alexnet {
        convs: Vec<Conv>,
        fc: [Conv; 3],
    },
}

/// A loaded model, ready to run.
#[derive(Clone, Debug)]
pub struct Engine {
    header: Header,
    net: Net,
    isa: Isa,
    mode: Mode,
    pub(crate) names: Vec<String>,
    /// The layers as described (empty unless loaded for an exporter).
    pub(crate) sources: Vec<Source>,
}

/// Per layer: its name, whether it runs on integers, its path and multiply-adds per image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// The layer (`conv2`, `block3.conv1`, `fc`).
    pub name: String,
    /// Whether it computes on integer codes.
    pub int: bool,
    /// The instruction-set path of its sums.
    pub isa: Isa,
    /// Multiply-adds per image.
    pub macs: usize,
}

const BN_EPS: f64 = 1e-5;

impl Engine {
    /// Reads and packs a `.qnet` file.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Corrupt`] as [`format::parse`] or when the tensors do not fit
    /// the architecture; [`Error::Unsupported`] for an architecture the engine does not run.
    pub fn load(path: &Path, isa: Isa, mode: Mode) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path, isa, mode)
    }

    /// As [`Engine::load`], from the file's bytes (`path` names it in errors).
    ///
    /// # Errors
    /// As [`Engine::load`].
    pub fn from_bytes(bytes: &[u8], path: &Path, isa: Isa, mode: Mode) -> Result<Self> {
        Self::build(bytes, path, isa, mode, false)
    }

    /// As [`Engine::from_bytes`], keeping each layer's description when `keep`.
    pub(crate) fn build(
        bytes: &[u8],
        path: &Path,
        isa: Isa,
        mode: Mode,
        keep: bool,
    ) -> Result<Self> {
        let (manifest, payload) = format::parse::<Header>(bytes, path)?;
        let header = manifest.header.clone();
        let mut b = Builder {
            store: Store::new(&manifest, payload, path),
            isa,
            mode,
            names: Vec::new(),
            sources: Vec::new(),
            keep,
        };
        let input = header.input;
        let image = Input::Floats { cs: input.channels };
        let net = match header.arch.as_str() {
            "lenet5" => lenet(&mut b, input, image)?,
            "tfc" | "sfc" | "lfc" => fc(&mut b, input, image)?,
            "resnet20" | "resnet18" | "resnet50" => resnet(&mut b, &header.arch, image)?,
            "vgg-small" => vgg(&mut b, input, image)?,
            "alexnet-bn" => alexnet(&mut b, input, image)?,
            other => {
                return Err(Error::Unsupported(format!(
                    "the integer engine runs lenet5, tfc, sfc, lfc, vgg-small, alexnet-bn, \
                     resnet20, resnet18 and resnet50; this file holds {other}"
                )));
            }
        };
        if let Some(extra) = b.store.unused() {
            return Err(b.store.corrupt(format!(
                "the {} engine has no place for the tensor {extra}",
                header.arch
            )));
        }
        Ok(Self {
            header,
            net,
            isa,
            mode,
            names: b.names,
            sources: b.sources,
        })
    }

    /// The model's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The instruction-set path asked for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Integer or f32.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn convs(&self) -> Vec<&Conv> {
        match &self.net {
            Net::Lenet { conv1, conv2, fc } => {
                let mut v = vec![conv1, conv2];
                v.extend(fc.iter());
                v
            }
            Net::Fc { hidden, out } => hidden.iter().chain(std::iter::once(out)).collect(),
            Net::Residual {
                stem, blocks, fc, ..
            } => {
                let mut v = vec![stem];
                for bl in blocks {
                    let (last, first) = bl.convs.split_last().expect("a block has convs");
                    v.extend(first.iter());
                    v.extend(bl.downsample.iter());
                    v.push(last);
                }
                v.push(fc);
                v
            }
            Net::Alexnet { convs, fc } => convs.iter().chain(fc.iter()).collect(),
            Net::Vgg { convs, fc } => {
                let mut v = Vec::new();
                for (c, post) in convs {
                    v.push(c);
                    v.extend(post.iter());
                }
                v.push(fc);
                v
            }
        }
    }

    /// The layers, in the order they were packed, with multiply-adds per image.
    pub fn layers(&self) -> Vec<LayerInfo> {
        // Input sizes per layer, from one forward pass of a single zero image.
        let sizes = self.input_sizes();
        self.convs()
            .into_iter()
            .zip(&self.names)
            .zip(sizes)
            .map(|((c, name), (h, w))| LayerInfo {
                name: name.clone(),
                int: c.is_int(),
                isa: c.isa(),
                macs: c.macs(h, w),
            })
            .collect()
    }

    fn input_sizes(&self) -> Vec<(usize, usize)> {
        let i = self.header.input;
        let mut sizes = Vec::new();
        let mut record = |c: &Conv, x: &Act, r: Option<&Act>| {
            let (_, h, w, _) = x.dims();
            sizes.push((h, w));
            c.forward(x, r)
        };
        let x = Act::Floats(Map::zeros(1, i.height, i.width, i.channels, i.channels));
        self.run_net(x, &mut Compute(&mut record));
        sizes
    }

    /// Per layer, the median time of its forward over `runs` passes of `batch` zero images (one
    /// thread): where the time goes.
    ///
    /// # Errors
    /// None in practice (the input is made to fit).
    pub fn profile(
        &self,
        batch: usize,
        runs: usize,
    ) -> Result<Vec<(LayerInfo, std::time::Duration)>> {
        let i = self.header.input;
        let mut times: Vec<Vec<std::time::Duration>> = Vec::new();
        for _ in 0..runs.max(1) {
            let mut k = 0;
            let mut record = |c: &Conv, x: &Act, r: Option<&Act>| {
                let started = std::time::Instant::now();
                let out = c.forward(x, r);
                if times.len() <= k {
                    times.push(Vec::new());
                }
                times[k].push(started.elapsed());
                k += 1;
                out
            };
            let x = Act::Floats(Map::zeros(batch, i.height, i.width, i.channels, i.channels));
            self.run_net(x, &mut Compute(&mut record));
        }
        Ok(self
            .layers()
            .into_iter()
            .zip(times)
            .map(|(l, mut t)| {
                t.sort();
                (l, t[t.len() / 2])
            })
            .collect())
    }

    /// Class scores for `n` images, NCHW f32 (normalised as in training), `[n][classes]`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] if `images` does not hold `n` images of the model's input shape.
    pub fn forward(&self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        let i = self.header.input;
        let per = i.channels * i.height * i.width;
        if images.len() != n * per {
            return Err(Error::Unsupported(format!(
                "{} values are not {n} images of {}×{}×{}",
                images.len(),
                i.channels,
                i.height,
                i.width
            )));
        }
        let mut x = Map::zeros(n, i.height, i.width, i.channels, i.channels);
        let hw = i.height * i.width;
        for img in 0..n {
            for c in 0..i.channels {
                for p in 0..hw {
                    x.data[(img * hw + p) * i.channels + c] =
                        images[(img * i.channels + c) * hw + p];
                }
            }
        }
        let out = self.run_net(
            Act::Floats(x),
            &mut Compute(|c: &Conv, x: &Act, r: Option<&Act>| c.forward(x, r)),
        );
        let out = out.floats();
        Ok((0..n)
            .flat_map(|img| out.data[img * out.cs..img * out.cs + i.classes].to_vec())
            .collect())
    }

    /// [`Engine::forward`] with the batch split over `threads` threads (whole images each).
    ///
    /// # Errors
    /// As [`Engine::forward`].
    pub fn forward_threads(&self, images: &[f32], n: usize, threads: usize) -> Result<Vec<f32>> {
        let threads = threads.clamp(1, n.max(1));
        if threads == 1 {
            return self.forward(images, n);
        }
        let per = images.len() / n.max(1);
        let chunk = n.div_ceil(threads);
        let parts: Vec<Result<Vec<f32>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|start| {
                    let m = chunk.min(n - start);
                    let slice = &images[start * per..(start + m) * per];
                    s.spawn(move || self.forward(slice, m))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("an inference thread panicked"))
                .collect()
        });
        let mut out = Vec::with_capacity(n * self.header.input.classes);
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }

    /// The predicted class of each of `n` images (the first largest score).
    ///
    /// # Errors
    /// As [`Engine::forward`].
    pub fn predict(&self, images: &[f32], n: usize, threads: usize) -> Result<Vec<usize>> {
        let classes = self.header.input.classes;
        let scores = self.forward_threads(images, n, threads)?;
        Ok(scores
            .chunks_exact(classes)
            .map(|s| {
                s.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    })
                    .0
            })
            .collect())
    }

    /// The network's forward pass, each conv through `run` (which may record sizes).
    pub(crate) fn run_net<E: Exec>(&self, x: E::T, e: &mut E) -> E::T {
        match &self.net {
            Net::Lenet { conv1, conv2, fc } => {
                let x = {
                    let y = e.conv(conv1, &x, None);
                    e.max_pool(&y, 2, 2, 0)
                };
                let mut x = {
                    let y = e.conv(conv2, &x, None);
                    e.max_pool(&y, 2, 2, 0)
                };
                for l in fc {
                    x = e.conv(l, &x, None);
                }
                x
            }
            Net::Fc { hidden, out } => {
                let mut x = x;
                for l in hidden {
                    x = e.conv(l, &x, None);
                }
                e.conv(out, &x, None)
            }
            Net::Residual {
                stem,
                pool,
                blocks,
                fc,
            } => {
                let mut x = e.conv(stem, &x, None);
                if *pool {
                    x = e.max_pool(&x, 3, 2, 1);
                }
                for bl in blocks {
                    let (last, first) = bl.convs.split_last().expect("a block has convs");
                    let mut h = e.conv(&first[0], &x, None);
                    for c in &first[1..] {
                        h = e.conv(c, &h, None);
                    }
                    // The shortcut as it is: the block's input codes, or the downsample's floats.
                    let down = bl.downsample.as_ref().map(|d| e.conv(d, &x, None));
                    x = e.conv(last, &h, Some(down.as_ref().unwrap_or(&x)));
                }
                let pooled = e.global_avg_pool(&x);
                e.conv(fc, &pooled, None)
            }
            Net::Alexnet { convs, fc } => {
                let mut x = x;
                for (i, c) in convs.iter().enumerate() {
                    x = e.conv(c, &x, None);
                    if matches!(i, 0 | 1 | 4) {
                        x = e.max_pool(&x, 3, 2, 0);
                    }
                }
                x = e.adaptive_avg_pool(&x, 6, 6);
                for l in fc {
                    x = e.conv(l, &x, None);
                }
                x
            }
            Net::Vgg { convs, fc } => {
                let mut x = x;
                for (c, post) in convs {
                    x = e.conv(c, &x, None);
                    if let Some(post) = post {
                        let pooled = e.max_pool(&x, 2, 2, 0);
                        x = e.conv(post, &pooled, None);
                    }
                }
                e.conv(fc, &x, None)
            }
        }
    }
}

fn relu_act(b: &Builder<'_>, slot: &str) -> Result<Epilogue> {
    Ok(Epilogue {
        relu: true,
        quant: b.store.act(slot)?,
        ..Epilogue::default()
    })
}

fn lenet(b: &mut Builder<'_>, input: InputShape, image: Input) -> Result<Net> {
    let pad = if input.height < 32 { 2 } else { 0 };
    let e1 = relu_act(b, "act1")?;
    let conv1 = b.conv("conv1", "conv1.conv", image, (5, 1, pad), true, e1)?;
    let e2 = relu_act(b, "act2")?;
    let conv2 = b.conv("conv2", "conv2.conv", conv1.output(), (5, 1, 0), true, e2)?;
    let after = |s: usize| ((s + 2 * pad - 4) / 2 - 4) / 2;
    let map = (after(input.height), after(input.width), 16);
    let e3 = relu_act(b, "act3")?;
    let fc1 = b.linear("fc1", "fc1.linear", conv2.output(), map, true, e3)?;
    let e4 = relu_act(b, "act4")?;
    let fc2 = b.linear("fc2", "fc2.linear", fc1.output(), (1, 1, 120), true, e4)?;
    let fc3 = b.linear(
        "fc3",
        "fc3.linear",
        fc2.output(),
        (1, 1, 84),
        true,
        Epilogue::default(),
    )?;
    Ok(Net::Lenet {
        conv1,
        conv2,
        fc: [fc1, fc2, fc3],
    })
}

fn fc(b: &mut Builder<'_>, input: InputShape, image: Input) -> Result<Net> {
    let mut hidden: Vec<Conv> = Vec::new();
    let mut map = (input.height, input.width, input.channels);
    let mut x = image;
    for i in 0..3 {
        let epi = Epilogue {
            bn: Some(b.store.bn(&format!("norms.{i}"), BN_EPS)?),
            ..relu_act(b, &format!("acts.{i}"))?
        };
        let key = format!("hidden.{i}.linear");
        let l = b.linear(&format!("fc{}", i + 1), &key, x, map, false, epi)?;
        map = (1, 1, l.geo.cout);
        x = l.output();
        hidden.push(l);
    }
    let out = b.linear("out", "out.linear", x, map, true, Epilogue::default())?;
    Ok(Net::Fc { hidden, out })
}

fn vgg(b: &mut Builder<'_>, input: InputShape, image: Input) -> Result<Net> {
    let mut x = image;
    let (mut h, mut w, mut c) = (input.height, input.width, input.channels);
    let mut convs = Vec::new();
    let mut i = 0;
    while b.store.has(&format!("convs.{i}.conv.weight")) {
        let epi = Epilogue {
            bn: Some(b.store.bn(&format!("norms.{i}"), BN_EPS)?),
            ..relu_act(b, &format!("acts.{i}"))?
        };
        let (name, key) = (format!("conv{i}"), format!("convs.{i}.conv"));
        // Every second conv is max-pooled before its batch norm, which may have a negative
        // scale: the conv writes its values, the pool takes their maximum, then the epilogue.
        let layer = if i % 2 == 1 {
            let conv = b.conv(&name, &key, x, (3, 1, 1), false, Epilogue::default())?;
            let post = b.pointwise(&format!("norm{i}"), conv.geo.cout, conv.output(), epi);
            (h, w) = (h / 2, w / 2);
            (conv, Some(post))
        } else {
            (b.conv(&name, &key, x, (3, 1, 1), false, epi)?, None)
        };
        c = layer.0.geo.cout;
        x = layer.1.as_ref().unwrap_or(&layer.0).output();
        convs.push(layer);
        i += 1;
    }
    if convs.is_empty() {
        return Err(b.store.corrupt("a VGG without convs"));
    }
    let fc = b.linear("fc", "fc.linear", x, (h, w, c), true, Epilogue::default())?;
    Ok(Net::Vgg { convs, fc })
}

/// AlexNet-BN's batch norms use ε = 10⁻³.
const ALEXNET_BN_EPS: f64 = 1e-3;

fn alexnet(b: &mut Builder<'_>, input: InputShape, image: Input) -> Result<Net> {
    // (kernel, stride, padding) of conv1..conv5.
    const GEOMETRY: [(usize, usize, usize); 5] =
        [(11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)];
    let mut x = image;
    let mut convs = Vec::new();
    for (i, geom) in GEOMETRY.into_iter().enumerate() {
        let epi = Epilogue {
            bn: Some(b.store.bn(&format!("conv_norms.{i}"), ALEXNET_BN_EPS)?),
            ..relu_act(b, &format!("conv_acts.{i}"))?
        };
        let c = b.conv(
            &format!("conv{}", i + 1),
            &format!("convs.{i}.conv"),
            x,
            geom,
            true,
            epi,
        )?;
        x = c.output();
        convs.push(c);
    }
    let c = convs.last().map_or(0, |c| c.geo.cout);
    // The adaptive pool keeps codes only when the map is already 6×6 (224×224 inputs).
    let pooled = if alexnet_map(input.height, input.width) == (6, 6) {
        x
    } else {
        Input::Floats { cs: x.cs() }
    };
    let e6 = Epilogue {
        bn: Some(b.store.bn("bn6", ALEXNET_BN_EPS)?),
        ..relu_act(b, "act6")?
    };
    let fc6 = b.linear("fc6", "fc6.linear", pooled, (6, 6, c), true, e6)?;
    let e7 = Epilogue {
        bn: Some(b.store.bn("bn7", ALEXNET_BN_EPS)?),
        relu: true,
        ..Epilogue::default()
    };
    let fc7 = b.linear(
        "fc7",
        "fc7.linear",
        fc6.output(),
        (1, 1, fc6.geo.cout),
        true,
        e7,
    )?;
    let fc8 = b.linear(
        "fc8",
        "fc8.linear",
        fc7.output(),
        (1, 1, fc7.geo.cout),
        true,
        Epilogue::default(),
    )?;
    Ok(Net::Alexnet {
        convs,
        fc: [fc6, fc7, fc8],
    })
}

/// AlexNet's map after conv5's max pool, for an `h × w` image.
fn alexnet_map(h: usize, w: usize) -> (usize, usize) {
    let side = |s: usize| {
        let s = (s + 4 - 11) / 4 + 1;
        let s = (s - 3) / 2 + 1;
        let s = (s - 3) / 2 + 1;
        (s - 3) / 2 + 1
    };
    (side(h), side(w))
}

fn resnet(b: &mut Builder<'_>, arch: &str, image: Input) -> Result<Net> {
    let imagenet = arch != "resnet20";
    let bottleneck = arch == "resnet50";
    let stem_epi = Epilogue {
        bn: Some(b.store.bn("bn1", BN_EPS)?),
        ..relu_act(b, "act_stem")?
    };
    let geom = if imagenet { (7, 2, 3) } else { (3, 1, 1) };
    let stem = b.conv("conv1", "conv1.conv", image, geom, false, stem_epi)?;
    let mut x = stem.output();
    let mut blocks = Vec::new();
    let mut i = 0;
    let variant = if bottleneck { "Bottleneck" } else { "Basic" };
    while b
        .store
        .has(&format!("blocks.{i}.{variant}.conv1.conv.weight"))
    {
        let p = format!("blocks.{i}.{variant}");
        let names: &[&str] = if bottleneck {
            &["conv1", "conv2", "conv3"]
        } else {
            &["conv1", "conv2"]
        };
        // Stride: 2 on the first block of every stage after the first (where the channel count
        // changes), on the 3×3 conv (conv1 of a basic block, conv2 of a bottleneck).
        let down = b.store.has(&format!("{p}.downsample.conv.conv.weight"));
        let stage_start = down && i > 0;
        let stride = if stage_start { 2 } else { 1 };
        let mut convs = Vec::new();
        let input = x;
        let mut h = x;
        let mut downsample = None;
        for (j, name) in names.iter().enumerate() {
            let last = j == names.len() - 1;
            // The shortcut is computed just before the conv it is added to (the run order).
            if last && down {
                let epi = Epilogue {
                    bn: Some(b.store.bn(&format!("{p}.downsample.bn"), BN_EPS)?),
                    ..Epilogue::default()
                };
                downsample = Some(b.conv(
                    &format!("block{i}.downsample"),
                    &format!("{p}.downsample.conv.conv"),
                    input,
                    (1, stride, 0),
                    false,
                    epi,
                )?);
            }
            let k = if bottleneck && j != 1 { 1 } else { 3 };
            let s = if (bottleneck && j == 1) || (!bottleneck && j == 0) {
                stride
            } else {
                1
            };
            let slot = if last {
                format!("{p}.act_out")
            } else {
                format!("{p}.act{}", j + 1)
            };
            // Without a downsample the shortcut is the block's input: codes, when quantized.
            let coded_residual = match input {
                Input::Codes { alpha, max, .. } if last && !down => Some((alpha, max)),
                _ => None,
            };
            let epi = Epilogue {
                bn: Some(b.store.bn(&format!("{p}.bn{}", j + 1), BN_EPS)?),
                residual: last,
                coded_residual,
                ..relu_act(b, &slot)?
            };
            let c = b.conv(
                &format!("block{i}.{name}"),
                &format!("{p}.{name}.conv"),
                h,
                (k, s, k / 2),
                false,
                epi,
            )?;
            h = c.output();
            convs.push(c);
        }
        x = h;
        blocks.push(Block { convs, downsample });
        i += 1;
    }
    if blocks.is_empty() {
        return Err(b.store.corrupt("a residual network without blocks"));
    }
    let c = blocks
        .last()
        .map_or(0, |bl| bl.convs.last().map_or(0, |c| c.geo.cout));
    let fc = b.linear(
        "fc",
        "fc.linear",
        Input::Floats { cs: x.cs() },
        (1, 1, c),
        true,
        Epilogue::default(),
    )?;
    Ok(Net::Residual {
        stem,
        pool: imagenet,
        blocks,
        fc,
    })
}
