//! Batch norm on flex: each direction is a per-channel reduction (parallel over channels, f64
//! accumulators) and one write pass (parallel over `(image, channel)` planes, which no two
//! tasks share). f32 and f64 take this path; other dtypes take the tensor-op bodies.

use burn::tensor::{DType, TensorMetadata};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::flex::{Scalar, from_values as tensor, kernel_dtype};
use super::norm::{BatchNormForward, BatchNormGrads, generic};

/// `[batch, channels, positions]` when every tensor has `x`'s dtype, f32 or f64.
fn fused(x: &FlexTensor, others: &[&FlexTensor]) -> Option<(DType, [usize; 3])> {
    let dtype = kernel_dtype(&[&[x], others].concat())?;
    let shape = x.shape();
    Some((dtype, [shape[0], shape[1], shape[2]]))
}

/// A contiguous copy's values as f64 (per-channel parameters: a few hundred values).
fn channel_values<E: Scalar>(t: &FlexTensor) -> Vec<f64> {
    E::slice(&t.to_contiguous())
        .iter()
        .map(|v| v.to_f64())
        .collect()
}

/// `f(c, plane)` summed over the images' planes of channel `c`, for every channel.
fn per_channel<E: Scalar, R: Send>(
    x: &[E],
    [n, c, l]: [usize; 3],
    f: impl Fn(usize, &[E], usize) -> R + Sync,
    add: impl Fn(R, R) -> R + Sync,
    zero: impl Fn() -> R + Sync,
) -> Vec<R> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n).fold(zero(), |acc, i| {
                add(acc, f(ch, &x[(i * c + ch) * l..][..l], i))
            })
        })
        .collect()
}

/// Writes `out[plane] = f(channel, image, plane)` for every `(image, channel)` plane.
fn per_plane<E: Scalar>(
    [n, c, l]: [usize; 3],
    f: impl Fn(usize, usize, &mut [E]) + Sync,
) -> Vec<E> {
    let mut out = vec![E::from_f64(0.0); n * c * l];
    out.par_chunks_mut(l.max(1))
        .enumerate()
        .for_each(|(nc, plane)| f(nc % c, nc / c, plane));
    out
}

/// `γ·(x − μ)/√(σ² + ε) + β` per channel, from the statistics in f64.
fn normalise<E: Scalar>(
    xs: &[E],
    dims: [usize; 3],
    [mean, var, gamma, beta]: [&[f64]; 4],
    epsilon: f64,
) -> Vec<E> {
    let [_, c, l] = dims;
    let scale: Vec<f64> = (0..c)
        .map(|ch| gamma[ch] / (var[ch] + epsilon).sqrt())
        .collect();
    per_plane::<E>(dims, |ch, i, out| {
        let src = &xs[(i * c + ch) * l..][..l];
        for (o, v) in out.iter_mut().zip(src) {
            *o = E::from_f64((v.to_f64() - mean[ch]) * scale[ch] + beta[ch]);
        }
    })
}

