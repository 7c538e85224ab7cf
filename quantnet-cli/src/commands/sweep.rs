//! `quantnet sweep GRID.toml --out DIR`: a grid of training runs (any run-config field), one after
//! the other, resumable, summarised in `results.csv`, `results.md` and `accuracy-vs-bits.png`.
//!
//! The grid file has a `[fixed]` table (run-config fields shared by every cell) and an `[axes]`
//! table whose values are non-empty lists; the cells are the cartesian product of the axes (in
//! the order the file lists the axes, the last varying fastest). Every cell's config is built and validated before anything
//! runs, so a bad field, an empty axis or a method that cannot quantize a cell's precisions stops
//! the sweep up front, naming the cell. Each cell is an ordinary run directory
//! `DIR/cells/NAME` trained by a child `quantnet train` (its output in `DIR/cells/NAME.log`):
//! a cell with a `summary.json` is finished and skipped; one without (a killed sweep) is
//! started again from scratch. A cell that fails is recorded as failed, with its error, and the
//! sweep goes on. `{axis}` in a `[fixed]` string is replaced by the cell's value of that axis
//! (`from = "fp/cells/seed-{seed}"` starts each seed from its own full-precision run, whose
//! accuracy is then the cell's full-precision reference).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::chart::{self, COLORS, LineChart, Series};
use crate::cli::SweepArgs;
use crate::run::{RunConfig, Summary, write_atomic};

/// The grid as written: shared fields and the axes.
#[derive(Debug)]
pub(crate) struct Grid {
    fixed: toml::Table,
    axes: Vec<(String, Vec<toml::Value>)>,
}

/// One cell: its name, axis values and config.
#[derive(Debug)]
pub(crate) struct Cell {
    pub(crate) name: String,
    values: Vec<(String, String)>,
    cfg: RunConfig,
}

/// A value as it appears in names and tables (strings without quotes).
fn text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Grid {
    /// Parses a grid file's text.
    pub(crate) fn parse(source: &str) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(source).context("not valid TOML")?;
        let fixed = match table.remove("fixed") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(_) => bail!("[fixed] must be a table of run-config fields"),
        };
        let axes = match table.remove("axes") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => bail!("[axes] must be a table of lists"),
            None => bail!("the grid has no [axes] table (e.g. method = [\"qn\", \"ste\"])"),
        };
        if let Some(key) = table.keys().next() {
            bail!("unknown top-level entry `{key}`: a grid has only [fixed] and [axes]");
        }
        let mut list = Vec::new();
        for (name, value) in axes {
            let toml::Value::Array(values) = value else {
                bail!("axis `{name}` must be a list (e.g. {name} = [1, 2])");
            };
            if values.is_empty() {
                bail!("axis `{name}` is empty: give it at least one value");
            }
            if fixed.contains_key(&name) {
                bail!("`{name}` is both in [fixed] and in [axes]");
            }
            list.push((name, values));
        }
        if list.is_empty() {
            bail!("[axes] is empty: a sweep needs at least one axis");
        }
        Ok(Self { fixed, axes: list })
    }

    /// The axes' names, in cell order.
    pub(crate) fn axis_names(&self) -> Vec<String> {
        self.axes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Every cell with its validated config.
    ///
    /// # Errors
    /// The first cell whose config is not valid, by name.
    pub(crate) fn cells(&self) -> Result<Vec<Cell>> {
        let mut cells = Vec::new();
        let total: usize = self.axes.iter().map(|(_, v)| v.len()).product();
        for index in 0..total {
            let mut rest = index;
            let mut table = self.fixed.clone();
            let mut values = Vec::new();
            // The last axis varies fastest.
            let mut picks = vec![0; self.axes.len()];
            for (i, (_, axis)) in self.axes.iter().enumerate().rev() {
                picks[i] = rest % axis.len();
                rest /= axis.len();
            }
            for ((name, axis), &k) in self.axes.iter().zip(&picks) {
                table.insert(name.clone(), axis[k].clone());
                values.push((name.clone(), text(&axis[k])));
            }
            // `{axis}` in a fixed string stands for this cell's value of that axis (e.g.
            // `from = "runs/fp/cells/seed-{seed}"`).
            for (_, value) in table.iter_mut() {
                if let toml::Value::String(s) = value {
                    for (name, v) in &values {
                        *s = s.replace(&format!("{{{name}}}"), v);
                    }
                }
            }
            let name = cell_name(&values);
            let cfg = config_of(&table).with_context(|| format!("cell {name}"))?;
            cfg.validate().with_context(|| format!("cell {name}"))?;
            cells.push(Cell { name, values, cfg });
        }
        Ok(cells)
    }
}

