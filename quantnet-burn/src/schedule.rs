//! Temperature schedules (paper-spec §4).
//!
//! The paper's kinds keep the temperature constant within an epoch and jump at epoch boundaries;
//! [`ScheduleKind::Anneal`] rises geometrically from `T0` to `T_end` over the whole run, every
//! step (a [`crate::train::TemperatureHook`] told the run's length moves it). With 0-based
//! epochs the paper's linear schedule is `T = T0·(epoch + 1)` (the official code's
//! `(epoch+1)·args.temperature`), so the first epoch already runs at `T0`. The official code caps
//! the weight temperature at 2000 and leaves the activation temperature uncapped.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest temperature a schedule may reach in a run ([`TemperatureSchedule::check_run`]):
/// the soft quantizer's output and gradients are checked finite up to here (`T ∈ [0.1, 1e4]`),
/// and at `T = 1e4` the soft function equals the hard one to f32 precision wherever
/// `|βx − b| > 2e-3`. The official code caps its gain at 2000.
pub const MAX_TEMPERATURE: f32 = 1e4;

/// How the temperature grows with the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `T = t0·(epoch + 1)` (the paper's default).
    Linear {
        /// `T0`, the temperature of the first epoch.
        t0: f32,
    },
    /// `T = t0·growth^epoch`.
    Exponential {
        /// The temperature of the first epoch.
        t0: f32,
        /// The factor per epoch (> 1 to sharpen).
        growth: f32,
    },
    /// `T = t` for every epoch.
    Constant {
        /// The temperature.
        t: f32,
    },
    /// Geometric from `t0` at the run's first step to `t_end` at its last, whatever the number
    /// of epochs: `T = t0·(t_end/t0)^f` with `f` the fraction of the run done. Raised every
    /// iteration when the hook knows the run's length ([`crate::train::TemperatureHook::over`]);
    /// a hook that does not know it holds `T0` throughout.
    Anneal {
        /// The temperature of the first step.
        t0: f32,
        /// The temperature of the last step.
        t_end: f32,
    },
}

/// A temperature schedule with an optional cap.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemperatureSchedule {
    /// The growth rule.
    #[serde(flatten)]
    pub kind: ScheduleKind,
    /// The largest temperature ever returned (the official code caps weights at 2000).
    #[serde(default)]
    pub cap: Option<f32>,
}

impl TemperatureSchedule {
    /// `T = t0·(epoch + 1)`, uncapped.
    pub fn linear(t0: f32) -> Self {
        Self {
            kind: ScheduleKind::Linear { t0 },
            cap: None,
        }
    }

    /// `T = t0·growth^epoch`, uncapped.
    pub fn exponential(t0: f32, growth: f32) -> Self {
        Self {
            kind: ScheduleKind::Exponential { t0, growth },
            cap: None,
        }
    }

    /// `T = t`.
    pub fn constant(t: f32) -> Self {
        Self {
            kind: ScheduleKind::Constant { t },
            cap: None,
        }
    }

    /// Geometric from `t0` (first step of the run) to `t_end` (last step).
    pub fn anneal(t0: f32, t_end: f32) -> Self {
        Self {
            kind: ScheduleKind::Anneal { t0, t_end },
            cap: None,
        }
    }

    /// Whether the temperature depends on the fraction of the run done rather than the epoch.
    pub fn is_per_run(&self) -> bool {
        matches!(self.kind, ScheduleKind::Anneal { .. })
    }

    /// The same schedule, never above `cap`.
    pub fn with_cap(self, cap: f32) -> Self {
        Self {
            cap: Some(cap),
            ..self
        }
    }

