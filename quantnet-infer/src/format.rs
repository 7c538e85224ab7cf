//! The `.qnet` file format: framing, manifest, code packing, checksum; bytes only (documented
//! in `docs/qnet-format.md`). Training writes it (`quantnet_models::export`), this crate and
//! training both read it through this module.
//!
//! ```text
//! offset  size  content
//! 0       4     magic "QNET"
//! 4       4     format version, u32 little-endian (1)
//! 8       8     manifest length M, u64 little-endian
//! 16      M     manifest, UTF-8 JSON (Manifest)
//! 16+M    P     payload: the tensors' bytes, at the offsets the manifest gives
//! end-4   4     CRC-32 (IEEE) of every byte before it, u32 little-endian
//! ```
//!
//! A quantized weight is stored as one code `k` per weight, `bits = ceil(log2 |Y|)` bits each,
//! packed least-significant bit first; it decodes to `α · Y[k]`, which is bit for bit what
//! `hard_quantize` computes in training (`fl(α·y_k)`). Float tensors (the first and last layer,
//! biases, batch norm, activation quantizers) are little-endian f32. Tensors are keyed by their
//! module path (`Lenet5.conv2.conv.weight`), so a file only loads into the model it was made from.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// [`Error::Corrupt`] naming `path`.
fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The magic bytes.
pub const MAGIC: &[u8; 4] = b"QNET";
/// The format version this code writes for files with per-tensor scales only (what every
/// reader of the format reads).
pub const VERSION: u32 = 1;
/// The format version of files with per-channel weight scales (`channel_scales`): version 1
/// readers would ignore those scales, so such files say so and version 1 readers refuse them.
pub const VERSION_CHANNEL_SCALES: u32 = 2;

/// What the file holds. `H` is the model header, flattened into the manifest's JSON (its fields
/// sit at the top level): the training side reads it as its own typed header
/// (`quantnet_models::export::ModelHeader`), this crate as [`crate::Header`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest<H> {
    /// The model.
    #[serde(flatten)]
    pub header: H,
    /// Tensors stored as float32.
    pub floats: Vec<FloatEntry>,
    /// Quantized weights stored as codes.
    pub coded: Vec<CodedEntry>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// A float32 tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FloatEntry {
    /// Module path.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte offset in the payload.
    pub offset: u64,
}

/// A quantized weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodedEntry {
    /// Module path of the (float) weight it replaces.
    pub path: String,
    /// The layer's name in the model (`conv2`).
    pub layer: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bits per code.
    pub bits: u32,
    /// The level table `Y` (code `k` means `α·Y[k]`).
    pub levels: Vec<f32>,
    /// The output scale `α` (`0` when `channel_scales` holds one per output channel).
    pub alpha: f32,
    /// One output scale per output channel, instead of `alpha` (format version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_scales: Option<ChannelScales>,
    /// Byte offset in the payload.
    pub offset: u64,
    /// Bytes of packed codes.
    pub len: u64,
}

/// Per-channel output scales: element `i` of a coded weight decodes to
/// `alpha[c]·Y[k]`, with `c` its index along `axis` (row-major).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelScales {
    /// The output-channel axis of the weight's shape.
    pub axis: usize,
    /// One `α` per output channel (`shape[axis]` values).
    pub alpha: Vec<f32>,
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zlib and PNG.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Packs `codes` at `bits` bits each, least-significant bit first.
pub fn pack(codes: &[u32], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; (codes.len() * bits as usize).div_ceil(8)];
    for (i, &c) in codes.iter().enumerate() {
        for b in 0..bits as usize {
            if (c >> b) & 1 == 1 {
                let at = i * bits as usize + b;
                out[at / 8] |= 1 << (at % 8);
            }
        }
    }
    out
}

/// Unpacks `n` codes of `bits` bits.
pub fn unpack(bytes: &[u8], bits: u32, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            (0..bits as usize).fold(0u32, |c, b| {
                let at = i * bits as usize + b;
                c | (u32::from((bytes[at / 8] >> (at % 8)) & 1) << b)
            })
        })
        .collect()
}

