//! Object detection (issue 15, in progress): Pascal VOC annotations ([`voc`]), the VOC mean
//! average precision ([`map`]) and SSD's box arithmetic ([`boxes`]: default boxes, encoding,
//! matching, hard negatives, NMS). The detector itself (SSD) is not built yet.

pub mod boxes;
pub mod map;
pub mod voc;

pub use map::{
    Detection, GroundTruth, Interpolation, MapReport, average_precision, iou,
    mean_average_precision,
};
pub use voc::{VocImage, VocObject, VocSet};
