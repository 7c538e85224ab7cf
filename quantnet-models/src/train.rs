//! burn-train glue (feature `train`): every [`Model`] is a classification `TrainStep` and
//! `InferenceStep` on [`ImageBatch`]es, with cross-entropy loss.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use quantnet_burn::QuantBackend;

use crate::data::ImageBatch;
use crate::models::Model;

fn classify<B: QuantBackend>(
    model: &Model<B>,
    images: Tensor<B, 4>,
    targets: Tensor<B, 1, Int>,
) -> ClassificationOutput<B> {
    let output = model.forward(images);
    let loss = CrossEntropyLossConfig::new()
        .init(&output.device())
        .forward(output.clone(), targets.clone());
    ClassificationOutput::new(loss, output, targets)
}

impl<B: AutodiffBackend + QuantBackend> TrainStep for Model<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let item = classify(self, batch.images, batch.targets);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: QuantBackend> InferenceStep for Model<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        classify(self, batch.images, batch.targets)
    }
}

/// Accuracy (%) of `model` on `items`, in batches of `batch_size`, on `model`'s backend.
pub fn accuracy<B: QuantBackend>(
    model: &Model<B>,
    items: &[crate::data::ImageItem],
    batcher: crate::data::ImageBatcher,
    batch_size: usize,
    device: &B::Device,
) -> f64 {
    use burn::data::dataloader::batcher::Batcher;
    if items.is_empty() {
        return 0.0;
    }
    let mut correct = 0usize;
    for chunk in items.chunks(batch_size.max(1)) {
        let batch: ImageBatch<B> = batcher.batch(chunk.to_vec(), device);
        let predicted = model.forward(batch.images).argmax(1).flatten::<1>(0, 1);
        let hits: i64 = predicted
            .equal(batch.targets)
            .int()
            .sum()
            .into_scalar()
            .elem();
        correct += usize::try_from(hits).unwrap_or(0);
    }
    100.0 * correct as f64 / items.len() as f64
}
