//! The fully connected nets of Brevitas' MNIST examples: TFC, SFC, LFC.

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use quantnet_burn::QuantBackend;

use super::{InputShape, Slots};
use quantnet_burn::nn::{QuantAct, QuantLinear};

use super::linear;
use quantnet_burn::op::batch_norm;

/// Dropout – three times [linear (no bias) – batch norm – ReLU – activation slot – dropout] – a
/// linear classifier. Hidden width 64 (TFC), 256 (SFC) or 1024 (LFC); dropout 0.2 on the input
/// and after each hidden layer, as Brevitas' `FC` model.
#[derive(Module, Debug)]
pub struct FcNet<B: Backend> {
    hidden: Vec<QuantLinear<B>>,
    norms: Vec<BatchNorm<B>>,
    acts: Vec<QuantAct<B>>,
    out: QuantLinear<B>,
    dropout: Dropout,
}

impl<B: Backend> FcNet<B> {
    /// A full-precision FC net with three hidden layers of `width`.
    pub fn new(input: InputShape, width: usize, device: &B::Device) -> Self {
        let inputs = input.channels * input.height * input.width;
        let widths = [inputs, width, width, width];
        Self {
            hidden: (0..3)
                .map(|i| linear(widths[i], widths[i + 1], false, device))
                .collect(),
            norms: (0..3)
                .map(|_| BatchNormConfig::new(width).init(device))
                .collect(),
            acts: (0..3).map(|_| QuantAct::float()).collect(),
            out: linear(width, input.classes, true, device),
            dropout: DropoutConfig::new(0.2).init(),
        }
    }

    pub(crate) fn slots<'a>(&'a mut self, s: &mut Slots<'a, B>) {
        for (i, layer) in self.hidden.iter_mut().enumerate() {
            s.linear(format!("fc{}", i + 1), layer);
        }
        s.linear("out", &mut self.out);
        for (i, act) in self.acts.iter_mut().enumerate() {
            s.act(format!("act{}", i + 1), act);
        }
    }
}

impl<B: QuantBackend> FcNet<B> {
    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.dropout.forward(x.flatten::<2>(1, 3));
        for ((layer, norm), act) in self.hidden.iter().zip(&self.norms).zip(&self.acts) {
            x = self
                .dropout
                .forward(act.forward(relu(batch_norm(norm, layer.forward(x)))));
        }
        self.out.forward(x)
    }
}
