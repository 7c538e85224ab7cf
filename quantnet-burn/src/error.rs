//! The crate's error type.

/// Everything that can go wrong in `quantnet-burn` because of a caller's input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A target level set is not usable (too few or too many levels, unsorted, duplicated or
    /// non-finite values, or an unknown name).
    #[error("invalid level set `{levels}`: {reason}")]
    InvalidLevels {
        /// The set as the caller wrote it.
        levels: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value written as text (a flag, a config field) that does not parse: every text parser of
    /// the workspace reports ``"`TEXT`: what was expected"``.
    #[error("`{text}`: {expected}")]
    Parse {
        /// The text as the caller wrote it.
        text: String,
        /// What was expected instead (or what is wrong with it).
        expected: String,
    },
    /// A quantizer parameter is out of its domain (a non-finite or non-positive temperature, a
    /// threshold count that does not match the level set, ...).
    #[error("invalid quantizer parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// Its value, as the caller gave it.
        value: String,
        /// The accepted domain.
        reason: String,
    },
}

impl Error {
    /// [`Error::Parse`]: `text` is not one of `expected`.
    pub(crate) fn parse(text: &str, expected: impl Into<String>) -> Self {
        Self::Parse {
            text: text.to_string(),
            expected: expected.into(),
        }
    }

    /// [`Error::InvalidParameter`]: `value` of `name` is outside `reason`'s domain.
    pub(crate) fn invalid(name: &'static str, value: &str, reason: &str) -> Self {
        Self::InvalidParameter {
            name,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
