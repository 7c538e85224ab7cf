//! Detection data: VOC images read for an SSD, with SSD's augmentation (Liu et al. §2.2 and
//! the reference implementation: photometric distortion, zoom out ("expand"), a random crop
//! under an IoU constraint, horizontal flip) and the resize to the detector's square input,
//! done in one resampling pass.
//!
//! [`DetectSet`] holds the annotations and decodes images when read (all of them kept decoded
//! when they are few: see [`DetectSet::new`]). [`DetectData::load`] splits a folder into
//! training and test images: VOC's `ImageSets/Main/{trainval,test}.txt` when present,
//! otherwise every third image (the 3rd, 6th, … in file order; the last one if there are fewer
//! than three) is a test image.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::boxes::{Prior, Target, match_priors};
use super::map::{BoxXyxy, GroundTruth, iou};
use super::voc::{VocImage, VocObject, VocSet};
use crate::data::imagefolder::{IMAGENET_MEAN, IMAGENET_STD};
use crate::data::splitmix64;
use crate::error::{Error, Result};

/// Images decoded once and kept when a set has at most this many pixels in all (about
/// 200 MB as RGB bytes); larger sets are decoded at every read.
pub const CACHE_PIXELS: u64 = 64 << 20;

/// SSD's training transform's ranges ([`DetectSet::read`] with a draw).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// The zoom-out canvas is up to this many times the image's size (SSD: 4; 1 turns zooming
    /// out off, for small objects).
    pub max_expand: f32,
    /// The smallest crop side, as a fraction of the canvas (SSD: 0.3).
    pub min_crop: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            max_expand: 4.0,
            min_crop: 0.3,
        }
    }
}

/// One input a set gives: a window of one of its images and the boxes whose centre is in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image (index into [`DetectSet::images`]).
    pub image: usize,
    /// `[x_min, y_min, x_max, y_max]` in the annotation's pixels.
    pub window: BoxXyxy,
    /// The boxes (pixels, clipped to the window).
    pub objects: Vec<VocObject>,
}

/// Annotated images, the samples (whole images, or windows of them: [`DetectSet::tiled`]) and
/// the decoded pixels.
#[derive(Clone, Debug)]
pub struct DetectSet {
    /// The class names (an object's class indexes them).
    pub classes: Vec<String>,
    /// The images and their boxes (pixels).
    pub images: Vec<VocImage>,
    /// What the set reads: one per image, or one per window.
    pub samples: Vec<Sample>,
    /// The training transform's ranges.
    pub augment: Augment,
    cache: Option<Arc<Vec<OnceLock<Arc<RgbImage>>>>>,
}

impl DetectSet {
    /// The images of `images` with `classes`, one sample per image; decoded images are kept when
    /// the set has at most [`CACHE_PIXELS`] pixels.
    pub fn new(classes: Vec<String>, images: Vec<VocImage>) -> Self {
        let pixels: u64 = images
            .iter()
            .map(|i| u64::from(i.size.0) * u64::from(i.size.1))
            .sum();
        let cache = (pixels <= CACHE_PIXELS)
            .then(|| Arc::new(images.iter().map(|_| OnceLock::new()).collect()));
        let samples = images
            .iter()
            .enumerate()
            .map(|(k, i)| Sample {
                image: k,
                window: [0.0, 0.0, i.size.0 as f32, i.size.1 as f32],
                objects: i.objects.clone(),
            })
            .collect();
        Self {
            classes,
            images,
            samples,
            augment: Augment::default(),
            cache,
        }
    }

    /// Every image cut into `side × side` windows (aerial tiles, say, whose objects are small:
    /// each window is then resized to the detector's input, not the whole image). Windows
    /// cover the image in rows and columns, the last of each aligned with the image's edge (so
    /// they may overlap); an image no larger than `side` is one window. A box belongs to the
    /// window holding its centre, clipped to it (a box on an overlap, to each such window).
    pub fn tiled(self, side: u32) -> Self {
        self.windows(side, false)
    }

