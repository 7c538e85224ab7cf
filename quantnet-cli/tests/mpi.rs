//! `quantnet train --distributed mpi` under `mpirun` on loopback (feature `mpi`; `.ci/run`
//! installs Open MPI and runs these): two ranks train as one process over the same sample
//! order, a rank killed mid-run ends the job and the run resumes to the uninterrupted one's
//! end, mismatched ranks and launches are refused.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixtures() -> String {
    format!("{}/../fixtures", env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("mpi")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    dir
}

/// The tests share two cores: one job at a time.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static CPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CPU.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `mpirun` with `ranks` processes of quantnet and `args` (more than the cores allowed, root
/// allowed, Open MPI's banners off). Fails, not passes, without `mpirun`.
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let found = Command::new("mpirun").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "these tests need mpirun on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    );
    let mut command = Command::new("mpirun");
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-q", "-np", &ranks.to_string()])
        .arg(env!("CARGO_BIN_EXE_quantnet"))
        .args(args);
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("mpirun should start")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The fixture run: 600 Fashion-MNIST images, one full-precision epoch, then `epochs`
/// ternary-weight, 2-bit-activation epochs at batch 64 (9 steps per epoch on any rank count).
fn train_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data-dir",
        data,
        "--limit",
        "600",
        "--pretrain-epochs",
        "1",
        "--epochs",
        epochs,
        "--batch-size",
        "64",
        "--out",
        out,
        "--distributed",
        "mpi",
    ]
}

/// metrics.csv as a header and rows of cells.
fn metrics(dir: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn column<'a>(rows: &'a [Vec<String>], name: &str) -> Vec<&'a str> {
    let at = rows[0].iter().position(|h| h == name).unwrap();
    rows[1..].iter().map(|r| r[at].as_str()).collect()
}

fn number(cell: &str) -> f64 {
    cell.parse().unwrap()
}

