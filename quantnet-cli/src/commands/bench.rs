//! `quantnet bench`: the quantizer's forward+backward against a copy and the naive composition;
//! `quantnet bench train`: a model's training step and inference, per backend and precision.

use anyhow::{Result, bail};
use quantnet_burn::bench::{Case, Path, gb_per_s, level_sets};
use quantnet_models::QuantPolicy;
use quantnet_models::bench::{Timing, TrainCase};

use quantnet_burn::QatBackend;

use crate::backend::{WithBackend, dispatch};
use crate::cli::{BenchArgs, BenchCommand, BenchTrainArgs};

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
                let mut case =
                    TrainCase::<B>::new(args.model, input, args.batch, &policy, &device)?;
                let train = Timing::of(args.warmup, args.steps, || case.step());
                let infer = Timing::of(args.warmup, args.steps, || case.infer());
                let batch = case.batch() as f64;
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
                    inference_images_per_s: batch / infer.median.as_secs_f64(),
                })
            })
            .collect()
    }
}

fn train(args: &BenchTrainArgs) -> Result<()> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    if !args.json {
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
        };
        for row in dispatch(backend, job)? {
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