    /// [`DetectSet::tiled`] without overlaps: windows at multiples of `side` only, the strip
    /// beyond the last whole window left out (an image side shorter than `side` is one window).
    pub fn tiled_disjoint(self, side: u32) -> Self {
        self.windows(side, true)
    }

    fn windows(mut self, side: u32, disjoint: bool) -> Self {
        let side = side.max(1);
        let starts = |len: u32| -> Vec<u32> {
            if len <= side {
                return vec![0];
            }
            let mut v: Vec<u32> = (0..=len - side).step_by(side as usize).collect();
            if !disjoint {
                v.push(len - side);
                v.dedup();
            }
            v
        };
        self.samples = self
            .images
            .iter()
            .enumerate()
            .flat_map(|(k, image)| {
                let (w, h) = image.size;
                let (xs, ys) = (starts(w), starts(h));
                let mut windows = Vec::new();
                for &y in &ys {
                    for &x in &xs {
                        let window = [
                            x as f32,
                            y as f32,
                            (x + side.min(w)) as f32,
                            (y + side.min(h)) as f32,
                        ];
                        let objects = image
                            .objects
                            .iter()
                            .filter(|o| {
                                let (cx, cy) =
                                    ((o.bbox[0] + o.bbox[2]) / 2.0, (o.bbox[1] + o.bbox[3]) / 2.0);
                                cx >= window[0]
                                    && cx < window[2]
                                    && cy >= window[1]
                                    && cy < window[3]
                            })
                            .map(|o| VocObject {
                                bbox: [
                                    o.bbox[0].max(window[0]),
                                    o.bbox[1].max(window[1]),
                                    o.bbox[2].min(window[2]),
                                    o.bbox[3].min(window[3]),
                                ],
                                ..o.clone()
                            })
                            .collect();
                        windows.push(Sample {
                            image: k,
                            window,
                            objects,
                        });
                    }
                }
                windows
            })
            .collect();
        self
    }

    /// The set with `augment` as its training transform's ranges.
    pub fn with_augment(mut self, augment: Augment) -> Self {
        self.augment = augment;
        self
    }

    /// Samples in the set.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the set has no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Boxes in all the samples.
    pub fn boxes(&self) -> usize {
        self.samples.iter().map(|s| s.objects.len()).sum()
    }

    /// Every box as one class called `name` (a one-class detector, e.g. "tree" for the
    /// neon-trees tiles, whose boxes are labelled Tree, Alive and Dead).
    pub fn merge_classes(mut self, name: &str) -> Self {
        self.classes = vec![name.to_string()];
        let objects = self
            .images
            .iter_mut()
            .flat_map(|i| i.objects.iter_mut())
            .chain(self.samples.iter_mut().flat_map(|s| s.objects.iter_mut()));
        for o in objects {
            o.class = 0;
        }
        self
    }

    /// Image `i` (of [`DetectSet::images`]), decoded to RGB.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Corrupt`] naming the file.
    pub fn pixels(&self, i: usize) -> Result<Arc<RgbImage>> {
        let decode = || -> Result<Arc<RgbImage>> {
            let path = &self.images[i].image;
            let img = image::open(path).map_err(|e| Error::Corrupt {
                path: path.clone(),
                reason: format!("not a readable image: {e}"),
            })?;
            Ok(Arc::new(img.to_rgb8()))
        };
        match &self.cache {
            Some(cache) => {
                if let Some(img) = cache[i].get() {
                    return Ok(img.clone());
                }
                let img = decode()?;
                Ok(cache[i].get_or_init(|| img).clone())
            }
            None => decode(),
        }
    }

    /// The ground truth of sample `i` as fractions of its window, for the mAP (`image` set to
    /// `id`).
    pub fn truths(&self, i: usize, id: usize) -> Vec<GroundTruth> {
        let sample = &self.samples[i];
        let [x0, y0, x1, y1] = sample.window;
        let (w, h) = (x1 - x0, y1 - y0);
        sample
            .objects
            .iter()
            .map(|o| GroundTruth {
                image: id,
                class: o.class,
                bbox: [
                    (o.bbox[0] - x0) / w,
                    (o.bbox[1] - y0) / h,
                    (o.bbox[2] - x0) / w,
                    (o.bbox[3] - y0) / h,
                ],
                difficult: o.difficult,
            })
            .collect()
    }

