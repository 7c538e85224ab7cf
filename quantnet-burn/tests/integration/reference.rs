//! A plain-Rust, f64 model of the quantizer and of both gradient rules (paper-spec §2.1, §2.3),
//! used as the closed form the backends are compared with. Its exact gradients are checked here
//! against central finite differences of its own forward.

use quantnet_burn::GradientMode;

/// The quantizer's parameters on the host, in f64.
#[derive(Clone, Debug)]
pub struct HostParams {
    pub alpha: f64,
    pub beta: f64,
    pub thresholds: Vec<f64>,
    pub steps: Vec<f64>,
    pub offset: f64,
}

/// Gradients of `L = Σ_d w_d·y_d`.
#[derive(Clone, Debug)]
pub struct HostGrads {
    pub x: Vec<f64>,
    pub alpha: f64,
    pub beta: f64,
    pub thresholds: Vec<f64>,
}

pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn dsigmoid(z: f64) -> f64 {
    sigmoid(z) * sigmoid(-z)
}

/// `α·(Σ s_i σ(T(βx − b_i)) − o)`.
pub fn soft(x: f64, p: &HostParams, t: f64) -> f64 {
    let bx = p.beta * x;
    let sum: f64 = p
        .thresholds
        .iter()
        .zip(&p.steps)
        .map(|(b, s)| s * sigmoid(t * (bx - b)))
        .sum();
    p.alpha * (sum - p.offset)
}

/// `α·(Σ s_i [βx ≥ b_i] − o)`.
pub fn hard(x: f64, p: &HostParams) -> f64 {
    let bx = p.beta * x;
    let sum: f64 = p
        .thresholds
        .iter()
        .zip(&p.steps)
        .filter(|(b, _)| bx >= **b)
        .map(|(_, s)| s)
        .sum();
    p.alpha * (sum - p.offset)
}

/// `L = Σ w_d·soft(x_d)`.
pub fn loss(x: &[f64], w: &[f64], p: &HostParams, t: f64) -> f64 {
    x.iter().zip(w).map(|(x, w)| w * soft(*x, p, t)).sum()
}

/// The gradients the op's backward computes, in closed form.
pub fn grads(x: &[f64], w: &[f64], p: &HostParams, t: f64, mode: GradientMode) -> HostGrads {
    let (tg, gain) = match mode {
        GradientMode::Exact => (t, t),
        GradientMode::Official { cap } => (1.0, t.min(f64::from(cap))),
    };
    let mut g = HostGrads {
        x: Vec::with_capacity(x.len()),
        alpha: 0.0,
        beta: 0.0,
        thresholds: vec![0.0; p.thresholds.len()],
    };
    for (&xd, &wd) in x.iter().zip(w) {
        let bx = p.beta * xd;
        let mut sum = 0.0;
        let mut d = 0.0;
        for (i, (b, s)) in p.thresholds.iter().zip(&p.steps).enumerate() {
            sum += s * sigmoid(t * (bx - b));
            let ds = gain * dsigmoid(tg * (bx - b));
            d += s * ds;
            g.thresholds[i] += -wd * p.alpha * s * ds;
        }
        g.x.push(wd * p.alpha * p.beta * d);
        g.beta += wd * p.alpha * xd * d;
        g.alpha += wd * (sum - p.offset);
    }
    g
}

/// Central finite differences of [`loss`].
pub fn finite_differences(x: &[f64], w: &[f64], p: &HostParams, t: f64, eps: f64) -> HostGrads {
    central_differences(x, p, eps, |x, q| loss(x, w, q, t))
}

/// Central differences (step `eps`) of `loss(x, p)` with respect to every input value, α, β and
/// every threshold: the reference's, and any backend's through its own loss.
pub fn central_differences(
    x: &[f64],
    p: &HostParams,
    eps: f64,
    loss: impl Fn(&[f64], &HostParams) -> f64,
) -> HostGrads {
    let central = |f: &dyn Fn(f64) -> f64, v: f64| (f(v + eps) - f(v - eps)) / (2.0 * eps);
    let with = |change: &dyn Fn(&mut Vec<f64>, &mut HostParams)| {
        let (mut x, mut q) = (x.to_vec(), p.clone());
        change(&mut x, &mut q);
        loss(&x, &q)
    };
    HostGrads {
        x: (0..x.len())
            .map(|d| central(&|v| with(&|x, _| x[d] = v), x[d]))
            .collect(),
        alpha: central(&|v| with(&|_, q| q.alpha = v), p.alpha),
        beta: central(&|v| with(&|_, q| q.beta = v), p.beta),
        thresholds: (0..p.thresholds.len())
            .map(|i| central(&|v| with(&|_, q| q.thresholds[i] = v), p.thresholds[i]))
            .collect(),
    }
}

/// `|a − b| ≤ atol + rtol·|b|` for every pair, with a message naming the first failure.
pub fn assert_close(what: &str, a: &[f64], b: &[f64], rtol: f64, atol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: got {x}, expected {y} (|diff| {:.3e}, rtol {rtol}, atol {atol})",
            (x - y).abs()
        );
    }
}

pub fn assert_grads_close(what: &str, a: &HostGrads, b: &HostGrads, rtol: f64, atol: f64) {
    assert_close(&format!("{what} dL/dx"), &a.x, &b.x, rtol, atol);
    assert_close(
        &format!("{what} dL/dalpha"),
        &[a.alpha],
        &[b.alpha],
        rtol,
        atol,
    );
    assert_close(
        &format!("{what} dL/dbeta"),
        &[a.beta],
        &[b.beta],
        rtol,
        atol,
    );
    // `a` has no threshold gradients when its thresholds were frozen.
    if !a.thresholds.is_empty() {
        assert_close(
            &format!("{what} dL/db"),
            &a.thresholds,
            &b.thresholds,
            rtol,
            atol,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{Lcg, host_params};
    use quantnet_burn::LevelSet;

    #[test]
    fn closed_form_exact_gradients_match_finite_differences() {
        let mut rng = Lcg::new(7);
        for (name, t) in [
            ("1", 1.0),
            ("2", 5.0),
            ("3pm4", 20.0),
            ("u2", 0.5),
            ("5", 3.0),
        ] {
            let levels: LevelSet = name.parse().unwrap();
            let p = host_params(&levels, 0.8, 1.3);
            let x = rng.uniform_vec(40, -4.0, 4.0);
            let w = rng.uniform_vec(40, -1.0, 1.0);
            let fd = finite_differences(&x, &w, &p, t, 1e-6);
            let g = grads(&x, &w, &p, t, GradientMode::Exact);
            assert_grads_close(&format!("{name} T={t}"), &g, &fd, 1e-6, 1e-7);
        }
    }
}
