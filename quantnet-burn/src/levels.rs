//! Target level sets `Y` and what the quantizer derives from them (paper-spec §1.3).
//!
//! A [`LevelSet`] is a validated, strictly increasing list of finite levels
//! `y_1 < y_2 < … < y_{n+1}`. From it the quantizer takes
//!
//! * `n = |Y| − 1`, the number of unit steps (and thresholds `b_i`);
//! * the step heights `s_i = y_{i+1} − y_i`;
//! * the offset `o = −y_1`, so that the hard quantizer
//!   `α·(Σ_i s_i·A(βx − b_i) − o)` produces exactly `α·y_k` in interval `k`.
//!
//! For every symmetric set (binary, ternary, `3pm2`, `3pm4`, `5`, `sN`) `o = −y_1` equals the
//! paper's `o = (max Y − min Y)/2`; for sets that start at 0 (the activation sets `uN`) it is the
//! paper's `o = 0`. For a user-given asymmetric set the paper's rule would shift every level by a
//! constant; we keep the levels where the user put them instead.
//!
//! Sets can be named on a command line or in a config file:
//!
//! | name | levels | paper name |
//! |---|---|---|
//! | `1` | {−1, 1} | binary weights |
//! | `2` | {−1, 0, 1} | ternary weights |
//! | `3pm2` | {−2, −1, 0, 1, 2} | 3 bits (±2) |
//! | `3pm4` | {−4, −2, −1, 0, 1, 2, 4} | 3 bits (±4) |
//! | `5` | {−15, …, 15} | "5 bits" |
//! | `uN` | {0, …, 2^N − 1} | N-bit activations |
//! | `sN` | {−(2^(N−1) − 1), …, 2^(N−1) − 1} | signed N-bit, narrow range (`s2` = ternary, `s5` = `5`) |
//! | `-4,-2,-1,0,1,2,4` | as written | any set |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest number of levels a set may have (256, i.e. 8 bits of codes). The quantizer loops over
/// `n = |Y| − 1` thresholds per element, so larger sets would be slow, and the paper's largest set
/// has 31 levels.
pub const MAX_LEVELS: usize = 256;

/// The largest `N` accepted in `uN` / `sN` names (`u8` has exactly [`MAX_LEVELS`] levels).
pub const MAX_BITS: u32 = 8;

/// A validated target set `Y`: at least two finite, strictly increasing levels, at most
/// [`MAX_LEVELS`].
///
/// In a config file a level set is either a name (`"3pm4"`, `"u2"`, see the [module docs](self))
/// or an explicit list of numbers (`[-4, -2, -1, 0, 1, 2, 4]`); both are validated on load.
///
/// ```
/// use quantnet_burn::LevelSet;
///
/// let y: LevelSet = "3pm4".parse().unwrap();
/// assert_eq!(y.levels(), &[-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]);
/// assert_eq!(y.num_steps(), 6);
/// assert_eq!(y.steps(), vec![2.0, 1.0, 1.0, 1.0, 1.0, 2.0]);
/// assert_eq!(y.offset(), 4.0);
/// assert!("1,1,2".parse::<LevelSet>().is_err()); // duplicate level
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LevelSpec", into = "LevelSpec")]
pub struct LevelSet {
    levels: Vec<f32>,
    /// The short name the set was created from, kept so that it prints back the same way.
    name: Option<String>,
}

impl LevelSet {
    /// Validates `levels` (strictly increasing, finite, between 2 and [`MAX_LEVELS`] values).
    ///
    /// # Errors
    /// [`Error::InvalidLevels`] naming the offending values.
    pub fn new(levels: impl Into<Vec<f32>>) -> Result<Self> {
        let levels = levels.into();
        let invalid = |reason: String| Error::InvalidLevels {
            levels: format_list(&levels),
            reason,
        };
        if levels.len() < 2 {
            return Err(invalid(format!(
                "a level set needs at least 2 levels, got {}",
                levels.len()
            )));
        }
        if levels.len() > MAX_LEVELS {
            return Err(invalid(format!(
                "at most {MAX_LEVELS} levels are supported, got {}",
                levels.len()
            )));
        }
        if let Some(bad) = levels.iter().find(|v| !v.is_finite()) {
            return Err(invalid(format!("level {bad} is not finite")));
        }
        if let Some(w) = levels.windows(2).find(|w| w[0] >= w[1]) {
            let what = if w[0] == w[1] {
                "duplicate level"
            } else {
                "levels must be sorted in increasing order"
            };
            return Err(invalid(format!("{what}: {} then {}", w[0], w[1])));
        }
        Ok(Self { levels, name: None })
    }

