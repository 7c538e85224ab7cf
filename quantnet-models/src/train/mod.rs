//! burn-train glue (feature `train`): classification `TrainStep` and `InferenceStep` on
//! [`ImageBatch`]es with cross-entropy loss, for [`Model`] and, through [`Monitored`], for any
//! [`ImageModel`]; the quantization metrics; clipping in the `ŵ` domain; [`QatStep`] for any
//! model's own training step.
//!
//! - [`monitor`]: [`Monitored`], the wrapper burn-train trains (validation diagnostics, the
//!   per-step temperature tick, clipping).
//! - [`metric`]: [`SoftHardGapMetric`], [`LayerMetric`].
//! - [`clip`]: [`step_clipped_in_wq`], the official code's gradient clipping.
//! - [`step`]: [`QatStep`] and [`quantizer_scale_ids`], the recipe's parts for a user's own
//!   training step and `Learner`; [`parts`]: [`prepare`] and [`finish`], its steps before and
//!   after training.

pub mod clip;
pub mod metric;
pub mod monitor;
pub mod parts;
pub mod recipe;
pub mod step;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use quantnet_burn::QuantBackend;

pub use crate::stats::{LayerStats, layer_stats};
pub use clip::step_clipped_in_wq;
pub use metric::{LayerMetric, LayerValue, SoftHardGapMetric};
pub use monitor::{MonitorInput, MonitorOptions, Monitored, MonitoredOutput};
pub use parts::{Pass, finish, prepare};
pub use recipe::{Finished, Prepared, QuantizerScales, Recipe};
pub use step::{QatStep, quantizer_scale_ids};

use crate::data::ImageBatch;
use crate::models::{ImageModel, Model};

pub(crate) fn classify<B: QuantBackend, M: ImageModel<B>>(
    model: &M,
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
pub fn accuracy<B, M, S>(
    model: &M,
    items: &S,
    batcher: crate::data::ImageBatcher,
    batch_size: usize,
    device: &B::Device,
) -> f64
where
    B: QuantBackend,
    M: ImageModel<B>,
    S: crate::data::ImageSource + ?Sized,
{
    accuracy_on(
        model,
        items,
        batcher,
        batch_size,
        std::slice::from_ref(device),
    )
}

/// [`accuracy`] with the items split into one contiguous share per device, each share
/// evaluated on its device in its own thread (a device listed twice runs two threads on it).
pub fn accuracy_on<B, M, S>(
    model: &M,
    items: &S,
    batcher: crate::data::ImageBatcher,
    batch_size: usize,
    devices: &[B::Device],
) -> f64
where
    B: QuantBackend,
    M: ImageModel<B>,
    S: crate::data::ImageSource + ?Sized,
{
    use burn::data::dataloader::batcher::Batcher;
    let total = items.count();
    if total == 0 || devices.is_empty() {
        return 0.0;
    }
    let batch_size = batch_size.max(1);
    let count = |model: &M, range: std::ops::Range<usize>, device: &B::Device| {
        let mut correct = 0usize;
        let mut start = range.start;
        while start < range.end {
            let end = (start + batch_size).min(range.end);
            let chunk = (start..end).map(|i| items.item(i)).collect();
            let batch: ImageBatch<B> = batcher.batch(chunk, device);
            correct += hits(model.forward(batch.images), batch.targets);
            start = end;
        }
        correct
    };
    let correct = match devices {
        [device] => count(model, 0..total, device),
        _ => {
            let share = total.div_ceil(devices.len());
            std::thread::scope(|scope| {
                let workers: Vec<_> = devices
                    .iter()
                    .enumerate()
                    .map(|(k, device)| {
                        let range = (k * share).min(total)..((k + 1) * share).min(total);
                        let model = model.clone().to_device(device);
                        scope.spawn(move || count(&model, range, device))
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .sum()
            })
        }
    };
    100.0 * correct as f64 / total as f64
}

/// Correct predictions among `output`'s rows.
/// The predicted class (the argmax of the scores, the first on a tie) of every item of
/// `items`, in order, on one device: what [`accuracy_on`] counts, image by image.
pub fn predictions_on<B, M, S>(
    model: &M,
    items: &S,
    batcher: crate::data::ImageBatcher,
    batch_size: usize,
    device: &B::Device,
) -> Vec<usize>
where
    B: QuantBackend,
    M: ImageModel<B>,
    S: crate::data::ImageSource + ?Sized,
{
    use burn::data::dataloader::batcher::Batcher;
    let total = items.count();
    let mut out = Vec::with_capacity(total);
    let mut start = 0;
    while start < total {
        let end = (start + batch_size.max(1)).min(total);
        let chunk = (start..end).map(|i| items.item(i)).collect();
        let batch: ImageBatch<B> = batcher.batch(chunk, device);
        let classes = model.forward(batch.images).argmax(1).flatten::<1>(0, 1);
        out.extend(
            classes
                .into_data()
                .iter::<i64>()
                .map(|c| usize::try_from(c).unwrap_or(0)),
        );
        start = end;
    }
    out
}

pub(crate) fn hits<B: Backend>(output: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> usize {
    let hits: i64 = output
        .argmax(1)
        .flatten::<1>(0, 1)
        .equal(targets)
        .int()
        .sum()
        .into_scalar()
        .elem();
    usize::try_from(hits).unwrap_or(0)
}
