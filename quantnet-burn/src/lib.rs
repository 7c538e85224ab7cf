//! # quantnet-burn: Quantization Networks for Burn
//!
//! *Quantization Networks* (Yang et al., CVPR 2019) treat quantization as a non-linear function
//! that can be learned, not as an approximation. During training each quantized tensor goes
//! through the **soft quantizer**
//!
//! ```text
//! y = α · ( Σ_{i=1..n} s_i · σ(T·(β·x − b_i)) − o )
//! ```
//!
//! a sum of `n = |Y| − 1` temperature-scaled sigmoids whose step heights `s_i` are the gaps of the
//! target level set `Y` ([`LevelSet`]), with thresholds `b_i` set once from the data, learned
//! scales `α`, `β`, and a temperature `T` that rises every epoch. At inference the sigmoids become
//! unit steps and the output is exactly `α·y_k` for a level `y_k ∈ Y`
//! ([`hard_quantize`]).
//!
//! The op ([`soft_quantize`], module [`op`]) is a Burn backend extension ([`QuantBackend`]) with
//! its own backward pass, implemented for every backend: wgpu and cuda run a fused CubeCL kernel,
//! flex a fused CPU kernel, other backends (ndarray, Burn's `Fusion`) a generic tensor-op body,
//! and `Autodiff<B>` carries the custom backward (exact derivative, or the official code's weight rule: [`GradientMode`]).
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::Tensor;
//! use quantnet_burn::{GradientMode, LevelSet, QuantParams, hard_quantize, soft_quantize};
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let levels: LevelSet = "2".parse().unwrap(); // ternary {-1, 0, 1}
//! let params = QuantParams::<B>::new(&levels, 1.0, 1.0, &[-0.5, 0.5], &device).unwrap();
//! let x = Tensor::<B, 1>::from_floats([-2.0, -0.2, 0.3, 1.5], &device).require_grad();
//!
//! let soft = soft_quantize(x.clone(), &params, 10.0, GradientMode::Exact);
//! let grads = soft.sum().backward();
//! assert!(x.grad(&grads).is_some());
//!
//! let hard = hard_quantize(x, &params);
//! assert_eq!(hard.into_data().to_vec::<f32>().unwrap(), vec![-1.0, 0.0, 0.0, 1.0]);
//! # }
//! ```
//!
//! ## Features
//! - `flex` (default): Burn's pure-Rust CPU backend.
//! - `ndarray`: the ndarray CPU backend.
//! - `wgpu`, `cuda`: GPU backends with the fused CubeCL kernel (`cube`).
//! - `fusion`: support Burn's lazy `Fusion` backend (generic tensor-op body).
//! - `train` (default): the burn-train Learner hook ([`train::TemperatureHook`]) and metrics.
#![warn(clippy::print_stdout, clippy::unwrap_used)]

pub mod bench;
pub mod collective;
pub mod error;
pub mod init;
pub mod levels;
pub mod method;
pub mod native;
pub mod nn;
pub mod op;
pub mod quantizer;
pub mod schedule;
pub mod tie;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Error, Result};
pub use init::{ThresholdInit, initial_scales};
pub use levels::LevelSet;
pub use method::Method;
pub use nn::{QuantAct, QuantConv2d, QuantConv2dConfig, QuantLinear, QuantLinearConfig};
pub use op::{
    GradientMode, QatBackend, QuantBackend, QuantParams, check_temperature, hard_quantize,
    soft_quantize, soft_quantize_reference,
};
pub use quantizer::{
    ChannelLayout, Codes, Granularity, QuantMode, Quantizer, QuantizerConfig, Temperature,
    TemperatureField,
};
pub use schedule::TemperatureSchedule;
pub use tie::tie_shared_params;

/// The backends the unit tests run on (the integration tests have their own list,
/// `tests/integration/common.rs`, which runs every test on every compiled backend).
#[cfg(all(test, feature = "flex"))]
pub(crate) mod testing {
    /// The CPU backend.
    pub(crate) type TestBackend = burn::backend::Flex;
    /// The CPU backend with autodiff.
    pub(crate) type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;
}
