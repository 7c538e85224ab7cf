//! `quantnet data fetch`: download a data set's standard archives, verify them, and put them
//! where the loaders look (`~/.cache/quantnet/data/<name>` by default).
//!
//! MNIST and Fashion-MNIST are checked by the SHA-256 of each file's *decompressed* IDX content,
//! so that any mirror's gzip of the same data passes (mirrors do recompress). CIFAR-10 is checked
//! by the MD5 its authors publish for `cifar-10-binary.tar.gz`, then its six `.bin` batches are
//! extracted.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use quantnet_models::data::Dataset;
use sha2::{Digest, Sha256};

use crate::cli::DataArgs;
use crate::run::write_atomic;

/// (file, SHA-256 of the decompressed content). Computed from the reference copies; the MD5s of
/// the same decompressed files match the values the data sets' authors publish.
const MNIST: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];

const FASHION_MNIST: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    (
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    (
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
];

/// CIFAR-10's binary archive and the MD5 published on its page.
const CIFAR_ARCHIVE: &str = "cifar-10-binary.tar.gz";
const CIFAR_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
const CIFAR_URL: &str = "https://www.cs.toronto.edu/~kriz/";
const VOC_URL: &str = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/";

fn mirrors(dataset: Dataset) -> Vec<&'static str> {
    match dataset {
        Dataset::Mnist => vec![
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ],
        Dataset::FashionMnist => {
            vec!["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
        }
        Dataset::Cifar10 => vec![CIFAR_URL],
        Dataset::Imagenet | Dataset::Voc => Vec::new(),
    }
}

/// Where downloaded data sets live: `$XDG_CACHE_HOME/quantnet/data`, else
/// `~/.cache/quantnet/data`; `None` when neither variable is set.
fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("quantnet/data"))
}

/// The download cache.
fn cache_root() -> Result<PathBuf> {
    cache_dir().context("neither $XDG_CACHE_HOME nor $HOME is set; pass --dir")
}

/// Where the CLI looks for a data set: `--data-dir` (the folder itself or its subfolder of the
/// data set's name), else `$QUANTNET_DATA`, `../shared/data`, `./data` and the download cache.
fn roots(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = explicit {
        return vec![dir.to_path_buf()];
    }
    let mut roots = Vec::new();
    if let Some(root) = std::env::var_os("QUANTNET_DATA") {
        roots.push(PathBuf::from(root));
    }
    roots.push(PathBuf::from("../shared/data"));
    roots.push(PathBuf::from("data"));
    roots.extend(cache_dir());
    roots
}

/// What to do when a data set is not found, naming the flags and commands that help.
fn hint(dataset: Dataset) -> String {
    match dataset {
        Dataset::Mnist | Dataset::FashionMnist => format!(
            "Download the four IDX .gz files from {} into one of them (or run `quantnet data \
             fetch {dataset}`), or pass --data-dir DIR.",
            mirrors(dataset)[0]
        ),
        Dataset::Cifar10 => format!(
            "Extract {CIFAR_URL}{CIFAR_ARCHIVE} into one of them (or run `quantnet data fetch \
             cifar10`), or pass --data-dir DIR."
        ),
        Dataset::Imagenet => {
            "Point --data-dir at a folder with train/ and val/ class folders (or labels.csv)."
                .into()
        }
        Dataset::Voc => format!(
            "Point --data-dir at a folder with Annotations/ and JPEGImages/ (VOC2007: extract \
             {VOC_URL}VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar, then pass \
             VOCdevkit/VOC2007) or annotations/ and images/."
        ),
    }
}

