//! SSD detectors built from the quantized layers: SSD300 on VGG-16 (the paper's §4.2 setting)
//! and a small SSD that trains on a CPU.
//!
//! Both are a backbone of Conv–BN–ReLU–activation-slot blocks whose chosen feature maps
//! ("sources") each feed two 3×3 head convolutions: box offsets (`anchors × 4` channels) and
//! class scores (`anchors × (classes + 1)`, class 0 the background). The heads' outputs are
//! laid out cell by cell, anchor by anchor, the order of [`super::boxes::priors`].
//!
//! The precision policy keeps the first convolution and every head full precision (the paper
//! quantizes the VGG-16 layers of SSD "except the first convolution layer and the final
//! convolutional layers"); `--quantize-all` quantizes them too.
//!
//! Differences from the reference SSD300, all for training from scratch with the recipe's
//! batch-norm re-estimation: batch norm after every backbone convolution (VGG-16-BN) and no
//! L2-normalisation of conv4_3; conv6 is a plain 3×3 convolution (no dilation: the quantized
//! convolution supports dilation 1 only).

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use quantnet_burn::QuantBackend;
use quantnet_burn::nn::{QuantAct, QuantConv2d};
use quantnet_burn::op::batch_norm;

use super::boxes::{Prior, PriorLayer, priors, ssd300_layers};
use crate::models::{InputShape, Slots, conv};

/// Which SSD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SsdKind {
    /// SSD300: VGG-16 (with batch norm) and SSD's extra layers, 300×300 inputs, six sources
    /// (38, 19, 10, 5, 3, 1), 8732 default boxes.
    Ssd300,
    /// A small SSD for 192×192 inputs: eight convolutions of 16–128 channels, four sources
    /// (24, 12, 6, 3), four default boxes per cell, 3060 in all.
    Small,
}

impl SsdKind {
    /// The input side in pixels.
    pub fn image_size(self) -> usize {
        match self {
            SsdKind::Ssd300 => 300,
            SsdKind::Small => 192,
        }
    }

    /// The default-box layers of the sources.
    pub fn prior_layers(self) -> Vec<PriorLayer> {
        match self {
            SsdKind::Ssd300 => ssd300_layers(),
            SsdKind::Small => {
                // Boxes from 6 % to 69 % of the image (SSD's linear scale rule over four maps,
                // starting low enough for small objects such as tree crowns).
                let sizes = [24, 12, 6, 3];
                let steps = [8.0, 16.0, 32.0, 64.0];
                let scales = [0.06f32, 0.15, 0.33, 0.51, 0.69];
                let side = self.image_size() as f32;
                (0..4)
                    .map(|k| PriorLayer {
                        size: sizes[k],
                        step: steps[k],
                        min_size: scales[k] * side,
                        max_size: scales[k + 1] * side,
                        ratios: vec![2.0],
                    })
                    .collect()
            }
        }
    }

    /// The default boxes, in the order of the heads' outputs.
    pub fn priors(self) -> Vec<Prior> {
        priors(&self.prior_layers(), self.image_size() as f32)
    }
}

/// One backbone block: a convolution, batch norm, ReLU, an activation slot, then an optional
/// max pool (after the block's output is taken as a source).
#[derive(Module, Debug)]
struct Block<B: Backend> {
    conv: QuantConv2d<B>,
    norm: BatchNorm<B>,
    act: QuantAct<B>,
    pool: Option<MaxPool2d>,
}

impl<B: QuantBackend> Block<B> {
    /// The block's output before its pool (a source feeds the heads from here).
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.act
            .forward(relu(batch_norm(&self.norm, self.conv.forward(x))))
    }

    fn pool(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.pool {
            Some(pool) => pool.forward(x),
            None => x,
        }
    }
}

/// How a block is built: input and output channels, kernel, stride, padding, pooling after it.
#[derive(Clone, Copy)]
struct Spec {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    pool: Pool,
}

#[derive(Clone, Copy, PartialEq)]
enum Pool {
    None,
    /// 2×2, stride 2.
    Half,
    /// 2×2, stride 2, rounding up (SSD300's ceil-mode pool3: 75 → 38).
    HalfCeil,
    /// 3×3, stride 1, padding 1 (SSD300's pool5).
    Same,
}