/// A model file with the parameter ids (random per process) masked: msgpack's `"id"` key and
/// its 13-character value.
fn model_without_ids(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let key = b"\xa2id\xad";
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(key) && i + key.len() + 13 <= bytes.len() {
            out.extend_from_slice(b"ID");
            i += key.len() + 13;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Two ranks with batch 64 (32 each) against one process with batch 64 over the same sample
/// order: the same losses, α and β within float summation order, the same temperatures to the
/// last digit, the same hard accuracy within 0.5 points; the two ranks end with the same model,
/// bit for bit. Not 0: the mean of two 32-image mean gradients is summed in another order than
/// one 64-image mean, a difference of about 1e-7 at the first step that training then carries
/// on and amplifies (a quantizer threshold crossed one step apart). Measured on this fixture:
/// the first epoch (9 steps) agrees to the 6 digits metrics.csv writes; after the second,
/// 2e-6 relative with Burn's conv bias gradient and 1.5e-4 with quantnet's (another summation
/// order). So: 1e-5 after the first epoch, 1e-3 after the second.
#[test]
fn two_ranks_train_as_one_process_over_the_same_order() {
    let _cpu = exclusive();
    let data = fixtures();
    let (one, two) = (scratch("one"), scratch("two"));
    let out = run(mpirun(1, &train_args(&data, one.to_str().unwrap(), "2")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(mpirun(2, &train_args(&data, two.to_str().unwrap(), "2")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("backend cpu, 2 processes"), "{stdout}");
    // Rank 1 prints nothing of its own: one set of progress lines.
    assert_eq!(stdout.matches("test accuracy (hard-quantized)").count(), 1);
    let launch = std::fs::read_to_string(two.join("launch.json")).unwrap();
    assert!(launch.contains("\"ranks\": 2"), "{launch}");

    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.len(), 3);
    assert_eq!(a[0], b[0]);
    for name in [
        "weights_temperature_mean",
        "weights_temperature_last",
        "acts_temperature_mean",
        "acts_temperature_last",
    ] {
        assert_eq!(column(&a, name), column(&b, name), "{name}");
    }
    // Relative tolerance after epoch 1 and after epoch 2.
    let close = |name: &str| {
        for ((x, y), tolerance) in column(&a, name)
            .iter()
            .zip(column(&b, name))
            .zip([1e-5, 1e-3])
        {
            let (x, y) = (number(x), number(y));
            assert!(
                (x - y).abs() <= tolerance * x.abs().max(1.0),
                "{name}: one process {x}, two ranks {y}"
            );
        }
    };
    close("train_loss");
    close("test_loss");
    for name in a[0]
        .iter()
        .filter(|h| h.starts_with("alpha ") || h.starts_with("beta "))
    {
        close(name);
    }
    for (x, y) in column(&a, "test_accuracy_hard")
        .iter()
        .zip(column(&b, "test_accuracy_hard"))
    {
        assert!(
            (number(x) - number(y)).abs() <= 0.5,
            "hard accuracy {x} vs {y}"
        );
    }
    assert_eq!(
        model_without_ids(&two.join("model.mpk")),
        model_without_ids(&two.join("ranks/1/model.mpk")),
        "the ranks' models differ"
    );
}

/// The processes that `mpirun` started.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the comm may hold spaces, the fields after it do not.
            let after = stat.rsplit(')').next().unwrap_or("");
            after.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .collect()
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// kill -9 of one rank mid-run ends the whole job with a non-zero status within 30 s; resuming
/// the run on two ranks starts from the last checkpoint both have and ends where the
/// uninterrupted run ends (metrics.csv and the model). Resuming on one rank is refused.
#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_to_the_same_end() {
    let _cpu = exclusive();
    let data = fixtures();
    let (whole, killed) = (scratch("whole"), scratch("killed"));
    let epochs = "12";
    let out = run(mpirun(
        2,
        &train_args(&data, whole.to_str().unwrap(), epochs),
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut job = mpirun(2, &train_args(&data, killed.to_str().unwrap(), epochs))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoint = killed.join("ranks/1/train/checkpoint/model-2.bin");
    let start = Instant::now();
    while !checkpoint.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint of epoch 2"
        );
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ranks = children(job.id());
    assert_eq!(ranks.len(), 2, "mpirun's children: {ranks:?}");
    let killed_at = Instant::now();
    let kill = Command::new("kill")
        .args(["-9", &ranks[1].to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_with_timeout(&mut job, Duration::from_secs(30));
    let Some(status) = status else {
        let _ = job.kill();
        panic!("the job still runs 30 s after a rank was killed");
    };
    assert!(
        !status.success(),
        "the job ended with success after a rank was killed"
    );
    eprintln!("the job ended {:?} after the kill", killed_at.elapsed());
    assert!(
        !killed.join("summary.json").exists(),
        "the run finished before the kill: lengthen it"
    );

    let out = run(mpirun(
        2,
        &[
            "train",
            "--resume",
            killed.to_str().unwrap(),
            "--distributed",
            "mpi",
        ],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("resuming from the checkpoint of epoch"));
    let without_seconds = |rows: Vec<Vec<String>>| -> Vec<Vec<String>> {
        let at = rows[0].iter().position(|h| h == "seconds").unwrap();
        rows.into_iter()
            .map(|mut r| {
                r.remove(at);
                r
            })
            .collect()
    };
    assert_eq!(
        without_seconds(metrics(&killed)),
        without_seconds(metrics(&whole))
    );
    assert_eq!(
        model_without_ids(&killed.join("model.mpk")),
        model_without_ids(&whole.join("model.mpk"))
    );

    let out = run(mpirun(
        1,
        &[
            "train",
            "--resume",
            whole.to_str().unwrap(),
            "--distributed",
            "mpi",
        ],
    ));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "the run was started on 2 process(es) × devices cpu, not 1 process(es) × devices \
             cpu: resume it as it was started"
        ),
        "{err}"
    );
}

/// Ranks that were given different commands refuse to start, each with one line, within
/// 30 s; so does a distributed run without --out (each rank would pick its own directory).
#[test]
fn ranks_with_different_commands_are_refused_at_start() {
    let _cpu = exclusive();
    let data = fixtures();
    let dir = scratch("mismatch");
    let out = dir.to_str().unwrap();
    let mut first = train_args(&data, out, "1");
    first.extend(["--seed", "1"]);
    let mut second = train_args(&data, out, "1");
    second.extend(["--seed", "2"]);
    let mut command = mpirun(1, &first);
    command
        .arg(":")
        .args(["-np", "1", env!("CARGO_BIN_EXE_quantnet")])
        .args(&second);
    let start = Instant::now();
    let result = run(command);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(!result.status.success());
    let err = text(&result.stderr);
    assert!(
        err.contains(
            "distributed training: rank 1 runs another command than rank 0 (config, data or \
             device count differ): every rank must run the same one"
        ),
        "{err}"
    );
    assert!(!dir.join("model.mpk").exists());

    let result = run(mpirun(
        1,
        &["train", "--data-dir", &data, "--distributed", "mpi"],
    ));
    assert!(!result.status.success());
    let err = text(&result.stderr);
    assert!(
        err.contains("--distributed needs --out: every process must name the same run"),
        "{err}"
    );
}

/// Batch-norm running statistics are per process: a TFC run on two processes without the
/// final re-estimation ends with two different models; with `--average-batch-norm` they are
/// averaged after each phase and the two models are equal bit for bit. The launch records it:
/// resuming without the flag is refused.
#[test]
fn batch_norm_statistics_are_per_process_unless_averaged() {
    let _cpu = exclusive();
    let data = fixtures();
    let run_tfc = |out: &Path, average: bool| -> Output {
        let mut args = train_args(&data, out.to_str().unwrap(), "1");
        args.extend([
            "--model",
            "tfc",
            "--dataset",
            "mnist",
            "--bn-reestimate",
            "false",
        ]);
        if average {
            args.push("--average-batch-norm");
        }
        run(mpirun(2, &args))
    };
    let (apart, averaged) = (scratch("bn-apart"), scratch("bn-averaged"));
    let out = run_tfc(&apart, false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(
        model_without_ids(&apart.join("model.mpk")),
        model_without_ids(&apart.join("ranks/1/model.mpk")),
        "per-process statistics should differ"
    );
    let out = run_tfc(&averaged, true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout
            .matches("averaged the batch-norm running statistics over the 2 processes")
            .count(),
        2,
        "{stdout}"
    );
    assert_eq!(
        model_without_ids(&averaged.join("model.mpk")),
        model_without_ids(&averaged.join("ranks/1/model.mpk")),
        "the averaged statistics differ between the processes"
    );
    let out = run(mpirun(
        2,
        &[
            "train",
            "--resume",
            averaged.to_str().unwrap(),
            "--distributed",
            "mpi",
        ],
    ));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("with --average-batch-norm, not 2 process(es)"),
        "{}",
        text(&out.stderr)
    );
}

/// A process whose peers never answer (here: the job's second process is `sleep`, which never
/// starts MPI) gives up after `QUANTNET_MPI_TIMEOUT` seconds (3 here; 30 by default) with one
/// line that says what to check, and the job ends.
#[test]
fn a_process_whose_peers_never_answer_fails_with_what_to_check() {
    let _cpu = exclusive();
    let data = fixtures();
    let dir = scratch("alone");
    let mut command = mpirun(1, &train_args(&data, dir.to_str().unwrap(), "1"));
    command
        .env("QUANTNET_MPI_TIMEOUT", "3")
        .args([":", "-np", "1", "sleep", "60"]);
    let start = Instant::now();
    let result = run(command);
    let took = start.elapsed();
    assert!(!result.status.success());
    assert!(took < Duration::from_secs(30), "{took:?}");
    let err = text(&result.stderr);
    assert!(
        err.contains(
            "the processes did not all reach each other within 3 s: check that every process \
             was started by mpirun or srun, that every host is up and reachable"
        ),
        "{err}"
    );
}
