//! `quantnet bench`: the quantizer's forward+backward against a copy and the naive composition.

use anyhow::{Result, bail};
use quantnet_burn::bench::{Case, Path, gb_per_s, level_sets};

use quantnet_burn::QatBackend;

use crate::backend::{WithBackend, dispatch};
use crate::cli::BenchArgs;

struct BenchJob {
    backend: &'static str,
    sizes: Vec<usize>,
    runs: usize,
    warmup: usize,
}

impl WithBackend for BenchJob {
    type Output = ();

    fn run<B: QatBackend>(self, device: B::Device) -> Result<()> {
        for &len in &self.sizes {
            for levels in level_sets() {
                let case = Case::<B>::new(len, &levels, &device);
                let times = Path::ALL.map(|path| case.median(path, self.warmup, self.runs));
                let gbs = times.map(|t| gb_per_s(case.bytes(), t));
                println!(
                    "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0}% | {:.1}x |",
                    self.backend,
                    len,
                    levels.num_steps(),
                    gbs[0],
                    gbs[1],
                    gbs[2],
                    100.0 * gbs[1] / gbs[0],
                    gbs[1] / gbs[2],
                );
            }
        }
        Ok(())
    }
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    if args.sizes.iter().any(|&s| s == 0 || s > 1 << 28) {
        bail!("--sizes must be between 1 and {} elements", 1u64 << 28);
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    eprintln!(
        "forward+backward through autodiff, median of {} runs after {} warm-up; GB/s of the f32 input",
        args.runs, args.warmup
    );
    println!(
        "| backend | elements | n | copy GB/s | fused GB/s | naive GB/s | fused/copy | fused/naive |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for backend in args.backend {
        let job = BenchJob {
            backend: backend.name(),
            sizes: args.sizes.clone(),
            runs: args.runs,
            warmup: args.warmup,
        };
        dispatch(backend, job)?;
    }
    Ok(())
}
