//! # quantnet-models: models, data and the QAT recipe for quantnet
//!
//! - [`qat`] (feature `train`): the quantization-aware-training recipe as a library, for any
//!   Burn model that implements [`models::QatModel`]: pretrain, quantize, calibrate, train while
//!   the temperature anneals, evaluate hard-quantized ([`qat::Qat::run`]).
//! - [`models`]: LeNet-5, the Brevitas FC nets (TFC, SFC, LFC), VGG-small, ResNet-20/18/50 and
//!   AlexNet-BN, one [`models::Model`], full precision or quantized from one config; the
//!   [`models::QatModel`] trait a model implements to be quantized.
//! - [`quantize`]: the precision policy, weight initialisation and activation calibration that
//!   turn a full-precision model into a quantized one.
//! - [`data`]: loaders for the real data sets in their original formats (a loader takes a
//!   directory).
//! - [`export`]: the `.qnet` file and Burn-native records of a quantized model.
//! - [`detect`]: Pascal VOC annotations and mean average precision (the detector is not built
//!   yet).
//! - [`stats`], [`train`]: every quantizer's state; burn-train steps and metrics.
//!
//! A model quantized by hand (the recipe does these steps, and trains):
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Tensor};
//! use quantnet_burn::LevelSet;
//! use quantnet_models::quantize::{calibrate_acts, quantize_weights};
//! use quantnet_models::{Arch, InputShape, Model, QuantPolicy, Temperatures};
//!
//! let device = Default::default();
//! let input = InputShape { channels: 1, height: 28, width: 28, classes: 10 };
//! let mut model = Model::<Flex>::new(Arch::Lenet5, input, &device);
//! // Ternary weights (first conv and last linear stay full precision), 2-bit activations.
//! let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), Some(LevelSet::unsigned(2).unwrap()));
//! let temperatures = Temperatures::default();
//! assert_eq!(quantize_weights(&mut model, &policy, &temperatures).unwrap(), 3);
//! let images = Tensor::<Flex, 4>::random([8, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
//! assert_eq!(calibrate_acts(&mut model, &policy, &temperatures, [images.clone()]).unwrap(), 4);
//! // Not an autodiff backend: the quantizers are hard.
//! assert_eq!(model.forward(images).dims(), [8, 10]);
//! # }
//! ```
#![warn(clippy::print_stdout, clippy::unwrap_used)]

#[cfg(feature = "train")]
pub mod bench;
pub mod data;
pub mod detect;
#[cfg(feature = "mpi")]
pub mod dist;
pub mod error;
pub mod export;
pub mod models;
#[cfg(feature = "train")]
pub mod prelude;
#[cfg(feature = "train")]
pub mod qat;
pub mod quantize;
pub mod stats;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Error, Result};
pub use models::{Arch, InputShape, Model};
pub use quantize::{QuantPolicy, Temperatures};
