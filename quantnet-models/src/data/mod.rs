//! Real data sets in their original formats. A loader takes a directory.

pub mod idx;
pub mod mnist;

pub use mnist::{ImageSet, MnistKind, Split};
