//! The Burn book's guide model trained on MNIST by the user's own burn-train code, before
//! quantnet: what `guide_model` starts from (see `guide_model/README.md`).
//!
//! `cargo run --release -p quantnet-examples --example guide_model_float [-- --data-dir DIR]
//! [--limit N] [--epochs N] [--seed S] [--out DIR]`

#[path = "../args.rs"]
mod args;
#[path = "../data.rs"]
mod data;
mod model;
mod training;

include!("../run.rs");

fn config(args: &args::Args) -> training::TrainingConfig {
    let model = model::ModelConfig::new(10, 512);
    training::TrainingConfig::new(model, burn::optim::AdamConfig::new())
        .with_num_epochs(args.epochs)
        .with_seed(args.seed)
}