    fn named(levels: Vec<f32>, name: impl Into<String>) -> Self {
        Self {
            levels,
            name: Some(name.into()),
        }
    }

    /// Binary weights `{−1, 1}` (one step of height 2 at `b = 0`).
    pub fn binary() -> Self {
        Self::named(vec![-1.0, 1.0], "1")
    }

    /// Ternary weights `{−1, 0, 1}`.
    pub fn ternary() -> Self {
        Self::named(vec![-1.0, 0.0, 1.0], "2")
    }

    /// The paper's "3 bits (±2)": `{−2, −1, 0, 1, 2}`.
    pub fn three_pm2() -> Self {
        Self::named(integers(-2, 2), "3pm2")
    }

    /// The paper's "3 bits (±4)": `{−4, −2, −1, 0, 1, 2, 4}`.
    pub fn three_pm4() -> Self {
        Self::named(vec![-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0], "3pm4")
    }

    /// The paper's "5 bits": `{−15, …, 15}`.
    pub fn five_bit() -> Self {
        Self::named(integers(-15, 15), "5")
    }

    /// Unsigned `bits`-bit levels `{0, …, 2^bits − 1}` (the paper's activation sets).
    ///
    /// # Errors
    /// [`Error::InvalidLevels`] unless `1 <= bits <= 8`.
    pub fn unsigned(bits: u32) -> Result<Self> {
        check_bits(bits, 1, &format!("u{bits}"))?;
        Ok(Self::named(
            integers(0, (1 << bits) - 1),
            format!("u{bits}"),
        ))
    }

    /// Signed, narrow-range `bits`-bit levels `{−(2^(bits−1) − 1), …, 2^(bits−1) − 1}`, symmetric
    /// around 0 (so `signed(2)` is ternary and `signed(5)` the paper's "5 bits").
    ///
    /// # Errors
    /// [`Error::InvalidLevels`] unless `2 <= bits <= 8`.
    pub fn signed(bits: u32) -> Result<Self> {
        check_bits(bits, 2, &format!("s{bits}"))?;
        let m = (1 << (bits - 1)) - 1;
        Ok(Self::named(integers(-m, m), format!("s{bits}")))
    }

    /// The levels `y_1 < … < y_{n+1}`.
    pub fn levels(&self) -> &[f32] {
        &self.levels
    }

    /// `|Y|`, the number of levels.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// Always `false`: a level set has at least two levels.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `n = |Y| − 1`, the number of unit steps and thresholds.
    pub fn num_steps(&self) -> usize {
        self.levels.len() - 1
    }

    /// The step heights `s_i = y_{i+1} − y_i` (length `n`).
    pub fn steps(&self) -> Vec<f32> {
        self.levels.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// The offset `o = −y_1` (see the [module docs](self)).
    pub fn offset(&self) -> f32 {
        -self.levels[0]
    }

    /// `max |y|`, the `p` of the paper's initialisation `β = 5p/(4q)`.
    pub fn max_abs(&self) -> f32 {
        self.levels.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    }

    /// Bits needed to store one code: `ceil(log2 |Y|)`.
    pub fn bits(&self) -> u32 {
        usize::BITS - (self.levels.len() - 1).leading_zeros()
    }

    /// Midpoints between adjacent levels, `b_i = (y_i + y_{i+1})/2`: thresholds that make the hard
    /// quantizer round `βx` to the nearest level. The default when no data is at hand.
    pub fn midpoint_thresholds(&self) -> Vec<f32> {
        self.levels
            .windows(2)
            .map(|w| 0.5 * (w[0] + w[1]))
            .collect()
    }

    /// The short name (`"3pm4"`) for named sets, otherwise the comma-separated levels.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format_list(&self.levels))
    }
}

