//! Real data sets in their original formats. A loader takes a directory.

#[cfg(feature = "train")]
pub mod batch;
pub mod cifar;
pub mod idx;
pub mod imagefolder;
#[cfg(feature = "train")]
pub mod images;
pub mod mnist;
#[cfg(feature = "train")]
pub mod stream;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[cfg(feature = "train")]
pub use batch::{ImageBatch, ImageBatcher, ImageItem};
#[cfg(feature = "train")]
pub use images::{FolderSet, ImageSource, Images};
pub use mnist::{ImageSet, MnistKind, Split};
use serde::{Deserialize, Serialize};
#[cfg(feature = "train")]
pub use stream::{Shard, StreamLoader, shard_order};

use crate::error::{Error, Result};
use crate::models::InputShape;

/// The image-classification data sets the CLI trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// MNIST digits, 28×28 grey.
    Mnist,
    /// Fashion-MNIST, 28×28 grey.
    FashionMnist,
    /// CIFAR-10, 32×32 RGB.
    Cifar10,
    /// An ImageNet-style image folder (`train/` and `val/` of class folders, or one folder with
    /// `labels.csv`), 224×224 RGB, 1000 classes; read from disk as training and evaluation use
    /// the images ([`FolderSet`]).
    Imagenet,
    /// Pascal VOC detection data (`Annotations/` + `JPEGImages/`, or the plain `annotations/` +
    /// `images/` layout), for the SSD detectors; read with [`crate::detect::DetectData::load`].
    Voc,
}

impl Dataset {
    /// Every data set.
    pub const ALL: [Dataset; 5] = [
        Dataset::Mnist,
        Dataset::FashionMnist,
        Dataset::Cifar10,
        Dataset::Imagenet,
        Dataset::Voc,
    ];

    /// The name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Cifar10 => "cifar10",
            Dataset::Imagenet => "imagenet",
            Dataset::Voc => "voc",
        }
    }

    /// The models' input for this data set.
    pub fn input(self) -> InputShape {
        match self {
            Dataset::Mnist | Dataset::FashionMnist => InputShape {
                channels: 1,
                height: 28,
                width: 28,
                classes: 10,
            },
            Dataset::Cifar10 => InputShape {
                channels: 3,
                height: 32,
                width: 32,
                classes: 10,
            },
            Dataset::Imagenet => InputShape {
                channels: 3,
                height: 224,
                width: 224,
                classes: 1000,
            },
            // SSD300's input and VOC's 20 classes (a detector's input is its own size and the
            // data's classes).
            Dataset::Voc => InputShape {
                channels: 3,
                height: 300,
                width: 300,
                classes: 20,
            },
        }
    }

    /// Per-channel mean and standard deviation of the training images (pixels in [0, 1]).
    pub fn normalisation(self) -> (Vec<f32>, Vec<f32>) {
        match self {
            Dataset::Mnist => (vec![0.1307], vec![0.3081]),
            Dataset::FashionMnist => (vec![0.2860], vec![0.3530]),
            Dataset::Cifar10 => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
            Dataset::Imagenet | Dataset::Voc => (
                imagefolder::IMAGENET_MEAN.to_vec(),
                imagefolder::IMAGENET_STD.to_vec(),
            ),
        }
    }

    /// Whether `dir` holds this data set's files (the training images, or for CIFAR-10 the
    /// training or test batches; for an image folder `train/`, `val/` or `labels.csv`).
    pub fn is_in(self, dir: &Path) -> bool {
        match self {
            Dataset::Mnist | Dataset::FashionMnist => {
                ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
                    .iter()
                    .any(|f| dir.join(f).is_file())
            }
            Dataset::Cifar10 => {
                dir.join("data_batch_1.bin").is_file() || dir.join("test_batch.bin").is_file()
            }
            Dataset::Imagenet => {
                dir.join("train").is_dir()
                    || dir.join("val").is_dir()
                    || dir.join("labels.csv").is_file()
            }
            Dataset::Voc => dir.join("Annotations").is_dir() || dir.join("annotations").is_dir(),
        }
    }

    /// The folder that holds the data set: `dir` itself, or its subfolder of the data set's
    /// name (`dir/fashion-mnist`), or the archive's own folder (`dir/cifar-10-batches-bin`).
    pub fn find_in(self, dir: &Path) -> Option<PathBuf> {
        let mut candidates = vec![dir.to_path_buf(), dir.join(self.name())];
        if self == Dataset::Voc {
            candidates.push(dir.join("VOCdevkit").join("VOC2007"));
        }
        if self == Dataset::Cifar10 {
            candidates.push(dir.join("cifar-10-batches-bin"));
            candidates.push(dir.join(self.name()).join("cifar-10-batches-bin"));
        }
        candidates.into_iter().find(|d| self.is_in(d))
    }

    /// An image folder's split: `dir/train` or `dir/val` where they exist, else `dir` itself.
    pub fn folder(dir: &Path, split: Split) -> PathBuf {
        let sub = dir.join(match split {
            Split::Train => "train",
            Split::Test => "val",
        });
        if sub.is_dir() { sub } else { dir.to_path_buf() }
    }

    /// Loads one split from `dir` into memory (an image folder: every image decoded; training
    /// reads folders through [`crate::qat::QatData::load`], which streams them).
    ///
    /// # Errors
    /// As the format's loader: missing, truncated or inconsistent files name the file.
    pub fn load(self, dir: &Path, split: Split) -> Result<ImageSet> {
        match self {
            Dataset::Mnist | Dataset::FashionMnist => mnist::load(dir, split),
            Dataset::Cifar10 => cifar::load(dir, split),
            Dataset::Imagenet => imagefolder::load(&Self::folder(dir, split), 224),
            Dataset::Voc => Err(Error::Config {
                field: "dataset",
                reason: "voc is a detection data set: read it with detect::DetectData::load \
                         (a detector, ssd-small or ssd300)"
                    .into(),
            }),
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                format!("`{s}`: expected mnist, fashion-mnist, cifar10, imagenet or voc")
            })
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): the output for the state `x + γ`; the generator's
/// `n`-th output from seed `s` is `splitmix64(s + n·γ)`.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `k` distinct indices of `0..len`, drawn uniformly with `seed` (a partial Fisher–Yates
/// shuffle driven by SplitMix64), in increasing order; all of them when `k ≥ len`. Calibration
/// images and `--limit` subsets are drawn with it: image folders are sorted by class, so the first
/// `k` images would be a few classes only.
pub fn sample_indices(len: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut all = shuffled_indices(len, k, seed);
    all.sort_unstable();
    all
}

