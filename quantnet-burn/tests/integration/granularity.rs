//! Per-channel weight scales ([`Granularity::Channel`]): hand-derived hard values and codes in
//! both weight layouts (conv: channels on axis 0; linear: on axis 1), the per-channel
//! initialisation rule, the soft forward and its gradients on every backend against the f64 host
//! model applied channel by channel (the host model's gradients are themselves checked against
//! central differences in `reference`), records, and the refusals.
//!
//! Per channel, `y = α_c·Q(β_c·x)` with `Q` the fused quantizer at unit scales: no custom
//! backward of its own, so these tests check that autodiff's chain rule through the broadcast
//! products gives each channel the gradient its own per-tensor quantizer would have.

use burn::module::{AutodiffModule, Module};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use quantnet_burn::{
    GradientMode, Granularity, LevelSet, Method, QuantBackend, QuantMode, Quantizer,
    QuantizerConfig, Temperature,
};

use crate::common::{Flex, Lcg, host_params_with};
use crate::reference::{self, assert_close};

fn per_channel(levels: LevelSet) -> QuantizerConfig {
    QuantizerConfig::weights(levels)
        .with_granularity(Granularity::Channel)
        .expect("qn weights take per-channel scales")
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 values")
}

/// Ternary, thresholds ±0.5 in the `β·x` domain; channel 0: α = 0.5, β = 2; channel 1:
/// α = 0.25, β = 4.
/// - Row 0 `[0.1, 0.3, −0.6]`: `β·x = [0.2, 0.6, −1.2]` → `y = [0, 1, −1]` → `[0, 0.5, −0.5]`.
/// - Row 1 `[0.1, −0.1, 0.2]`: `β·x = [0.4, −0.4, 0.8]` → `y = [0, 0, 1]` → `[0, 0, 0.25]`.
///
/// Codes index `{−1, 0, 1}`: `[1, 2, 0, 1, 1, 2]`. The transposed weight with the channels on
/// axis 1 (a linear layer's `[d_in, d_out]`) gives the transposed values.
#[test]
fn hard_values_and_codes_scale_each_output_channel() {
    let device = Default::default();
    let along = |axis| -> Quantizer<Flex> {
        per_channel(LevelSet::ternary())
            .init_per_channel(
                &[0.5, 0.25],
                &[2.0, 4.0],
                &[-0.5, 0.5],
                axis,
                &Temperature::new(1.0),
                &device,
            )
            .unwrap()
    };
    let q = along(0);
    let rows = [[0.1f32, 0.3, -0.6], [0.1, -0.1, 0.2]];
    let x = Tensor::<Flex, 2>::from_floats(rows, &device);
    let expected = [0.0, 0.5, -0.5, 0.0, 0.0, 0.25];
    // Flex is not an autodiff backend: `forward` is the hard function.
    assert_eq!(values(q.forward(x.clone())), expected);
    assert_eq!(values(q.hard(x.clone())), expected);
    let codes = q.codes(x.clone()).unwrap();
    assert_eq!(codes.alpha, vec![0.5, 0.25]);
    assert_eq!(codes.channel_axis, Some(0));
    assert_eq!(codes.codes, vec![1, 2, 0, 1, 1, 2]);
    // Occupancy over all six: one at −1, three at 0, two at 1.
    assert_eq!(
        q.occupancy(x.clone()).unwrap(),
        vec![1.0 / 6.0, 0.5, 2.0 / 6.0]
    );
    // The normalised weight is β_c·x.
    assert_close(
        "β_c·x",
        &values(q.normalised(x.clone())),
        &[0.2, 0.6, -1.2, 0.4, -0.4, 0.8],
        1e-6,
        1e-7,
    );

    // The same layer in a linear layer's layout: channels on axis 1.
    let t = along(1);
    let xt = x.transpose();
    assert_eq!(values(t.hard(xt.clone())), [0.0, 0.0, 0.5, 0.0, -0.5, 0.25]);
    assert_eq!(t.codes(xt).unwrap().codes, vec![1, 1, 2, 1, 0, 2]);
}

/// With every channel at the same `α`, `β` the per-channel hard function is the per-tensor one,
/// bit for bit (`1·(β·x)` and `1·y` are exact, so the products round as the fused op's do).
#[test]
fn equal_channel_scales_reproduce_the_per_tensor_quantizer_bit_for_bit() {
    let device = Default::default();
    let levels = LevelSet::three_pm4();
    let thresholds = levels.midpoint_thresholds();
    let (alpha, beta) = (0.043_7f32, 23.1f32);
    let tensor: Quantizer<Flex> = QuantizerConfig::weights(levels.clone())
        .init_with(alpha, beta, &thresholds, &Temperature::new(1.0), &device)
        .unwrap();
    let channel: Quantizer<Flex> = per_channel(levels)
        .init_per_channel(
            &[alpha; 6],
            &[beta; 6],
            &thresholds,
            0,
            &Temperature::new(1.0),
            &device,
        )
        .unwrap();
    let mut rng = Lcg::new(7);
    let x: Vec<f32> = rng
        .uniform_vec(6 * 5 * 3 * 3, -0.25, 0.25)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let x = Tensor::<Flex, 1>::from_floats(x.as_slice(), &device).reshape([6, 5, 3, 3]);
    let bits = crate::common::f32_bits::<Flex, 4>;
    assert_eq!(bits(channel.hard(x.clone())), bits(tensor.hard(x)));
}

