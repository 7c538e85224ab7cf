//! The model: the architecture of the Burn book's guide model (two 3×3 convolutions, adaptive
//! average pooling to 8×8, dropout, two linear layers), with batch norm and ReLU after each
//! convolution.

use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, LinearConfig, Relu};
use burn::prelude::*;
use quantnet_models::prelude::*;

#[derive(Module, QatModel, Debug)]
pub struct Model<B: Backend> {
    conv1: QuantConv2d<B>,
    norm1: BatchNorm<B>,
    conv2: QuantConv2d<B>,
    norm2: BatchNorm<B>,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    linear1: QuantLinear<B>,
    linear2: QuantLinear<B>,
    acts: [QuantAct<B>; 3],
    activation: Relu,
}

#[derive(Config, Debug)]
pub struct ModelConfig {
    num_classes: usize,
    hidden_size: usize,
    #[config(default = "0.5")]
    dropout: f64,
}

impl ModelConfig {
    /// Returns the initialized model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Model<B> {
        Model {
            conv1: Conv2dConfig::new([1, 8], [3, 3]).init(device).into(),
            norm1: BatchNormConfig::new(8).init(device),
            conv2: Conv2dConfig::new([8, 16], [3, 3]).init(device).into(),
            norm2: BatchNormConfig::new(16).init(device),
            pool: AdaptiveAvgPool2dConfig::new([8, 8]).init(),
            activation: Relu::new(),
            linear1: LinearConfig::new(16 * 8 * 8, self.hidden_size)
                .init(device)
                .into(),
            linear2: LinearConfig::new(self.hidden_size, self.num_classes)
                .init(device)
                .into(),
            dropout: DropoutConfig::new(self.dropout).init(),
            acts: std::array::from_fn(|_| QuantAct::float()),
        }
    }
}

impl<B: QuantBackend> Model<B> {
    /// # Shapes
    ///   - Images [batch_size, height, width]
    ///   - Output [batch_size, num_classes]
    pub fn forward(&self, images: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch_size, height, width] = images.dims();
        let x = images.reshape([batch_size, 1, height, width]);

        let x = self.conv1.forward(x); // [batch_size, 8, 26, 26]
        let x = self.acts[0].forward(self.activation.forward(self.norm1.forward(x)));
        let x = self.dropout.forward(x);
        let x = self.conv2.forward(x); // [batch_size, 16, 24, 24]
        let x = self.activation.forward(self.norm2.forward(x));
        let x = self.dropout.forward(x);

        let x = self.pool.forward(x); // [batch_size, 16, 8, 8]
        let x = self.acts[1].forward(x.reshape([batch_size, 16 * 8 * 8]));
        let x = self.linear1.forward(x);
        let x = self.dropout.forward(x);
        let x = self.acts[2].forward(self.activation.forward(x));

        self.linear2.forward(x) // [batch_size, num_classes]
    }
}
