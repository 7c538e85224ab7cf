//! The images a run trains and tests on, as items made when they are read (feature `train`).
//!
//! [`Images`] is what [`crate::qat::QatData`] holds and what Burn's data loaders read (it is a
//! Burn [`Dataset`]): either a decoded set kept as bytes (MNIST, Fashion-MNIST, CIFAR-10: one byte
//! per pixel, normalised to floats only for the images of the batch being made) or an image
//! folder read from disk ([`FolderSet`]: every image is decoded, resized, cropped and normalised
//! when it is read, on the data loader's worker threads, so memory does not grow with the
//! folder). [`ImageSource`] is the one interface evaluation reads through, for these and for
//! plain item lists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::batch::{ImageBatcher, ImageItem};
use super::{Dataset, ImageSet, Split, imagefolder, splitmix64};
use crate::error::{Error, Result};

/// Images read one at a time by index.
pub trait ImageSource: Sync {
    /// How many images.
    fn count(&self) -> usize;
    /// Image `index` (`< count()`).
    fn item(&self, index: usize) -> ImageItem;
}

impl Images {
    /// Image `index` as read in round (epoch) `round`: an error naming the file where an image
    /// file cannot be read.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Corrupt`] for an image folder's file.
    pub fn read(&self, index: usize, round: u64) -> Result<ImageItem> {
        match self {
            Images::Folder(folder) => folder.read(index, round),
            other => Ok(other.item(index)),
        }
    }
}

impl ImageSource for [ImageItem] {
    fn count(&self) -> usize {
        self.len()
    }

    fn item(&self, index: usize) -> ImageItem {
        self[index].clone()
    }
}

impl ImageSource for Vec<ImageItem> {
    fn count(&self) -> usize {
        self.len()
    }

    fn item(&self, index: usize) -> ImageItem {
        self[index].clone()
    }
}

/// An image folder read lazily: the list of files and classes is all it holds.
///
/// Reading image `i` decodes its file, resizes the shorter side to `size · 256/224` and crops
/// `size × size`: the centre for testing; for training (with [`FolderSet::augmented`]) a random
/// crop and a random horizontal flip, the paper's ImageNet augmentation (paper-spec §6). The
/// read of image `i` in round (epoch) `k` draws its crop from `(seed, i, k)`, so a run's
/// augmentation does not depend on which worker thread reads which image, and a resumed run
/// draws what the uninterrupted one did.
#[derive(Debug)]
pub struct FolderSet {
    entries: Vec<(PathBuf, u16)>,
    size: u32,
    means: [f32; 3],
    stds: [f32; 3],
    augment: Option<u64>,
}

impl FolderSet {
    /// The images of `dir` (class folders, or `labels.csv`; [`imagefolder::list`]) at
    /// `size × size`, normalised with ImageNet's per-channel mean and std.
    ///
    /// # Errors
    /// As [`imagefolder::list`]; [`Error::Invalid`] for a size of 0 or above 65535.
    pub fn open(dir: &Path, size: usize) -> Result<Self> {
        let entries = imagefolder::list(dir)?;
        let size = u32::try_from(size)
            .ok()
            .filter(|s| (1..=u32::from(u16::MAX)).contains(s))
            .ok_or_else(|| Error::Invalid(format!("image size {size}: expected 1 to 65535")))?;
        Ok(Self {
            entries,
            size,
            means: imagefolder::IMAGENET_MEAN,
            stds: imagefolder::IMAGENET_STD,
            augment: None,
        })
    }

    /// Training reads: a random crop and flip per read, drawn from `seed`.
    pub fn augmented(mut self, seed: u64) -> Self {
        self.augment = Some(seed);
        self
    }

    /// Keeps the images at `indices` (in that order).
    pub fn select(&self, indices: &[usize]) -> Self {
        Self {
            entries: indices.iter().map(|&i| self.entries[i].clone()).collect(),
            size: self.size,
            means: self.means,
            stds: self.stds,
            augment: self.augment,
        }
    }

