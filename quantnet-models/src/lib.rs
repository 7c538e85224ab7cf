//! # quantnet-models: models and real-data loaders for quantnet
//!
//! - [`data`]: loaders for the real data sets, in their original formats.
//! - [`models`]: LeNet-5, the Brevitas FC nets (TFC, SFC, LFC), VGG-small, ResNet-20/18/50 and
//!   AlexNet-BN, one [`models::Model`] each, full precision or quantized from one config.
//! - [`quantize`]: the precision policy, weight initialisation and activation calibration that
//!   turn a full-precision model into a quantized one.
#![warn(clippy::print_stdout, clippy::unwrap_used)]

pub mod data;
pub mod error;
pub mod export;
pub mod models;
#[cfg(feature = "train")]
pub mod qat;
pub mod quantize;
pub mod stats;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Error, Result};
pub use models::{Arch, InputShape, Model};
pub use quantize::{QuantPolicy, Temperatures};
