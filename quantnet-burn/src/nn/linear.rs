//! [`QuantLinear`]: Burn's `Linear` with an optional weight quantizer.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{derived, materialise, weight_quantizer};
use crate::error::Result;
use crate::op::QuantBackend;
use crate::quantizer::{Quantizer, QuantizerConfig, Temperature};

/// Config of a [`QuantLinear`]: Burn's `LinearConfig` and the weight quantizer (`None`: full
/// precision).
#[derive(Config, Debug)]
pub struct QuantLinearConfig {
    /// The float layer.
    pub linear: LinearConfig,
    /// The weight quantizer, initialised from the layer's weights.
    pub weight_quant: Option<QuantizerConfig>,
}

impl QuantLinearConfig {
    /// A freshly initialised layer; its quantizer (if any) is initialised from its random
    /// weights and reads `temperature`.
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`].
    pub fn init<B: Backend>(
        &self,
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<QuantLinear<B>> {
        let layer = QuantLinear::float(self.linear.init(device));
        match &self.weight_quant {
            Some(config) => QuantLinear::from_float(layer.linear, config, temperature),
            None => Ok(layer),
        }
    }
}

/// A linear layer whose weight is quantized when `quantizer` is set.
#[derive(Module, Debug)]
pub struct QuantLinear<B: Backend> {
    /// The float layer: its weight is the latent full-precision weight that training updates.
    pub linear: Linear<B>,
    /// The weight quantizer, if this layer is quantized.
    pub quantizer: Option<Quantizer<B>>,
}

/// A full-precision slot around a Burn linear layer ([`QuantLinear::float`]): a model swaps
/// `LinearConfig::new(..).init(device)` for the same `.into()`.
impl<B: Backend> From<Linear<B>> for QuantLinear<B> {
    fn from(linear: Linear<B>) -> Self {
        Self::float(linear)
    }
}

impl<B: Backend> QuantLinear<B> {
    /// The weight's output-channel axis (Burn stores a linear weight as `[d_input, d_output]`):
    /// where per-channel scales run.
    pub const CHANNEL_AXIS: usize = 1;

    /// A full-precision layer.
    pub fn float(linear: Linear<B>) -> Self {
        Self {
            linear,
            quantizer: None,
        }
    }

    /// Turns a (trained) Burn `Linear` into a quantized one; the quantizer is initialised from
    /// its weights (`β = 5p/(4q)`, thresholds as configured).
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`] (for instance an all-zero weight).
    pub fn from_float(
        linear: Linear<B>,
        config: &QuantizerConfig,
        temperature: &Temperature,
    ) -> Result<Self> {
        let mut layer = Self::float(linear);
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
            &self.linear.weight,
            &self.linear.bias,
            Self::CHANNEL_AXIS,
            config,
            temperature,
        )?;
        self.quantizer = Some(q);
        Ok(())
    }

    /// Initialises lazily initialised parameters now, so that clones share them.
    pub fn materialise(&self) {
        materialise(&self.linear.weight, &self.linear.bias);
    }
}

impl<B: QuantBackend> QuantLinear<B> {
    /// `y = x·Q(W) + b` (`Q` the identity without a quantizer).
    ///
    /// # Shapes
    /// As Burn's `Linear`: `[..., d_input] -> [..., d_output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.quantizer {
            Some(q) => {
                let weight = q.forward(self.linear.weight.val());
                let bias = self.linear.bias.as_ref().map(|b| b.val());
                burn::tensor::module::linear(x, weight, bias)
            }
            None => self.linear.forward(x),
        }
    }

    /// A plain `Linear` holding the hard-quantized weight, computed once: the inference layer
    /// (a copy of the float layer without a quantizer).
    pub fn freeze(&self) -> Linear<B> {
        let mut frozen = self.linear.clone();
        if let Some(q) = &self.quantizer {
            let weight = self.linear.weight.val();
            let hard = q.hard(weight.clone());
            frozen.weight = derived(hard.detach());
        }
        frozen
    }

    /// A plain `Linear` whose weight is a Burn quantized tensor (2, 4 or 8-bit integers and one
    /// scale; see [`crate::native`]): what a Burn user loads without quantnet. Without a
    /// quantizer, a copy of the float layer.
    ///
    /// # Errors
    /// As [`crate::native::native_weight`] (a level set Burn cannot hold, for instance).
    pub fn to_native(&self) -> Result<Linear<B>> {
        let mut native = self.linear.clone();
        if let Some(q) = &self.quantizer {
            native.weight = derived(crate::native::native_weight(self.linear.weight.val(), q)?);
        }
        Ok(native)
    }
}
