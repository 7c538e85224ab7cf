//! The integer engine (`quantnet-infer`) on exported models, against the model Burn runs from
//! the same file: the same predictions, logits within float rounding, and the same bits on every
//! instruction-set path.

use burn::tensor::{Distribution, Tensor};
use quantnet_burn::LevelSet;
use quantnet_infer::{Engine, Isa, Mode};
use quantnet_models::export;
use quantnet_models::{Arch, InputShape, QuantPolicy};

use crate::export::{CIFAR, MNIST, quantized_by};

type B = crate::backend::Inner;

pub(crate) fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// The largest absolute difference between two equally long score lists.
pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The model Burn loads from an exported `.qnet` (written to a temporary file named by `tag`).
pub(crate) fn reloaded(bytes: &[u8], tag: &str) -> quantnet_models::Model<B> {
    let file = std::env::temp_dir().join(format!("quantnet-{tag}-{}.qnet", std::process::id()));
    std::fs::write(&file, bytes).unwrap();
    let (_, model) = export::load::<B>(&file, &Default::default()).unwrap();
    std::fs::remove_file(&file).ok();
    model
}

/// One exported model run by Burn (from the file) and by the engine on every path: returns the
/// number of predictions that differ from Burn's and the largest logit difference.
fn compare(arch: Arch, input: InputShape, w: LevelSet, a: LevelSet, seed: u64) -> (usize, f32) {
    let device = Default::default();
    let policy = QuantPolicy::recipe(Some(w.clone()), Some(a.clone()));
    let mut model = {
        use burn::tensor::backend::Backend;
        B::seed(&device, seed);
        quantized_by(arch, input, &policy)
    };
    let exported = export::export(&mut model, arch, input, None).unwrap();
    let tag = format!("infer-{arch}-{seed}-{}-{}", w.name(), a.name());
    let burn_model = reloaded(&exported.bytes, &tag);
    // VGG-small and AlexNet-BN are 15–40× ResNet-20's work per image, on the scalar path too.
    let n = match arch {
        Arch::VggSmall => 4,
        Arch::AlexnetBn | Arch::Resnet18 | Arch::Resnet50 => 2,
        _ => 16,
    };
    let images = Tensor::<B, 4>::random(
        [n, input.channels, input.height, input.width],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let pixels: Vec<f32> = images.clone().into_data().to_vec().unwrap();
    let burn: Vec<f32> = burn_model.forward(images).into_data().to_vec().unwrap();
    let what = format!("{arch} W{} A{} seed {seed}", w.name(), a.name());
    let mut reference: Option<Vec<f32>> = None;
    for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
        let engine = Engine::from_bytes(&exported.bytes, "x".as_ref(), isa, Mode::Int).unwrap();
        let layers = engine.layers();
        // Every quantized layer whose input is quantized runs on integers.
        let int = layers.iter().filter(|l| l.int).count();
        assert!(int >= 1, "{what}: no integer layer in {layers:?}");
        let got = engine.forward_threads(&pixels, n, 2).unwrap();
        match &reference {
            None => reference = Some(got),
            Some(r) => {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(r), "{what}: {isa} differs from scalar");
            }
        }
    }
    let int = reference.unwrap();
    let c = input.classes;
    let flips = (0..n)
        .filter(|&i| argmax(&int[i * c..(i + 1) * c]) != argmax(&burn[i * c..(i + 1) * c]))
        .count();
    let diff = max_diff(&int, &burn);
    // The engine's f32 mode computes what Burn computes, in another summation order.
    let f32_engine = Engine::from_bytes(&exported.bytes, "x".as_ref(), Isa::best(), Mode::F32)
        .unwrap()
        .forward(&pixels, n)
        .unwrap();
    let fdiff = max_diff(&f32_engine, &burn);
    let scale = burn.iter().fold(1f32, |m, x| m.max(x.abs()));
    assert!(
        fdiff <= 1e-3 * scale,
        "{what}: f32 mode differs from Burn by {fdiff}"
    );
    (flips, diff / scale)
}