    /// Sample `i` as a detector input of `side × side` (normalised CHW planes) and its boxes as
    /// fractions of the input with their classes; augmented with SSD's transform drawn from
    /// `draw` when given, else the whole window resized.
    ///
    /// # Errors
    /// As [`DetectSet::pixels`].
    pub fn read(&self, i: usize, side: usize, draw: Option<u64>) -> Result<DetectItem> {
        let sample = &self.samples[i];
        let img = self.pixels(sample.image)?;
        let image = &self.images[sample.image];
        // The annotation's size, scaled to the decoded image if they differ.
        let (sx, sy) = (
            img.width() as f32 / image.size.0.max(1) as f32,
            img.height() as f32 / image.size.1.max(1) as f32,
        );
        let boxes: Vec<(BoxXyxy, usize, bool)> = sample
            .objects
            .iter()
            .map(|o| {
                (
                    [
                        o.bbox[0] * sx,
                        o.bbox[1] * sy,
                        o.bbox[2] * sx,
                        o.bbox[3] * sy,
                    ],
                    o.class,
                    o.difficult,
                )
            })
            .collect();
        let [x0, y0, x1, y1] = sample.window;
        let whole = View {
            x0: x0 * sx,
            y0: y0 * sy,
            w: (x1 - x0) * sx,
            h: (y1 - y0) * sy,
            flip: false,
        };
        let (view, boxes, colour) = match draw {
            None => (whole, boxes, None),
            Some(seed) => augment(seed, whole, boxes, self.augment),
        };
        // The window's pixels (the rest of the image is another sample's).
        let bounds = [
            (whole.x0.round() as i64).max(0),
            (whole.y0.round() as i64).max(0),
            ((whole.x0 + whole.w).round() as i64).min(i64::from(img.width())),
            ((whole.y0 + whole.h).round() as i64).min(i64::from(img.height())),
        ];
        let mut planes = resample(&img, &view, bounds, side);
        if let Some(c) = colour {
            c.apply(&mut planes);
        }
        for (k, plane) in planes.chunks_mut(side * side).enumerate() {
            for v in plane {
                *v = (*v / 255.0 - IMAGENET_MEAN[k]) / IMAGENET_STD[k];
            }
        }
        // Boxes in the view's fractions.
        let boxes = boxes
            .into_iter()
            .map(|(b, class, difficult)| {
                let mut f = [
                    (b[0] - view.x0) / view.w,
                    (b[1] - view.y0) / view.h,
                    (b[2] - view.x0) / view.w,
                    (b[3] - view.y0) / view.h,
                ];
                if view.flip {
                    f = [1.0 - f[2], f[1], 1.0 - f[0], f[3]];
                }
                (f.map(|v| v.clamp(0.0, 1.0)), class, difficult)
            })
            .collect();
        Ok(DetectItem {
            index: i,
            planes,
            side,
            boxes,
        })
    }
}

/// One read image: the input planes and its boxes.
#[derive(Clone, Debug)]
pub struct DetectItem {
    /// The image's index in its set.
    pub index: usize,
    /// `3 × side × side` normalised values, channel-major.
    pub planes: Vec<f32>,
    /// The input side.
    pub side: usize,
    /// Boxes (image fractions), classes and difficult flags.
    pub boxes: Vec<(BoxXyxy, usize, bool)>,
}

impl DetectItem {
    /// What each prior is trained on ([`match_priors`] at IoU 0.5; difficult boxes are
    /// trained on, as in the reference SSD).
    pub fn targets(&self, priors: &[Prior]) -> Vec<Target> {
        let truths: Vec<BoxXyxy> = self.boxes.iter().map(|b| b.0).collect();
        let classes: Vec<usize> = self.boxes.iter().map(|b| b.1).collect();
        match_priors(priors, &truths, &classes, 0.5)
    }
}

/// The region of the (expanded) image an input shows: `x0, y0, w, h` in the original image's
/// pixels (it may reach outside: the outside is the mean colour), mirrored if `flip`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct View {
    x0: f32,
    y0: f32,
    w: f32,
    h: f32,
    flip: bool,
}

