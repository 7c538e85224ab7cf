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
            "must end in .png",
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
