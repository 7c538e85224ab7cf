//! The subcommands.

mod bench;
mod fit;
mod quantizer;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub(crate) fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Quantizer(args) => quantizer::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fit(args) => fit::run(args),
    }
}
