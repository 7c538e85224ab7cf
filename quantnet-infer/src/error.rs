//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong while reading or running a `.qnet` file.
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
    /// A file was read but its contents are not what the format requires.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A valid file that this engine cannot run (an architecture or a level set it has no
    /// integer path for), or an input of the wrong shape.
    #[error("{0}")]
    Unsupported(String),
    /// An instruction set was asked for (`QUANTNET_ISA`) that this CPU or build does not have.
    #[error("{0}")]
    Isa(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
