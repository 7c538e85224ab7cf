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

use std::sync::Arc;

use anyhow::Result;
use quantnet_burn::collective::Collective;

use crate::cli::{Cli, Command, Distributed};

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

/// Runs `job` in the processes `distributed` names: without it, this process alone (`None`);
/// with MPI, as one rank of the job `mpirun` started. A rank that fails prints its one line in
/// one write (the ranks' stderr reach the terminal through `mpirun`, which would interleave a
/// line written in pieces with another rank's) and ends the whole job (`MPI_Abort`), so that no
/// other rank waits for it.
fn as_ranks(
    distributed: Option<Distributed>,
    job: impl FnOnce(Option<Arc<dyn Collective>>) -> Result<()>,
) -> Result<()> {
    match distributed {
        None => job(None),
        Some(Distributed::Mpi) => as_mpi_rank(job),
    }
}

#[cfg(feature = "mpi")]
fn as_mpi_rank(job: impl FnOnce(Option<Arc<dyn Collective>>) -> Result<()>) -> Result<()> {
    use std::io::Write;
    let mpi = Arc::new(quantnet_models::dist::Mpi::init()?);
    match job(Some(mpi.clone())) {
        Ok(()) => Ok(()),
        Err(err) => {
            let line = format!("error: rank {}: {err:#}\n", mpi.rank());
            let _ = std::io::stderr().write_all(line.as_bytes());
            mpi.abort(1)
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn as_mpi_rank(_: impl FnOnce(Option<Arc<dyn Collective>>) -> Result<()>) -> Result<()> {
    anyhow::bail!(
        "--distributed mpi: this quantnet was built without MPI; build it with `--features mpi` \
         (an MPI implementation and libclang: Debian's openmpi-bin libopenmpi-dev libclang-dev)"
    )
}
