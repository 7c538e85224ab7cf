//! CIFAR-10 from its original binary batches (`cifar-10-batches-bin`).
//!
//! Each record is one label byte (0–9) and 3072 pixel bytes: the 32×32 red plane, then green,
//! then blue, each row-major. The training split is `data_batch_1.bin` … `data_batch_5.bin`, the
//! test split `test_batch.bin`.

use std::path::Path;

use super::{ImageSet, Split};
use crate::error::{Error, Result};

const RECORD: usize = 1 + 3 * 32 * 32;

/// Where the standard archive is published.
pub const SOURCE_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";

/// Reads one binary batch file.
///
/// # Errors
/// [`Error::Io`] when it cannot be read; [`Error::Corrupt`] when its length is not a whole number
/// of records or a label is not 0–9.
pub fn read_batch(path: &Path) -> Result<ImageSet> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated?)",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / RECORD;
    let mut images = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] > 9 {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("record {i} has label {}, not 0–9", record[0]),
            });
        }
        labels.push(u16::from(record[0]));
        images.extend_from_slice(&record[1..]);
    }
    Ok(ImageSet {
        images,
        labels,
        channels: 3,
        rows: 32,
        cols: 32,
    })
}

fn files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// Loads one split from `dir` (the `cifar-10-batches-bin` folder).
///
/// # Errors
/// [`Error::NotFound`] naming the missing file; as [`read_batch`] otherwise.
pub fn load(dir: &Path, split: Split) -> Result<ImageSet> {
    let mut set: Option<ImageSet> = None;
    for name in files(split) {
        let path = dir.join(&name);
        if !path.is_file() {
            return Err(Error::NotFound {
                dataset: name,
                looked: dir.display().to_string(),
                hint: format!("The folder must hold the CIFAR-10 binary batches ({SOURCE_URL})."),
            });
        }
        let part = read_batch(&path)?;
        match &mut set {
            Some(s) => {
                s.images.extend(part.images);
                s.labels.extend(part.labels);
            }
            None => set = Some(part),
        }
    }
    set.ok_or_else(|| Error::Invalid("no CIFAR-10 batch files listed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_real_sample_batch() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/cifar10/test_batch_first20.bin");
        assert!(
            path.is_file(),
            "this test needs the CIFAR-10 sample batch at {}",
            path.display()
        );
        let set = read_batch(&path).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.rows, set.cols),
            (20, 3, 32, 32)
        );
        // The labels and the first red bytes of image 0, from the sample's README.
        assert_eq!(
            set.labels,
            [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
        );
        assert_eq!(
            &set.image(0)[..8],
            &[158, 159, 165, 166, 160, 156, 162, 159]
        );
    }

    #[test]
    fn truncated_files_and_bad_labels_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("quantnet-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test_batch.bin");
        std::fs::write(&path, vec![0u8; RECORD + 5]).unwrap();
        let err = read_batch(&path).unwrap_err().to_string();
        assert!(
            err.contains("test_batch.bin") && err.contains("truncated"),
            "{err}"
        );
        let mut bad = vec![0u8; RECORD];
        bad[0] = 12;
        std::fs::write(&path, bad).unwrap();
        let err = load(&dir, Split::Test).unwrap_err().to_string();
        assert!(err.contains("label 12"), "{err}");
        let err = load(&dir, Split::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_1.bin not found"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
