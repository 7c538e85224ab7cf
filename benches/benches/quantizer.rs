//! Criterion benchmark of the quantizer op, forward + backward, against a same-size copy and the
//! naive composition of `n` sigmoids, on every backend compiled in (`--features wgpu,ndarray`).
//!
//! `cargo bench -p quantnet-benches` (add `-- --quick` for a short run). Group names are
//! `quantizer/<backend>/<elements>/n<thresholds>`; throughput is bytes of the f32 input.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quantnet_benches::{Case, Path, level_sets};
use quantnet_burn::QuantBackend;

fn bench_backend<B>(c: &mut Criterion, backend: &str, device: &B::Device)
where
    B: burn::tensor::backend::AutodiffBackend + QuantBackend,
{
    for len in [1 << 20, 1 << 24] {
        for levels in level_sets() {
            let case = Case::<B>::new(len, &levels, device);
            let mut group =
                c.benchmark_group(format!("quantizer/{backend}/{len}/n{}", levels.num_steps()));
            group.throughput(Throughput::Bytes(case.bytes()));
            group.sample_size(10);
            for path in Path::ALL {
                group.bench_function(BenchmarkId::from_parameter(path.name()), |b| {
                    b.iter(|| case.step(path))
                });
            }
            group.finish();
        }
    }
}

fn benches(c: &mut Criterion) {
    quantnet_benches::on_each_backend!(bench_backend, c);
}

criterion_group!(quantizer, benches);
criterion_main!(quantizer);
