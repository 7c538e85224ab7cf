//! `quantnet eval` and `quantnet info`: a finished run's model, evaluated or described.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use quantnet_burn::{QuantBackend, QuantMode};
use quantnet_models::data::Split;
use quantnet_models::quantize;
use quantnet_models::{Temperatures, models::WeightLayer};

use super::train::{layer_reports, load_run};
use crate::backend::{BackendName, WithBackend, dispatch};
use crate::cli::{EvalArgs, InfoArgs};
use crate::run::{RunConfig, Summary};

struct EvalJob {
    args: EvalArgs,
}

/// The temperatures of a run's last epoch.
fn final_temperatures(cfg: &RunConfig, temps: &Temperatures) -> Result<()> {
    let (w, a) = cfg.schedules()?;
    temps.weights.set(w.at(cfg.epochs.saturating_sub(1)));
    temps.acts.set(a.at(cfg.epochs.saturating_sub(1)));
    Ok(())
}

impl WithBackend for EvalJob {
    type Output = Summary;

    fn run<B>(self, device: B::Device) -> Result<Summary>
    where
        B: AutodiffBackend + QuantBackend,
        B::InnerBackend: QuantBackend,
    {
        let temps = Temperatures::default();
        let (cfg, mut model) = load_run::<B::InnerBackend>(&self.args.run, &temps, &device)?;
        final_temperatures(&cfg, &temps)?;
        let policy = cfg.policy()?;
        let data_dir = self.args.data_dir.clone().or(cfg.data_dir.clone());
        let dir = cfg.dataset.locate(data_dir.as_deref())?;
        let test = cfg.dataset.load(&dir, Split::Test)?;
        let (means, stds) = cfg.dataset.normalisation();
        let items = test.items_normalised(usize::MAX, &means, &stds);
        let started = Instant::now();
        let hard = quantnet_models::train::accuracy(&model, &items, test.batcher(), 500, &device);
        let seconds = started.elapsed().as_secs_f64();
        quantize::set_mode(&mut model, QuantMode::Soft);
        let soft = quantnet_models::train::accuracy(&model, &items, test.batcher(), 500, &device);
        quantize::set_mode(&mut model, QuantMode::Auto);
        Ok(Summary {
            model: cfg.model.to_string(),
            dataset: cfg.dataset.to_string(),
            backend: self.args.backend.name().into(),
            weights: cfg.weights.clone(),
            acts: cfg.acts.clone(),
            epochs: cfg.epochs,
            pretrain_epochs: cfg.pretrain_epochs,
            train_images: 0,
            test_images: items.len(),
            test_accuracy_hard: hard,
            test_accuracy_soft: soft,
            seconds_per_epoch: vec![seconds],
            temperature: crate::run::Temperatures {
                weights: policy.weights.as_ref().map(|_| temps.weights.get()),
                acts: policy.acts.as_ref().map(|_| temps.acts.get()),
            },
            layers: layer_reports(&mut model)?,
        })
    }
}

pub(crate) fn run(args: EvalArgs) -> Result<()> {
    let backend: BackendName = args.backend;
    let out = args.out.clone();
    let run_dir = args.run.clone();
    let summary = dispatch(backend, EvalJob { args })?;
    println!(
        "{}: test accuracy (hard-quantized) {:.2}%   (soft, diagnostic: {:.2}%)   on {} test \
         images, backend {}",
        run_dir.display(),
        summary.test_accuracy_hard,
        summary.test_accuracy_soft,
        summary.test_images,
        backend.name()
    );
    if let Some(out) = out {
        std::fs::create_dir_all(&out)?;
        summary.write(&out)?;
        println!("wrote {}/summary.json", out.display());
    }
    Ok(())
}

pub(crate) fn info(args: InfoArgs) -> Result<()> {
    type B = burn::backend::Flex;
    let device = Default::default();
    let temps = Temperatures::default();
    let (cfg, mut model) = load_run::<B>(&args.run, &temps, &device)?;
    final_temperatures(&cfg, &temps)?;
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
    let reports = layer_reports(&mut model)?;
    println!(
        "{:<22} {:<10} {:<8} {:>12} {:>12}  levels",
        "layer", "kind", "precision", "alpha", "beta"
    );
    let slots = model.slots();
    for (name, layer) in &slots.weights {
        let kind = match layer {
            WeightLayer::Conv(_) => "conv",
            WeightLayer::Linear(_) => "linear",
        };
        match reports.iter().find(|r| &r.name == name) {
            Some(r) => println!(
                "{name:<22} {kind:<10} {:<8} {:>12.6} {:>12.6}  {}",
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
