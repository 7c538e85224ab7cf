//! What a model and its training code use to add Quantization Networks quantization, in one
//! `use quantnet_models::prelude::*;` (as `burn::prelude` is for Burn): the quantized layers and
//! the backend traits of `quantnet-burn`, the [`QatModel`] trait and its derive, the precision
//! policy and the recipe's parts.

pub use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};
pub use quantnet_burn::{LevelSet, QatBackend, QuantBackend};

pub use crate::models::QatModel;
pub use crate::qat::{PlainRenderer, QatConfig};
pub use crate::quantize::QuantPolicy;
pub use crate::train::{QatStep, Recipe};
