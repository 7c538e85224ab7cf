//! ONNX export (`export::to_onnx`, `quantnet_infer::onnx`), run in tract (a pure-Rust ONNX
//! runtime) against Burn's hard forward of the same model: the same predictions, scores within
//! float rounding.

use burn::tensor::{Distribution, Tensor};
use quantnet_burn::LevelSet;
use quantnet_infer::onnx::{Normalisation, model, to_onnx};
use quantnet_models::{Arch, InputShape, QuantPolicy, export};

use crate::export::{CIFAR, MNIST, quantized_by};
use crate::infer::{argmax, max_diff, reloaded};

type B = crate::backend::Inner;

/// `bytes` (an ONNX model) run by tract on `n` images `x` of `shape` (NCHW).
fn run_onnx(bytes: &[u8], shape: [usize; 4], x: &[f32]) -> Vec<f32> {
    use tract_onnx::prelude::{
        DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTValue, tvec,
    };
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract reads the model")
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .expect("tract optimises the model")
        .into_runnable()
        .unwrap();
    let out = plan
        .run(tvec!(
            tract_onnx::prelude::Tensor::from_shape(&shape, x)
                .unwrap()
                .into_tvalue()
        ))
        .expect("tract runs the model");
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// A freshly quantized `arch` exported to `.qnet` and ONNX; Burn's hard forward of the file and
/// tract's run of the ONNX model on `n` random images in [0, 1]: the predictions that differ and
/// the largest score difference relative to the largest score.
fn compare(arch: Arch, input: InputShape, policy: &QuantPolicy, n: usize) -> (usize, f32) {
    let device = Default::default();
    let mut model = {
        use burn::tensor::backend::Backend;
        B::seed(&device, 5);
        quantized_by(arch, input, policy)
    };
    let exported = export::export(&mut model, arch, input, None).unwrap();
    let burn_model = reloaded(&exported.bytes, &format!("onnx-{arch}"));
    let norm = Normalisation {
        mean: vec![0.5, 0.4, 0.3][..input.channels].to_vec(),
        std: vec![0.25, 0.3, 0.2][..input.channels].to_vec(),
    };
    let onnx = to_onnx(&exported.bytes, "x.qnet".as_ref(), &norm).unwrap();
    let shape = [n, input.channels, input.height, input.width];
    let pixels = Tensor::<B, 4>::random(shape, Distribution::Uniform(0.0, 1.0), &device);
    let raw: Vec<f32> = pixels.clone().into_data().to_vec().unwrap();
    let plane = input.height * input.width;
    let normalised: Vec<f32> = raw
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let c = (i / plane) % input.channels;
            (p - norm.mean[c]) / norm.std[c]
        })
        .collect();
    let images =
        Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(normalised, shape), &device);
    let burn: Vec<f32> = burn_model.forward(images).into_data().to_vec().unwrap();
    let got = run_onnx(&onnx, shape, &raw);
    assert_eq!(got.len(), burn.len(), "{arch}: scores per image");
    let c = input.classes;
    let flips = (0..n)
        .filter(|&i| argmax(&got[i * c..(i + 1) * c]) != argmax(&burn[i * c..(i + 1) * c]))
        .count();
    let diff = max_diff(&got, &burn);
    let scale = burn.iter().fold(1f32, |m, x| m.max(x.abs()));
    (flips, diff / scale)
}

/// Every architecture with ternary weights and 2-bit activations (ResNet-18/50 and AlexNet-BN
/// too, which the engine's own tests do not run), LeNet-5 with every weight set
/// (3pm4's levels are not a uniform grid: still exact as int8) and 1- to 4-bit activations:
/// tract's predictions are Burn's.
#[test]
fn onnx_exports_run_in_tract_as_burn_runs_them() {
    let _serial = crate::backend::serial();
    let image = |side: usize| InputShape {
        channels: 3,
        height: side,
        width: side,
        classes: 10,
    };
    let recipe = |w: LevelSet, a: LevelSet| QuantPolicy::recipe(Some(w), Some(a));
    let ternary_u2 = recipe(LevelSet::ternary(), LevelSet::unsigned(2).unwrap());
    let mut cases = vec![
        (Arch::Tfc, MNIST, ternary_u2.clone(), 16),
        (Arch::Resnet20, CIFAR, ternary_u2.clone(), 8),
        (Arch::VggSmall, CIFAR, ternary_u2.clone(), 2),
        // 224×224: conv5's pooled map is 6×6 and the adaptive pool is the identity.
        (Arch::AlexnetBn, image(224), ternary_u2.clone(), 2),
        // The ImageNet ResNets (7×7 stride-2 stem, a padded max pool, bottlenecks for 50) at
        // 64×64, which their global pool takes.
        (Arch::Resnet18, image(64), ternary_u2.clone(), 2),
        (Arch::Resnet50, image(64), ternary_u2.clone(), 2),
    ];
    for (w, a) in [
        (LevelSet::binary(), 1),
        (LevelSet::ternary(), 2),
        (LevelSet::three_pm4(), 3),
        (LevelSet::three_pm2(), 4),
    ] {
        cases.push((
            Arch::Lenet5,
            MNIST,
            recipe(w, LevelSet::unsigned(a).unwrap()),
            16,
        ));
    }
    let mut worst = 0f32;
    for (arch, input, policy, n) in cases {
        let (flips, diff) = compare(arch, input, &policy, n);
        assert_eq!(
            flips, 0,
            "{arch}: tract's predictions differ from Burn's on {flips} of {n}"
        );
        assert!(
            diff < 1e-2,
            "{arch}: scores differ by {diff} of the largest"
        );
        worst = worst.max(diff);
    }
    eprintln!("largest score difference, relative to the largest score: {worst:e}");
}