/// Every weight set the engine takes × every activation width, on LeNet-5 and TFC; ResNet-20,
/// VGG-small and AlexNet-BN with a few:
/// predictions identical to Burn's hard forward of the same file, logits within float rounding
/// (a handful of activation codes may land on the other side of a threshold; no prediction may
/// change).
#[test]
fn the_engine_runs_exported_models_as_burn_does() {
    let _serial = crate::backend::serial();
    let weights = [
        LevelSet::binary(),
        LevelSet::ternary(),
        LevelSet::three_pm2(),
        LevelSet::three_pm4(),
    ];
    let mut cases = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        for bits in 1..=4 {
            let a = LevelSet::unsigned(bits).unwrap();
            cases.push((Arch::Lenet5, MNIST, w.clone(), a.clone()));
            if (i + bits as usize).is_multiple_of(2) {
                cases.push((Arch::Tfc, MNIST, w.clone(), a));
            }
        }
    }
    cases.push((
        Arch::Resnet20,
        CIFAR,
        LevelSet::ternary(),
        LevelSet::unsigned(2).unwrap(),
    ));
    cases.push((
        Arch::Resnet20,
        CIFAR,
        LevelSet::three_pm4(),
        LevelSet::unsigned(3).unwrap(),
    ));
    cases.push((
        Arch::VggSmall,
        CIFAR,
        LevelSet::ternary(),
        LevelSet::unsigned(2).unwrap(),
    ));
    // AlexNet-BN at 224×224: conv5's pooled map is 6×6, so the adaptive pool passes the codes
    // straight to fc6 (other sizes average floats: `adaptive_avg_pool`'s unit test).
    let imagenet = InputShape {
        channels: 3,
        height: 224,
        width: 224,
        classes: 10,
    };
    cases.push((
        Arch::AlexnetBn,
        imagenet,
        LevelSet::ternary(),
        LevelSet::unsigned(2).unwrap(),
    ));
    // The ImageNet ResNets (7×7 stride-2 stem, a padded max pool on codes, 1×1 downsamples;
    // bottlenecks for ResNet-50) at 64×64, which their global pool takes.
    let small = InputShape {
        height: 64,
        width: 64,
        ..imagenet
    };
    for arch in [Arch::Resnet18, Arch::Resnet50] {
        cases.push((
            arch,
            small,
            LevelSet::ternary(),
            LevelSet::unsigned(2).unwrap(),
        ));
    }
    let mut worst = 0f32;
    for (k, (arch, input, w, a)) in cases.into_iter().enumerate() {
        let (flips, diff) = compare(arch, input, w.clone(), a.clone(), k as u64);
        assert_eq!(
            flips,
            0,
            "{arch} W{} A{}: predictions differ",
            w.name(),
            a.name()
        );
        worst = worst.max(diff);
    }
    eprintln!("largest logit difference, relative to the largest logit: {worst:e}");
}

/// `predictions_on` (what `quantnet eval --predictions` writes for Burn) on the MNIST fixture's
/// 200 test images: the engine predicts the same class for every image, and the hits it counts
/// are `accuracy_on`'s.
#[test]
fn burn_and_the_engine_predict_the_fixture_alike_image_by_image() {
    use quantnet_models::data::{ImageBatcher, Split, mnist};
    let _serial = crate::backend::serial();
    let device = Default::default();
    let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), LevelSet::unsigned(2).ok());
    let mut model = {
        use burn::tensor::backend::Backend;
        B::seed(&device, 11);
        quantized_by(Arch::Lenet5, MNIST, &policy)
    };
    let exported = export::export(&mut model, Arch::Lenet5, MNIST, None).unwrap();
    let burn_model = reloaded(&exported.bytes, "predict");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mnist");
    let items = mnist::load(&dir, Split::Test)
        .expect("the MNIST fixture (fixtures/mnist) is part of the repository")
        .items(200, 0.1307, 0.3081);
    assert_eq!(items.len(), 200, "the fixture's 200 test images");
    let batcher = ImageBatcher {
        channels: 1,
        rows: 28,
        cols: 28,
    };
    let burn = quantnet_models::train::predictions_on(&burn_model, &items, batcher, 64, &device);
    let pixels: Vec<f32> = items.iter().flat_map(|i| i.pixels.clone()).collect();
    let engine = Engine::from_bytes(&exported.bytes, "x".as_ref(), Isa::best(), Mode::Int).unwrap();
    let int = engine.predict(&pixels, items.len(), 2).unwrap();
    assert_eq!(burn, int, "per-image predictions");
    let classes: std::collections::BTreeSet<_> = burn.iter().collect();
    assert!(
        classes.len() > 1,
        "a net that predicts one class tests little"
    );
    let hits = burn
        .iter()
        .zip(&items)
        .filter(|(p, i)| **p as i64 == i.label)
        .count();
    let accuracy = quantnet_models::train::accuracy_on(&burn_model, &items, batcher, 64, &[device]);
    assert!((accuracy - 100.0 * hits as f64 / 200.0).abs() < 1e-9);
}
