//! Residual networks: ResNet-20 (CIFAR) and torchvision's ResNet-18 and ResNet-50.
//!
//! Activation slots follow paper-spec §5 (the official `resnet18_all.py`): one after the stem
//! (after its max pool on ImageNet; the official code computes this one and drops it by mistake,
//! here it is used), one after every ReLU inside a block, and one on the block output, after
//! `relu(bn(conv(x)) + shortcut)`, so the quantized block output feeds both the next block's
//! convolution and its shortcut. Downsampling shortcuts are 1×1 conv + batch norm (torchvision;
//! option B for ResNet-20); they are weight layers and are quantized like the others.

use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use quantnet_burn::QuantBackend;

use super::{InputShape, Slots};
use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};

use super::{conv, linear};
use quantnet_burn::op::batch_norm;

/// A 1×1 conv + batch norm shortcut.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    conv: QuantConv2d<B>,
    bn: BatchNorm<B>,
}

/// The two-conv block of ResNet-18 and ResNet-20.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    conv1: QuantConv2d<B>,
    bn1: BatchNorm<B>,
    act1: QuantAct<B>,
    conv2: QuantConv2d<B>,
    bn2: BatchNorm<B>,
    downsample: Option<Downsample<B>>,
    act_out: QuantAct<B>,
}

/// The 1×1–3×3–1×1 block of ResNet-50 (stride on the 3×3, as torchvision).
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    conv1: QuantConv2d<B>,
    bn1: BatchNorm<B>,
    act1: QuantAct<B>,
    conv2: QuantConv2d<B>,
    bn2: BatchNorm<B>,
    act2: QuantAct<B>,
    conv3: QuantConv2d<B>,
    bn3: BatchNorm<B>,
    downsample: Option<Downsample<B>>,
    act_out: QuantAct<B>,
}

/// A residual block.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Block<B: Backend> {
    /// Two 3×3 convs.
    Basic(BasicBlock<B>),
    /// 1×1, 3×3, 1×1.
    Bottleneck(Bottleneck<B>),
}

/// A residual network.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    conv1: QuantConv2d<B>,
    bn1: BatchNorm<B>,
    maxpool: Option<MaxPool2d>,
    act_stem: QuantAct<B>,
    blocks: Vec<Block<B>>,
    avgpool: AdaptiveAvgPool2d,
    fc: QuantLinear<B>,
}

fn bn<B: Backend>(n: usize, device: &B::Device) -> BatchNorm<B> {
    BatchNormConfig::new(n).init(device)
}

fn downsample<B: Backend>(
    c_in: usize,
    c_out: usize,
    stride: usize,
    device: &B::Device,
) -> Option<Downsample<B>> {
    (stride != 1 || c_in != c_out).then(|| Downsample {
        conv: conv(c_in, c_out, 1, stride, 0, false, device),
        bn: bn(c_out, device),
    })
}