/// The data set's folder under the first root that holds it (see [`roots`]).
///
/// # Errors
/// One line naming every folder looked in and how to get the data.
pub(crate) fn locate(dataset: Dataset, explicit: Option<&Path>) -> Result<PathBuf> {
    let roots = roots(explicit);
    if let Some(dir) = roots.iter().find_map(|r| dataset.find_in(r)) {
        return Ok(dir);
    }
    let looked: Vec<String> = roots
        .iter()
        .flat_map(|r| [r.clone(), r.join(dataset.name())])
        .map(|d| d.display().to_string())
        .collect();
    bail!(
        "{dataset} not found; looked in {}. {}",
        looked.join(", "),
        hint(dataset)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `name` from `mirror` (a URL or a local folder), printing progress for downloads.
fn get(mirror: &str, name: &str) -> Result<Vec<u8>> {
    if !mirror.starts_with("http://") && !mirror.starts_with("https://") {
        let path = Path::new(mirror).join(name);
        return std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
    }
    let url = format!("{mirror}{name}");
    println!("downloading {url}");
    let response = ureq::get(&url)
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let total: Option<usize> = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok());
    let mut reader = response.into_reader();
    let mut bytes = Vec::with_capacity(total.unwrap_or(0));
    let mut chunk = vec![0u8; 1 << 16];
    let mut shown = 0;
    loop {
        let n = reader
            .read(&mut chunk)
            .with_context(|| format!("downloading {url}"))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(total) = total {
            let tenth = bytes.len() * 10 / total.max(1);
            if tenth > shown {
                shown = tenth;
                println!("  {:>3}% of {:.1} MB", tenth * 10, total as f64 / 1e6);
            }
        }
    }
    if let Some(total) = total
        && bytes.len() != total
    {
        bail!("downloading {url}: got {} of {total} bytes", bytes.len());
    }
    Ok(bytes)
}

/// Tries each mirror in turn; the error lists every attempt.
fn fetch_any(mirrors: &[String], name: &str) -> Result<Vec<u8>> {
    let mut failures = Vec::new();
    for m in mirrors {
        match get(m, name) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!("{}", failures.join("; "))
}

fn fetch_idx(dir: &Path, mirrors: &[String], files: &[(&str, &str)]) -> Result<()> {
    for (stem, sha) in files {
        let name = format!("{stem}.gz");
        let gz = fetch_any(mirrors, &name)?;
        let mut content = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut content)
            .with_context(|| format!("{name} is not a valid gzip file"))?;
        let got = hex(&Sha256::digest(&content));
        if got != *sha {
            bail!("{name}: SHA-256 of the content is {got}, expected {sha} (corrupt download?)");
        }
        write_atomic(&dir.join(&name), &gz)?;
        println!("  {name}: verified");
    }
    Ok(())
}

fn fetch_cifar(dir: &Path, mirrors: &[String]) -> Result<()> {
    let archive = fetch_any(mirrors, CIFAR_ARCHIVE)?;
    let got = format!("{:x}", md5::compute(&archive));
    if got != CIFAR_MD5 {
        bail!("{CIFAR_ARCHIVE}: MD5 {got}, expected {CIFAR_MD5} (corrupt download?)");
    }
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
    let mut extracted = 0;
    for entry in tar.entries().context("reading the CIFAR-10 archive")? {
        let mut entry = entry.context("reading the CIFAR-10 archive")?;
        let path = entry
            .path()
            .context("reading the CIFAR-10 archive")?
            .into_owned();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if name.ends_with(".bin") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            write_atomic(&dir.join(&name), &bytes)?;
            extracted += 1;
        }
    }
    if extracted != 6 {
        bail!("{CIFAR_ARCHIVE}: {extracted} batch files, expected 6");
    }
    println!("  {CIFAR_ARCHIVE}: verified, 6 batches extracted");
    Ok(())
}

/// Downloads `dataset` into `dir` (default: the cache) and returns the folder.
pub(crate) fn fetch(dataset: Dataset, dir: Option<&Path>, mirror: Option<&str>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => cache_root()?.join(dataset.name()),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mirrors: Vec<String> = match mirror {
        Some(m) => vec![if m.starts_with("http") && !m.ends_with('/') {
            format!("{m}/")
        } else {
            m.to_string()
        }],
        None => mirrors(dataset).into_iter().map(String::from).collect(),
    };
    println!("fetching {dataset} into {}", dir.display());
    match dataset {
        Dataset::Mnist => fetch_idx(&dir, &mirrors, &MNIST)?,
        Dataset::FashionMnist => fetch_idx(&dir, &mirrors, &FASHION_MNIST)?,
        Dataset::Cifar10 => fetch_cifar(&dir, &mirrors)?,
        Dataset::Imagenet => bail!(
            "ImageNet cannot be downloaded automatically (it needs an account at image-net.org); \
             put train/ and val/ class folders in a folder and pass --data-dir"
        ),
        Dataset::Voc => bail!(
            "VOC is not downloaded by quantnet (two archives of 440 MB): extract \
             {VOC_URL}VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar into one folder \
             and pass --data-dir FOLDER/VOCdevkit/VOC2007"
        ),
    }
    Ok(dir)
}

/// The data set's folder: found locally, or (when no folder was given) downloaded once into the
/// cache. When neither works, the error says where it looked and why the download failed.
pub(crate) fn locate_or_fetch(dataset: Dataset, explicit: Option<&Path>) -> Result<PathBuf> {
    match locate(dataset, explicit) {
        Ok(dir) => Ok(dir),
        Err(not_found) if explicit.is_none() => {
            println!("{dataset} not found locally; downloading it once into the cache");
            fetch(dataset, None, None)
                .map_err(|e| anyhow::anyhow!("{not_found} (the download failed too: {e:#})"))
        }
        Err(not_found) => Err(not_found),
    }
}

pub(crate) fn run(args: DataArgs) -> Result<()> {
    let crate::cli::DataCommand::Fetch(fetch_args) = args.command;
    let dir = fetch(
        fetch_args.dataset,
        fetch_args.dir.as_deref(),
        fetch_args.mirror.as_deref(),
    )?;
    println!("{} is ready in {}", fetch_args.dataset, dir.display());
    Ok(())
}