const fn spec(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, pool: Pool) -> Spec {
    Spec {
        c_in,
        c_out,
        k,
        stride,
        pad,
        pool,
    }
}

/// SSD300's backbone (VGG-16-BN to conv7, then the extra layers); the sources are the outputs
/// of blocks 9 (conv4_3), 14 (conv7), 16, 18, 20 and 22.
const SSD300: [Spec; 23] = [
    spec(3, 64, 3, 1, 1, Pool::None),
    spec(64, 64, 3, 1, 1, Pool::Half),
    spec(64, 128, 3, 1, 1, Pool::None),
    spec(128, 128, 3, 1, 1, Pool::Half),
    spec(128, 256, 3, 1, 1, Pool::None),
    spec(256, 256, 3, 1, 1, Pool::None),
    spec(256, 256, 3, 1, 1, Pool::HalfCeil),
    spec(256, 512, 3, 1, 1, Pool::None),
    spec(512, 512, 3, 1, 1, Pool::None),
    spec(512, 512, 3, 1, 1, Pool::Half), // conv4_3: source 0 (38×38), before pool4
    spec(512, 512, 3, 1, 1, Pool::None),
    spec(512, 512, 3, 1, 1, Pool::None),
    spec(512, 512, 3, 1, 1, Pool::Same),
    spec(512, 1024, 3, 1, 1, Pool::None),  // conv6
    spec(1024, 1024, 1, 1, 0, Pool::None), // conv7: source 1 (19×19)
    spec(1024, 256, 1, 1, 0, Pool::None),
    spec(256, 512, 3, 2, 1, Pool::None), // source 2 (10×10)
    spec(512, 128, 1, 1, 0, Pool::None),
    spec(128, 256, 3, 2, 1, Pool::None), // source 3 (5×5)
    spec(256, 128, 1, 1, 0, Pool::None),
    spec(128, 256, 3, 1, 0, Pool::None), // source 4 (3×3)
    spec(256, 128, 1, 1, 0, Pool::None),
    spec(128, 256, 3, 1, 0, Pool::None), // source 5 (1×1)
];
const SSD300_SOURCES: [usize; 6] = [9, 14, 16, 18, 20, 22];

/// The small SSD's backbone: 192 → 96 → 48 → 24 (source 0) → 12 → 6 → 3.
const SMALL: [Spec; 8] = [
    spec(3, 16, 3, 1, 1, Pool::Half),
    spec(16, 32, 3, 1, 1, Pool::Half),
    spec(32, 64, 3, 1, 1, Pool::None),
    spec(64, 64, 3, 1, 1, Pool::Half),
    spec(64, 128, 3, 1, 1, Pool::None),  // source 0 (24×24)
    spec(128, 128, 3, 2, 1, Pool::None), // source 1 (12×12)
    spec(128, 128, 3, 2, 1, Pool::None), // source 2 (6×6)
    spec(128, 128, 3, 2, 1, Pool::None), // source 3 (3×3)
];
const SMALL_SOURCES: [usize; 4] = [4, 5, 6, 7];

/// An SSD detector ([`SsdKind`]) from quantized layers.
#[derive(Module, Debug)]
pub struct Ssd<B: Backend> {
    blocks: Vec<Block<B>>,
    /// Box-offset heads, one per source.
    loc: Vec<QuantConv2d<B>>,
    /// Class-score heads, one per source.
    conf: Vec<QuantConv2d<B>>,
    /// Block indices whose outputs are sources.
    sources: Vec<usize>,
    /// Object classes (without the background).
    classes: usize,
    #[module(skip)]
    kind: SsdKind,
}

