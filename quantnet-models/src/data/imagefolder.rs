//! ImageNet-style image folders: `DIR/<class>/<image>` (classes numbered in sorted folder-name
//! order), or `DIR/labels.csv` (`file,class_index,...`, images in `DIR/images/` or `DIR/`).
//!
//! Images are decoded (JPEG, PNG), converted to RGB, and resized so that the shorter side is
//! `size · 256/224` (256 for 224), then centre-cropped to `size × size`: the paper's test-time
//! transform (paper-spec §6). Training-time augmentation (a random crop of the resized image and a
//! horizontal flip) is [`augment`]. Normalisation is the usual per-channel mean/std
//! ([`IMAGENET_MEAN`], [`IMAGENET_STD`]) applied when items are made.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use super::ImageSet;
use crate::error::{Error, Result};

/// ImageNet's per-channel mean (RGB, pixels in [0, 1]).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The (image path, class) pairs of `dir`.
///
/// # Errors
/// [`Error::Io`] for unreadable folders, [`Error::Corrupt`] for a malformed `labels.csv`,
/// [`Error::NotFound`] when there are no images.
pub fn list(dir: &Path) -> Result<Vec<(PathBuf, u16)>> {
    let csv = dir.join("labels.csv");
    let mut out = Vec::new();
    if csv.is_file() {
        let text = std::fs::read_to_string(&csv).map_err(io(&csv))?;
        let images = if dir.join("images").is_dir() {
            dir.join("images")
        } else {
            dir.to_path_buf()
        };
        for (i, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: &str| Error::Corrupt {
                path: csv.clone(),
                reason: format!("line {}: {reason}", i + 1),
            };
            let (file, rest) = line.split_once(',').ok_or_else(|| bad("no class column"))?;
            let class = rest.split(',').next().unwrap_or("").trim();
            let class: u16 = class
                .parse()
                .map_err(|_| bad(&format!("class `{class}` is not a number")))?;
            out.push((images.join(file.trim()), class));
        }
    } else {
        let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        classes.sort();
        if classes.len() > usize::from(u16::MAX) {
            return Err(Error::Invalid(format!(
                "{}: too many classes",
                dir.display()
            )));
        }
        for (label, class) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(class)
                .map_err(io(class))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_image(p))
                .collect();
            files.sort();
            out.extend(files.into_iter().map(|f| (f, label as u16)));
        }
    }
    if out.is_empty() {
        return Err(Error::NotFound {
            dataset: "images".into(),
            looked: dir.display().to_string(),
            hint: "An image folder holds class subfolders of JPEG/PNG files, or labels.csv \
                   (file,class_index,...) next to them."
                .into(),
        });
    }
    Ok(out)
}

/// The size of a `w × h` image whose shorter side is resized to `side` (aspect ratio kept).
pub(crate) fn resized(w: u32, h: u32, side: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| {
        (u64::from(long) * u64::from(side) / u64::from(short.max(1))) as u32
    };
    if w <= h {
        (side, scale(h, w).max(side))
    } else {
        (scale(w, h).max(side), side)
    }
}

/// Decodes `path` to RGB, resizes its shorter side to `resize` and centre-crops `size × size`;
/// returns the three channel planes.
///
/// # Errors
/// [`Error::Io`] / [`Error::Corrupt`] naming the file.
pub fn load_image(path: &Path, resize: u32, size: u32) -> Result<Vec<u8>> {
    load_image_cropped(path, resize, size, None)
}

/// [`load_image`] with the crop drawn from `draw` when given (the training transform): its low
/// bits place the crop, bit 63 flips it horizontally.
pub(crate) fn load_image_cropped(
    path: &Path,
    resize: u32,
    size: u32,
    draw: Option<u64>,
) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let img = image::load_from_memory(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not a readable image: {e}"),
    })?;
    let (nw, nh) = resized(img.width(), img.height(), resize.max(size));
    let resized = img.resize_exact(nw, nh, FilterType::Triangle).to_rgb8();
    let ((x0, y0), flip) = match draw {
        None => (((nw - size) / 2, (nh - size) / 2), false),
        Some(bits) => (
            (
                (bits % u64::from(nw - size + 1)) as u32,
                ((bits >> 24) % u64::from(nh - size + 1)) as u32,
            ),
            bits >> 63 == 1,
        ),
    };
    let plane = (size * size) as usize;
    let mut out = vec![0u8; 3 * plane];
    for y in 0..size {
        for x in 0..size {
            let sx = if flip { size - 1 - x } else { x };
            let p = resized.get_pixel(x0 + sx, y0 + y);
            let i = (y * size + x) as usize;
            for c in 0..3 {
                out[c * plane + i] = p[c];
            }
        }
    }
    Ok(out)
}

