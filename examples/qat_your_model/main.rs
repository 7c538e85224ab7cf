//! Quantize your own Burn model with the library recipe.
//!
//! `cargo run --release --example qat_your_model [-- --data-dir DIR] [--limit N] [--epochs N]`
//!
//! `Net` below is a Burn CNN written here, not one of quantnet's models. It uses quantnet's
//! layer slots (`QuantConv2d`, `QuantLinear`: a Burn layer plus an optional weight quantizer;
//! `QuantAct`: an optional activation quantizer), lists them in one `impl QatModel` and gives its
//! forward on images in `impl ImageModel`. The recipe
//! ([`quantnet_models::qat::Qat`]) then trains it in full precision on MNIST, quantizes it
//! (ternary weights, 2-bit activations; the first conv and the last linear stay full precision),
//! calibrates, fine-tunes while the temperature anneals, and evaluates the hard-quantized network
//! on the whole test set.
//!
//! MNIST (the four IDX files) is read from `--data-dir` (default `../shared/data/mnist`; the
//! repository's `fixtures/mnist` holds 600 + 200 real images for a quick run).

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, backend::AutodiffBackend};
use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};
use quantnet_burn::op::batch_norm;
use quantnet_burn::{LevelSet, QuantBackend};
use quantnet_models::QuantPolicy;
use quantnet_models::data::{Dataset, Split};
use quantnet_models::models::{ImageModel, QatModel, Slots};
use quantnet_models::qat::{Qat, QatConfig, QatData};

type B = Autodiff<Flex>;

// ---- The user's model ----------------------------------------------------------------------

/// conv 3×3 (8) → batch norm → ReLU → pool → conv 3×3 (16) → batch norm → ReLU → pool →
/// linear 64 → ReLU → linear 10. Batch norm is found by the recipe (it re-estimates the
/// statistics for the quantized network).
#[derive(Module, Debug)]
struct Net<B: Backend> {
    conv1: QuantConv2d<B>,
    norm1: BatchNorm<B>,
    conv2: QuantConv2d<B>,
    norm2: BatchNorm<B>,
    pool: MaxPool2d,
    hidden: QuantLinear<B>,
    output: QuantLinear<B>,
    /// Activation slots after each ReLU (and pooling).
    acts: [QuantAct<B>; 3],
}

impl<B: Backend> Net<B> {
    fn new(device: &B::Device) -> Self {
        let conv = |c_in, c_out| {
            QuantConv2d::float(
                Conv2dConfig::new([c_in, c_out], [3, 3])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
            )
        };
        Self {
            conv1: conv(1, 8),
            norm1: BatchNormConfig::new(8).init(device),
            conv2: conv(8, 16),
            norm2: BatchNormConfig::new(16).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            hidden: QuantLinear::float(LinearConfig::new(16 * 7 * 7, 64).init(device)),
            output: QuantLinear::float(LinearConfig::new(64, 10).init(device)),
            acts: [QuantAct::float(), QuantAct::float(), QuantAct::float()],
        }
    }
}

// ---- The lines a user adds: where the quantizable layers are, and the forward -------------

impl<B: Backend> QatModel<B> for Net<B> {
    fn slots(&mut self) -> Slots<'_, B> {
        let [a1, a2, a3] = &mut self.acts;
        Slots::new()
            .with_conv("conv1", &mut self.conv1)
            .with_act("act1", a1)
            .with_conv("conv2", &mut self.conv2)
            .with_act("act2", a2)
            .with_linear("hidden", &mut self.hidden)
            .with_act("act3", a3)
            .with_linear("output", &mut self.output)
    }
}

impl<B: Backend> ImageModel<B> for Net<B> {
    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: QuantBackend,
    {
        let block = |x, conv: &QuantConv2d<B>, norm: &BatchNorm<B>, act: &QuantAct<B>| {
            act.forward(self.pool.forward(relu(batch_norm(norm, conv.forward(x)))))
        };
        let x = block(images, &self.conv1, &self.norm1, &self.acts[0]);
        let x = block(x, &self.conv2, &self.norm2, &self.acts[1]);
        let x = self.acts[2].forward(relu(self.hidden.forward(x.flatten(1, 3))));
        self.output.forward(x)
    }
}

// ---- The run ---------------------------------------------------------------------------------

struct Args {
    data_dir: PathBuf,
    limit: Option<usize>,
    epochs: usize,
    out: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        data_dir: PathBuf::from("../shared/data/mnist"),
        limit: None,
        epochs: 2,
        out: std::env::temp_dir().join("quantnet-qat-your-model"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--data-dir" => args.data_dir = value()?.into(),
            "--out" => args.out = value()?.into(),
            "--limit" => args.limit = Some(value()?.parse().map_err(|e| format!("--limit: {e}"))?),
            "--epochs" => args.epochs = value()?.parse().map_err(|e| format!("--epochs: {e}"))?,
            other => {
                return Err(format!(
                    "unknown argument `{other}` (expected --data-dir DIR, --limit N, --epochs N, \
                     --out DIR)"
                ));
            }
        }
    }
    Ok(args)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let mnist = Dataset::Mnist;
    let data = QatData::new(
        mnist.load(&args.data_dir, Split::Train)?,
        mnist.load(&args.data_dir, Split::Test)?,
        mnist.normalisation(),
    );
    let data = match args.limit {
        Some(limit) => data.limit_train(limit, 42),
        None => data,
    };
    println!(
        "MNIST from {}: {} training images, {} test images",
        args.data_dir.display(),
        data.train.len(),
        data.test.len()
    );

    // Ternary weights, 2-bit activations; everything else is the recipe's defaults.
    let policy = QuantPolicy::recipe(Some(LevelSet::ternary()), Some(LevelSet::unsigned(2)?));
    let config = QatConfig::new(policy).with_epochs(args.epochs);

    let device = Default::default();
    <B as Backend>::seed(&device, config.seed);
    let model = Net::<<B as AutodiffBackend>::InnerBackend>::new(&device);
    let _ = std::fs::remove_dir_all(&args.out);
    let (_model, report) = Qat::new(config, &args.out).run::<B, _>(model, &data, &device)?;
    println!(
        "test accuracy (hard-quantized): {:.2}%   (soft, diagnostic: {:.2}%)",
        report.test_accuracy_hard, report.test_accuracy_soft
    );
    println!("wrote {}/{{model.mpk,metrics.csv}}", args.out.display());
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