fn integers(lo: i32, hi: i32) -> Vec<f32> {
    (lo..=hi).map(|v| v as f32).collect()
}

fn check_bits(bits: u32, min: u32, name: &str) -> Result<()> {
    if (min..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidLevels {
            levels: name.to_string(),
            reason: format!("the bit width must be between {min} and {MAX_BITS}, got {bits}"),
        })
    }
}

fn format_list(values: &[f32]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl FromStr for LevelSet {
    type Err = Error;

    /// Parses a name (`1`, `2`, `3pm2`, `3pm4`, `5`, `uN`, `sN`) or a comma-separated list; any
    /// error is an [`Error::Parse`] of the text.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        Self::parse_text(s).map_err(|e| match e {
            Error::InvalidLevels { reason, .. } => Error::parse(s, reason),
            other => other,
        })
    }
}

impl LevelSet {
    fn parse_text(s: &str) -> Result<Self> {
        let unknown = |reason: &str| Error::InvalidLevels {
            levels: s.to_string(),
            reason: reason.to_string(),
        };
        match s {
            "1" => return Ok(Self::binary()),
            "2" => return Ok(Self::ternary()),
            "3pm2" => return Ok(Self::three_pm2()),
            "3pm4" => return Ok(Self::three_pm4()),
            "5" => return Ok(Self::five_bit()),
            _ => {}
        }
        if s.contains(',') {
            let values = s
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| unknown("expected a comma-separated list of numbers"))?;
            return Self::new(values);
        }
        for (prefix, make) in [
            ("u", Self::unsigned as fn(u32) -> Result<Self>),
            ("s", Self::signed),
        ] {
            if let Some(bits) = s.strip_prefix(prefix) {
                let bits = bits
                    .parse::<u32>()
                    .map_err(|_| unknown("expected a bit width after `u`/`s`, like `u2`"))?;
                return make(bits);
            }
        }
        Err(unknown(
            "expected a level set: 1, 2, 3pm2, 3pm4, 5, uN, sN or a list like -1,0,1",
        ))
    }
}

impl fmt::Display for LevelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// How a level set is written in a config file: a name or a list of values.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum LevelSpec {
    Name(String),
    Values(Vec<f64>),
}

impl TryFrom<LevelSpec> for LevelSet {
    type Error = Error;

    fn try_from(spec: LevelSpec) -> Result<Self> {
        match spec {
            LevelSpec::Name(name) => name.parse(),
            // Values are read as f64 so that a value beyond f32's range is reported as non-finite
            // instead of failing inside serde with a less helpful message.
            LevelSpec::Values(values) => {
                Self::new(values.iter().map(|&v| v as f32).collect::<Vec<_>>())
            }
        }
    }
}

