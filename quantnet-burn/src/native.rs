//! Export to Burn's own quantized tensors, so that a Burn user can load a trained low-bit layer
//! into a plain `burn::nn::Linear` / `Conv2d` without quantnet.
//!
//! Burn's quantized tensors (0.21) are symmetric and per tensor here: a tensor holds integers `q`
//! in `[−m, m]` and one scale `s`, and means `q·s`. `m` is 1 for `Q2S` (2 bits), 7 for `Q4S`
//! (4 bits) and 127 for `Q8S` (8 bits). A trained quantizer's hard weights are `α·y_k`, so a level
//! set fits when every level is an integer multiple `q_k·u` of one unit `u` (its smallest non-zero
//! magnitude) with `|q_k| <= m`; then `s = α·u`. That holds for every built-in set:
//!
//! | levels | Burn value | stored bits | .qnet bits |
//! |---|---|---|---|
//! | binary `{−1, 1}`, ternary `{−1, 0, 1}` | `Q2S` | 2 | 1, 2 |
//! | 3pm2 `{−2..2}`, 3pm4 `{−4, −2, −1, 0, 1, 2, 4}`, `sN` for N <= 4 | `Q4S` | 4 | 3 |
//! | 5-bit `{−15..15}`, `sN` for N <= 8 | `Q8S` | 8 | 5 |
//!
//! Sets whose levels are not integer multiples of one unit (say `{−1, −0.3, 0, 0.3, 1}`) cannot be
//! represented and give [`Error::InvalidLevels`]; the `.qnet` format stores any set. Non-uniform
//! integer sets such as 3pm4 fit, but at Burn's wider storage. Unsigned activation sets are not
//! weights and have no counterpart here: activation quantizers stay quantnet's.
//!
//! **Exactness.** With a power-of-two unit (all built-in sets have `u = 1`) `q·s` is computed
//! with one rounding exactly as `α·y_k` is, so a layer dequantized by Burn gives bit for bit the
//! hard weights of training time. Other units can differ in the last bit.
//!
//! **Storage.** The integers are written with Burn's `QuantStore::Native` layout (one `i8` each):
//! it is what `TensorData::quantized` builds and what Burn's CPU backends (flex; ndarray for
//! `Q8S` and per-tensor `Q2S`) load. Burn 0.21's CubeCL backends (wgpu, CUDA) refuse native
//! sub-byte storage ("Can't store native sub-byte values"); a model exported here runs on them
//! after `dequantize()`, or use the `.qnet` export, which is bit-packed.

use burn::tensor::quantization::{QuantLevel, QuantMode, QuantScheme, QuantStore, QuantValue};
use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::levels::LevelSet;
use crate::op::QuantBackend;
use crate::quantizer::Quantizer;

/// How a level set maps onto Burn's symmetric quantized values.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeScheme {
    /// Burn's value type (`Q2S`, `Q4S` or `Q8S`).
    pub value: QuantValue,
    /// The unit `u`: every level is `q·u` with an integer `q`.
    pub unit: f32,
    /// The integer of each level, in the order of [`LevelSet::levels`].
    pub integers: Vec<i8>,
}

impl NativeScheme {
    /// Bits Burn stores per value.
    pub fn bits(&self) -> usize {
        self.value.size_bits()
    }

    /// Burn's quantization scheme: symmetric, per tensor, `f32` scale, native storage.
    pub fn scheme(&self) -> QuantScheme {
        QuantScheme::default()
            .with_value(self.value)
            .with_mode(QuantMode::Symmetric)
            .with_level(QuantLevel::Tensor)
            .with_store(QuantStore::Native)
    }
}

/// The Burn scheme that holds `levels` exactly (see the [module docs](self)).
///
/// # Errors
/// [`Error::InvalidLevels`] if the levels are not integer multiples of one unit, or need more
/// than Burn's 8-bit range.
pub fn native_scheme(levels: &LevelSet) -> Result<NativeScheme> {
    let not_native = |reason: String| Error::InvalidLevels {
        levels: levels.name(),
        reason: format!("no Burn quantized type holds it: {reason}"),
    };
    let unit = levels
        .levels()
        .iter()
        .map(|y| y.abs())
        .filter(|y| *y > 0.0)
        .fold(f32::INFINITY, f32::min);
    let mut integers = Vec::with_capacity(levels.len());
    for &y in levels.levels() {
        let q = (y / unit).round();
        if q * unit != y {
            return Err(not_native(format!(
                "{y} is not an integer multiple of the unit {unit}"
            )));
        }
        if q.abs() > 127.0 {
            return Err(not_native(format!(
                "{y} is {q} units; Burn's Q8S holds ±127"
            )));
        }
        integers.push(q as i8);
    }
    let m = integers.iter().map(|q| q.unsigned_abs()).max().unwrap_or(0);
    let value = match m {
        0..=1 => QuantValue::Q2S,
        2..=7 => QuantValue::Q4S,
        _ => QuantValue::Q8S,
    };
    Ok(NativeScheme {
        value,
        unit,
        integers,
    })
}

