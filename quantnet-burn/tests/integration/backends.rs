//! The same random inputs give the same outputs and gradients on every backend compiled in, and
//! flex's (f32) agree with the f64 closed form.
//!
//! All runs are f32. The reference is flex; every other backend must agree within `1e-5` of the
//! largest value on outputs and per-element gradients (a few f32 roundings: against an f64 model
//! of the op, flex and ndarray are within 7e-7; `QN_DEBUG=1 ... -- --nocapture` prints it), and
//! `1e-4` of the largest value on the reduced gradients (α, β, b_i), which sum 4096 terms in a
//! backend-specific order.

use burn::backend::Autodiff;
use burn::tensor::DType;
use quantnet_burn::{GradientMode, LevelSet};

use crate::common::{Case, Flex, Lcg};
use crate::reference::{HostGrads, assert_close};

type Run = (Vec<f64>, HostGrads);

fn runs(case: &Case<'_>, x: &[f64], w: &[f64]) -> Vec<(&'static str, Run)> {
    let f32 = DType::F32;
    #[allow(unused_mut)]
    let mut out = vec![(
        "flex",
        case.run::<Autodiff<Flex>>(x, w, &Default::default(), f32),
    )];
    #[cfg(feature = "ndarray")]
    out.push((
        "ndarray",
        case.run::<Autodiff<burn::backend::NdArray>>(x, w, &Default::default(), f32),
    ));
    #[cfg(feature = "wgpu")]
    out.push((
        "wgpu",
        case.run::<Autodiff<crate::common::Wgpu>>(x, w, &Default::default(), f32),
    ));
    out
}

fn assert_same(what: &str, a: &Run, b: &Run) {
    let scale = |v: &[f64]| v.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    assert_close(&format!("{what} y"), &a.0, &b.0, 0.0, 1e-5 * scale(&b.0));
    assert_close(
        &format!("{what} dL/dx"),
        &a.1.x,
        &b.1.x,
        0.0,
        1e-5 * scale(&b.1.x),
    );
    let reduced = |g: &HostGrads| [vec![g.alpha, g.beta], g.thresholds.clone()].concat();
    let (ra, rb) = (reduced(&a.1), reduced(&b.1));
    assert_close(
        &format!("{what} dL/d(alpha, beta, b)"),
        &ra,
        &rb,
        0.0,
        1e-4 * scale(&rb),
    );
}

#[test]
fn every_backend_agrees_with_flex() {
    let mut rng = Lcg::new(99);
    for (name, t, mode) in [
        ("3pm4", 10.0, GradientMode::Exact),
        ("u2", 4.0, GradientMode::Exact),
        ("2", 200.0, GradientMode::official()),
    ] {
        let levels: LevelSet = name.parse().unwrap();
        let case = Case {
            levels: &levels,
            alpha: 0.45,
            beta: 1.7,
            thresholds: levels.midpoint_thresholds(),
            temperature: t,
            mode,
            learn_thresholds: true,
        };
        let x = rng.uniform_vec(4096, -3.0, 3.0);
        let w = rng.uniform_vec(4096, -1.0, 1.0);
        let all = runs(&case, &x, &w);
        let (_, reference) = &all[0];
        if std::env::var("QN_DEBUG").is_ok() {
            let host = case.host();
            for (backend, run) in &all {
                let err = x
                    .iter()
                    .zip(&run.0)
                    .map(|(x, y)| (crate::reference::soft(*x, &host, f64::from(t)) - y).abs())
                    .fold(0.0, f64::max);
                println!("{backend} {name}: max |y - f64 reference| = {err:.3e}");
            }
        }
        // Flex's f32 kernels against the f64 closed form (this runs with the default features).
        let host = case.host();
        let closed_form: Run = (
            x.iter()
                .map(|x| crate::reference::soft(*x, &host, f64::from(t)))
                .collect(),
            crate::reference::grads(&x, &w, &host, f64::from(t), mode),
        );
        assert_same(
            &format!("flex vs the f64 reference, {name} T={t} {mode:?}"),
            reference,
            &closed_form,
        );
        for (backend, run) in &all[1..] {
            assert_same(
                &format!("{backend} vs flex, {name} T={t} {mode:?}"),
                run,
                reference,
            );
        }
    }
}