/// The graph's form: opset 13, int8 weight initializers dequantized per output channel when the
/// channels' scales differ, one QDQ pair per activation quantizer, the normalisation first.
#[test]
fn the_onnx_graph_has_the_documented_form() {
    let _serial = crate::backend::serial();
    let device = Default::default();
    let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), LevelSet::unsigned(2).ok())
        .with_granularity(quantnet_burn::Granularity::Channel)
        .unwrap();
    let mut net = {
        use burn::tensor::backend::Backend;
        B::seed(&device, 3);
        quantized_by(Arch::Lenet5, MNIST, &policy)
    };
    let exported = export::export(&mut net, Arch::Lenet5, MNIST, None).unwrap();
    let norm = Normalisation {
        mean: vec![0.1307],
        std: vec![0.3081],
    };
    let m = model(&exported.bytes, "x.qnet".as_ref(), &norm).unwrap();
    assert_eq!(m.opset_import[0].version, 13);
    let g = m.graph.unwrap();
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(&ops[..2], ["Sub", "Div"], "normalisation first");
    let count = |op: &str| ops.iter().filter(|&&o| o == op).count();
    // LeNet-5: conv2, fc1 and fc2 quantized (the first and last layers stay float); act1–act4.
    assert_eq!(count("QuantizeLinear"), 4, "{ops:?}");
    assert_eq!(count("DequantizeLinear"), 4 + 3, "{ops:?}");
    assert_eq!(count("Conv"), 2);
    assert_eq!(count("Gemm"), 3);
    let int8: Vec<_> = g
        .initializer
        .iter()
        .filter(|t| t.name.ends_with("weight_levels"))
        .collect();
    assert_eq!(int8.len(), 3);
    for t in &int8 {
        assert_eq!(t.data_type, 3, "{}: int8", t.name);
        assert!(
            t.raw_data.iter().all(|&b| matches!(b as i8, -1..=1)),
            "{}: ternary levels",
            t.name
        );
        let scale = g
            .initializer
            .iter()
            .find(|s| s.name == t.name.replace("levels", "scale"))
            .unwrap();
        assert_eq!(
            scale.dims,
            [t.dims[0]],
            "{}: one scale per output channel",
            t.name
        );
    }
}

/// On the MNIST fixture's 200 test images (raw pixels / 255 into the graph, which normalises
/// them): tract predicts every image as Burn's hard forward does.
#[test]
fn onnx_predicts_the_fixture_as_burn_does() {
    use quantnet_models::data::{ImageBatcher, Split, mnist};
    let _serial = crate::backend::serial();
    let device = Default::default();
    let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), LevelSet::unsigned(2).ok());
    let mut net = {
        use burn::tensor::backend::Backend;
        B::seed(&device, 11);
        quantized_by(Arch::Lenet5, MNIST, &policy)
    };
    let onnx = export::to_onnx(
        &mut net.clone(),
        Arch::Lenet5,
        MNIST,
        quantnet_models::data::Dataset::Mnist,
    )
    .unwrap();
    let exported = export::export(&mut net, Arch::Lenet5, MNIST, None).unwrap();
    let burn_model = reloaded(&exported.bytes, "onnx-fixture");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mnist");
    let set = mnist::load(&dir, Split::Test)
        .expect("the MNIST fixture (fixtures/mnist) is part of the repository");
    let items = set.items(200, 0.1307, 0.3081);
    assert_eq!(items.len(), 200, "the fixture's 200 test images");
    let batcher = ImageBatcher {
        channels: 1,
        rows: 28,
        cols: 28,
    };
    let burn = quantnet_models::train::predictions_on(&burn_model, &items, batcher, 64, &device);
    let raw: Vec<f32> = set
        .items(200, 0.0, 1.0)
        .iter()
        .flat_map(|i| i.pixels.clone())
        .collect();
    let scores = run_onnx(&onnx, [200, 1, 28, 28], &raw);
    let onnx_predictions: Vec<usize> = scores.chunks_exact(10).map(argmax).collect();
    assert_eq!(burn, onnx_predictions, "per-image predictions");
    let classes: std::collections::BTreeSet<_> = burn.iter().collect();
    assert!(
        classes.len() > 1,
        "a net that predicts one class tests little"
    );
}

/// Activation levels that are not integers have no quantize/dequantize pair: the export is one
/// clear error naming the levels. Integer levels that are not `0, 1, …` (gaps other than 1) are
/// exact: the comparisons are weighted by the gaps.
#[test]
fn activation_levels_without_a_qdq_pair_are_refused_and_uneven_integer_ones_are_exact() {
    let _serial = crate::backend::serial();
    let ternary = Some(LevelSet::ternary());
    let halves = QuantPolicy::recipe(ternary.clone(), LevelSet::new(vec![0.0, 0.5, 1.5]).ok());
    let device = Default::default();
    let mut net = {
        use burn::tensor::backend::Backend;
        B::seed(&device, 2);
        quantized_by(Arch::Lenet5, MNIST, &halves)
    };
    let exported = export::export(&mut net, Arch::Lenet5, MNIST, None).unwrap();
    let norm = Normalisation {
        mean: vec![0.5],
        std: vec![0.25],
    };
    let err = to_onnx(&exported.bytes, "x.qnet".as_ref(), &norm)
        .expect_err("non-integer activation levels")
        .to_string();
    assert!(
        err.contains("[0.0, 0.5, 1.5]") && err.contains("QuantizeLinear/DequantizeLinear"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let uneven = QuantPolicy::recipe(ternary, LevelSet::new(vec![0.0, 1.0, 3.0, 4.0]).ok());
    let (flips, diff) = compare(Arch::Lenet5, MNIST, &uneven, 16);
    assert_eq!(flips, 0);
    assert!(diff < 1e-2, "scores differ by {diff} of the largest");
}
