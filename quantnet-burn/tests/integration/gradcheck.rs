//! The custom backward against finite differences and against the closed forms.
//!
//! In f64 (flex, ndarray) the finite differences are central, `eps = 1e-6`, on the backend's own
//! forward pass; in f32 (wgpu) they use `eps = 1e-2` at moderate temperatures, and the gradients
//! are also compared with the f64 closed form ([`crate::reference::grads`], itself checked against
//! f64 finite differences). Test points are random, so some fall near thresholds: the soft function
//! is smooth there, and the step sizes are chosen for its curvature at the tested temperatures.

use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use quantnet_burn::{GradientMode, LevelSet, QuantBackend};

use crate::common::{Case, Lcg};
use crate::on_each_backend;
use crate::reference::{self, HostGrads, assert_close, assert_grads_close};

/// Central differences of `case.loss` on backend `B`.
fn finite_differences<B: AutodiffBackend + QuantBackend>(
    case: &Case<'_>,
    x: &[f64],
    w: &[f64],
    device: &B::Device,
    dtype: DType,
    eps: f64,
) -> HostGrads
where
    B::InnerBackend: QuantBackend,
{
    reference::central_differences(x, &case.host(), eps, |x, p| {
        case.loss::<B>(x, w, p, device, dtype)
    })
}

/// (levels, temperature, α, β, thresholds learned?) — several sets, temperatures from 0.5 to 50.
fn exact_cases() -> Vec<(&'static str, f32, f32, f32, bool)> {
    vec![
        ("1", 1.0, 1.0, 1.0, false),
        ("2", 5.0, 0.7, 1.6, true),
        ("3pm4", 10.0, 0.31, 0.9, true),
        ("u2", 0.5, 1.25, 2.0, false),
        ("3pm2", 50.0, 0.5, 1.1, false),
        ("-3,-1,0.5,2", 2.0, 1.5, 0.6, true),
    ]
}

fn exact_gradients_match_finite_differences<B: AutodiffBackend + QuantBackend>(
    device: &B::Device,
    dtype: DType,
) where
    B::InnerBackend: QuantBackend,
{
    let f64_run = dtype == DType::F64;
    let mut rng = Lcg::new(11);
    for (name, t, alpha, beta, learn) in exact_cases() {
        let levels: LevelSet = name.parse().unwrap();
        // f32 finite differences need a smooth function at their step size.
        let t = if f64_run { t } else { t.min(2.0) };
        let case = Case {
            levels: &levels,
            alpha,
            beta,
            thresholds: levels.midpoint_thresholds(),
            temperature: t,
            mode: GradientMode::Exact,
            learn_thresholds: learn,
        };
        let x = rng.uniform_vec(24, -2.5, 2.5);
        let w = rng.uniform_vec(24, -1.0, 1.0);
        let (_, g) = case.run::<B>(&x, &w, device, dtype);
        let what = format!("{name} T={t}");
        let (eps, rtol, atol) = if f64_run {
            (1e-6, 1e-6, 1e-7)
        } else {
            (1e-2, 2e-2, 2e-3)
        };
        let fd = finite_differences::<B>(&case, &x, &w, device, dtype, eps);
        assert_grads_close(
            &format!("{what} vs finite differences"),
            &g,
            &fd,
            rtol,
            atol,
        );
        let closed = reference::grads(&x, &w, &case.host(), f64::from(t), GradientMode::Exact);
        let (rtol, atol) = if f64_run {
            (1e-10, 1e-12)
        } else {
            (1e-4, 1e-5)
        };
        assert_grads_close(&format!("{what} vs closed form"), &g, &closed, rtol, atol);
    }
}
on_each_backend!(exact_gradients_match_finite_differences);

fn official_gradients_match_their_closed_form<B: AutodiffBackend + QuantBackend>(
    device: &B::Device,
    dtype: DType,
) where
    B::InnerBackend: QuantBackend,
{
    let f64_run = dtype == DType::F64;
    let mut rng = Lcg::new(5);
    // T below the cap, at it, and above it (the gain stops at the cap).
    for (name, t, cap, learn) in [
        ("1", 1.0, 2000.0, false),
        ("2", 30.0, 2000.0, true),
        ("3pm4", 250.0, 100.0, true),
        ("5", 3000.0, 2000.0, false),
    ] {
        let levels: LevelSet = name.parse().unwrap();
        let mode = GradientMode::Official { cap };
        let case = Case {
            levels: &levels,
            alpha: 0.4,
            beta: 1.3,
            thresholds: levels.midpoint_thresholds(),
            temperature: t,
            mode,
            learn_thresholds: learn,
        };
        let x = rng.uniform_vec(32, -3.0, 3.0);
        let w = rng.uniform_vec(32, -1.0, 1.0);
        let (_, g) = case.run::<B>(&x, &w, device, dtype);
        let closed = reference::grads(&x, &w, &case.host(), f64::from(t), mode);
        let (rtol, atol) = if f64_run {
            (1e-10, 1e-10)
        } else {
            (1e-4, 1e-3)
        };
        let what = format!("official {name} T={t} cap={cap}");
        assert_grads_close(&what, &g, &closed, rtol, atol);
        // ∂ℓ/∂α is the true derivative in both modes.
        if f64_run {
            let fd = finite_differences::<B>(&case, &x, &w, device, dtype, 1e-6);
            assert_close(
                &format!("{what} dL/dalpha vs finite differences"),
                &[g.alpha],
                &[fd.alpha],
                1e-6,
                1e-7,
            );
        }
    }
}
on_each_backend!(official_gradients_match_their_closed_form);

fn official_rule_equals_exact_at_unit_temperature<B: AutodiffBackend + QuantBackend>(
    device: &B::Device,
    dtype: DType,
) where
    B::InnerBackend: QuantBackend,
{
    // At T = 1 the official rule (σ' at T = 1, gain min(1, cap) = 1) is the exact derivative.
    let levels = LevelSet::three_pm4();
    let mut rng = Lcg::new(9);
    let x = rng.uniform_vec(16, -3.0, 3.0);
    let w = rng.uniform_vec(16, -1.0, 1.0);
    let run = |mode| {
        Case {
            levels: &levels,
            alpha: 0.5,
            beta: 1.0,
            thresholds: levels.midpoint_thresholds(),
            temperature: 1.0,
            mode,
            learn_thresholds: true,
        }
        .run::<B>(&x, &w, device, dtype)
        .1
    };
    assert_grads_close(
        "official vs exact at T=1",
        &run(GradientMode::official()),
        &run(GradientMode::Exact),
        1e-6,
        1e-7,
    );
}
on_each_backend!(official_rule_equals_exact_at_unit_temperature);
