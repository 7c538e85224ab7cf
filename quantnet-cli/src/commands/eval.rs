//! `quantnet eval` and `quantnet info`: a finished run's model, evaluated or described.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use quantnet_burn::LevelSet;
use quantnet_models::Temperatures;
use quantnet_models::data::{Dataset, ImageBatcher, Images, Split};
use quantnet_models::export;

use quantnet_models::train::layer_stats;

use quantnet_burn::QatBackend;

use crate::backend::{DeviceList, WithBackend, dispatch};
use crate::cli::{EvalArgs, ExportArgs, InfoArgs};
use crate::run::load_run;
use crate::run::{Summary, write_atomic};

struct EvalJob {
    args: EvalArgs,
    /// `args`' devices, as dispatched.
    list: DeviceList,
}

/// The test images of `dataset` (an image folder read from disk as evaluation uses it), their
/// batcher and the evaluation batch size.
fn test_items(
    dataset: Dataset,
    data_dir: Option<&std::path::Path>,
) -> Result<(Images, ImageBatcher, usize)> {
    let dir = super::data::locate(dataset, data_dir)?;
    let (test, batcher) = Images::load(dataset, &dir, Split::Test, 0)?;
    let batch = test.eval_batch_size();
    Ok((test, batcher, batch))
}

impl WithBackend for EvalJob {
    type Output = Summary;

    fn run<B: QatBackend>(self, device: B::Device) -> Result<Summary> {
        self.run_on::<B>(vec![device])
    }

