//! Data-driven initialisation of a quantizer (paper-spec §3).
//!
//! * Scales: `β = 5p/(4q)` with `p = max|Y|` and `q = max|x|` of the data, so the largest value
//!   maps to `1.25·p`, inside the soft function's linear region; `α = 1/β` keeps magnitudes.
//! * Thresholds: 1-D k-means with `|Y|` clusters on the data in the `β·x` domain, thresholds at
//!   the midpoints of adjacent centres. For weight sets the two thresholds around the level 0
//!   are then set to `±0.05` (paper §4.1: "ensuring that 5% of the values in [−1, 1] are quantized
//!   to 0"); binary weights use `b = 0`, ternary `±0.05`. Uniform (midpoint) thresholds are the
//!   ablation's alternative ([`ThresholdInit::Uniform`]).
//!
//! The k-means is deterministic: Lloyd's algorithm on the sorted data, started from the
//! quantiles `(j + ½)/k`, with clusters kept contiguous (optimal in 1-D). The same data always give
//! the same thresholds. (The official tooling ran scikit-learn's randomly seeded `KMeans`.)

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::levels::LevelSet;

/// Half-width of the band around 0 that weight sets quantize to 0 (paper §4.1).
pub const ZERO_BAND: f32 = 0.05;

/// How thresholds are initialised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdInit {
    /// k-means on the data (the paper's choice).
    #[default]
    KMeans,
    /// Midpoints between adjacent levels, ignoring the data and the zero band (the paper's
    /// "linear" ablation).
    Uniform,
}

/// `kmeans` or `uniform`.
impl std::str::FromStr for ThresholdInit {
    type Err = crate::Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim() {
            "kmeans" => Ok(Self::KMeans),
            "uniform" => Ok(Self::Uniform),
            other => Err(crate::Error::parse(other, "expected kmeans or uniform")),
        }
    }
}

/// The form [`ThresholdInit::from_str`](std::str::FromStr) reads.
impl std::fmt::Display for ThresholdInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::KMeans => "kmeans",
            Self::Uniform => "uniform",
        })
    }
}

/// `(α, β)` for data whose largest magnitude is `max_abs`: `β = 5p/(4q)`, `α = 1/β`.
///
/// # Errors
/// [`Error::InvalidParameter`] when `max_abs` is not finite and positive (all-zero data cannot set
/// a scale).
pub fn initial_scales(levels: &LevelSet, max_abs: f32) -> Result<(f32, f32)> {
    if !(max_abs.is_finite() && max_abs > 0.0) {
        return Err(Error::InvalidParameter {
            name: "max |x|",
            value: max_abs.to_string(),
            reason: "initialising β = 5p/(4q) needs data with a finite, non-zero largest magnitude"
                .into(),
        });
    }
    let beta = 1.25 * levels.max_abs() / max_abs;
    Ok((1.0 / beta, beta))
}

/// Thresholds for `levels` from `values` (already multiplied by `β`).
///
/// With `zero_band = Some(w)` (weights) and k-means, the thresholds on either side of the
/// level 0 become `−w` and `+w` (binary: the single threshold becomes 0); activation sets pass
/// `None`. [`ThresholdInit::Uniform`] ignores the band: the midpoints as they are.
/// Thresholds are non-decreasing; a k-means threshold that the band override would put out of
/// order is moved onto the band edge.
///
/// # Errors
/// [`Error::InvalidParameter`] when `values` is empty or holds a non-finite value.
pub fn thresholds(
    scaled: &[f32],
    levels: &LevelSet,
    init: ThresholdInit,
    zero_band: Option<f32>,
) -> Result<Vec<f32>> {
    let mut b = match init {
        ThresholdInit::Uniform => levels.midpoint_thresholds(),
        ThresholdInit::KMeans => {
            let centres = kmeans_1d(scaled, levels.len())?;
            centres.windows(2).map(|c| 0.5 * (c[0] + c[1])).collect()
        }
    };
    // The band belongs to the data-driven (k-means) path: uniform thresholds are the paper's
    // "linear" ablation, the midpoints as they are.
    if let (ThresholdInit::KMeans, Some(width)) = (init, zero_band) {
        apply_zero_band(&mut b, levels, width);
    }
    Ok(b)
}

