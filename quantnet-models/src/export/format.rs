//! The `.qnet` file format: framing, manifest, code packing, checksum; bytes only (documented
//! in `docs/qnet-format.md`). The bytes are read and written by [`quantnet_infer::format`],
//! which the integer engine shares; this module gives it the training side's typed header
//! ([`ModelHeader`]) and error type.

use std::path::Path;

pub use quantnet_infer::format::{
    ChannelScales, CodedEntry, FloatEntry, MAGIC, VERSION, VERSION_CHANNEL_SCALES, crc32, pack,
    unpack,
};

use super::ModelHeader;
use crate::error::{Error, Result};

/// What the file holds: [`quantnet_infer::format::Manifest`] with the training side's header.
pub type Manifest = quantnet_infer::format::Manifest<ModelHeader>;

/// This crate's error for one of the format's.
pub(crate) fn from_infer(e: quantnet_infer::Error) -> Error {
    match e {
        quantnet_infer::Error::Io { path, source } => Error::Io { path, source },
        quantnet_infer::Error::Corrupt { path, reason } => Error::Corrupt { path, reason },
        other => Error::Invalid(other.to_string()),
    }
}

/// Checks a `.qnet` file's framing and checksum and returns its manifest and payload.
///
/// # Errors
/// [`Error::Corrupt`] naming `path` for a truncated file, bad magic, another format version, a
/// checksum mismatch, or a manifest that does not describe the payload.
pub fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<(Manifest, &'a [u8])> {
    quantnet_infer::format::parse(bytes, path).map_err(from_infer)
}

/// Decodes the codes of `entry` to `α·Y[k]` (`α_c·Y[k]` with per-channel scales).
///
/// # Errors
/// [`Error::Corrupt`] for a code outside the level table.
pub fn decode(entry: &CodedEntry, payload: &[u8]) -> Result<Vec<f32>> {
    quantnet_infer::format::decode(entry, payload).map_err(from_infer)
}
