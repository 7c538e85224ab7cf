//! Quantizer methods: Quantization Networks and the baselines people compare it with, all in one
//! [`Quantizer`](crate::Quantizer) so that they share the layers, the hard evaluation and export.
//!
//! Every method's **inference** function is the same staircase,
//! `α·(Σ_i s_i·A(βx − b_i) − o)`, exactly `α·y_k` on the level grid (`hard_quantize`): what
//! differs is the **training** forward/backward and how `α`, `β` and the thresholds `b_i` are set
//! or learned. docs/methods.md has each method's formulas with its citation; in short (`y_min`,
//! `y_max` the smallest and largest level, `A` the unit step, `sg` stop-gradient):
//!
//! | method | trains through | scale | thresholds |
//! |---|---|---|---|
//! | `qn` | `α(Σ s_i σ(T(βx − b_i)) − o)` (Yang et al. 2019) | `α`, `β` learned | k-means |
//! | `ste` | hard forward; `∂y/∂x = 1` on `[α·y_min, α·y_max]`, 0 outside (DoReFa, Zhou et al. 2016) | fixed: `α = 1/β = max|x|/max|Y|` | midpoints |
//! | `bwn` | `α·sign(x)`, `α = mean|x|` each step; `∂sign/∂x = 1` on `|x| ≤ 1` (Rastegari et al. 2016) | from the weights | 0 |
//! | `twn` | `α·t(x)`, `Δ = 0.7·mean|x|`, `α = mean_{|x|>Δ}|x|` each step; STE (Li et al. 2016) | from the weights | `±Δ` |
//! | `lsq` | `s·round(clip(x/s))`, STE on round, `∂/∂s` scaled by `1/√(N·Q_P)` (Esser et al. 2020) | `s` learned, init `2·mean|x|/√Q_P` | midpoints |
//! | `pact` | `clip(x, 0, a)` rounded to `a/y_max` steps, `∂/∂a = 1[x ≥ a]` (Choi et al. 2018); weights as `ste` | `a` learned | midpoints |
//! | `dsq` | hard forward; backward through tanh segments `φ = s·tanh(k(u − ½))`, `k = ln(2/δ − 1)` (Gong et al. 2019) | `Δ` and sharpness `δ` learned | midpoints |
//!
//! Each training forward returns the **hard values** (bit for bit what `hard_quantize` gives with
//! [`Quantizer::params_for`](crate::Quantizer::params_for)) and carries the method's surrogate
//! gradient: `value + (surrogate − sg(surrogate))` evaluates to `value` exactly (`s − s = 0`) and
//! differentiates as `surrogate`. Only `qn` evaluates a soft function in the forward pass.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::levels::LevelSet;
use crate::op::{QuantBackend, QuantParams, hard_quantize};

/// How a quantizer trains (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Quantization Networks: the annealed sum of sigmoids (ours).
    #[default]
    Qn,
    /// Uniform levels, fixed scale, straight-through estimator (DoReFa-style).
    Ste,
    /// Binary weights, `α = mean|w|` (BWN).
    Bwn,
    /// Ternary weights, `Δ = 0.7·mean|w|` (TWN).
    Twn,
    /// Learned step size (LSQ).
    Lsq,
    /// Learned clipping of activations (PACT); its weights train as [`Method::Ste`].
    Pact,
    /// Differentiable soft quantization: tanh segments with a learned sharpness (DSQ).
    Dsq,
}

/// DSQ's initial sharpness `δ` (its paper's `α`, 0.2).
pub const DSQ_INITIAL_SHARPNESS: f32 = 0.2;

/// TWN's threshold factor: `Δ = 0.7·mean|w|`.
pub const TWN_THRESHOLD_FACTOR: f32 = 0.7;

impl Method {
    /// Every method, ours first.
    pub const ALL: [Method; 7] = [
        Method::Qn,
        Method::Ste,
        Method::Bwn,
        Method::Twn,
        Method::Lsq,
        Method::Pact,
        Method::Dsq,
    ];

