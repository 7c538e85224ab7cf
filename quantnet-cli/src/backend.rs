//! Backend names on the command line, and running generic code on the one picked.
//!
//! This is the only module that names concrete backends.

use anyhow::{Context, Result};
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

/// `--devices`: one backend and its devices, as `cpu,cpu`, `cuda:0,cuda:1` or `wgpu:0,wgpu:1`
/// (a name without an index is the backend's default device; a device may be listed twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceList {
    pub(crate) backend: BackendName,
    indices: Vec<Option<usize>>,
}

impl DeviceList {
    /// The backend's default device, once.
    pub(crate) fn single(backend: BackendName) -> Self {
        Self {
            backend,
            indices: vec![None],
        }
    }

    /// The devices as written on the command line (`cuda:1`, `cpu`).
    pub(crate) fn names(&self) -> Vec<String> {
        self.indices
            .iter()
            .map(|i| match i {
                Some(i) => format!("{}:{i}", self.backend.name()),
                None => self.backend.name().to_string(),
            })
            .collect()
    }
}

impl From<BackendName> for DeviceList {
    fn from(backend: BackendName) -> Self {
        Self::single(backend)
    }
}

impl std::str::FromStr for DeviceList {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let mut backend = None;
        let mut indices = Vec::new();
        for entry in text.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(format!("`{text}`: an empty entry in the device list"));
            }
            let (name, index) = match entry.split_once(':') {
                Some((name, index)) => {
                    let index = index.parse::<usize>().map_err(|_| {
                        format!("`{entry}`: the device index must be a number, as in cuda:1")
                    })?;
                    (name, Some(index))
                }
                None => (entry, None),
            };
            let name = <BackendName as ValueEnum>::from_str(name, true).map_err(|_| {
                format!("`{entry}`: unknown backend `{name}` (cpu, ndarray, wgpu or cuda)")
            })?;
            match backend {
                Some(b) if b != name => {
                    return Err(format!(
                        "the list mixes backends ({} and {}): one backend per run",
                        BackendName::name(b),
                        name.name()
                    ));
                }
                _ => backend = Some(name),
            }
            if matches!(name, BackendName::Cpu | BackendName::Ndarray)
                && index.is_some_and(|i| i > 0)
            {
                return Err(format!(
                    "`{entry}`: the {} backend has one device, `{}`; list it several times to \
                     train on it with several workers",
                    name.name(),
                    name.name()
                ));
            }
            indices.push(index);
        }
        let backend = backend.ok_or("an empty device list")?;
        Ok(Self { backend, indices })
    }
}

/// Code that runs on any autodiff backend with the quantizer op.
pub(crate) trait WithBackend: Sized {
    type Output;
    fn run<B: quantnet_burn::QatBackend>(self, device: B::Device) -> Result<Self::Output>;

    /// Runs on several devices of one backend; jobs that use one device run on the first.
    fn run_on<B: quantnet_burn::QatBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
        let device = devices.into_iter().next().context("no device")?;
        self.run::<B>(device)
    }
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

/// Runs one tiny op on `device` with panic messages silenced: CubeCL panics (in a device thread,
/// then again in the caller) for an adapter or a device that does not exist, and the user should
/// get one clear line instead.
fn probe<B: burn::tensor::backend::Backend>(device: &B::Device) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let device = device.clone();
    // The device is only read, and dropped if the op panics.
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        burn::tensor::Tensor::<B, 1>::from_floats([1.0], &device).into_data()
    }));
    std::panic::set_hook(hook);
    probe.is_ok()
}

/// The devices of `list` on backend `B`, each checked with one op.
fn devices<B: burn::tensor::backend::Backend>(
    list: &DeviceList,
    device: impl Fn(Option<usize>) -> B::Device,
) -> Result<Vec<B::Device>> {
    list.indices
        .iter()
        .zip(list.names())
        .map(|(&index, name)| {
            let device = device(index);
            if !probe::<B>(&device) {
                anyhow::bail!(
                    "device {name} does not exist or cannot be used on this machine{}",
                    if index.is_some() {
                        " (indices count from 0)"
                    } else {
                        ""
                    }
                );
            }
            Ok(device)
        })
        .collect()
}

/// Runs `job` on the backend and devices of `list` (a [`BackendName`]: its default device).
pub(crate) fn dispatch<J: WithBackend>(list: impl Into<DeviceList>, job: J) -> Result<J::Output> {
    use burn::backend::Autodiff;
    let list = list.into();
    #[allow(unused_variables)]
    let job = job;
    match list.backend {
        #[cfg(feature = "flex")]
        BackendName::Cpu => {
            type B = Autodiff<burn::backend::Flex>;
            job.run_on::<B>(devices::<B>(&list, |_| Default::default())?)
        }
        #[cfg(feature = "ndarray")]
        BackendName::Ndarray => {
            type B = Autodiff<burn::backend::NdArray>;
            job.run_on::<B>(devices::<B>(&list, |_| Default::default())?)
        }
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => {
            check_wgpu_adapter()?;
            type B = Autodiff<burn::backend::Wgpu>;
            job.run_on::<B>(devices::<B>(&list, |i| match i {
                None => burn::backend::wgpu::WgpuDevice::DefaultDevice,
                Some(i) => burn::backend::wgpu::WgpuDevice::DiscreteGpu(i),
            })?)
        }
        #[cfg(feature = "cuda")]
        BackendName::Cuda => {
            check_libcuda()?;
            type B = Autodiff<burn::backend::Cuda>;
            job.run_on::<B>(devices::<B>(&list, |i| {
                burn::backend::cuda::CudaDevice::new(i.unwrap_or(0))
            })?)
        }
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other)),
    }
}

/// Checks that every device of `list` exists and can run an op (before a run creates anything).
pub(crate) fn check_devices(list: &DeviceList) -> Result<()> {
    struct Nothing;
    impl WithBackend for Nothing {
        type Output = ();
        fn run<B: quantnet_burn::QatBackend>(self, _device: B::Device) -> Result<()> {
            Ok(())
        }
    }
    dispatch(list.clone(), Nothing)
}

/// CubeCL looks for a wgpu adapter in a device thread and panics there (then again in the caller)
/// when there is none; run one tiny op first, with the panic messages silenced, so that the user
/// gets one clear line instead.
#[cfg(feature = "wgpu")]
fn check_wgpu_adapter() -> Result<()> {
    if !probe::<burn::backend::Wgpu>(&Default::default()) {
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
