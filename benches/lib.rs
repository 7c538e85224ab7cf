//! The criterion benchmarks of the quantizer op (`cargo bench -p quantnet-benches`). The timed
//! paths are `quantnet_burn::bench`, which `quantnet bench` runs too; this crate adds the
//! backend types the bench compares.

pub use quantnet_burn::bench::{Case, Path, gb_per_s, level_sets, sync};

/// The CubeCL wgpu backend without Burn's `Fusion` wrapper, so the fused kernel runs.
#[cfg(feature = "wgpu")]
pub type WgpuCube =
    burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// Burn's cuda backend: the CubeCL backend itself (the fused kernel runs) unless the `fusion`
/// feature wraps it in `Fusion`, which runs the generic body.
#[cfg(feature = "cuda")]
pub type CudaCube = burn::backend::Cuda;