/// Bilinear resampling of `view` of `img` to `side × side`, channel-major, 0..255, where only
/// the pixels of `bounds` (`[x_min, y_min, x_max, y_max)`, whole pixels) exist: a sample point
/// outside them (an expanded canvas) takes the ImageNet mean (the reference's expand fill);
/// inside, the neighbours are clamped to them (the border pixels extend).
fn resample(img: &RgbImage, view: &View, bounds: [i64; 4], side: usize) -> Vec<f32> {
    let w = img.width() as i64;
    let [bx0, by0, bx1, by1] = bounds;
    let mut out = vec![0.0f32; 3 * side * side];
    let mean = IMAGENET_MEAN.map(|m| m * 255.0);
    let raw = img.as_raw();
    let at = |x: i64, y: i64, c: usize| -> f32 {
        let (x, y) = (x.clamp(bx0, bx1 - 1), y.clamp(by0, by1 - 1));
        f32::from(raw[((y * w + x) * 3) as usize + c])
    };
    let (left, top) = (bx0 as f32 - 0.5, by0 as f32 - 0.5);
    let (right, bottom) = (bx1 as f32 - 0.5, by1 as f32 - 0.5);
    for oy in 0..side {
        let y = view.y0 + (oy as f32 + 0.5) * view.h / side as f32 - 0.5;
        for ox in 0..side {
            let fx = if view.flip { side - 1 - ox } else { ox };
            let x = view.x0 + (fx as f32 + 0.5) * view.w / side as f32 - 0.5;
            let inside = x >= left && y >= top && x <= right && y <= bottom;
            let (x0, y0) = (x.floor() as i64, y.floor() as i64);
            let (ax, ay) = (x - x0 as f32, y - y0 as f32);
            for (c, m) in mean.iter().enumerate() {
                out[c * side * side + oy * side + ox] = if inside {
                    (1.0 - ay) * ((1.0 - ax) * at(x0, y0, c) + ax * at(x0 + 1, y0, c))
                        + ay * ((1.0 - ax) * at(x0, y0 + 1, c) + ax * at(x0 + 1, y0 + 1, c))
                } else {
                    *m
                };
            }
        }
    }
    out
}

/// SSD's photometric distortion, applied to the resampled input (brightness, contrast and
/// saturation are per-pixel affine or linear maps, so they commute with the resampling).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Colour {
    brightness: f32,
    contrast: f32,
    saturation: f32,
}

impl Colour {
    fn apply(&self, planes: &mut [f32]) {
        let n = planes.len() / 3;
        for k in 0..n {
            let mut px = [planes[k], planes[n + k], planes[2 * n + k]];
            for v in &mut px {
                *v = *v * self.contrast + self.brightness;
            }
            let grey = 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2];
            for (c, v) in px.iter().enumerate() {
                planes[c * n + k] = (grey + (v - grey) * self.saturation).clamp(0.0, 255.0);
            }
        }
    }
}

/// A stream of uniform draws from one seed (SplitMix64).
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn coin(&mut self) -> bool {
        self.next() >> 63 == 1
    }
}

