//! Quantize a layer's weights with the Quantization Networks quantizer and watch the soft function
//! become the hard one as the temperature rises.
//!
//! `cargo run -p quantnet-examples --example soft_to_hard` (about a second on a CPU). It draws
//! 4096 weights from N(0, 0.05²) (a freshly initialised layer), sets β = 5p/(4q), α = 1/β and
//! k-means thresholds with ±0.05 around 0 for the 3(±4) set {−4, −2, −1, 0, 1, 2, 4}, prints the
//! fraction of weights at each level, then the soft–hard gap for T = 1 … 1000.
//! Expected (seed 7, flex): occupancy 5.5/14.2/29.2/2.5/27.3/15.1/6.1 % from −4 to 4, and a
//! 99th-percentile gap of 1.48·α at T = 1, 0.40·α at T = 100 and 4.1e-3·α at T = 1000.

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use quantnet_burn::init::{self, ThresholdInit, ZERO_BAND};
use quantnet_burn::{GradientMode, LevelSet, QuantParams, hard_quantize, soft_quantize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    type B = Flex;
    let device = Default::default();
    B::seed(&device, 7);
    let weights = Tensor::<B, 1>::random([4096], Distribution::Normal(0.0, 0.05), &device);
    let values: Vec<f32> = weights.to_data().to_vec().map_err(|e| format!("{e:?}"))?;

    let levels = LevelSet::three_pm4();
    let q = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (alpha, beta) = init::initial_scales(&levels, q)?;
    let scaled: Vec<f32> = values.iter().map(|v| v * beta).collect();
    let thresholds = init::thresholds(&scaled, &levels, ThresholdInit::KMeans, Some(ZERO_BAND))?;
    println!("max|w| = {q:.4}: beta = {beta:.3}, alpha = {alpha:.4}");
    println!("thresholds (beta*w domain): {thresholds:.3?}");
    let params = QuantParams::<B>::new(&levels, alpha, beta, &thresholds, &device)?;

    let hard: Vec<f32> = hard_quantize(weights.clone(), &params)
        .to_data()
        .to_vec()
        .map_err(|e| format!("{e:?}"))?;
    for y in levels.levels() {
        let count = hard
            .iter()
            .filter(|h| (*h / alpha - y).abs() < 1e-3)
            .count();
        println!(
            "level {y:>3}: {:5.1}% of the weights",
            100.0 * count as f32 / hard.len() as f32
        );
    }
    for t in [1.0, 10.0, 100.0, 1000.0] {
        let soft = soft_quantize(weights.clone(), &params, t, GradientMode::Exact);
        let gap: Vec<f32> = (soft - Tensor::from_floats(hard.as_slice(), &device))
            .abs()
            .to_data()
            .to_vec()
            .map_err(|e| format!("{e:?}"))?;
        let mut sorted = gap.clone();
        sorted.sort_by(f32::total_cmp);
        println!(
            "T = {t:>6}: soft-hard gap: median {:.2e}, 99th percentile {:.2e} (in units of alpha)",
            sorted[sorted.len() / 2] / alpha,
            sorted[sorted.len() * 99 / 100] / alpha
        );
    }
    Ok(())
}
