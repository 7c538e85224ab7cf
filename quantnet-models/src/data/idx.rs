//! The IDX format of MNIST and Fashion-MNIST (gzipped or not).
//!
//! A file is a big-endian header, magic `0x0000_08_DD` (type 0x08 = unsigned byte, `DD` = number
//! of dimensions), one `u32` per dimension, then the bytes. Images have 3 dimensions
//! (magic 2051), labels 1 (magic 2049).

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::{Error, Result};

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads `path` (`.gz` is decompressed) and checks that it holds `expected_dims` dimensions of
/// unsigned bytes, with exactly as many bytes as the header says.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read, [`Error::Corrupt`] (naming the file) for a bad gzip
/// stream, a bad magic number, a truncated or oversized body.
pub fn read(path: &Path, expected_dims: usize) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| corrupt(path, format!("bad gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    parse(&bytes, expected_dims).map_err(|reason| corrupt(path, reason))
}

fn corrupt(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// Parses IDX bytes; the error is a reason without the file name.
pub fn parse(bytes: &[u8], expected_dims: usize) -> std::result::Result<IdxArray, String> {
    let word = |i: usize| -> Option<u32> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = word(0)
        .ok_or_else(|| format!("file is {} bytes, too short for an IDX header", bytes.len()))?;
    let expected_magic = 0x0800 | expected_dims as u32;
    if magic != expected_magic {
        return Err(format!(
            "bad magic number {magic} (expected {expected_magic}: unsigned bytes in {expected_dims} dimensions)"
        ));
    }
    let dims = (1..=expected_dims)
        .map(|i| word(i).map(|d| d as usize))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "truncated header".to_string())?;
    let header = 4 * (1 + expected_dims);
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let body = bytes.len() - header;
    match expected {
        Some(n) if n == body => Ok(IdxArray {
            dims,
            data: bytes[header..].to_vec(),
        }),
        Some(n) if n > body => Err(format!(
            "truncated: the header {dims:?} needs {n} bytes of data, the file has {body}"
        )),
        Some(n) => Err(format!(
            "{} unexpected bytes after the {n} bytes of data the header {dims:?} describes",
            body - n
        )),
        None => Err(format!("header dimensions {dims:?} overflow")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(magic: u32, dims: &[u32], body: usize) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(std::iter::repeat_n(7u8, body));
        v
    }

    #[test]
    fn parses_a_well_formed_image_file() {
        let a = parse(&file(2051, &[2, 3, 4], 24), 3).unwrap();
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data.len(), 24);
    }

    #[test]
    fn rejects_bad_magic_truncation_and_trailing_bytes() {
        let err = parse(&file(2049, &[2, 3, 4], 24), 3).unwrap_err();
        assert!(
            err.contains("bad magic number 2049 (expected 2051"),
            "{err}"
        );
        let err = parse(&file(2051, &[2, 3, 4], 23), 3).unwrap_err();
        assert!(
            err.contains("truncated: the header [2, 3, 4] needs 24 bytes of data, the file has 23"),
            "{err}"
        );
        let err = parse(&file(2051, &[2, 3, 4], 30), 3).unwrap_err();
        assert!(err.contains("6 unexpected bytes"), "{err}");
        let err = parse(&[0, 0, 8], 1).unwrap_err();
        assert!(err.contains("too short"), "{err}");
        let err = parse(&2049u32.to_be_bytes(), 1).unwrap_err();
        assert!(err.contains("truncated header"), "{err}");
    }

    #[test]
    fn a_corrupt_gzip_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("quantnet-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.gz");
        std::fs::write(&path, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
        let err = read(&path, 1).unwrap_err().to_string();
        assert!(
            err.contains("bad.gz") && err.contains("bad gzip stream"),
            "{err}"
        );
        let missing = read(&dir.join("missing.gz"), 1).unwrap_err().to_string();
        assert!(
            missing.contains("reading") && missing.contains("missing.gz"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
