//! Every model: parameter count, output shape, quantization (weights from the trained values,
//! activations from a calibration pass), one training step, and the precision policy.

use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};

use quantnet_models::quantize::{calibrate_acts, quantize_weights};
use quantnet_models::{Arch, InputShape, Model, QuantPolicy, Temperatures};

use crate::backend::Inner;

type B = crate::backend::Train;

fn input(channels: usize, size: usize, classes: usize) -> InputShape {
    InputShape {
        channels,
        height: size,
        width: size,
        classes,
    }
}

/// Parameter counts. Burn's `num_params` also counts batch norm's running mean and variance,
/// which PyTorch keeps as buffers; so each count is PyTorch's `sum(p.numel())` plus 2 per BN
/// feature (the same number as BN's γ and β).
///
/// - LeNet-5 on 28×28: conv1 1·6·25+6 = 156, conv2 6·16·25+16 = 2416, fc1 400·120+120 = 48120,
///   fc2 120·84+84 = 10164, fc3 84·10+10 = 850: 61,706; no BN.
/// - TFC: 784·64 + 64·64 + 64·64 + (64·10+10) = 59,018; BN 3·2·64 = 384 (twice): 59,786.
/// - SFC: 784·256 + 2·256² + 2570 = 334,346; BN 1536 (twice): 337,418.
/// - LFC: 784·1024 + 2·1024² + 10250 = 2,910,218; BN 6144 (twice): 2,922,506.
/// - VGG-small: convs 9·(3·128 + 128² + 128·256 + 256² + 256·512 + 512²) = 4,574,592,
///   fc 8192·10+10 = 81,930, BN 2·1792 = 3584 (twice): 4,663,690.
/// - ResNet-20 (1×1-conv shortcuts): stem 432, stage 1 13,824, stage 2 49,664, stage 3 200,704
///   (convs), fc 650: 265,274 + BN 2·784 = 1568: PyTorch's 272,474 (the usual "0.27M");
///   with running stats 274,042.
/// - ResNet-18: torchvision's 11,689,512, of which BN 9600 (4800 features): 11,699,112.
/// - ResNet-50: torchvision's 25,557,032, of which BN 53,120: 25,610,152.
/// - AlexNet-BN: torchvision's AlexNet, 61,100,840, plus BN 2·(64+192+384+256+256+4096+4096)
///   = 18,688 (twice): 61,138,216.
const COUNTS: [(Arch, usize, usize, usize); 9] = [
    (Arch::Lenet5, 1, 28, 61_706),
    (Arch::Tfc, 1, 28, 59_786),
    (Arch::Sfc, 1, 28, 337_418),
    (Arch::Lfc, 1, 28, 2_922_506),
    (Arch::VggSmall, 3, 32, 4_663_690),
    (Arch::Resnet20, 3, 32, 274_042),
    (Arch::Resnet18, 3, 224, 11_699_112),
    (Arch::Resnet50, 3, 224, 25_610_152),
    (Arch::AlexnetBn, 3, 224, 61_138_216),
];

#[test]
fn parameter_counts_match_the_reference_layouts() {
    let device = Default::default();
    for (arch, channels, size, expected) in COUNTS {
        let classes = if size == 224 { 1000 } else { 10 };
        let model = Model::<Inner>::new(arch, input(channels, size, classes), &device);
        assert_eq!(model.num_params(), expected, "{arch}");
    }
}

use crate::backend::ternary_u2;

