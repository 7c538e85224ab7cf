//! Criterion benchmark of one training step (forward, cross-entropy, backward, Adam) of LeNet-5
//! (batch 64, MNIST shape) and ResNet-20 (batch 32, CIFAR-10 shape), full precision and with
//! ternary weights and 2-bit activations, on every backend compiled in: the regression guard of
//! `quantnet bench train`.
//!
//! `cargo bench -p quantnet-benches --bench train` (add `-- --quick` for a short run). Group names
//! are `train/<backend>/<model>`; throughput is images.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quantnet_burn::{LevelSet, QatBackend};
use quantnet_models::bench::{TrainCase, default_input};
use quantnet_models::{Arch, QuantPolicy};

fn bench_backend<B: QatBackend>(c: &mut Criterion, backend: &str, device: &B::Device) {
    let quantized = QuantPolicy::recipe(Some(LevelSet::ternary()), LevelSet::unsigned(2).ok());
    for (arch, batch) in [(Arch::Lenet5, 64), (Arch::Resnet20, 32)] {
        let mut group = c.benchmark_group(format!("train/{backend}/{arch}"));
        group.throughput(Throughput::Elements(batch as u64));
        group.sample_size(10);
        for (name, policy) in [("fp", QuantPolicy::float()), ("w2a2", quantized.clone())] {
            let mut case = TrainCase::<B>::new(arch, default_input(arch), batch, &policy, device)
                .expect("random weights and inputs calibrate");
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| case.step())
            });
        }
        group.finish();
    }
}

fn benches(c: &mut Criterion) {
    quantnet_benches::on_each_backend!(bench_backend, c);
}

criterion_group!(train, benches);
criterion_main!(train);