/// Sets the thresholds adjacent to the level 0 to `±width` (binary `{−1, 1}`: the threshold
/// between the two levels around 0 becomes 0) and keeps the others in order.
fn apply_zero_band(b: &mut [f32], levels: &LevelSet, width: f32) {
    let y = levels.levels();
    if let Some(zero) = y.iter().position(|&v| v == 0.0) {
        // Threshold i separates y_i and y_{i+1} (0-based).
        if zero >= 1 {
            b[zero - 1] = -width;
        }
        if zero < b.len() {
            b[zero] = width;
        }
        keep_ordered_around(b, zero.saturating_sub(1), zero.min(b.len() - 1));
    } else if let Some(i) = y.windows(2).position(|w| w[0] < 0.0 && w[1] > 0.0) {
        // A set without 0 that straddles it (binary): split at 0.
        b[i] = 0.0;
        keep_ordered_around(b, i, i);
    }
}

/// Makes `b` non-decreasing by moving the thresholds below `lo` down and those above `hi` up to
/// their fixed neighbours `b[lo]`, `b[hi]`.
fn keep_ordered_around(b: &mut [f32], lo: usize, hi: usize) {
    for i in (0..lo).rev() {
        b[i] = b[i].min(b[i + 1]);
    }
    for i in hi + 1..b.len() {
        b[i] = b[i].max(b[i - 1]);
    }
}

