//! Image items and batches for Burn's data loaders (feature `train`).

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::ImageSet;

/// One image as floats, with its class.
#[derive(Clone, Debug)]
pub struct ImageItem {
    /// `rows · cols` values, row-major.
    pub pixels: Vec<f32>,
    /// The class index.
    pub label: i64,
}

/// A batch of single-channel images and their classes.
#[derive(Clone, Debug)]
pub struct ImageBatch<B: Backend> {
    /// `[batch, 1, rows, cols]`.
    pub images: Tensor<B, 4>,
    /// `[batch]`.
    pub targets: Tensor<B, 1, Int>,
}

/// Stacks [`ImageItem`]s of `rows × cols` pixels into an [`ImageBatch`].
#[derive(Clone, Copy, Debug)]
pub struct ImageBatcher {
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
                TensorData::new(pixels, [n, 1, self.rows, self.cols]),
                device,
            ),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

impl ImageSet {
    /// The first `n` images (or all of them) as items with pixels `(p/255 − mean)/std`.
    pub fn items(&self, n: usize, mean: f32, std: f32) -> Vec<ImageItem> {
        (0..n.min(self.len()))
            .map(|i| ImageItem {
                pixels: self
                    .image(i)
                    .iter()
                    .map(|&p| (f32::from(p) / 255.0 - mean) / std)
                    .collect(),
                label: i64::from(self.labels[i]),
            })
            .collect()
    }

    /// A batcher for this set's image size.
    pub fn batcher(&self) -> ImageBatcher {
        ImageBatcher {
            rows: self.rows,
            cols: self.cols,
        }
    }
}
