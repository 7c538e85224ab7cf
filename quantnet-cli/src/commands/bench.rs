//! `quantnet bench`: the quantizer's forward+backward against a copy and the naive composition;
//! `quantnet bench train`: a model's training step and inference, per backend and precision.

use anyhow::{Result, bail};
use quantnet_burn::bench::{Case, Path, gb_per_s, level_sets};
use quantnet_models::QuantPolicy;
use quantnet_models::bench::{Timing, TrainCase};

use quantnet_burn::QatBackend;

use crate::backend::{WithBackend, dispatch};
use crate::cli::{BenchArgs, BenchCommand, BenchTrainArgs};
use quantnet_burn::collective::Collective;
use std::sync::Arc;

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

/// One backend's training-step measurements, full precision and (unless `--weights fp`)
/// quantized.
struct TrainJob<'a> {
    args: &'a BenchTrainArgs,
    backend: &'static str,
    /// The ranks the step is all-reduced over (`--distributed`).
    group: Option<Arc<dyn Collective>>,
}

/// One measured row.
#[derive(serde::Serialize)]
struct TrainRow {
    backend: &'static str,
    model: String,
    batch: usize,
    weights: String,
    acts: String,
    ms_per_step: f64,
    ms_min: f64,
    ms_max: f64,
    images_per_s: f64,
    inference_images_per_s: f64,
    /// Processes stepping together (1 without `--distributed`).
    ranks: usize,
    /// Bytes all-reduced per step (0 in one process).
    allreduce_bytes_per_step: usize,
    /// The share of the step's wall time spent in the all-reduce, waiting for the slowest rank
    /// included (0 in one process).
    allreduce_share: f64,
}

impl WithBackend for TrainJob<'_> {
    type Output = Vec<TrainRow>;

    fn run<B: QatBackend>(self, device: B::Device) -> Result<Vec<TrainRow>> {
        let args = self.args;
        let input = quantnet_models::bench::default_input(args.model);
        let mut precisions = vec![("fp".to_string(), "32".to_string(), QuantPolicy::float())];
        if args.weights.levels().is_some() || args.acts.levels().is_some() {
            precisions.push((
                args.weights.to_string(),
                args.acts.to_string(),
                QuantPolicy::recipe(args.weights.levels().cloned(), args.acts.levels().cloned()),
            ));
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        precisions
            .into_iter()
            .map(|(weights, acts, policy)| {
                let ranks = self.group.as_ref().map_or(1, |g| g.size());
                let mut case =
                    TrainCase::<B>::new(args.model, input, args.batch / ranks, &policy, &device)?;
                if let Some(group) = &self.group {
                    case = case.over(group.clone());
                }
                let start = std::time::Instant::now();
                let train = Timing::of(args.warmup, args.steps, || case.step());
                let stepping = start.elapsed().as_secs_f64();
                let sent = case.all_reduce_stats();
                let infer = Timing::of(args.warmup, args.steps, || case.infer());
                // Images per step over all ranks.
                let batch = (case.batch() * ranks) as f64;
                Ok(TrainRow {
                    backend: self.backend,
                    model: args.model.to_string(),
                    batch: args.batch,
                    weights,
                    acts,
                    ms_per_step: ms(train.median),
                    ms_min: ms(train.min),
                    ms_max: ms(train.max),
                    images_per_s: batch / train.median.as_secs_f64(),
                    inference_images_per_s: case.batch() as f64 / infer.median.as_secs_f64(),
                    ranks,
                    allreduce_bytes_per_step: sent.bytes_per_step,
                    allreduce_share: sent.seconds / stepping.max(f64::MIN_POSITIVE),
                })
            })
            .collect()
    }
}

fn train(args: &BenchTrainArgs) -> Result<()> {
    super::as_ranks(args.distributed, |group| train_as(args, group))
}

fn train_as(args: &BenchTrainArgs, group: Option<Arc<dyn Collective>>) -> Result<()> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let ranks = group.as_ref().map_or(1, |g| g.size());
    if !args.batch.is_multiple_of(ranks) {
        bail!(
            "--batch {} does not split evenly over {ranks} processes",
            args.batch
        );
    }
    let lead = group.as_ref().is_none_or(|g| g.rank() == 0);
    if !args.json && lead {
        eprintln!(
            "{} on synthetic input of its shape; forward, cross-entropy, backward and Adam, median of \
             {} steps after {} warm-up; inference: the hard-quantized forward",
            args.model, args.steps, args.warmup
        );
        println!(
            "| backend | model | batch | weights | acts | ms/step (median) | min | max | images/s | inference images/s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    for &backend in &args.backend {
        let job = TrainJob {
            args,
            backend: backend.name(),
            group: group.clone(),
        };
        for row in dispatch(backend, job)? {
            if !lead {
                continue;
            }
            if args.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                println!(
                    "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
                    row.backend,
                    row.model,
                    row.batch,
                    row.weights,
                    row.acts,
                    row.ms_per_step,
                    row.ms_min,
                    row.ms_max,
                    row.images_per_s,
                    row.inference_images_per_s
                );
                if row.ranks > 1 {
                    println!(
                        "|   | {} ranks: {} images per rank per step; {} bytes all-reduced per \
                         step, {:.1} % of the step in the all-reduce (waiting included) |",
                        row.ranks,
                        row.batch / row.ranks,
                        row.allreduce_bytes_per_step,
                        100.0 * row.allreduce_share
                    );
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    match &args.command {
        Some(BenchCommand::Train(train_args)) => return train(train_args),
        Some(BenchCommand::Infer(infer_args)) => return super::infer::bench(infer_args),
        None => {}
    }
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
