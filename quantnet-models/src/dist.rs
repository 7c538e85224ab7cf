//! MPI as a [`Collective`]: training over several processes and machines (feature `mpi`).
//!
//! Start one process per node with the cluster's launcher (`mpirun -np N quantnet train
//! --distributed mpi ...`, `srun`); each calls [`Mpi::init`] once and hands the group to
//! [`Qat::distributed`](crate::qat::Qat::distributed), or to
//! [`AllReduced`](quantnet_burn::collective::AllReduced) in its own `Learner`.
//!
//! All MPI calls run on one thread that this module owns (MPI's `FUNNELED` level: the thread
//! that initialised MPI makes every call), so the handle is `Send + Sync` without touching MPI's
//! thread safety; the training thread hands it buffers over a channel. Dropping the last handle
//! finalises MPI. Errors inside MPI (a peer that died, a network that went away) abort the whole
//! job, which is MPI's default and what a launcher expects.

use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives};
use quantnet_burn::collective::Collective;

use crate::error::{Error, Result};

enum Request {
    Sum(Vec<f32>, Sender<Vec<f32>>),
    Gather(u64, Sender<Vec<u64>>),
    Abort(i32),
}

/// The processes of an MPI job (its world communicator), as a [`Collective`].
pub struct Mpi {
    rank: usize,
    size: usize,
    requests: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// How long [`Mpi::init`] waits for every process of the job: `QUANTNET_MPI_TIMEOUT` seconds,
/// 30 by default.
fn start_timeout() -> Duration {
    std::env::var("QUANTNET_MPI_TIMEOUT")
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0)
        .map_or(Duration::from_secs(30), Duration::from_secs_f64)
}

impl Mpi {
    /// Initialises MPI (once per process) on a thread of its own, and checks that every process
    /// of the job answers (one all-gather) within `QUANTNET_MPI_TIMEOUT` seconds (default 30).
    ///
    /// # Errors
    /// [`Error::Config`] when MPI was already initialised in this process or does not start,
    /// or when the processes do not all answer in time (the line says what to check).
    pub fn init() -> Result<Self> {
        let (requests, incoming) = channel::<Request>();
        let (ready, started) = channel::<Option<(usize, usize)>>();
        let thread = std::thread::Builder::new()
            .name("mpi".into())
            .spawn(move || {
                let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled)
                else {
                    let _ = ready.send(None);
                    return;
                };
                let world = universe.world();
                let (rank, size) = (world.rank() as usize, world.size() as usize);
                let _ = ready.send(Some((rank, size)));
                for request in incoming {
                    match request {
                        Request::Sum(send, back) => {
                            let mut sum = vec![0.0f32; send.len()];
                            world.all_reduce_into(&send[..], &mut sum[..], SystemOperation::sum());
                            let _ = back.send(sum);
                        }
                        Request::Gather(value, back) => {
                            let mut all = vec![0u64; size];
                            world.all_gather_into(&value, &mut all[..]);
                            let _ = back.send(all);
                        }
                        Request::Abort(code) => world.abort(code),
                    }
                }
                // The universe drops here: MPI_Finalize, after the last request.
            })
            .map_err(|e| Error::Config {
                field: "distributed",
                reason: format!("training: cannot start the MPI thread: {e}"),
            })?;
        let wait = start_timeout();
        let unreachable = || Error::Config {
            field: "distributed",
            reason: format!(
                "training: the processes did not all reach each other within {} s: check that \
                 every process was started by mpirun or srun, that every host is up and \
                 reachable, and that no firewall blocks Open MPI's TCP connections between them \
                 (QUANTNET_MPI_TIMEOUT sets the wait, in seconds)",
                wait.as_secs_f64()
            ),
        };
        let (rank, size) = match started.recv_timeout(wait) {
            Ok(Some(started)) => started,
            Ok(None) => {
                return Err(Error::Config {
                    field: "distributed",
                    reason: "training: MPI did not start (already initialised in this process?)"
                        .into(),
                });
            }
            // MPI_Init waits for every process of the job.
            Err(_) => return Err(unreachable()),
        };
        let mpi = Self {
            rank,
            size,
            requests: Mutex::new(Some(requests)),
            thread: Mutex::new(Some(thread)),
        };
        // A first collective: processes that started but cannot connect wait here.
        let (back, answer) = channel();
        mpi.send(Request::Gather(0, back));
        match answer.recv_timeout(wait) {
            Ok(_) => Ok(mpi),
            Err(_) => Err(unreachable()),
        }
    }

    fn send(&self, request: Request) {
        let sent = self
            .requests
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.send(request)));
        assert!(matches!(sent, Some(Ok(()))), "the MPI thread has stopped");
    }

    fn ask<T>(&self, request: impl FnOnce(Sender<T>) -> Request) -> T {
        let (back, answer) = channel();
        self.send(request(back));
        answer.recv().expect("the MPI thread has stopped")
    }
}

impl Mpi {
    /// Ends every process of the job with `code` (`MPI_Abort`): what a rank that cannot go on
    /// does, instead of leaving the others waiting in a collective operation.
    pub fn abort(&self, code: i32) -> ! {
        if let Ok(requests) = self.requests.lock()
            && let Some(requests) = requests.as_ref()
        {
            let _ = requests.send(Request::Abort(code));
        }
        loop {
            std::thread::park();
        }
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) {
        let sum = self.ask(|back| Request::Sum(buf.to_vec(), back));
        buf.copy_from_slice(&sum);
    }

    fn all_gather(&self, value: u64) -> Vec<u64> {
        self.ask(|back| Request::Gather(value, back))
    }
}

impl Drop for Mpi {
    /// Finalises MPI: the thread ends when its channel closes.
    fn drop(&mut self) {
        if let Ok(mut requests) = self.requests.lock() {
            requests.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}