/// The per-tensor rule on each channel: ternary (`p = 1`), weight `[3, 2]` with channels on
/// axis 0, rows `[1, −0.5]`, `[0.25, −0.5]`, `[0, 0]`: `q_c = 1, 0.5` and, for the channel of
/// zeros, the tensor's `q = 1`; `β_c = 5p/(4q_c) = 1.25, 2.5, 1.25`, `α_c = 1/β_c = 0.8, 0.4,
/// 0.8`. The normalised weights `[1.25, −0.625, 0.625, −1.25, 0, 0]` set the thresholds by
/// k-means; both thresholds of the ternary set are next to 0, so the ±0.05 band sets them.
#[test]
fn initialisation_applies_the_paper_rule_to_each_channel() {
    let device = Default::default();
    let from_weights = |config: QuantizerConfig| -> Quantizer<Flex> {
        config
            .init_from_weights(
                &[1.0, -0.5, 0.25, -0.5, 0.0, 0.0],
                &[3, 2],
                0,
                &Temperature::new(1.0),
                &device,
            )
            .unwrap()
    };
    let q = from_weights(per_channel(LevelSet::ternary()));
    // α and β train (qn), as per tensor, also when the quantizer was made on the inner backend
    // (as calibration makes them) and moved to the autodiff one before its first use.
    let trained =
        <Quantizer<burn::backend::Autodiff<Flex>> as AutodiffModule<_>>::from_inner(q.clone());
    assert!(trained.alpha.val().is_require_grad() && trained.beta.val().is_require_grad());
    assert_close("β", &values(q.beta.val()), &[1.25, 2.5, 1.25], 1e-6, 0.0);
    assert_close("α", &values(q.alpha.val()), &[0.8, 0.4, 0.8], 1e-6, 0.0);
    assert_close("b", &values(q.thresholds.val()), &[-0.05, 0.05], 1e-6, 0.0);
    assert_eq!(q.granularity(), Granularity::Channel);
    assert_eq!(q.channel_axis(), Some(0));

    // Per tensor, the same config without the granularity: one scale from q = 1.
    let t = from_weights(QuantizerConfig::weights(LevelSet::ternary()));
    assert_eq!(values(t.beta.val()), vec![1.25]);
    assert_eq!(t.channel_axis(), None);

    // Bad input: a shape that does not hold the data, an axis outside it, all zeros.
    let config = per_channel(LevelSet::ternary());
    let t1 = Temperature::new(1.0);
    let init = |data: &[f32], dims: &[usize], axis| {
        config
            .init_from_weights::<Flex>(data, dims, axis, &t1, &device)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(init(&[1.0; 6], &[4, 2], 0).contains("does not hold"));
    assert!(init(&[1.0; 6], &[3, 2], 2).contains("dimensions"));
    assert!(init(&[0.0; 6], &[3, 2], 0).contains("non-zero"));
}

/// Soft forward and gradients of a per-channel quantizer (channels on axis 1, 3 channels with
/// their own `α_c`, `β_c`, asymmetric thresholds) against the host model applied to each
/// channel with its own scales: `∂L/∂x` element by element, `∂L/∂α_c` and `∂L/∂β_c` as the
/// per-tensor gradients of channel `c`'s elements. Both gradient rules. f32 on every backend.
fn per_channel_gradients_match_each_channels_own<B: AutodiffBackend + QuantBackend>(
    device: &B::Device,
    _dtype: DType,
) {
    let levels = LevelSet::ternary();
    let thresholds = [-0.3f32, 0.4];
    let alpha = [0.7f32, 0.3, 1.1];
    let beta = [1.5f32, 3.0, 0.8];
    let t = 4.0f32;
    let (rows, cols) = (5, 3);
    let mut rng = Lcg::new(11);
    let x: Vec<f32> = rng
        .uniform_vec(rows * cols, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let w: Vec<f32> = rng
        .uniform_vec(rows * cols, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    for mode in [GradientMode::Exact, GradientMode::Official { cap: 1.0 }] {
        let q: Quantizer<B> = per_channel(levels.clone())
            .with_gradient(mode)
            .init_per_channel(&alpha, &beta, &thresholds, 1, &Temperature::new(t), device)
            .unwrap()
            .with_mode(QuantMode::Soft);
        let xt = Tensor::<B, 1>::from_floats(x.as_slice(), device)
            .reshape([rows, cols])
            .require_grad();
        let wt = Tensor::<B, 1>::from_floats(w.as_slice(), device).reshape([rows, cols]);
        let y = q.forward(xt.clone());
        let grads = (y.clone() * wt).sum().backward();
        let (y, dx) = (values(y), values(xt.grad(&grads).unwrap()));
        let dalpha = values(q.alpha.val().grad(&grads).unwrap());
        let dbeta = values(q.beta.val().grad(&grads).unwrap());
        for c in 0..cols {
            let p = host_params_with(&levels, alpha[c], beta[c], &thresholds);
            let xc: Vec<f64> = (0..rows).map(|r| f64::from(x[r * cols + c])).collect();
            let wc: Vec<f64> = (0..rows).map(|r| f64::from(w[r * cols + c])).collect();
            let g = reference::grads(&xc, &wc, &p, f64::from(t), mode);
            let pick = |v: &[f64]| (0..rows).map(|r| v[r * cols + c]).collect::<Vec<_>>();
            let soft: Vec<f64> = xc
                .iter()
                .map(|&v| reference::soft(v, &p, f64::from(t)))
                .collect();
            let what = format!("{mode:?} channel {c}");
            assert_close(&format!("{what} y"), &pick(&y), &soft, 1e-5, 1e-6);
            assert_close(&format!("{what} dL/dx"), &pick(&dx), &g.x, 1e-4, 1e-5);
            assert_close(
                &format!("{what} dL/dα"),
                &[dalpha[c]],
                &[g.alpha],
                1e-4,
                1e-5,
            );
            assert_close(&format!("{what} dL/dβ"), &[dbeta[c]], &[g.beta], 1e-4, 1e-5);
        }
    }
}
crate::on_each_backend!(per_channel_gradients_match_each_channels_own);

/// A per-channel layer's record round-trips through Burn's recorder into a per-channel skeleton
/// (one placeholder scale: the record brings all of them); a per-tensor skeleton loads the
/// tensors but `check_levels` refuses it, instead of quantizing with the wrong scales.
#[test]
fn records_round_trip_and_a_per_tensor_skeleton_refuses_them() {
    use burn::nn::LinearConfig;
    use quantnet_burn::QuantLinear;
    let device = Default::default();
    let t = Temperature::new(1.0);
    let config = per_channel(LevelSet::three_pm2());
    let a = QuantLinear::from_float(LinearConfig::new(12, 5).init::<Flex>(&device), &config, &t)
        .unwrap();
    assert_eq!(a.quantizer.as_ref().unwrap().alpha.dims(), [5]);
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(a.clone().into_record(), ()).unwrap();
    let skeleton = |granularity: Granularity| {
        let mut layer = QuantLinear::float(LinearConfig::new(12, 5).init::<Flex>(&device));
        let config = QuantizerConfig::weights(LevelSet::three_pm2())
            .with_granularity(granularity)
            .unwrap();
        let thresholds = LevelSet::three_pm2().midpoint_thresholds();
        layer.quantizer = Some(match granularity {
            Granularity::Channel => config
                .init_per_channel(&[1.0], &[1.0], &thresholds, 1, &t, &device)
                .unwrap(),
            Granularity::Tensor | Granularity::Shared => config
                .init_with(1.0, 1.0, &thresholds, &t, &device)
                .unwrap(),
        });
        layer.load_record(recorder.load(bytes.clone(), &device).unwrap())
    };
    let b = skeleton(Granularity::Channel);
    b.quantizer.as_ref().unwrap().check_levels().unwrap();
    let (wa, wb) = (a.freeze().weight.val(), b.freeze().weight.val());
    assert_eq!(values(wa), values(wb));
    let err = skeleton(Granularity::Tensor)
        .quantizer
        .unwrap()
        .check_levels()
        .unwrap_err()
        .to_string();
    assert!(err.contains("per-channel scales"), "{err}");
}

/// Per-channel scales are for `qn` weights: activations and the baselines refuse them, in
/// either order of the builder calls, and so does a config built field by field.
#[test]
fn activations_and_baselines_refuse_per_channel_scales() {
    let levels = LevelSet::ternary();
    let acts = QuantizerConfig::activations(LevelSet::unsigned(2).unwrap());
    assert!(
        acts.with_granularity(Granularity::Channel)
            .unwrap_err()
            .to_string()
            .contains("per tensor")
    );
    for method in [Method::Ste, Method::Twn, Method::Lsq, Method::Dsq] {
        let weights = QuantizerConfig::weights(levels.clone());
        let after = weights
            .clone()
            .with_method(method)
            .unwrap()
            .with_granularity(Granularity::Channel);
        let before = weights
            .with_granularity(Granularity::Channel)
            .unwrap()
            .with_method(method);
        assert!(after.is_err() && before.is_err(), "{method}");
    }
    let by_hand = QuantizerConfig {
        method: Method::Lsq,
        granularity: Granularity::Channel,
        ..QuantizerConfig::weights(levels.clone())
    };
    assert!(
        by_hand
            .init_with::<Flex>(
                1.0,
                1.0,
                &levels.midpoint_thresholds(),
                &Temperature::new(1.0),
                &Default::default(),
            )
            .is_err()
    );
    assert_eq!(
        "channel".parse::<Granularity>().unwrap(),
        Granularity::Channel
    );
    assert!("row".parse::<Granularity>().is_err());
}
