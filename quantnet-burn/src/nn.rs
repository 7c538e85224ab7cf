//! Quantized layers: [`QuantLinear`], [`QuantConv2d`] and [`QuantAct`].
//!
//! The linear and conv layers wrap Burn's own `Linear` / `Conv2d` (so every option of those
//! works, and `from_float` takes a trained one as it is); their weight passes through a
//! [`Quantizer`] on every forward, the bias stays float. [`QuantAct`] quantizes activations and is
//! placed *after* the ReLU (and pooling), which it does not replace (paper-spec §5).
//!
//! For inference, [`QuantLinear::freeze`] and [`QuantConv2d::freeze`] compute the hard-quantized
//! weight once and return a plain Burn layer holding it.

use burn::module::{Module, Param, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::op::{QuantBackend, hard_quantize};
use crate::quantizer::{Quantizer, QuantizerConfig, Temperature, read_back};

/// The weight quantizer of a float layer (`weight`, `bias`), initialised from its weights.
///
/// Burn initialises parameters lazily, and a clone of a not-yet-initialised parameter draws its
/// own values. The layers clone their float layer (`freeze`, the conv forward), so every parameter
/// is materialised here, once, when the quantized layer is made: the weight by reading it, the
/// bias explicitly.
pub fn weight_quantizer<B: Backend, const D: usize>(
    weight: &Param<Tensor<B, D>>,
    bias: &Option<Param<Tensor<B, 1>>>,
    config: &QuantizerConfig,
    temperature: &Temperature,
) -> Result<Quantizer<B>> {
    if let Some(bias) = bias {
        let _ = bias.val();
    }
    let weight = weight.val();
    let device = weight.device();
    let values = read_back::<f32>(weight.into_data(), "weights")?;
    config.init_from_data(&values, temperature, &device)
}

/// `linear`'s forward with its weight passed through `quantizer` (soft or hard, as the
/// quantizer's mode says); the bias stays float. The building block of [`QuantLinear`], for
/// models that decide per layer whether to quantize.
pub fn quantized_linear<B: QuantBackend, const D: usize>(
    linear: &Linear<B>,
    quantizer: &Quantizer<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let weight = quantizer.forward(linear.weight.val());
    burn::tensor::module::linear(x, weight, linear.bias.as_ref().map(|b| b.val()))
}

/// `conv`'s forward with its weight passed through `quantizer`; padding, stride, dilation and
/// groups as configured in `conv`. The building block of [`QuantConv2d`].
pub fn quantized_conv2d<B: QuantBackend>(
    conv: &Conv2d<B>,
    quantizer: &Quantizer<B>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let mut layer = conv.clone();
    // `Param::initialized` keeps the quantized weight's graph (`from_tensor` would try to make
    // it a leaf), so gradients flow through the quantizer to the latent weight.
    layer.weight = Param::initialized(ParamId::new(), quantizer.forward(conv.weight.val()));
    layer.forward(x)
}

/// A copy of `linear` holding its hard-quantized weight, computed once.
pub fn frozen_linear<B: QuantBackend>(linear: &Linear<B>, quantizer: &Quantizer<B>) -> Linear<B> {
    let mut frozen = linear.clone();
    let hard = hard_quantize(linear.weight.val(), &quantizer.params());
    frozen.weight = Param::initialized(ParamId::new(), hard.detach());
    frozen
}

/// A copy of `conv` holding its hard-quantized weight, computed once.
pub fn frozen_conv2d<B: QuantBackend>(conv: &Conv2d<B>, quantizer: &Quantizer<B>) -> Conv2d<B> {
    let mut frozen = conv.clone();
    let hard = hard_quantize(conv.weight.val(), &quantizer.params());
    frozen.weight = Param::initialized(ParamId::new(), hard.detach());
    frozen
}

/// A copy of `linear` whose weight is a Burn quantized tensor holding the hard-quantized weight
/// (see [`crate::native`]): a plain Burn layer, loadable without quantnet.
///
/// # Errors
/// As [`crate::native::native_weight`] (a level set Burn cannot hold, for instance).
pub fn native_linear<B: QuantBackend>(
    linear: &Linear<B>,
    quantizer: &Quantizer<B>,
) -> Result<Linear<B>> {
    let mut native = linear.clone();
    let weight = crate::native::native_weight(linear.weight.val(), quantizer)?;
    native.weight = Param::initialized(ParamId::new(), weight);
    Ok(native)
}

/// A copy of `conv` whose weight is a Burn quantized tensor (see [`native_linear`]).
///
/// # Errors
/// As [`crate::native::native_weight`].
pub fn native_conv2d<B: QuantBackend>(
    conv: &Conv2d<B>,
    quantizer: &Quantizer<B>,
) -> Result<Conv2d<B>> {
    let mut native = conv.clone();
    let weight = crate::native::native_weight(conv.weight.val(), quantizer)?;
    native.weight = Param::initialized(ParamId::new(), weight);
    Ok(native)
}

/// Config of a [`QuantLinear`]: Burn's `LinearConfig` plus the weight quantizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuantLinearConfig {
    /// The float layer.
    pub linear: LinearConfig,
    /// The weight quantizer.
    pub weights: QuantizerConfig,
}

