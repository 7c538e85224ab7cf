//! The integer engine from the command line: `quantnet eval --engine int|f32` (accuracy),
//! `quantnet infer` (classes of image files), `quantnet bench infer` (timings side by side with
//! Burn's hard forward).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::tensor::{Tensor, TensorData};
use quantnet_burn::QatBackend;
use quantnet_infer::InputShape;
use quantnet_infer::{Engine, Isa, Mode};
use quantnet_models::data::{Dataset, Images, Split};
use quantnet_models::{QuantPolicy, export};

use crate::backend::{BackendName, WithBackend, dispatch};
use crate::cli::{BenchInferArgs, EngineName, InferArgs};

fn mode(engine: EngineName) -> Mode {
    if engine == EngineName::F32 {
        Mode::F32
    } else {
        Mode::Int
    }
}

/// The engine for `file` on the path `QUANTNET_ISA` names (the best one when unset).
fn engine(file: &Path, mode: Mode) -> Result<Engine> {
    let isa = Isa::from_env()?;
    Engine::load(file, isa, mode).with_context(|| format!("loading {}", file.display()))
}

/// The test accuracy (%) of a `.qnet` on the integer engine (or its f32 mode), the predicted
/// class of every test image, the seconds it took, and the engine.
pub(crate) fn accuracy(
    file: &Path,
    engine_name: EngineName,
    dataset: Option<Dataset>,
    data_dir: Option<&Path>,
    threads: Option<usize>,
) -> Result<(f64, Vec<usize>, f64, Engine, Dataset)> {
    let engine = engine(file, mode(engine_name))?;
    let dataset = dataset_of(&engine, dataset, file)?;
    let dir = super::data::locate(dataset, data_dir)?;
    let (test, _) = Images::load(dataset, &dir, Split::Test, 0)?;
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let started = Instant::now();
    let mut hits = 0usize;
    let mut all = Vec::with_capacity(test.len());
    let batch = 500;
    for start in (0..test.len()).step_by(batch) {
        let end = (start + batch).min(test.len());
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in start..end {
            let item = test.read(i, 0)?;
            pixels.extend(item.pixels);
            labels.push(item.label);
        }
        let predicted = engine.predict(&pixels, end - start, threads)?;
        hits += predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| **p as i64 == **l)
            .count();
        all.extend(predicted);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        100.0 * hits as f64 / test.len().max(1) as f64,
        all,
        seconds,
        engine,
        dataset,
    ))
}

/// The data set a file's model is evaluated on: `given`, else the one the file records; its
/// input must be the model's.
fn dataset_of(engine: &Engine, given: Option<Dataset>, file: &Path) -> Result<Dataset> {
    let header = engine.header();
    let dataset = match (given, &header.dataset) {
        (Some(d), _) => d,
        (None, Some(name)) => name.parse().map_err(anyhow::Error::msg)?,
        (None, None) => bail!(
            "{} does not say its data set; pass --dataset",
            file.display()
        ),
    };
    let i = dataset.input();
    let m = header.input;
    if (i.channels, i.height, i.width) != (m.channels, m.height, m.width) {
        bail!(
            "{} is a model for {}×{}×{} images, not for {dataset}",
            file.display(),
            m.channels,
            m.height,
            m.width
        );
    }
    Ok(dataset)
}

/// `quantnet infer`: each image's predicted class.
pub(crate) fn classify(args: InferArgs) -> Result<()> {
    let mode = if args.f32 { Mode::F32 } else { Mode::Int };
    let engine = engine(&args.model_file, mode)?;
    let dataset = dataset_of(&engine, args.dataset, &args.model_file)?;
    let input = engine.header().input;
    let (means, stds) = dataset.normalisation();
    let mut pixels = Vec::new();
    for path in &args.images {
        pixels.extend(read_image(path, input, &means, &stds)?);
    }
    let n = args.images.len();
    let scores = engine.forward(&pixels, n)?;
    for (path, s) in args.images.iter().zip(scores.chunks_exact(input.classes)) {
        let (class, score) =
            s.iter().enumerate().fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            );
        println!("{}: class {class} (score {score:.3})", path.display());
    }
    Ok(())
}