/// Loads every image of `dir` at `size × size` (test-time transform).
///
/// # Errors
/// As [`list`] and [`load_image`].
pub fn load(dir: &Path, size: usize) -> Result<ImageSet> {
    let entries = list(dir)?;
    let size32 = u32::try_from(size).map_err(|_| Error::Invalid("image size too large".into()))?;
    let resize = size32 * 256 / 224;
    let mut images = Vec::with_capacity(entries.len() * 3 * size * size);
    let mut labels = Vec::with_capacity(entries.len());
    for (path, label) in entries {
        images.extend(load_image(&path, resize, size32)?);
        labels.push(label);
    }
    Ok(ImageSet {
        images,
        labels,
        channels: 3,
        rows: size,
        cols: size,
    })
}

/// Training-time augmentation of one `3 × size × size` image: a random crop at `(dx, dy)` of the
/// image zero-padded by `pad` pixels, and a horizontal flip when `flip` (the caller draws them).
pub fn augment(
    pixels: &[u8],
    size: usize,
    pad: usize,
    dx: usize,
    dy: usize,
    flip: bool,
) -> Vec<u8> {
    let plane = size * size;
    let mut out = vec![0u8; pixels.len()];
    for c in 0..pixels.len() / plane.max(1) {
        for y in 0..size {
            for x in 0..size {
                let sx = (x + dx.min(2 * pad)) as isize - pad as isize;
                let sy = (y + dy.min(2 * pad)) as isize - pad as isize;
                let sx = if flip { size as isize - 1 - sx } else { sx };
                if (0..size as isize).contains(&sx) && (0..size as isize).contains(&sy) {
                    out[c * plane + y * size + x] =
                        pixels[c * plane + sy as usize * size + sx as usize];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs the ImageNet samples in ../shared/data (not redistributable, so not a fixture); .ci/run runs it"]
    fn loads_the_real_imagenet_samples_with_their_labels() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/imagenet-samples");
        assert!(
            dir.is_dir(),
            "this test needs the ImageNet samples in {}",
            dir.display()
        );
        let set = load(&dir, 64).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.rows, set.cols),
            (20, 3, 64, 64)
        );
        // The labels are the class indices in the file names (imagenet_NN_L.jpg).
        let entries = list(&dir).unwrap();
        for ((path, label), l) in entries.iter().zip(&set.labels) {
            let name = path.file_stem().unwrap().to_str().unwrap();
            assert_eq!(
                name.rsplit('_').next().unwrap().parse::<u16>().unwrap(),
                *label
            );
            assert_eq!(label, l);
        }
        // A real photo: not a constant image.
        let img = set.image(0);
        assert!(img.iter().max() > img.iter().min());
    }

    #[test]
    fn class_folders_crops_flips_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("quantnet-imgfolder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (class, shade) in [("b_cat", 200u8), ("a_dog", 50)] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            // 40×20 image: the left half dark, the right half `shade`.
            let img = image::RgbImage::from_fn(40, 20, |x, _| {
                if x < 20 {
                    image::Rgb([0, 0, 0])
                } else {
                    image::Rgb([shade; 3])
                }
            });
            img.save(dir.join(class).join("x.png")).unwrap();
        }
        let set = load(&dir, 16).unwrap();
        // Classes in sorted order: a_dog = 0, b_cat = 1.
        assert_eq!(set.labels, vec![0, 1]);
        // Shorter side 20 -> 18, width 36, centre crop 16: columns 10..26 of the resized image,
        // so the left of the crop is dark and the right is the shade.
        let img = set.image(0);
        assert!(img[0] < 10 && img[15] > 40, "{:?}", &img[..16]);
        let flipped = augment(img, 16, 0, 0, 0, true);
        assert_eq!(flipped[0], img[15]);
        assert_eq!(flipped[15], img[0]);
        let shifted = augment(img, 16, 2, 0, 0, false);
        assert_eq!(shifted[0], 0, "padding is zero");
        std::fs::write(dir.join("a_dog").join("broken.jpg"), b"not a jpeg").unwrap();
        let err = load(&dir, 16).unwrap_err().to_string();
        assert!(
            err.contains("broken.jpg") && err.contains("not a readable image"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
