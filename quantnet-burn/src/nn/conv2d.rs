//! [`QuantConv2d`]: Burn's `Conv2d` with an optional weight quantizer.

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;

use super::{derived, materialise, weight_quantizer};
use crate::error::Result;
use crate::op::QuantBackend;
use crate::quantizer::{Quantizer, QuantizerConfig, Temperature};

/// Config of a [`QuantConv2d`]: Burn's `Conv2dConfig` and the weight quantizer (`None`: full
/// precision).
#[derive(Config, Debug)]
pub struct QuantConv2dConfig {
    /// The float layer.
    pub conv: Conv2dConfig,
    /// The weight quantizer, initialised from the layer's weights.
    pub weight_quant: Option<QuantizerConfig>,
}

impl QuantConv2dConfig {
    /// A freshly initialised layer (see [`super::QuantLinearConfig::init`]).
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`].
    pub fn init<B: Backend>(
        &self,
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<QuantConv2d<B>> {
        let layer = QuantConv2d::float(self.conv.init(device));
        match &self.weight_quant {
            Some(config) => QuantConv2d::from_float(layer.conv, config, temperature),
            None => Ok(layer),
        }
    }
}

/// A 2-D convolution whose weight is quantized when `quantizer` is set.
#[derive(Module, Debug)]
pub struct QuantConv2d<B: Backend> {
    /// The float layer: its weight is the latent full-precision weight that training updates.
    pub conv: Conv2d<B>,
    /// The weight quantizer, if this layer is quantized.
    pub quantizer: Option<Quantizer<B>>,
}

/// A full-precision slot around a Burn convolution ([`QuantConv2d::float`]): a model swaps
/// `Conv2dConfig::new(..).init(device)` for the same `.into()`.
impl<B: Backend> From<Conv2d<B>> for QuantConv2d<B> {
    fn from(conv: Conv2d<B>) -> Self {
        Self::float(conv)
    }
}

impl<B: Backend> QuantConv2d<B> {
    /// The weight's output-channel axis (`[c_out, c_in / groups, k_h, k_w]`): where per-channel
    /// scales run.
    pub const CHANNEL_AXIS: usize = 0;

    /// A full-precision layer.
    pub fn float(conv: Conv2d<B>) -> Self {
        Self {
            conv,
            quantizer: None,
        }
    }

    /// Turns a (trained) Burn `Conv2d` into a quantized one (see
    /// [`super::QuantLinear::from_float`]).
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`].
    pub fn from_float(
        conv: Conv2d<B>,
        config: &QuantizerConfig,
        temperature: &Temperature,
    ) -> Result<Self> {
        let mut layer = Self::float(conv);
        layer.quantize_from_weights(config, temperature)?;
        Ok(layer)
    }

    /// Sets the quantizer from the current weights, replacing any quantizer the layer had.
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`].
    pub fn quantize_from_weights(
        &mut self,
        config: &QuantizerConfig,
        temperature: &Temperature,
    ) -> Result<()> {
        let q = weight_quantizer(
            &self.conv.weight,
            &self.conv.bias,
            Self::CHANNEL_AXIS,
            config,
            temperature,
        )?;
        self.quantizer = Some(q);
        Ok(())
    }

    /// Initialises lazily initialised parameters now, so that clones share them.
    pub fn materialise(&self) {
        materialise(&self.conv.weight, &self.conv.bias);
    }
}

impl<B: QuantBackend> QuantConv2d<B> {
    /// The convolution with the (quantized) weight; padding, stride, dilation and groups as
    /// configured in the float layer.
    ///
    /// # Shapes
    /// As Burn's `Conv2d`: `[batch, c_in, h, w] -> [batch, c_out, h', w']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let weight = match &self.quantizer {
            Some(q) => q.forward(self.conv.weight.val()),
            None => self.conv.weight.val(),
        };
        let Some(options) = self.options() else {
            // Same padding: Burn's layer computes it (and pads) per input size.
            let mut layer = self.conv.clone();
            // `Param::initialized` keeps the quantized weight's graph (`from_tensor` would
            // try to make it a leaf), so gradients flow through the quantizer to the latent
            // weight.
            layer.weight = derived(weight);
            return layer.forward(x);
        };
        let bias = self.conv.bias.as_ref().map(|b| b.val());
        crate::op::conv2d(x, weight, bias, options)
    }

    /// The float layer's options when its padding is the same on both sides of each axis (the
    /// path of [`crate::op::conv2d`], whose backward is faster on flex); `None` for `Same`
    /// padding.
    fn options(&self) -> Option<ConvOptions<2>> {
        let padding = match self.conv.padding {
            PaddingConfig2d::Valid => [0, 0],
            PaddingConfig2d::Explicit(top, left, bottom, right)
                if top == bottom && left == right =>
            {
                [top, left]
            }
            _ => return None,
        };
        Some(ConvOptions::new(
            self.conv.stride,
            padding,
            self.conv.dilation,
            self.conv.groups,
        ))
    }

    /// A plain `Conv2d` holding the hard-quantized weight, computed once: the inference layer.
    pub fn freeze(&self) -> Conv2d<B> {
        let mut frozen = self.conv.clone();
        if let Some(q) = &self.quantizer {
            let weight = self.conv.weight.val();
            let hard = q.hard(weight.clone());
            frozen.weight = derived(hard.detach());
        }
        frozen
    }

    /// A plain `Conv2d` whose weight is a Burn quantized tensor (see
    /// [`super::QuantLinear::to_native`]).
    ///
    /// # Errors
    /// As [`crate::native::native_weight`].
    pub fn to_native(&self) -> Result<Conv2d<B>> {
        let mut native = self.conv.clone();
        if let Some(q) = &self.quantizer {
            native.weight = derived(crate::native::native_weight(self.conv.weight.val(), q)?);
        }
        Ok(native)
    }
}