/// An image file as the model's normalised input (NCHW planes): the shorter side resized to
/// the input's, the centre cropped; RGB averaged to grey (ITU-R 601 weights) for a one-channel
/// model.
fn read_image(path: &Path, input: InputShape, means: &[f32], stds: &[f32]) -> Result<Vec<f32>> {
    if input.height != input.width {
        bail!("the engine's image reader takes square inputs");
    }
    let size = input.height as u32;
    let rgb = quantnet_models::data::imagefolder::load_image(path, size, size)?;
    let plane = (size * size) as usize;
    let pick = |v: &[f32], c: usize| v.get(c).or(v.last()).copied().unwrap_or(0.0);
    let norm = |p: u8, c: usize| {
        (f32::from(p) / 255.0 - pick(means, c)) / pick(stds, c).max(f32::MIN_POSITIVE)
    };
    Ok(match input.channels {
        1 => (0..plane)
            .map(|i| {
                let [r, g, b] = [rgb[i], rgb[plane + i], rgb[2 * plane + i]].map(u32::from);
                norm(((299 * r + 587 * g + 114 * b + 500) / 1000) as u8, 0)
            })
            .collect(),
        3 => rgb
            .iter()
            .enumerate()
            .map(|(j, &p)| norm(p, j / plane))
            .collect(),
        c => bail!("the engine's image reader takes 1 or 3 channels, not {c}"),
    })
}

/// One measured cell of `quantnet bench infer`.
#[derive(serde::Serialize)]
struct InferRow {
    model: String,
    engine: &'static str,
    isa: String,
    batch: usize,
    threads: usize,
    ms_per_batch: f64,
    ms_min: f64,
    ms_max: f64,
    images_per_s: f64,
}

/// The timing job: Burn needs a backend type, so the whole comparison runs under `dispatch`.
struct BenchJob<'a> {
    args: &'a BenchInferArgs,
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

