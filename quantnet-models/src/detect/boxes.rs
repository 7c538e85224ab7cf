//! SSD's box arithmetic (Liu et al., ECCV 2016), on plain vectors: the default (prior) boxes,
//! the offset encoding with variances, matching boxes to priors, hard-negative mining and
//! non-maximum suppression. The detector's loss and decoding are built on these.
//!
//! Boxes are `[x_min, y_min, x_max, y_max]` in image fractions (0..1); priors are
//! `[cx, cy, w, h]`, as in the reference implementations.

use super::map::{BoxXyxy, iou};

/// A default box `[cx, cy, w, h]`, in image fractions.
pub type Prior = [f32; 4];

/// The default boxes of one feature map: `size × size` cells, `step` input pixels apart.
#[derive(Clone, Debug, PartialEq)]
pub struct PriorLayer {
    /// The feature map's side.
    pub size: usize,
    /// Input pixels between two cells.
    pub step: f32,
    /// The smaller box side, in input pixels.
    pub min_size: f32,
    /// The larger square box has side `√(min_size · max_size)`.
    pub max_size: f32,
    /// Extra aspect ratios; each adds the boxes `r` and `1/r`.
    pub ratios: Vec<f32>,
}

/// SSD300's six feature maps (38, 19, 10, 5, 3, 1) with its sizes and ratios: 8732 boxes.
pub fn ssd300_layers() -> Vec<PriorLayer> {
    let sizes = [38, 19, 10, 5, 3, 1];
    let steps = [8.0, 16.0, 32.0, 64.0, 100.0, 300.0];
    let min = [30.0, 60.0, 111.0, 162.0, 213.0, 264.0];
    let max = [60.0, 111.0, 162.0, 213.0, 264.0, 315.0];
    let ratios: [&[f32]; 6] = [
        &[2.0],
        &[2.0, 3.0],
        &[2.0, 3.0],
        &[2.0, 3.0],
        &[2.0],
        &[2.0],
    ];
    (0..6)
        .map(|k| PriorLayer {
            size: sizes[k],
            step: steps[k],
            min_size: min[k],
            max_size: max[k],
            ratios: ratios[k].to_vec(),
        })
        .collect()
}

/// The default boxes of `layers` for an `image`-pixel square input, layer by layer, cell by
/// cell (row-major), in each cell: the small square, the large square, then `r` and `1/r` for
/// each ratio; clipped to [0, 1].
pub fn priors(layers: &[PriorLayer], image: f32) -> Vec<Prior> {
    let mut out = Vec::new();
    for layer in layers {
        let cells = image / layer.step;
        let small = layer.min_size / image;
        let large = (small * layer.max_size / image).sqrt();
        for i in 0..layer.size {
            for j in 0..layer.size {
                let (cx, cy) = ((j as f32 + 0.5) / cells, (i as f32 + 0.5) / cells);
                out.push([cx, cy, small, small]);
                out.push([cx, cy, large, large]);
                for &r in &layer.ratios {
                    let s = r.sqrt();
                    out.push([cx, cy, small * s, small / s]);
                    out.push([cx, cy, small / s, small * s]);
                }
            }
        }
    }
    for p in &mut out {
        for v in p.iter_mut() {
            *v = v.clamp(0.0, 1.0);
        }
    }
    out
}

/// A prior as a corner box.
pub fn corners(p: &Prior) -> BoxXyxy {
    [
        p[0] - p[2] / 2.0,
        p[1] - p[3] / 2.0,
        p[0] + p[2] / 2.0,
        p[1] + p[3] / 2.0,
    ]
}

/// SSD's variances: centre offsets are divided by 0.1 of the prior's size, log size ratios by 0.2.
pub const VARIANCES: [f32; 2] = [0.1, 0.2];

/// The regression target of box `b` against prior `p`.
pub fn encode(b: &BoxXyxy, p: &Prior) -> [f32; 4] {
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    [
        (cx - p[0]) / (VARIANCES[0] * p[2]),
        (cy - p[1]) / (VARIANCES[0] * p[3]),
        (w / p[2]).ln() / VARIANCES[1],
        (h / p[3]).ln() / VARIANCES[1],
    ]
}