    fn run_on<B: QatBackend>(self, devices: Vec<B::Device>) -> Result<Summary> {
        let Self { args, list } = self;
        let backend = list.backend.name().to_string();
        let device = devices.first().context("no device")?.clone();
        if let Some(file) = &args.model_file {
            // An exported model: a .qnet file (hard weights decoded from codes) or a Burn-native
            // record (Burn quantized weights); activation quantizers hard either way.
            let native = file.extension().is_some_and(|e| e == "mpk");
            let (header, weights, model) = if native {
                let (m, model) = export::load_native::<B::InnerBackend>(file, &device)?;
                let weights = m.layers.first().map_or("fp".into(), |l| l.levels.clone());
                (m.header, weights, model)
            } else {
                let (m, model) = export::load::<B::InnerBackend>(file, &device)?;
                let weights = m.coded.first().map_or("fp".to_string(), |e| {
                    LevelSet::new(e.levels.clone()).map_or("custom".into(), |l| l.name())
                });
                (m.header, weights, model)
            };
            let export::ModelHeader {
                arch,
                input,
                dataset: file_dataset,
                acts,
            } = header;
            if arch.detector().is_some() {
                bail!(
                    "{} is a detector ({arch}): evaluate its run with `quantnet eval --from \
                     RUN_DIR`, or run it on images with `quantnet detect --model-file`",
                    file.display()
                );
            }
            let dataset = match (args.dataset, &file_dataset) {
                (Some(d), _) => d,
                (None, Some(name)) => name.parse().map_err(anyhow::Error::msg)?,
                (None, None) => bail!(
                    "{} does not say its data set; pass --dataset",
                    file.display()
                ),
            };
            if dataset.input() != input {
                bail!(
                    "{} is a model for {}×{}×{} images, not for {dataset}",
                    file.display(),
                    input.channels,
                    input.height,
                    input.width
                );
            }
            let (items, batcher, batch) = test_items(dataset, args.data_dir.as_deref())?;
            let started = Instant::now();
            let hard =
                quantnet_models::train::accuracy_on(&model, &items, batcher, batch, &devices);
            let seconds = started.elapsed().as_secs_f64();
            if let Some(path) = &args.predictions {
                let predicted = quantnet_models::train::predictions_on(
                    &model,
                    &items,
                    batcher,
                    batch,
                    &devices[0],
                );
                write_predictions(path, &predicted)?;
            }
            return Ok(Summary {
                model: arch.to_string(),
                dataset: dataset.to_string(),
                backend,
                devices: list.names(),
                weights,
                acts: acts.as_ref().map_or("32".to_string(), |l| {
                    LevelSet::new(l.clone()).map_or("custom".into(), |l| l.name())
                }),
                epochs: 0,
                pretrain_epochs: 0,
                train_images: 0,
                test_images: items.len(),
                test_accuracy_fp: None,
                test_accuracy_hard: hard,
                test_accuracy_soft: None,
                seconds_per_epoch: vec![seconds],
                temperature: crate::run::Temperatures {
                    weights: None,
                    acts: None,
                },
                layers: layer_stats(&model)?,
            });
        }
        let run = args
            .run
            .as_deref()
            .context("--from RUN_DIR or --model-file FILE")?;
        let temps = Temperatures::default();
        let (cfg, mut model) = load_run::<B::InnerBackend>(run, &temps, &device)?;
        cfg.set_final_temperatures(&temps);
        let policy = cfg.policy()?;
        let dataset = args.dataset.unwrap_or(cfg.dataset);
        if dataset.input() != cfg.dataset.input() {
            bail!(
                "{} holds a model for {}, which {dataset} does not fit",
                run.display(),
                cfg.dataset
            );
        }
        let data_dir = args.data_dir.clone().or(cfg.data_dir.clone());
        let (items, batcher, batch) = test_items(dataset, data_dir.as_deref())?;
        let (hard, soft, seconds) = quantnet_models::qat::hard_and_soft_accuracy(
            &mut model, &items, batcher, batch, &devices,
        );
        if let Some(path) = &args.predictions {
            // The hard network's (the model is back in its inference mode).
            let predicted =
                quantnet_models::train::predictions_on(&model, &items, batcher, batch, &devices[0]);
            write_predictions(path, &predicted)?;
        }
        Ok(Summary {
            model: cfg.model.to_string(),
            dataset: dataset.to_string(),
            backend,
            devices: list.names(),
            weights: cfg.weights.to_string(),
            acts: cfg.acts.to_string(),
            epochs: cfg.epochs,
            pretrain_epochs: cfg.pretrain_epochs,
            train_images: 0,
            test_images: items.len(),
            test_accuracy_fp: None,
            test_accuracy_hard: hard,
            test_accuracy_soft: Some(soft),
            seconds_per_epoch: vec![seconds],
            temperature: crate::run::Temperatures {
                weights: policy.weights.as_ref().map(|_| temps.weights.get()),
                acts: policy.acts.as_ref().map(|_| temps.acts.get()),
            },
            layers: layer_stats(&model)?,
        })
    }
}

pub(crate) fn run(args: EvalArgs) -> Result<()> {
    if args.engine != crate::cli::EngineName::Burn {
        return run_engine(&args);
    }
    let list = args.target.list();
    if let Some(run) = &args.run
        && crate::run::RunConfig::read(&run.join("config.toml"))
            .is_ok_and(|cfg| cfg.model.detector().is_some())
    {
        if args.out.is_some() || args.dataset.is_some() {
            bail!(
                "a detector run is evaluated on its own data: --out and --dataset are for classifiers"
            );
        }
        return super::detect::eval_run(run, args.data_dir.as_deref(), list);
    }
    let out = args.out.clone();
    let what = args
        .model_file
        .clone()
        .or(args.run.clone())
        .unwrap_or_default();
    let summary = dispatch(
        list.clone(),
        EvalJob {
            args,
            list: list.clone(),
        },
    )?;
    let soft = summary
        .test_accuracy_soft
        .map_or(String::new(), |s| format!("   (soft, diagnostic: {s:.2}%)"));
    println!(
        "{}: test accuracy (hard-quantized) {:.2}%{soft}   on {} {} test images, backend {}",
        what.display(),
        summary.test_accuracy_hard,
        summary.test_images,
        summary.dataset,
        list.names().join(",")
    );
    if let Some(out) = out {
        std::fs::create_dir_all(&out)?;
        summary.write(&out)?;
        println!("wrote {}/summary.json", out.display());
    }
    Ok(())
}

