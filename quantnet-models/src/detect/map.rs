//! Pascal VOC mean average precision: per-class AP at an IoU threshold, with the VOC2007
//! 11-point interpolation or the all-point one (VOC2010 and later), as the VOC devkit computes
//! them.
//!
//! Per class, detections are taken by decreasing score. A detection matches the ground-truth
//! box of its image and class with the highest IoU. If that IoU reaches the threshold (0.5 for
//! VOC), the detection is:
//! - a true positive when the box is not yet matched and not `difficult`;
//! - ignored (neither true nor false) when the box is `difficult`;
//! - a false positive when the box is already matched.
//!
//! Below the threshold it is a false positive. Recall counts the non-difficult boxes only.
//! Boxes are `[x_min, y_min, x_max, y_max]` in continuous coordinates (no +1 pixel: the boxes
//! here are the model's, in image units).

/// A box `[x_min, y_min, x_max, y_max]`.
pub type BoxXyxy = [f32; 4];

/// A ground-truth object.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundTruth {
    /// The image it is in (any id shared with the detections).
    pub image: usize,
    /// Its class.
    pub class: usize,
    /// Its box.
    pub bbox: BoxXyxy,
    /// VOC's `difficult` flag: neither counted for recall nor penalised when detected.
    pub difficult: bool,
}

/// A detection.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// The image it is in.
    pub image: usize,
    /// Its class.
    pub class: usize,
    /// Its confidence.
    pub score: f32,
    /// Its box.
    pub bbox: BoxXyxy,
}

/// How precision is interpolated over recall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// VOC2007: the mean of the interpolated precision at recall 0, 0.1, …, 1.
    ElevenPoint,
    /// VOC2010 and later: the area under the interpolated (monotone) precision-recall curve.
    AllPoints,
}

