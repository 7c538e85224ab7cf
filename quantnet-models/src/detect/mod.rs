//! Object detection (issue 15, in progress): Pascal VOC annotations ([`voc`]) and the VOC mean
//! average precision ([`map`]). The detector itself (SSD) is not built yet.

pub mod map;
pub mod voc;

pub use map::{
    Detection, GroundTruth, Interpolation, MapReport, average_precision, iou,
    mean_average_precision,
};
pub use voc::{VocImage, VocObject, VocSet};
