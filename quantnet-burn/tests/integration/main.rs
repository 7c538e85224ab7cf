//! Integration tests of the quantizer op on every backend compiled in.
//!
//! - `reference`: a plain-Rust f64 model of the op and both gradient rules, itself checked
//!   against finite differences;
//! - `gradcheck`: each backend's custom backward against finite differences (f64) and the closed
//!   forms;
//! - `golden`: hand-derived values for every named level set;
//! - `properties`: soft → hard as T grows, hard output on the grid, extreme inputs stay finite;
//! - `backends`: the same inputs give the same outputs and gradients on every backend.

mod backends;
mod common;
mod golden;
mod gradcheck;
mod properties;
mod reference;