impl Cell {
    /// Gives the cell a value for every axis of the sweep (in `axes` order): its own, or for an
    /// axis of another grid its config's value of that field; its name then lists them all
    /// (a sweep of one grid keeps the names `Grid::cells` gives).
    fn complete(&mut self, axes: &[String]) -> Result<()> {
        let table = toml::Table::try_from(&self.cfg).context("serialising a cell's config")?;
        self.values = axes
            .iter()
            .map(|a| {
                let own = self
                    .values
                    .iter()
                    .find(|(k, _)| k == a)
                    .map(|(_, v)| v.clone());
                let value = own
                    .or_else(|| table.get(a).map(text))
                    .unwrap_or_else(|| "—".into());
                (a.clone(), value)
            })
            .collect();
        self.name = cell_name(&self.values);
        Ok(())
    }
}

/// `axis-value_axis-value…`, with anything but letters, digits, `-`, `_` and `.` as `-`.
fn cell_name(values: &[(String, String)]) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}-{v}"))
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The run config of `table` over the defaults (unknown fields refused).
fn config_of(table: &toml::Table) -> Result<RunConfig> {
    let mut base = toml::Table::try_from(RunConfig::default()).context("the default config")?;
    base.extend(table.clone());
    let text = toml::to_string(&base).context("serialising the cell's config")?;
    toml::from_str::<RunConfig>(&text).map_err(|e| anyhow::anyhow!("{}", e.message()))
}

/// What became of a cell.
enum Outcome {
    Done(Box<Summary>),
    Failed(String),
    NotRun,
}

