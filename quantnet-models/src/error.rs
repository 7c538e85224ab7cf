//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading models and data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A Burn record could not be written or read.
    #[error("{path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: burn::record::RecorderError,
    },
    /// A file was read but its contents are not what its format requires.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A data set's files were not found in any of the places looked at.
    #[error("{dataset} not found; looked in {looked}. {hint}")]
    NotFound {
        /// The data set.
        dataset: String,
        /// The folders that were searched.
        looked: String,
        /// How to get it.
        hint: String,
    },
    /// A layer's quantizer could not be set up.
    #[error("layer {layer}")]
    Layer {
        /// The layer.
        layer: String,
        /// The cause.
        #[source]
        source: quantnet_burn::Error,
    },
    /// Something else the caller asked for is not possible.
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