/// The box that offsets `t` give against prior `p` (the inverse of [`encode`]).
pub fn decode(t: &[f32; 4], p: &Prior) -> BoxXyxy {
    let (cx, cy) = (
        p[0] + t[0] * VARIANCES[0] * p[2],
        p[1] + t[1] * VARIANCES[0] * p[3],
    );
    let (w, h) = (
        p[2] * (t[2] * VARIANCES[1]).exp(),
        p[3] * (t[3] * VARIANCES[1]).exp(),
    );
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

/// What each prior is trained on.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Background (class 0 of the classifier).
    Background,
    /// The object `truth` (an index into the image's boxes), with its class + 1 as the
    /// classifier's label, and the prior's regression target.
    Object {
        /// The index of the matched box.
        truth: usize,
        /// `class + 1`.
        label: usize,
        /// [`encode`] of the box against the prior.
        offsets: [f32; 4],
    },
}

/// SSD's matching: every prior takes the box it overlaps most if that IoU reaches `threshold`
/// (0.5), and every box takes its best prior whatever the IoU (so that no box is left without
/// one; a prior that is two boxes' best goes to the later box, as the reference code does).
pub fn match_priors(
    priors: &[Prior],
    truths: &[BoxXyxy],
    classes: &[usize],
    threshold: f32,
) -> Vec<Target> {
    let boxes: Vec<BoxXyxy> = priors.iter().map(corners).collect();
    let mut best: Vec<(Option<usize>, f32)> = boxes
        .iter()
        .map(|b| {
            truths
                .iter()
                .enumerate()
                .map(|(t, g)| (Some(t), iou(b, g)))
                .fold((None, 0.0), |a, c| if c.1 > a.1 { c } else { a })
        })
        .collect();
    for (t, g) in truths.iter().enumerate() {
        let forced = boxes
            .iter()
            .enumerate()
            .map(|(k, b)| (k, iou(b, g)))
            .fold((0, -1.0), |a, c| if c.1 > a.1 { c } else { a });
        if forced.1 >= 0.0 && !boxes.is_empty() {
            best[forced.0] = (Some(t), 2.0);
        }
    }
    best.into_iter()
        .zip(priors)
        .map(|((truth, overlap), p)| match truth {
            Some(t) if overlap >= threshold => Target::Object {
                truth: t,
                label: classes[t] + 1,
                offsets: encode(&truths[t], p),
            },
            _ => Target::Background,
        })
        .collect()
}

/// Hard-negative mining: the background priors with the highest classification loss, at most
/// `ratio` (3) per positive prior; returns a mask over the priors of the negatives kept.
pub fn hard_negatives(targets: &[Target], background_loss: &[f32], ratio: usize) -> Vec<bool> {
    let positives = targets
        .iter()
        .filter(|t| matches!(t, Target::Object { .. }))
        .count();
    let mut negatives: Vec<usize> = (0..targets.len())
        .filter(|&k| targets[k] == Target::Background)
        .collect();
    negatives.sort_by(|&a, &b| {
        background_loss[b]
            .total_cmp(&background_loss[a])
            .then(a.cmp(&b))
    });
    let mut keep = vec![false; targets.len()];
    for &k in negatives.iter().take(ratio * positives) {
        keep[k] = true;
    }
    keep
}