pub(crate) fn run(args: SweepArgs) -> Result<()> {
    // Every grid's cells, checked before anything runs; the axes are the union of the grids'.
    let mut cells: Vec<Cell> = Vec::new();
    let mut axes: Vec<String> = Vec::new();
    for path in &args.grids {
        let source =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let grid = Grid::parse(&source).with_context(|| format!("{}", path.display()))?;
        for name in grid.axis_names() {
            if !axes.contains(&name) {
                axes.push(name);
            }
        }
        cells.extend(
            grid.cells()
                .with_context(|| format!("{}", path.display()))?,
        );
    }
    for i in 0..cells.len() {
        cells[i].complete(&axes)?;
        if cells[..i].iter().any(|c| c.name == cells[i].name) {
            bail!("cell {} is in the grids twice", cells[i].name);
        }
    }
    if args.dry_run {
        // The listing is what `--dry-run` is for, often piped (`| head`): a closed pipe ends it.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let listed = writeln!(
            out,
            "sweep: {} cell(s) over {}",
            cells.len(),
            axes.join(" × ")
        )
        .and_then(|()| cells.iter().try_for_each(|c| writeln!(out, "  {}", c.name)))
        .and_then(|()| out.flush());
        return match listed {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(e).context("writing the cell list")
            }
            _ => Ok(()),
        };
    }
    println!("sweep: {} cell(s) over {}", cells.len(), axes.join(" × "));
    let dir = args.out.join("cells");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding the quantnet binary")?;
    let mut outcomes: Vec<Outcome> = cells.iter().map(|_| Outcome::NotRun).collect();
    for (i, cell) in cells.iter().enumerate() {
        let run_dir = dir.join(&cell.name);
        let config = dir.join(format!("{}.toml", cell.name));
        let text = toml::to_string(&cell.cfg).context("serialising a cell's config")?;
        if run_dir.join("summary.json").exists() {
            // A finished cell counts only if it ran this config (the grid may have changed;
            // fields added since, at their defaults, do not count as a change).
            let before = RunConfig::read(&config).ok();
            if before.as_ref() != Some(&cell.cfg) {
                bail!(
                    "cell {} in {} ran with another config than the grid gives now: remove {} \
                     to run it again, or use another --out",
                    cell.name,
                    args.out.display(),
                    run_dir.display()
                );
            }
            let summary = read_summary(&run_dir)
                .with_context(|| format!("{}: unreadable summary.json", run_dir.display()))?;
            println!("[{}/{}] {}: done before", i + 1, cells.len(), cell.name);
            outcomes[i] = Outcome::Done(Box::new(summary));
            continue;
        }
        if run_dir.exists() {
            // Killed mid-run (no summary.json): start the cell again.
            std::fs::remove_dir_all(&run_dir)
                .with_context(|| format!("clearing {}", run_dir.display()))?;
        }
        write_atomic(&config, text.as_bytes())?;
        let log_path = dir.join(format!("{}.log", cell.name));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let started = std::time::Instant::now();
        print!("[{}/{}] {} ... ", i + 1, cells.len(), cell.name);
        std::io::Write::flush(&mut std::io::stdout()).ok();
        let status = Command::new(&exe)
            .arg("train")
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&run_dir)
            .arg("--backend")
            .arg(args.backend.name())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting {}", exe.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        outcomes[i] = match (status.success(), read_summary(&run_dir)) {
            (true, Some(summary)) => {
                println!(
                    "hard {:.2}%{} ({seconds:.0} s)",
                    summary.test_accuracy_hard,
                    summary
                        .test_accuracy_fp
                        .map(|f| format!(", FP {f:.2}%"))
                        .unwrap_or_default()
                );
                Outcome::Done(Box::new(summary))
            }
            _ => {
                let error = last_error(&log_path)
                    .unwrap_or_else(|| format!("quantnet train exited with {status}"));
                println!("FAILED: {error}");
                Outcome::Failed(error)
            }
        };
        write_results(&args.out, &axes, &cells, &outcomes)?;
    }
    write_results(&args.out, &axes, &cells, &outcomes)?;
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Failed(_)))
        .count();
    println!(
        "wrote {0}/results.csv, {0}/results.md, {0}/accuracy-vs-bits.png{1}",
        args.out.display(),
        if failed > 0 {
            format!(" ({failed} cell(s) failed: see results.csv)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A finished run's summary; for a run started `--from` a full-precision run, with that run's
/// accuracy as its full-precision reference.
fn read_summary(run_dir: &Path) -> Option<Summary> {
    let read = |dir: &Path| -> Option<Summary> {
        let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
        serde_json::from_str(&text).ok()
    };
    let mut summary = read(run_dir)?;
    if summary.test_accuracy_fp.is_none()
        && let Ok(cfg) = RunConfig::read(&run_dir.join("config.toml"))
        && let Some(from) = cfg.from.as_deref().and_then(read)
        && from.weights == "fp"
        && matches!(from.acts.as_str(), "32" | "fp")
    {
        summary.test_accuracy_fp = Some(from.test_accuracy_hard);
    }
    Some(summary)
}

/// The last `error:` line of a cell's log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
}

/// `W2A2`, `W1` (full-precision activations), `FP`.
fn precision_label(weights: &str, acts: &str) -> String {
    let a_fp = matches!(acts, "32" | "fp");
    match (weights, a_fp) {
        ("fp", true) => "FP".into(),
        ("fp", false) => format!("A{acts}"),
        (w, true) => format!("W{w}"),
        (w, false) => format!("W{w}A{acts}"),
    }
}

/// Mean and sample standard deviation.
pub(crate) fn mean_sd(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((mean, sd))
}

fn fmt_mean_sd(values: &[f64]) -> String {
    match mean_sd(values) {
        None => "—".into(),
        Some((m, _)) if values.len() == 1 => format!("{m:.2}"),
        Some((m, sd)) => format!("{m:.2} ± {sd:.2}"),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_results(out: &Path, axes: &[String], cells: &[Cell], outcomes: &[Outcome]) -> Result<()> {
    // results.csv: one row per cell; the axes that are not among the standard columns first.
    const STANDARD: [&str; 7] = [
        "method", "model", "dataset", "weights", "acts", "seed", "epochs",
    ];
    let extra = |name: &str| !STANDARD.contains(&name);
    let mut csv = String::from("cell,status");
    for a in axes.iter().filter(|a| extra(a)) {
        let _ = write!(csv, ",{a}");
    }
    csv.push_str(
        ",method,model,dataset,weights,acts,seed,epochs,pretrain_epochs,train_images,\
         test_accuracy_fp,test_accuracy_hard,test_accuracy_soft,seconds,error\n",
    );
    for (cell, outcome) in cells.iter().zip(outcomes) {
        let status = match outcome {
            Outcome::Done(_) => "done",
            Outcome::Failed(_) => "failed",
            Outcome::NotRun => "not run",
        };
        let mut row = vec![cell.name.clone(), status.into()];
        row.extend(
            cell.values
                .iter()
                .filter(|(k, _)| extra(k))
                .map(|(_, v)| v.clone()),
        );
        let c = &cell.cfg;
        row.extend([
            c.method.to_string(),
            c.model.to_string(),
            c.dataset.to_string(),
            c.weights.to_string(),
            c.acts.to_string(),
            c.seed.to_string(),
            c.epochs.to_string(),
        ]);
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_default();
        match outcome {
            Outcome::Done(s) => row.extend([
                s.pretrain_epochs.to_string(),
                s.train_images.to_string(),
                opt(s.test_accuracy_fp),
                format!("{:.2}", s.test_accuracy_hard),
                opt(s.test_accuracy_soft),
                format!("{:.1}", s.seconds_per_epoch.iter().sum::<f64>()),
                String::new(),
            ]),
            Outcome::Failed(e) => {
                row.extend(std::iter::repeat_n(String::new(), 6));
                row.push(e.clone());
            }
            Outcome::NotRun => row.extend(std::iter::repeat_n(String::new(), 7)),
        }
        csv.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        csv.push('\n');
    }
    write_atomic(&out.join("results.csv"), csv.as_bytes())?;

    // results.md: mean ± sd over the seeds of each group of cells.
    let group_axes: Vec<&String> = axes.iter().filter(|a| *a != "seed").collect();
    let mut groups: Vec<(Vec<String>, Vec<&Summary>, usize)> = Vec::new();
    for (cell, outcome) in cells.iter().zip(outcomes) {
        let key: Vec<String> = cell
            .values
            .iter()
            .filter(|(k, _)| k != "seed")
            .map(|(_, v)| v.clone())
            .collect();
        let at = match groups.iter().position(|g| g.0 == key) {
            Some(i) => i,
            None => {
                groups.push((key, Vec::new(), 0));
                groups.len() - 1
            }
        };
        groups[at].2 += 1;
        if let Outcome::Done(s) = outcome {
            groups[at].1.push(s);
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Hard-quantized test accuracy (the model's accuracy) with the full-precision model each \
         run pretrained beside it; mean ± sd over the seeds (sample sd). Written by \
         `quantnet sweep`.\n"
    );
    let mut header = group_axes.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    header.extend(
        ["runs", "FP (%)", "hard (%)", "hard − FP", "soft (%)"]
            .iter()
            .map(|s| s.to_string()),
    );
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
    for (key, done, total) in &groups {
        let fp: Vec<f64> = done.iter().filter_map(|s| s.test_accuracy_fp).collect();
        let hard: Vec<f64> = done.iter().map(|s| s.test_accuracy_hard).collect();
        let soft: Vec<f64> = done.iter().filter_map(|s| s.test_accuracy_soft).collect();
        let diff: Vec<f64> = done
            .iter()
            .filter_map(|s| s.test_accuracy_fp.map(|f| s.test_accuracy_hard - f))
            .collect();
        let diff = match mean_sd(&diff) {
            None => "—".into(),
            Some((m, _)) if diff.len() == 1 => format!("{m:+.2}"),
            Some((m, sd)) => format!("{m:+.2} ± {sd:.2}"),
        };
        let mut row = key.clone();
        row.extend([
            if done.len() == *total {
                total.to_string()
            } else {
                format!("{} of {total}", done.len())
            },
            fmt_mean_sd(&fp),
            fmt_mean_sd(&hard),
            diff,
            fmt_mean_sd(&soft),
        ]);
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    write_atomic(&out.join("results.md"), md.as_bytes())?;
    plot_accuracy_vs_bits(&out.join("accuracy-vs-bits.png"), axes, cells, outcomes)
}

/// Mean hard accuracy per precision, one line per method (and per value of any other axis but
/// the seed and the precisions), the full-precision reference dashed.
fn plot_accuracy_vs_bits(
    path: &Path,
    axes: &[String],
    cells: &[Cell],
    outcomes: &[Outcome],
) -> Result<()> {
    let mut precisions: Vec<String> = Vec::new();
    // line label -> precision -> accuracies; line label -> FP accuracies.
    let mut lines: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    // reference label -> seed -> the FP accuracy (each full-precision model counted once).
    let mut fps: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (cell, outcome) in cells.iter().zip(outcomes) {
        let Outcome::Done(s) = outcome else { continue };
        let others: Vec<String> = cell
            .values
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "seed" | "method" | "weights" | "acts"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let context = others.join(", ");
        let precision = precision_label(&s.weights, &s.acts);
        let reference = if context.is_empty() {
            "full precision".to_string()
        } else {
            format!("full precision, {context}")
        };
        if let Some(fp) = s.test_accuracy_fp {
            fps.entry(reference.clone())
                .or_default()
                .insert(cell.cfg.seed, fp);
        }
        if precision == "FP" {
            fps.entry(reference)
                .or_default()
                .insert(cell.cfg.seed, s.test_accuracy_hard);
            continue;
        }
        if !precisions.contains(&precision) {
            precisions.push(precision.clone());
        }
        let label = if context.is_empty() {
            cell.cfg.method.to_string()
        } else {
            format!("{}, {context}", cell.cfg.method)
        };
        if !order.contains(&label) {
            order.push(label.clone());
        }
        lines
            .entry(label)
            .or_default()
            .entry(precision)
            .or_default()
            .push(s.test_accuracy_hard);
    }
    if precisions.is_empty() {
        return Ok(());
    }
    let mut series = Vec::new();
    for (i, label) in order.iter().enumerate() {
        let by_precision = &lines[label];
        let points = precisions
            .iter()
            .enumerate()
            .filter_map(|(x, p)| {
                by_precision
                    .get(p)
                    .and_then(|v| mean_sd(v))
                    .map(|(m, _)| (x as f64, m))
            })
            .collect();
        series.push(Series {
            label: label.clone(),
            points,
            color: COLORS[i % COLORS.len()],
            dashed: false,
        });
    }
    for (i, (label, by_seed)) in fps.iter().enumerate() {
        let values: Vec<f64> = by_seed.values().copied().collect();
        let (m, _) = mean_sd(&values).unwrap_or((f64::NAN, 0.0));
        series.push(Series {
            label: format!("{label} ({m:.2})"),
            points: vec![(0.0, m), ((precisions.len() - 1) as f64, m)],
            color: if i == 0 {
                RGB_BLACK
            } else {
                COLORS[(order.len() + i) % COLORS.len()]
            },
            dashed: true,
        });
    }
    let title = if axes.iter().any(|a| a == "seed") {
        "hard-quantized test accuracy (mean over seeds)"
    } else {
        "hard-quantized test accuracy"
    };
    let chart = LineChart {
        title: title.into(),
        x_desc: "precision".into(),
        y_desc: "accuracy (%)".into(),
        series,
        x_names: Some(precisions),
    };
    chart::save(path, 1, 1, chart::PANEL, |_, area| {
        chart::lines(area, &chart)
    })
}

const RGB_BLACK: plotters::style::RGBColor = plotters::style::RGBColor(0, 0, 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_the_product_of_the_axes_and_bad_grids_are_refused_up_front() {
        let grid = Grid::parse(
            "[fixed]\nepochs = 1\n[axes]\nmethod = [\"qn\", \"ste\"]\nseed = [1, 2, 3]\n",
        )
        .unwrap();
        let cells = grid.cells().unwrap();
        assert_eq!(cells.len(), 6);
        assert_eq!(cells[0].name, "method-qn_seed-1");
        assert_eq!(cells[5].name, "method-ste_seed-3");
        assert_eq!(cells[4].cfg.seed, 2);
        assert_eq!(cells[4].cfg.epochs, 1);
        let grid = Grid::parse("[fixed]\nfrom = \"fp/seed-{seed}\"\n[axes]\nseed = [7]\n").unwrap();
        let from = grid.cells().unwrap()[0].cfg.from.clone().unwrap();
        assert_eq!(from, std::path::PathBuf::from("fp/seed-7"));
        let err = |text: &str| {
            format!(
                "{:#}",
                Grid::parse(text).and_then(|g| g.cells()).unwrap_err()
            )
        };
        assert!(err("[axes]\nseed = []\n").contains("axis `seed` is empty"));
        assert!(err("[axes]\nseeds = [1]\n").contains("unknown field `seeds`"));
        assert!(err("[fixed]\nepoch = 1\n[axes]\nseed = [1]\n").contains("unknown field `epoch`"));
        let e = err("[fixed]\nweights = \"1\"\nacts = \"2\"\n[axes]\nmethod = [\"qn\", \"bwn\"]\n");
        assert!(
            e.contains("cell method-bwn") && e.contains("weights only"),
            "{e}"
        );
        assert!(err("[axes]\nseed = 1\n").contains("must be a list"));
        assert!(err("[fixed]\nseed = 1\n[axes]\nseed = [1]\n").contains("both"));
        assert!(err("[fixd]\n[axes]\nseed = [1]\n").contains("unknown top-level"));
    }

    #[test]
    fn summaries_are_mean_and_sample_sd() {
        let (m, sd) = mean_sd(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((m, sd), (2.0, 1.0));
        assert_eq!(fmt_mean_sd(&[84.5]), "84.50");
        assert_eq!(precision_label("2", "2"), "W2A2");
        assert_eq!(precision_label("1", "32"), "W1");
        assert_eq!(precision_label("fp", "32"), "FP");
    }
}
