//! Golden values for every named level set, derived by hand.
//!
//! Setting: `α = 0.5`, `β = 2`, `T = 100`, midpoint thresholds `b_k = (y_k + y_{k+1})/2`; adjacent
//! thresholds are at least 1 apart in every named set.
//!
//! * At `x = b_k/β` the argument of sigmoid `k` is 0, so `σ_k = 1/2`; every other sigmoid has
//!   `|T(βx − b_i)| ≥ 100`, so it is 0 or 1 within `e^−100`. Hence
//!   `soft = α·(Σ_{i<k} s_i + s_k/2 − o) = α·(y_k + s_k/2) = α·(y_k + y_{k+1})/2 = α·b_k`
//!   (the telescoping sum `Σ_{i<k} s_i = y_k − y_1` and `o = −y_1`), and
//!   `hard = α·y_{k+1}` (the tie goes up), and
//!   `dsoft/dx = α·β·T·s_k·σ'(0) = 0.5·2·100·s_k/4 = 25·s_k`.
//! * At `x = (b_k + ln 3/T)/β`: `σ_k = σ(ln 3) = 3/4`, so `soft = α·(y_k + 3s_k/4)` and
//!   `dsoft/dx = 100·s_k·(3/4)(1/4) = 18.75·s_k`; `hard = α·y_{k+1}`.
//! * At `x = (b_k − 1/4)/β`: `hard = α·y_k` (and `soft ≈ α·y_k` within `s_k·e^−25`).
//! * Far outside (`x = ±10`): `soft = hard = α·y_max` or `α·y_min`, derivative 0.

use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use quantnet_burn::{
    GradientMode, LevelSet, QuantBackend, QuantParams, hard_quantize, soft_quantize,
};

use crate::common::{tensor, to_vec};
use crate::on_each_backend;
use crate::reference::assert_close;

/// `(x, soft, hard, dsoft/dx)` rows per set, from the derivation above.
fn golden() -> Vec<(&'static str, Vec<[f64; 4]>)> {
    let d = 3f64.ln() / 100.0 / 2.0; // (ln 3 / T) / β
    vec![
        // {−1, 1}: b = 0, s = 2, o = 1.
        (
            "1",
            vec![
                [0.0, 0.0, 0.5, 50.0],
                [d, 0.25, 0.5, 37.5],    // α(−1 + 3·2/4) = 0.25
                [-d, -0.25, -0.5, 37.5], // σ(−ln 3) = 1/4: α(−1 + 2/4)
                [-0.125, -0.5, -0.5, 0.0],
                [10.0, 0.5, 0.5, 0.0],
                [-10.0, -0.5, -0.5, 0.0],
            ],
        ),
        // {−1, 0, 1}: b = ±0.5.
        (
            "2",
            vec![
                [-0.25, -0.25, 0.0, 25.0],
                [0.25, 0.25, 0.5, 25.0],
                [-0.25 + d, -0.125, 0.0, 18.75], // α(−1 + 3/4)
                [0.125, 0.0, 0.0, 0.0],          // βx = 0.25: soft = α·0 within e^−25
                [10.0, 0.5, 0.5, 0.0],
            ],
        ),
        // {−2, …, 2}: b = −1.5, −0.5, 0.5, 1.5.
        (
            "3pm2",
            vec![
                [-0.75, -0.75, -0.5, 25.0],
                [-0.25, -0.25, 0.0, 25.0],
                [0.25, 0.25, 0.5, 25.0],
                [0.75, 0.75, 1.0, 25.0],
                [0.75 + d, 0.875, 1.0, 18.75], // α(1 + 3/4)
                [-10.0, -1.0, -1.0, 0.0],
            ],
        ),
        // {−4, −2, −1, 0, 1, 2, 4}: b = −3, −1.5, −0.5, 0.5, 1.5, 3; s = 2, 1, 1, 1, 1, 2.
        (
            "3pm4",
            vec![
                [-1.5, -1.5, -1.0, 50.0],
                [-0.75, -0.75, -0.5, 25.0],
                [-0.25, -0.25, 0.0, 25.0],
                [0.25, 0.25, 0.5, 25.0],
                [0.75, 0.75, 1.0, 25.0],
                [1.5, 1.5, 2.0, 50.0],
                [-1.5 + d, -1.25, -1.0, 37.5], // α(−4 + 3·2/4)
                [1.5 + d, 1.75, 2.0, 37.5],    // α(2 + 3·2/4)
                [(3.0 - 0.25) / 2.0, 1.0, 1.0, 0.0],
                [10.0, 2.0, 2.0, 0.0],
                [-10.0, -2.0, -2.0, 0.0],
            ],
        ),
        // {−15, …, 15}: b = −14.5, …, 14.5.
        (
            "5",
            vec![
                [-7.25, -7.25, -7.0, 25.0],
                [0.25, 0.25, 0.5, 25.0],
                [7.25, 7.25, 7.5, 25.0],
                [7.25 + d, 7.375, 7.5, 18.75], // α(14 + 3/4)
                [10.0, 7.5, 7.5, 0.0],
            ],
        ),
        // Activations {0, 1, 2, 3}: b = 0.5, 1.5, 2.5, o = 0.
        (
            "u2",
            vec![
                [0.25, 0.25, 0.5, 25.0],
                [0.75, 0.75, 1.0, 25.0],
                [1.25, 1.25, 1.5, 25.0],
                [0.25 + d, 0.375, 0.5, 18.75], // α(0 + 3/4)
                [-10.0, 0.0, 0.0, 0.0],
                [10.0, 1.5, 1.5, 0.0],
            ],
        ),
        // Signed narrow 3-bit {−3, …, 3}: b = −2.5, …, 2.5.
        (
            "s3",
            vec![
                [-1.25, -1.25, -1.0, 25.0],
                [1.25, 1.25, 1.5, 25.0],
                [-10.0, -1.5, -1.5, 0.0],
            ],
        ),
    ]
}

fn named_sets_match_hand_derived_values<B: AutodiffBackend + QuantBackend>(
    device: &B::Device,
    dtype: DType,
) {
    // f64: the neglected sigmoid tails are below e^−25 ≈ 1.4e-11. f32: x itself is rounded, which
    // moves T·βx by up to ~1e-4 at T = 100.
    let ((rtol, atol), (drtol, datol)) = if dtype == DType::F64 {
        ((1e-12, 1e-10), (1e-9, 1e-8))
    } else {
        ((1e-5, 5e-5), (2e-3, 1e-3))
    };
    for (name, rows) in golden() {
        let levels: LevelSet = name.parse().unwrap();
        let params = QuantParams::<B>::with_midpoints(&levels, 0.5, 2.0, device)
            .unwrap()
            .cast(dtype);
        let col = |j: usize| rows.iter().map(|r| r[j]).collect::<Vec<_>>();
        let x = tensor::<B>(&col(0), device, dtype).require_grad();
        let soft = soft_quantize(x.clone(), &params, 100.0, GradientMode::Exact);
        let grads = soft.clone().sum().backward();
        let dsoft = to_vec(x.grad(&grads).unwrap());
        let hard = to_vec(hard_quantize(x.clone(), &params));
        assert_close(&format!("{name} soft"), &to_vec(soft), &col(1), rtol, atol);
        // Hard outputs are exact: α = 0.5 times a small integer.
        assert_eq!(hard, col(2), "{name} hard");
        assert_close(&format!("{name} dsoft/dx"), &dsoft, &col(3), drtol, datol);
    }
}
on_each_backend!(named_sets_match_hand_derived_values);