    /// Checks every parameter (positive, finite; growth ≥ 1 would be the usual choice but any
    /// positive growth is accepted).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &'static str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::InvalidParameter {
                    name,
                    value: v.to_string(),
                    reason: "must be finite and greater than 0".into(),
                })
            }
        };
        match self.kind {
            ScheduleKind::Linear { t0 } => positive("t0", t0)?,
            ScheduleKind::Exponential { t0, growth } => {
                positive("t0", t0)?;
                positive("growth", growth)?;
            }
            ScheduleKind::Constant { t } => positive("t", t)?,
            ScheduleKind::Anneal { t0, t_end } => {
                positive("t0", t0)?;
                positive("t_end", t_end)?;
            }
        }
        if let Some(cap) = self.cap {
            positive("cap", cap)?;
        }
        Ok(())
    }

    /// Checks that the schedule stays at or below [`MAX_TEMPERATURE`] over a run of `epochs`
    /// epochs (its first and last steps: every kind is monotone).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] with the temperature the run would reach.
    pub fn check_run(&self, epochs: usize) -> Result<()> {
        let last = epochs.max(1) - 1;
        let peak = self.at_run(0, 0.0).max(self.at_run(last, 1.0));
        if peak <= MAX_TEMPERATURE {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "temperature",
                value: format!("{self} over {epochs} epoch(s) reaches {peak}"),
                reason: format!(
                    "above the largest supported temperature, {MAX_TEMPERATURE} (the soft \
                     quantizer's numerics are checked up to there; a cap bounds the growth)"
                ),
            })
        }
    }

    /// The temperature of (0-based) `epoch`; always finite and positive for a valid schedule
    /// (an exponential that overflows stays at `f32::MAX` or the cap). An [`ScheduleKind::Anneal`]
    /// schedule does not know the run's length here and gives `t0`: use [`Self::at_run`].
    pub fn at(&self, epoch: usize) -> f32 {
        self.at_run(epoch, 0.0)
    }

    /// The temperature at a point of a run: `epoch` (0-based) for the per-epoch kinds, `progress`
    /// (the fraction of the run's steps done: 0 at the first, 1 at the last) for
    /// [`ScheduleKind::Anneal`].
    pub fn at_run(&self, epoch: usize, progress: f32) -> f32 {
        let t = match self.kind {
            ScheduleKind::Linear { t0 } => t0 * (epoch as f32 + 1.0),
            ScheduleKind::Exponential { t0, growth } => {
                t0 * growth.powi(epoch.min(i32::MAX as usize) as i32)
            }
            ScheduleKind::Constant { t } => t,
            ScheduleKind::Anneal { t0, t_end } => {
                let f = if progress.is_finite() {
                    progress.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                if f >= 1.0 {
                    // Exactly T_end (the power can round one step above it).
                    t_end
                } else {
                    t0 * (t_end / t0).powf(f)
                }
            }
        };
        let t = if t.is_finite() { t } else { f32::MAX };
        let t = t.max(f32::MIN_POSITIVE);
        self.cap.map_or(t, |cap| t.min(cap))
    }
}

impl std::str::FromStr for TemperatureSchedule {
    type Err = Error;

    /// `linear:T0`, `exp:T0,GROWTH`, `const:T` or `anneal:T0,TEND`, optionally followed by
    /// `,cap=C`; for example `linear:5,cap=2000`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| {
            Error::parse(
                s,
                format!(
                    "{reason}; expected linear:T0, exp:T0,GROWTH, const:T or anneal:T0,TEND, \
                     optionally with ,cap=C"
                ),
            )
        };
        let (kind, rest) = s.split_once(':').ok_or_else(|| bad("no `kind:`"))?;
        let mut numbers = Vec::new();
        let mut cap = None;
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(c) = part.strip_prefix("cap=") {
                cap = Some(
                    c.parse::<f32>()
                        .map_err(|_| bad("the cap is not a number"))?,
                );
            } else {
                numbers.push(part.parse::<f32>().map_err(|_| bad("not a number"))?);
            }
        }
        let kind = match (kind.trim(), numbers.as_slice()) {
            ("linear", &[t0]) => ScheduleKind::Linear { t0 },
            ("exp" | "exponential", &[t0, growth]) => ScheduleKind::Exponential { t0, growth },
            ("const" | "constant", &[t]) => ScheduleKind::Constant { t },
            ("anneal", &[t0, t_end]) => ScheduleKind::Anneal { t0, t_end },
            _ => return Err(bad("unknown kind or wrong number of values")),
        };
        let schedule = Self { kind, cap };
        schedule.validate().map_err(|e| match e {
            Error::InvalidParameter { name, reason, .. } => {
                Error::parse(s, format!("{name} {reason}"))
            }
            other => other,
        })?;
        Ok(schedule)
    }
}