impl QuantLinearConfig {
    /// A freshly initialised layer whose quantizer is initialised from its random weights.
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`].
    pub fn init<B: Backend>(
        &self,
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<QuantLinear<B>> {
        QuantLinear::from_float(self.linear.init(device), &self.weights, temperature)
    }
}

/// A linear layer with quantized weights.
#[derive(Module, Debug)]
pub struct QuantLinear<B: Backend> {
    /// The float layer: its weight is the latent full-precision weight that training updates.
    pub linear: Linear<B>,
    /// The weight quantizer.
    pub quantizer: Quantizer<B>,
}

impl<B: Backend> QuantLinear<B> {
    /// Turns a (trained) Burn `Linear` into a quantized one; the quantizer is initialised from its
    /// weights (`β = 5p/(4q)`, thresholds as configured).
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`] (for instance an all-zero weight).
    pub fn from_float(
        linear: Linear<B>,
        config: &QuantizerConfig,
        temperature: &Temperature,
    ) -> Result<Self> {
        let quantizer = weight_quantizer(&linear.weight, &linear.bias, config, temperature)?;
        Ok(Self { linear, quantizer })
    }
}

impl<B: QuantBackend> QuantLinear<B> {
    /// `y = x·Q(W) + b`.
    ///
    /// # Shapes
    /// As Burn's `Linear`: `[..., d_input] -> [..., d_output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        quantized_linear(&self.linear, &self.quantizer, x)
    }

    /// A plain `Linear` holding the hard-quantized weight, computed once: the inference layer.
    pub fn freeze(&self) -> Linear<B> {
        frozen_linear(&self.linear, &self.quantizer)
    }

    /// A plain `Linear` whose weight is a Burn quantized tensor (2, 4 or 8-bit integers and one
    /// scale; see [`crate::native`]): what a Burn user loads without quantnet.
    ///
    /// # Errors
    /// As [`crate::native::native_weight`] (a level set Burn cannot hold, for instance).
    pub fn to_native(&self) -> Result<Linear<B>> {
        native_linear(&self.linear, &self.quantizer)
    }
}

/// Config of a [`QuantConv2d`]: Burn's `Conv2dConfig` plus the weight quantizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuantConv2dConfig {
    /// The float layer.
    pub conv: Conv2dConfig,
    /// The weight quantizer.
    pub weights: QuantizerConfig,
}