impl<B: Backend> Ssd<B> {
    /// A full-precision `kind` for `input.classes` object classes (the background is added);
    /// `input` must be 3 × [`SsdKind::image_size`]².
    pub fn new(kind: SsdKind, input: InputShape, device: &B::Device) -> Self {
        let (specs, sources): (&[Spec], &[usize]) = match kind {
            SsdKind::Ssd300 => (&SSD300, &SSD300_SOURCES),
            SsdKind::Small => (&SMALL, &SMALL_SOURCES),
        };
        let mut blocks = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let c_in = if i == 0 { input.channels } else { s.c_in };
            let pool = match s.pool {
                Pool::None => None,
                Pool::Half => Some(MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init()),
                Pool::HalfCeil => Some(
                    MaxPool2dConfig::new([2, 2])
                        .with_strides([2, 2])
                        .with_ceil_mode(true)
                        .init(),
                ),
                Pool::Same => Some(
                    MaxPool2dConfig::new([3, 3])
                        .with_strides([1, 1])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(),
                ),
            };
            blocks.push(Block {
                conv: conv(c_in, s.c_out, s.k, s.stride, s.pad, false, device),
                norm: BatchNormConfig::new(s.c_out).init(device),
                act: QuantAct::float(),
                pool,
            });
        }
        let anchors: Vec<usize> = kind
            .prior_layers()
            .iter()
            .map(|l| 2 + 2 * l.ratios.len())
            .collect();
        let width = |k: usize| specs[sources[k]].c_out;
        let loc = (0..sources.len())
            .map(|k| conv(width(k), anchors[k] * 4, 3, 1, 1, true, device))
            .collect();
        let conf = (0..sources.len())
            .map(|k| {
                conv(
                    width(k),
                    anchors[k] * (input.classes + 1),
                    3,
                    1,
                    1,
                    true,
                    device,
                )
            })
            .collect();
        Self {
            blocks,
            loc,
            conf,
            sources: sources.to_vec(),
            classes: input.classes,
            kind,
        }
    }

    /// Which SSD it is.
    pub fn kind(&self) -> SsdKind {
        self.kind
    }

    /// Object classes (the scores have one more, the background, first).
    pub fn classes(&self) -> usize {
        self.classes
    }

    pub(crate) fn slots<'a>(&'a mut self, s: &mut Slots<'a, B>) {
        let mut acts = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            s.conv(format!("conv{i}"), &mut b.conv);
            acts.push((format!("act{i}"), &mut b.act));
        }
        for (k, (l, c)) in self.loc.iter_mut().zip(self.conf.iter_mut()).enumerate() {
            s.conv(format!("loc{k}"), l);
            s.conv(format!("conf{k}"), c);
        }
        for (name, a) in acts {
            s.act(name, a);
        }
    }

    /// The weight layers the policy keeps full precision: the first convolution and the heads.
    pub(crate) fn float_layers(&self) -> Vec<usize> {
        let n = self.blocks.len();
        std::iter::once(0)
            .chain(n..n + 2 * self.loc.len())
            .collect()
    }
}

impl<B: QuantBackend> Ssd<B> {
    /// Box offsets and class scores for every default box.
    ///
    /// # Shapes
    /// `[batch, 3, S, S] -> ([batch, priors, 4], [batch, priors, classes + 1])`.
    pub fn heads(&self, mut x: Tensor<B, 4>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let mut locs = Vec::with_capacity(self.sources.len());
        let mut confs = Vec::with_capacity(self.sources.len());
        let mut next = 0;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if self.sources.get(next) == Some(&i) {
                // The source is the block's output before its pool (conv4_3 feeds pool4).
                locs.push(per_prior(self.loc[next].forward(x.clone()), 4));
                confs.push(per_prior(
                    self.conf[next].forward(x.clone()),
                    self.classes + 1,
                ));
                next += 1;
            }
            x = block.pool(x);
        }
        (Tensor::cat(locs, 1), Tensor::cat(confs, 1))
    }

    /// The heads' outputs as one row per image (offsets, then scores): what calibration and
    /// batch-norm passes run through ([`crate::models::ImageModel::forward`]).
    ///
    /// # Shapes
    /// `[batch, 3, S, S] -> [batch, priors × (4 + classes + 1)]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let (loc, conf) = self.heads(x);
        Tensor::cat(vec![loc.flatten(1, 2), conf.flatten(1, 2)], 1)
    }
}