impl std::fmt::Display for TemperatureSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ScheduleKind::Linear { t0 } => write!(f, "linear:{t0}")?,
            ScheduleKind::Exponential { t0, growth } => write!(f, "exp:{t0},{growth}")?,
            ScheduleKind::Constant { t } => write!(f, "const:{t}")?,
            ScheduleKind::Anneal { t0, t_end } => write!(f, "anneal:{t0},{t_end}")?,
        }
        if let Some(cap) = self.cap {
            write!(f, ",cap={cap}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_above_the_largest_supported_temperature_are_refused() {
        // exp:1,1e30 reaches 1e30 at its second epoch; linear:5 stays at 10 over 2 epochs.
        let exp = TemperatureSchedule::exponential(1.0, 1e30);
        assert!(exp.check_run(1).is_ok());
        let err = exp.check_run(2).unwrap_err().to_string();
        assert!(err.contains("largest supported temperature"), "{err}");
        assert!(TemperatureSchedule::linear(5.0).check_run(2).is_ok());
        // linear:5 reaches 5·2001 > 1e4 at epoch 2001, unless capped.
        assert!(TemperatureSchedule::linear(5.0).check_run(2001).is_err());
        let capped = TemperatureSchedule::linear(5.0).with_cap(2000.0);
        assert!(capped.check_run(2001).is_ok());
        assert!(TemperatureSchedule::anneal(5.0, 1e4).check_run(3).is_ok());
        assert!(
            TemperatureSchedule::anneal(5.0, 1.1e4)
                .check_run(3)
                .is_err()
        );
    }

    use super::*;

    #[test]
    fn linear_matches_the_official_schedule_and_the_cap_holds() {
        // quan_weight_main.py: t = (epoch+1)·temperature, weights capped at 2000.
        let s = TemperatureSchedule::linear(10.0).with_cap(2000.0);
        assert_eq!([s.at(0), s.at(1), s.at(34)], [10.0, 20.0, 350.0]);
        assert_eq!(s.at(199), 2000.0);
        assert_eq!(s.at(10_000), 2000.0);
    }

    #[test]
    fn exponential_and_constant_schedules() {
        let e = TemperatureSchedule::exponential(1.0, 2.0);
        assert_eq!([e.at(0), e.at(1), e.at(3)], [1.0, 2.0, 8.0]);
        assert_eq!(e.at(1000), f32::MAX);
        assert_eq!(TemperatureSchedule::constant(5.0).at(7), 5.0);
    }

    #[test]
    fn anneal_runs_geometrically_from_t0_to_t_end() {
        // 5·(500/5)^f: f = 0 → 5, f = 1/2 → 5·10 = 50, f = 1 → 500; outside [0, 1] it holds.
        let s = TemperatureSchedule::anneal(5.0, 500.0);
        let at = |f| s.at_run(7, f);
        assert_eq!(at(0.0), 5.0);
        assert!((at(0.5) - 50.0).abs() < 1e-3, "{}", at(0.5));
        assert!((at(1.0) - 500.0).abs() < 1e-2, "{}", at(1.0));
        assert_eq!((at(-1.0), at(2.0)), (at(0.0), at(1.0)));
        assert_eq!(s.at(3), 5.0);
        // The per-epoch kinds ignore the progress.
        assert_eq!(TemperatureSchedule::linear(5.0).at_run(2, 0.9), 15.0);
    }

    #[test]
    fn bad_parameters_are_errors_and_configs_round_trip() {
        assert!(
            TemperatureSchedule::linear(0.0)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("`t0` = 0")
        );
        assert!(
            TemperatureSchedule::exponential(1.0, f32::NAN)
                .validate()
                .is_err()
        );
        assert!(
            TemperatureSchedule::constant(1.0)
                .with_cap(-1.0)
                .validate()
                .is_err()
        );
        let s = TemperatureSchedule::linear(5.0).with_cap(2000.0);
        let text = toml::to_string(&s).unwrap();
        assert!(text.contains("kind = \"linear\""), "{text}");
        assert_eq!(toml::from_str::<TemperatureSchedule>(&text).unwrap(), s);
    }

    #[test]
    fn schedules_parse_from_and_print_to_the_command_line_form() {
        for text in [
            "linear:5",
            "linear:5,cap=2000",
            "exp:1,1.5",
            "const:10,cap=3",
            "anneal:5,500",
        ] {
            let s: TemperatureSchedule = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        let s: TemperatureSchedule = "linear:5,cap=12".parse().unwrap();
        assert_eq!((s.at(0), s.at(1), s.at(2)), (5.0, 10.0, 12.0));
        for bad in [
            "",
            "linear",
            "linear:x",
            "linear:-1",
            "exp:1",
            "cubic:2",
            "const:1,cap=0",
            "anneal:5",
            "anneal:5,0",
        ] {
            assert!(bad.parse::<TemperatureSchedule>().is_err(), "{bad}");
        }
    }
}
