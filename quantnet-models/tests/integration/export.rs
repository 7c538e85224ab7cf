//! The `.qnet` export: packing, checksums, parity of the exported model with the training-time
//! hard-quantized model, size, and bad files.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use quantnet_burn::{LevelSet, Method, QuantizerConfig, hard_quantize};
use quantnet_models::export::{self, crc32, pack, unpack};
use quantnet_models::quantize::{calibrate_acts, quantize_weights};
use quantnet_models::{Arch, InputShape, Model, QuantPolicy, Temperatures};

type B = crate::backend::Inner;

#[test]
fn crc32_has_the_standard_check_value() {
    // The CRC-32/ISO-HDLC check value of "123456789".
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn packing_round_trips_every_width() {
    for bits in 1..=8u32 {
        let codes: Vec<u32> = (0..1001u32).map(|i| (i * 7 + 3) % (1 << bits)).collect();
        let packed = pack(&codes, bits);
        assert_eq!(packed.len(), (1001 * bits as usize).div_ceil(8));
        assert_eq!(unpack(&packed, bits, codes.len()), codes);
    }
    // LSB first: codes 1, 2, 3 at 2 bits are 0b11_10_01.
    assert_eq!(pack(&[1, 2, 3], 2), vec![0b0011_1001]);
}

fn quantized(arch: Arch, input: InputShape, weights: LevelSet, seed: u64) -> Model<B> {
    quantized_with(arch, input, weights, Method::Qn, seed)
}

fn quantized_with(
    arch: Arch,
    input: InputShape,
    weights: LevelSet,
    method: Method,
    seed: u64,
) -> Model<B> {
    let device = Default::default();
    B::seed(&device, seed);
    let policy = QuantPolicy {
        weights: Some(QuantizerConfig::weights(weights)),
        ..crate::backend::ternary_u2()
    };
    let policy = match method {
        // Weight-only methods: full-precision activations.
        Method::Bwn | Method::Twn => QuantPolicy {
            acts: None,
            ..policy
        },
        _ => policy,
    }
    .with_method(method)
    .unwrap();
    quantized_by(arch, input, &policy)
}

/// A model of `arch` quantized by `policy`: weight quantizers from its (seeded) initial weights,
/// activation quantizers calibrated on one random batch.
pub(crate) fn quantized_by(arch: Arch, input: InputShape, policy: &QuantPolicy) -> Model<B> {
    let device = Default::default();
    let policy = policy.clone();
    let temps = Temperatures::default();
    let mut model = Model::<B>::new(arch, input, &device);
    quantize_weights(&mut model, &policy, &temps).unwrap();
    let batch = Tensor::<B, 4>::random(
        [8, input.channels, input.height, input.width],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    calibrate_acts(&mut model, &policy, &temps, [batch]).unwrap();
    model
}

pub(crate) const MNIST: InputShape = InputShape {
    channels: 1,
    height: 28,
    width: 28,
    classes: 10,
};
pub(crate) const CIFAR: InputShape = InputShape {
    channels: 3,
    height: 32,
    width: 32,
    classes: 10,
};

/// For many seeds and level sets: the hard-quantized training-time model, the model reloaded from
/// the file, and the decoded codes agree exactly. The arithmetic is identical (the decoded weight
/// is `fl(α·y_k)`, which is what `hard_quantize` returns, and everything else is the same f32
/// tensor), so the tolerance is zero.
#[test]
fn exported_models_reload_and_match_the_training_time_model_exactly() {
    let _serial = crate::backend::serial();
    let device = Default::default();
    let dir = std::env::temp_dir().join(format!("quantnet-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (Arch::Lenet5, MNIST, LevelSet::ternary()),
        (Arch::Lenet5, MNIST, LevelSet::binary()),
        (Arch::Lenet5, MNIST, LevelSet::three_pm4()),
        (Arch::Lenet5, MNIST, LevelSet::five_bit()),
        (Arch::Tfc, MNIST, LevelSet::three_pm2()),
        (Arch::Resnet20, CIFAR, LevelSet::ternary()),
    ];
    for seed in 0..4u64 {
        for (arch, input, levels) in cases.clone() {
            let mut model = quantized(arch, input, levels.clone(), seed);
            let exported = export::export(&mut model, arch, input, None).unwrap();
            // Decoded codes equal the hard-quantized weights bit for bit.
            {
                let slots = model.slots();
                let mut checked = 0;
                for (name, mut layer) in slots.weights {
                    let Some(q) = layer.quantizer().clone() else {
                        continue;
                    };
                    let weight = layer.weight();
                    let hard: Vec<f32> = hard_quantize(weight, &q.params())
                        .into_data()
                        .to_vec()
                        .unwrap();
                    let entry = exported
                        .manifest
                        .coded
                        .iter()
                        .find(|c| c.layer == name)
                        .unwrap();
                    let (_, payload) = export::parse(&exported.bytes, "x".as_ref()).unwrap();
                    let decoded = export::decode(entry, payload).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&decoded), bits(&hard), "{arch} {name} seed {seed}");
                    checked += 1;
                }
                assert!(checked > 0);
            }
            let path = dir.join(format!("{arch}-{seed}.qnet"));
            std::fs::write(&path, &exported.bytes).unwrap();
            let (manifest, reloaded) = export::load::<B>(&path, &device).unwrap();
            assert_eq!(manifest, exported.manifest);
            let x = Tensor::<B, 4>::random(
                [4, input.channels, input.height, input.width],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let a: Vec<f32> = model.forward(x.clone()).into_data().to_vec().unwrap();
            let b: Vec<f32> = reloaded.forward(x).into_data().to_vec().unwrap();
            assert_eq!(a, b, "{arch} {} seed {seed}", levels.name());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `model` after three Adam steps (learning rate 0.05) on random MNIST-shaped batches: scales,
/// thresholds and weights moved away from their initialisation.
fn adam_steps(model: Model<B>) -> Model<B> {
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    type A = burn::backend::Autodiff<B>;
    let device = Default::default();
    let mut model = <Model<A> as burn::module::AutodiffModule<A>>::from_inner(model);
    let mut optim = AdamConfig::new().init::<A, Model<A>>();
    for _ in 0..3 {
        let x = Tensor::<A, 4>::random([8, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
        let loss = model.forward(x).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.05, model, grads);
    }
    burn::module::AutodiffModule::valid(&model)
}

/// Every baseline method exports like `qn`: after a few training steps (which move α away from
/// the β it was initialised with, for the methods that tie β = 1/α, and the weights away from
/// the ones BWN/TWN took their scale from), the `.qnet` file and the Burn-native model reload
/// and give the training-time hard model's outputs bit for bit.
#[test]
fn every_method_exports_with_bit_exact_parity() {
    let _serial = crate::backend::serial();
    let device = Default::default();
    let dir = std::env::temp_dir().join(format!("quantnet-methods-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for method in Method::ALL {
        let levels = match method {
            Method::Bwn => LevelSet::binary(),
            Method::Twn => LevelSet::ternary(),
            _ => LevelSet::three_pm4(),
        };
        let mut model = adam_steps(quantized_with(Arch::Lenet5, MNIST, levels, method, 3));
        let x = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
        let hard: Vec<f32> = model.forward(x.clone()).into_data().to_vec().unwrap();
        let exported = export::export(&mut model, Arch::Lenet5, MNIST, None).unwrap();
        let path = dir.join(format!("{method}.qnet"));
        std::fs::write(&path, &exported.bytes).unwrap();
        let (_, reloaded) = export::load::<B>(&path, &device).unwrap();
        let from_file: Vec<f32> = reloaded.forward(x.clone()).into_data().to_vec().unwrap();
        assert_eq!(from_file, hard, "{method}: .qnet");
        let (native, _) = export::to_native(&model).unwrap();
        let native: Vec<f32> = native.forward(x).into_data().to_vec().unwrap();
        assert_eq!(native, hard, "{method}: Burn-native");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Per-channel weight scales: after Adam steps (which move every channel's α_c, β_c on its own
/// path), the `.qnet` file (format version 2, one α per output channel: conv2's 16 on axis 0,
/// fc1's 120 and fc2's 84 on axis 1) reloads with the hard model's outputs bit for bit, as does
/// the model's record loaded into the per-channel skeleton of its policy. Burn-native export,
/// whose tensors hold one scale, refuses; a version-1 file claiming per-channel scales is
/// corrupt (a version-1 reader would have ignored them).
#[test]
fn per_channel_scales_export_with_bit_exact_parity() {
    let _serial = crate::backend::serial();
    use burn::module::Module;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use quantnet_burn::Granularity;
    let device = Default::default();
    B::seed(&device, 5);
    let policy = QuantPolicy {
        weights: Some(QuantizerConfig::weights(LevelSet::three_pm4())),
        ..crate::backend::ternary_u2()
    }
    .with_granularity(Granularity::Channel)
    .unwrap();
    let mut model = adam_steps(quantized_by(Arch::Lenet5, MNIST, &policy));
    let x = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let hard: Vec<f32> = model.forward(x.clone()).into_data().to_vec().unwrap();

    let exported = export::export(&mut model, Arch::Lenet5, MNIST, None).unwrap();
    assert_eq!(
        exported.bytes[4..8],
        export::VERSION_CHANNEL_SCALES.to_le_bytes()
    );
    let scales: Vec<(String, usize, usize)> = exported
        .manifest
        .coded
        .iter()
        .map(|c| {
            let s = c.channel_scales.as_ref().expect("per-channel scales");
            (c.layer.clone(), s.axis, s.alpha.len())
        })
        .collect();
    assert_eq!(
        scales,
        [
            ("conv2".to_string(), 0, 16),
            ("fc1".to_string(), 1, 120),
            ("fc2".to_string(), 1, 84)
        ]
    );
    let distinct = |c: &export::CodedEntry| {
        let a = &c.channel_scales.as_ref().unwrap().alpha;
        a.iter().any(|v| v != &a[0])
    };
    assert!(exported.manifest.coded.iter().all(distinct));
    let dir = std::env::temp_dir().join(format!("quantnet-channels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.qnet");
    std::fs::write(&path, &exported.bytes).unwrap();
    let (_, reloaded) = export::load::<B>(&path, &device).unwrap();
    let from_file: Vec<f32> = reloaded.forward(x.clone()).into_data().to_vec().unwrap();
    assert_eq!(from_file, hard, ".qnet");

    // A version-1 file with per-channel scales (checksum fixed): refused.
    let mut v1 = exported.bytes.clone();
    v1[4..8].copy_from_slice(&export::VERSION.to_le_bytes());
    let n = v1.len() - 4;
    let crc = crc32(&v1[..n]);
    v1[n..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &v1).unwrap();
    let err = export::load::<B>(&path, &device).unwrap_err().to_string();
    assert!(err.contains("per-channel scales"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();

    // The record, into the per-channel skeleton of the policy.
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(model.clone().into_record(), ()).unwrap();
    let temps = Temperatures::default();
    let mut skeleton = Model::<B>::new(Arch::Lenet5, MNIST, &device);
    quantnet_models::quantize::skeleton(&mut skeleton, &policy, &temps, &device).unwrap();
    let mut loaded = skeleton.load_record(recorder.load(bytes, &device).unwrap());
    quantnet_models::quantize::check_levels(&mut loaded).unwrap();
    let from_record: Vec<f32> = loaded.forward(x).into_data().to_vec().unwrap();
    assert_eq!(from_record, hard, "record");

    let err = export::to_native(&model).map(|_| ()).unwrap_err();
    let source = std::error::Error::source(&err).map(|e| e.to_string());
    assert!(
        err.to_string().contains("conv2")
            && source
                .as_deref()
                .is_some_and(|s| s.contains("per output channel")),
        "{err}: {source:?}"
    );
}

#[test]
fn quantized_layers_take_bits_over_32_of_float32_within_one_percent() {
    let _serial = crate::backend::serial();
    let mut model = quantized(Arch::Lenet5, MNIST, LevelSet::three_pm4(), 1);
    let exported = export::export(&mut model, Arch::Lenet5, MNIST, None).unwrap();
    let rows = export::size_report(&exported);
    // conv2, fc1, fc2 are quantized at 3 bits (7 levels); conv1 and fc3 stay float.
    let coded: Vec<_> = rows.iter().filter(|r| r.bits == 3).collect();
    assert_eq!(coded.len(), 3);
    for r in coded {
        assert!(r.bytes as f64 <= r.minimum_bytes * 1.01, "{r:?}");
        assert!(
            (r.bytes as f64 / r.float_bytes as f64 - 3.0 / 32.0).abs() < 0.001,
            "{r:?}"
        );
    }
}

#[test]
fn truncated_corrupted_wrong_version_and_wrong_model_files_are_clear_errors() {
    let _serial = crate::backend::serial();
    let device = Default::default();
    let mut model = quantized(Arch::Lenet5, MNIST, LevelSet::ternary(), 3);
    let good = export::export(&mut model, Arch::Lenet5, MNIST, None)
        .unwrap()
        .bytes;
    let dir = std::env::temp_dir().join(format!("quantnet-badqnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.qnet");
    let check = |bytes: &[u8], expected: &str| {
        std::fs::write(&path, bytes).unwrap();
        let err = export::load::<B>(&path, &device).unwrap_err().to_string();
        assert!(
            err.contains("m.qnet") && err.contains(expected),
            "{expected}: {err}"
        );
    };
    check(&good[..good.len() / 2], "checksum mismatch");
    check(&good[..10], "too short");
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    check(&flipped, "checksum mismatch");
    let mut magic = good.clone();
    magic[0] = b'X';
    check(&magic, "bad magic");
    let mut version = good.clone();
    version[4] = 9;
    check(&version, "format version 9");
    // A consistent file for another model: rename LeNet-5's conv2 tensors in the manifest (same
    // length) and fix the checksum.
    let mut other = good.clone();
    let m = u64::from_le_bytes(good[8..16].try_into().unwrap()) as usize;
    let (from, to) = (b"Lenet5.conv2", b"Lenet5.convX");
    let mut renamed = 0;
    for i in 16..16 + m - from.len() {
        if &other[i..i + from.len()] == from {
            other[i..i + to.len()].copy_from_slice(to);
            renamed += 1;
        }
    }
    assert!(renamed > 0);
    let n = other.len() - 4;
    let crc = crc32(&other[..n]);
    other[n..].copy_from_slice(&crc.to_le_bytes());
    check(&other, "has no tensor Lenet5.conv2");
    check(b"", "too short");
    let missing = export::load::<B>(&dir.join("none.qnet"), &device).unwrap_err();
    assert!(missing.to_string().contains("none.qnet"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Burn-native export: every quantized weight becomes Burn's own quantized tensor; the model's
/// outputs equal the hard-quantized model's exactly (integer level sets: `q·(α·1)` is `fl(α·y)`),
/// and a record saved with Burn's recorder loads into the native skeleton with the same outputs.
#[test]
fn native_exports_match_the_hard_model_exactly_and_round_trip_through_burn_records() {
    let _serial = crate::backend::serial();
    use burn::module::Module;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    let device = Default::default();
    let cases = [
        (Arch::Lenet5, MNIST, LevelSet::ternary(), "Q2S"),
        (Arch::Lenet5, MNIST, LevelSet::binary(), "Q2S"),
        (Arch::Lenet5, MNIST, LevelSet::three_pm4(), "Q4S"),
        (Arch::Lenet5, MNIST, LevelSet::five_bit(), "Q8S"),
        (Arch::Tfc, MNIST, LevelSet::three_pm2(), "Q4S"),
        (Arch::Resnet20, CIFAR, LevelSet::ternary(), "Q2S"),
    ];
    for seed in 0..2u64 {
        for (arch, input, levels, burn_type) in cases.clone() {
            let model = quantized(arch, input, levels.clone(), seed);
            let (native, layers) = export::to_native(&model).unwrap();
            let quantized_layers = model
                .clone()
                .slots()
                .weights
                .into_iter()
                .filter(|(_, l)| match l {
                    quantnet_models::models::WeightLayer::Conv(c) => c.quantizer.is_some(),
                    quantnet_models::models::WeightLayer::Linear(l) => l.quantizer.is_some(),
                })
                .count();
            assert_eq!(layers.len(), quantized_layers, "{arch}");
            assert!(
                layers.iter().all(|l| l.burn_type == burn_type),
                "{layers:?}"
            );

            let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
            let bytes = recorder.record(native.clone().into_record(), ()).unwrap();
            let reloaded = export::native_skeleton::<B>(
                arch,
                input,
                Some(LevelSet::unsigned(2).unwrap()),
                &device,
            )
            .unwrap()
            .load_record(recorder.load(bytes, &device).unwrap());
            let x = Tensor::<B, 4>::random(
                [4, input.channels, input.height, input.width],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let a: Vec<f32> = model.forward(x.clone()).into_data().to_vec().unwrap();
            let b: Vec<f32> = native.forward(x.clone()).into_data().to_vec().unwrap();
            let c: Vec<f32> = reloaded.forward(x).into_data().to_vec().unwrap();
            assert_eq!(a, b, "{arch} {} seed {seed}", levels.name());
            assert_eq!(a, c, "{arch} {} seed {seed} (reloaded)", levels.name());
        }
    }
    // A set Burn cannot hold is an error naming the layer, not a panic.
    let model = quantized(
        Arch::Lenet5,
        MNIST,
        LevelSet::new(vec![-1.0, -0.3, 0.0, 0.3, 1.0]).unwrap(),
        0,
    );
    let err = export::to_native(&model).unwrap_err().to_string();
    assert!(err.contains("conv2"), "{err}");
}

/// Files written before the two layer families became one (`QuantConv2d`/`QuantLinear`/`QuantAct` in this
/// crate and `QuantConv2d`/`QuantLinear`/`QuantAct` in quantnet-burn): a quantized TFC on 4×4
/// inputs (record and `.qnet`), a `quantnet_burn::QuantLinear` record (then a non-optional
/// quantizer), and their outputs on [`fixture_input`]. Written once by
/// `QUANTNET_WRITE_FIXTURES=1 cargo test -p quantnet-models --test integration
/// write_record_fixtures -- --ignored` at commit
/// 5338cde; `fixtures/records/`.
fn records_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/records")
}

const TINY: InputShape = InputShape {
    channels: 1,
    height: 4,
    width: 4,
    classes: 3,
};

fn fixture_input<Bk: Backend>(device: &Bk::Device) -> Tensor<Bk, 4> {
    let values: Vec<f32> = (0..2 * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::<Bk, 1>::from_floats(values.as_slice(), device).reshape([2, 1, 4, 4])
}

fn floats<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RecordOutputs {
    tfc: Vec<f32>,
    quant_linear: Vec<f32>,
}

#[test]
#[ignore = "writes fixtures/records (done once, with the code that wrote the old format)"]
fn write_record_fixtures() {
    assert!(
        std::env::var_os("QUANTNET_WRITE_FIXTURES").is_some(),
        "this overwrites fixtures/records, which hold files written by earlier code; set \
         QUANTNET_WRITE_FIXTURES=1 to do it"
    );
    let _serial = crate::backend::serial();
    use burn::module::Module;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    let device = Default::default();
    let dir = records_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut model = quantized(Arch::Tfc, TINY, LevelSet::ternary(), 11);
    let tfc = floats(model.forward(fixture_input::<B>(&device)));
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .record(model.clone().into_record(), dir.join("tfc-4x4-w2a2"))
        .unwrap();
    let file = export::export(&mut model, Arch::Tfc, TINY, None).unwrap();
    std::fs::write(dir.join("tfc-4x4-w2a2.qnet"), &file.bytes).unwrap();
    let linear = quantnet_burn::QuantLinear::<B>::from_float(
        burn::nn::LinearConfig::new(16, 3).init(&device),
        &QuantizerConfig::weights(LevelSet::ternary()),
        &quantnet_burn::Temperature::default(),
    )
    .unwrap();
    let quant_linear = floats(linear.forward(fixture_input::<B>(&device).flatten::<2>(1, 3)));
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .record(linear.into_record(), dir.join("quant-linear-16x3"))
        .unwrap();
    let outputs = RecordOutputs { tfc, quant_linear };
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string_pretty(&outputs).unwrap(),
    )
    .unwrap();
}

/// The files of [`write_record_fixtures`] load into today's layers and compute what they
/// computed when they were written, bit for bit: the record keys (`conv`, `linear`, `quantizer`,
/// optional quantizers) did not change.
#[test]
fn records_written_before_the_layer_merge_still_load() {
    let _serial = crate::backend::serial();
    use burn::module::Module;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    let device = Default::default();
    let dir = records_dir();
    let expected: RecordOutputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    // The quantized model's record, into the skeleton of its policy.
    let temps = Temperatures::default();
    let mut model = Model::<B>::new(Arch::Tfc, TINY, &device);
    quantnet_models::quantize::skeleton(&mut model, &crate::backend::ternary_u2(), &temps, &device)
        .unwrap();
    let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(dir.join("tfc-4x4-w2a2.mpk"), &device)
        .unwrap();
    let mut model = model.load_record(record);
    quantnet_models::quantize::check_levels(&mut model).unwrap();
    assert_eq!(
        floats(model.forward(fixture_input::<B>(&device))),
        expected.tfc
    );
    // The `.qnet` file.
    let (_, from_qnet) = export::load::<B>(&dir.join("tfc-4x4-w2a2.qnet"), &device).unwrap();
    assert_eq!(
        floats(from_qnet.forward(fixture_input::<B>(&device))),
        expected.tfc
    );
    // The quantized linear layer's record (its quantizer was not optional then).
    let linear = quantnet_burn::QuantLinear::<B>::from_float(
        burn::nn::LinearConfig::new(16, 3).init(&device),
        &QuantizerConfig::weights(LevelSet::ternary()),
        &quantnet_burn::Temperature::default(),
    )
    .unwrap();
    let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(dir.join("quant-linear-16x3.mpk"), &device)
        .unwrap();
    let linear = linear.load_record(record);
    assert_eq!(
        floats(linear.forward(fixture_input::<B>(&device).flatten::<2>(1, 3))),
        expected.quant_linear
    );
}