/// [`sample_indices`] in the order drawn (a random order): for batches that must mix classes.
pub fn shuffled_indices(len: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        let z = splitmix64(state);
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z
    };
    let mut all: Vec<usize> = (0..len).collect();
    let k = k.min(len);
    for i in 0..k {
        let j = i + (next() % (len - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(k);
    all
}

#[cfg(test)]
mod sample_tests {
    use super::sample_indices;

    #[test]
    fn shuffled_samples_are_the_same_set_in_a_mixed_order() {
        let s = super::shuffled_indices(10_000, 1000, 42);
        let mut sorted = s.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, sample_indices(10_000, 1000, 42));
        // Not increasing: about half the neighbours are out of order.
        let descents = s.windows(2).filter(|w| w[0] > w[1]).count();
        assert!((400..600).contains(&descents), "{descents}");
    }

    #[test]
    fn samples_are_distinct_seeded_and_spread_over_class_sorted_data() {
        let s = sample_indices(10_000, 1000, 42);
        assert_eq!(s.len(), 1000);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        assert_eq!(
            s,
            sample_indices(10_000, 1000, 42),
            "same seed, same sample"
        );
        assert_ne!(s, sample_indices(10_000, 1000, 43));
        // 10 classes of 1000 images each, sorted by class (an image folder): the first 1000
        // images are one class; a sample holds every class at roughly its share (100 ± 40).
        let mut per_class = [0usize; 10];
        for i in &s {
            per_class[i / 1000] += 1;
        }
        assert!(
            per_class.iter().all(|&n| (60..=140).contains(&n)),
            "{per_class:?}"
        );
        assert_eq!(sample_indices(5, 10, 1), vec![0, 1, 2, 3, 4]);
        assert!(sample_indices(0, 3, 1).is_empty());
    }
}
