//! Fine-tune an existing Burn CNN into a quantized one with Quantization Networks.
//!
//! `cargo run --release --example finetune_existing_model [-- --data-dir DIR] [--smoke]`
//!
//! 1. Defines a plain Burn CNN the way a Burn user would (`Cnn`: conv-relu-pool ×2, linear) and
//!    trains it in full precision on MNIST for one epoch (burn-train's Learner).
//! 2. Swaps its second convolution for a `QuantConv2d` with ternary weights (`from_float` keeps
//!    the trained weights; β = 5p/(4q) and the ±0.05 thresholds come from them) and puts a 2-bit
//!    `QuantAct` after its ReLU and pooling, calibrated on 1000 training images. The first conv
//!    and the last linear stay full precision (the paper's policy).
//! 3. Fine-tunes with the temperature hook (weights T = 5·(epoch+1), activations T = 10·(epoch+1))
//!    and prints the full-precision and the hard-quantized test accuracy on all 10,000 test images.
//! 4. Exports conv2's ternary weights as Burn's own quantized tensor (`to_native`: Q2S), saves the
//!    plain `Cnn` with Burn's recorder, loads it back as a plain `Cnn` and checks that its accuracy
//!    (float activations: Burn has no counterpart of the activation quantizer) equals the
//!    quantnet model's with its activation quantizer switched off.
//!
//! `--smoke` uses 2000 training images and one fine-tuning epoch (seconds). MNIST (the four IDX
//! files) is read from `--data-dir` (default `../shared/data/mnist`).

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::{AutodiffModule, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::AdamConfig;
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use quantnet_burn::train::{TemperatureHook, TemperatureMetric};
use quantnet_burn::{
    LevelSet, QuantAct, QuantBackend, QuantConv2d, QuantMode, QuantizerConfig, Temperature,
    TemperatureSchedule,
};
use quantnet_models::data::{ImageBatch, ImageBatcher, ImageItem, Split, mnist};
use quantnet_models::qat::PlainRenderer;

type B = Autodiff<Flex>;

// ---- The user's model, plain Burn ---------------------------------------------------------

#[derive(Module, Debug)]
struct Cnn<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    pool: MaxPool2d,
    relu: Relu,
    fc: Linear<B>,
}

impl<B: Backend> Cnn<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([1, 8], [3, 3]).init(device),
            conv2: Conv2dConfig::new([8, 16], [3, 3]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            relu: Relu::new(),
            fc: LinearConfig::new(16 * 5 * 5, 10).init(device),
        }
    }

    /// Everything up to the input of `conv2` (28x28 -> 8x13x13).
    fn stem(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.pool.forward(self.relu.forward(self.conv1.forward(x)))
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let h = self
            .pool
            .forward(self.relu.forward(self.conv2.forward(self.stem(x))));
        self.fc.forward(h.flatten(1, 3))
    }
}

// ---- The same network, quantized ------------------------------------------------------------

#[derive(Module, Debug)]
struct QuantCnn<B: Backend> {
    conv1: Conv2d<B>,
    conv2: QuantConv2d<B>,
    act2: QuantAct<B>,
    pool: MaxPool2d,
    relu: Relu,
    fc: Linear<B>,
}

impl<B: QuantBackend> QuantCnn<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let h = self.pool.forward(self.relu.forward(self.conv1.forward(x)));
        let h = self.pool.forward(self.relu.forward(self.conv2.forward(h)));
        // The activation quantizer comes after the ReLU and the pooling; it does not replace them.
        self.fc.forward(self.act2.forward(h).flatten(1, 3))
    }
}

// ---- Training glue (burn-train) -------------------------------------------------------------

const BATCHER: ImageBatcher = ImageBatcher {
    channels: 1,
    rows: 28,
    cols: 28,
};

