//! `quantnet plot RUN_DIR`: a run's pictures.
//!
//! * `training.png`: per epoch, the hard-quantized test accuracy (and the training accuracy),
//!   the soft − hard gap and the losses, from `metrics.csv`; the temperatures at every training
//!   step (burn-train's logs, `train/train/epoch-N/*_temperature.log`) with each epoch's mean;
//! * `weights.png`: for each quantized weight layer, the histogram of its latent weights with the
//!   levels `α·y_k` and the thresholds `b_i/β` drawn on it (the paper's Fig. 3 analogue), at
//!   initialisation (`init.mpk`: the quantized network before training) and at the end
//!   (`model.mpk`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use quantnet_models::quantize::Temperatures;

use super::chart::{self, COLORS, Histogram, LineChart, Series};
use crate::cli::PlotArgs;
use crate::run::load_run_file;

pub(crate) fn run(args: PlotArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.run.clone());
    if !out.is_dir() {
        bail!("--out {}: the folder does not exist", out.display());
    }
    let metrics = args.run.join("metrics.csv");
    if !metrics.is_file() {
        bail!(
            "{} has no metrics.csv (not a finished quantnet run directory?)",
            args.run.display()
        );
    }
    let training = out.join("training.png");
    draw_training(&args.run, &metrics, &training)?;
    println!("wrote {}", training.display());
    let weights = out.join("weights.png");
    if draw_weights(&args.run, &weights)? {
        println!("wrote {}", weights.display());
    } else {
        println!("no quantized weight layers: no weights.png");
    }
    Ok(())
}

/// `metrics.csv` as named numeric columns.
fn read_columns(path: &Path) -> Result<Vec<(String, Vec<f64>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines
        .next()
        .with_context(|| format!("{} is empty", path.display()))?;
    let mut columns: Vec<(String, Vec<f64>)> = header
        .split(',')
        .map(|h| (h.to_string(), Vec::new()))
        .collect();
    for (i, line) in lines.enumerate() {
        for (column, field) in columns.iter_mut().zip(line.split(',')) {
            // Occupancy columns hold several numbers; they are not drawn.
            column.1.push(field.trim().parse().unwrap_or(f64::NAN));
        }
        if line.split(',').count() != columns.len() {
            bail!("{} line {}: wrong number of fields", path.display(), i + 2);
        }
    }
    Ok(columns)
}

/// The temperatures every training step of the main phase ran at, as burn-train logged them
/// (`train/train/epoch-N/NAME.log`, lines of `value,count`), at x = `e − 1 + (i + 1)/steps`
/// for step `i` of epoch `e`: its last step lands on `e`. Empty when the logs are gone.
fn step_temperatures(run: &Path, name: &str, epochs: &[f64]) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    for &e in epochs {
        let log = run
            .join("train/train")
            .join(format!("epoch-{e}"))
            .join(format!("{name}.log"));
        let Ok(text) = std::fs::read_to_string(log) else {
            continue;
        };
        let values: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split(',').next()?.trim().parse().ok())
            .collect();
        let steps = values.len() as f64;
        points.extend(
            (values.iter().enumerate()).map(|(i, &t)| (e - 1.0 + (i + 1) as f64 / steps, t)),
        );
    }
    points
}

fn draw_training(run: &Path, metrics: &Path, path: &Path) -> Result<()> {
    let columns = read_columns(metrics)?;
    let get = |name: &str| columns.iter().find(|c| c.0 == name).map(|c| &c.1);
    let epochs = get("epoch")
        .cloned()
        .with_context(|| format!("{} has no epoch column", metrics.display()))?;
    let series = |names: &[(&str, &str)]| -> Vec<Series> {
        names
            .iter()
            .enumerate()
            .filter_map(|(i, (column, label))| {
                let values = get(column)?;
                let points: Vec<(f64, f64)> = epochs
                    .iter()
                    .zip(values)
                    .filter(|(_, v)| v.is_finite())
                    .map(|(&e, &v)| (e, v))
                    .collect();
                (!points.is_empty()).then(|| Series {
                    label: label.to_string(),
                    points,
                    color: COLORS[i],
                    dashed: false,
                })
            })
            .collect()
    };
    let panels = [
        (
            "accuracy",
            "accuracy (%)",
            series(&[
                ("test_accuracy_hard", "test, hard-quantized"),
                ("train_accuracy", "training (soft)"),
            ]),
        ),
        (
            "soft − hard test accuracy",
            "points",
            series(&[("soft_hard_gap", "soft − hard")]),
        ),
        (
            "loss",
            "cross-entropy",
            series(&[("train_loss", "training"), ("test_loss", "test (hard)")]),
        ),
    ];
    // Temperatures: every step's from the logs (the epoch's last step's where they are gone),
    // with each epoch's mean at its middle, dashed (runs written before the last-step columns
    // have the mean alone, as `weights_temperature`).
    let mut temperatures = Vec::new();
    for (i, (kind, log, prefix)) in [
        ("weights", "Weight_temperature", "weights_temperature"),
        ("activations", "Act_temperature", "acts_temperature"),
    ]
    .into_iter()
    .enumerate()
    {
        let steps = step_temperatures(run, log, &epochs);
        let at = |values: &Vec<f64>, shift: f64| -> Vec<(f64, f64)> {
            (epochs.iter().zip(values))
                .filter(|(_, v)| v.is_finite())
                .map(|(&e, &v)| (e - shift, v))
                .collect()
        };
        let (label, points) = if steps.is_empty() {
            let last = get(&format!("{prefix}_last")).map(|v| at(v, 0.0));
            let last = last.unwrap_or_default();
            (format!("{kind}, epoch's last step"), last)
        } else {
            (format!("{kind}, every step"), steps)
        };
        if !points.is_empty() {
            temperatures.push(Series {
                label,
                points,
                color: COLORS[i],
                dashed: false,
            });
        }
        if let Some(mean) = get(&format!("{prefix}_mean")).or_else(|| get(prefix)) {
            temperatures.push(Series {
                label: format!("{kind}, epoch mean"),
                points: at(mean, 0.5),
                color: COLORS[i],
                dashed: true,
            });
        }
    }
    let panels =
        panels
            .into_iter()
            .chain([("temperature at every training step", "T", temperatures)]);
    let panels: Vec<LineChart> = panels
        .into_iter()
        .filter(|(_, _, s)| !s.is_empty())
        .map(|(title, y, series)| LineChart {
            title: title.into(),
            x_desc: "epoch".into(),
            y_desc: y.into(),
            series,
            x_names: None,
        })
        .collect();
    chart::save(path, panels.len(), 2, chart::PANEL, |i, area| {
        chart::lines(area, &panels[i])
    })
}

