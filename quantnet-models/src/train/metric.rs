//! Per-epoch quantization metrics for burn-train: the soft–hard accuracy gap and every
//! quantizer's α, β and level occupancy.

use std::sync::Arc;

use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

use super::monitor::MonitorInput;
use crate::stats::LayerStats;

/// Soft-model accuracy minus hard-model accuracy on the same validation batches, in points:
/// how much the step functions cost at the current temperature.
#[derive(Clone)]
pub struct SoftHardGapMetric {
    state: NumericMetricState,
    name: MetricName,
}

impl SoftHardGapMetric {
    /// The metric ("Soft-hard gap").
    pub fn new() -> Self {
        Self {
            state: NumericMetricState::new(),
            name: Arc::new("Soft-hard gap".to_string()),
        }
    }
}

impl Default for SoftHardGapMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for SoftHardGapMetric {
    type Input = MonitorInput;

    fn update(&mut self, item: &MonitorInput, _metadata: &MetricMetadata) -> SerializedEntry {
        let gap = match (item.soft_hits, item.hard_hits) {
            (Some(soft), Some(hard)) if item.batch > 0 => {
                100.0 * (soft as f64 - hard as f64) / item.batch as f64
            }
            _ => f64::NAN,
        };
        self.state.update(
            gap,
            item.batch.max(1),
            FormatOptions::new(self.name()).unit("pt").precision(2),
        )
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("pt".into()),
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for SoftHardGapMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// Which part of a quantizer's state a [`LayerMetric`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerValue {
    /// `α`.
    Alpha,
    /// `β`.
    Beta,
    /// The fraction of the weights at each level (text: the fractions separated by spaces).
    Occupancy,
}

/// One quantizer's α, β (numeric) or weight-level occupancy (text), per validation epoch, named
/// "alpha conv2", "beta conv2", "occupancy conv2" (ASCII: burn-train names log files after
/// metrics).
#[derive(Clone)]
pub struct LayerMetric {
    layer: String,
    value: LayerValue,
    name: MetricName,
    state: NumericMetricState,
}

impl LayerMetric {
    /// The metric for `value` of the quantizer in slot `layer`.
    pub fn new(layer: &str, value: LayerValue) -> Self {
        let what = match value {
            LayerValue::Alpha => "alpha",
            LayerValue::Beta => "beta",
            LayerValue::Occupancy => "occupancy",
        };
        Self {
            layer: layer.to_string(),
            value,
            name: Arc::new(format!("{what} {layer}")),
            state: NumericMetricState::new(),
        }
    }

    /// The metrics of every quantizer in `stats`: α and β, and occupancy where there is one.
    pub fn for_layers(stats: &[LayerStats]) -> Vec<Self> {
        stats
            .iter()
            .flat_map(|s| {
                let mut v = vec![
                    Self::new(&s.name, LayerValue::Alpha),
                    Self::new(&s.name, LayerValue::Beta),
                ];
                if s.occupancy.is_some() {
                    v.push(Self::new(&s.name, LayerValue::Occupancy));
                }
                v
            })
            .collect()
    }

    /// Whether this metric is numeric (α, β) or text (occupancy).
    pub fn is_numeric(&self) -> bool {
        self.value != LayerValue::Occupancy
    }
}

impl Metric for LayerMetric {
    type Input = MonitorInput;

    fn update(&mut self, item: &MonitorInput, _metadata: &MetricMetadata) -> SerializedEntry {
        let stats = item
            .layers
            .as_ref()
            .and_then(|layers| layers.iter().find(|s| s.name == self.layer));
        match self.value {
            LayerValue::Occupancy => {
                let text = stats
                    .and_then(|s| s.occupancy.as_ref())
                    .map(|o| {
                        o.iter()
                            .map(|v| format!("{v:.4}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                SerializedEntry::new(format!("{} {text}", self.name), text)
            }
            LayerValue::Alpha | LayerValue::Beta => {
                let v = stats.map_or(f64::NAN, |s| {
                    f64::from(if self.value == LayerValue::Alpha {
                        s.alpha
                    } else {
                        s.beta
                    })
                });
                self.state
                    .update(v, 1, FormatOptions::new(self.name()).precision(5))
            }
        }
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        if self.is_numeric() {
            NumericAttributes {
                unit: None,
                higher_is_better: true,
            }
            .into()
        } else {
            MetricAttributes::None
        }
    }
}

impl Numeric for LayerMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
