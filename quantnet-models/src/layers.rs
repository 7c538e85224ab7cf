//! Layers that are quantized or not, decided per layer when the model is made.
//!
//! Every model in this crate is built from these three, so one config gives both the
//! full-precision and the quantized variant, and a full-precision model (or checkpoint) turns
//! into a quantized one in place ([`crate::quantize`]):
//! - [`QConv2d`] and [`QLinear`]: a Burn `Conv2d` / `Linear` and an optional weight quantizer.
//! - [`QAct`]: an optional activation quantizer, placed after the ReLU (and pooling). Without a
//!   quantizer it is the identity, and it can record the activations that pass through it, which
//!   is how the calibration pass samples them.

use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use quantnet_burn::nn::{quantized_conv2d, quantized_linear};
use quantnet_burn::{QuantBackend, Quantizer};

/// A convolution whose weight is quantized when `quantizer` is set.
#[derive(Module, Debug)]
pub struct QConv2d<B: Backend> {
    /// The float layer (its weight is the latent weight when quantized).
    pub conv: Conv2d<B>,
    /// The weight quantizer, if this layer is quantized.
    pub quantizer: Option<Quantizer<B>>,
}

impl<B: Backend> QConv2d<B> {
    /// A full-precision layer.
    pub fn float(conv: Conv2d<B>) -> Self {
        Self {
            conv,
            quantizer: None,
        }
    }
}

impl<B: QuantBackend> QConv2d<B> {
    /// # Shapes
    /// As Burn's `Conv2d`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.quantizer {
            Some(q) => quantized_conv2d(&self.conv, q, x),
            None => self.conv.forward(x),
        }
    }
}

/// A linear layer whose weight is quantized when `quantizer` is set.
#[derive(Module, Debug)]
pub struct QLinear<B: Backend> {
    /// The float layer.
    pub linear: Linear<B>,
    /// The weight quantizer, if this layer is quantized.
    pub quantizer: Option<Quantizer<B>>,
}

impl<B: Backend> QLinear<B> {
    /// A full-precision layer.
    pub fn float(linear: Linear<B>) -> Self {
        Self {
            linear,
            quantizer: None,
        }
    }
}

impl<B: QuantBackend> QLinear<B> {
    /// # Shapes
    /// As Burn's `Linear`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.quantizer {
            Some(q) => quantized_linear(&self.linear, q, x),
            None => self.linear.forward(x),
        }
    }
}

/// Activations recorded by a [`QAct`] during calibration: the largest value seen and a strided
/// sample of the values (bounded per batch so that large feature maps stay cheap).
#[derive(Clone, Debug, Default)]
pub struct ActStats {
    /// The largest value seen (over all values, not only the sample).
    pub max: f32,
    /// The sampled values.
    pub samples: Vec<f32>,
    /// Whether a non-finite value was seen.
    pub non_finite: bool,
}

/// Values sampled per batch and per activation quantizer during calibration.
pub const SAMPLES_PER_BATCH: usize = 1 << 16;

/// The recording switch and buffer of a [`QAct`]; shared by its clones.
#[derive(Clone, Debug, Default)]
pub struct Probe(Arc<Mutex<Option<ActStats>>>);

impl Probe {
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

    fn record<B: Backend, const D: usize>(&self, x: &Tensor<B, D>) {
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
pub struct QAct<B: Backend> {
    /// The activation quantizer, if the activations here are quantized.
    pub quantizer: Option<Quantizer<B>>,
    /// Records the incoming activations while calibrating.
    #[module(skip)]
    pub probe: Probe,
}

impl<B: Backend> QAct<B> {
    /// A full-precision slot.
    pub fn float() -> Self {
        Self {
            quantizer: None,
            probe: Probe::default(),
        }
    }
}

impl<B: QuantBackend> QAct<B> {
    /// Quantizes `x` if this slot has a quantizer (recording it first when calibrating).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.probe.record(&x);
        match &self.quantizer {
            Some(q) => q.forward(x),
            None => x,
        }
    }
}

/// A full-precision `k×k` convolution slot (Burn's default initialisation).
pub(crate) fn conv<B: Backend>(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
    device: &B::Device,
) -> QConv2d<B> {
    QConv2d::float(
        burn::nn::conv::Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(burn::nn::PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .init(device),
    )
}

/// A full-precision linear slot (Burn's default initialisation).
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> QLinear<B> {
    QLinear::float(
        burn::nn::LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .init(device),
    )
}