/// One histogram per quantized weight layer of `file`, titled with `when`.
fn histograms(run: &Path, file: &str, when: &str) -> Result<Vec<Histogram>> {
    type B = crate::backend::Host;
    let temps = Temperatures::default();
    let (_, mut model) = load_run_file::<B>(run, file, &temps, &Default::default())?;
    let mut out = Vec::new();
    for (name, mut layer) in model.slots().weights {
        let weight = layer.weight();
        // Per-channel layers are drawn in the thresholds' domain (read before `q` borrows).
        let per_channel = (layer.quantizer().as_ref()).is_some_and(|q| q.channel_axis().is_some());
        let normalised = per_channel.then(|| layer.normalised_weight()).flatten();
        let Some(q) = layer.quantizer().as_ref() else {
            continue;
        };
        let p = q.params_for(&weight);
        let scalar = |t: burn::tensor::Tensor<B, 1>| -> Result<Vec<f32>> {
            t.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading {name} back: {e:?}"))
        };
        let (alpha, beta) = (scalar(p.alpha)?, scalar(p.beta)?);
        let thresholds = scalar(p.thresholds)?;
        let levels = q.level_set().levels();
        if per_channel {
            // Per-channel scales: every channel in the thresholds' domain β_c·w, where the
            // thresholds are shared; a level y lands at y·α_c·β_c there (the mean is drawn).
            let gain = alpha.iter().zip(&beta).map(|(a, b)| a * b).sum::<f32>()
                / alpha.len().max(1) as f32;
            out.push(Histogram {
                title: format!("{name} ({}, per-channel scales), {when}", q.level_set()),
                values: normalised.map(scalar).transpose()?.unwrap_or_default(),
                levels: levels.iter().map(|y| gain * y).collect(),
                thresholds,
                normalised: true,
            });
            continue;
        }
        out.push(Histogram {
            title: format!("{name} ({}), {when}", q.level_set()),
            values: scalar(weight)?,
            levels: levels.iter().map(|y| alpha[0] * y).collect(),
            thresholds: thresholds.iter().map(|b| b / beta[0]).collect(),
            normalised: false,
        });
    }
    Ok(out)
}

/// Draws `weights.png`; `false` when the run quantized no weights.
fn draw_weights(run: &Path, path: &Path) -> Result<bool> {
    let end = histograms(run, "model.mpk", "end")?;
    if end.is_empty() {
        return Ok(false);
    }
    let start = if run.join("init.mpk").is_file() {
        histograms(run, "init.mpk", "initialisation")?
    } else {
        Vec::new()
    };
    // Rows of (initialisation, end) when both exist.
    let mut panels = Vec::new();
    let columns = if start.len() == end.len() { 2 } else { 1 };
    let mut start = start.into_iter();
    for e in end {
        if columns == 2
            && let Some(s) = start.next()
        {
            panels.push(s);
        }
        panels.push(e);
    }
    chart::save(path, panels.len(), columns, chart::PANEL, |i, area| {
        chart::histogram(area, &panels[i])
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::step_temperatures;

    /// Step `i` of epoch `e` with `n` steps lands on `e − 1 + (i + 1)/n`; epochs may differ in
    /// length; a missing epoch's log is skipped.
    #[test]
    fn each_epochs_last_step_lands_on_its_number() {
        let run = std::env::temp_dir().join(format!("quantnet-plot-{}", std::process::id()));
        for (e, log) in [(1, "5,1\n6,1\n"), (2, "7,1\n8,1\n9,1\n10.5,1\n")] {
            let dir = run.join(format!("train/train/epoch-{e}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("Weight_temperature.log"), log).unwrap();
        }
        let points = step_temperatures(&run, "Weight_temperature", &[1.0, 2.0, 3.0]);
        std::fs::remove_dir_all(&run).unwrap();
        let want = [
            (0.5, 5.0),
            (1.0, 6.0),
            (1.25, 7.0),
            (1.5, 8.0),
            (1.75, 9.0),
            (2.0, 10.5),
        ];
        assert_eq!(points, want);
    }
}
