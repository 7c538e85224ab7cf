//! Quantize your own Burn model with the library recipe.
//!
//! `cargo run --release --example qat_your_model [-- --data-dir DIR] [--limit N] [--epochs N]`
//!
//! `Net` below is a Burn CNN written here, not one of quantnet's models. It uses quantnet's
//! layer slots (`QuantConv2d`, `QuantLinear`: a Burn layer plus an optional weight quantizer; `QuantAct`: an
//! optional activation quantizer) and lists them in one `impl QatModel`. The recipe
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
use burn::nn::LinearConfig;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, backend::AutodiffBackend};
use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};
use quantnet_burn::{LevelSet, QuantBackend};
use quantnet_models::QuantPolicy;
use quantnet_models::data::{Dataset, Split};
use quantnet_models::models::{QatModel, Slots};
use quantnet_models::qat::{Qat, QatConfig, QatData};

type B = Autodiff<Flex>;

// ---- The user's model ----------------------------------------------------------------------

/// conv 5×5 (8) → ReLU → pool → conv 5×5 (16) → ReLU → pool → linear 64 → ReLU → linear 10.
#[derive(Module, Debug)]
struct Net<B: Backend> {
    conv1: QuantConv2d<B>,
    act1: QuantAct<B>,
    conv2: QuantConv2d<B>,
    act2: QuantAct<B>,
    fc1: QuantLinear<B>,
    act3: QuantAct<B>,
    fc2: QuantLinear<B>,
    pool: MaxPool2d,
}

impl<B: Backend> Net<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            conv1: QuantConv2d::float(Conv2dConfig::new([1, 8], [5, 5]).init(device)),
            act1: QuantAct::float(),
            conv2: QuantConv2d::float(Conv2dConfig::new([8, 16], [5, 5]).init(device)),
            act2: QuantAct::float(),
            fc1: QuantLinear::float(LinearConfig::new(16 * 4 * 4, 64).init(device)),
            act3: QuantAct::float(),
            fc2: QuantLinear::float(LinearConfig::new(64, 10).init(device)),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        }
    }
}

// ---- The lines a user adds: where the quantizable layers are, and the forward -------------

impl<B: Backend> QatModel<B> for Net<B> {
    fn slots(&mut self) -> Slots<'_, B> {
        Slots::new()
            .with_conv("conv1", &mut self.conv1)
            .with_act("act1", &mut self.act1)
            .with_conv("conv2", &mut self.conv2)
            .with_act("act2", &mut self.act2)
            .with_linear("fc1", &mut self.fc1)
            .with_act("act3", &mut self.act3)
            .with_linear("fc2", &mut self.fc2)
    }

    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: QuantBackend,
    {
        let x = self
            .act1
            .forward(self.pool.forward(relu(self.conv1.forward(images))));
        let x = self
            .act2
            .forward(self.pool.forward(relu(self.conv2.forward(x))));
        let x = self.act3.forward(relu(self.fc1.forward(x.flatten(1, 3))));
        self.fc2.forward(x)
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
