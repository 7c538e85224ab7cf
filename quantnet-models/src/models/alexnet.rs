//! AlexNet with batch norm, as the paper's official code (`alexnet_all.py`, paper-spec §5).

use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use quantnet_burn::QuantBackend;

use super::{InputShape, Slots};
use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};

use super::{conv, linear};
use quantnet_burn::op::batch_norm;

/// torchvision's AlexNet layout (convs 64-192-384-256-256 with bias, 6×6 adaptive pool, fc
/// 4096-4096-classes) with batch norm (ε = 1e-3) after every conv and hidden linear, dropout 0.1.
/// Activation slots after pool1, pool2, relu3, relu4, pool5 and relu6; the input of the last
/// linear (fc7's output) is not quantized, as in the official code.
#[derive(Module, Debug)]
pub struct AlexNetBn<B: Backend> {
    convs: Vec<QuantConv2d<B>>,
    conv_norms: Vec<BatchNorm<B>>,
    conv_acts: Vec<QuantAct<B>>,
    fc6: QuantLinear<B>,
    bn6: BatchNorm<B>,
    act6: QuantAct<B>,
    fc7: QuantLinear<B>,
    bn7: BatchNorm<B>,
    fc8: QuantLinear<B>,
    pool: MaxPool2d,
    avgpool: AdaptiveAvgPool2d,
    dropout: Dropout,
}

fn bn<B: Backend>(n: usize, device: &B::Device) -> BatchNorm<B> {
    BatchNormConfig::new(n).with_epsilon(1e-3).init(device)
}

/// (out channels, kernel, stride, padding) of conv1..conv5.
const CONVS: [(usize, usize, usize, usize); 5] = [
    (64, 11, 4, 2),
    (192, 5, 1, 2),
    (384, 3, 1, 1),
    (256, 3, 1, 1),
    (256, 3, 1, 1),
];

impl<B: Backend> AlexNetBn<B> {
    /// A full-precision AlexNet-BN for `input` (224×224 in the paper; anything from 63×63 works).
    pub fn new(input: InputShape, device: &B::Device) -> Self {
        let mut c_in = input.channels;
        let mut convs = Vec::new();
        for &(c_out, k, s, p) in &CONVS {
            convs.push(conv(c_in, c_out, k, s, p, true, device));
            c_in = c_out;
        }
        Self {
            convs,
            conv_norms: CONVS.iter().map(|c| bn(c.0, device)).collect(),
            conv_acts: CONVS.iter().map(|_| QuantAct::float()).collect(),
            fc6: linear(256 * 6 * 6, 4096, true, device),
            bn6: bn(4096, device),
            act6: QuantAct::float(),
            fc7: linear(4096, 4096, true, device),
            bn7: bn(4096, device),
            fc8: linear(4096, input.classes, true, device),
            pool: MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).init(),
            avgpool: AdaptiveAvgPool2dConfig::new([6, 6]).init(),
            dropout: DropoutConfig::new(0.1).init(),
        }
    }

    pub(crate) fn slots<'a>(&'a mut self, s: &mut Slots<'a, B>) {
        for (i, c) in self.convs.iter_mut().enumerate() {
            s.conv(format!("conv{}", i + 1), c);
        }
        s.linear("fc6", &mut self.fc6);
        s.linear("fc7", &mut self.fc7);
        s.linear("fc8", &mut self.fc8);
        for (i, a) in self.conv_acts.iter_mut().enumerate() {
            s.act(format!("act{}", i + 1), a);
        }
        s.act("act6", &mut self.act6);
    }
}

impl<B: QuantBackend> AlexNetBn<B> {
    pub(crate) fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 2> {
        for (i, ((c, n), a)) in self
            .convs
            .iter()
            .zip(&self.conv_norms)
            .zip(&self.conv_acts)
            .enumerate()
        {
            x = relu(batch_norm(n, c.forward(x)));
            // Max pooling after conv1, conv2 and conv5.
            if matches!(i, 0 | 1 | 4) {
                x = self.pool.forward(x);
            }
            x = a.forward(x);
        }
        let x = self.avgpool.forward(x).flatten(1, 3);
        let x = self.act6.forward(relu(batch_norm(
            &self.bn6,
            self.fc6.forward(self.dropout.forward(x)),
        )));
        let x = relu(batch_norm(
            &self.bn7,
            self.fc7.forward(self.dropout.forward(x)),
        ));
        self.fc8.forward(x)
    }
}
