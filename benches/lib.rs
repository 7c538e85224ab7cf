//! The criterion benchmarks of the quantizer op (`cargo bench -p quantnet-benches`). The timed
//! paths are `quantnet_burn::bench`, which `quantnet bench` runs too; this crate adds the
//! backend types the bench compares.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use quantnet_benches::{Case, Path, gb_per_s, level_sets};
//!
//! let device = Default::default();
//! // One step of the fused op against a copy, on 4096 elements, ternary levels.
//! let case = Case::<Autodiff<Flex>>::new(4096, &level_sets()[1], &device);
//! let fused = case.median(Path::Fused, 1, 3);
//! let copy = case.median(Path::Copy, 1, 3);
//! assert!(gb_per_s(case.bytes(), fused) > 0.0 && gb_per_s(case.bytes(), copy) > 0.0);
//! ```

pub use quantnet_burn::bench::{Case, Path, gb_per_s, level_sets, sync};

/// The CubeCL wgpu backend without Burn's `Fusion` wrapper, so the fused kernel runs.
#[cfg(feature = "wgpu")]
pub type WgpuCube =
    burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// Burn's cuda backend: the CubeCL backend itself (the fused kernel runs) unless the `fusion`
/// feature wraps it in `Fusion`, which runs the generic body.
#[cfg(feature = "cuda")]
pub type CudaCube = burn::backend::Cuda;

/// Calls `$bench::<Autodiff<B>>($c, "name", &device)` for every backend compiled in (flex,
/// ndarray, wgpu without fusion, cuda): the backend list of every criterion bench.
#[macro_export]
macro_rules! on_each_backend {
    ($bench:ident, $c:expr) => {{
        #[cfg(feature = "flex")]
        $bench::<burn::backend::Autodiff<burn::backend::Flex>>($c, "flex", &Default::default());
        #[cfg(feature = "ndarray")]
        $bench::<burn::backend::Autodiff<burn::backend::NdArray>>(
            $c,
            "ndarray",
            &Default::default(),
        );
        #[cfg(feature = "wgpu")]
        $bench::<burn::backend::Autodiff<$crate::WgpuCube>>($c, "wgpu", &Default::default());
        #[cfg(feature = "cuda")]
        $bench::<burn::backend::Autodiff<$crate::CudaCube>>($c, "cuda", &Default::default());
    }};
}