impl QuantConv2dConfig {
    /// A freshly initialised layer whose quantizer is initialised from its random weights.
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`].
    pub fn init<B: Backend>(
        &self,
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<QuantConv2d<B>> {
        QuantConv2d::from_float(self.conv.init(device), &self.weights, temperature)
    }
}

/// A 2-D convolution with quantized weights.
#[derive(Module, Debug)]
pub struct QuantConv2d<B: Backend> {
    /// The float layer: its weight is the latent full-precision weight that training updates.
    pub conv: Conv2d<B>,
    /// The weight quantizer.
    pub quantizer: Quantizer<B>,
}

impl<B: Backend> QuantConv2d<B> {
    /// Turns a (trained) Burn `Conv2d` into a quantized one (see [`QuantLinear::from_float`]).
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_from_data`].
    pub fn from_float(
        conv: Conv2d<B>,
        config: &QuantizerConfig,
        temperature: &Temperature,
    ) -> Result<Self> {
        let quantizer = weight_quantizer(&conv.weight, &conv.bias, config, temperature)?;
        Ok(Self { conv, quantizer })
    }
}

impl<B: QuantBackend> QuantConv2d<B> {
    /// The convolution with the quantized weight; padding, stride, dilation and groups as
    /// configured in the float layer.
    ///
    /// # Shapes
    /// As Burn's `Conv2d`: `[batch, c_in, h, w] -> [batch, c_out, h', w']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        quantized_conv2d(&self.conv, &self.quantizer, x)
    }

    /// A plain `Conv2d` holding the hard-quantized weight, computed once: the inference layer.
    pub fn freeze(&self) -> Conv2d<B> {
        frozen_conv2d(&self.conv, &self.quantizer)
    }

    /// A plain `Conv2d` whose weight is a Burn quantized tensor (see [`QuantLinear::to_native`]).
    ///
    /// # Errors
    /// As [`crate::native::native_weight`].
    pub fn to_native(&self) -> Result<Conv2d<B>> {
        native_conv2d(&self.conv, &self.quantizer)
    }
}

/// An activation quantizer (after the ReLU).
#[derive(Module, Debug)]
pub struct QuantAct<B: Backend> {
    /// The quantizer.
    pub quantizer: Quantizer<B>,
}

impl<B: Backend> QuantAct<B> {
    /// Calibrates on sampled activations (the paper samples 1000 training images and records
    /// each layer's activations): `β = 5p/(4q)` with `q` their maximum, thresholds by k-means.
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
            quantizer: config.init_from_data(samples, temperature, device)?,
        })
    }
}

impl<B: QuantBackend> QuantAct<B> {
    /// Quantizes the activations.
    ///
    /// # Shapes
    /// Any shape; the output has the same shape.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.quantizer.forward(x)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::levels::LevelSet;
    use crate::quantizer::QuantMode;
    use burn::backend::{Autodiff, Flex};
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::Distribution;

