//! Criterion benchmark of the layer ops quantnet overrides on flex, side by side with Burn's own:
//! the conv input and weight gradients (`QuantBackend::conv2d_input_grad` / `conv2d_weight_grad`
//! against flex's `ModuleOps` defaults) at ResNet-20's shapes, batch 32, and batch norm's training
//! forward + backward (`op::batch_norm` against Burn's `BatchNorm::forward`, through autodiff),
//! and the conv bias gradient (`op::conv2d_bias_grad` against Burn's `conv2d_bias_backward`).
//!
//! `cargo bench -p quantnet-benches --bench layers` (add `-- --quick` for a short run). Group
//! names are `layers/<op>/<shape>`, with `burn` and `quantnet` as the two functions.

use burn::backend::{Autodiff, Flex};
use burn::nn::BatchNormConfig;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use quantnet_burn::QuantBackend;
use quantnet_burn::op::{batch_norm, conv2d_bias_grad};

/// ResNet-20's 3×3 convs at batch 32: (input channels, output channels, input side, stride).
const CONVS: [(usize, usize, usize, usize); 4] = [
    (16, 16, 32, 1),
    (16, 32, 32, 2),
    (32, 32, 16, 1),
    (64, 64, 8, 1),
];
const BATCH: usize = 32;

fn random(shape: [usize; 4]) -> FloatTensor<Flex> {
    let device = Default::default();
    Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        .into_primitive()
        .tensor()
}

fn convs(c: &mut Criterion) {
    for (c_in, c_out, side, stride) in CONVS {
        let out = side / stride;
        let x = random([BATCH, c_in, side, side]);
        let w = random([c_out, c_in, 3, 3]);
        let g = random([BATCH, c_out, out, out]);
        let options = ConvOptions::new([stride, stride], [1, 1], [1, 1], 1);
        let shape = format!("{c_in}to{c_out}x{side}s{stride}");
        for (op, burn, ours) in [
            (
                "conv_input_grad",
                <Flex as ModuleOps<Flex>>::conv2d_x_backward as fn(_, _, _, _) -> _,
                <Flex as QuantBackend>::conv2d_input_grad as fn(_, _, _, _) -> _,
            ),
            (
                "conv_weight_grad",
                <Flex as ModuleOps<Flex>>::conv2d_weight_backward,
                <Flex as QuantBackend>::conv2d_weight_grad,
            ),
        ] {
            let mut group = c.benchmark_group(format!("layers/{op}/{shape}"));
            group.sample_size(10);
            for (name, f) in [("burn", burn), ("quantnet", ours)] {
                group.bench_function(name, |b| {
                    b.iter(|| {
                        let r = f(x.clone(), w.clone(), g.clone(), options.clone());
                        // Force the result (flex is eager; this reads one value back).
                        Tensor::<Flex, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(r))
                            .slice([0..1, 0..1, 0..1, 0..1])
                            .into_scalar()
                    })
                });
            }
            group.finish();
        }
    }
}

fn norms(c: &mut Criterion) {
    type B = Autodiff<Flex>;
    let device = Default::default();
    for (channels, side) in [(16, 32), (64, 8)] {
        let bn = BatchNormConfig::new(channels).init::<B>(&device);
        let x = Tensor::<B, 4>::random(
            [BATCH, channels, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let mut group = c.benchmark_group(format!("layers/batch_norm_train/{channels}x{side}"));
        group.sample_size(10);
        group.bench_function("burn", |b| {
            b.iter(|| {
                let x = x.clone().require_grad();
                let grads = bn.forward(x.clone()).sum().backward();
                x.grad(&grads)
                    .map(|g| g.slice([0..1, 0..1, 0..1, 0..1]).into_scalar())
            })
        });
        group.bench_function("quantnet", |b| {
            b.iter(|| {
                let x = x.clone().require_grad();
                let grads = batch_norm(&bn, x.clone()).sum().backward();
                x.grad(&grads)
                    .map(|g| g.slice([0..1, 0..1, 0..1, 0..1]).into_scalar())
            })
        });
        group.finish();
    }
}

/// The conv bias gradient at LeNet-5's convs (batch 64: 6 channels of 24×24, 16 of 8×8) and two
/// of ResNet-20's shapes (batch 32; ResNet-20's convs have no bias, its classifier-free blocks
/// are the size reference): Burn's `conv2d_bias_backward` against `op::conv2d_bias_grad`.
fn bias_grads(c: &mut Criterion) {
    for (batch, channels, side) in [(64, 6, 24), (64, 16, 8), (32, 16, 32), (32, 64, 8)] {
        let g = random([batch, channels, side, side]);
        let x = random([batch, 1, side, side]);
        let bias = Tensor::<Flex, 1>::zeros([channels], &Default::default())
            .into_primitive()
            .tensor();
        let mut group =
            c.benchmark_group(format!("layers/conv_bias_grad/{batch}x{channels}x{side}"));
        group.sample_size(20);
        let read = |r: FloatTensor<Flex>| {
            Tensor::<Flex, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(r))
                .slice(0..1)
                .into_scalar()
        };
        group.bench_function("burn", |b| {
            b.iter(|| {
                read(<Flex as ModuleOps<Flex>>::conv2d_bias_backward(
                    x.clone(),
                    bias.clone(),
                    g.clone(),
                ))
            })
        });
        group.bench_function("quantnet", |b| {
            b.iter(|| read(conv2d_bias_grad::<Flex>(g.clone())))
        });
        group.finish();
    }
}

criterion_group!(layers, convs, norms, bias_grads);
criterion_main!(layers);