impl WithBackend for BenchJob<'_> {
    type Output = Vec<InferRow>;

    fn run<B: QatBackend>(self, device: B::Device) -> Result<Vec<InferRow>> {
        let args = self.args;
        // The file: given, or a fresh quantized model of the architecture exported to a temporary one.
        let (file, name, _tmp) = match (&args.model_file, args.model) {
            (Some(f), _) => (f.clone(), f.display().to_string(), None),
            (None, Some(arch)) => {
                let input = quantnet_models::bench::default_input(arch);
                let policy = QuantPolicy::recipe(
                    args.weights.levels().cloned(),
                    args.acts.levels().cloned(),
                );
                let exported = quantnet_models::bench::quantized_export::<B::InnerBackend>(
                    arch, input, &policy, &device,
                )?;
                let dir =
                    std::env::temp_dir().join(format!("quantnet-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let f = dir.join(format!("{arch}.qnet"));
                std::fs::write(&f, &exported.bytes)?;
                let tmp = TempDir(dir);
                (
                    f,
                    format!("{arch} W{} A{}", args.weights, args.acts),
                    Some(tmp),
                )
            }
            (None, None) => bail!("--model-file FILE or --model ARCH"),
        };
        let isa = Isa::from_env()?;
        let engines: Vec<(EngineName, Option<Engine>)> = args
            .engine
            .iter()
            .map(|&e| {
                Ok((
                    e,
                    match e {
                        EngineName::Burn => None,
                        other => Some(Engine::load(&file, isa, mode(other))?),
                    },
                ))
            })
            .collect::<Result<_>>()?;
        let (manifest, burn_model) = export::load::<B::InnerBackend>(&file, &device)?;
        let input = manifest.header.input;
        let per = input.channels * input.height * input.width;
        let mut rows = Vec::new();
        if args.layers {
            let n = args.batch.iter().copied().max().unwrap_or(1);
            if let Some((_, Some(e))) = engines.iter().find(|(n, _)| *n == EngineName::Int) {
                print_layers(e, n, args.runs)?;
            }
        }
        for &batch in &args.batch {
            // Deterministic pseudo-images in [−2, 2].
            let pixels: Vec<f32> = (0..batch * per)
                .map(|i| {
                    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32
                        / (1u64 << 24) as f32
                        * 4.0
                        - 2.0
                })
                .collect();
            let tensor = Tensor::<B::InnerBackend, 4>::from_data(
                TensorData::new(
                    pixels.clone(),
                    [batch, input.channels, input.height, input.width],
                ),
                &device,
            );
            for &threads in &args.threads {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .context("a thread pool")?;
                let mut times: Vec<Vec<Duration>> = vec![Vec::new(); engines.len()];
                for run in 0..args.warmup + args.runs {
                    for (k, (_, e)) in engines.iter().enumerate() {
                        let started = Instant::now();
                        match e {
                            Some(e) => drop(e.forward_threads(&pixels, batch, threads)?),
                            None => pool.install(|| {
                                drop(burn_model.forward(tensor.clone()).into_data());
                            }),
                        }
                        if run >= args.warmup {
                            times[k].push(started.elapsed());
                        }
                    }
                }
                for ((e, engine), t) in engines.iter().zip(times) {
                    let (med, min, max) = median(t);
                    let ms = |d: Duration| d.as_secs_f64() * 1e3;
                    rows.push(InferRow {
                        model: name.clone(),
                        engine: e.name(),
                        isa: engine.as_ref().map_or_else(
                            || format!("burn-{}", BackendName::Cpu.name()),
                            |e| e.isa().name().to_string(),
                        ),
                        batch,
                        threads,
                        ms_per_batch: ms(med),
                        ms_min: ms(min),
                        ms_max: ms(max),
                        images_per_s: batch as f64 / med.as_secs_f64(),
                    });
                }
            }
        }
        Ok(rows)
    }
}

/// Removes a temporary folder when dropped.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Per layer of the integer engine: multiply-adds and G multiply-adds/s (one thread).
fn print_layers(engine: &Engine, batch: usize, runs: usize) -> Result<()> {
    let profile = engine.profile(batch, runs.max(3))?;
    eprintln!("| layer | integer | path | MMAC/image | ms (batch {batch}) | G MAC/s |");
    eprintln!("|---|---|---|---|---|---|");
    for (l, t) in profile {
        let macs = (l.macs * batch) as f64;
        eprintln!(
            "| {} | {} | {} | {:.2} | {:.3} | {:.1} |",
            l.name,
            if l.int { "yes" } else { "no" },
            l.isa,
            l.macs as f64 / 1e6,
            t.as_secs_f64() * 1e3,
            macs / t.as_secs_f64() / 1e9
        );
    }
    Ok(())
}

/// `quantnet bench infer`.
pub(crate) fn bench(args: &BenchInferArgs) -> Result<()> {
    if args.batch.contains(&0) || args.threads.contains(&0) || args.runs == 0 {
        bail!("--batch, --threads and --runs must be at least 1");
    }
    if !args.json {
        eprintln!(
            "median of {} runs after {} warm-up, engines interleaved; int/f32: quantnet-infer, \
             burn: Burn's hard forward on cpu",
            args.runs, args.warmup
        );
        println!(
            "| model | engine | isa | batch | threads | ms/batch (median) | min | max | images/s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    for row in dispatch(BackendName::Cpu, BenchJob { args })? {
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0} |",
                row.model,
                row.engine,
                row.isa,
                row.batch,
                row.threads,
                row.ms_per_batch,
                row.ms_min,
                row.ms_max,
                row.images_per_s
            );
        }
    }
    Ok(())
}