/// `[batch, anchors × per, H, W]` → `[batch, H × W × anchors, per]` (cell by cell, then anchor).
fn per_prior<B: Backend>(x: Tensor<B, 4>, per: usize) -> Tensor<B, 3> {
    let [batch, channels, h, w] = x.dims();
    x.permute([0, 2, 3, 1])
        .reshape([batch, h * w * channels / per, per])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::quantize::{QuantPolicy, Temperatures, quantize_weights};
    use burn::backend::Flex;
    use burn::tensor::TensorData;
    use quantnet_burn::LevelSet;

    type B = Flex;

    fn input(kind: SsdKind, classes: usize) -> InputShape {
        InputShape {
            channels: 3,
            height: kind.image_size(),
            width: kind.image_size(),
            classes,
        }
    }

    #[test]
    fn head_outputs_are_laid_out_cell_by_cell_then_anchor_by_anchor() {
        // A [1, anchors·per, H, W] head output with value 1000a + 100c + 10i + j at anchor a,
        // component c, row i, column j: prior (i·W + j)·anchors + a, column c must hold it.
        let (anchors, per, h, w) = (2, 3, 2, 2);
        let mut values = vec![0.0f32; anchors * per * h * w];
        for a in 0..anchors {
            for c in 0..per {
                for i in 0..h {
                    for j in 0..w {
                        values[((a * per + c) * h + i) * w + j] =
                            (1000 * a + 100 * c + 10 * i + j) as f32;
                    }
                }
            }
        }
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(values, [1, anchors * per, h, w]),
            &Default::default(),
        );
        let out = per_prior(x, per).into_data().to_vec::<f32>().unwrap();
        for i in 0..h {
            for j in 0..w {
                for a in 0..anchors {
                    for c in 0..per {
                        let prior = (i * w + j) * anchors + a;
                        assert_eq!(
                            out[prior * per + c],
                            (1000 * a + 100 * c + 10 * i + j) as f32,
                            "prior {prior}, component {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_small_ssd_scores_its_3060_default_boxes() {
        let device = Default::default();
        let kind = SsdKind::Small;
        let model = Ssd::<B>::new(kind, input(kind, 3), &device);
        // 24²·4 + 12²·4 + 6²·4 + 3²·4 (four boxes a cell: two squares and ratio 2 both ways).
        assert_eq!(kind.priors().len(), 3060);
        let (loc, conf) = model.heads(Tensor::zeros([2, 3, 192, 192], &device));
        assert_eq!(loc.dims(), [2, 3060, 4]);
        assert_eq!(conf.dims(), [2, 3060, 4]);
        let flat = Ssd::forward(&model, Tensor::zeros([1, 3, 192, 192], &device));
        assert_eq!(flat.dims(), [1, 3060 * (4 + 4)]);
    }

    #[test]
    fn ssd300_scores_its_8732_default_boxes() {
        let device = Default::default();
        let kind = SsdKind::Ssd300;
        let model = Ssd::<B>::new(kind, input(kind, 20), &device);
        assert_eq!(kind.priors().len(), 8732);
        // 38 (pool3 rounds 75 up), 19, 10, 5, 3, 1: the priors' layers.
        let (loc, conf) = model.heads(Tensor::zeros([1, 3, 300, 300], &device));
        assert_eq!(loc.dims(), [1, 8732, 4]);
        assert_eq!(conf.dims(), [1, 8732, 21]);
    }

    #[test]
    fn the_policy_keeps_the_first_conv_and_the_heads_full_precision() {
        let device = Default::default();
        let kind = SsdKind::Small;
        let temps = Temperatures::default();
        let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), None);
        let mut model = Ssd::<B>::new(kind, input(kind, 1), &device);
        // Eight backbone convs, the first kept: 7; the eight heads kept.
        assert_eq!(quantize_weights(&mut model, &policy, &temps).unwrap(), 7);
        let mut slots = crate::models::QatModel::slots(&mut model);
        let quantized: Vec<&str> = slots
            .weights
            .iter_mut()
            .filter_map(|(name, l)| l.quantizer().is_some().then_some(name.as_str()))
            .collect();
        assert_eq!(
            quantized,
            [
                "conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7"
            ]
        );
        let all = QuantPolicy {
            quantize_all: true,
            ..policy
        };
        let mut model = Ssd::<B>::new(kind, input(kind, 1), &device);
        assert_eq!(quantize_weights(&mut model, &all, &temps).unwrap(), 16);
    }
}
