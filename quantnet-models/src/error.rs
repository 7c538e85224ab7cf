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
    /// A manifest could not be serialised.
    #[error("serialising the manifest")]
    Manifest(#[source] serde_json::Error),
    /// Values could not be read back from the device.
    #[error("reading {what} back from the device: {reason}")]
    ReadBack {
        /// What was read.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// Activation calibration failed.
    #[error("activation calibration{}: {reason}", slot.as_ref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Calibration {
        /// The activation slot, when one is to blame.
        slot: Option<String>,
        /// What went wrong.
        reason: String,
    },
    /// A recipe setting that cannot run.
    #[error("{field} {reason}")]
    Config {
        /// The setting (the recipe's field name).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
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