    /// The name used on command lines and in files.
    pub fn name(self) -> &'static str {
        match self {
            Method::Qn => "qn",
            Method::Ste => "ste",
            Method::Bwn => "bwn",
            Method::Twn => "twn",
            Method::Lsq => "lsq",
            Method::Pact => "pact",
            Method::Dsq => "dsq",
        }
    }

    /// The method a weight quantizer of this method trains with (PACT quantizes weights as
    /// DoReFa does, i.e. [`Method::Ste`]).
    pub fn for_weights(self) -> Method {
        match self {
            Method::Pact => Method::Ste,
            m => m,
        }
    }

    /// The method an activation quantizer trains with, or an error for the weight-only methods
    /// (`bwn`, `twn`).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the method.
    pub fn for_acts(self) -> Result<Method> {
        match self {
            Method::Bwn | Method::Twn => Err(Error::invalid(
                "method",
                self.name(),
                "quantizes weights only: keep the activations full precision (acts = 32) or use \
                 another method",
            )),
            m => Ok(m),
        }
    }

    /// Whether `levels` suits this method: `bwn` needs {−1, 1}, `twn` {−1, 0, 1}, `pact` levels
    /// that start at 0; `lsq`, `ste` and `dsq` round to the nearest level (any set); `qn` takes any
    /// set.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the method and the set.
    pub fn check_levels(self, levels: &LevelSet) -> Result<()> {
        if self == Method::Pact && levels.levels()[0] != 0.0 {
            return Err(Error::InvalidParameter {
                name: "method",
                value: self.name().into(),
                reason: format!(
                    "clips activations to [0, a]: its levels start at 0 (uN), not {:?}",
                    levels.levels()
                ),
            });
        }
        let need: Option<&[f32]> = match self {
            Method::Bwn => Some(&[-1.0, 1.0]),
            Method::Twn => Some(&[-1.0, 0.0, 1.0]),
            _ => None,
        };
        match need {
            Some(need) if levels.levels() != need => Err(Error::InvalidParameter {
                name: "method",
                value: self.name().into(),
                reason: format!(
                    "quantizes to the levels {need:?}, not {:?} (weights = {})",
                    levels.levels(),
                    if self == Method::Bwn { "1" } else { "2" }
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Whether `α` and the thresholds are functions of the quantized tensor itself (BWN, TWN):
    /// computed afresh on every forward instead of stored.
    pub fn is_data_scaled(self) -> bool {
        matches!(self, Method::Bwn | Method::Twn)
    }

    /// Whether `β` is tied to `1/α` (one learned step size) instead of being its own parameter.
    pub fn ties_beta(self) -> bool {
        matches!(self, Method::Lsq | Method::Pact | Method::Dsq)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::parse(
                    s,
                    "expected qn, ste, bwn, twn, lsq, pact or dsq (docs/methods.md)",
                )
            })
    }
}

/// Initial `(α, β)` of a method whose scale is set from `data` (the layer's weights or a
/// calibration sample), and the thresholds in the `β·x` domain.
///
/// * `ste`, `pact`, `dsq`: the largest `|x|` maps to the largest `|level|`: `α = q/max|Y|`;
/// * `lsq`: `s = 2·mean|x|/√Q_P` (Esser et al. 2020, §2.1), `Q_P = max(y_max, 1)`;
/// * `bwn`: `α = mean|x|`, `β = 1`, threshold 0;
/// * `twn`: `Δ = 0.7·mean|x|`, `α = mean of |x| over |x| > Δ`, `β = 1`, thresholds `±Δ`;
///
/// `β = 1/α` except for `bwn` and `twn`. `qn` is [`crate::init`]'s rule and not handled here.
///
/// # Errors
/// [`Error::InvalidParameter`] if `data` cannot set a positive scale (empty or all zero).
pub(crate) fn initial_state(
    method: Method,
    levels: &LevelSet,
    data: &[f32],
) -> Result<(f32, f32, Vec<f32>)> {
    let q = data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let n = data.len().max(1) as f64;
    let mean_abs = (data.iter().map(|v| f64::from(v.abs())).sum::<f64>() / n) as f32;
    let positive = |what: &'static str, v: f32| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(Error::invalid(
                what,
                &v.to_string(),
                "the data cannot set a positive scale (empty or all zero?)",
            ))
        }
    };
    match method {
        Method::Qn => unreachable!("qn initialises with crate::init"),
        Method::Ste | Method::Pact | Method::Dsq => {
            let alpha = positive("α", q / levels.max_abs())?;
            Ok((alpha, 1.0 / alpha, levels.midpoint_thresholds()))
        }
        Method::Lsq => {
            let q_p = top_level(levels);
            let s = positive("s", 2.0 * mean_abs / q_p.sqrt())?;
            Ok((s, 1.0 / s, levels.midpoint_thresholds()))
        }
        Method::Bwn => Ok((positive("α", mean_abs)?, 1.0, vec![0.0])),
        Method::Twn => {
            let delta = TWN_THRESHOLD_FACTOR * mean_abs;
            let (sum, count) = data
                .iter()
                .filter(|v| v.abs() > delta)
                .fold((0.0f64, 0usize), |(s, c), v| {
                    (s + f64::from(v.abs()), c + 1)
                });
            let alpha = positive("α", (sum / count.max(1) as f64) as f32)?;
            Ok((alpha, 1.0, vec![-delta, delta]))
        }
    }
}

