//! The integration tests of quantnet-models, one binary (`cargo test -p quantnet-models`):
//!
//! - [`models`]: parameter counts against the reference layouts, one quantized training step per
//!   model, the precision policy, the activations-only phase, clipping in the `ŵ` domain,
//!   batch-norm re-estimation.
//! - [`export`]: `.qnet` packing and checksums, parity of exported models with the training-time
//!   hard-quantized model, Burn-native export, bad files, and files written by earlier versions.
//! - [`onnx`]: ONNX export run in tract against Burn's hard forward.
//! - [`train`]: burn-train with the temperature hook and exact resume, and the library recipe
//!   ([`quantnet_models::qat`]) on a user-defined model, on the MNIST fixture.

mod export;
mod infer;
mod models;
mod onnx;
mod train;

/// The backends every test here runs on, and the lock on their random state.
pub(crate) mod backend {
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// The inner (non-autodiff) backend.
    pub(crate) type Inner = burn::backend::Flex;
    /// The training backend.
    pub(crate) type Train = burn::backend::Autodiff<Inner>;

    static SERIAL: Mutex<()> = Mutex::new(());

    /// Ternary weights and 2-bit activations, the paper's rules (maximum range, k-means
    /// thresholds): the policy most tests quantize with.
    pub(crate) fn ternary_u2() -> quantnet_models::QuantPolicy {
        quantnet_models::QuantPolicy {
            weights: Some(quantnet_burn::QuantizerConfig::weights(
                quantnet_burn::LevelSet::ternary(),
            )),
            acts: Some(quantnet_burn::QuantizerConfig::activations(
                quantnet_burn::LevelSet::unsigned(2).expect("2 bits is a valid width"),
            )),
            quantize_all: false,
            act_percentile: None,
            act_mse: false,
        }
    }

    /// The backend's random state is one per process: a test that seeds it or draws from it
    /// holds this lock for its whole run, so that a test comparing two seeded runs is not
    /// disturbed by another test's draws (the tests run on parallel threads).
    pub(crate) fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
