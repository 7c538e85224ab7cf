//! The training: the model's steps, the config and `train`, the user's own burn-train
//! `SupervisedTraining` and `Learner`.

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::AdamConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use quantnet_models::qat::PlainRenderer;

use crate::data::{MnistBatch, MnistBatcher, MnistDataset};
use crate::model::{Model, ModelConfig};

impl<B: Backend> Model<B> {
    pub fn forward_classification(
        &self,
        images: Tensor<B, 3>,
        targets: Tensor<B, 1, Int>,
    ) -> ClassificationOutput<B> {
        let output = self.forward(images);
        let loss = CrossEntropyLossConfig::new()
            .init(&output.device())
            .forward(output.clone(), targets.clone());
        ClassificationOutput::new(loss, output, targets)
    }
}

impl<B: AutodiffBackend> TrainStep for Model<B> {
    type Input = MnistBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: MnistBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let item = self.forward_classification(batch.images, batch.targets);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: Backend> InferenceStep for Model<B> {
    type Input = MnistBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: MnistBatch<B>) -> ClassificationOutput<B> {
        self.forward_classification(batch.images, batch.targets)
    }
}

#[derive(Config, Debug)]
pub struct TrainingConfig {
    pub model: ModelConfig,
    pub optimizer: AdamConfig,
    #[config(default = 10)]
    pub num_epochs: usize,
    #[config(default = 64)]
    pub batch_size: usize,
    #[config(default = 42)]
    pub seed: u64,
    #[config(default = 1.0e-3)]
    pub learning_rate: f64,
}

/// Test accuracy (%) over the whole test set.
pub fn accuracy<B: Backend>(model: &Model<B>, test: &MnistDataset, device: &B::Device) -> f64 {
    let items: Vec<_> = test.iter().collect();
    let mut correct = 0;
    for chunk in items.chunks(500) {
        let batch: MnistBatch<B> = MnistBatcher.batch(chunk.to_vec(), device);
        let predicted = model.forward(batch.images).argmax(1).flatten::<1>(0, 1);
        correct += predicted
            .equal(batch.targets)
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>();
    }
    100.0 * correct as f64 / items.len() as f64
}

pub fn train<B: AutodiffBackend>(
    artifact_dir: &str,
    config: TrainingConfig,
    (train, test): (MnistDataset, MnistDataset),
    device: B::Device,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(artifact_dir)?;
    config.save(format!("{artifact_dir}/config.json"))?;
    B::seed(&device, config.seed);

    let train_loader = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(config.batch_size)
        .shuffle(config.seed)
        .num_workers(1)
        .build(train.clone());
    let test_loader = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(500)
        .num_workers(1)
        .build(test.clone());

    let training = SupervisedTraining::new(artifact_dir, train_loader, test_loader)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .renderer(PlainRenderer::new("full precision"))
        .num_epochs(config.num_epochs)
        .launch(Learner::new(
            config.model.init::<B>(&device),
            config.optimizer.init(),
            config.learning_rate,
        ));
    let model = training.model;
    let fp = accuracy(&model, &test, &device);
    println!("full precision: test accuracy {fp:.2}%");
    Ok(())
}
