//! The command line: `[--data-dir DIR] [--limit N] [--epochs N] [--qat-epochs N] [--seed S]
//! [--out DIR]`.

use std::path::PathBuf;

pub struct Args {
    /// The four MNIST IDX files (default `../shared/data/mnist`; the repository's
    /// `fixtures/mnist` holds 600 + 200 real images for a quick run).
    pub data_dir: PathBuf,
    /// Training images used (the first N; the test set is always whole).
    pub limit: Option<usize>,
    /// Full-precision epochs.
    pub epochs: usize,
    /// Quantized epochs (the quantized version only).
    pub qat_epochs: usize,
    /// Seeds the backend (initialisation, dropout) and the shuffling.
    pub seed: u64,
    /// Where the Learner writes its checkpoints and logs.
    pub out: PathBuf,
}

impl Args {
    pub fn parse() -> Result<Self, String> {
        let mut args = Self {
            data_dir: PathBuf::from("../shared/data/mnist"),
            limit: None,
            epochs: 3,
            qat_epochs: 2,
            seed: 42,
            out: std::env::temp_dir().join("quantnet-guide-model"),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
            match flag.as_str() {
                "--data-dir" => args.data_dir = value()?.into(),
                "--limit" => args.limit = Some(number(value()?)?),
                "--epochs" => args.epochs = number(value()?)?,
                "--qat-epochs" => args.qat_epochs = number(value()?)?,
                "--seed" => args.seed = number(value()?)? as u64,
                "--out" => args.out = value()?.into(),
                other => {
                    return Err(format!(
                        "unknown argument `{other}` (expected --data-dir DIR, --limit N, \
                         --epochs N, --qat-epochs N, --seed S, --out DIR)"
                    ));
                }
            }
        }
        if args.epochs == 0 || args.qat_epochs == 0 {
            return Err("--epochs and --qat-epochs must be at least 1".into());
        }
        Ok(args)
    }
}