/// Intersection over union of two boxes (0 when either is empty).
pub fn iou(a: &BoxXyxy, b: &BoxXyxy) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &BoxXyxy| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The precision-recall points of `class`, in order of decreasing score: `(recall, precision)`
/// after each counted detection, and the number of non-difficult boxes.
fn curve(
    detections: &[Detection],
    truths: &[GroundTruth],
    class: usize,
    threshold: f32,
) -> (Vec<(f64, f64)>, usize) {
    let boxes: Vec<&GroundTruth> = truths.iter().filter(|g| g.class == class).collect();
    let positives = boxes.iter().filter(|g| !g.difficult).count();
    let mut matched = vec![false; boxes.len()];
    let mut dets: Vec<&Detection> = detections.iter().filter(|d| d.class == class).collect();
    // Stable: equal scores keep their given order.
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut points = Vec::with_capacity(dets.len());
    for d in dets {
        let best = boxes
            .iter()
            .enumerate()
            .filter(|(_, g)| g.image == d.image)
            .map(|(k, g)| (k, iou(&d.bbox, &g.bbox)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((k, overlap)) if overlap >= threshold => {
                if boxes[k].difficult {
                    continue;
                }
                if matched[k] {
                    fp += 1;
                } else {
                    matched[k] = true;
                    tp += 1;
                }
            }
            _ => fp += 1,
        }
        let recall = if positives > 0 {
            tp as f64 / positives as f64
        } else {
            0.0
        };
        points.push((recall, tp as f64 / (tp + fp) as f64));
    }
    (points, positives)
}

/// The average precision of `class` at IoU `threshold`; `None` when the class has no
/// non-difficult ground-truth box (VOC leaves such a class out of the mean).
pub fn average_precision(
    detections: &[Detection],
    truths: &[GroundTruth],
    class: usize,
    threshold: f32,
    interpolation: Interpolation,
) -> Option<f64> {
    let (points, positives) = curve(detections, truths, class, threshold);
    if positives == 0 {
        return None;
    }
    Some(match interpolation {
        Interpolation::ElevenPoint => {
            (0..=10)
                .map(|k| {
                    // The devkit's thresholds 0:0.1:1, computed as it does (0.1·3 is slightly
                    // above 0.3: a recall of exactly 0.3 does not reach it).
                    let t = f64::from(k) * 0.1;
                    points
                        .iter()
                        .filter(|(r, _)| *r >= t)
                        .map(|(_, p)| *p)
                        .fold(0.0, f64::max)
                })
                .sum::<f64>()
                / 11.0
        }
        Interpolation::AllPoints => {
            // The precision envelope (the best precision at this recall or beyond), integrated
            // over the recall steps.
            let mut area = 0.0;
            let mut previous = 0.0;
            for (i, &(recall, _)) in points.iter().enumerate() {
                if recall > previous {
                    let envelope = points[i..].iter().map(|(_, p)| *p).fold(0.0, f64::max);
                    area += (recall - previous) * envelope;
                    previous = recall;
                }
            }
            area
        }
    })
}

/// Per-class AP (`None` for a class without non-difficult boxes) and their mean over the
/// classes that have one.
#[derive(Clone, Debug, PartialEq)]
pub struct MapReport {
    /// AP of each class `0..classes`.
    pub per_class: Vec<Option<f64>>,
    /// Their mean (0 when no class has a box).
    pub map: f64,
}

/// [`average_precision`] of every class `0..classes`, and their mean.
pub fn mean_average_precision(
    detections: &[Detection],
    truths: &[GroundTruth],
    classes: usize,
    threshold: f32,
    interpolation: Interpolation,
) -> MapReport {
    let per_class: Vec<Option<f64>> = (0..classes)
        .map(|c| average_precision(detections, truths, c, threshold, interpolation))
        .collect();
    let present: Vec<f64> = per_class.iter().flatten().copied().collect();
    let map = if present.is_empty() {
        0.0
    } else {
        present.iter().sum::<f64>() / present.len() as f64
    };
    MapReport { per_class, map }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(image: usize, class: usize, bbox: BoxXyxy) -> GroundTruth {
        GroundTruth {
            image,
            class,
            bbox,
            difficult: false,
        }
    }

    fn det(image: usize, class: usize, score: f32, bbox: BoxXyxy) -> Detection {
        Detection {
            image,
            class,
            score,
            bbox,
        }
    }

    const A: BoxXyxy = [0.0, 0.0, 10.0, 10.0];
    const B: BoxXyxy = [20.0, 20.0, 30.0, 30.0];
    const C: BoxXyxy = [40.0, 0.0, 50.0, 10.0];

    #[test]
    fn iou_of_hand_made_boxes() {
        assert_eq!(iou(&A, &A), 1.0);
        assert_eq!(iou(&A, &B), 0.0);
        // [5,0,15,10] against A: intersection 5×10 = 50, union 100 + 100 − 50 = 150.
        assert!((iou(&A, &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
        // Inside: 4×4 = 16 of A's 100.
        assert!((iou(&A, &[3.0, 3.0, 7.0, 7.0]) - 0.16).abs() < 1e-6);
        assert_eq!(iou(&[1.0, 1.0, 1.0, 5.0], &A), 0.0, "an empty box");
    }

    #[test]
    fn perfect_and_empty_detections() {
        let truths = [gt(0, 0, A), gt(1, 0, B)];
        let perfect = [det(0, 0, 0.9, A), det(1, 0, 0.8, B)];
        for i in [Interpolation::ElevenPoint, Interpolation::AllPoints] {
            assert_eq!(average_precision(&perfect, &truths, 0, 0.5, i), Some(1.0));
            assert_eq!(average_precision(&[], &truths, 0, 0.5, i), Some(0.0));
            // No box of class 1: left out of the mean.
            let report = mean_average_precision(&perfect, &truths, 2, 0.5, i);
            assert_eq!(report.per_class, vec![Some(1.0), None]);
            assert_eq!(report.map, 1.0);
        }
    }

    #[test]
    fn a_ranked_list_with_misses_duplicates_and_a_difficult_box() {
        // Three boxes of class 0 (A, B in image 0; C in image 1) and a difficult one (B in
        // image 1). Detections by score:
        //   0.9 A img0 → TP (recall 1/3, precision 1)
        //   0.8 A img0 → duplicate of a matched box: FP (1/3, 1/2)
        //   0.7 B img1 → the difficult box: ignored (no point)
        //   0.6 [5,0,15,10] img1 → IoU with C is 0: FP (1/3, 1/3)
        //   0.5 C img1 → TP (2/3, 2/4)
        //   0.4 B img0 shifted by 1 (IoU 81/119 = 0.68) → TP (1, 3/5)
        let mut truths = vec![gt(0, 0, A), gt(0, 0, B), gt(1, 0, C)];
        truths.push(GroundTruth {
            difficult: true,
            ..gt(1, 0, B)
        });
        let dets = [
            det(0, 0, 0.9, A),
            det(0, 0, 0.8, A),
            det(1, 0, 0.7, B),
            det(1, 0, 0.6, [5.0, 0.0, 15.0, 10.0]),
            det(1, 0, 0.5, C),
            det(0, 0, 0.4, [21.0, 21.0, 31.0, 31.0]),
        ];
        // All points: envelope 1 up to recall 1/3, then max(1/2, 3/5) = 3/5 to 2/3, then 3/5:
        // 1/3·1 + 1/3·3/5 + 1/3·3/5 = 1/3 + 2/5 = 11/15.
        let all = average_precision(&dets, &truths, 0, 0.5, Interpolation::AllPoints).unwrap();
        assert!((all - 11.0 / 15.0).abs() < 1e-12, "{all}");
        // 11 points: t = 0, .1, .2, .3 → 1 (recall 1/3 reached at precision 1); t = .4 … 1 →
        // 3/5 (the best precision at recall ≥ t is 3/5). (4·1 + 7·3/5)/11 = 8.2/11.
        let eleven = average_precision(&dets, &truths, 0, 0.5, Interpolation::ElevenPoint).unwrap();
        assert!((eleven - 8.2 / 11.0).abs() < 1e-12, "{eleven}");
        // At IoU 0.75 the shifted box (0.68) no longer matches: recall stops at 2/3.
        // Points: (1/3,1), (1/3,1/2), (1/3,1/3), (2/3,1/2), (2/3,2/5). All points:
        // 1/3·1 + 1/3·1/2 = 1/2.
        let strict = average_precision(&dets, &truths, 0, 0.75, Interpolation::AllPoints).unwrap();
        assert!((strict - 0.5).abs() < 1e-12, "{strict}");
        // Another class's detections and boxes do not interfere.
        let mut mixed = dets.to_vec();
        mixed.push(det(0, 1, 0.99, A));
        let report = mean_average_precision(&mixed, &truths, 2, 0.5, Interpolation::AllPoints);
        assert_eq!(report.per_class[1], None);
        assert!((report.map - 11.0 / 15.0).abs() < 1e-12);
    }
}
