//! Image items and batches for Burn's data loaders (feature `train`).

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::ImageSet;

/// One image as floats, with its class.
#[derive(Clone, Debug)]
pub struct ImageItem {
    /// `channels · rows · cols` values, channel planes, each row-major.
    pub pixels: Vec<f32>,
    /// The class index.
    pub label: i64,
}

/// A batch of images and their classes.
#[derive(Clone, Debug)]
pub struct ImageBatch<B: Backend> {
    /// `[batch, channels, rows, cols]`.
    pub images: Tensor<B, 4>,
    /// `[batch]`.
    pub targets: Tensor<B, 1, Int>,
}

/// Stacks [`ImageItem`]s of `channels × rows × cols` pixels into an [`ImageBatch`].
#[derive(Clone, Copy, Debug)]
pub struct ImageBatcher {
    /// Channels per image.
    pub channels: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
}

impl<B: Backend> Batcher<B, ImageItem, ImageBatch<B>> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &B::Device) -> ImageBatch<B> {
        let n = items.len();
        let pixels: Vec<f32> = items
            .iter()
            .flat_map(|i| i.pixels.iter().copied())
            .collect();
        let labels: Vec<i64> = items.iter().map(|i| i.label).collect();
        ImageBatch {
            images: Tensor::from_data(
                TensorData::new(pixels, [n, self.channels, self.rows, self.cols]),
                device,
            ),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

impl ImageSet {
    /// The first `n` images (or all of them) as items with pixels `(p/255 − mean)/std`.
    pub fn items(&self, n: usize, mean: f32, std: f32) -> Vec<ImageItem> {
        self.items_normalised(n, &[mean], &[std])
    }

    /// As [`ImageSet::items`] with a mean and std per channel (the last one repeats if fewer
    /// are given than there are channels).
    pub fn items_normalised(&self, n: usize, means: &[f32], stds: &[f32]) -> Vec<ImageItem> {
        (0..n.min(self.len()))
            .map(|i| self.item_normalised(i, means, stds))
            .collect()
    }

    /// Image `i` as an item with pixels `(p/255 − mean)/std` per channel (the last mean and std
    /// repeat if fewer are given than there are channels).
    pub fn item_normalised(&self, i: usize, means: &[f32], stds: &[f32]) -> ImageItem {
        let plane = self.rows * self.cols;
        let pick = |v: &[f32], c: usize| v.get(c).or(v.last()).copied().unwrap_or(0.0);
        ImageItem {
            pixels: self
                .image(i)
                .iter()
                .enumerate()
                .map(|(j, &p)| {
                    let c = j / plane;
                    (f32::from(p) / 255.0 - pick(means, c)) / pick(stds, c).max(f32::MIN_POSITIVE)
                })
                .collect(),
            label: i64::from(self.labels[i]),
        }
    }

    /// A batcher for this set's image size.
    pub fn batcher(&self) -> ImageBatcher {
        ImageBatcher {
            channels: self.channels,
            rows: self.rows,
            cols: self.cols,
        }
    }
}