impl<B: Backend> ResNet<B> {
    fn build(
        input: InputShape,
        imagenet_stem: bool,
        bottleneck: bool,
        stages: &[(usize, usize)],
        device: &B::Device,
    ) -> Self {
        let stem_width = stages[0].0;
        let (conv1, maxpool) = if imagenet_stem {
            let pool = MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init();
            (conv(input.channels, 64, 7, 2, 3, false, device), Some(pool))
        } else {
            (
                conv(input.channels, stem_width, 3, 1, 1, false, device),
                None,
            )
        };
        let mut c_in = if imagenet_stem { 64 } else { stem_width };
        let mut blocks = Vec::new();
        for (stage, &(width, count)) in stages.iter().enumerate() {
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let block = if bottleneck {
                    let c_out = width * 4;
                    let b = Block::Bottleneck(Bottleneck {
                        conv1: conv(c_in, width, 1, 1, 0, false, device),
                        bn1: bn(width, device),
                        act1: QuantAct::float(),
                        conv2: conv(width, width, 3, stride, 1, false, device),
                        bn2: bn(width, device),
                        act2: QuantAct::float(),
                        conv3: conv(width, c_out, 1, 1, 0, false, device),
                        bn3: bn(c_out, device),
                        downsample: downsample(c_in, c_out, stride, device),
                        act_out: QuantAct::float(),
                    });
                    c_in = c_out;
                    b
                } else {
                    let b = Block::Basic(BasicBlock {
                        conv1: conv(c_in, width, 3, stride, 1, false, device),
                        bn1: bn(width, device),
                        act1: QuantAct::float(),
                        conv2: conv(width, width, 3, 1, 1, false, device),
                        bn2: bn(width, device),
                        downsample: downsample(c_in, width, stride, device),
                        act_out: QuantAct::float(),
                    });
                    c_in = width;
                    b
                };
                blocks.push(block);
            }
        }
        Self {
            conv1,
            bn1: bn(if imagenet_stem { 64 } else { stem_width }, device),
            maxpool,
            act_stem: QuantAct::float(),
            blocks,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: linear(c_in, input.classes, true, device),
        }
    }

    /// ResNet-20 (He et al. 2016, CIFAR): 3×3 stem of 16, stages of 16/32/64 with 3 basic blocks.
    pub fn resnet20(input: InputShape, device: &B::Device) -> Self {
        Self::build(input, false, false, &[(16, 3), (32, 3), (64, 3)], device)
    }

    /// torchvision's ResNet-18.
    pub fn resnet18(input: InputShape, device: &B::Device) -> Self {
        let stages = [(64, 2), (128, 2), (256, 2), (512, 2)];
        Self::build(input, true, false, &stages, device)
    }

    /// torchvision's ResNet-50 (v1.5: stride on the 3×3).
    pub fn resnet50(input: InputShape, device: &B::Device) -> Self {
        let stages = [(64, 3), (128, 4), (256, 6), (512, 3)];
        Self::build(input, true, true, &stages, device)
    }

    pub(crate) fn slots<'a>(&'a mut self, s: &mut Slots<'a, B>) {
        s.conv("conv1", &mut self.conv1);
        s.act("act_stem", &mut self.act_stem);
        for (i, block) in self.blocks.iter_mut().enumerate() {
            match block {
                Block::Basic(b) => {
                    s.conv(format!("block{i}.conv1"), &mut b.conv1);
                    s.conv(format!("block{i}.conv2"), &mut b.conv2);
                    if let Some(d) = &mut b.downsample {
                        s.conv(format!("block{i}.downsample"), &mut d.conv);
                    }
                    s.act(format!("block{i}.act1"), &mut b.act1);
                    s.act(format!("block{i}.act_out"), &mut b.act_out);
                }
                Block::Bottleneck(b) => {
                    s.conv(format!("block{i}.conv1"), &mut b.conv1);
                    s.conv(format!("block{i}.conv2"), &mut b.conv2);
                    s.conv(format!("block{i}.conv3"), &mut b.conv3);
                    if let Some(d) = &mut b.downsample {
                        s.conv(format!("block{i}.downsample"), &mut d.conv);
                    }
                    s.act(format!("block{i}.act1"), &mut b.act1);
                    s.act(format!("block{i}.act2"), &mut b.act2);
                    s.act(format!("block{i}.act_out"), &mut b.act_out);
                }
            }
        }
        s.linear("fc", &mut self.fc);
    }
}

impl<B: QuantBackend> Downsample<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        batch_norm(&self.bn, self.conv.forward(x))
    }
}

impl<B: QuantBackend> Block<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Block::Basic(b) => {
                let h = b
                    .act1
                    .forward(relu(batch_norm(&b.bn1, b.conv1.forward(x.clone()))));
                let h = batch_norm(&b.bn2, b.conv2.forward(h));
                let shortcut = match &b.downsample {
                    Some(d) => d.forward(x),
                    None => x,
                };
                b.act_out.forward(relu(h + shortcut))
            }
            Block::Bottleneck(b) => {
                let h = b
                    .act1
                    .forward(relu(batch_norm(&b.bn1, b.conv1.forward(x.clone()))));
                let h = b.act2.forward(relu(batch_norm(&b.bn2, b.conv2.forward(h))));
                let h = batch_norm(&b.bn3, b.conv3.forward(h));
                let shortcut = match &b.downsample {
                    Some(d) => d.forward(x),
                    None => x,
                };
                b.act_out.forward(relu(h + shortcut))
            }
        }
    }
}

impl<B: QuantBackend> ResNet<B> {
    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = relu(batch_norm(&self.bn1, self.conv1.forward(x)));
        if let Some(pool) = &self.maxpool {
            x = pool.forward(x);
        }
        x = self.act_stem.forward(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.fc.forward(self.avgpool.forward(x).flatten(1, 3))
    }
}
