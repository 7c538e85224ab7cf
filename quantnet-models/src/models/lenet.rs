//! LeNet-5.

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use quantnet_burn::QuantBackend;

use super::{InputShape, Slots};
use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};

use super::{conv, linear};

/// LeNet-5: conv 5×5 (6) – pool – conv 5×5 (16) – pool – fc 120 – fc 84 – fc classes, ReLU, max
/// pooling. On 28×28 inputs the first conv pads by 2 (the classic 32×32 geometry); on 32×32 it
/// does not. An activation slot follows every ReLU+pool and every hidden linear.
#[derive(Module, Debug)]
pub struct Lenet5<B: Backend> {
    conv1: QuantConv2d<B>,
    act1: QuantAct<B>,
    conv2: QuantConv2d<B>,
    act2: QuantAct<B>,
    fc1: QuantLinear<B>,
    act3: QuantAct<B>,
    fc2: QuantLinear<B>,
    act4: QuantAct<B>,
    fc3: QuantLinear<B>,
    pool: MaxPool2d,
}

impl<B: Backend> Lenet5<B> {
    /// A full-precision LeNet-5 for `input`.
    pub fn new(input: InputShape, device: &B::Device) -> Self {
        // Pad so that the first conv's output is 28×28 whenever the input is at least 28×28.
        let pad = if input.height < 32 { 2 } else { 0 };
        let after = |s: usize| ((s + 2 * pad - 4) / 2 - 4) / 2;
        let flat = 16 * after(input.height) * after(input.width);
        Self {
            conv1: conv(input.channels, 6, 5, 1, pad, true, device),
            act1: QuantAct::float(),
            conv2: conv(6, 16, 5, 1, 0, true, device),
            act2: QuantAct::float(),
            fc1: linear(flat, 120, true, device),
            act3: QuantAct::float(),
            fc2: linear(120, 84, true, device),
            act4: QuantAct::float(),
            fc3: linear(84, input.classes, true, device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }

    pub(crate) fn slots<'a>(&'a mut self, s: &mut Slots<'a, B>) {
        s.conv("conv1", &mut self.conv1);
        s.conv("conv2", &mut self.conv2);
        s.linear("fc1", &mut self.fc1);
        s.linear("fc2", &mut self.fc2);
        s.linear("fc3", &mut self.fc3);
        s.act("act1", &mut self.act1);
        s.act("act2", &mut self.act2);
        s.act("act3", &mut self.act3);
        s.act("act4", &mut self.act4);
    }
}

impl<B: QuantBackend> Lenet5<B> {
    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self
            .act1
            .forward(self.pool.forward(relu(self.conv1.forward(x))));
        let x = self
            .act2
            .forward(self.pool.forward(relu(self.conv2.forward(x))));
        let x = self.act3.forward(relu(self.fc1.forward(x.flatten(1, 3))));
        let x = self.act4.forward(relu(self.fc2.forward(x)));
        self.fc3.forward(x)
    }
}
