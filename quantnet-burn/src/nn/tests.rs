//! The layers: trainable flags, records, gradients, freezing, float layers.

use super::*;
use crate::levels::LevelSet;
use crate::quantizer::{QuantMode, Quantizer, QuantizerConfig, Temperature};
use burn::module::{Module, Param};
use burn::nn::LinearConfig;
use burn::nn::conv::Conv2dConfig;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::Distribution;

use crate::testing::TestBackend as Flex;

type B = crate::testing::TestAutodiffBackend;

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().to_vec().expect("f32 tensor")
}

#[test]
fn quantizers_made_on_the_inner_backend_are_trainable_after_from_inner() {
    use burn::module::AutodiffModule;
    let device = Default::default();
    let t = Temperature::new(5.0);
    let config = QuantizerConfig::weights(LevelSet::three_pm4());
    let inner = QuantLinearConfig::new(LinearConfig::new(4, 3))
        .with_weight_quant(Some(config.clone()))
        .init::<Flex>(&t, &device)
        .unwrap();
    let layer = <QuantLinear<B> as AutodiffModule<B>>::from_inner(inner);
    let q = layer.quantizer.as_ref().unwrap();
    assert!(q.alpha.val().is_require_grad());
    assert!(q.beta.val().is_require_grad());
    // Thresholds are frozen unless configured, levels always.
    assert!(!q.thresholds.val().is_require_grad());
    assert!(!q.levels.val().is_require_grad());
    let learn = QuantizerConfig {
        learn_thresholds: true,
        ..config
    };
    let inner = learn.init_with::<Flex>(0.5, 2.0, &[-1.0, 0.0, 1.0, 2.0, 3.0, 4.0], &t, &device);
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
    let conv = QuantConv2dConfig::new(Conv2dConfig::new([3, 8], [3, 3]))
        .with_weight_quant(Some(QuantizerConfig::weights(LevelSet::three_pm4())))
        .init::<B>(&t, &device)
        .unwrap();
    let fc = QuantLinearConfig::new(LinearConfig::new(8 * 6 * 6, 10))
        .with_weight_quant(Some(QuantizerConfig::weights(LevelSet::ternary())))
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
            conv.quantizer
                .as_ref()
                .unwrap()
                .alpha
                .grad(&grads)
                .map(|g| g.dims()[0]),
        ),
        (
            "fc beta",
            fc.quantizer
                .as_ref()
                .unwrap()
                .beta
                .grad(&grads)
                .map(|g| g.dims()[0]),
        ),
        (
            "act alpha",
            act.quantizer
                .as_ref()
                .unwrap()
                .alpha
                .grad(&grads)
                .map(|g| g.dims()[0]),
        ),
    ] {
        assert!(g.is_some_and(|n| n > 0), "{name} has no gradient");
    }
    assert!(
        conv.quantizer
            .as_ref()
            .unwrap()
            .thresholds
            .grad(&grads)
            .is_none(),
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
    ql.quantizer = ql.quantizer.map(|q| q.with_mode(QuantMode::Off));
    qc.quantizer = qc.quantizer.map(|q| q.with_mode(QuantMode::Off));
    assert_eq!((values(ql.forward(x)), values(qc.forward(xc))), want);
}