/// LSQ's `Q_P`: the largest level (at least 1).
fn top_level(levels: &LevelSet) -> f32 {
    levels.levels().last().copied().unwrap_or(1.0).max(1.0)
}

/// `value` in the forward pass, `surrogate`'s gradient in the backward pass.
fn straight_through<B: Backend, const D: usize>(
    value: Tensor<B, D>,
    surrogate: Tensor<B, D>,
) -> Tensor<B, D> {
    value.detach() + (surrogate.clone() - surrogate.detach())
}

/// `x`'s hard levels in level units (`α = 1`): `Σ s_i A(βx − b_i) − o`, untracked.
fn unit_levels<B: QuantBackend, const D: usize>(
    x: &Tensor<B, D>,
    p: &QuantParams<B>,
) -> Tensor<B, D> {
    let unit = QuantParams {
        alpha: p.alpha.ones_like().detach(),
        beta: p.beta.clone().detach(),
        thresholds: p.thresholds.clone().detach(),
        steps: p.steps.clone(),
        offset: p.offset,
    };
    hard_quantize(x.clone().detach(), &unit)
}

/// A `[1]` tensor broadcastable against a rank-`D` tensor.
fn scalar<B: Backend, const D: usize>(t: Tensor<B, 1>) -> Tensor<B, D> {
    t.unsqueeze::<D>()
}

/// BWN's and TWN's `α` (tracked: its gradient flows back to `x`) and thresholds (untracked),
/// computed from `x`, with `β = 1`.
pub(crate) fn data_scaled_params<B: Backend, const D: usize>(
    method: Method,
    x: &Tensor<B, D>,
    steps: Tensor<B, 1>,
    offset: f32,
) -> QuantParams<B> {
    let abs: Tensor<B, 1> = x.clone().abs().flatten(0, D - 1);
    let device = abs.device();
    let mean_abs = abs.clone().mean();
    let beta = Tensor::<B, 1>::ones([1], &device);
    match method {
        Method::Bwn => QuantParams {
            alpha: mean_abs,
            beta,
            thresholds: Tensor::zeros([1], &device),
            steps,
            offset,
        },
        Method::Twn => {
            let delta = mean_abs.detach().mul_scalar(TWN_THRESHOLD_FACTOR);
            let above = abs
                .clone()
                .detach()
                .greater(delta.clone().expand(abs.shape()))
                .float();
            let count = above.clone().sum().clamp_min(1.0);
            let alpha = (abs * above).sum() / count;
            QuantParams {
                alpha,
                beta,
                thresholds: Tensor::cat(vec![delta.clone().neg(), delta], 0),
                steps,
                offset,
            }
        }
        _ => unreachable!("only bwn and twn are data-scaled"),
    }
}

