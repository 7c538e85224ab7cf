//! Backend names on the command line, and running generic code on the one picked.
//!
//! This is the only module that names concrete backends.

use anyhow::Result;
use clap::ValueEnum;

/// The CPU backend for host-side work that needs no autodiff (`export`, `info`).
#[cfg(feature = "flex")]
pub(crate) type Host = burn::backend::Flex;
/// The CPU backend for host-side work that needs no autodiff (`export`, `info`).
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub(crate) type Host = burn::backend::NdArray;
#[cfg(not(any(feature = "flex", feature = "ndarray")))]
compile_error!(
    "quantnet-cli needs a CPU backend: enable the `flex` (default) or `ndarray` feature"
);

/// A backend as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendName {
    /// Burn's flex CPU backend (the default).
    Cpu,
    /// The ndarray CPU backend.
    Ndarray,
    /// wgpu (Vulkan, Metal, DX12; lavapipe on machines without a GPU).
    Wgpu,
    /// CUDA.
    Cuda,
}

impl BackendName {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BackendName::Cpu => "cpu",
            BackendName::Ndarray => "ndarray",
            BackendName::Wgpu => "wgpu",
            BackendName::Cuda => "cuda",
        }
    }
}

/// Code that runs on any autodiff backend with the quantizer op.
pub(crate) trait WithBackend {
    type Output;
    fn run<B: quantnet_burn::QatBackend>(self, device: B::Device) -> Result<Self::Output>;
}

fn not_compiled(name: BackendName) -> anyhow::Error {
    anyhow::anyhow!(
        "backend `{}` is not compiled into this binary; rebuild with `--features {}`",
        name.name(),
        match name {
            BackendName::Cpu => "flex",
            other => other.name(),
        }
    )
}

/// Runs `job` on the backend `name`.
pub(crate) fn dispatch<J: WithBackend>(name: BackendName, job: J) -> Result<J::Output> {
    use burn::backend::Autodiff;
    #[allow(unused_variables)]
    let job = job;
    match name {
        #[cfg(feature = "flex")]
        BackendName::Cpu => job.run::<Autodiff<burn::backend::Flex>>(Default::default()),
        #[cfg(feature = "ndarray")]
        BackendName::Ndarray => job.run::<Autodiff<burn::backend::NdArray>>(Default::default()),
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => {
            check_wgpu_adapter()?;
            job.run::<Autodiff<burn::backend::Wgpu>>(Default::default())
        }
        #[cfg(feature = "cuda")]
        BackendName::Cuda => {
            check_libcuda()?;
            job.run::<Autodiff<burn::backend::Cuda>>(Default::default())
        }
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other)),
    }
}

/// CubeCL looks for a wgpu adapter in a device thread and panics there (then again in the caller)
/// when there is none; run one tiny op first, with the panic messages silenced, so that the user
/// gets one clear line instead.
#[cfg(feature = "wgpu")]
fn check_wgpu_adapter() -> Result<()> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = Default::default();
        burn::tensor::Tensor::<burn::backend::Wgpu, 1>::from_floats([1.0], &device).into_data()
    });
    std::panic::set_hook(hook);
    if probe.is_err() {
        anyhow::bail!(
            "no wgpu adapter found: wgpu needs a Vulkan, Metal or DX12 driver (on Linux without a \
             GPU, Mesa's software one: `apt-get install mesa-vulkan-drivers`); or use --backend cpu"
        );
    }
    Ok(())
}

/// cudarc loads the driver library lazily and panics in a device thread when it is missing; look
/// for it first so that the user gets one clear line instead.
#[cfg(feature = "cuda")]
fn check_libcuda() -> Result<()> {
    use anyhow::bail;
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/compat",
            "/usr/lib/wsl/lib",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .map(std::path::PathBuf::from),
    );
    let found = dirs
        .iter()
        .any(|d| d.join("libcuda.so.1").exists() || d.join("libcuda.so").exists());
    if !found {
        bail!(
            "the cuda backend needs the NVIDIA driver library libcuda.so.1, which was not found \
             in LD_LIBRARY_PATH or the usual library folders; install the NVIDIA driver or use \
             --backend cpu|wgpu"
        );
    }
    Ok(())
}
