//! VGG-small for CIFAR-sized inputs (the layout of LQ-Nets and later low-bit papers).

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use quantnet_burn::QuantBackend;

use super::{InputShape, Slots};
use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};

use super::{conv, linear};
use quantnet_burn::op::batch_norm;

const WIDTHS: [usize; 6] = [128, 128, 256, 256, 512, 512];

/// Six 3×3 convs (no bias) of 128, 128, 256, 256, 512, 512 channels, each followed by
/// [max pool after the 2nd, 4th and 6th] – batch norm – ReLU – activation slot; then one linear
/// classifier on the flattened `512 × H/8 × W/8` features.
#[derive(Module, Debug)]
pub struct VggSmall<B: Backend> {
    convs: Vec<QuantConv2d<B>>,
    norms: Vec<BatchNorm<B>>,
    acts: Vec<QuantAct<B>>,
    fc: QuantLinear<B>,
    pool: MaxPool2d,
}

impl<B: Backend> VggSmall<B> {
    /// A full-precision VGG-small for `input`.
    pub fn new(input: InputShape, device: &B::Device) -> Self {
        let mut c_in = input.channels;
        let mut convs = Vec::new();
        for &w in &WIDTHS {
            convs.push(conv(c_in, w, 3, 1, 1, false, device));
            c_in = w;
        }
        Self {
            convs,
            norms: WIDTHS
                .iter()
                .map(|&w| BatchNormConfig::new(w).init(device))
                .collect(),
            acts: WIDTHS.iter().map(|_| QuantAct::float()).collect(),
            fc: linear(
                512 * (input.height / 8) * (input.width / 8),
                input.classes,
                true,
                device,
            ),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }

    pub(crate) fn slots<'a>(&'a mut self, s: &mut Slots<'a, B>) {
        for (i, c) in self.convs.iter_mut().enumerate() {
            s.conv(format!("conv{i}"), c);
        }
        s.linear("fc", &mut self.fc);
        for (i, a) in self.acts.iter_mut().enumerate() {
            s.act(format!("act{i}"), a);
        }
    }
}

impl<B: QuantBackend> VggSmall<B> {
    pub(crate) fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 2> {
        for (i, ((c, n), a)) in self
            .convs
            .iter()
            .zip(&self.norms)
            .zip(&self.acts)
            .enumerate()
        {
            x = c.forward(x);
            if i % 2 == 1 {
                x = self.pool.forward(x);
            }
            x = a.forward(relu(batch_norm(n, x)));
        }
        self.fc.forward(x.flatten(1, 3))
    }
}
