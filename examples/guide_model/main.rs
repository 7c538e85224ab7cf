//! The Burn book's guide model, trained on MNIST by the user's own burn-train code, turned into
//! a Quantization Networks model (ternary weights, 2-bit activations) by adding the recipe's
//! parts: `model.rs` and `training.rs` differ from `float/` by the lines `README.md` shows.
//!
//! `cargo run --release -p quantnet-examples --example guide_model [-- --data-dir DIR]
//! [--limit N] [--epochs N] [--qat-epochs N] [--seed S] [--out DIR]`

#[path = "args.rs"]
mod args;
#[path = "data.rs"]
mod data;
mod model;
mod training;

include!("run.rs");

fn config(args: &args::Args) -> training::TrainingConfig {
    let model = model::ModelConfig::new(10, 512);
    training::TrainingConfig::new(model, burn::optim::AdamConfig::new())
        .with_num_epochs(args.epochs)
        .with_seed(args.seed)
        .with_qat_epochs(args.qat_epochs)
}
