//! A timed training step of a real model (feature `train`): what `quantnet bench train` and the
//! criterion bench measure, side by side per backend and precision.
//!
//! One step is the forward pass of a batch of synthetic images of the model's input shape,
//! cross-entropy against synthetic labels, the backward pass and an Adam update, then a device
//! sync; quantized models run their soft quantizers (weights at T = 5, activations at T = 10, the
//! anneal's start). Inference is the hard-quantized forward on the inner backend.

use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use quantnet_burn::QatBackend;
use quantnet_burn::collective::{AllReduceStats, AllReduced, Collective};
use std::sync::Arc;

use crate::error::Result;
use crate::models::{Arch, InputShape, Model};
use crate::quantize::{self, QuantPolicy, Temperatures};

/// Median, fastest and slowest of timed repetitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// The median.
    pub median: Duration,
    /// The fastest.
    pub min: Duration,
    /// The slowest.
    pub max: Duration,
}

impl Timing {
    /// Runs `f` `warmup` times untimed, then `runs` (at least 1) times timed.
    pub fn of(warmup: usize, runs: usize, mut f: impl FnMut()) -> Self {
        for _ in 0..warmup {
            f();
        }
        let mut times: Vec<Duration> = (0..runs.max(1))
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        times.sort();
        Self {
            median: times[times.len() / 2],
            min: times[0],
            max: times[times.len() - 1],
        }
    }
}

/// One model, its optimizer and a synthetic batch, ready to step.
pub struct TrainCase<B: QatBackend> {
    model: Option<Model<B>>,
    optim: AllReduced<OptimizerAdaptor<Adam, Model<B>, B>>,
    images: Tensor<B, 4>,
    targets: Tensor<B, 1, Int>,
    device: B::Device,
    _temperatures: Temperatures,
}

impl<B: QatBackend> TrainCase<B> {
    /// `arch` for `input`, quantized by `policy` (weights from their random initialisation,
    /// activations calibrated on the batch) unless it is full precision, and a batch of `batch`
    /// images `~ N(0, 1)` with uniform random labels.
    ///
    /// # Errors
    /// As [`quantize::quantize_weights`] and [`quantize::calibrate_acts`].
    pub fn new(
        arch: Arch,
        input: InputShape,
        batch: usize,
        policy: &QuantPolicy,
        device: &B::Device,
    ) -> Result<Self> {
        let shape = [batch, input.channels, input.height, input.width];
        let images =
            Tensor::<B::InnerBackend, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
        let targets = Tensor::<B::InnerBackend, 1, Int>::random(
            [batch],
            Distribution::Uniform(0.0, input.classes as f64),
            device,
        );
        let temperatures = Temperatures::default();
        temperatures.weights.set(5.0);
        temperatures.acts.set(10.0);
        let mut model = Model::<B::InnerBackend>::new(arch, input, device);
        quantize::quantize_weights(&mut model, policy, &temperatures)?;
        quantize::calibrate_acts(&mut model, policy, &temperatures, [images.clone()])?;
        Ok(Self {
            model: Some(Model::from_inner(model)),
            optim: AllReduced::over(AdamConfig::new().init(), None),
            images: Tensor::from_inner(images),
            targets: Tensor::from_inner(targets),
            device: device.clone(),
            _temperatures: temperatures,
        })
    }

    /// Each step with the mean gradient over `group`'s ranks (one flat all-reduce per step),
    /// as `quantnet train --distributed` steps: every rank runs its own batch.
    pub fn over(mut self, group: Arc<dyn Collective>) -> Self {
        self.optim = AllReduced::new(AdamConfig::new().init(), group);
        self
    }

    /// What the all-reduce sent and cost so far (nothing without [`TrainCase::over`]).
    pub fn all_reduce_stats(&self) -> AllReduceStats {
        self.optim.stats().lock().map(|s| *s).unwrap_or_default()
    }

    /// Images per batch.
    pub fn batch(&self) -> usize {
        self.images.dims()[0]
    }

    /// One training step (forward, loss, backward, Adam update), synchronised.
    ///
    /// # Panics
    /// If the device fails to synchronise.
    pub fn step(&mut self) {
        let Some(model) = self.model.take() else {
            return;
        };
        let output = model.forward(self.images.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&self.device)
            .forward(output, self.targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(1e-3, model, grads));
        B::sync(&self.device).expect("the device should synchronise");
    }

    /// The hard-quantized forward pass of the batch on the inner backend, synchronised.
    ///
    /// # Panics
    /// If the device fails to synchronise.
    pub fn infer(&self) {
        let Some(model) = &self.model else {
            return;
        };
        drop(model.valid().forward(self.images.clone().inner()));
        <B::InnerBackend as Backend>::sync(&self.device).expect("the device should synchronise");
    }
}

/// A freshly initialised `arch` for `input` quantized by `policy` (weights from their random
/// initialisation, activations calibrated on one batch of 16 images `~ N(0, 1)`), exported as a
/// `.qnet` in memory: what `quantnet bench infer --model` times, so that nobody needs a trained
/// file to compare engines.
///
/// # Errors
/// As [`quantize::quantize_weights`], [`quantize::calibrate_acts`] and [`crate::export::export`].
pub fn quantized_export<B: quantnet_burn::QuantBackend>(
    arch: Arch,
    input: InputShape,
    policy: &QuantPolicy,
    device: &B::Device,
) -> Result<crate::export::Export> {
    let temperatures = Temperatures::default();
    let images = Tensor::<B, 4>::random(
        [16, input.channels, input.height, input.width],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let mut model = Model::<B>::new(arch, input, device);
    quantize::quantize_weights(&mut model, policy, &temperatures)?;
    quantize::calibrate_acts(&mut model, policy, &temperatures, [images])?;
    crate::export::export(&mut model, arch, input, None)
}

/// The input shape a model is benchmarked at: MNIST's for LeNet-5 and the FC nets, CIFAR-10's
/// for VGG-small and ResNet-20, ImageNet's for the other classifiers, VOC's for the detectors.
pub fn default_input(arch: Arch) -> InputShape {
    let (channels, size, classes) = match arch {
        Arch::Lenet5 | Arch::Tfc | Arch::Sfc | Arch::Lfc => (1, 28, 10),
        Arch::VggSmall | Arch::Resnet20 => (3, 32, 10),
        Arch::Resnet18 | Arch::Resnet50 | Arch::AlexnetBn => (3, 224, 1000),
        // VOC's 20 classes.
        Arch::SsdSmall | Arch::Ssd300 => (3, arch.detector().map_or(0, |k| k.image_size()), 20),
    };
    InputShape {
        channels,
        height: size,
        width: size,
        classes,
    }
}