/// Greedy non-maximum suppression: boxes by decreasing score, each dropped if it overlaps an
/// already kept box by more than `threshold` (SSD: 0.45); at most `top_k` kept. Returns the
/// kept indices, best first.
pub fn nms(boxes: &[BoxXyxy], scores: &[f32], threshold: f32, top_k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::new();
    for k in order {
        if kept.len() >= top_k {
            break;
        }
        if kept.iter().all(|&j| iou(&boxes[j], &boxes[k]) <= threshold) {
            kept.push(k);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssd300_has_8732_default_boxes_with_the_papers_first_cell() {
        let p = priors(&ssd300_layers(), 300.0);
        // 38²·4 + 19²·6 + 10²·6 + 5²·6 + 3²·4 + 1²·4.
        assert_eq!(p.len(), 5776 + 2166 + 600 + 150 + 36 + 4);
        // The first cell of the 38×38 map: centre (0.5·8/300, 0.5·8/300); the small square
        // 30/300 = 0.1; the large √(0.1·0.2) = 0.1414; ratio 2: 0.1·√2 by 0.1/√2.
        let c = 4.0 / 300.0;
        let close = |a: &Prior, b: [f32; 4]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&p[0], [c, c, 0.1, 0.1]), "{:?}", p[0]);
        assert!(
            close(&p[1], [c, c, 0.02f32.sqrt(), 0.02f32.sqrt()]),
            "{:?}",
            p[1]
        );
        assert!(
            close(&p[2], [c, c, 0.1 * 2f32.sqrt(), 0.1 / 2f32.sqrt()]),
            "{:?}",
            p[2]
        );
        // The last: the 1×1 map's ratio-2 box 264/300·√2 = 1.24, clipped to 1.
        assert!(
            close(&p[8731], [0.5, 0.5, 0.88 / 2f32.sqrt(), 1.0]),
            "{:?}",
            p[8731]
        );
    }

    #[test]
    fn encoding_inverts_and_has_the_variance_scaled_values() {
        let prior = [0.5, 0.5, 0.2, 0.4];
        // A box centred 0.02 right of the prior, twice as wide, as tall: offsets
        // (0.02/(0.1·0.2), 0, ln 2/0.2, 0) = (1, 0, 3.4657, 0).
        let b = [0.32, 0.3, 0.72, 0.7];
        let t = encode(&b, &prior);
        for (x, y) in t.iter().zip([1.0, 0.0, 2f32.ln() / 0.2, 0.0]) {
            assert!((x - y).abs() < 1e-5, "{t:?}");
        }
        let back = decode(&t, &prior);
        for (x, y) in back.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{back:?}");
        }
    }

    #[test]
    fn matching_thresholds_forces_each_box_a_prior_and_mines_the_hardest_negatives() {
        // Four priors; a box equal to prior 0 (IoU 1), and a small box whose best prior (1)
        // overlaps it by less than the threshold: forced.
        let priors = [
            [0.25, 0.25, 0.5, 0.5],
            [0.75, 0.75, 0.5, 0.5],
            [0.5, 0.5, 0.2, 0.2],
            [0.1, 0.9, 0.1, 0.1],
        ];
        let truths = [[0.0, 0.0, 0.5, 0.5], [0.8, 0.8, 0.9, 0.9]];
        let targets = match_priors(&priors, &truths, &[3, 0], 0.5);
        assert!(matches!(
            targets[0],
            Target::Object {
                truth: 0,
                label: 4,
                ..
            }
        ));
        assert!(matches!(
            targets[1],
            Target::Object {
                truth: 1,
                label: 1,
                ..
            }
        ));
        assert_eq!(targets[2], Target::Background);
        assert_eq!(targets[3], Target::Background);
        if let Target::Object { offsets, .. } = &targets[0] {
            assert!(offsets.iter().all(|v| v.abs() < 1e-6), "{offsets:?}");
        }
        // Two positives, one negative each: the two background priors are kept (there are only
        // two), the positives never.
        let keep = hard_negatives(&targets, &[9.0, 9.0, 0.5, 0.7], 1);
        assert_eq!(keep, vec![false, false, true, true]);
        let one = hard_negatives(&targets[..3], &[9.0, 9.0, 0.5], 3);
        assert_eq!(one, vec![false, false, true]);
        // One positive, ratio 1: only the background prior with the larger loss.
        let single = [Target::Background, targets[0].clone(), Target::Background];
        assert_eq!(
            hard_negatives(&single, &[0.2, 5.0, 0.9], 1),
            vec![false, false, true]
        );
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = [
            [0.0, 0.0, 1.0, 1.0],
            [0.05, 0.0, 1.05, 1.0], // IoU with 0: 0.95/1.05 = 0.905
            [2.0, 2.0, 3.0, 3.0],
            [0.5, 0.0, 1.5, 1.0], // IoU with 0: 0.5/1.5 = 0.333
        ];
        let scores = [0.8, 0.9, 0.3, 0.7];
        // 1 (0.9) kept; 0 overlaps it by 0.905: dropped; 3 overlaps 1 by 0.55/1.45 = 0.379:
        // kept; 2 kept.
        assert_eq!(nms(&boxes, &scores, 0.45, 10), vec![1, 3, 2]);
        assert_eq!(nms(&boxes, &scores, 0.45, 2), vec![1, 3]);
        assert_eq!(nms(&boxes, &scores, 0.95, 10), vec![1, 0, 3, 2]);
    }
}
