//! Object detection (issue 15): Pascal VOC annotations ([`voc`]), the VOC mean average
//! precision ([`map`]), SSD's box arithmetic ([`boxes`]: default boxes, encoding, matching,
//! hard negatives, NMS) and the SSD detectors built from the quantized layers ([`ssd`]).

pub mod boxes;
pub mod data;
pub mod map;
pub mod ssd;
#[cfg(feature = "train")]
pub mod train;
pub mod voc;

pub use data::{Augment, DetectData, DetectItem, DetectSet, Sample};
pub use map::{
    Detection, GroundTruth, Interpolation, MapReport, average_precision, iou,
    mean_average_precision,
};
pub use ssd::{Ssd, SsdKind};
#[cfg(feature = "train")]
pub use train::{
    DetectBatch, DetectBatcher, DetectParams, DetectQat, DetectReport, Detector, MapMetric,
    MapScores, detect_set, evaluate_map, multibox_loss,
};
pub use voc::{VocImage, VocObject, VocSet};
