//! MNIST and Fashion-MNIST from their original IDX files.

use std::path::{Path, PathBuf};

use super::idx;
use crate::error::{Error, Result};

/// Which of the two IDX image data sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MnistKind {
    /// Handwritten digits (LeCun et al.).
    Mnist,
    /// Zalando's Fashion-MNIST (Xiao et al., 2017).
    FashionMnist,
}

impl MnistKind {
    /// The folder name used under a data root (`mnist`, `fashion-mnist`).
    pub fn dir_name(self) -> &'static str {
        match self {
            MnistKind::Mnist => "mnist",
            MnistKind::FashionMnist => "fashion-mnist",
        }
    }

    /// Where the standard archives are published.
    pub fn source_url(self) -> &'static str {
        match self {
            MnistKind::Mnist => "https://storage.googleapis.com/cvdf-datasets/mnist/",
            MnistKind::FashionMnist => {
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
            }
        }
    }
}

/// Training or test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// 60,000 images.
    Train,
    /// 10,000 images.
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Images with their labels.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// `count · channels · rows · cols` pixels, 0–255, channel planes, each row-major.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u16>,
    /// Channels per image (1 for MNIST, 3 for CIFAR).
    pub channels: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.channels * self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
    }
}

/// The path of `stem` in `dir`, gzipped or not.
fn file_in(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

/// Loads one split from `dir`, which holds `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
///
/// # Errors
/// [`Error::NotFound`] when a file is missing, [`Error::Corrupt`] for malformed files or when the
/// image and label counts disagree.
pub fn load(dir: &Path, split: Split) -> Result<ImageSet> {
    let find = |kind: &str| {
        let stem = format!("{}-{kind}-ubyte", split.prefix());
        file_in(dir, &stem).ok_or_else(|| Error::NotFound {
            dataset: format!("{stem}[.gz]"),
            looked: dir.display().to_string(),
            hint: "The folder must hold the four IDX files of MNIST or Fashion-MNIST.".into(),
        })
    };
    let (images_path, labels_path) = (find("images-idx3")?, find("labels-idx1")?);
    let images = idx::read(&images_path, 3)?;
    let labels = idx::read(&labels_path, 1)?;
    if images.dims[0] != labels.dims[0] {
        return Err(Error::Corrupt {
            path: labels_path,
            reason: format!(
                "{} labels for {} images in {}",
                labels.dims[0],
                images.dims[0],
                images_path.display()
            ),
        });
    }
    Ok(ImageSet {
        images: images.data,
        labels: labels.data.into_iter().map(u16::from).collect(),
        channels: 1,
        rows: images.dims[1],
        cols: images.dims[2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_real_fashion_mnist_test_split() {
        // The fixture: the first 200 test images (fixtures/README.md gives the class counts).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/fashion-mnist");
        let set = load(&dir, Split::Test).unwrap();
        assert_eq!((set.len(), set.rows, set.cols), (200, 28, 28));
        let counts: Vec<usize> = (0..10u16)
            .map(|class| set.labels.iter().filter(|&&l| l == class).count())
            .collect();
        assert_eq!(counts, [20, 27, 27, 17, 21, 16, 16, 20, 18, 18]);
        // Fashion-MNIST's first test image is an ankle boot (class 9).
        assert_eq!(set.labels[0], 9);
        assert!(set.image(0).iter().any(|&p| p > 0));
    }

    #[test]
    #[ignore = "needs the full Fashion-MNIST in ../shared/data; .ci/run runs it"]
    fn loads_the_full_fashion_mnist_test_split() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/fashion-mnist");
        assert!(dir.is_dir(), "this test needs {}", dir.display());
        let set = load(&dir, Split::Test).unwrap();
        assert_eq!((set.len(), set.rows, set.cols), (10_000, 28, 28));
        // Balanced: 1000 test images per class (README of the data set).
        for class in 0..10u16 {
            assert_eq!(set.labels.iter().filter(|&&l| l == class).count(), 1000);
        }
    }

    #[test]
    fn mismatched_counts_and_missing_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("quantnet-mnist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut images = 2051u32.to_be_bytes().to_vec();
        for d in [3u32, 2, 2] {
            images.extend(d.to_be_bytes());
        }
        images.extend([0u8; 12]);
        let mut labels = 2049u32.to_be_bytes().to_vec();
        labels.extend(2u32.to_be_bytes());
        labels.extend([1u8, 2]);
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), &images).unwrap();
        let missing = load(&dir, Split::Test).unwrap_err().to_string();
        assert!(
            missing.contains("t10k-labels-idx1-ubyte[.gz] not found"),
            "{missing}"
        );
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), &labels).unwrap();
        let err = load(&dir, Split::Test).unwrap_err().to_string();
        assert!(err.contains("2 labels for 3 images"), "{err}");
        assert!(!crate::data::Dataset::Mnist.is_in(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
