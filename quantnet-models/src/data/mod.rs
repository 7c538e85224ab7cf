//! Real data sets in their original formats. A loader takes a directory.

#[cfg(feature = "train")]
pub mod batch;
pub mod idx;
pub mod mnist;

#[cfg(feature = "train")]
pub use batch::{ImageBatch, ImageBatcher, ImageItem};
pub use mnist::{ImageSet, MnistKind, Split};
