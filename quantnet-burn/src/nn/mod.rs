//! Quantized layers: [`QuantLinear`], [`QuantConv2d`] and [`QuantAct`], one family for every
//! model.
//!
//! Each holds an *optional* quantizer, so the full-precision and the quantized variant of a model
//! are the same type, and a trained full-precision model (or checkpoint) becomes a quantized one
//! in place. The linear and conv layers wrap Burn's own `Linear` / `Conv2d` (every option of those
//! works, and [`QuantLinear::from_float`] takes a trained one as it is); their weight passes
//! through the [`Quantizer`] on every forward, the bias stays float.
//! [`QuantAct`] quantizes activations and is placed *after* the ReLU (and pooling), which it does
//! not replace (paper-spec §5); its [`Observer`] records what passes through it during
//! calibration.
//!
//! For inference, [`QuantLinear::freeze`] and [`QuantConv2d::freeze`] compute the hard-quantized
//! weight once and return a plain Burn layer holding it; `to_native` stores it as Burn's own
//! quantized tensor.
//!
//! Record keys: `linear` / `conv` (the Burn layer) and `quantizer` (absent or `None` when the
//! layer is full precision), the same as the layers these replaced, so files written before
//! load unchanged.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::backend::Flex;
//! use burn::nn::LinearConfig;
//! use quantnet_burn::nn::QuantLinearConfig;
//! use quantnet_burn::{LevelSet, QuantizerConfig, Temperature};
//!
//! let device = Default::default();
//! let config = QuantLinearConfig::new(LinearConfig::new(16, 4))
//!     .with_weight_quant(Some(QuantizerConfig::weights(LevelSet::ternary())));
//! let layer = config.init::<Flex>(&Temperature::new(5.0), &device).unwrap();
//! // Flex is not an autodiff backend: the quantizer is hard, the weight on the level grid.
//! let frozen = layer.freeze();
//! let alpha: f32 = layer.quantizer.as_ref().unwrap().alpha.val().abs().into_scalar();
//! for w in frozen.weight.val().into_data().to_vec::<f32>().unwrap() {
//!     assert!([-alpha, 0.0, alpha].contains(&w));
//! }
//! # }
//! ```

mod act;
mod conv2d;
mod linear;

use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub use act::{ActStats, Observer, QuantAct, SAMPLES_PER_BATCH};
pub use conv2d::{QuantConv2d, QuantConv2dConfig};
pub use linear::{QuantLinear, QuantLinearConfig};

use crate::error::Result;
use crate::quantizer::{Quantizer, QuantizerConfig, Temperature, read_back};

/// The weight quantizer of a float layer (`weight`, `bias`), initialised from its weights.
///
/// Burn initialises parameters lazily, and a clone of a not-yet-initialised parameter draws its
/// own values. The layers clone their float layer (`freeze`, the conv forward), so every parameter
/// is materialised here, once, when the layer is quantized: the weight by reading it, the bias
/// explicitly.
/// `channel_axis` is the weight's output-channel axis (per-channel scales).
fn weight_quantizer<B: Backend, const D: usize>(
    weight: &Param<Tensor<B, D>>,
    bias: &Option<Param<Tensor<B, 1>>>,
    channel_axis: usize,
    config: &QuantizerConfig,
    temperature: &Temperature,
) -> Result<Quantizer<B>> {
    materialise(weight, bias);
    let weight = weight.val();
    let device = weight.device();
    let dims = weight.dims();
    let values = read_back::<f32>(weight.into_data(), "weights")?;
    config.init_from_weights(&values, &dims, channel_axis, temperature, &device)
}

/// Initialises lazily initialised parameters now (see [`weight_quantizer`]).
fn materialise<B: Backend, const D: usize>(
    weight: &Param<Tensor<B, D>>,
    bias: &Option<Param<Tensor<B, 1>>>,
) {
    // Bias first: the order the random draws were made in before, kept so that runs repeat.
    if let Some(bias) = bias {
        let _ = bias.val();
    }
    let _ = weight.val();
}

/// A parameter holding `value` under a new id (a derived weight, not the trained one).
fn derived<B: Backend, const D: usize>(value: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::initialized(burn::module::ParamId::new(), value)
}

#[cfg(all(test, feature = "flex"))]
mod tests;
