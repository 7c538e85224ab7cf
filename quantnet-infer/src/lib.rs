//! Integer inference for quantnet's exported low-bit models.
//!
//! A `.qnet` file ([`mod@format`]) holds a model trained by quantnet: quantized weights as level
//! codes, activation quantizers, and the float layers. [`Engine`] packs it once and runs it on
//! the CPU with integer arithmetic: every quantized conv and linear layer multiplies u8
//! activation codes by s8 weight levels into exact i32 sums ([`kernels`]: AVX-512 VNNI, AVX2 or
//! portable code, chosen at run time), then one epilogue per output channel scales, adds the
//! bias, applies batch norm, the residual and ReLU, and quantizes for the next layer, writing its
//! codes directly (for layers without a residual, as integer thresholds on the sums). The first
//! and last layers, which training keeps in full precision, run on floats.
//!
//! The engine computes the model's **code-domain forward**: each quantized layer's sum
//! `z = Σ y_w·y_a` is exact, its value is `fl(fl(α_w·α_a)·z)`, and the epilogue's float steps
//! are fixed (docs/inference.md). Every instruction-set path gives the same bits. Burn's hard
//! forward computes the same function with the scales inside the sums; the two agree except
//! where float rounding lands a value on the other side of a threshold (counted in the docs).
//!
//! ```no_run
//! use quantnet_infer::{Engine, Isa, Mode};
//! let engine = Engine::load("w2a2.qnet".as_ref(), Isa::best(), Mode::Int)?;
//! let images = vec![0.0f32; 2 * 28 * 28]; // two normalised 1×28×28 images, NCHW
//! let classes = engine.predict(&images, 2, 1)?;
//! # Ok::<(), quantnet_infer::Error>(())
//! ```
//!
//! The crate has no dependency on Burn: a device build is small.

pub mod error;
pub mod format;
pub mod kernels;
pub mod layer;
mod net;
#[cfg(feature = "onnx")]
pub mod onnx;

pub use error::{Error, Result};
pub use kernels::Isa;
pub use net::{Engine, Header, InputShape, LayerInfo, Mode};