/// The training forward of every method but `qn`: the hard values with the method's surrogate
/// gradient (see the [module docs](self)). `p` holds the method's current parameters (for `bwn`
/// and `twn` those of [`data_scaled_params`]; for the tied methods `β = 1/α`, tracked);
/// `sharpness` is DSQ's `δ`; `per_sample` makes LSQ's `N` the elements of one sample (activations).
pub(crate) fn train_forward<B: QuantBackend, const D: usize>(
    method: Method,
    x: Tensor<B, D>,
    p: &QuantParams<B>,
    levels: &LevelSet,
    sharpness: Option<Tensor<B, 1>>,
    per_sample: bool,
) -> Tensor<B, D> {
    let y_min = levels.levels()[0];
    let y_max = *levels.levels().last().unwrap_or(&y_min);
    let unit = unit_levels(&x, p);
    match method {
        Method::Qn => unreachable!("qn trains through soft_quantize"),
        Method::Ste => {
            // Fixed α = 1/β: the identity on the clip range [α·y_min, α·y_max], 0 outside.
            let clipped = (x * scalar::<B, D>(p.beta.clone().detach())).clamp(y_min, y_max);
            scalar::<B, D>(p.alpha.clone().detach()) * straight_through(unit, clipped)
        }
        Method::Bwn | Method::Twn => {
            // ∂sign/∂x = 1 on |x| ≤ 1 (Hubara et al.), the rule XNOR-Net's BWN uses.
            let clipped = x.clamp(-1.0, 1.0);
            scalar::<B, D>(p.alpha.clone()) * straight_through(unit, clipped)
        }
        Method::Lsq => {
            let elements = x.shape().num_elements();
            let n = if per_sample && D > 1 {
                elements / x.dims()[0].max(1)
            } else {
                elements
            };
            let g = 1.0 / ((n.max(1) as f32) * top_level(levels)).sqrt();
            // s in the forward pass, g·s in the backward pass (LSQ's grad_scale).
            let s = p.alpha.clone();
            let scaled = s.clone().mul_scalar(g);
            let s = s.detach() + (scaled.clone() - scaled.detach());
            let v = x * scalar::<B, D>(s.clone().recip());
            let clipped = v.clamp(y_min, y_max);
            scalar::<B, D>(s) * straight_through(unit, clipped)
        }
        Method::Pact => {
            let step = p.alpha.clone();
            let a = step.clone().mul_scalar(y_max);
            let clipped = x
                .clamp_min(0.0)
                .min_pair(scalar::<B, D>(a).expand(unit.shape()));
            let value = unit * scalar::<B, D>(step.detach());
            straight_through(value, clipped)
        }
        Method::Dsq => {
            let step = p.alpha.clone();
            let v = x * scalar::<B, D>(step.clone().recip());
            let v = v.clamp(y_min, y_max);
            // The segment [y_j, y_j+1] holding v: its lower level and its gap (untracked).
            let ys = levels.levels();
            let inside = v.clone().detach();
            let mut lower = inside.zeros_like().add_scalar(ys[0]);
            let mut gap = inside.zeros_like().add_scalar(ys[1] - ys[0]);
            for j in 1..ys.len() - 1 {
                let at_or_above = inside.clone().greater_equal_elem(ys[j]).float();
                lower = lower + at_or_above.clone().mul_scalar(ys[j] - ys[j - 1]);
                gap = gap + at_or_above.mul_scalar((ys[j + 1] - ys[j]) - (ys[j] - ys[j - 1]));
            }
            let delta = sharpness
                .expect("dsq quantizers hold a sharpness")
                .abs()
                .clamp(1e-3, 0.999);
            // k = ln(2/δ − 1), s = 1/tanh(k/2): φ(0) = −1, φ(1) = 1 at the segment's ends.
            let k = delta.recip().mul_scalar(2.0).sub_scalar(1.0).log();
            let s = k.clone().mul_scalar(0.5).tanh().recip();
            let u = (v - lower.clone()) / gap.clone();
            let phi = scalar::<B, D>(s) * (scalar::<B, D>(k) * u.sub_scalar(0.5)).tanh();
            let soft = lower + gap * phi.add_scalar(1.0).mul_scalar(0.5);
            scalar::<B, D>(step) * straight_through(unit, soft)
        }
    }
}
