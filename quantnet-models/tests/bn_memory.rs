//! Batch-norm re-estimation holds no autodiff graph: alone in its test binary, as it reads the
//! process's resident memory.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Distribution, Tensor};
use quantnet_burn::{LevelSet, QuantMode};
use quantnet_models::detect::{Ssd, SsdKind};
use quantnet_models::models::{InputShape, QatModel};
use quantnet_models::quantize::{self, QuantPolicy, Temperatures};

type B = Autodiff<Flex>;

/// Resident memory of this process, MiB (Linux).
fn resident_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096 / (1 << 20)
}

/// The small SSD with ternary weights and 4-bit activations, hard: a hard activation quantizer
/// on the autodiff backend cuts the graph, so the tracked convolutions before it were kept
/// (never reached by a backward pass) and memory grew by each batch's activations: 434 MiB over
/// 20 batches of two 192×192 images, measured before the fix. Now the passes track nothing.
#[test]
#[cfg(target_os = "linux")]
fn reestimating_batch_norm_keeps_no_graph() {
    let device = Default::default();
    let input = InputShape {
        channels: 3,
        height: 192,
        width: 192,
        classes: 1,
    };
    let temps = Temperatures::default();
    let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), LevelSet::unsigned(4).ok());
    let mut model = Ssd::<Flex>::new(SsdKind::Small, input, &device);
    quantize::quantize_weights(&mut model, &policy, &temps).unwrap();
    let images = |n| Tensor::<Flex, 4>::random([n, 3, 192, 192], Distribution::Default, &device);
    quantize::calibrate_acts(&mut model, &policy, &temps, [images(2)]).unwrap();
    let mut model = <Ssd<B> as AutodiffModule<B>>::from_inner(model);
    quantize::set_mode(&mut model, QuantMode::Hard);
    // One pass first: buffers and pools that stay are not growth.
    quantize::reestimate_batch_norm(&model, [Tensor::from_inner(images(2))]);
    let before = resident_mib();
    let batches = (0..40).map(|_| Tensor::from_inner(images(2)));
    assert_eq!(quantize::reestimate_batch_norm(&model, batches), 40);
    let grown = resident_mib().saturating_sub(before);
    assert!(
        grown < 300,
        "resident memory grew by {grown} MiB over 40 batches"
    );
    // The model itself still trains: its parameters track gradients.
    let mut trainable = 0;
    let mut slots = QatModel::slots(&mut model);
    for (_, layer) in &mut slots.weights {
        if let quantnet_models::models::WeightLayer::Conv(c) = layer {
            trainable += usize::from(c.conv.weight.is_require_grad());
        }
    }
    assert_eq!(trainable, 16);
}
