//! # quantnet-models: models and real-data loaders for quantnet
//!
//! Today this crate holds the data side: loaders for the real data sets the CLI and the examples
//! train and calibrate on ([`data`]). The quantized models (LeNet-5, the Brevitas FC nets,
//! VGG-small, ResNet-20/18/50, AlexNet-BN) are built on `quantnet-burn`'s quantized layers and
//! arrive with them.
#![warn(clippy::print_stdout, clippy::unwrap_used)]

pub mod data;
pub mod error;

pub use error::{Error, Result};
