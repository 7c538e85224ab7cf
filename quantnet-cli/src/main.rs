//! `quantnet`: the command line of the quantnet workspace.
//!
//! Errors print as one line with their cause chain and exit with status 1; nothing a user types
//! makes it panic.

mod backend;
mod cli;
mod commands;
mod run;

use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `quantnet info --from RUN | head -1`: the reader closes the pipe early, and the next
/// `println!` panics with "failed printing to stdout: Broken pipe". A command whose output is cut
/// short has done what was asked: end quietly (status 0, as ripgrep does) instead of printing a
/// panic and a backtrace. Every other panic keeps the default report.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info);
    }));
}