/// Whether Burn 0.21's backend `B` holds `value` in native storage: flex holds every type,
/// ndarray `Q2S` and `Q8S`; the CubeCL backends (wgpu, CUDA) hold none (they panic, and a panic
/// inside a fused stream poisons the device for the rest of the process). Backends are told
/// apart by [`Backend::name`](burn::tensor::backend::Backend::name).
///
/// # Errors
/// [`Error::InvalidParameter`] naming the backend and what to do instead.
pub fn check_backend<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    value: QuantValue,
) -> Result<()> {
    let name = B::name(device);
    let ok = name.contains("flex")
        || (name.contains("ndarray") && matches!(value, QuantValue::Q2S | QuantValue::Q8S));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "backend",
            value: name,
            reason: format!(
                "Burn 0.21 holds natively stored {value:?} tensors only on its CPU backends (flex; \
                 ndarray for Q2S and Q8S): export and load Burn-native models there, or use the \
                 .qnet export"
            ),
        })
    }
}

/// `weight` hard-quantized by `quantizer`, as a Burn quantized tensor (integers and the scale
/// `α·u`) on the weight's device. Dequantized, it equals `hard_quantize(weight)` (bit for bit for
/// the built-in level sets, see the [module docs](self)).
///
/// # Errors
/// [`Error::InvalidLevels`] if the level set has no Burn counterpart;
/// [`Error::InvalidParameter`] if the backend cannot hold it ([`check_backend`]), values cannot
/// be read back or a hard weight is off the grid.
pub fn native_weight<B: QuantBackend, const D: usize>(
    weight: Tensor<B, D>,
    quantizer: &Quantizer<B>,
) -> Result<Tensor<B, D>> {
    let native = native_scheme(quantizer.level_set())?;
    let device = weight.device();
    check_backend::<B>(&device, native.value)?;
    let shape = weight.shape();
    if quantizer.channel_axis().is_some() {
        return Err(Error::InvalidParameter {
            name: "granularity",
            value: "channel".into(),
            reason: "Burn 0.21's quantized tensors have one scale per tensor (or per block), \
                     not per output channel: export per-channel weights as .qnet"
                .into(),
        });
    }
    let codes = quantizer.codes(weight)?;
    let integers: Vec<i8> = codes
        .codes
        .into_iter()
        .map(|k| native.integers[k])
        .collect();
    let scale = codes.alpha[0] * native.unit;
    let data = TensorData::quantized(integers, shape, native.scheme(), &[scale]);
    Ok(Tensor::from_data(data, &device))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use crate::testing::TestBackend as Flex;
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::{Distribution, Tensor};

    use super::*;
    use crate::nn::{QuantConv2d, QuantLinear};
    use crate::quantizer::{QuantizerConfig, Temperature};

    fn bits(t: Tensor<Flex, 2>) -> Vec<u32> {
        t.into_data()
            .to_vec::<f32>()
            .expect("f32 tensor")
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    #[test]
    fn built_in_sets_map_to_burn_values_and_others_are_refused() {
        // (set, Burn value, integers): the unit is the smallest non-zero |y|, here always 1.
        let cases = [
            (LevelSet::binary(), QuantValue::Q2S, vec![-1, 1]),
            (LevelSet::ternary(), QuantValue::Q2S, vec![-1, 0, 1]),
            (
                LevelSet::three_pm2(),
                QuantValue::Q4S,
                vec![-2, -1, 0, 1, 2],
            ),
            (
                LevelSet::three_pm4(),
                QuantValue::Q4S,
                vec![-4, -2, -1, 0, 1, 2, 4],
            ),
            (LevelSet::five_bit(), QuantValue::Q8S, (-15..=15).collect()),
        ];
        for (set, value, integers) in cases {
            let native = native_scheme(&set).unwrap();
            assert_eq!(native.value, value, "{}", set.name());
            assert_eq!(native.unit, 1.0);
            assert_eq!(native.integers, integers, "{}", set.name());
        }
        // {-1.5, -0.5, 0.5, 1.5}: unit 0.5, integers ±1, ±3.
        let halves = native_scheme(&LevelSet::new(vec![-1.5, -0.5, 0.5, 1.5]).unwrap()).unwrap();
        assert_eq!((halves.unit, halves.value), (0.5, QuantValue::Q4S));
        assert_eq!(halves.integers, vec![-3, -1, 1, 3]);
        // 0.3 does not divide 1; 200 units do not fit in 8 bits.
        for levels in [vec![-1.0, -0.3, 0.0, 0.3, 1.0], vec![-200.0, 0.0, 1.0]] {
            let err = native_scheme(&LevelSet::new(levels).unwrap()).unwrap_err();
            assert!(err.to_string().contains("no Burn quantized type"), "{err}");
        }
    }

    #[test]
    fn native_layers_compute_exactly_what_the_hard_quantized_layers_compute() {
        let device = Default::default();
        <Flex as burn::tensor::backend::Backend>::seed(&device, 3);
        let t = Temperature::new(1.0);
        for set in [
            LevelSet::binary(),
            LevelSet::ternary(),
            LevelSet::three_pm2(),
            LevelSet::three_pm4(),
            LevelSet::five_bit(),
        ] {
            let config = QuantizerConfig::weights(set.clone());
            let linear = QuantLinear::from_float(
                LinearConfig::new(40, 24).init::<Flex>(&device),
                &config,
                &t,
            )
            .unwrap();
            let native = linear.to_native().unwrap();
            // The weight is a Burn quantized tensor; dequantized it is the hard weight, bit for bit.
            assert!(matches!(
                native.weight.val().dtype(),
                burn::tensor::DType::QFloat(_)
            ));
            assert_eq!(
                bits(native.weight.val().dequantize()),
                bits(linear.freeze().weight.val()),
                "{}",
                set.name()
            );
            let x = Tensor::<Flex, 2>::random([8, 40], Distribution::Normal(0.0, 1.0), &device);
            assert_eq!(
                bits(native.forward(x.clone())),
                bits(linear.freeze().forward(x)),
                "{}",
                set.name()
            );

            // A plain Burn Linear loads the record: the weight stays quantized, the outputs equal.
            let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
            let bytes = recorder.record(native.clone().into_record(), ()).unwrap();
            let float_bytes = recorder.record(linear.freeze().into_record(), ()).unwrap();
            let loaded = LinearConfig::new(40, 24)
                .init::<Flex>(&device)
                .load_record(recorder.load(bytes.clone(), &device).unwrap());
            assert!(matches!(
                loaded.weight.val().dtype(),
                burn::tensor::DType::QFloat(_)
            ));
            let x = Tensor::<Flex, 2>::random([8, 40], Distribution::Normal(0.0, 1.0), &device);
            assert_eq!(bits(loaded.forward(x.clone())), bits(native.forward(x)));
            // One byte per weight instead of four (Burn's native storage).
            assert!(
                bytes.len() < float_bytes.len() / 2,
                "{}: {} vs {} bytes",
                set.name(),
                bytes.len(),
                float_bytes.len()
            );
        }

        let conv = QuantConv2d::from_float(
            Conv2dConfig::new([3, 6], [3, 3]).init::<Flex>(&device),
            &QuantizerConfig::weights(LevelSet::three_pm4()),
            &t,
        )
        .unwrap();
        let native = conv.to_native().unwrap();
        let x = Tensor::<Flex, 4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (native.forward(x.clone()), conv.freeze().forward(x));
        assert_eq!(bits(a.flatten(1, 3)), bits(b.flatten(1, 3)));
    }

    #[test]
    fn a_level_set_burn_cannot_hold_is_an_error_not_a_panic() {
        let device = Default::default();
        let set = LevelSet::new(vec![-1.0, -0.3, 0.0, 0.3, 1.0]).unwrap();
        let linear = QuantLinear::from_float(
            LinearConfig::new(6, 4).init::<Flex>(&device),
            &QuantizerConfig::weights(set),
            &Temperature::new(1.0),
        )
        .unwrap();
        let err = linear.to_native().unwrap_err();
        assert!(err.to_string().contains("not an integer multiple"), "{err}");
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod wgpu_tests {
    use burn::backend::Wgpu;
    use burn::nn::LinearConfig;

    use crate::levels::LevelSet;
    use crate::nn::QuantLinear;
    use crate::quantizer::{QuantizerConfig, Temperature};

    /// Burn 0.21's CubeCL backends panic on natively stored quantized tensors; the export says
    /// so instead of panicking (and poisoning the device).
    #[test]
    fn native_export_on_wgpu_is_a_clear_error() {
        let device = Default::default();
        let linear = QuantLinear::from_float(
            LinearConfig::new(8, 4).init::<Wgpu>(&device),
            &QuantizerConfig::weights(LevelSet::ternary()),
            &Temperature::new(1.0),
        )
        .unwrap();
        let err = linear.to_native().unwrap_err().to_string();
        assert!(err.contains("CPU backends"), "{err}");
    }
}