fn train_typed<E: Scalar>(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    dims: [usize; 3],
) -> BatchNormForward<Flex> {
    let [n, c, l] = dims;
    let m = (n * l) as f64;
    let xc = x.to_contiguous();
    let xs = E::slice(&xc);
    let sum = |_, p: &[E], _| p.iter().map(|v| v.to_f64()).sum::<f64>();
    let mean: Vec<f64> = per_channel(xs, dims, sum, |a, b| a + b, || 0.0)
        .into_iter()
        .map(|s| s / m)
        .collect();
    let squares = |ch: usize, p: &[E], _| {
        p.iter()
            .map(|v| (v.to_f64() - mean[ch]).powi(2))
            .sum::<f64>()
    };
    let var: Vec<f64> = per_channel(xs, dims, squares, |a, b| a + b, || 0.0)
        .into_iter()
        .map(|s| s / m)
        .collect();
    let (gamma, beta) = (channel_values::<E>(gamma), channel_values::<E>(beta));
    let y = normalise(xs, dims, [&mean, &var, &gamma, &beta], epsilon);
    let stat = |v: Vec<f64>| tensor(v.into_iter().map(E::from_f64).collect(), vec![c]);
    BatchNormForward {
        output: tensor(y, dims),
        mean: stat(mean),
        var: stat(var),
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<E: Scalar>(
    x: &FlexTensor,
    grad: &FlexTensor,
    mean: &FlexTensor,
    var: &FlexTensor,
    gamma: &FlexTensor,
    epsilon: f64,
    dims: [usize; 3],
) -> BatchNormGrads<Flex> {
    let [n, c, l] = dims;
    let m = (n * l) as f64;
    let (xc, gc) = (x.to_contiguous(), grad.to_contiguous());
    let (xs, gs) = (E::slice(&xc), E::slice(&gc));
    let mean = channel_values::<E>(mean);
    let inv_std: Vec<f64> = channel_values::<E>(var)
        .into_iter()
        .map(|v| 1.0 / (v + epsilon).sqrt())
        .collect();
    let gamma = channel_values::<E>(gamma);
    // (Σ g, Σ g·x̂) per channel.
    let sums = |ch: usize, p: &[E], i: usize| {
        let g = &gs[(i * c + ch) * l..][..l];
        p.iter().zip(g).fold((0.0, 0.0), |(sg, sgx), (v, g)| {
            let g = g.to_f64();
            (sg + g, sgx + g * (v.to_f64() - mean[ch]) * inv_std[ch])
        })
    };
    let add = |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, a.1 + b.1);
    let sums = per_channel(xs, dims, sums, add, || (0.0, 0.0));
    let dx = per_plane::<E>(dims, |ch, i, out| {
        let at = (i * c + ch) * l;
        let (d_beta, d_gamma) = sums[ch];
        let k = gamma[ch] * inv_std[ch] / m;
        for ((o, v), g) in out.iter_mut().zip(&xs[at..][..l]).zip(&gs[at..][..l]) {
            let x_hat = (v.to_f64() - mean[ch]) * inv_std[ch];
            *o = E::from_f64(k * (m * g.to_f64() - d_beta - x_hat * d_gamma));
        }
    });
    let channel = |f: fn((f64, f64)) -> f64| {
        tensor(sums.iter().map(|&s| E::from_f64(f(s))).collect(), vec![c])
    };
    BatchNormGrads {
        x: tensor(dx, dims),
        gamma: channel(|s| s.1),
        beta: channel(|s| s.0),
    }
}

fn eval_typed<E: Scalar>(
    x: &FlexTensor,
    [mean, var, gamma, beta]: [&FlexTensor; 4],
    epsilon: f64,
    dims: [usize; 3],
) -> FlexTensor {
    let xc = x.to_contiguous();
    let [mean, var, gamma, beta] = [mean, var, gamma, beta].map(channel_values::<E>);
    let y = normalise(E::slice(&xc), dims, [&mean, &var, &gamma, &beta], epsilon);
    tensor(y, dims)
}

pub(super) fn train(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> BatchNormForward<Flex> {
    match fused(&x, &[&gamma, &beta]) {
        Some((DType::F64, dims)) => train_typed::<f64>(&x, &gamma, &beta, epsilon, dims),
        Some((_, dims)) => train_typed::<f32>(&x, &gamma, &beta, epsilon, dims),
        None => generic::train::<Flex>(x, gamma, beta, epsilon),
    }
}

pub(super) fn backward(
    x: FlexTensor,
    grad: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    gamma: FlexTensor,
    epsilon: f64,
) -> BatchNormGrads<Flex> {
    match fused(&x, &[&grad, &mean, &var, &gamma]) {
        Some((DType::F64, dims)) => {
            backward_typed::<f64>(&x, &grad, &mean, &var, &gamma, epsilon, dims)
        }
        Some((_, dims)) => backward_typed::<f32>(&x, &grad, &mean, &var, &gamma, epsilon, dims),
        None => generic::backward::<Flex>(x, grad, mean, var, gamma, epsilon),
    }
}

pub(super) fn eval(
    x: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> FlexTensor {
    let params = [&mean, &var, &gamma, &beta];
    match fused(&x, &params) {
        Some((DType::F64, dims)) => eval_typed::<f64>(&x, params, epsilon, dims),
        Some((_, dims)) => eval_typed::<f32>(&x, params, epsilon, dims),
        None => generic::eval::<Flex>(x, mean, var, gamma, beta, epsilon),
    }
}