/// Quantizes `arch`, checks the policy and the output shape, takes one SGD step and checks that
/// the loss is finite and that the latent weights and the quantizer's β moved. (Not α: a layer
/// followed by batch norm is invariant to the scale of its weight, so α's gradient there is
/// zero up to rounding; only β, which moves the thresholds relative to the weights, matters.)
fn quantize_and_step(arch: Arch, shape: InputShape, batch: usize) {
    let device = Default::default();
    <B as Backend>::seed(&device, 7);
    let temps = Temperatures::default();
    temps.weights.set(5.0);
    temps.acts.set(5.0);
    let policy = ternary_u2();
    let images = || {
        Tensor::<Inner, 4>::random(
            [batch, shape.channels, shape.height, shape.width],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
    };
    // Quantize on the inner backend (hard weight quantizers during calibration).
    let mut inner = Model::<Inner>::new(arch, shape, &device);
    let n_weights = inner.slots().weights.len();
    let quantized = quantize_weights(&mut inner, &policy, &temps).unwrap();
    assert_eq!(
        quantized,
        n_weights - 2,
        "{arch}: first and last stay float"
    );
    let acts = calibrate_acts(&mut inner, &policy, &temps, [images(), images()]).unwrap();
    assert!(acts > 0, "{arch}");
    {
        let slots = inner.slots();
        let last = slots.weights.len() - 1;
        for (i, (name, mut layer)) in slots.weights.into_iter().enumerate() {
            let float = i == 0 || i == last;
            assert_eq!(layer.quantizer().is_none(), float, "{arch} {name}");
        }
    }
    let hard = inner.forward(images());
    assert_eq!(hard.dims(), [batch, shape.classes], "{arch}");

    let model = <Model<B> as AutodiffModule<B>>::from_inner(inner);
    let x = Tensor::<B, 4>::random(
        [batch, shape.channels, shape.height, shape.width],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let targets =
        Tensor::<B, 1, Int>::from_ints([1, 0, 1, 0][..batch].to_vec().as_slice(), &device);
    let logits = model.forward(x);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets);
    let loss_value: f32 = loss.clone().into_scalar();
    assert!(loss_value.is_finite(), "{arch}: loss {loss_value}");
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut before = model.clone();
    let (w0, a0) = {
        let mut slots = before.slots();
        let (_, layer) = &mut slots.weights[1];
        let w = layer.weight().into_data();
        let a = layer.quantizer().as_ref().unwrap().beta.val().into_data();
        (w, a)
    };
    let mut after = SgdConfig::new().init().step(0.1, model, grads);
    let mut slots = after.slots();
    let (name, layer) = &mut slots.weights[1];
    assert_ne!(
        layer.weight().into_data(),
        w0,
        "{arch} {name}: weight did not move"
    );
    assert_ne!(
        layer.quantizer().as_ref().unwrap().beta.val().into_data(),
        a0,
        "{arch} {name}: beta did not move"
    );
}

#[test]
fn small_models_quantize_and_train_one_step() {
    let _serial = crate::backend::serial();
    quantize_and_step(Arch::Lenet5, input(1, 28, 10), 4);
    quantize_and_step(Arch::Lenet5, input(3, 32, 10), 2);
    quantize_and_step(Arch::Tfc, input(1, 28, 10), 4);
    quantize_and_step(Arch::Sfc, input(1, 28, 10), 4);
    quantize_and_step(Arch::Lfc, input(1, 28, 10), 4);
    quantize_and_step(Arch::Resnet20, input(3, 32, 10), 2);
    quantize_and_step(Arch::VggSmall, input(3, 32, 10), 2);
}

#[test]
fn imagenet_models_quantize_and_train_one_step_on_small_inputs() {
    let _serial = crate::backend::serial();
    quantize_and_step(Arch::Resnet18, input(3, 64, 10), 2);
    quantize_and_step(Arch::Resnet50, input(3, 64, 10), 2);
    // Batch 4 and 96×96: with 2 images, the batch norm after fc6 maps every feature to ±1
    // whatever its input, and no gradient reaches the layers below.
    quantize_and_step(Arch::AlexnetBn, input(3, 96, 10), 4);
}

#[test]
fn quantize_all_quantizes_the_first_and_last_layer_and_slots_are_in_forward_order() {
    let _serial = crate::backend::serial();
    let device = Default::default();
    let mut model = Model::<Inner>::new(Arch::Resnet18, input(3, 64, 10), &device);
    let policy = QuantPolicy {
        quantize_all: true,
        ..ternary_u2()
    };
    let n = quantize_weights(&mut model, &policy, &Temperatures::default()).unwrap();
    let slots = model.slots();
    assert_eq!(n, slots.weights.len());
    // 21 conv/linear modules, as paper-spec §5 counts for ResNet-18 (3 of them 1×1 shortcuts).
    assert_eq!(slots.weights.len(), 21);
    assert_eq!(slots.weights[0].0, "conv1");
    assert_eq!(slots.weights[20].0, "fc");
    // quan0 (after the stem) + 2 per basic block.
    assert_eq!(slots.acts.len(), 17);
}

#[test]
fn activations_only_phase_moves_only_the_activation_quantizers() {
    let _serial = crate::backend::serial();
    let device = Default::default();
    <B as Backend>::seed(&device, 11);
    let temps = Temperatures::default();
    temps.weights.set(5.0);
    temps.acts.set(5.0);
    let policy = ternary_u2();
    let shape = input(1, 28, 10);
    let images =
        || Tensor::<Inner, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let mut inner = Model::<Inner>::new(Arch::Lenet5, shape, &device);
    quantize_weights(&mut inner, &policy, &temps).unwrap();
    calibrate_acts(&mut inner, &policy, &temps, [images()]).unwrap();
    let mut model = <Model<B> as AutodiffModule<B>>::from_inner(inner);
    let acts = quantnet_models::quantize::train_only_act_quantizers(&mut model);
    assert!(acts > 0);
    // The paper's phase 2 fixes the weights at their quantized values: hard, not soft at T.
    for (name, mut layer) in model.slots().weights {
        if let Some(q) = layer.quantizer().as_ref() {
            assert_eq!(q.mode(), quantnet_burn::QuantMode::Hard, "{name}");
        }
    }
    let snapshot = |m: &mut Model<B>| {
        let slots = m.slots();
        let weights: Vec<_> = slots
            .weights
            .into_iter()
            .map(|(_, mut l)| {
                let q = l.quantizer().as_ref().map(|q| q.alpha.val().into_data());
                (l.weight().into_data(), q)
            })
            .collect();
        let acts: Vec<_> = slots
            .acts
            .into_iter()
            .filter_map(|(_, a)| a.quantizer.as_ref().map(|q| q.alpha.val().into_data()))
            .collect();
        (weights, acts)
    };
    let x = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let targets = Tensor::<B, 1, Int>::from_ints([1, 0, 3, 2], &device);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(model.forward(x), targets);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut before = model.clone();
    let (w0, a0) = snapshot(&mut before);
    let mut after = SgdConfig::new().init().step(0.5, model, grads);
    let (w1, a1) = snapshot(&mut after);
    assert_eq!(w0, w1, "weights and weight quantizers must stay fixed");
    assert_ne!(a0, a1, "activation quantizers must train");
}

/// Every trained parameter's gradient, by id, as host values.
fn all_grads(model: &Model<B>, grads: &GradientsParams) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Vec<(String, Vec<f32>)>,
    }
    impl burn::module::ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<Inner, D>(param.id) {
                self.out
                    .push((param.id.to_string(), g.into_data().to_vec::<f32>().unwrap()));
            }
        }
    }
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// LeNet-5 on the autodiff backend with ternary weights and 2-bit activations (calibrated on 8
/// random images) at temperature 5, after seeding the backend with `seed`.
fn quantized_lenet(seed: u64) -> Model<B> {
    let device = Default::default();
    <B as Backend>::seed(&device, seed);
    let temps = Temperatures::default();
    temps.weights.set(5.0);
    temps.acts.set(5.0);
    let policy = ternary_u2();
    let images =
        Tensor::<Inner, 4>::random([8, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let mut inner = Model::<Inner>::new(Arch::Lenet5, input(1, 28, 10), &device);
    quantize_weights(&mut inner, &policy, &temps).unwrap();
    calibrate_acts(&mut inner, &policy, &temps, [images]).unwrap();
    <Model<B> as AutodiffModule<B>>::from_inner(inner)
}

#[test]
fn clipping_in_the_wq_domain_reproduces_plain_gradients_and_scales_them_all_alike() {
    let _serial = crate::backend::serial();
    use quantnet_models::data::ImageBatch;
    use quantnet_models::train::step_clipped_in_wq;
    let device = Default::default();
    let model = quantized_lenet(5);
    let x = Tensor::<B, 4>::random([8, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let targets = Tensor::<B, 1, Int>::from_ints([1, 0, 3, 2, 9, 4, 4, 7], &device);
    let batch = || ImageBatch {
        images: x.clone(),
        targets: targets.clone(),
    };

    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(model.forward(x.clone()), targets.clone());
    let plain = all_grads(
        &model,
        &GradientsParams::from_grads(loss.backward(), &model),
    );
    let (unclipped, norm) = step_clipped_in_wq(&model, batch(), f32::MAX);
    let unclipped = all_grads(&model, &unclipped.grads);
    assert!(norm.is_finite() && norm > 0.0);
    // Every parameter (weights, biases, weight and activation quantizers) gets its gradient,
    // equal to autodiff's through the whole graph up to float rounding.
    assert_eq!(plain.len(), unclipped.len());
    let close = |a: &[f32], b: &[f32], scale: f32, what: &str| {
        let peak = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x * scale - y).abs() <= 1e-4 * peak * scale.max(1e-3),
                "{what}: {x}·{scale} vs {y}"
            );
        }
    };
    for ((id, a), (id2, b)) in plain.iter().zip(&unclipped) {
        assert_eq!(id, id2);
        close(a, b, 1.0, id);
    }

    // The norm is over ∂ℓ/∂ŵ, not over the latent weights' gradients: computing it in the w
    // domain (without the weight quantizers' α/β, as there) gives a different number.
    let quantizer_ids: Vec<String> = {
        let mut m = model.clone();
        m.slots()
            .weights
            .into_iter()
            .filter_map(|(_, mut l)| {
                l.quantizer()
                    .as_ref()
                    .map(|q| [q.alpha.id.to_string(), q.beta.id.to_string()])
            })
            .flatten()
            .collect()
    };
    let w_norm = plain
        .iter()
        .filter(|(id, _)| !quantizer_ids.contains(id))
        .flat_map(|(_, g)| g.iter().map(|v| v * v))
        .sum::<f32>()
        .sqrt();
    assert!(
        (w_norm - norm).abs() > 0.01 * norm,
        "ŵ-domain norm {norm} vs w-domain {w_norm}"
    );

    // Clipped to a tenth of the norm: the same norm is measured and every gradient is scaled by
    // max/norm.
    let max = norm / 10.0;
    let (clipped, norm2) = step_clipped_in_wq(&model, batch(), max);
    assert_eq!(norm, norm2);
    let clipped = all_grads(&model, &clipped.grads);
    let scale = max / (norm + 1e-6);
    for ((id, a), (_, b)) in plain.iter().zip(&clipped) {
        close(a, b, scale, id);
    }
}

/// The multi-device step (`Qat::run_on`): each of two devices runs half of a step's batch with
/// `grad_scale` 1/2 and burn-train sums their gradients (its `GradientsAccumulator`): the sum is
/// the gradient of one device running the whole batch, for every parameter (weights, biases,
/// both kinds of quantizer), with and without clipping in the ŵ domain (here below its
/// threshold: each half is clipped on its own, so an active clip is per device).
#[test]
fn two_half_batches_at_half_scale_sum_to_the_whole_batch_gradient() {
    let _serial = crate::backend::serial();
    use burn::optim::GradientsAccumulator;
    use burn::train::TrainStep;
    use quantnet_models::data::ImageBatch;
    use quantnet_models::train::{MonitorOptions, Monitored};
    let device = Default::default();
    let model = quantized_lenet(9);
    let x = Tensor::<B, 4>::from_inner(Tensor::<Inner, 4>::random(
        [8, 1, 28, 28],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let targets = Tensor::<B, 1, Int>::from_ints([1, 0, 3, 2, 9, 4, 4, 7], &device);
    let part = |range: std::ops::Range<usize>| ImageBatch {
        images: x.clone().slice(range.clone()),
        targets: targets.clone().slice(range),
    };
    for clip_in_wq in [None, Some(1e6)] {
        let options = |grad_scale| MonitorOptions {
            clip_in_wq,
            grad_scale,
            ..MonitorOptions::default()
        };
        let whole = Monitored::new(model.clone(), options(1.0));
        let whole = all_grads(&model, &TrainStep::step(&whole, part(0..8)).grads);
        let half = Monitored::new(model.clone(), options(0.5));
        let mut sum = GradientsAccumulator::new();
        for range in [0..4, 4..8] {
            sum.accumulate(&half, TrainStep::step(&half, part(range)).grads);
        }
        let two = all_grads(&model, &sum.grads());
        assert_eq!(whole.len(), two.len(), "{clip_in_wq:?}");
        assert!(whole.len() > 10, "{}", whole.len());
        for ((id, a), (id2, b)) in whole.iter().zip(&two) {
            assert_eq!(id, id2);
            let peak = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-4 * peak,
                    "{clip_in_wq:?} {id}: {x} vs {y}"
                );
            }
        }
    }
}

/// Regression (`--gradient` was ignored with `--from`): a quantizer kept because its level set
/// matches the policy's takes the policy's gradient rule, for weights and activations alike.
#[test]
fn kept_quantizers_take_the_policys_gradient_rule() {
    let _serial = crate::backend::serial();
    use quantnet_burn::GradientMode;
    let device = Default::default();
    let temps = Temperatures::default();
    let images =
        || Tensor::<Inner, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let mut model = Model::<Inner>::new(Arch::Lenet5, input(1, 28, 10), &device);
    let exact = ternary_u2();
    quantize_weights(&mut model, &exact, &temps).unwrap();
    calibrate_acts(&mut model, &exact, &temps, [images()]).unwrap();
    let official = GradientMode::Official { cap: 7.0 };
    let policy = QuantPolicy {
        weights: exact.weights.clone().map(|c| c.with_gradient(official)),
        acts: exact
            .acts
            .clone()
            .map(|c| c.with_gradient(GradientMode::official())),
        ..exact
    };
    assert_eq!(
        quantize_weights(&mut model, &policy, &temps).unwrap(),
        0,
        "kept"
    );
    assert_eq!(
        calibrate_acts(&mut model, &policy, &temps, [images()]).unwrap(),
        0,
        "kept"
    );
    let slots = model.slots();
    let mut weights = 0;
    for (_, mut layer) in slots.weights {
        if let Some(q) = layer.quantizer().as_ref() {
            assert_eq!(q.gradient(), official);
            weights += 1;
        }
    }
    assert_eq!(weights, 3);
    for (_, slot) in slots.acts {
        assert_eq!(
            slot.quantizer.as_ref().unwrap().gradient(),
            GradientMode::official()
        );
    }
}

#[test]
fn batch_norm_reestimation_fits_the_statistics_to_the_hard_network() {
    let _serial = crate::backend::serial();
    use quantnet_burn::QuantMode;
    use quantnet_models::quantize::{
        BN_REESTIMATION_BATCHES, reestimate_batch_norm_with, set_mode,
    };
    let device = Default::default();
    <B as Backend>::seed(&device, 3);
    let temps = Temperatures::default();
    temps.weights.set(5.0);
    temps.acts.set(5.0);
    // Ternary weights, float activations: a hard activation quantizer would turn the last-bit
    // differences between batch and running statistics into whole-level flips near its
    // thresholds, and this test compares the two.
    let policy = QuantPolicy {
        acts: None,
        ..ternary_u2()
    };
    let mut inner = Model::<Inner>::new(Arch::Resnet20, input(3, 16, 10), &device);
    assert!(inner.has_batch_norm());
    quantize_weights(&mut inner, &policy, &temps).unwrap();
    let x = Tensor::<Inner, 4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    // Evaluation (inner backend: hard quantizers, running statistics) before re-estimation:
    // the statistics are the initial ones (mean 0, variance 1), not the hard network's.
    let before = inner.forward(x.clone());
    let inner = reestimate_batch_norm_with::<B, _>(
        inner,
        QuantMode::Hard,
        std::iter::repeat_n(x.clone(), BN_REESTIMATION_BATCHES),
    );
    let after = inner.forward(x.clone());
    // Reference: the hard network in training mode normalises with x's own batch statistics,
    // which the running ones now equal (to 0.9^200).
    let mut train = <Model<B> as AutodiffModule<B>>::from_inner(inner.clone());
    set_mode(&mut train, QuantMode::Hard);
    let reference = train.forward(Tensor::from_inner(x)).inner();
    let diff = |a: &Tensor<Inner, 2>| (a.clone() - reference.clone()).abs().max().into_scalar();
    let scale = reference.clone().abs().max().into_scalar();
    assert!(diff(&after) <= 1e-3 * scale, "{} vs {scale}", diff(&after));
    assert!(diff(&before) > 0.1 * scale, "{} vs {scale}", diff(&before));
    // A model without batch norm comes back as it was.
    let lenet = Model::<Inner>::new(Arch::Lenet5, input(1, 28, 10), &device);
    assert!(!lenet.has_batch_norm());
    let digits =
        Tensor::<Inner, 4>::random([2, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let before = lenet.forward(digits.clone()).into_data();
    let lenet = reestimate_batch_norm_with::<B, _>(lenet, QuantMode::Hard, [digits.clone()]);
    assert_eq!(lenet.forward(digits).into_data(), before);
}

/// The baselines in the policy: ste/pact/dsq calibrate their activations to the same α as `qn`
/// (the least-error range search assumes qn's α = 4q/5p; they set α = q/p), a quantized model
/// continued with another method gets that method's quantizers, the activations-only phase trains
/// what the method learns, and policies that would quantize nothing for the method are refused.
#[test]
fn methods_calibrate_like_qn_switch_on_reload_and_refuse_empty_policies() {
    use quantnet_burn::{LevelSet, Method};
    use quantnet_models::quantize::train_only_act_quantizers;
    let _serial = crate::backend::serial();
    let device = Default::default();
    let shape = input(1, 28, 10);
    // One model and one batch, drawn once (other tests may draw from the backend's generator
    // at the same time): every method calibrates a clone of the same network on the same images.
    <Inner as Backend>::seed(&device, 5);
    let images =
        Tensor::<Inner, 4>::random([16, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let base = Model::<Inner>::new(Arch::Lenet5, shape, &device);
    drop(base.forward(images.clone())); // initialises every lazy parameter, so clones share them
    let batch = || images.clone();
    let recipe = QuantPolicy::recipe(
        Some(LevelSet::ternary()),
        Some(LevelSet::unsigned(2).unwrap()),
    );
    // Activations alone, so that every method's calibration sees the same activations.
    let acts_only = QuantPolicy::recipe(None, Some(LevelSet::unsigned(2).unwrap()));
    let act_alphas = |method: Method, policy: &QuantPolicy| -> (Model<Inner>, Vec<f32>) {
        let mut model = base.clone();
        let policy = policy.clone().with_method(method).unwrap();
        let temps = Temperatures::default();
        quantize_weights(&mut model, &policy, &temps).unwrap();
        calibrate_acts(&mut model, &policy, &temps, [batch()]).unwrap();
        let alphas = model
            .slots()
            .acts
            .into_iter()
            .map(|(_, a)| {
                let q = a.quantizer.as_ref().unwrap();
                q.params().alpha.into_data().to_vec::<f32>().unwrap()[0]
            })
            .collect();
        (model, alphas)
    };
    let (_, qn_alphas) = act_alphas(Method::Qn, &acts_only);
    for method in [Method::Ste, Method::Pact, Method::Dsq] {
        let (_, alphas) = act_alphas(method, &acts_only);
        for (a, b) in alphas.iter().zip(&qn_alphas) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs(),
                "{method}: α {a} vs qn's {b}"
            );
        }
    }
    // A qn model continued with ste: its quantizers become ste's (same levels, other method).
    let (mut model, _) = act_alphas(Method::Qn, &recipe);
    let ste = recipe.clone().with_method(Method::Ste).unwrap();
    let temps = Temperatures::default();
    assert!(quantize_weights(&mut model, &ste, &temps).unwrap() > 0);
    calibrate_acts(&mut model, &ste, &temps, [batch()]).unwrap();
    for q in model.slots().quantizers() {
        assert_eq!(q.method(), Method::Ste);
    }
    // The activations-only phase: ste learns nothing, dsq its step and sharpness.
    let trainable = |mut model: Model<B>| {
        train_only_act_quantizers(&mut model);
        let (_, slot) = model.slots().acts.into_iter().next().unwrap();
        let q = slot.quantizer.as_ref().unwrap();
        (
            q.alpha.is_require_grad(),
            q.sharpness.as_ref().map(|s| s.is_require_grad()),
        )
    };
    assert_eq!(trainable(Model::<B>::from_inner(model)), (false, None));
    let (dsq, _) = act_alphas(Method::Dsq, &recipe);
    assert_eq!(trainable(Model::<B>::from_inner(dsq)), (true, Some(true)));
    // Policies the method cannot use.
    let fp_weights = QuantPolicy::recipe(None, Some(LevelSet::unsigned(2).unwrap()));
    let err = fp_weights.with_method(Method::Bwn).unwrap_err().to_string();
    assert!(err.contains("bwn quantizes weights"), "{err}");
    let fp_acts = QuantPolicy::recipe(Some(LevelSet::ternary()), None);
    let err = fp_acts.with_method(Method::Pact).unwrap_err().to_string();
    assert!(err.contains("pact learns the clipping"), "{err}");
    let signed = QuantPolicy::recipe(None, Some(LevelSet::ternary()));
    let err = signed.with_method(Method::Pact).unwrap_err().to_string();
    assert!(err.contains("start at 0"), "{err}");
}

/// `QatStep` around a model's own training step gives the gradients of the recipe's own wrapper
/// (`Monitored`), bit for bit: plain, clipped in the `ŵ` domain, and with a device's share of
/// the step (0.5, which scales alike whether the loss is scaled or its gradients), on 16 MNIST
/// fixture images.
#[test]
fn a_qat_step_gives_the_recipes_gradients() {
    let _serial = crate::backend::serial();
    use burn::data::dataloader::batcher::Batcher;
    use burn::train::TrainStep;
    use quantnet_models::data::{ImageBatch, ImageBatcher, Split, mnist};
    use quantnet_models::train::{MonitorOptions, Monitored, QatStep};
    let device = Default::default();
    let model = quantized_lenet(5);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mnist");
    let items = mnist::load(&dir, Split::Train).unwrap().items(16, 0.0, 1.0);
    let batcher = ImageBatcher {
        channels: 1,
        rows: 28,
        cols: 28,
    };
    let batch: ImageBatch<B> = batcher.batch(items, &device);
    for (clip, scale) in [
        (None, 1.0),
        (None, 0.5),
        (Some(1e-3), 1.0),
        (Some(1e-3), 0.5),
    ] {
        let options = MonitorOptions {
            soft_gap: false,
            layer_stats: false,
            clip_in_wq: clip,
            grad_scale: scale,
        };
        let monitored = Monitored::new(model.clone(), options);
        let mut step = QatStep::new(model.clone()).with_grad_scale(scale);
        if let Some(max_norm) = clip {
            step = step.with_clip_in_wq(max_norm);
        }
        let want = all_grads(&model, &TrainStep::step(&monitored, batch.clone()).grads);
        let got = all_grads(&model, &TrainStep::step(&step, batch.clone()).grads);
        assert!(want.len() > 10, "{}", want.len());
        assert!(
            want == got,
            "clip {clip:?}, scale {scale}: the gradients differ"
        );
    }
    // The clip bites: the clipped gradients are not the plain ones.
    let plain = QatStep::new(model.clone());
    let clipped = QatStep::new(model.clone()).with_clip_in_wq(1e-3);
    let plain = all_grads(&model, &TrainStep::step(&plain, batch.clone()).grads);
    let clipped = all_grads(&model, &TrainStep::step(&clipped, batch).grads);
    assert!(plain != clipped);
}

mod derived {
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::backend::Backend;
    use quantnet_burn::LevelSet;
    use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};
    use quantnet_models::models::{QatModel, WeightLayer};
    use quantnet_models::quantize::quantize_weights;
    use quantnet_models::{QuantPolicy, Temperatures};

    use crate::backend::Inner;

    #[derive(Module, QatModel, Debug)]
    struct Block<B: Backend> {
        conv: QuantConv2d<B>,
        act: QuantAct<B>,
    }

    /// Every kind of field the derive reads, and two it must leave out.
    #[derive(Module, QatModel, Debug)]
    struct Net<B: Backend> {
        stem: QuantConv2d<B>,
        acts: [QuantAct<B>; 2],
        #[qat(nested)]
        block: Block<B>,
        #[qat(nested)]
        blocks: Vec<Block<B>>,
        extra: Option<QuantAct<B>>,
        missing: Option<QuantAct<B>>,
        #[qat(skip)]
        probe: QuantAct<B>,
        hidden: Vec<QuantLinear<B>>,
        head: QuantLinear<B>,
    }

    fn net(device: &burn::tensor::Device<Inner>) -> Net<Inner> {
        let conv = || QuantConv2d::float(Conv2dConfig::new([2, 2], [3, 3]).init(device));
        let linear = || QuantLinear::float(LinearConfig::new(4, 4).init(device));
        let block = || Block {
            conv: conv(),
            act: QuantAct::float(),
        };
        Net {
            stem: conv(),
            acts: [QuantAct::float(), QuantAct::float()],
            block: block(),
            blocks: vec![block(), block()],
            extra: Some(QuantAct::float()),
            missing: None,
            probe: QuantAct::float(),
            hidden: vec![linear()],
            head: linear(),
        }
    }

    #[test]
    fn derived_slots_list_every_quantizable_field_in_declaration_order() {
        let mut net = net(&Default::default());
        let slots = net.slots();
        let weights: Vec<(String, &str)> = (slots.weights.iter())
            .map(|(n, w)| {
                let kind = match w {
                    WeightLayer::Conv(_) => "conv",
                    WeightLayer::Linear(_) => "linear",
                };
                (n.clone(), kind)
            })
            .collect();
        let named = |v: &[(&str, &'static str)]| -> Vec<(String, &'static str)> {
            v.iter().map(|(n, k)| (n.to_string(), *k)).collect()
        };
        assert_eq!(
            weights,
            named(&[
                ("stem", "conv"),
                ("block.conv", "conv"),
                ("blocks.0.conv", "conv"),
                ("blocks.1.conv", "conv"),
                ("hidden.0", "linear"),
                ("head", "linear"),
            ])
        );
        let acts: Vec<&str> = slots.acts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            acts,
            [
                "acts.0",
                "acts.1",
                "block.act",
                "blocks.0.act",
                "blocks.1.act",
                "extra"
            ]
        );
    }

    #[test]
    fn a_derived_model_quantizes_all_but_its_first_and_last_weight_layer() {
        let mut net = net(&Default::default());
        let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), None);
        let made = quantize_weights(&mut net, &policy, &Temperatures::default()).unwrap();
        assert_eq!(made, 4);
        assert!(net.stem.quantizer.is_none() && net.head.quantizer.is_none());
        assert!(net.block.conv.quantizer.is_some() && net.hidden[0].quantizer.is_some());
        assert!(net.blocks.iter().all(|b| b.conv.quantizer.is_some()));
    }
}