fn classify<B: Backend>(
    output: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> ClassificationOutput<B> {
    let loss = CrossEntropyLossConfig::new()
        .init(&output.device())
        .forward(output.clone(), targets.clone());
    ClassificationOutput::new(loss, output, targets)
}

macro_rules! steps {
    ($model:ident, $bound:path) => {
        impl<B: AutodiffBackend + $bound> TrainStep for $model<B> {
            type Input = ImageBatch<B>;
            type Output = ClassificationOutput<B>;
            fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
                let item = classify(self.forward(batch.images), batch.targets);
                TrainOutput::new(self, item.loss.backward(), item)
            }
        }
        impl<B: $bound> InferenceStep for $model<B> {
            type Input = ImageBatch<B>;
            type Output = ClassificationOutput<B>;
            fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
                classify(self.forward(batch.images), batch.targets)
            }
        }
    };
}
steps!(Cnn, Backend);
steps!(QuantCnn, QuantBackend);

fn loader<Bk: Backend>(
    items: Vec<ImageItem>,
    shuffle: bool,
) -> std::sync::Arc<dyn DataLoader<Bk, ImageBatch<Bk>>> {
    let builder = DataLoaderBuilder::new(BATCHER)
        .batch_size(64)
        .num_workers(1);
    let builder = if shuffle {
        builder.shuffle(42)
    } else {
        builder
    };
    builder.build(InMemDataset::new(items))
}

