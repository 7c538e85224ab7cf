// The program's body, shared by `guide_model` and `guide_model_float` (included by each
// `main.rs`).

use burn::backend::{Autodiff, Flex};
use quantnet_models::data::Split;

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args::Args::parse()?;
    let train = data::MnistDataset::load(&args.data_dir, Split::Train, args.limit)?;
    let test = data::MnistDataset::load(&args.data_dir, Split::Test, None)?;
    println!(
        "MNIST from {}: {} training, {} test images",
        args.data_dir.display(),
        burn::data::dataset::Dataset::len(&train),
        burn::data::dataset::Dataset::len(&test)
    );
    let config = config(&args);
    let _ = std::fs::remove_dir_all(&args.out);
    let out = args.out.display().to_string();
    training::train::<Autodiff<Flex>>(&out, config, (train, test), Default::default())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
