//! MNIST as the Burn book's guide has it (an item per image, a batcher that normalises), read
//! from the four IDX files in a folder instead of downloaded.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use quantnet_models::data::{Split, mnist};

/// One image, its pixels 0–255.
#[derive(Clone, Debug)]
pub struct MnistItem {
    pub image: [[f32; 28]; 28],
    pub label: u8,
}

/// A split of MNIST, whole or its first `limit` images.
#[derive(Clone)]
pub struct MnistDataset {
    items: Vec<MnistItem>,
}

impl MnistDataset {
    pub fn load(dir: &Path, split: Split, limit: Option<usize>) -> quantnet_models::Result<Self> {
        let set = mnist::load(dir, split)?;
        let n = limit.unwrap_or(usize::MAX).min(set.len());
        let items = (0..n)
            .map(|i| MnistItem {
                image: std::array::from_fn(|r| {
                    std::array::from_fn(|c| f32::from(set.image(i)[r * 28 + c]))
                }),
                label: set.labels[i] as u8,
            })
            .collect();
        Ok(Self { items })
    }
}

impl Dataset<MnistItem> for MnistDataset {
    fn get(&self, index: usize) -> Option<MnistItem> {
        self.items.get(index).cloned()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

#[derive(Clone, Default)]
pub struct MnistBatcher;

#[derive(Clone, Debug)]
pub struct MnistBatch<B: Backend> {
    pub images: Tensor<B, 3>,
    pub targets: Tensor<B, 1, Int>,
}

impl<B: Backend> Batcher<B, MnistItem, MnistBatch<B>> for MnistBatcher {
    fn batch(&self, items: Vec<MnistItem>, device: &B::Device) -> MnistBatch<B> {
        let n = items.len();
        let pixels: Vec<f32> = items.iter().flat_map(|i| i.image.concat()).collect();
        let images = Tensor::<B, 3>::from_data(TensorData::new(pixels, [n, 28, 28]), device);
        // The mean and standard deviation of MNIST's training images.
        let images = ((images / 255) - 0.1307) / 0.3081;
        let labels: Vec<i64> = items.iter().map(|i| i64::from(i.label)).collect();
        let targets = Tensor::from_data(TensorData::new(labels, [n]), device);
        MnistBatch { images, targets }
    }
}