    type B = Autodiff<Flex>;

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec().expect("f32 tensor")
    }

    #[test]
    fn quantizers_made_on_the_inner_backend_are_trainable_after_from_inner() {
        use burn::module::AutodiffModule;
        let device = Default::default();
        let t = Temperature::new(5.0);
        let config = QuantizerConfig::weights(LevelSet::three_pm4());
        let inner = QuantLinearConfig {
            linear: LinearConfig::new(4, 3),
            weights: config.clone(),
        }
        .init::<Flex>(&t, &device)
        .unwrap();
        let layer = <QuantLinear<B> as AutodiffModule<B>>::from_inner(inner);
        let q = &layer.quantizer;
        assert!(q.alpha.val().is_require_grad());
        assert!(q.beta.val().is_require_grad());
        // Thresholds are frozen unless configured, levels always.
        assert!(!q.thresholds.val().is_require_grad());
        assert!(!q.levels.val().is_require_grad());
        let learn = QuantizerConfig {
            learn_thresholds: true,
            ..config
        };
        let inner =
            learn.init_with::<Flex>(0.5, 2.0, &[-1.0, 0.0, 1.0, 2.0, 3.0, 4.0], &t, &device);
        let q = <Quantizer<B> as AutodiffModule<B>>::from_inner(inner.unwrap());
        assert!(q.thresholds.val().is_require_grad());
    }

    #[test]
    fn a_record_of_another_level_set_is_caught_on_load() {
        use burn::module::Module;
        let device = Default::default();
        let t = Temperature::new(5.0);
        let make = |levels: LevelSet| {
            QuantizerConfig::weights(levels)
                .init_with::<Flex>(0.5, 2.0, &[-0.05, 0.05], &t, &device)
                .unwrap()
        };
        let ternary = make(LevelSet::ternary());
        assert!(ternary.check_levels().is_ok());
        // {-2, 0, 2} has as many levels as ternary: the record loads without a shape error.
        let other = make(LevelSet::new(vec![-2.0, 0.0, 2.0]).unwrap());
        let loaded = ternary.load_record(other.into_record());
        let err = loaded.check_levels().unwrap_err().to_string();
        assert!(
            err.contains("differ from the quantizer's level set"),
            "{err}"
        );
    }

    #[test]
    fn beta_is_not_trained_where_it_cannot_change_the_hard_function() {
        // Binary weights: one threshold at 0, hard = α·sign(x) whatever β (> 0); measured: β
        // trained fast drifted to 0.016 and the soft network never approached the hard one.
        let device = Default::default();
        let t = Temperature::new(5.0);
        let make = |levels: LevelSet, b: &[f32], learn: bool| {
            let config = QuantizerConfig {
                learn_thresholds: learn,
                ..QuantizerConfig::weights(levels)
            };
            let q = config.init_with::<Flex>(0.5, 2.0, b, &t, &device).unwrap();
            <Quantizer<B> as burn::module::AutodiffModule<B>>::from_inner(q)
        };
        let binary = make(LevelSet::binary(), &[0.0], false);
        assert!(!binary.beta.val().is_require_grad());
        assert!(binary.alpha.val().is_require_grad());
        // Ternary (thresholds ±0.05: β sets the zero band) and binary with learned thresholds
        // (they leave 0) train β.
        assert!(
            make(LevelSet::ternary(), &[-0.05, 0.05], false)
                .beta
                .val()
                .is_require_grad()
        );
        assert!(
            make(LevelSet::binary(), &[0.0], true)
                .beta
                .val()
                .is_require_grad()
        );
    }

    /// Regression (α and β had no sign constraint; a β that crossed zero reversed the
    /// quantizer): the quantizer uses |α| and |β|, so flipping the stored signs changes nothing.
    /// Ternary, α = 0.5, β = 2, thresholds ±0.05: hard(0.3) = 0.5·(1 + 1 − 1) = 0.5,
    /// hard(−0.3) = −0.5, hard(0.01) = 0 (β·x = 0.02 sits between the thresholds).
    #[test]
    fn negative_stored_scales_act_as_their_magnitudes() {
        let device = Default::default();
        let t = Temperature::new(5.0);
        let config = QuantizerConfig::weights(LevelSet::ternary());
        let x = || Tensor::<Flex, 1>::from_floats([0.3, -0.3, 0.01], &device);
        let make = |a, b| {
            config
                .init_with::<Flex>(a, b, &[-0.05, 0.05], &t, &device)
                .unwrap()
        };
        for mode in [QuantMode::Hard, QuantMode::Soft] {
            let positive = make(0.5, 2.0).with_mode(mode).forward(x());
            for (a, b) in [(-0.5, 2.0), (0.5, -2.0), (-0.5, -2.0)] {
                let flipped = make(a, b).with_mode(mode).forward(x());
                assert_eq!(
                    values(flipped),
                    values(positive.clone()),
                    "{mode:?} α={a} β={b}"
                );
            }
            if mode == QuantMode::Hard {
                assert_eq!(values(positive), vec![0.5, -0.5, 0.0]);
            }
        }
    }

    #[test]
    fn quantized_layers_keep_shapes_and_send_gradients_to_weights_and_scales() {
        let device = Default::default();
        let t = Temperature::new(5.0);
        let conv = QuantConv2dConfig {
            conv: Conv2dConfig::new([3, 8], [3, 3]),
            weights: QuantizerConfig::weights(LevelSet::three_pm4()),
        }
        .init::<B>(&t, &device)
        .unwrap();
        let fc = QuantLinearConfig {
            linear: LinearConfig::new(8 * 6 * 6, 10),
            weights: QuantizerConfig::weights(LevelSet::ternary()),
        }
        .init::<B>(&t, &device)
        .unwrap();
        let act = QuantAct::<B>::calibrate(
            &QuantizerConfig::activations(LevelSet::unsigned(2).unwrap()),
            &[0.0, 0.5, 2.0, 3.0],
            &t,
            &device,
        )
        .unwrap();
        let x = Tensor::<B, 4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let h = act.forward(burn::tensor::activation::relu(conv.forward(x)));
        assert_eq!(h.dims(), [2, 8, 6, 6]);
        let y = fc.forward(h.flatten::<2>(1, 3));
        assert_eq!(y.dims(), [2, 10]);
        let grads = y.sum().backward();
        for (name, g) in [
            (
                "conv weight",
                conv.conv
                    .weight
                    .grad(&grads)
                    .map(|g| g.dims().iter().product::<usize>()),
            ),
            (
                "fc weight",
                fc.linear
                    .weight
                    .grad(&grads)
                    .map(|g| g.dims().iter().product::<usize>()),
            ),
            (
                "conv alpha",
                conv.quantizer.alpha.grad(&grads).map(|g| g.dims()[0]),
            ),
            (
                "fc beta",
                fc.quantizer.beta.grad(&grads).map(|g| g.dims()[0]),
            ),
            (
                "act alpha",
                act.quantizer.alpha.grad(&grads).map(|g| g.dims()[0]),
            ),
        ] {
            assert!(g.is_some_and(|n| n > 0), "{name} has no gradient");
        }
        assert!(
            conv.quantizer.thresholds.grad(&grads).is_none(),
            "thresholds are frozen"
        );
    }

    #[test]
    fn from_float_preserves_outputs_when_quantization_is_off() {
        let device = Default::default();
        let t = Temperature::new(1.0);
        let linear = LinearConfig::new(16, 4).init::<Flex>(&device);
        let conv = Conv2dConfig::new([2, 3], [3, 3]).init::<Flex>(&device);
        let x = Tensor::<Flex, 2>::random([5, 16], Distribution::Normal(0.0, 1.0), &device);
        let xc = Tensor::<Flex, 4>::random([1, 2, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let want = (
            values(linear.forward(x.clone())),
            values(conv.forward(xc.clone())),
        );
        let config = QuantizerConfig::weights(LevelSet::binary());
        let mut ql = QuantLinear::from_float(linear, &config, &t).unwrap();
        let mut qc = QuantConv2d::from_float(conv, &config, &t).unwrap();
        ql.quantizer = ql.quantizer.with_mode(QuantMode::Off);
        qc.quantizer = qc.quantizer.with_mode(QuantMode::Off);
        assert_eq!((values(ql.forward(x)), values(qc.forward(xc))), want);
    }

    #[test]
    fn hard_mode_and_freeze_give_weights_on_the_level_grid() {
        let device = Default::default();
        let t = Temperature::new(1.0);
        let linear = LinearConfig::new(32, 8).init::<Flex>(&device);
        let q =
            QuantLinear::from_float(linear, &QuantizerConfig::weights(LevelSet::three_pm4()), &t)
                .unwrap();
        // Not an autodiff backend: Auto mode is hard.
        let x = Tensor::<Flex, 2>::random([3, 32], Distribution::Normal(0.0, 1.0), &device);
        let frozen = q.freeze();
        let wq = values(q.quantizer.forward(q.linear.weight.val()));
        assert_eq!(wq, values(frozen.weight.val()), "hard weights");
        assert_eq!(values(q.forward(x.clone())), values(frozen.forward(x)));
        // Occupancy counts the same grid: the fractions per level match the frozen weights.
        let occupancy = q.quantizer.occupancy(q.linear.weight.val()).unwrap();
        assert!(
            (occupancy.iter().sum::<f32>() - 1.0).abs() < 1e-6,
            "{occupancy:?}"
        );
        let alpha = values(q.quantizer.alpha.val())[0];
        let frozen_w = values(frozen.weight.val());
        for (y, share) in [-4.0f32, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]
            .iter()
            .zip(&occupancy)
        {
            let count = frozen_w
                .iter()
                .filter(|w| (*w / alpha - y).abs() < 1e-5)
                .count();
            assert_eq!(count as f32 / frozen_w.len() as f32, *share, "level {y}");
        }
        for w in values(frozen.weight.val()) {
            let level = w / alpha;
            assert!(
                [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]
                    .iter()
                    .any(|y| (level - y).abs() < 1e-5),
                "{w} is off the grid"
            );
        }
    }

    #[test]
    fn records_round_trip_scales_thresholds_levels_and_temperature_exactly() {
        let device = Default::default();
        let t = Temperature::new(3.0);
        // Not a round number: the stored T must come back bit for bit.
        t.set(37.123_456);
        let config = QuantizerConfig::weights(LevelSet::five_bit());
        let a =
            QuantLinear::from_float(LinearConfig::new(20, 7).init::<Flex>(&device), &config, &t)
                .unwrap();
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = recorder.record(a.clone().into_record(), ()).unwrap();
        // A different layer (other weights, so other scales and thresholds, and its own
        // temperature cell) loads the record.
        let other_t = Temperature::new(1.0);
        let b = QuantLinear::from_float(
            LinearConfig::new(20, 7).init::<Flex>(&device),
            &config,
            &other_t,
        )
        .unwrap();
        assert_ne!(
            values(a.quantizer.beta.val()),
            values(b.quantizer.beta.val())
        );
        let b = b.load_record(recorder.load(bytes.clone(), &device).unwrap());
        for (x, y) in [
            (a.quantizer.alpha.val(), b.quantizer.alpha.val()),
            (a.quantizer.beta.val(), b.quantizer.beta.val()),
            (a.quantizer.thresholds.val(), b.quantizer.thresholds.val()),
            (a.quantizer.levels.val(), b.quantizer.levels.val()),
        ] {
            assert_eq!(values(x), values(y));
        }
        assert_eq!(values(a.linear.weight.val()), values(b.linear.weight.val()));
        assert_eq!(other_t.get().to_bits(), 37.123_456f32.to_bits());
        assert_eq!(b.quantizer.temperature().get(), t.get());

        // A cell that a hook schedules keeps the schedule's T (resuming from a checkpoint saved
        // before the hook moved T on must not roll it back).
        let scheduled = Temperature::new(50.0);
        let _hook = crate::train::TemperatureHook::new()
            .with(&scheduled, crate::TemperatureSchedule::constant(50.0));
        let c = QuantLinear::from_float(
            LinearConfig::new(20, 7).init::<Flex>(&device),
            &config,
            &scheduled,
        )
        .unwrap()
        .load_record(recorder.load(bytes, &device).unwrap());
        assert_eq!(c.quantizer.temperature().get(), 50.0);
    }

    #[test]
    fn all_zero_weights_are_a_clear_error() {
        let device = Default::default();
        let mut linear = LinearConfig::new(4, 2).init::<Flex>(&device);
        linear.weight = Param::from_tensor(Tensor::zeros([4, 2], &device));
        let err = QuantLinear::from_float(
            linear,
            &QuantizerConfig::weights(LevelSet::ternary()),
            &Temperature::new(1.0),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("non-zero largest magnitude"),
            "{err}"
        );
    }
}
