//! The subcommands.

mod bench;
mod chart;
mod data;
mod detect;
mod eval;
mod fit;
mod infer;
mod plot;
mod quantizer;
mod sweep;
mod train;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub(crate) fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Quantizer(args) => quantizer::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fit(args) => fit::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Infer(args) => infer::classify(args),
        Command::Info(args) => eval::info(args),
        Command::Export(args) => eval::export_run(args),
        Command::Data(args) => data::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Detect(args) => detect::run(args),
    }
}
