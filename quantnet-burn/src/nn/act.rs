//! [`QuantAct`]: an optional activation quantizer, and the [`Observer`] that records activations
//! for calibration.

use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::Result;
use crate::op::QuantBackend;
use crate::quantizer::{Quantizer, QuantizerConfig, Temperature};

/// Activations recorded by an [`Observer`]: the largest value seen and a strided sample of the
/// values (bounded per batch so that large feature maps stay cheap).
#[derive(Clone, Debug, Default)]
pub struct ActStats {
    /// The largest value seen (over all values, not only the sample).
    pub max: f32,
    /// The sampled values.
    pub samples: Vec<f32>,
    /// Whether a non-finite value was seen.
    pub non_finite: bool,
}

/// Values sampled per batch during calibration.
pub const SAMPLES_PER_BATCH: usize = 1 << 16;

/// The recording switch and buffer of a [`QuantAct`]; shared by its clones. Off until
/// [`Observer::start`]; while off, recording costs one lock per forward.
#[derive(Clone, Debug, Default)]
pub struct Observer(Arc<Mutex<Option<ActStats>>>);

impl Observer {
    /// Starts recording (clearing what was recorded).
    pub fn start(&self) {
        *self.lock() = Some(ActStats::default());
    }

    /// Stops recording and returns what was recorded.
    pub fn take(&self) -> Option<ActStats> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ActStats>> {
        // A poisoned lock only means another thread panicked while recording; the data is
        // still a valid (if partial) sample.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `x` if recording.
    pub fn record<B: Backend, const D: usize>(&self, x: &Tensor<B, D>) {
        let mut guard = self.lock();
        let Some(stats) = guard.as_mut() else {
            return;
        };
        let Ok(values) = x.clone().into_data().convert::<f32>().to_vec::<f32>() else {
            stats.non_finite = true;
            return;
        };
        let stride = values.len().div_ceil(SAMPLES_PER_BATCH).max(1);
        for (i, &v) in values.iter().enumerate() {
            if !v.is_finite() {
                stats.non_finite = true;
                continue;
            }
            stats.max = stats.max.max(v);
            if i % stride == 0 {
                stats.samples.push(v);
            }
        }
    }
}

/// An activation quantizer slot (after the ReLU); the identity when `quantizer` is `None`.
#[derive(Module, Debug)]
pub struct QuantAct<B: Backend> {
    /// The activation quantizer, if the activations here are quantized.
    pub quantizer: Option<Quantizer<B>>,
    /// Records the incoming activations while calibrating.
    #[module(skip)]
    pub observer: Observer,
}

impl<B: Backend> QuantAct<B> {
    /// A full-precision slot.
    pub fn float() -> Self {
        Self {
            quantizer: None,
            observer: Observer::default(),
        }
    }

    /// A slot quantizing with a quantizer calibrated on sampled activations (the paper samples
    /// 1000 training images and records each layer's activations): `β = 5p/(4q)` with `q` their
    /// maximum, thresholds as configured.
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`] (all-zero activations cannot set a scale).
    pub fn calibrate(
        config: &QuantizerConfig,
        samples: &[f32],
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Self {
            quantizer: Some(config.init_from_data(samples, temperature, device)?),
            observer: Observer::default(),
        })
    }
}

impl<B: QuantBackend> QuantAct<B> {
    /// Quantizes `x` if this slot has a quantizer (recording it first when calibrating).
    ///
    /// # Shapes
    /// Any shape; the output has the same shape.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.observer.record(&x);
        match &self.quantizer {
            Some(q) => q.forward(x),
            None => x,
        }
    }
}