    /// The image side.
    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// The files and their classes.
    pub fn entries(&self) -> &[(PathBuf, u16)] {
        &self.entries
    }

    /// Reads image `index` in round `round` (the epoch: training reads draw their crop from it).
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Corrupt`] naming the file.
    pub fn read(&self, index: usize, round: u64) -> Result<ImageItem> {
        let (path, label) = &self.entries[index];
        let draw = self
            .augment
            .map(|seed| splitmix64(seed ^ splitmix64(splitmix64(index as u64) ^ round)));
        let pixels = imagefolder::load_image_cropped(path, self.size * 256 / 224, self.size, draw)?;
        let plane = (self.size * self.size) as usize;
        Ok(ImageItem {
            pixels: pixels
                .iter()
                .enumerate()
                .map(|(j, &p)| {
                    let c = j / plane;
                    (f32::from(p) / 255.0 - self.means[c]) / self.stds[c]
                })
                .collect(),
            label: i64::from(*label),
        })
    }
}

/// The images of a run: see the [module docs](self). Cloning shares them.
#[derive(Clone, Debug)]
pub enum Images {
    /// Items made by the caller.
    Items(Arc<Vec<ImageItem>>),
    /// A decoded set kept as bytes, normalised per channel as items are read.
    Bytes {
        /// The images.
        set: Arc<ImageSet>,
        /// Per-channel means (the last repeats for further channels).
        means: Vec<f32>,
        /// Per-channel standard deviations.
        stds: Vec<f32>,
        /// The images of `set` this holds, in order (`None`: all).
        keep: Option<Arc<Vec<usize>>>,
    },
    /// An image folder read from disk.
    Folder(Arc<FolderSet>),
}

impl Images {
    /// `set`, normalised per channel with `(means, stds)` as its images are read.
    pub fn bytes(set: ImageSet, (means, stds): (Vec<f32>, Vec<f32>)) -> Self {
        Images::Bytes {
            set: Arc::new(set),
            means,
            stds,
            keep: None,
        }
    }

    /// How many images.
    pub fn len(&self) -> usize {
        self.count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Whether the images are read from files (and so worth several loader threads).
    pub fn is_streamed(&self) -> bool {
        matches!(self, Images::Folder(_))
    }

    /// Images per evaluation batch: 500, or 50 for images read from files (bounded memory).
    pub fn eval_batch_size(&self) -> usize {
        if self.is_streamed() { 50 } else { 500 }
    }

    /// The image folder `dir` read from disk at `size × size` ([`FolderSet`]), with the
    /// training augmentation drawn from `augment` if given, and its batcher.
    ///
    /// # Errors
    /// As [`FolderSet::open`].
    pub fn folder(dir: &Path, size: usize, augment: Option<u64>) -> Result<(Self, ImageBatcher)> {
        let folder = FolderSet::open(dir, size)?;
        let folder = match augment {
            Some(seed) => folder.augmented(seed),
            None => folder,
        };
        let batcher = ImageBatcher {
            channels: 3,
            rows: size,
            cols: size,
        };
        Ok((Images::Folder(Arc::new(folder)), batcher))
    }

    /// One split of `dataset` from `dir` and its batcher: an image folder read from disk (the
    /// images of [`Dataset::input`]'s size; training images in a `seed`ed random order, with the
    /// paper's augmentation drawn from `seed`: calibration and batch-norm re-estimation read them
    /// augmented too, at round 0), the other sets decoded into memory as bytes.
    ///
    /// # Errors
    /// As the data set's loader.
    pub fn load(
        dataset: Dataset,
        dir: &Path,
        split: Split,
        seed: u64,
    ) -> Result<(Self, ImageBatcher)> {
        if dataset == Dataset::Imagenet {
            let augment = (split == Split::Train).then_some(seed);
            let size = dataset.input().height;
            let (images, batcher) = Images::folder(&Dataset::folder(dir, split), size, augment)?;
            // Folders list their images class by class; the training loaders give each device a
            // contiguous share, so the training images are put in a seeded random order once
            // (every device then sees every class).
            let images = match split {
                Split::Train => {
                    images.select(&super::shuffled_indices(images.len(), images.len(), seed))
                }
                Split::Test => images,
            };
            return Ok((images, batcher));
        }
        let set = dataset.load(dir, split)?;
        let batcher = set.batcher();
        Ok((Images::bytes(set, dataset.normalisation()), batcher))
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        match self {
            Images::Items(items) => Images::Items(Arc::new(
                indices.iter().map(|&i| items[i].clone()).collect(),
            )),
            Images::Bytes {
                set,
                means,
                stds,
                keep,
            } => Images::Bytes {
                set: set.clone(),
                means: means.clone(),
                stds: stds.clone(),
                keep: Some(Arc::new(
                    indices
                        .iter()
                        .map(|&i| keep.as_ref().map_or(i, |k| k[i]))
                        .collect(),
                )),
            },
            Images::Folder(folder) => Images::Folder(Arc::new(folder.select(indices))),
        }
    }
}

impl From<Vec<ImageItem>> for Images {
    fn from(items: Vec<ImageItem>) -> Self {
        Images::Items(Arc::new(items))
    }
}

impl ImageSource for Images {
    fn count(&self) -> usize {
        match self {
            Images::Items(items) => items.len(),
            Images::Bytes { set, keep, .. } => keep.as_ref().map_or(set.len(), |k| k.len()),
            Images::Folder(folder) => folder.entries.len(),
        }
    }

    /// # Panics
    /// For an image file that cannot be read or decoded (the message names it): a data
    /// loader's worker has no other way to report it.
    fn item(&self, index: usize) -> ImageItem {
        match self {
            Images::Items(items) => items[index].clone(),
            Images::Bytes {
                set,
                means,
                stds,
                keep,
            } => set.item_normalised(keep.as_ref().map_or(index, |k| k[index]), means, stds),
            Images::Folder(folder) => folder.read(index, 0).unwrap_or_else(|e| panic!("{e}")),
        }
    }
}

impl burn::data::dataset::Dataset<ImageItem> for Images {
    fn get(&self, index: usize) -> Option<ImageItem> {
        (index < self.count()).then(|| self.item(index))
    }

    fn len(&self) -> usize {
        self.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two class folders of `w × h` PNGs whose pixel (x, y) is (x, y, 100) in RGB: a crop's
    /// position and a flip can be read off its pixels (resized 1:1 when the shorter side is
    /// already `size · 256/224`).
    fn folder(name: &str, w: u32, h: u32) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("quantnet-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for class in ["a", "b"] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 100]));
            img.save(dir.join(class).join("x.png")).unwrap();
        }
        dir
    }

    /// The raw byte of channel `c` at (x, y) of a normalised item.
    fn byte(item: &ImageItem, size: usize, c: usize, x: usize, y: usize) -> u8 {
        let v = item.pixels[c * size * size + y * size + x];
        let (m, s) = (imagefolder::IMAGENET_MEAN[c], imagefolder::IMAGENET_STD[c]);
        ((v * s + m) * 255.0).round() as u8
    }

    #[test]
    fn test_reads_are_the_in_memory_loaders_centre_crops() {
        let dir = folder("centre", 40, 20);
        let lazy = Images::Folder(Arc::new(FolderSet::open(&dir, 16).unwrap()));
        let eager = Images::bytes(
            imagefolder::load(&dir, 16).unwrap(),
            (
                imagefolder::IMAGENET_MEAN.to_vec(),
                imagefolder::IMAGENET_STD.to_vec(),
            ),
        );
        assert_eq!((lazy.len(), eager.len()), (2, 2));
        assert!(lazy.is_streamed() && !eager.is_streamed());
        for i in 0..2 {
            let (a, b) = (lazy.item(i), eager.item(i));
            assert_eq!(a.label, i as i64);
            assert_eq!(a.label, b.label);
            assert_eq!(a.pixels, b.pixels, "image {i}");
        }
        // Reading again gives the same centre crop (no augmentation at test time).
        assert_eq!(lazy.item(0).pixels, lazy.item(0).pixels);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn training_reads_draw_a_crop_and_flip_per_round_from_the_seed() {
        // 16 → resize side 18: a 36×18 image stays 36×18 (shorter side already 18), so the
        // crop's top-left pixel holds its offset (x0, y0) in R and G unless flipped.
        let size = 16;
        let dir = folder("augment", 36, 18);
        let set = || FolderSet::open(&dir, size).unwrap().augmented(7);
        let a = set();
        let reads: Vec<ImageItem> = (0..8).map(|round| a.read(0, round).unwrap()).collect();
        let mut seen = std::collections::HashSet::new();
        let mut flips = 0;
        for item in &reads {
            let (left, right) = (byte(item, size, 0, 0, 0), byte(item, size, 0, size - 1, 0));
            let flipped = left > right;
            flips += usize::from(flipped);
            let x0 = if flipped { right } else { left };
            let y0 = byte(item, size, 1, 0, 0);
            // A crop of the image: 16 consecutive columns and rows, inside 36×18.
            assert_eq!(left.abs_diff(right), 15, "{left} {right}");
            assert!(usize::from(x0) + size <= 36 && usize::from(y0) + size <= 18);
            assert_eq!(byte(item, size, 1, 0, size - 1), y0 + 15);
            assert_eq!(byte(item, size, 2, 3, 3), 100);
            seen.insert((x0, y0, flipped));
        }
        assert!(seen.len() > 3, "the reads drew different crops: {seen:?}");
        assert!((1..8).contains(&flips), "{flips} of 8 reads flipped");
        // An image's read in a round is the same whoever reads it and whatever was read before
        // (a resumed run draws what the uninterrupted one did).
        let b = set();
        let _ = b.read(1, 3).unwrap();
        for (round, item) in reads.iter().enumerate().rev() {
            assert_eq!(b.read(0, round as u64).unwrap().pixels, item.pixels);
        }
        // Another seed draws other crops.
        let c = FolderSet::open(&dir, size).unwrap().augmented(8);
        let other: Vec<_> = (0..8)
            .map(|round| c.read(0, round).unwrap().pixels)
            .collect();
        assert_ne!(
            other,
            reads.iter().map(|r| r.pixels.clone()).collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn selections_and_unreadable_files() {
        let dir = folder("select", 20, 20);
        let all = Images::Folder(Arc::new(FolderSet::open(&dir, 8).unwrap()));
        let second = all.select(&[1]);
        assert_eq!(second.len(), 1);
        assert_eq!(second.item(0).label, 1);
        let bytes = Images::bytes(imagefolder::load(&dir, 8).unwrap(), (vec![0.5], vec![0.25]));
        let picked = bytes.select(&[1, 0]).select(&[0]);
        assert_eq!(picked.item(0).label, 1);
        assert_eq!(picked.item(0).pixels, bytes.item(1).pixels);
        // A file that breaks after listing: an error naming it (read), a panic naming it in a
        // loader (item), never a wrong image.
        std::fs::write(dir.join("b").join("x.png"), b"not a png").unwrap();
        let set = FolderSet::open(&dir, 8).unwrap();
        let err = set.read(1, 0).unwrap_err().to_string();
        assert!(
            err.contains("x.png") && err.contains("not a readable image"),
            "{err}"
        );
        let images = Images::Folder(Arc::new(set));
        let panic = std::panic::catch_unwind(|| images.item(1)).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("not a readable image"), "{message}");
        assert!(FolderSet::open(&dir, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