/// SSD's training transform for the `window` of an image with `boxes` (pixels): returns the
/// view, the boxes it keeps (pixels, unclipped: the caller clips) and the colour distortion.
///
/// - Photometric distortion, with probability ½ each: brightness ±32, contrast and saturation
///   × [0.5, 1.5].
/// - Expand, with probability ½: the window placed at a random spot of a canvas `r` times its
///   size, `r ∈ [1, max_expand]` (SSD: 4), filled with the mean colour.
/// - Crop: one of "the whole canvas", "any patch", or a patch whose IoU with some box is at
///   least 0.1, 0.3, 0.5, 0.7 or 0.9 (up to 50 tries each); patch sides `∈ [min_crop, 1]`
///   (SSD: 0.3) of the canvas, aspect ratio in `[½, 2]`; boxes whose centre falls inside are
///   kept.
/// - Flip, with probability ½.
fn augment(
    seed: u64,
    window: View,
    boxes: Vec<(BoxXyxy, usize, bool)>,
    ranges: Augment,
) -> (View, Vec<(BoxXyxy, usize, bool)>, Option<Colour>) {
    let mut d = Draws(splitmix64(seed));
    let colour = Colour {
        brightness: if d.coin() {
            d.uniform(-32.0, 32.0)
        } else {
            0.0
        },
        contrast: if d.coin() { d.uniform(0.5, 1.5) } else { 1.0 },
        saturation: if d.coin() { d.uniform(0.5, 1.5) } else { 1.0 },
    };
    // Expand: the canvas in the image's pixel coordinates, around the window.
    let (w, h) = (window.w, window.h);
    let (cx0, cy0, cw, ch) = if ranges.max_expand > 1.0 && d.coin() {
        let r = d.uniform(1.0, ranges.max_expand);
        let (cw, ch) = (w * r, h * r);
        (
            window.x0 - d.uniform(0.0, cw - w),
            window.y0 - d.uniform(0.0, ch - h),
            cw,
            ch,
        )
    } else {
        (window.x0, window.y0, w, h)
    };
    let modes = [
        None,
        Some(0.1),
        Some(0.3),
        Some(0.5),
        Some(0.7),
        Some(0.9),
        Some(f32::MIN),
    ];
    let mut view = View {
        x0: cx0,
        y0: cy0,
        w: cw,
        h: ch,
        flip: false,
    };
    let mut kept = boxes.clone();
    let mode = modes[(d.next() % modes.len() as u64) as usize];
    if let Some(min_iou) = mode {
        for _ in 0..50 {
            let pw = d.uniform(ranges.min_crop, 1.0) * cw;
            let ph = d.uniform(ranges.min_crop, 1.0) * ch;
            if pw / ph < 0.5 || pw / ph > 2.0 {
                continue;
            }
            let px = cx0 + d.uniform(0.0, cw - pw);
            let py = cy0 + d.uniform(0.0, ch - ph);
            let patch = [px, py, px + pw, py + ph];
            if !boxes.is_empty() && boxes.iter().all(|b| iou(&b.0, &patch) < min_iou) {
                continue;
            }
            let inside: Vec<_> = boxes
                .iter()
                .filter(|b| {
                    let (mx, my) = ((b.0[0] + b.0[2]) / 2.0, (b.0[1] + b.0[3]) / 2.0);
                    mx > patch[0] && mx < patch[2] && my > patch[1] && my < patch[3]
                })
                .cloned()
                .collect();
            if inside.is_empty() && !boxes.is_empty() {
                continue;
            }
            view = View {
                x0: px,
                y0: py,
                w: pw,
                h: ph,
                flip: false,
            };
            kept = inside
                .into_iter()
                .map(|(b, c, dif)| {
                    (
                        [
                            b[0].max(patch[0]),
                            b[1].max(patch[1]),
                            b[2].min(patch[2]),
                            b[3].min(patch[3]),
                        ],
                        c,
                        dif,
                    )
                })
                .collect();
            break;
        }
    }
    view.flip = d.coin();
    (view, kept, Some(colour))
}

/// A detection data set split into training and test images.
#[derive(Clone, Debug)]
pub struct DetectData {
    /// Training images.
    pub train: DetectSet,
    /// Test images.
    pub test: DetectSet,
    /// Boxes clipped to their image when reading the annotations.
    pub clipped: usize,
    /// Boxes skipped (empty after clipping).
    pub skipped: usize,
}