#[test]
fn hard_mode_and_freeze_give_weights_on_the_level_grid() {
    let device = Default::default();
    let t = Temperature::new(1.0);
    let linear = LinearConfig::new(32, 8).init::<Flex>(&device);
    let q = QuantLinear::from_float(linear, &QuantizerConfig::weights(LevelSet::three_pm4()), &t)
        .unwrap();
    // Not an autodiff backend: Auto mode is hard.
    let x = Tensor::<Flex, 2>::random([3, 32], Distribution::Normal(0.0, 1.0), &device);
    let frozen = q.freeze();
    let wq = values(q.quantizer.as_ref().unwrap().forward(q.linear.weight.val()));
    assert_eq!(wq, values(frozen.weight.val()), "hard weights");
    assert_eq!(values(q.forward(x.clone())), values(frozen.forward(x)));
    // Occupancy counts the same grid: the fractions per level match the frozen weights.
    let occupancy = q
        .quantizer
        .as_ref()
        .unwrap()
        .occupancy(q.linear.weight.val())
        .unwrap();
    assert!(
        (occupancy.iter().sum::<f32>() - 1.0).abs() < 1e-6,
        "{occupancy:?}"
    );
    let alpha = values(q.quantizer.as_ref().unwrap().alpha.val())[0];
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
    let a = QuantLinear::from_float(LinearConfig::new(20, 7).init::<Flex>(&device), &config, &t)
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
        values(a.quantizer.as_ref().unwrap().beta.val()),
        values(b.quantizer.as_ref().unwrap().beta.val())
    );
    let b = b.load_record(recorder.load(bytes.clone(), &device).unwrap());
    for (x, y) in [
        (
            a.quantizer.as_ref().unwrap().alpha.val(),
            b.quantizer.as_ref().unwrap().alpha.val(),
        ),
        (
            a.quantizer.as_ref().unwrap().beta.val(),
            b.quantizer.as_ref().unwrap().beta.val(),
        ),
        (
            a.quantizer.as_ref().unwrap().thresholds.val(),
            b.quantizer.as_ref().unwrap().thresholds.val(),
        ),
        (
            a.quantizer.as_ref().unwrap().levels.val(),
            b.quantizer.as_ref().unwrap().levels.val(),
        ),
    ] {
        assert_eq!(values(x), values(y));
    }
    assert_eq!(values(a.linear.weight.val()), values(b.linear.weight.val()));
    assert_eq!(other_t.get().to_bits(), 37.123_456f32.to_bits());
    assert_eq!(b.quantizer.as_ref().unwrap().temperature().get(), t.get());

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
    assert_eq!(c.quantizer.as_ref().unwrap().temperature().get(), 50.0);
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

/// A full-precision layer (`weight_quant: None`) is the Burn layer: same outputs, and `freeze`
/// and `to_native` give it back unchanged; its record has no quantizer.
#[test]
fn layers_without_a_quantizer_are_the_float_layers() {
    let device = Default::default();
    let t = Temperature::new(1.0);
    let ql = QuantLinearConfig::new(LinearConfig::new(6, 2))
        .init::<Flex>(&t, &device)
        .unwrap();
    let qc = QuantConv2dConfig::new(Conv2dConfig::new([1, 2], [3, 3]))
        .init::<Flex>(&t, &device)
        .unwrap();
    assert!(ql.quantizer.is_none() && qc.quantizer.is_none());
    let x = Tensor::<Flex, 2>::random([3, 6], Distribution::Normal(0.0, 1.0), &device);
    let xc = Tensor::<Flex, 4>::random([1, 1, 4, 4], Distribution::Normal(0.0, 1.0), &device);
    let want = values(ql.linear.forward(x.clone()));
    assert_eq!(values(ql.forward(x.clone())), want);
    assert_eq!(values(ql.freeze().forward(x.clone())), want);
    assert_eq!(values(ql.to_native().unwrap().forward(x)), want);
    assert_eq!(
        values(qc.forward(xc.clone())),
        values(qc.conv.forward(xc.clone()))
    );
    assert_eq!(
        values(qc.freeze().forward(xc.clone())),
        values(qc.conv.forward(xc))
    );
    let act = QuantAct::<Flex>::float();
    let a = Tensor::<Flex, 2>::from_floats([[0.3, 7.0]], &device);
    act.observer.start();
    assert_eq!(values(act.forward(a)), vec![0.3, 7.0]);
    let seen = act.observer.take().unwrap();
    assert_eq!((seen.max, seen.samples.len()), (7.0, 2));
}
