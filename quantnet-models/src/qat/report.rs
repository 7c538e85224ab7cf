//! What a recipe run reports: per-epoch metrics (read back from burn-train's logs), the hard and
//! soft test accuracy, temperatures, timings and every quantizer's state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::train::LayerStats;

/// One epoch of the main phase, as burn-train logged it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: Option<f64>,
    /// Training accuracy (%, soft network on autodiff backends).
    pub train_accuracy: Option<f64>,
    /// Test loss (hard-quantized network).
    pub test_loss: Option<f64>,
    /// Test accuracy (%) of the hard-quantized network.
    pub test_accuracy_hard: Option<f64>,
    /// Soft minus hard test accuracy (points).
    pub soft_hard_gap: Option<f64>,
    /// The mean weight temperature the epoch's steps ran at.
    pub weights_temperature: Option<f64>,
    /// The mean activation temperature the epoch's steps ran at.
    pub acts_temperature: Option<f64>,
    /// The weight temperature the epoch's last step ran at.
    #[serde(default)]
    pub weights_temperature_last: Option<f64>,
    /// The activation temperature the epoch's last step ran at.
    #[serde(default)]
    pub acts_temperature_last: Option<f64>,
    /// Wall time (training and validation) when this process ran the epoch.
    pub seconds: Option<f64>,
    /// Per quantizer (in [`QatReport::layers`] order): mean α, mean β, and the last logged
    /// weight-level occupancy (space-separated fractions; weight quantizers only).
    pub layers: Vec<(Option<f64>, Option<f64>, Option<String>)>,
}

/// What [`crate::qat::Qat::run`] returns besides the trained model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QatReport {
    /// Test accuracy (%) after the full-precision pretraining, when the run pretrained.
    pub full_precision_accuracy: Option<f64>,
    /// Test accuracy (%) of the hard-quantized network: the model's accuracy.
    pub test_accuracy_hard: f64,
    /// Test accuracy (%) with the soft quantizers at the final temperatures (a diagnostic).
    pub test_accuracy_soft: f64,
    /// Full-precision epochs run before quantizing (0 when the model came trained).
    pub pretrain_epochs: usize,
    /// Training and test images.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Weight quantizers made and activation quantizers calibrated.
    pub quantized: (usize, usize),
    /// The main phase, epoch by epoch.
    pub epochs: Vec<EpochReport>,
    /// Wall time of each main-phase epoch this process ran.
    pub seconds_per_epoch: Vec<f64>,
    /// The temperatures the last step ran at (weights, activations; `None` where nothing is
    /// quantized).
    pub temperatures: (Option<f32>, Option<f32>),
    /// Every quantizer's final state.
    pub layers: Vec<LayerStats>,
}

impl QatReport {
    /// The per-epoch table as CSV (`metrics.csv`): loss, accuracy, soft–hard gap, the
    /// temperatures (the mean over the epoch's steps and the last step's, for weights and
    /// activations) and seconds, then α, β (and occupancy) of every quantizer.
    pub fn metrics_csv(&self) -> String {
        let mut csv = String::from(
            "epoch,train_loss,train_accuracy,test_loss,test_accuracy_hard,soft_hard_gap,\
             weights_temperature_mean,weights_temperature_last,acts_temperature_mean,\
             acts_temperature_last,seconds",
        );
        for layer in &self.layers {
            csv.push_str(&format!(",alpha {0},beta {0}", layer.name));
            if layer.occupancy.is_some() {
                csv.push_str(&format!(",occupancy {}", layer.name));
            }
        }
        csv.push('\n');
        let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
        for e in &self.epochs {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}",
                e.epoch,
                cell(e.train_loss),
                cell(e.train_accuracy),
                cell(e.test_loss),
                cell(e.test_accuracy_hard),
                cell(e.soft_hard_gap),
                cell(e.weights_temperature),
                cell(e.weights_temperature_last),
                cell(e.acts_temperature),
                cell(e.acts_temperature_last),
                cell(e.seconds),
            ));
            for (layer, (alpha, beta, occupancy)) in self.layers.iter().zip(&e.layers) {
                csv.push_str(&format!(",{},{}", cell(*alpha), cell(*beta)));
                if layer.occupancy.is_some() {
                    csv.push(',');
                    csv.push_str(occupancy.as_deref().unwrap_or_default());
                }
            }
            csv.push('\n');
        }
        csv
    }
}