impl DetectData {
    /// Reads `dir` ([`VocSet::load`]) and splits it (see the [module docs](self)).
    ///
    /// # Errors
    /// As [`VocSet::load`]; [`Error::Corrupt`] for a split file naming an image that has no
    /// annotation; [`Error::Config`] when a split is empty.
    pub fn load(dir: &Path, classes: Option<&[String]>) -> Result<Self> {
        let set = VocSet::load(dir, classes)?;
        let sets = dir.join("ImageSets").join("Main");
        let (train, test): (Vec<VocImage>, Vec<VocImage>) =
            if sets.join("trainval.txt").is_file() && sets.join("test.txt").is_file() {
                let stems = |file: PathBuf| -> Result<Vec<String>> {
                    let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
                        path: file.clone(),
                        source,
                    })?;
                    Ok(text.split_whitespace().map(str::to_string).collect())
                };
                let pick = |names: Vec<String>, file: &str| -> Result<Vec<VocImage>> {
                    names
                        .into_iter()
                        .map(|name| {
                            set.images
                                .iter()
                                .find(|i| i.annotation.file_stem().is_some_and(|s| *s == *name))
                                .cloned()
                                .ok_or_else(|| Error::Corrupt {
                                    path: sets.join(file),
                                    reason: format!("names {name}, which has no annotation"),
                                })
                        })
                        .collect()
                };
                (
                    pick(stems(sets.join("trainval.txt"))?, "trainval.txt")?,
                    pick(stems(sets.join("test.txt"))?, "test.txt")?,
                )
            } else {
                let n = set.images.len();
                let mut split = (Vec::new(), Vec::new());
                for (i, image) in set.images.iter().cloned().enumerate() {
                    let is_test = if n < 3 { i + 1 == n } else { i % 3 == 2 };
                    if is_test {
                        split.1.push(image);
                    } else {
                        split.0.push(image);
                    }
                }
                split
            };
        if train.is_empty() || test.is_empty() {
            return Err(Error::Config {
                field: "data",
                reason: format!(
                    "{}: needs training and test images ({} and {} found)",
                    dir.display(),
                    train.len(),
                    test.len()
                ),
            });
        }
        Ok(Self {
            train: DetectSet::new(set.classes.clone(), train),
            test: DetectSet::new(set.classes.clone(), test),
            clipped: set.clipped,
            skipped: set.skipped,
        })
    }

    /// Every image of `dir` cut into disjoint `side × side` windows
    /// ([`DetectSet::tiled_disjoint`]), every third window (the 3rd, 6th, … in file order, each
    /// image's windows row by row) a test sample: a split inside each image, for a few large
    /// images (VOC's split files are not used).
    ///
    /// # Errors
    /// As [`DetectData::load`].
    pub fn load_windows(dir: &Path, classes: Option<&[String]>, side: u32) -> Result<Self> {
        let set = VocSet::load(dir, classes)?;
        let all = DetectSet::new(set.classes.clone(), set.images).tiled_disjoint(side);
        let mut train = all.clone();
        let mut test = all;
        let samples = std::mem::take(&mut train.samples);
        test.samples.clear();
        for (i, sample) in samples.into_iter().enumerate() {
            if i % 3 == 2 {
                test.samples.push(sample);
            } else {
                train.samples.push(sample);
            }
        }
        if train.is_empty() || test.is_empty() {
            return Err(Error::Config {
                field: "data",
                reason: format!(
                    "{}: {} windows of {side}×{side}: too few to split",
                    dir.display(),
                    train.len() + test.len()
                ),
            });
        }
        Ok(Self {
            train,
            test,
            clipped: set.clipped,
            skipped: set.skipped,
        })
    }

    /// Both sets cut into `side × side` windows ([`DetectSet::tiled`]).
    pub fn tiled(self, side: u32) -> Self {
        Self {
            train: self.train.tiled(side),
            test: self.test.tiled(side),
            ..self
        }
    }

    /// Every box as one class called `name` ([`DetectSet::merge_classes`]).
    pub fn merge_classes(self, name: &str) -> Self {
        Self {
            train: self.train.merge_classes(name),
            test: self.test.merge_classes(name),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/neon-trees")
    }

    #[test]
    fn the_fixture_splits_into_a_training_and_a_test_tile() {
        let data = DetectData::load(&fixture(), None).unwrap();
        assert_eq!(data.train.classes, ["Alive", "Dead", "Tree"]);
        // Two images (fewer than three): the last in file order is the test image.
        assert_eq!(data.train.len(), 1);
        assert_eq!(data.test.len(), 1);
        assert!(data.train.images[0].image.ends_with("OSBS_029.png"));
        assert!(data.test.images[0].image.ends_with("SOAP_061.png"));
        assert_eq!((data.train.boxes(), data.test.boxes()), (61, 37));
        let merged = data.merge_classes("tree");
        assert_eq!(merged.test.classes, ["tree"]);
        assert!(merged.test.images[0].objects.iter().all(|o| o.class == 0));
    }

    #[test]
    fn resampling_a_view_takes_pixels_mirrors_and_fills_outside_with_the_mean() {
        // A 2×2 image: red 10, 20 / 30, 40 (green and blue 0).
        let img = RgbImage::from_raw(2, 2, vec![10, 0, 0, 20, 0, 0, 30, 0, 0, 40, 0, 0]).unwrap();
        let all = [0, 0, 2, 2];
        let whole = View {
            x0: 0.0,
            y0: 0.0,
            w: 2.0,
            h: 2.0,
            flip: false,
        };
        // Same size: every sample point is a pixel centre.
        assert_eq!(
            &resample(&img, &whole, all, 2)[..4],
            &[10.0, 20.0, 30.0, 40.0]
        );
        let flipped = View {
            flip: true,
            ..whole
        };
        assert_eq!(
            &resample(&img, &flipped, all, 2)[..4],
            &[20.0, 10.0, 40.0, 30.0]
        );
        // The image in the right half of a 4×2 canvas, sampled at 4×4: the left half of each
        // row is outside (the mean, 0.485·255 in red), the right half the image's pixels.
        let expanded = View {
            x0: -2.0,
            y0: 0.0,
            w: 4.0,
            h: 2.0,
            flip: false,
        };
        let out = resample(&img, &expanded, all, 4);
        let mean = 0.485 * 255.0;
        // Row 0 samples y = −0.25 (clamped to the first row, still inside the image).
        assert_eq!(&out[..4], &[mean, mean, 10.0, 20.0]);
        // Row 3 samples y = 1.25: the last row.
        assert_eq!(&out[12..16], &[mean, mean, 30.0, 40.0]);
        // Row 1 samples y = 0.25: a quarter of the way down.
        assert_eq!(&out[4..8], &[mean, mean, 15.0, 25.0]);
        // Only the right column exists (a window of the image): the left one is outside.
        let out = resample(&img, &whole, [1, 0, 2, 2], 2);
        assert_eq!(&out[..4], &[mean, 20.0, mean, 40.0]);
    }

    #[test]
    fn a_plain_read_is_the_whole_image_with_its_boxes_as_fractions() {
        let data = DetectData::load(&fixture(), None).unwrap();
        let item = data.test.read(0, 64, None).unwrap();
        assert_eq!(item.planes.len(), 3 * 64 * 64);
        let image = &data.test.images[0];
        assert_eq!(item.boxes.len(), image.objects.len());
        for ((b, class, difficult), o) in item.boxes.iter().zip(&image.objects) {
            // SOAP_061 is 400×400.
            assert_eq!(*b, o.bbox.map(|v| v / 400.0));
            assert_eq!((*class, *difficult), (o.class, o.difficult));
        }
        assert_eq!(data.test.truths(0, 7)[3].bbox, item.boxes[3].0);
        assert_eq!(data.test.truths(0, 7)[3].image, 7);
    }

    #[test]
    fn augmented_reads_are_drawn_from_the_seed() {
        let data = DetectData::load(&fixture(), None).unwrap();
        let a = data.train.read(0, 48, Some(1)).unwrap();
        let again = data.train.read(0, 48, Some(1)).unwrap();
        assert_eq!(a.planes, again.planes);
        assert_eq!(a.boxes, again.boxes);
        let mut differ = 0;
        for draw in 2..12 {
            let b = data.train.read(0, 48, Some(draw)).unwrap();
            differ += usize::from(b.planes != a.planes);
            for (bbox, _, _) in &b.boxes {
                assert!(bbox.iter().all(|v| (0.0..=1.0).contains(v)), "{bbox:?}");
                assert!(bbox[2] > bbox[0] && bbox[3] > bbox[1], "{bbox:?}");
            }
        }
        assert_eq!(differ, 10);
    }

    #[test]
    fn tiling_cuts_windows_aligned_to_the_edges_and_gives_each_box_its_centres_window() {
        let data = DetectData::load(&fixture(), None).unwrap();
        // 400 pixels in windows of 250: starts 0 and 150 (the last aligned with the edge).
        let tiled = data.test.clone().tiled(250);
        let windows: Vec<BoxXyxy> = tiled.samples.iter().map(|s| s.window).collect();
        assert_eq!(
            windows,
            [
                [0.0, 0.0, 250.0, 250.0],
                [150.0, 0.0, 400.0, 250.0],
                [0.0, 150.0, 250.0, 400.0],
                [150.0, 150.0, 400.0, 400.0]
            ]
        );
        let image = &data.test.images[0];
        for o in &image.objects {
            let (cx, cy) = ((o.bbox[0] + o.bbox[2]) / 2.0, (o.bbox[1] + o.bbox[3]) / 2.0);
            let holding: Vec<_> = tiled
                .samples
                .iter()
                .filter(|s| {
                    cx >= s.window[0] && cx < s.window[2] && cy >= s.window[1] && cy < s.window[3]
                })
                .collect();
            assert!(!holding.is_empty());
            for s in holding {
                // The box, clipped to the window, is in the window's list.
                let clipped = [
                    o.bbox[0].max(s.window[0]),
                    o.bbox[1].max(s.window[1]),
                    o.bbox[2].min(s.window[2]),
                    o.bbox[3].min(s.window[3]),
                ];
                assert!(s.objects.iter().any(|x| x.bbox == clipped));
            }
        }
        // A window's read: its boxes as fractions of the window.
        let item = tiled.read(3, 50, None).unwrap();
        for ((b, _, _), o) in item.boxes.iter().zip(&tiled.samples[3].objects) {
            let expected = [
                (o.bbox[0] - 150.0) / 250.0,
                (o.bbox[1] - 150.0) / 250.0,
                (o.bbox[2] - 150.0) / 250.0,
                (o.bbox[3] - 150.0) / 250.0,
            ];
            assert_eq!(*b, expected);
        }
        assert_eq!(tiled.truths(3, 0).len(), tiled.samples[3].objects.len());
        // Windows at least as large as the image: the image itself.
        let whole = data.test.clone().tiled(400);
        assert_eq!(whole.samples, data.test.samples);
        // 1249 pixels in windows of 400: 0, 400, 800 and 849.
        let mut wide = data.test.images[0].clone();
        wide.size = (1249, 400);
        let set = DetectSet::new(vec!["tree".into()], vec![wide]).tiled(400);
        let starts: Vec<f32> = set.samples.iter().map(|s| s.window[0]).collect();
        assert_eq!(starts, [0.0, 400.0, 800.0, 849.0]);
    }

    #[test]
    fn a_window_split_puts_every_third_disjoint_window_in_the_test_set() {
        // OSBS_029 and SOAP_061 (400×400) in windows of 200: four each, row by row; windows
        // 2 and 5 (OSBS's bottom left, SOAP's top right) are the test samples.
        let data = DetectData::load_windows(&fixture(), None, 200).unwrap();
        let place = |s: &Sample| (s.image, s.window);
        assert_eq!(
            data.test.samples.iter().map(place).collect::<Vec<_>>(),
            [
                (0, [0.0, 200.0, 200.0, 400.0]),
                (1, [200.0, 0.0, 400.0, 200.0])
            ]
        );
        assert_eq!(data.train.len(), 6);
        // Disjoint windows: every box is in exactly one sample of the two sets.
        assert_eq!(data.train.boxes() + data.test.boxes(), 61 + 37);
        // The strip beyond the last whole window is left out: 400 in windows of 150 gives 0
        // and 150 (300 pixels), not a third window aligned with the edge.
        let set = data.test.clone().tiled_disjoint(150);
        let starts: Vec<f32> = set.samples.iter().map(|s| s.window[0]).collect();
        assert_eq!(starts, [0.0, 150.0, 0.0, 150.0, 0.0, 150.0, 0.0, 150.0]);
    }
}