/// Test accuracy (%) of `forward` over the whole test set, on the inner (non-autodiff) backend.
fn accuracy<M, F>(model: &M, test: &[ImageItem], forward: F) -> f64
where
    F: Fn(&M, Tensor<Flex, 4>) -> Tensor<Flex, 2>,
{
    let device = Default::default();
    let mut correct = 0usize;
    for chunk in test.chunks(500) {
        let batch: ImageBatch<Flex> = BATCHER.batch(chunk.to_vec(), &device);
        let predicted = forward(model, batch.images).argmax(1).flatten::<1>(0, 1);
        let hits = predicted.equal(batch.targets).int().sum().into_scalar();
        correct += hits as usize;
    }
    100.0 * correct as f64 / test.len() as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut data_dir: Option<PathBuf> = None;
    let mut smoke = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data-dir" => data_dir = Some(args.next().ok_or("--data-dir needs a folder")?.into()),
            "--smoke" => smoke = true,
            other => {
                return Err(format!(
                    "unknown argument `{other}` (expected --data-dir DIR or --smoke)"
                )
                .into());
            }
        }
    }
    let dir = data_dir.unwrap_or_else(|| PathBuf::from("../shared/data/mnist"));
    let train_set = mnist::load(&dir, Split::Train)?;
    // Normalised as in Burn's MNIST example.
    let test = mnist::load(&dir, Split::Test)?.items(usize::MAX, 0.1307, 0.3081);
    let train_items = train_set.items(if smoke { 2000 } else { 60_000 }, 0.1307, 0.3081);
    let quant_epochs = if smoke { 1 } else { 3 };
    println!(
        "MNIST from {}: {} training, {} test images",
        dir.display(),
        train_items.len(),
        test.len()
    );

    let device = Default::default();
    B::seed(&device, 42);
    let artifacts = std::env::temp_dir().join(format!("quantnet-finetune-{}", std::process::id()));
    let valid_items: Vec<ImageItem> = test[..2000].to_vec();

    // 1. Full precision.
    let fp = SupervisedTraining::new(
        artifacts
            .join("fp")
            .to_str()
            .ok_or("temp dir is not UTF-8")?,
        loader::<B>(train_items.clone(), true),
        loader::<Flex>(valid_items.clone(), false),
    )
    .metrics((AccuracyMetric::new(), LossMetric::new()))
    .renderer(PlainRenderer::new("full precision"))
    .num_epochs(1)
    .launch(Learner::new(
        Cnn::<B>::new(&device),
        AdamConfig::new().init(),
        1e-3,
    ))
    .model;
    let fp_accuracy = accuracy(&fp, &test, |m, x| m.forward(x));
    println!("full precision: test accuracy {fp_accuracy:.2}%");

    // 2. Swap conv2 for a ternary QuantConv2d and add a 2-bit QuantAct after its ReLU + pool.
    let fp = <Cnn<B> as AutodiffModule<B>>::from_inner(fp);
    let weights_t = Temperature::new(1.0);
    let acts_t = Temperature::new(1.0);
    let calibration: Vec<f32> = {
        let batch: ImageBatch<B> = BATCHER.batch(train_items[..1000].to_vec(), &device);
        let h = fp
            .pool
            .forward(fp.relu.forward(fp.conv2.forward(fp.stem(batch.images))));
        h.valid()
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?
    };
    let quant = QuantCnn {
        conv2: QuantConv2d::from_float(
            fp.conv2,
            &QuantizerConfig::weights(LevelSet::ternary()),
            &weights_t,
        )?,
        act2: QuantAct::calibrate(
            &QuantizerConfig::activations(LevelSet::unsigned(2)?),
            &calibration,
            &acts_t,
            &device,
        )?,
        conv1: fp.conv1,
        pool: fp.pool,
        relu: fp.relu,
        fc: fp.fc,
    };

    // 3. Fine-tune with the temperature hook; validation runs hard-quantized.
    let hook = TemperatureHook::new()
        .with(
            &weights_t,
            TemperatureSchedule::linear(5.0).with_cap(2000.0),
        )
        .with(&acts_t, TemperatureSchedule::linear(10.0));
    hook.start_at(0);
    let quant = SupervisedTraining::new(
        artifacts
            .join("quant")
            .to_str()
            .ok_or("temp dir is not UTF-8")?,
        loader::<B>(train_items, true),
        loader::<Flex>(valid_items, false),
    )
    .metrics((AccuracyMetric::new(), LossMetric::new()))
    .metric_train_numeric(TemperatureMetric::new("Weight temperature", &weights_t))
    .early_stopping(hook)
    .renderer(PlainRenderer::new("quantized"))
    .num_epochs(quant_epochs)
    .launch(Learner::new(quant, AdamConfig::new().init(), 1e-3))
    .model;
    let q_accuracy = accuracy(&quant, &test, |m, x| m.forward(x));
    println!("ternary conv2 + 2-bit activations (hard-quantized): test accuracy {q_accuracy:.2}%");

    // 4. Hand the weights back to plain Burn: conv2's ternary weights as Burn's own quantized
    //    tensor (Q2S integers and one scale), saved with Burn's recorder and loaded into the
    //    user's `Cnn` type, no quantnet involved on the loading side. The activation quantizer
    //    has no Burn counterpart, so the plain model runs with float activations; it must match
    //    the quantnet model with its activation quantizer switched off, exactly.
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let plain = Cnn::<Flex> {
        conv1: quant.conv1.clone(),
        conv2: quant.conv2.to_native()?,
        pool: quant.pool.clone(),
        relu: quant.relu.clone(),
        fc: quant.fc.clone(),
    };
    let native_path = artifacts.join("cnn-native");
    plain.save_file(&native_path, &recorder)?;
    let float_path = artifacts.join("cnn-float");
    Cnn::<Flex> {
        conv2: quant.conv2.freeze(),
        ..Cnn::new(&device)
    }
    .save_file(&float_path, &recorder)?;
    let loaded = Cnn::<Flex>::new(&device).load_file(&native_path, &recorder, &device)?;
    let plain_accuracy = accuracy(&loaded, &test, |m, x| m.forward(x));
    let mut weights_only = quant.clone();
    if let Some(q) = weights_only.act2.quantizer.as_mut() {
        q.set_mode(QuantMode::Off);
    }
    let reference = accuracy(&weights_only, &test, |m, x| m.forward(x));
    let size = |p: &std::path::Path| std::fs::metadata(p.with_extension("bin")).map(|m| m.len());
    println!(
        "plain Burn Cnn loaded from a record with conv2 as Burn Q2S ({} bytes; {} with float \
         conv2), float activations: test accuracy {plain_accuracy:.2}% (quantnet model, \
         activation quantizer off: {reference:.2}%)",
        size(&native_path)?,
        size(&float_path)?,
    );
    if plain_accuracy != reference {
        return Err("the plain Burn model does not reproduce the quantized weights".into());
    }
    let _ = std::fs::remove_dir_all(&artifacts);
    Ok(())
}