impl From<LevelSet> for LevelSpec {
    fn from(set: LevelSet) -> Self {
        match set.name {
            Some(name) => LevelSpec::Name(name),
            None => LevelSpec::Values(set.levels.iter().map(|&v| f64::from(v)).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_sets_derive_steps_and_offset_as_in_the_paper() {
        // paper-spec §1.3: 3(±4) has n = 6, s = {2,1,1,1,1,2}, o = 4.
        let y = LevelSet::three_pm4();
        assert_eq!((y.num_steps(), y.offset()), (6, 4.0));
        assert_eq!(y.steps(), vec![2.0, 1.0, 1.0, 1.0, 1.0, 2.0]);
        // Binary: one step of height 2, o = 1.
        let b = LevelSet::binary();
        assert_eq!((b.num_steps(), b.steps(), b.offset()), (1, vec![2.0], 1.0));
        // Ternary: s = {1,1}, o = 1; 5-bit: n = 30, o = 15.
        assert_eq!(LevelSet::ternary().steps(), vec![1.0, 1.0]);
        let five = LevelSet::five_bit();
        assert_eq!((five.num_steps(), five.offset()), (30, 15.0));
        // Activations: o = 0.
        let a = LevelSet::unsigned(2).unwrap();
        assert_eq!((a.levels(), a.offset()), (&[0.0, 1.0, 2.0, 3.0][..], 0.0));
        // Symmetric sets: o = -y_1 equals the paper's (max - min)/2.
        for y in [LevelSet::three_pm2(), LevelSet::signed(4).unwrap(), five] {
            let (lo, hi) = (y.levels()[0], *y.levels().last().unwrap());
            assert_eq!(y.offset(), (hi - lo) / 2.0, "{y}");
        }
    }

    #[test]
    fn bits_are_ceil_log2_of_the_level_count() {
        let bits = |s: &str| s.parse::<LevelSet>().unwrap().bits();
        assert_eq!(
            [
                bits("1"),
                bits("2"),
                bits("3pm2"),
                bits("3pm4"),
                bits("5"),
                bits("u8")
            ],
            [1, 2, 3, 3, 5, 8]
        );
    }

    #[test]
    fn names_parse_and_print_back() {
        for name in [
            "1", "2", "3pm2", "3pm4", "5", "u1", "u4", "s2", "s8", "-1,0,2.5",
        ] {
            let y: LevelSet = name.parse().unwrap();
            assert_eq!(y.to_string(), name);
        }
        assert_eq!(
            "s5".parse::<LevelSet>().unwrap().levels(),
            LevelSet::five_bit().levels()
        );
        assert_eq!(
            "s2".parse::<LevelSet>().unwrap().levels(),
            LevelSet::ternary().levels()
        );
    }

    #[test]
    fn bad_sets_are_errors_that_name_the_values() {
        let err = |s: &str| s.parse::<LevelSet>().unwrap_err().to_string();
        assert!(
            err("1,1,2").contains("duplicate level: 1 then 1"),
            "{}",
            err("1,1,2")
        );
        assert!(err("2,1").contains("sorted"));
        // The text parsers' one convention: "`TEXT`: what was expected".
        assert!(
            err("3").starts_with("`3`: expected a level set"),
            "{}",
            err("3")
        );
        assert!(err("u0").starts_with("`u0`: "), "{}", err("u0"));
        assert!(err("u0").contains("between 1 and 8, got 0"));
        assert!(err("u9").contains("got 9"));
        assert!(err("s1").contains("between 2 and 8"));
        assert!(err("1,x").contains("comma-separated list"));
        assert!(err("0,inf").contains("not finite"));
        assert!(err("0,NaN").contains("not finite"));
        let one = LevelSet::new(vec![0.0]).unwrap_err().to_string();
        assert!(one.contains("at least 2 levels, got 1"), "{one}");
        let many = LevelSet::new((0..300).map(|v| v as f32).collect::<Vec<_>>()).unwrap_err();
        assert!(many.to_string().contains("at most 256 levels"), "{many}");
    }

    #[test]
    fn config_files_hold_names_or_lists_and_are_validated() {
        #[derive(Deserialize, Serialize)]
        struct Cfg {
            weights: LevelSet,
            custom: LevelSet,
        }
        let cfg: Cfg = toml::from_str("weights = \"3pm4\"\ncustom = [-2, 0, 0.5, 2]").unwrap();
        assert_eq!(cfg.weights, LevelSet::three_pm4());
        assert_eq!(cfg.custom.levels(), &[-2.0, 0.0, 0.5, 2.0]);
        let back: Cfg = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!((back.weights, back.custom), (cfg.weights, cfg.custom));

        let bad = toml::from_str::<Cfg>("weights = \"2\"\ncustom = [1, 0]")
            .err()
            .unwrap();
        assert!(
            bad.to_string()
                .contains("sorted in increasing order: 1 then 0"),
            "{bad}"
        );
        let huge = toml::from_str::<Cfg>("weights = \"2\"\ncustom = [0, 1e300]")
            .err()
            .unwrap();
        assert!(huge.to_string().contains("not finite"), "{huge}");
    }

    #[test]
    fn midpoint_thresholds_round_to_the_nearest_level() {
        assert_eq!(LevelSet::binary().midpoint_thresholds(), vec![0.0]);
        assert_eq!(
            LevelSet::three_pm4().midpoint_thresholds(),
            vec![-3.0, -1.5, -0.5, 0.5, 1.5, 3.0]
        );
    }
}
