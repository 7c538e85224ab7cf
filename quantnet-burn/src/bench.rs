//! The timed paths of the quantizer benchmarks: the criterion bench (`cargo bench -p
//! quantnet-benches`) and the `quantnet bench` command time the same three paths, side by side,
//! in one process.
//!
//! Each path is one training step of an elementwise layer through Burn's autodiff:
//! `y = f(x)`, `loss = sum(y)`, `backward`, read `∂loss/∂x`, then a device sync. `f` is
//!
//! - [`Path::Copy`]: `x·1`, a plain same-size elementwise pass: the memory-bound floor;
//! - [`Path::Fused`]: [`soft_quantize`], the custom op (fused CubeCL kernel on wgpu/cuda, the
//!   generic body on CPU backends);
//! - [`Path::Naive`]: [`soft_quantize_reference`], `n` sigmoids composed from Burn ops and
//!   differentiated by Burn's autodiff.
//!
//! Throughput is reported as GB/s of the input tensor, `4·N` bytes per step, the same for all
//! three paths so that their ratios are ratios of time.

use std::time::{Duration, Instant};

use crate::{
    GradientMode, LevelSet, QuantBackend, QuantParams, soft_quantize, soft_quantize_reference,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};

/// What is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// `y = x·1`.
    Copy,
    /// The custom op.
    Fused,
    /// The composition of `n` sigmoids.
    Naive,
}

impl Path {
    /// All paths, in report order.
    pub const ALL: [Path; 3] = [Path::Copy, Path::Fused, Path::Naive];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Path::Copy => "copy",
            Path::Fused => "fused",
            Path::Naive => "naive",
        }
    }
}

/// The level sets of the benchmark, by number of thresholds: 1, 2, 6 and 30.
pub fn level_sets() -> [LevelSet; 4] {
    [
        LevelSet::binary(),
        LevelSet::ternary(),
        LevelSet::three_pm4(),
        LevelSet::five_bit(),
    ]
}

/// One prepared benchmark case: an input of `len` elements and a quantizer for `levels`.
pub struct Case<B: AutodiffBackend> {
    x: Tensor<B::InnerBackend, 1>,
    params: QuantParams<B>,
    device: B::Device,
}

impl<B: AutodiffBackend + QuantBackend> Case<B> {
    /// Random `x ~ U(−1, 1)` with `len` elements; midpoint thresholds, `α = 1/β`, `β = 5p/4`.
    pub fn new(len: usize, levels: &LevelSet, device: &B::Device) -> Self {
        let beta = 1.25 * levels.max_abs();
        let params = QuantParams::with_midpoints(levels, 1.0 / beta, beta, device)
            .expect("named level sets with finite scales are valid");
        let x = Tensor::random([len], Distribution::Uniform(-1.0, 1.0), device);
        Self {
            x,
            params,
            device: device.clone(),
        }
    }

    /// Bytes of the input tensor (f32).
    pub fn bytes(&self) -> u64 {
        4 * self.x.dims()[0] as u64
    }

    /// One forward + backward step of `path`, synchronised.
    ///
    /// # Panics
    /// If the backend fails to synchronise.
    pub fn step(&self, path: Path) {
        let x = Tensor::<B, 1>::from_inner(self.x.clone()).require_grad();
        let y = match path {
            Path::Copy => x.clone().mul_scalar(1.0),
            Path::Fused => soft_quantize(x.clone(), &self.params, 10.0, GradientMode::Exact),
            Path::Naive => soft_quantize_reference(x.clone(), &self.params, 10.0),
        };
        let grads = y.sum().backward();
        let grad = x.grad(&grads).expect("x requires a gradient");
        drop(grad);
        B::sync(&self.device).expect("the device should synchronise");
    }

    /// Median time of `runs` steps after `warmup` untimed ones.
    pub fn median(&self, path: Path, warmup: usize, runs: usize) -> Duration {
        for _ in 0..warmup {
            self.step(path);
        }
        let mut times: Vec<Duration> = (0..runs.max(1))
            .map(|_| {
                let start = Instant::now();
                self.step(path);
                start.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    }
}

/// GB/s for `bytes` processed in `time`.
pub fn gb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

/// Sync helper for the inner backend, for callers that time by hand.
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("the device should synchronise");
}
