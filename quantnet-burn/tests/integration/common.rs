//! Shared helpers: the test backends, a seeded generator, and running the op on a backend.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData};
use quantnet_burn::{GradientMode, LevelSet, QuantBackend, QuantParams, soft_quantize};

use crate::reference::{HostGrads, HostParams};

/// The CPU backend every test run has.
pub type Flex = burn::backend::Flex;
/// The ndarray backend in f64.
#[cfg(feature = "ndarray")]
pub type NdArray64 = burn::backend::NdArray<f64>;
/// The CubeCL wgpu backend itself (not wrapped in `Fusion`), so the fused kernel is what runs.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// The CubeCL CUDA backend itself (not wrapped in `Fusion`), so the fused kernel is what runs.
#[cfg(feature = "cuda")]
pub type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// Defines `mod $name` with one `#[test]` per backend compiled in, each calling the generic
/// `fn $name<B>(device, dtype)`: flex and ndarray in f64, wgpu and cuda in f32 (WGSL has no f64;
/// the f32 tolerances are the ones both GPU backends are held to). CUDA tests need a GPU machine
/// (`scripts/gpu-check.sh`).
#[macro_export]
macro_rules! on_each_backend {
    ($name:ident) => {
        mod $name {
            #[test]
            fn flex() {
                super::$name::<burn::backend::Autodiff<$crate::common::Flex>>(
                    &Default::default(),
                    burn::tensor::DType::F64,
                );
            }
            #[cfg(feature = "ndarray")]
            #[test]
            fn ndarray() {
                super::$name::<burn::backend::Autodiff<$crate::common::NdArray64>>(
                    &Default::default(),
                    burn::tensor::DType::F64,
                );
            }
            #[cfg(feature = "wgpu")]
            #[test]
            fn wgpu() {
                super::$name::<burn::backend::Autodiff<$crate::common::Wgpu>>(
                    &Default::default(),
                    burn::tensor::DType::F32,
                );
            }
            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                super::$name::<burn::backend::Autodiff<$crate::common::Cuda>>(
                    &Default::default(),
                    burn::tensor::DType::F32,
                );
            }
        }
    };
}

/// Central differences `(L(v + ε·e_i) − L(v − ε·e_i)) / 2ε` of `loss` in every coordinate `i` of
/// the vector that `pick` selects in `values`.
pub fn central_differences_along<V: Clone>(
    values: &V,
    pick: fn(&mut V) -> &mut Vec<f64>,
    eps: f64,
    loss: impl Fn(&V) -> f64,
) -> Vec<f64> {
    let n = pick(&mut values.clone()).len();
    (0..n)
        .map(|i| {
            let (mut up, mut down) = (values.clone(), values.clone());
            pick(&mut up)[i] += eps;
            pick(&mut down)[i] -= eps;
            (loss(&up) - loss(&down)) / (2.0 * eps)
        })
        .collect()
}

/// A small deterministic generator (64-bit LCG, Knuth's constants): tests need no `rand`.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * self.next_f64()).collect()
    }
}

/// Host parameters with the midpoint thresholds of `levels`; the values are the f32 ones the
/// backends get, widened, so host and backend compute with the same numbers.
pub fn host_params(levels: &LevelSet, alpha: f32, beta: f32) -> HostParams {
    host_params_with(levels, alpha, beta, &levels.midpoint_thresholds())
}

pub fn host_params_with(
    levels: &LevelSet,
    alpha: f32,
    beta: f32,
    thresholds: &[f32],
) -> HostParams {
    let wide = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    HostParams {
        alpha: f64::from(alpha),
        beta: f64::from(beta),
        thresholds: wide(thresholds),
        steps: wide(&levels.steps()),
        offset: f64::from(levels.offset()),
    }
}

pub fn to_vec<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

pub fn tensor<B: burn::tensor::backend::Backend>(
    values: &[f64],
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, 1> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        (device, dtype),
    )
}

/// One soft-quantizer case.
pub struct Case<'a> {
    pub levels: &'a LevelSet,
    pub alpha: f32,
    pub beta: f32,
    pub thresholds: Vec<f32>,
    pub temperature: f32,
    pub mode: GradientMode,
    pub learn_thresholds: bool,
}

impl Case<'_> {
    pub fn host(&self) -> HostParams {
        host_params_with(self.levels, self.alpha, self.beta, &self.thresholds)
    }

    pub fn params<B: QuantBackend>(&self, device: &B::Device, dtype: DType) -> QuantParams<B> {
        QuantParams::new(self.levels, self.alpha, self.beta, &self.thresholds, device)
            .expect("test cases are valid")
            .cast(dtype)
    }

    /// Runs `L = Σ w·soft(x)` forward and backward on `B`; returns `y` and the gradients.
    pub fn run<B: AutodiffBackend + QuantBackend>(
        &self,
        x: &[f64],
        w: &[f64],
        device: &B::Device,
        dtype: DType,
    ) -> (Vec<f64>, HostGrads) {
        let mut p = self.params::<B>(device, dtype);
        p.alpha = p.alpha.require_grad();
        p.beta = p.beta.require_grad();
        if self.learn_thresholds {
            p.thresholds = p.thresholds.require_grad();
        }
        let xt = tensor::<B>(x, device, dtype).require_grad();
        let y = soft_quantize(xt.clone(), &p, self.temperature, self.mode);
        let loss = (y.clone() * tensor::<B>(w, device, dtype)).sum();
        let grads = loss.backward();
        let grad = |t: &Tensor<B, 1>| t.grad(&grads).map(to_vec).expect("tracked");
        let thresholds = if self.learn_thresholds {
            grad(&p.thresholds)
        } else {
            assert!(
                p.thresholds.grad(&grads).is_none(),
                "frozen thresholds get no gradient"
            );
            Vec::new()
        };
        let g = HostGrads {
            x: grad(&xt),
            alpha: grad(&p.alpha)[0],
            beta: grad(&p.beta)[0],
            thresholds,
        };
        (to_vec(y), g)
    }

    /// `L = Σ w·soft(x)` on the inner backend, no autodiff: the function finite differences probe.
    pub fn loss<B: AutodiffBackend + QuantBackend>(
        &self,
        x: &[f64],
        w: &[f64],
        host: &crate::reference::HostParams,
        device: &burn::tensor::Device<B::InnerBackend>,
        dtype: DType,
    ) -> f64
    where
        B::InnerBackend: QuantBackend,
    {
        let p = QuantParams::<B::InnerBackend> {
            alpha: tensor(&[host.alpha], device, dtype),
            beta: tensor(&[host.beta], device, dtype),
            thresholds: tensor(&host.thresholds, device, dtype),
            steps: tensor(&host.steps, device, dtype),
            offset: host.offset as f32,
        };
        let y = soft_quantize(tensor(x, device, dtype), &p, self.temperature, self.mode);
        to_vec((y * tensor(w, device, dtype)).sum())[0]
    }
}

/// The bit patterns of an f32 tensor's values (for bit-for-bit comparisons).
pub fn f32_bits<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
    t.into_data()
        .to_vec::<f32>()
        .expect("an f32 tensor")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}