pub(crate) fn export_run(args: ExportArgs) -> Result<()> {
    type B = crate::backend::Host;
    let device = Default::default();
    let temps = Temperatures::default();
    let extension = args.out.extension().and_then(|e| e.to_str());
    let format = match (args.format.as_deref(), extension) {
        (Some(f @ ("qnet" | "burn" | "onnx")), _) => f,
        (Some(other), _) => bail!("--format `{other}`: expected qnet, burn or onnx"),
        (None, Some("mpk")) => "burn",
        (None, Some("onnx")) => "onnx",
        (None, _) => "qnet",
    };
    let (cfg, mut model) = load_run::<B>(args.run_dir(), &temps, &device)?;
    match format {
        "burn" => return export_native(&args, &cfg, &model),
        "onnx" => {
            let bytes = export::to_onnx(&mut model, cfg.model, cfg.input(), cfg.dataset)?;
            write_atomic(&args.out, &bytes)?;
            println!(
                "wrote {}: {} bytes, ONNX opset {} (input `image`: {}×{}×{} in [0, 1], NCHW, \
                 normalised in the graph; output `scores`)",
                args.out.display(),
                bytes.len(),
                quantnet_infer::onnx::OPSET,
                cfg.input().channels,
                cfg.input().height,
                cfg.input().width
            );
            return Ok(());
        }
        _ => {}
    }
    let exported = export::export(
        &mut model,
        cfg.model,
        cfg.input(),
        Some(cfg.dataset.to_string()),
    )?;
    write_atomic(&args.out, &exported.bytes)?;
    println!(
        "{:<14} {:>10} {:>5} {:>12} {:>12} {:>12} {:>8}",
        "layer", "values", "bits", "bytes", "float32", "minimum", "ratio"
    );
    let rows = export::size_report(&exported);
    for r in &rows {
        println!(
            "{:<14} {:>10} {:>5} {:>12} {:>12} {:>12.0} {:>8.4}",
            r.name,
            r.values,
            r.bits,
            r.bytes,
            r.float_bytes,
            r.minimum_bytes,
            r.bytes as f64 / r.float_bytes as f64
        );
    }
    let float_total: u64 = rows.iter().map(|r| r.float_bytes).sum();
    println!(
        "wrote {}: {} bytes ({} of them manifest and framing), {:.2}× smaller than the float32 \
         parameters ({} bytes)",
        args.out.display(),
        exported.bytes.len(),
        exported.bytes.len() as u64 - rows.iter().map(|r| r.bytes).sum::<u64>(),
        float_total as f64 / exported.bytes.len() as f64,
        float_total
    );
    Ok(())
}

/// `quantnet export --format burn`: a Burn record with Burn quantized weights, and its manifest.
fn export_native(
    args: &ExportArgs,
    cfg: &crate::run::RunConfig,
    model: &quantnet_models::Model<crate::backend::Host>,
) -> Result<()> {
    let manifest = export::write_native(
        model,
        cfg.model,
        cfg.input(),
        Some(cfg.dataset.to_string()),
        &args.out,
    )?;
    println!(
        "{:<14} {:>10} {:>8} {:>6}",
        "layer", "values", "levels", "burn"
    );
    for l in &manifest.layers {
        println!(
            "{:<14} {:>10} {:>8} {:>6}",
            l.name, l.values, l.levels, l.burn_type
        );
    }
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({bytes} bytes; Burn stores one byte per quantized value) and {}",
        args.out.display(),
        args.out.with_extension("json").display()
    );
    Ok(())
}

