//! End-to-end tests of the `quantnet` binary.

use std::process::{Command, Output};

fn quantnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quantnet"))
        .args(args)
        .output()
        .expect("the quantnet binary should start")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 output")
}

/// Rows of the CSV as numbers, after checking the header.
fn csv_rows(text: &str) -> Vec<[f64; 4]> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("x,soft,hard,dsoft_dx"));
    lines
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|v| v.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

#[test]
fn quantizer_csv_has_the_requested_points_and_hand_checked_values() {
    // Ternary, midpoint thresholds ±0.5, α = β = 1, T = 10, x = -2, -1.5, ..., 2.
    let out = quantnet(&[
        "quantizer",
        "--levels",
        "2",
        "--temperature",
        "10",
        "--x-min",
        "-2",
        "--x-max",
        "2",
        "--points",
        "9",
        "--csv",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = csv_rows(&stdout(&out));
    assert_eq!(rows.len(), 9);
    // x = 0.5 sits on the threshold b_2 = 0.5: σ_2 = 1/2 and σ_1 = σ(10) ≈ 1 - 4.54e-5, so
    // soft = σ_1 + 1/2 - 1 ≈ 0.5 - 4.54e-5, hard = 1 (ties go up), and
    // dsoft/dx = T·(σ'(10) + σ'(0)) = 10·(4.54e-5 + 0.25) ≈ 2.50045.
    let r = rows[5];
    assert_eq!(r[0], 0.5);
    assert!((r[1] - (0.5 - 4.54e-5)).abs() < 1e-6, "{r:?}");
    assert_eq!(r[2], 1.0);
    assert!((r[3] - 2.50045).abs() < 1e-4, "{r:?}");
    // Hard outputs are levels; soft outputs stay inside [-1, 1].
    for r in &rows {
        assert!([-1.0, 0.0, 1.0].contains(&r[2]), "{r:?}");
        assert!(r[1].abs() <= 1.0, "{r:?}");
    }
}

#[test]
fn quantizer_accepts_scales_thresholds_and_official_gradients() {
    let out = quantnet(&[
        "quantizer",
        "--levels",
        "-4,-2,-1,0,1,2,4",
        "--alpha",
        "0.5",
        "--beta",
        "2",
        "--thresholds",
        "-3,-1.5,-0.05,0.05,1.5,3",
        "--gradient",
        "official",
        "--temperature",
        "100",
        "--x-min",
        "-3",
        "--x-max",
        "3",
        "--points",
        "7",
        "--csv",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = csv_rows(&stdout(&out));
    // x = 0: βx = 0 is 0.05 away from the middle thresholds; hard = α·0.
    assert_eq!(rows[3][2], 0.0);
    // x = 3: βx = 6 is above every threshold: hard = α·4 = 2.
    assert_eq!(rows[6][2], 2.0);
    // Official rule at x = 0: λ = min(100, 2000), σ'(±0.05) at T = 1 ≈ 0.249844 for each middle
    // threshold (the others contribute s_i·σ'(z) for z = ±1.5 (s=1): 0.149146 each, and ±3 (s=2):
    // 0.045177 each): D = 100·(2·0.249844 + 2·0.149146 + 2·2·0.045177) = 97.869; dy/dx = α·β·D.
    assert!((rows[3][3] - 97.869).abs() < 0.01, "{:?}", rows[3]);
}

#[test]
fn quantizer_errors_are_one_clear_line() {
    for (args, needle) in [
        (
            vec!["--levels", "1,1", "--csv"],
            "duplicate level: 1 then 1",
        ),
        (
            vec!["--levels", "2", "--thresholds", "0.1", "--csv"],
            "needs 2 thresholds",
        ),
        (
            vec!["--levels", "2", "--temperature", "-1", "--csv"],
            "must be finite and greater than 0",
        ),
        (
            vec!["--levels", "2", "--temperature", "0", "--csv"],
            "must be finite and greater than 0",
        ),
        (vec!["--levels", "u9", "--csv"], "between 1 and 8, got 9"),
        (vec!["--levels", "2"], "nothing to do"),
        (
            vec!["--levels", "2", "--alpha", "nan", "--csv"],
            "`alpha` = NaN",
        ),
        (
            vec!["--levels", "2", "--x-min", "1", "--x-max", "0", "--csv"],
            "smaller than --x-max",
        ),
        (
            vec!["--levels", "2", "--points", "1", "--csv"],
            "--points must be between 2",
        ),
        (
            vec!["--levels", "2", "--plot", "out.jpg"],
            "must be a .png file",
        ),
    ] {
        let mut all = vec!["quantizer"];
        all.extend(args.iter());
        let out = quantnet(&all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn quantizer_plot_writes_a_png() {
    let dir = std::env::temp_dir().join(format!("quantnet-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("curve.png");
    let out = quantnet(&[
        "quantizer",
        "--levels",
        "3pm4",
        "--temperature",
        "5",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        bytes.len() > 10_000,
        "a 960x640 plot with curves is not tiny"
    );
    assert!(!dir.join("curve.partial.png").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_runs_a_tiny_case_and_prints_the_table() {
    let out = quantnet(&["bench", "--sizes", "1024", "--runs", "1", "--warmup", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // Header, separator, then one row per level set (n = 1, 2, 6, 30).
    let rows: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(rows.len(), 4, "{text}");
    for (row, n) in rows.iter().zip([1, 2, 6, 30]) {
        assert!(row.starts_with(&format!("| cpu | 1024 | {n} |")), "{row}");
    }
}

/// `bench train --json`: one object per precision with the fields, and the quantized
/// step is timed too (it runs the soft quantizers, so it is not free).
#[test]
fn bench_train_times_the_full_precision_and_the_quantized_step() {
    let out = quantnet(&[
        "bench", "train", "--model", "lenet5", "--batch", "4", "--steps", "1", "--warmup", "0",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for (row, (weights, acts)) in rows.iter().zip([("fp", "32"), ("2", "2")]) {
        assert_eq!(row["backend"], "cpu");
        assert_eq!(row["model"], "lenet5");
        assert_eq!(row["batch"], 4);
        assert_eq!(
            (row["weights"].as_str(), row["acts"].as_str()),
            (Some(weights), Some(acts))
        );
        let ms = row["ms_per_step"].as_f64().unwrap();
        assert!(ms > 0.0 && row["ms_min"].as_f64().unwrap() <= ms, "{row}");
        assert!(row["ms_max"].as_f64().unwrap() >= ms, "{row}");
        let per_s = row["images_per_s"].as_f64().unwrap();
        assert!((per_s - 4.0 / (ms / 1e3)).abs() < 1e-6 * per_s, "{row}");
        assert!(
            row["inference_images_per_s"].as_f64().unwrap() > 0.0,
            "{row}"
        );
    }
    // --weights fp --acts 32: the full-precision step only.
    let out = quantnet(&[
        "bench",
        "train",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--weights",
        "fp",
        "--acts",
        "32",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1);
}

/// The repository's real-data fixtures (`fixtures/README.md`: the first 600 training and 200
/// test images of Fashion-MNIST and MNIST).
/// Without a wgpu adapter (the Vulkan loader pointed at a driver list that does not exist),
/// `--backend wgpu` is one line and exit 1, not CubeCL's panics from its device thread. Without
/// the feature, it is the line that says how to rebuild.
#[test]
fn wgpu_without_an_adapter_or_the_feature_is_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_quantnet"))
        .args(["bench", "train", "--model", "lenet5", "--batch", "2"])
        .args(["--steps", "1", "--warmup", "0", "--backend", "wgpu"])
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .output()
        .expect("the quantnet binary should start");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let expected = if cfg!(feature = "wgpu") {
        "error: no wgpu adapter found"
    } else {
        "error: backend `wgpu` is not compiled into this binary; rebuild with `--features wgpu`"
    };
    // The benchmark's one-line description comes first, then the error.
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(errors[0].starts_with(expected), "stderr: {err}");
    assert!(
        err.lines().count() <= 2 && !err.contains("panicked"),
        "stderr: {err}"
    );
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The full data sets (`../shared/data` next to the repository): the tests that need them are
/// `#[ignore]`d and run by `.ci/run` with `--ignored`, and fail, not pass, without it.
fn shared_data() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(
        dir.join("fashion-mnist").is_dir(),
        "this test needs Fashion-MNIST in {} (../shared/data next to the repository)",
        dir.display()
    );
    dir
}

/// The e2e run: one full-precision epoch, then two ternary-weight, 2-bit-activation epochs on
/// 600 images of `data`, into `out`.
fn small_run<'a>(data: &'a str, out: &'a str) -> [&'a str; 11] {
    [
        "train",
        "--data-dir",
        data,
        "--limit",
        "600",
        "--pretrain-epochs",
        "1",
        "--epochs",
        "2",
        "--out",
        out,
    ]
}

/// A CSV file's rows, split into cells (text).
fn cells(text: &str) -> Vec<Vec<&str>> {
    text.lines().map(|r| r.split(',').collect()).collect()
}

/// The temperature object's `key`.
fn temperature(text: &str, key: &str) -> f64 {
    let at = text
        .find("\"temperature\": {")
        .expect("temperature in summary");
    json_number(&text[at..], key)
}

/// metrics.csv's temperatures are what the hook set at every step: their epoch mean and the
/// epoch's last step. 600 images are 10 steps per epoch, 20 in all, and
/// T = T0·(T_end/T0)^(step/19). Epoch 1's mean is above T0 only if the temperature moved within
/// the epoch; epoch 2's lies between its first step's T (step 10) and T_end; the last steps
/// ran at steps 9 and 19 (T_end).
fn assert_epoch_temperatures(metrics: &str) {
    let rows = cells(metrics);
    let column = |name: &str| rows[0].iter().position(|h| *h == name).unwrap();
    for (name, t0) in [("weights", 5.0_f64), ("acts", 10.0)] {
        let at = |step: f64| t0 * (500.0 / t0).powf(step / 19.0);
        let cell = |e: usize, what: &str| -> f64 {
            rows[e][column(&format!("{name}_temperature_{what}"))]
                .parse()
                .unwrap()
        };
        let mean = |e: usize| cell(e, "mean");
        assert!(
            mean(1) > at(0.0) * 1.5 && mean(1) < at(9.0),
            "{name}: {metrics}"
        );
        assert!(mean(2) > at(10.0) && mean(2) < 500.0, "{name}: {metrics}");
        for (e, step) in [(1, 9.0), (2, 19.0)] {
            let last = cell(e, "last");
            assert!(
                (last - at(step)).abs() < 1e-4 * at(step),
                "{name}: epoch {e} ended at {last}, not {}: {metrics}",
                at(step)
            );
        }
    }
}

/// metrics.csv without its `seconds` column (the only one that differs between runs).
fn without_seconds(metrics: &str) -> Vec<Vec<String>> {
    let rows = cells(metrics);
    let seconds = rows[0].iter().position(|h| *h == "seconds").unwrap();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|&(i, _)| i != seconds)
                .map(|(_, c)| c.to_string())
                .collect()
        })
        .collect()
}

fn json_number(text: &str, key: &str) -> f64 {
    let at = text
        .find(&format!("\"{key}\": "))
        .unwrap_or_else(|| panic!("{key} missing in {text}"));
    let rest = &text[at + key.len() + 4..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// The end-to-end tests' shared run: `small_run` on the Fashion-MNIST fixture, trained once by
/// whichever test needs it first, and read (never changed) by the others.
struct SharedRun {
    root: std::path::PathBuf,
    run: std::path::PathBuf,
    stdout: String,
}

fn shared_run() -> &'static SharedRun {
    static RUN: std::sync::OnceLock<SharedRun> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("quantnet-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let run = root.join("run");
        let data = fixtures();
        let out = quantnet(&small_run(data.to_str().unwrap(), run.to_str().unwrap()));
        assert!(out.status.success(), "{}", stderr(&out));
        SharedRun {
            root,
            run,
            stdout: stdout(&out),
        }
    })
}

/// Training and evaluation run one at a time: rayon's adaptive splits make float sums depend on
/// the machine's load, and the resume test compares two runs bit for bit.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static CPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CPU.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `train` prints what it did and writes the summary, per-epoch metrics (temperatures as the
/// steps ran, the soft-hard gap, every quantizer's α, β and occupancy) and the model.
#[test]
fn train_writes_the_summary_metrics_and_model() {
    let _cpu = exclusive();
    let SharedRun {
        run, stdout: text, ..
    } = shared_run();
    assert!(
        text.contains("quantized 3 weight layer(s), calibrated 4 activation"),
        "{text}"
    );
    assert!(text.contains("test accuracy (hard-quantized)"), "{text}");
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    for key in [
        "\"model\": \"lenet5\"",
        "\"dataset\": \"fashion-mnist\"",
        "\"backend\": \"cpu\"",
        "\"weights\": \"2\"",
        "\"acts\": \"2\"",
        "\"seconds_per_epoch\"",
    ] {
        assert!(summary.contains(key), "{key} in {summary}");
    }
    let hard = json_number(&summary, "test_accuracy_hard");
    // Better than chance (10%) after 3 epochs on 600 images, and a percentage.
    assert!(hard > 20.0 && hard <= 100.0, "{summary}");
    assert_eq!(json_number(&summary, "test_images"), 200.0);
    // The default schedules anneal geometrically over the run, 5 -> 500 (weights) and
    // 10 -> 500 (activations): the run ends at 500.
    assert_eq!(temperature(&summary, "weights"), 500.0);
    assert_eq!(temperature(&summary, "acts"), 500.0);
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = metrics.lines().collect();
    assert_eq!(rows.len(), 3, "{metrics}");
    assert!(rows[0].starts_with("epoch,train_loss,train_accuracy,test_loss,test_accuracy_hard"));
    assert_epoch_temperatures(&metrics);
    // Per-epoch diagnostics: the soft-hard gap and every quantizer's α, β and occupancy.
    let header: Vec<&str> = rows[0].split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}: {metrics}"))
    };
    for row in &rows[1..] {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{metrics}");
        let gap: f64 = cells[column("soft_hard_gap")].parse().unwrap();
        assert!(gap.is_finite() && gap.abs() <= 100.0, "{metrics}");
        let alpha: f64 = cells[column("alpha conv2")].parse().unwrap();
        assert!(alpha > 0.0, "{metrics}");
        let beta: f64 = cells[column("beta act1")].parse().unwrap();
        assert!(beta > 0.0, "{metrics}");
        let occupancy: Vec<f64> = cells[column("occupancy conv2")]
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(occupancy.len(), 3, "ternary: {metrics}");
        assert!(
            (occupancy.iter().sum::<f64>() - 1.0).abs() < 1e-3,
            "{metrics}"
        );
    }
    assert!(run.join("config.toml").is_file() && run.join("model.mpk").is_file());
}

/// `eval` of the run, of its `.qnet` export and of its Burn-native export all give the run's
/// hard accuracy exactly; broken files are one clear line.
#[test]
fn eval_and_both_exports_reproduce_the_hard_accuracy() {
    let _cpu = exclusive();
    let SharedRun { root, run, .. } = shared_run();
    let run_s = run.to_str().unwrap();
    let data = fixtures();
    let data = data.to_str().unwrap();
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    let hard = json_number(&summary, "test_accuracy_hard");
    // eval reproduces the run's hard accuracy exactly and writes the same summary fields.
    let eval_dir = root.join("eval");
    let run_predictions = root.join("predictions-run.txt");
    let out = quantnet(&[
        "eval",
        "--from",
        run_s,
        "--out",
        eval_dir.to_str().unwrap(),
        "--predictions",
        run_predictions.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // --predictions with --from too (it was ignored there): one class per test image.
    let run_predictions = std::fs::read_to_string(&run_predictions)
        .expect("eval --from RUN --predictions FILE writes FILE");
    let eval = std::fs::read_to_string(eval_dir.join("summary.json")).unwrap();
    assert_eq!(json_number(&eval, "test_accuracy_hard"), hard, "{eval}");
    assert_eq!(
        json_number(&eval, "test_accuracy_soft"),
        json_number(&summary, "test_accuracy_soft")
    );

    // Export: bit-packed codes; evaluating the file gives the run's hard accuracy exactly.
    let qnet = root.join("model.qnet");
    let out = quantnet(&["export", "--from", run_s, "--out", qnet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    // conv2 holds 6·16·25 = 2400 ternary weights: 2 bits each, 600 bytes.
    assert!(
        report.contains("conv2") && report.contains(" 2400     2          600"),
        "{report}"
    );
    let eval_file =
        |file: &std::path::Path, dir: &str| eval_model_file(file, data, &root.join(dir));
    let from_file = eval_file(&qnet, "eval-qnet");
    assert_eq!(
        json_number(&from_file, "test_accuracy_hard"),
        hard,
        "{from_file}"
    );
    assert!(
        from_file.contains("\"test_accuracy_soft\": null"),
        "{from_file}"
    );
    // The file's per-image predictions are the run's.
    let file_predictions = root.join("predictions-qnet.txt");
    let out = quantnet(&[
        "eval",
        "--model-file",
        qnet.to_str().unwrap(),
        "--data-dir",
        data,
        "--predictions",
        file_predictions.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file_predictions = std::fs::read_to_string(&file_predictions).unwrap();
    let images = json_number(&summary, "test_images") as usize;
    assert_eq!(run_predictions.lines().count(), images);
    assert_eq!(run_predictions, file_predictions, "per-image predictions");
    // ONNX: by extension or by --format; a format it does not know is one line.
    for (name, format) in [("model.onnx", None), ("model.bin", Some("onnx"))] {
        let file = root.join(name);
        let mut args = vec!["export", "--from", run_s, "--out", file.to_str().unwrap()];
        args.extend(format.map(|f| ["--format", f]).into_iter().flatten());
        let out = quantnet(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("ONNX opset 13"), "{}", stdout(&out));
        let bytes = std::fs::read(&file).unwrap();
        // A ModelProto starts with its ir_version field (tag 1, varint): 0x08, 8.
        assert_eq!(bytes[..2], [0x08, 8], "{name}");
    }
    let out = quantnet(&[
        "export", "--from", run_s, "--out", "x", "--format", "tflite",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("expected qnet, burn or onnx"),
        "{}",
        stderr(&out)
    );
    // Burn-native export: a Burn record with Q2S weights plus its manifest; same accuracy.
    let native = root.join("model.mpk");
    // (The run directory as the positional argument, the spelling; --from also works.)
    let out = quantnet(&["export", run_s, "--out", native.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("conv2") && stdout(&out).contains("Q2S"));
    assert!(root.join("model.json").is_file());
    let from_native = eval_file(&native, "eval-native");
    assert_eq!(
        json_number(&from_native, "test_accuracy_hard"),
        hard,
        "{from_native}"
    );
    // A garbage record is one clear line, not a panic.
    std::fs::write(&native, b"not a record").unwrap();
    let out = quantnet(&[
        "eval",
        "--model-file",
        native.to_str().unwrap(),
        "--data-dir",
        data,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a Burn record") && !stderr(&out).contains("panicked"),
        "{}",
        stderr(&out)
    );

    // A corrupted file is one clear line.
    let mut bytes = std::fs::read(&qnet).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&qnet, &bytes).unwrap();
    let out = quantnet(&[
        "eval",
        "--model-file",
        qnet.to_str().unwrap(),
        "--data-dir",
        data,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn info_lists_every_layer_with_its_precision() {
    let _cpu = exclusive();
    let run_s = shared_run().run.to_str().unwrap();
    let out = quantnet(&["info", "--from", run_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info = stdout(&out);
    assert!(info.contains("conv1") && info.contains("fp32"), "{info}");
    assert!(info.contains("conv2") && info.contains("act4"), "{info}");
    // Into a pipe whose reader is gone (`quantnet info --from RUN | head -1`): a quiet end, not
    // a panic with a backtrace.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_quantnet"))
        .args(["info", "--from", run_s])
        .stdout(writer)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
}

/// Resume: a copy of the run without its last epoch's checkpoint and results, continued from
/// epoch 1, ends where the uninterrupted run did: same data order, temperatures, model and
/// per-epoch metrics (but the seconds).
#[test]
fn resume_from_the_last_checkpoint_matches_the_uninterrupted_run() {
    let _cpu = exclusive();
    let shared = shared_run();
    let run = shared.root.join("resumed");
    let _ = std::fs::remove_dir_all(&run);
    copy_dir(&shared.run, &run);
    let run_s = run.to_str().unwrap();
    let uninterrupted = std::fs::read_to_string(run.join("summary.json")).unwrap();
    let uninterrupted_metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    for f in ["model-2.bin", "optim-2.bin", "scheduler-2.bin"] {
        std::fs::remove_file(run.join("train/checkpoint").join(f)).unwrap();
    }
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let out = quantnet(&["train", "--resume", run_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("resuming from the checkpoint of epoch 1"));
    let resumed = std::fs::read_to_string(run.join("summary.json")).unwrap();
    assert_eq!(temperature(&resumed, "weights"), 500.0);
    assert_eq!(temperature(&resumed, "acts"), 500.0);
    // The resumed process timed epoch 2 only: its seconds go to row 2, row 1 stays empty.
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows = cells(&metrics);
    let seconds = rows[0].iter().position(|h| *h == "seconds").unwrap();
    assert_eq!(rows[1][seconds], "", "{metrics}");
    assert!(rows[2][seconds].parse::<f64>().unwrap() > 0.0, "{metrics}");
    assert_eq!(
        json_number(&resumed, "test_accuracy_hard"),
        json_number(&uninterrupted, "test_accuracy_hard")
    );
    assert_eq!(
        without_seconds(&metrics),
        without_seconds(&uninterrupted_metrics)
    );

    std::fs::remove_dir_all(&run).unwrap();
}

/// `--devices cpu,cpu`: the same CPU device listed twice runs burn-train's multi-device
/// strategy (two workers, each with half of every 64-image step, the optimizer on the first
/// with the mean gradient). Against the shared one-device run on the same data: the same steps,
/// so the same per-epoch temperatures to the last digit and the same final ones; accuracy
/// comparable (the data order differs: each worker shuffles its half of the set). A copy
/// without epoch 2's checkpoint, resumed on two devices, ends bit for bit where the
/// uninterrupted two-device run did, and `eval` split over two devices gives the run's hard
/// accuracy.
#[test]
fn two_devices_train_like_one_and_resume() {
    let _cpu = exclusive();
    let shared = shared_run();
    let data = fixtures();
    let two = shared.root.join("two-devices");
    let _ = std::fs::remove_dir_all(&two);
    let mut args = small_run(data.to_str().unwrap(), two.to_str().unwrap()).to_vec();
    args.extend(["--devices", "cpu,cpu"]);
    let out = quantnet(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("backend cpu,cpu"), "{}", stdout(&out));
    let summary = std::fs::read_to_string(two.join("summary.json")).unwrap();
    assert!(
        summary.contains("\"devices\": [\n    \"cpu\",\n    \"cpu\"\n  ]"),
        "{summary}"
    );
    let one = std::fs::read_to_string(shared.run.join("summary.json")).unwrap();
    let metrics = std::fs::read_to_string(two.join("metrics.csv")).unwrap();
    let one_metrics = std::fs::read_to_string(shared.run.join("metrics.csv")).unwrap();
    let (rows, one_rows) = (cells(&metrics), cells(&one_metrics));
    assert_eq!(rows.len(), 3, "{metrics}");
    for name in [
        "weights_temperature_mean",
        "weights_temperature_last",
        "acts_temperature_mean",
        "acts_temperature_last",
    ] {
        let column = rows[0].iter().position(|h| *h == name).unwrap();
        for epoch in 1..=2 {
            assert_eq!(
                rows[epoch][column], one_rows[epoch][column],
                "{name}: {metrics}"
            );
        }
        let key = &name[..name.find('_').unwrap()];
        assert_eq!(temperature(&summary, key), temperature(&one, key));
    }
    let (hard, one_hard) = (
        json_number(&summary, "test_accuracy_hard"),
        json_number(&one, "test_accuracy_hard"),
    );
    assert!(
        hard > 20.0 && (hard - one_hard).abs() <= 10.0,
        "two devices {hard}%, one {one_hard}%"
    );

    let resumed = shared.root.join("two-devices-resumed");
    let _ = std::fs::remove_dir_all(&resumed);
    copy_dir(&two, &resumed);
    for f in ["model-2.bin", "optim-2.bin", "scheduler-2.bin"] {
        std::fs::remove_file(resumed.join("train/checkpoint").join(f)).unwrap();
    }
    std::fs::remove_file(resumed.join("summary.json")).unwrap();
    let resumed_s = resumed.to_str().unwrap();
    let out = quantnet(&["train", "--resume", resumed_s, "--devices", "cpu,cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("resuming from the checkpoint of epoch 1"));
    let again = std::fs::read_to_string(resumed.join("metrics.csv")).unwrap();
    assert_eq!(without_seconds(&again), without_seconds(&metrics));
    // Resuming with other devices would change the data split: refused (launch.json).
    let out = quantnet(&["train", "--resume", resumed_s]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "the run was started on 1 process(es) × devices cpu,cpu, not 1 process(es) × \
             devices cpu: resume it as it was started"
        ),
        "{}",
        stderr(&out)
    );

    let out = quantnet(&[
        "eval",
        "--from",
        two.to_str().unwrap(),
        "--devices",
        "cpu,cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("test accuracy (hard-quantized) {hard:.2}%")),
        "{}",
        stdout(&out)
    );
    for dir in [two, resumed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Every config in configs/ (the paper's ImageNet recipes) runs: one epoch of steps of 4 on
/// the 20 ImageNet sample images, read from disk with the training augmentation, with the
/// config's optimizer, schedules, clipping and precisions (the quantized phases start from an
/// untrained model here: --from is the user's previous phase), and summary.json says so.
/// ResNet-18 W2 runs on two devices (`cpu,cpu`). Batch-norm re-estimation is off: its 200
/// batches at 224×224 would take minutes per model on a CPU (the recipe test covers it).
#[test]
#[ignore = "needs the ImageNet samples in ../shared/data (not redistributable, so not a fixture); .ci/run runs it"]
fn every_imagenet_config_runs_a_few_steps_on_the_sample_images() {
    let _cpu = exclusive();
    let data =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/imagenet-samples");
    assert!(
        data.join("labels.csv").is_file(),
        "this test needs the ImageNet samples in {} (../shared/data next to the repository)",
        data.display()
    );
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut files: Vec<_> = std::fs::read_dir(&configs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        // The detector configs have their own test (the neon-trees tiles).
        .filter(|p| !p.file_stem().unwrap().to_str().unwrap().starts_with("ssd"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    let root = std::env::temp_dir().join(format!("quantnet-configs-{}", std::process::id()));
    for file in files {
        let name = file.file_stem().unwrap().to_str().unwrap().to_string();
        let out = root.join(&name);
        let mut args = vec![
            "train",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--bn-reestimate",
            "false",
            "--out",
            out.to_str().unwrap(),
        ];
        let two_devices = name == "resnet18-w2";
        if two_devices {
            args.extend(["--devices", "cpu,cpu"]);
        }
        let run = quantnet(&args);
        assert!(run.status.success(), "{name}: {}", stderr(&run));
        let text = stdout(&run);
        assert!(
            text.contains("20 training images, 20 test images (read from disk"),
            "{name}: {text}"
        );
        let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
        let config = std::fs::read_to_string(&file).unwrap();
        for key in ["model", "weights", "acts"] {
            let line = config
                .lines()
                .find(|l| l.starts_with(&format!("{key} =")))
                .unwrap();
            let value = line.split('"').nth(1).unwrap();
            assert!(
                summary.contains(&format!("\"{key}\": \"{value}\"")),
                "{name}: {key} {value} in {summary}"
            );
        }
        let hard = json_number(&summary, "test_accuracy_hard");
        assert!((0.0..=100.0).contains(&hard), "{name}: {summary}");
        let steps = std::fs::read_to_string(out.join("train/train/epoch-1/Loss.log")).unwrap();
        // 20 images in steps of 4: 5 steps, logged per device's batch.
        let logged = if two_devices { 10 } else { 5 };
        assert_eq!(steps.lines().count(), logged, "{name}: {steps}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// The SSD300 configs (VOC2007) build SSD300 and run a step each on the three neon-trees tiles
/// (two for training, one for testing; Alive, Dead and Tree as three classes): the
/// full-precision phase, then each quantized phase `--from` it. Batch-norm re-estimation is
/// off and calibration takes two images: at 300×300 on a CPU, SSD300's passes take seconds each.
#[test]
#[ignore = "needs the neon-trees tiles in ../shared/data (the third, 1249×1035 tile is not a fixture); .ci/run runs it"]
fn the_ssd300_configs_run_a_step_on_the_neon_tiles() {
    let _cpu = exclusive();
    let data = shared_data().join("detection-neon-trees");
    assert!(
        data.join("annotations").is_dir(),
        "this test needs {}",
        data.display()
    );
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let root = std::env::temp_dir().join(format!("quantnet-ssd300-{}", std::process::id()));
    let fp = root.join("ssd300-fp");
    for name in ["ssd300-fp", "ssd300-w2", "ssd300-w3pm4"] {
        let file = configs.join(format!("{name}.toml"));
        let out = root.join(name);
        let mut args = vec![
            "train",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--bn-reestimate",
            "false",
            "--calibration-images",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        if name != "ssd300-fp" {
            args.extend(["--from", fp.to_str().unwrap()]);
        }
        let run = quantnet(&args);
        let text = stdout(&run);
        assert!(run.status.success(), "{name}: {text}\n{}", stderr(&run));
        assert!(
            text.contains(
                "2 training images (340 boxes), 1 test images (37 boxes), classes Alive, Dead, Tree"
            ),
            "{name}: {text}"
        );
        let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
        assert!(summary.contains("\"model\": \"ssd300\""), "{summary}");
        let map = json_number(&summary, "test_map_hard");
        assert!((0.0..=100.0).contains(&map), "{name}: {summary}");
        // Two training images in steps of 2: one step.
        let steps = std::fs::read_to_string(out.join("train/train/epoch-1/Loss.log")).unwrap();
        assert_eq!(steps.lines().count(), 1, "{name}: {steps}");
        if name != "ssd300-fp" {
            // Quantized: VGG-16's 22 convolutions after the first (the heads stay full precision).
            assert!(
                text.contains("quantized 22 weight layer(s)"),
                "{name}: {text}"
            );
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// `kill -9` in the middle of the second quantized epoch, then `--resume`. A separate process
/// is not bit-identical to the shared run under load, so this checks the resumed run's own
/// records: epoch 1's logs kept as the killed run wrote them, epoch 2 complete (no partial
/// leftovers), and the summary equal to the last row.
#[test]
fn a_run_killed_mid_epoch_resumes_with_complete_records() {
    let _cpu = exclusive();
    let data = fixtures();
    let data = data.to_str().unwrap();
    let killed = shared_run().root.join("killed");
    let _ = std::fs::remove_dir_all(&killed);
    let mut child = Command::new(env!("CARGO_BIN_EXE_quantnet"))
        .args(small_run(data, killed.to_str().unwrap()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = killed.join("train/checkpoint/model-1.bin");
    let since = std::time::Instant::now();
    while !first.is_file() {
        assert!(since.elapsed().as_secs() < 300, "no checkpoint of epoch 1");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Into epoch 2: its first step has been logged (10 steps of 64 images, then the 10,000
    // test images, before its checkpoint).
    let second = killed.join("train/train/epoch-2/Loss.log");
    while !second.is_file() {
        assert!(since.elapsed().as_secs() < 300, "epoch 2 never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("train/checkpoint/model-2.bin").exists(),
        "killed after epoch 2's checkpoint"
    );
    let epoch1 = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("train/valid/epoch-1/Accuracy.log")).unwrap()
    };
    let before = epoch1(&killed);
    let out = quantnet(&["train", "--resume", killed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("resuming from the checkpoint of epoch 1"));
    assert_eq!(epoch1(&killed), before, "epoch 1's logs were overwritten");
    let after_kill = std::fs::read_to_string(killed.join("summary.json")).unwrap();
    let metrics = std::fs::read_to_string(killed.join("metrics.csv")).unwrap();
    let rows = cells(&metrics);
    assert_eq!(rows.len(), 3, "{metrics}");
    let seconds = rows[0].iter().position(|h| *h == "seconds").unwrap();
    let hard = rows[0]
        .iter()
        .position(|h| *h == "test_accuracy_hard")
        .unwrap();
    for row in &rows[1..] {
        assert!(
            row.iter().all(|c| !c.is_empty() || c == &row[seconds]),
            "{metrics}"
        );
    }
    assert_eq!(
        rows[2][hard].parse::<f64>().unwrap(),
        json_number(&after_kill, "test_accuracy_hard"),
        "{metrics}"
    );
    // Epoch 2's train rows are one epoch's: 10 steps of 64 images (600 images).
    let steps = std::fs::read_to_string(killed.join("train/train/epoch-2/Loss.log")).unwrap();
    assert_eq!(steps.lines().count(), 10, "{steps}");

    std::fs::remove_dir_all(&killed).unwrap();
}

/// `--from` continues training the source model: its weights move (a record loaded on the
/// inner backend would come back frozen; regression test).
#[test]
fn from_continues_training_the_source_model() {
    let _cpu = exclusive();
    let SharedRun { root, run, .. } = shared_run();
    let run_s = run.to_str().unwrap();
    let data = fixtures();
    let data = data.to_str().unwrap();
    let cont = root.join("continued");
    let out = quantnet(&[
        "train",
        "--data-dir",
        data,
        "--limit",
        "600",
        "--epochs",
        "1",
        "--from",
        run_s,
        "--out",
        cont.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("starting from"), "{}", stdout(&out));
    // The full-precision first conv (loaded from the source run's record) was trained too.
    let conv1 = |dir: &std::path::Path| {
        let file = dir.with_extension("conv1.qnet");
        let out = quantnet(&[
            "export",
            "--from",
            dir.to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let bytes = std::fs::read(&file).unwrap();
        let (manifest, payload) = quantnet_models::export::parse(&bytes, &file).unwrap();
        let entry = manifest
            .floats
            .iter()
            .find(|f| f.path == "Lenet5.conv1.conv.weight")
            .expect("conv1 is stored as float")
            .clone();
        let start = entry.offset as usize;
        payload[start..start + 4 * 150].to_vec()
    };
    assert_ne!(conv1(run), conv1(&cont), "conv1 did not train after --from");

    std::fs::remove_dir_all(&cont).unwrap();
}

/// `eval --model-file FILE --data-dir DATA --out DIR`: the summary it writes.
fn eval_model_file(file: &std::path::Path, data: &str, out_dir: &std::path::Path) -> String {
    let out = quantnet(&[
        "eval",
        "--model-file",
        file.to_str().unwrap(),
        "--data-dir",
        data,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read_to_string(out_dir.join("summary.json")).unwrap()
}

/// `--granularity channel`: a run fine-tuned from the shared run with one α/β per output
/// channel lists its per-channel scales, exports to `.qnet` (whose evaluation gives the run's
/// hard accuracy exactly), and the Burn-native export refuses it in one line.
#[test]
fn a_per_channel_run_exports_and_evaluates_like_training() {
    let _cpu = exclusive();
    let SharedRun { root, run, .. } = shared_run();
    let data = fixtures();
    let data = data.to_str().unwrap();
    let dir = root.join("per-channel");
    let dir_s = dir.to_str().unwrap();
    let out = quantnet(&[
        "train",
        "--data-dir",
        data,
        "--limit",
        "300",
        "--epochs",
        "1",
        "--granularity",
        "channel",
        "--from",
        run.to_str().unwrap(),
        "--out",
        dir_s,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let hard = json_number(&summary, "test_accuracy_hard");
    let info = quantnet(&["info", "--from", dir_s]);
    assert!(
        stdout(&info).contains("means of 16 per-channel scales")
            && stdout(&info).contains("means of 120 per-channel scales"),
        "{}",
        stdout(&info)
    );
    let qnet = dir.join("model.qnet");
    let out = quantnet(&["export", dir_s, "--out", qnet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eval = eval_model_file(&qnet, data, &dir.join("eval-qnet"));
    assert_eq!(json_number(&eval, "test_accuracy_hard"), hard, "{eval}");
    let native = dir.join("model.mpk");
    let out = quantnet(&["export", dir_s, "--out", native.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not per output channel"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A second run into the same directory is refused (no silent overwrite).
#[test]
fn a_second_run_into_the_same_directory_is_refused() {
    let _cpu = exclusive();
    let run_s = shared_run().run.to_str().unwrap();
    let data = fixtures();
    let data = data.to_str().unwrap();
    let out = quantnet(&["train", "--data-dir", data, "--limit", "10", "--out", run_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already holds a run"),
        "{}",
        stderr(&out)
    );
}

/// Copies a run directory (files and folders).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every `train` flag that sets a run-config field ends its help with the field's default,
/// read from the config types (the library's `QatConfig` for the recipe's values), not
/// written into the help text.
#[test]
fn train_help_shows_the_defaults_of_the_config_types() {
    let out = quantnet(&["train", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    let recipe = quantnet_models::qat::QatConfig::new(quantnet_models::QuantPolicy::float());
    for (flag, default) in [
        ("--temperature", recipe.weights_temperature.to_string()),
        ("--act-temperature", recipe.acts_temperature.to_string()),
        ("--quant-lr-mult", recipe.quant_lr_mult.to_string()),
        ("--batch-size", recipe.batch_size.to_string()),
        ("--epochs", recipe.epochs.to_string()),
        ("--seed", recipe.seed.to_string()),
        ("--lr-schedule", recipe.lr_schedule.to_string()),
        ("--model", "lenet5".to_string()),
        ("--weights", "2".to_string()),
    ] {
        let at = help
            .find(&format!("      {flag} "))
            .unwrap_or_else(|| panic!("{flag} missing: {help}"));
        let section = &help[at..];
        let end = section[1..]
            .find("\n      --")
            .map_or(section.len(), |e| e + 1);
        assert!(
            section[..end].contains(&format!("[default: {default}]")),
            "{flag}: {}",
            &section[..end]
        );
    }
    // No default written by hand as well.
    assert!(!help.contains("Default: "), "{help}");
    // A flag without a default (the learning rate depends on the phase) shows none.
    let at = help.find("      --lr <LR>").unwrap();
    let end = help[at + 1..].find("\n      --").unwrap() + at + 1;
    assert!(!help[at..end].contains("[default:"), "{}", &help[at..end]);
}

/// A quantnet built without MPI says how to get one instead of failing inside MPI.
#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_training_without_the_mpi_feature_is_one_line() {
    let out = quantnet(&[
        "train",
        "--data-dir",
        "fixtures",
        "--out",
        "/nonexistent/run",
        "--distributed",
        "mpi",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("this quantnet was built without MPI; build it with `--features mpi`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn train_errors_are_one_clear_line() {
    let cases: [(&[&str], &str); 14] = [
        // Detector flags given to a classifier are refused, not ignored.
        (
            &["train", "--tile", "300", "--out", "/tmp/quantnet-never"],
            "--tile is for detectors (ssd-small, ssd300); lenet5 is a classifier",
        ),
        (
            &[
                "train",
                "--max-expand",
                "2",
                "--repeats",
                "3",
                "--split-windows",
            ],
            "--repeats, --max-expand, --split-windows are for detectors",
        ),
        (
            &["train", "--devices", "cpu,cpu", "--batch-size", "63"],
            "--batch-size 63 does not split evenly over 2 devices",
        ),
        #[cfg(not(feature = "cuda"))]
        (
            &[
                "train",
                "--devices",
                "cuda:0,cuda:1",
                "--out",
                "/tmp/quantnet-never",
            ],
            "backend `cuda` is not compiled into this binary",
        ),
        #[cfg(feature = "cuda")]
        (
            &[
                "train",
                "--devices",
                "cuda:0,cuda:63",
                "--out",
                "/tmp/quantnet-never",
            ],
            "device cuda:63 does not exist",
        ),
        (
            &["train", "--method", "lsq", "--granularity", "channel"],
            "per-channel and shared scales are built for `qn` weights; lsq is per tensor",
        ),
        (
            &["train", "--weights", "fp", "--granularity", "channel"],
            "quantize the weights",
        ),
        (
            &["train", "--phase", "acts", "--acts", "32"],
            "quantizes no activations",
        ),
        (
            &["train", "--model", "alexnet-bn"],
            "needs images of at least 63",
        ),
        (
            &["train", "--temperature", "exp:1,1e30"],
            "above the largest supported temperature",
        ),
        (&["train", "--batch-size", "0"], "--batch-size"),
        (
            &[
                "train",
                "--data-dir",
                "/nonexistent/quantnet",
                "--out",
                "/tmp/quantnet-never",
            ],
            "not found; looked in /nonexistent/quantnet",
        ),
        (
            &["eval", "--from", "/nonexistent/run"],
            "not a quantnet run directory",
        ),
        // The source run is checked before the data set is looked for (or downloaded).
        (
            &[
                "train",
                "--from",
                "/nonexistent/run",
                "--data-dir",
                "/nonexistent/quantnet",
                "--out",
                "/tmp/quantnet-never",
            ],
            "--from /nonexistent/run: not a quantnet run directory",
        ),
        // A plot into a missing folder is a sentence, not a debug dump.
        (
            &[
                "quantizer",
                "--levels",
                "2",
                "--plot",
                "/nonexistent/quantnet/q.png",
            ],
            "--plot /nonexistent/quantnet/q.png: the folder /nonexistent/quantnet does not exist",
        ),
    ];
    for (args, expected) in cases {
        let out = quantnet(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/quantnet-never").exists());
    // Flag values that do not parse: clap's usage error (exit 2), with our message.
    for (args, expected) in [
        // Every text parser says "`TEXT`: what was expected".
        (&["train", "--model", "vgg"][..], "`vgg`: expected lenet5,"),
        (&["train", "--weights", "7"], "`7`: expected a level set"),
        (&["train", "--phase", "both"], "expected joint or acts"),
        (
            &["train", "--acts", "u0"],
            "`u0`: the bit width must be between 1 and 8",
        ),
        (
            &["train", "--temperature", "linear:-1"],
            "`linear:-1`: t0 must be finite and greater than 0",
        ),
        (
            &["train", "--gradient", "soft"],
            "`soft`: expected exact, official",
        ),
        (
            &["train", "--granularity", "row"],
            "`row`: expected tensor, channel or shared",
        ),
        (&["train", "--method", "xnor"], "`xnor`: expected qn, ste"),
        (&["train", "--dataset", "svhn"], "`svhn`: expected mnist,"),
        (
            &["train", "--devices", "cpu,cuda:0"],
            "the list mixes backends (cpu and cuda): one backend per run",
        ),
        (
            &["train", "--devices", "cpu:1"],
            "the cpu backend has one device",
        ),
        (&["eval", "--devices", "tpu:0"], "unknown backend `tpu`"),
        (
            &["train", "--devices", "cuda:x"],
            "the device index must be a number",
        ),
        (
            &["train", "--devices", "cpu,"],
            "an empty entry in the device list",
        ),
        (
            &["train", "--devices", "cpu,cpu", "--backend", "wgpu"],
            "cannot be used with",
        ),
    ] {
        let out = quantnet(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
#[ignore = "needs the full Fashion-MNIST and MNIST files in ../shared/data (their published checksums); .ci/run runs it"]
fn data_fetch_verifies_and_installs_files_from_a_mirror() {
    let data = shared_data();
    let root = std::env::temp_dir().join(format!("quantnet-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mirror = data.join("fashion-mnist");
    let dest = root.join("fashion-mnist");
    let out = quantnet(&[
        "data",
        "fetch",
        "fashion-mnist",
        "--mirror",
        mirror.to_str().unwrap(),
        "--dir",
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).matches(": verified").count(),
        4,
        "{}",
        stdout(&out)
    );
    for f in ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        assert_eq!(
            std::fs::read(dest.join(f)).unwrap(),
            std::fs::read(mirror.join(f)).unwrap()
        );
    }
    // MNIST's files are not Fashion-MNIST's: the content checksum says so, nothing is written.
    let wrong = root.join("wrong");
    let out = quantnet(&[
        "data",
        "fetch",
        "fashion-mnist",
        "--mirror",
        data.join("mnist").to_str().unwrap(),
        "--dir",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("SHA-256 of the content") && err.contains("expected"),
        "{err}"
    );
    assert!(!wrong.join("train-images-idx3-ubyte.gz").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// A tiny sweep end to end: two methods × two seeds on 300 fixture images, the results files and
/// the picture; a second invocation skips the finished cells; a cell that fails (its `from`
/// does not exist) is recorded as failed and the sweep goes on; `plot` draws a cell's pictures.
#[test]
fn a_tiny_sweep_runs_resumes_records_failures_and_plots() {
    let _cpu = exclusive();
    let root = std::env::temp_dir().join(format!("quantnet-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let data = fixtures().join("fashion-mnist");
    let grid = root.join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "[fixed]\ndata_dir = {:?}\nlimit = 300\nepochs = 1\n\n[axes]\nmethod = [\"qn\", \"lsq\"]\nseed = [1, 2]\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let broken = root.join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "[fixed]\ndata_dir = {:?}\nlimit = 300\nfrom = \"nowhere/seed-{{seed}}\"\n\n[axes]\nmethod = [\"ste\"]\nseed = [1]\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = root.join("out");
    let args = [
        "sweep",
        grid.to_str().unwrap(),
        broken.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let first = quantnet(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows = cells(&csv);
    assert_eq!(rows.len(), 6, "{csv}");
    let col = |name: &str| rows[0].iter().position(|c| *c == name).unwrap();
    let (status, hard, fp) = (
        col("status"),
        col("test_accuracy_hard"),
        col("test_accuracy_fp"),
    );
    for row in &rows[1..5] {
        assert_eq!(row[status], "done", "{csv}");
        let (h, f): (f64, f64) = (row[hard].parse().unwrap(), row[fp].parse().unwrap());
        assert!(
            (0.0..=100.0).contains(&h) && (0.0..=100.0).contains(&f),
            "{csv}"
        );
    }
    assert_eq!(rows[5][status], "failed", "{csv}");
    assert!(rows[5].last().unwrap().contains("nowhere"), "{csv}");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| qn | 2 | ") && md.contains("| lsq | 2 | "),
        "{md}"
    );
    assert!(md.contains("| ste | 0 of 1 |"), "{md}");
    let png = std::fs::read(out.join("accuracy-vs-bits.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // Again: every finished cell is skipped.
    let again = quantnet(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stdout(&again).matches("done before").count(),
        4,
        "{}",
        stdout(&again)
    );
    // A grid changed under finished cells is refused, not silently reported with old results.
    let text = std::fs::read_to_string(&grid).unwrap();
    std::fs::write(&grid, text.replace("epochs = 1", "epochs = 2")).unwrap();
    let changed = quantnet(&args);
    assert!(!changed.status.success());
    assert!(
        stderr(&changed).contains("another config"),
        "{}",
        stderr(&changed)
    );
    let cell = out.join("cells/method-lsq_seed-1");
    let plot = quantnet(&["plot", cell.to_str().unwrap()]);
    assert!(plot.status.success(), "{}", stderr(&plot));
    for picture in ["training.png", "weights.png"] {
        assert_eq!(&std::fs::read(cell.join(picture)).unwrap()[1..4], b"PNG");
    }
    // A grid that cannot run is refused before anything runs, naming the cell.
    std::fs::write(
        &grid,
        "[fixed]\nweights = \"1\"\n[axes]\nmethod = [\"qn\", \"bwn\"]\n",
    )
    .unwrap();
    let refused = quantnet(&[
        "sweep",
        grid.to_str().unwrap(),
        "--out",
        root.join("no").to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("cell method-bwn"),
        "{}",
        stderr(&refused)
    );
    assert!(!root.join("no").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// `sweep --dry-run | head`: the cell list into a pipe whose reader has gone is the end of the
/// listing, not a panic (the pipe's read end is closed before the binary starts, so its first
/// write fails).
#[test]
fn a_dry_run_into_a_closed_pipe_exits_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let grid = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sweeps/fashion-mnist-methods.toml"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_quantnet"))
        .args(["sweep", grid, "--out", "/tmp/quantnet-never", "--dry-run"])
        .stdout(writer)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A detector trains on two devices (`--devices cpu,cpu`), as classifiers do: 4 samples a
/// epoch (`--repeats 4`) in steps of 2 split over the devices make 2 optimizer steps, the
/// temperature ends at the schedule's end (500) and the summary names both devices; a batch
/// that does not split evenly is refused in one line.
#[test]
fn a_detector_trains_on_two_devices() {
    let _cpu = exclusive();
    let root = std::env::temp_dir().join(format!("quantnet-ssd-devices-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = fixtures().join("neon-trees");
    let train = |batch: &str, name: &str| {
        let run = root.join(name);
        let out = quantnet(&[
            "train",
            "--model",
            "ssd-small",
            "--dataset",
            "voc",
            "--data-dir",
            data.to_str().unwrap(),
            "--merge-classes",
            "tree",
            "--weights",
            "2",
            "--pretrain-epochs",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            batch,
            "--repeats",
            "4",
            "--calibration-images",
            "2",
            "--devices",
            "cpu,cpu",
            "--out",
            run.to_str().unwrap(),
        ]);
        (out, run)
    };
    let (out, run) = train("2", "two");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("train 100% (4/4)"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["devices"], serde_json::json!(["cpu", "cpu"]));
    assert_eq!(summary["temperature"]["weights"], serde_json::json!(500.0));
    let (out, _) = train("3", "odd");
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("--batch-size 3 does not split evenly over 2 devices"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

/// `--phase acts` on a detector (from a quantized run, as for classifiers) trains only the
/// activation quantizers: every weight quantizer's α and β stay those of the run it started
/// from, the activation quantizers' α move.
#[test]
fn a_detector_trains_only_its_activation_quantizers_in_phase_acts() {
    let _cpu = exclusive();
    let root = std::env::temp_dir().join(format!("quantnet-ssd-acts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = fixtures().join("neon-trees");
    let train = |name: &str, extra: &[&str]| {
        let run = root.join(name);
        let mut args = vec![
            "train",
            "--model",
            "ssd-small",
            "--dataset",
            "voc",
            "--data-dir",
            data.to_str().unwrap(),
            "--merge-classes",
            "tree",
            "--weights",
            "2",
            "--acts",
            "4",
            "--pretrain-epochs",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--repeats",
            "2",
            "--calibration-images",
            "2",
            "--out",
            run.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = quantnet(&args);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap();
        (text, summary["layers"].as_array().unwrap().clone())
    };
    let (_, joint) = train("joint", &[]);
    let from = root.join("joint");
    let (text, acts) = train(
        "acts",
        &["--from", from.to_str().unwrap(), "--phase", "acts"],
    );
    assert!(
        text.contains("training only the 8 activation quantizer(s)"),
        "{text}"
    );
    assert_eq!(joint.len(), acts.len());
    let mut moved = 0;
    for (a, b) in joint.iter().zip(&acts) {
        assert_eq!(a["name"], b["name"]);
        if a["kind"] == "activation" {
            moved += usize::from(a["alpha"] != b["alpha"]);
        } else {
            assert_eq!(
                (&a["alpha"], &a["beta"]),
                (&b["alpha"], &b["beta"]),
                "{}",
                a["name"]
            );
        }
    }
    assert!(moved > 0, "no activation quantizer trained");
    let _ = std::fs::remove_dir_all(&root);
}

/// Detectors clip where `--clip-in` says, as classifiers do: with ternary weights, `--clip-in wq`
/// (the default: one norm over `∂ℓ/∂ŵ` and the other parameters, by the recipe's training step)
/// and `--clip-in w` (the optimizer's per-tensor clipping) train different models from the same
/// start. Before detectors trained through `QatStep`, `--clip-in` was ignored and the two were
/// the same file.
#[test]
fn a_detector_clips_in_the_domain_asked() {
    let _cpu = exclusive();
    let root = std::env::temp_dir().join(format!("quantnet-ssd-clip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = fixtures().join("neon-trees");
    let train = |domain: &str, name: &str| -> Vec<u8> {
        let run = root.join(name);
        let out = quantnet(&[
            "train",
            "--model",
            "ssd-small",
            "--dataset",
            "voc",
            "--data-dir",
            data.to_str().unwrap(),
            "--merge-classes",
            "tree",
            "--weights",
            "2",
            "--pretrain-epochs",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--calibration-images",
            "2",
            "--clip",
            "0.01",
            "--clip-in",
            domain,
            "--out",
            run.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        let mut record = std::fs::read(run.join("model.mpk")).unwrap();
        // Parameter ids are drawn afresh by every run: MessagePack `"id": <13-byte string>`.
        let key = b"\xa2id\xad";
        let mut i = 0;
        while let Some(at) = (record[i..].windows(key.len())).position(|w| w == key) {
            let start = i + at + key.len();
            record[start..start + 13].fill(0);
            i = start + 13;
        }
        record
    };
    let (wq, w) = (train("wq", "wq"), train("w", "w"));
    assert_eq!(wq.len(), w.len());
    assert_ne!(wq, w, "--clip-in wq and w trained the same detector");
    // And a run is reproducible, ids aside: the difference is the clipping's.
    assert_eq!(train("wq", "wq-again"), wq, "the same run twice");
    let _ = std::fs::remove_dir_all(&root);
}

/// A detector end to end on the neon-trees fixture (one 400×400 training tile, one test tile,
/// every box as one class): one full-precision epoch, then ternary weights and 4-bit
/// activations for one; the summary's mAPs, `eval`, `detect` (pictures and box lists), and the
/// exported `.qnet` detecting exactly what the run's model detects.
#[test]
fn a_detector_trains_evaluates_detects_and_exports() {
    let _cpu = exclusive();
    let root = std::env::temp_dir().join(format!("quantnet-ssd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let run = root.join("run");
    let data = fixtures().join("neon-trees");
    let out = quantnet(&[
        "train",
        "--model",
        "ssd-small",
        "--dataset",
        "voc",
        "--data-dir",
        data.to_str().unwrap(),
        "--merge-classes",
        "tree",
        "--weights",
        "2",
        "--acts",
        "4",
        "--pretrain-epochs",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--repeats",
        "2",
        "--calibration-images",
        "4",
        "--out",
        run.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{}", text, stderr(&out));
    assert!(
        text.contains("1 training images (61 boxes), 1 test images (37 boxes), classes tree"),
        "{text}"
    );
    assert!(text.contains("quantized 7 weight layer(s), calibrated 8 activation quantizer(s)"));
    assert!(
        text.contains("test mAP (VOC07, IoU 0.5, hard-quantized)"),
        "{text}"
    );
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    for key in [
        "test_map_fp",
        "test_map_hard",
        "test_map_soft",
        "test_map_hard_all_points",
    ] {
        let map = json_number(&summary, key);
        assert!((0.0..=100.0).contains(&map), "{key} {map}");
    }
    assert!(summary.contains("\"test_boxes\": 37"), "{summary}");
    assert!(
        summary.contains("\"classes\": [\n    \"tree\"\n  ]"),
        "{summary}"
    );
    assert_eq!(temperature(&summary, "weights"), 500.0);
    assert!(run.join("model.mpk").is_file() && run.join("init.mpk").is_file());
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("classes = [\"tree\"]"), "{config}");

    // eval recomputes the summary's hard mAP from model.mpk.
    let out = quantnet(&["eval", "--from", run.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    let hard = json_number(&summary, "test_map_hard");
    assert!(
        text.contains(&format!("hard-quantized {hard:.2}%")),
        "{text} vs {hard}"
    );

    // detect draws the boxes on the image and lists them.
    let image = data.join("images/SOAP_061.png");
    let pictures = root.join("pictures");
    let out = quantnet(&[
        "detect",
        "--from",
        run.to_str().unwrap(),
        "--min-score",
        "0.05",
        "--out",
        pictures.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let picture = image::open(pictures.join("SOAP_061.detections.png")).unwrap();
    assert_eq!((picture.width(), picture.height()), (400, 400));
    let listed = std::fs::read_to_string(pictures.join("SOAP_061.detections.csv")).unwrap();
    assert!(
        listed.starts_with("class,score,xmin,ymin,xmax,ymax\n"),
        "{listed}"
    );

    // The exported detector finds the same boxes with the same scores.
    let file = root.join("ssd.qnet");
    let out = quantnet(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported = root.join("exported");
    let out = quantnet(&[
        "detect",
        "--model-file",
        file.to_str().unwrap(),
        "--min-score",
        "0.05",
        "--out",
        exported.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = std::fs::read_to_string(exported.join("SOAP_061.detections.csv")).unwrap();
    // Class names are not in the .qnet file: class0 for tree.
    assert_eq!(again, listed.replace("\ntree,", "\nclass0,"));
    let _ = std::fs::remove_dir_all(&root);
}

/// Detectors and detection data go together; each mismatch is one line.
#[test]
fn detector_errors_are_one_clear_line() {
    let data = fixtures().join("neon-trees");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "train",
                "--model",
                "ssd-small",
                "--dataset",
                "fashion-mnist",
            ],
            "ssd-small is a detector: it trains on --dataset voc",
        ),
        (
            &["train", "--model", "lenet5", "--dataset", "voc"],
            "voc is a detection data set",
        ),
        (
            &[
                "train",
                "--model",
                "ssd300",
                "--dataset",
                "voc",
                "--limit",
                "10",
            ],
            "--limit is for classifiers, not detectors",
        ),
        (
            &["detect", "--from", "no-such-run", "no-such-image.png"],
            "no-such-image.png: no such image",
        ),
    ];
    for (args, expected) in cases {
        let mut args = args.to_vec();
        if args[0] == "train" {
            args.extend([
                "--data-dir",
                data.to_str().unwrap(),
                "--out",
                "/nonexistent/run",
            ]);
        }
        let out = quantnet(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