/// Checks a `.qnet` file's framing and checksum and returns its manifest and payload.
///
/// # Errors
/// [`Error::Corrupt`] naming `path` for a truncated file, bad magic, another format version, a
/// checksum mismatch, or a manifest that does not describe the payload.
pub fn parse<'a, H: serde::de::DeserializeOwned>(
    bytes: &'a [u8],
    path: &Path,
) -> Result<(Manifest<H>, &'a [u8])> {
    if bytes.len() < 20 {
        return Err(corrupt(
            path,
            format!(
                "{} bytes is too short for a .qnet file (truncated?)",
                bytes.len()
            ),
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err(corrupt(path, "not a .qnet file (bad magic)"));
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != VERSION && version != VERSION_CHANNEL_SCALES {
        return Err(corrupt(
            path,
            format!(
                "format version {version}; this quantnet reads versions {VERSION} and \
                 {VERSION_CHANNEL_SCALES}"
            ),
        ));
    }
    let body = &bytes[..bytes.len() - 4];
    let stored = u32::from_le_bytes([
        bytes[bytes.len() - 4],
        bytes[bytes.len() - 3],
        bytes[bytes.len() - 2],
        bytes[bytes.len() - 1],
    ]);
    if crc32(body) != stored {
        return Err(corrupt(
            path,
            "checksum mismatch (the file is truncated or corrupted)",
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let m = usize::try_from(u64::from_le_bytes(len)).unwrap_or(usize::MAX);
    if m > body.len() - 16 {
        return Err(corrupt(path, "manifest length past the end of the file"));
    }
    let manifest: Manifest<H> = serde_json::from_slice(&body[16..16 + m])
        .map_err(|e| corrupt(path, format!("bad manifest: {e}")))?;
    let payload = &body[16 + m..];
    if manifest.payload_len != payload.len() as u64 {
        return Err(corrupt(path, "payload length disagrees with the manifest"));
    }
    for f in &manifest.floats {
        let n: usize = f.shape.iter().product();
        if f.offset.saturating_add(4 * n as u64) > payload.len() as u64 {
            return Err(corrupt(
                path,
                format!("{} lies past the end of the payload", f.path),
            ));
        }
    }
    for c in &manifest.coded {
        let n: usize = c.shape.iter().product();
        if c.levels.is_empty()
            || c.levels.len() > 1 << c.bits.min(16)
            || c.len != (n as u64 * u64::from(c.bits)).div_ceil(8)
            || c.offset.saturating_add(c.len) > payload.len() as u64
        {
            return Err(corrupt(
                path,
                format!("{}: inconsistent code table or length", c.path),
            ));
        }
        if let Some(s) = &c.channel_scales {
            let fits = version == VERSION_CHANNEL_SCALES
                && s.axis < c.shape.len()
                && s.alpha.len() == c.shape[s.axis]
                && s.alpha.iter().all(|a| a.is_finite());
            if !fits {
                return Err(corrupt(
                    path,
                    format!(
                        "{}: per-channel scales that do not fit its shape {:?} (or in a version \
                         {version} file)",
                        c.path, c.shape
                    ),
                ));
            }
        }
    }
    Ok((manifest, payload))
}

/// The level index `k` of every element of `entry` (row-major, as the weight's shape).
///
/// # Errors
/// [`Error::Corrupt`] for a code outside the level table.
pub fn codes(entry: &CodedEntry, payload: &[u8]) -> Result<Vec<u32>> {
    let n: usize = entry.shape.iter().product();
    let start = usize::try_from(entry.offset).unwrap_or(usize::MAX);
    let bytes = &payload[start..start + usize::try_from(entry.len).unwrap_or(0)];
    let codes = unpack(bytes, entry.bits, n);
    if let Some(k) = codes.iter().find(|&&k| k as usize >= entry.levels.len()) {
        return Err(Error::Corrupt {
            path: entry.path.clone().into(),
            reason: format!("code {k} has no level"),
        });
    }
    Ok(codes)
}

/// The output scale `α` of every output channel of `entry` (`channels` of them: one value
/// repeated for a per-tensor scale), with the channel of each element, `(i / Π shape[axis+1..])
/// mod shape[axis]` (the rule training uses).
fn channel_of(entry: &CodedEntry) -> Result<impl Fn(usize) -> f32 + '_> {
    let (alpha, axis) = match &entry.channel_scales {
        Some(c) => (Some(&c.alpha), c.axis),
        None => (None, 0),
    };
    let n: usize = entry.shape.iter().product();
    if alpha.is_some() && n > 0 && axis >= entry.shape.len() {
        return Err(Error::Corrupt {
            path: entry.path.clone().into(),
            reason: format!("channel axis {axis} outside the shape {:?}", entry.shape),
        });
    }
    let count = entry.shape.get(axis).copied().unwrap_or(1).max(1);
    let inner: usize = entry
        .shape
        .get(axis + 1..)
        .map_or(1, |d| d.iter().product());
    Ok(move |i: usize| alpha.map_or(entry.alpha, |a| a[(i / inner.max(1)) % count]))
}

/// Decodes the codes of `entry` to `α·Y[k]` (`α_c·Y[k]` with per-channel scales).
///
/// # Errors
/// [`Error::Corrupt`] for a code outside the level table.
pub fn decode(entry: &CodedEntry, payload: &[u8]) -> Result<Vec<f32>> {
    let alpha_of = channel_of(entry)?;
    Ok(codes(entry, payload)?
        .into_iter()
        .enumerate()
        .map(|(i, k)| alpha_of(i) * entry.levels[k as usize])
        .collect())
}

/// A float tensor's values.
pub fn floats(entry: &FloatEntry, payload: &[u8]) -> Vec<f32> {
    let n: usize = entry.shape.iter().product();
    let start = usize::try_from(entry.offset).unwrap_or(usize::MAX);
    payload[start..start + 4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