pub(crate) fn info(args: InfoArgs) -> Result<()> {
    type B = crate::backend::Host;
    let device = Default::default();
    let temps = Temperatures::default();
    let (cfg, mut model) = load_run::<B>(&args.run, &temps, &device)?;
    cfg.set_final_temperatures(&temps);
    let policy = cfg.policy()?;
    println!(
        "{} for {} ({} parameters), weights {}, activations {}{}",
        cfg.model,
        cfg.dataset,
        burn::module::Module::num_params(&model),
        cfg.weights,
        cfg.acts,
        if cfg.quantize_all {
            ", first and last layer quantized too"
        } else {
            ""
        }
    );
    if policy.weights.is_some() {
        println!(
            "weight temperature {} ({}), gradient {}",
            temps.weights.get(),
            cfg.weights_temperature,
            cfg.gradient
        );
    }
    if policy.acts.is_some() {
        println!(
            "activation temperature {} ({})",
            temps.acts.get(),
            cfg.acts_temperature
        );
    }
    let reports = layer_stats(&model)?;
    println!(
        "{:<22} {:<10} {:<8} {:>12} {:>12}  levels",
        "layer", "kind", "precision", "alpha", "beta"
    );
    let slots = model.slots();
    for (name, layer) in &slots.weights {
        let kind = layer.kind();
        match reports.iter().find(|r| &r.name == name) {
            Some(r) => println!(
                "{name:<22} {kind:<10} {:<8} {:>12.6} {:>12.6}  {}{}",
                r.levels,
                r.alpha,
                r.beta,
                r.occupancy
                    .as_ref()
                    .map(|o| o
                        .iter()
                        .map(|v| format!("{:.3}", v))
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default(),
                r.channels
                    .map(|c| format!("  (alpha, beta: means of {c} per-channel scales)"))
                    .unwrap_or_default()
            ),
            None => println!("{name:<22} {kind:<10} {:<8}", "fp32"),
        }
    }
    for (name, _) in &slots.acts {
        match reports.iter().find(|r| &r.name == name) {
            Some(r) => println!(
                "{name:<22} {:<10} {:<8} {:>12.6} {:>12.6}",
                "activation", r.levels, r.alpha, r.beta
            ),
            None => println!("{name:<22} {:<10} {:<8}", "activation", "fp32"),
        }
    }
    Ok(())
}

/// `quantnet eval --model-file F.qnet --engine int|f32`: the accuracy on quantnet-infer.
fn run_engine(args: &EvalArgs) -> Result<()> {
    let file = args
        .model_file
        .as_deref()
        .context("--engine int|f32 runs a --model-file .qnet")?;
    let (accuracy, predicted, seconds, engine, dataset) = super::infer::accuracy(
        file,
        args.engine,
        args.dataset,
        args.data_dir.as_deref(),
        args.threads,
    )?;
    let images = predicted.len();
    if let Some(path) = &args.predictions {
        write_predictions(path, &predicted)?;
    }
    let int_layers = engine.layers().iter().filter(|l| l.int).count();
    println!(
        "{}: test accuracy (hard-quantized) {accuracy:.2}%   on {images} {dataset} test images, \
         engine {} ({} path, {int_layers} layers on integers), {seconds:.1} s",
        file.display(),
        args.engine.name(),
        engine.isa().name(),
    );
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        let summary = serde_json::json!({
            "model": engine.header().arch,
            "dataset": dataset.to_string(),
            "engine": args.engine.name(),
            "isa": engine.isa().name(),
            "test_images": images,
            "test_accuracy_hard": accuracy,
            "seconds": seconds,
        });
        write_atomic(
            &out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// One predicted class per line, in test-set order.
fn write_predictions(path: &std::path::Path, predicted: &[usize]) -> Result<()> {
    let text: String = predicted.iter().map(|c| format!("{c}\n")).collect();
    write_atomic(path, text.as_bytes())?;
    println!(
        "wrote {} predictions to {}",
        predicted.len(),
        path.display()
    );
    Ok(())
}
