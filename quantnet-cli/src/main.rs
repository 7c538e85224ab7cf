//! `quantnet`: the command line of the quantnet workspace.
//!
//! Errors print as one line with their cause chain and exit with status 1; nothing a user types
//! makes it panic.

mod backend;
mod cli;
mod commands;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