/// Reads the main phase's epochs from burn-train's logs in `phase_dir`
/// (`{train,valid}/epoch-N/NAME.log`). `seconds` holds the epochs this process ran: the last
/// `seconds.len()` (a resumed run timed only those after its checkpoint).
pub(crate) fn read_epochs(
    phase_dir: &Path,
    epochs: usize,
    seconds: &[f64],
    temperatures: (bool, bool),
    layers: &[LayerStats],
) -> Vec<EpochReport> {
    let untimed = epochs.saturating_sub(seconds.len());
    let surplus = seconds.len().saturating_sub(epochs);
    (1..=epochs)
        .map(|epoch| {
            let mean = |split: &str, name: &str| epoch_mean(phase_dir, split, epoch, name);
            let last = |name: &str| {
                epoch_last(phase_dir, "train", epoch, name)
                    .and_then(|line| line.split(',').next()?.trim().parse().ok())
            };
            EpochReport {
                epoch,
                train_loss: mean("train", "Loss"),
                train_accuracy: mean("train", "Accuracy"),
                test_loss: mean("valid", "Loss"),
                test_accuracy_hard: mean("valid", "Accuracy"),
                soft_hard_gap: mean("valid", "Soft-hard gap"),
                // The temperatures burn-train logged every step (their epoch mean).
                weights_temperature: temperatures
                    .0
                    .then(|| mean("train", "Weight temperature"))
                    .flatten(),
                acts_temperature: temperatures
                    .1
                    .then(|| mean("train", "Act temperature"))
                    .flatten(),
                weights_temperature_last: temperatures
                    .0
                    .then(|| last("Weight temperature"))
                    .flatten(),
                acts_temperature_last: temperatures.1.then(|| last("Act temperature")).flatten(),
                seconds: (epoch > untimed)
                    .then(|| seconds.get(surplus + epoch - 1 - untimed).copied())
                    .flatten(),
                layers: layers
                    .iter()
                    .map(|l| {
                        (
                            mean("valid", &format!("alpha {}", l.name)),
                            mean("valid", &format!("beta {}", l.name)),
                            l.occupancy.as_ref().and_then(|_| {
                                epoch_last(
                                    phase_dir,
                                    "valid",
                                    epoch,
                                    &format!("occupancy {}", l.name),
                                )
                            }),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The count-weighted mean of a metric's log (lines of `value,count`).
fn epoch_mean(dir: &Path, split: &str, epoch: usize, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log_path(dir, split, epoch, name)).ok()?;
    let (mut sum, mut n) = (0.0, 0.0);
    for line in text.lines() {
        let (v, c) = line.split_once(',')?;
        let (v, c): (f64, f64) = (v.trim().parse().ok()?, c.trim().parse().ok()?);
        sum += v * c;
        n += c;
    }
    (n > 0.0).then(|| sum / n)
}

/// The last logged value of a text metric in an epoch.
fn epoch_last(dir: &Path, split: &str, epoch: usize, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(log_path(dir, split, epoch, name)).ok()?;
    text.lines().last().map(str::to_string)
}

/// burn-train's log file of metric `name` (spaces become underscores).
fn log_path(dir: &Path, split: &str, epoch: usize, name: &str) -> PathBuf {
    dir.join(split)
        .join(format!("epoch-{epoch}"))
        .join(format!("{}.log", name.replace(' ', "_")))
}