/// Deterministic 1-D k-means: `k` sorted centres of `values`.
///
/// # Errors
/// [`Error::InvalidParameter`] for empty or non-finite data.
pub fn kmeans_1d(values: &[f32], k: usize) -> Result<Vec<f32>> {
    if values.is_empty() {
        return Err(Error::InvalidParameter {
            name: "data",
            value: "[]".into(),
            reason: "k-means needs at least one value".into(),
        });
    }
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(Error::InvalidParameter {
            name: "data",
            value: bad.to_string(),
            reason: "k-means needs finite values".into(),
        });
    }
    let mut sorted: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // prefix[i] = sum of the first i values: the mean of a contiguous range in O(1).
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for v in &sorted {
        prefix.push(prefix[prefix.len() - 1] + v);
    }
    let mut centres: Vec<f64> = (0..k)
        .map(|j| sorted[(((j as f64 + 0.5) / k as f64) * n as f64) as usize])
        .collect();
    for _ in 0..300 {
        // Contiguous clusters: cluster j holds the values between the midpoints around c_j.
        let mut cuts = vec![0usize];
        for w in centres.windows(2) {
            let mid = 0.5 * (w[0] + w[1]);
            cuts.push(sorted.partition_point(|&v| v < mid));
        }
        cuts.push(n);
        let next: Vec<f64> = (0..k)
            .map(|j| {
                let (lo, hi) = (cuts[j], cuts[j + 1]);
                // An empty cluster keeps its centre.
                if hi > lo {
                    (prefix[hi] - prefix[lo]) / (hi - lo) as f64
                } else {
                    centres[j]
                }
            })
            .collect();
        if next == centres {
            break;
        }
        centres = next;
        centres.sort_by(f64::total_cmp);
    }
    Ok(centres.into_iter().map(|c| c as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tight clusters of 50 points each around `centres`.
    fn clusters(centres: &[f32]) -> Vec<f32> {
        centres
            .iter()
            .flat_map(|&c| (0..50).map(move |i| c + 0.001 * (i as f32 - 24.5)))
            .collect()
    }

    #[test]
    fn beta_maps_the_largest_value_to_five_quarters_of_the_largest_level() {
        let (alpha, beta) = initial_scales(&LevelSet::three_pm4(), 0.5).unwrap();
        assert_eq!(beta, 10.0); // 5·4/(4·0.5)
        assert_eq!(alpha, 0.1);
        assert!(
            initial_scales(&LevelSet::ternary(), 0.0)
                .unwrap_err()
                .to_string()
                .contains("non-zero")
        );
        assert!(initial_scales(&LevelSet::ternary(), f32::NAN).is_err());
    }

    #[test]
    fn kmeans_finds_crafted_clusters() {
        let c = kmeans_1d(&clusters(&[-2.0, -1.0, 0.0, 1.0, 2.0]), 5).unwrap();
        for (got, want) in c.iter().zip([-2.0, -1.0, 0.0, 1.0, 2.0]) {
            assert!((got - want).abs() < 1e-5, "{c:?}");
        }
        // Uneven clusters: midpoints of the centres, not of the levels.
        let b = thresholds(
            &clusters(&[-3.0, 0.0, 1.0]),
            &LevelSet::ternary(),
            ThresholdInit::KMeans,
            None,
        )
        .unwrap();
        assert!(
            (b[0] + 1.5).abs() < 1e-5 && (b[1] - 0.5).abs() < 1e-5,
            "{b:?}"
        );
    }

    #[test]
    fn weight_sets_put_the_thresholds_around_zero_at_the_band() {
        let data = clusters(&[-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]);
        let b = thresholds(
            &data,
            &LevelSet::three_pm4(),
            ThresholdInit::KMeans,
            Some(ZERO_BAND),
        )
        .unwrap();
        let want = [-3.0, -1.5, -0.05, 0.05, 1.5, 3.0];
        for (got, want) in b.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{b:?}");
        }
        // Ternary: ±0.05 whatever the data; binary: 0.
        let t = thresholds(
            &clusters(&[-1.0, 0.3, 1.0]),
            &LevelSet::ternary(),
            ThresholdInit::KMeans,
            Some(ZERO_BAND),
        )
        .unwrap();
        assert_eq!(t, vec![-0.05, 0.05]);
        let bin = thresholds(
            &clusters(&[-0.7, 0.9]),
            &LevelSet::binary(),
            ThresholdInit::KMeans,
            Some(ZERO_BAND),
        )
        .unwrap();
        assert_eq!(bin, vec![0.0]);
    }

    #[test]
    fn kmeans_is_deterministic_and_handles_degenerate_data() {
        let data: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect();
        let a = thresholds(
            &data,
            &LevelSet::five_bit(),
            ThresholdInit::KMeans,
            Some(ZERO_BAND),
        )
        .unwrap();
        let b = thresholds(
            &data,
            &LevelSet::five_bit(),
            ThresholdInit::KMeans,
            Some(ZERO_BAND),
        )
        .unwrap();
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0] <= w[1]), "{a:?}");
        // All values equal: every centre collapses, thresholds stay ordered and finite.
        let same = thresholds(
            &[1.0; 20],
            &LevelSet::unsigned(2).unwrap(),
            ThresholdInit::KMeans,
            None,
        )
        .unwrap();
        assert!(same.iter().all(|v| v.is_finite()) && same.windows(2).all(|w| w[0] <= w[1]));
        assert!(kmeans_1d(&[], 3).is_err());
        assert!(
            kmeans_1d(&[1.0, f32::NAN], 3)
                .unwrap_err()
                .to_string()
                .contains("finite")
        );
    }

    #[test]
    fn uniform_init_is_the_midpoints() {
        let b = thresholds(
            &[0.0],
            &LevelSet::unsigned(2).unwrap(),
            ThresholdInit::Uniform,
            None,
        )
        .unwrap();
        assert_eq!(b, vec![0.5, 1.5, 2.5]);
    }

    #[test]
    fn uniform_weight_thresholds_ignore_the_zero_band() {
        // The paper's "linear" ablation: ternary {-1, 0, 1} gives midpoints ±0.5, not the
        // k-means path's ±0.05 band; 3(±4) {-4,-2,-1,0,1,2,4}: -3, -1.5, -0.5, 0.5, 1.5, 3.
        let data = [-1.0, -0.5, 0.0, 0.5, 1.0];
        let b = thresholds(
            &data,
            &LevelSet::ternary(),
            ThresholdInit::Uniform,
            Some(ZERO_BAND),
        )
        .unwrap();
        assert_eq!(b, vec![-0.5, 0.5]);
        let b = thresholds(
            &data,
            &"3pm4".parse().unwrap(),
            ThresholdInit::Uniform,
            Some(ZERO_BAND),
        )
        .unwrap();
        assert_eq!(b, vec![-3.0, -1.5, -0.5, 0.5, 1.5, 3.0]);
        // k-means keeps the band.
        let b = thresholds(
            &data,
            &LevelSet::ternary(),
            ThresholdInit::KMeans,
            Some(ZERO_BAND),
        )
        .unwrap();
        assert_eq!(b, vec![-ZERO_BAND, ZERO_BAND]);
    }
}
