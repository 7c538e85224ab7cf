//! Integration tests of the quantizer op and the conv and batch-norm training paths on every backend compiled in.
//!
//! - `reference`: a plain-Rust f64 model of the op and both gradient rules, itself checked
//!   against finite differences;
//! - `gradcheck`: each backend's custom backward against finite differences (f64) and the closed
//!   forms;
//! - `golden`: hand-derived values for every named level set;
//! - `properties`: soft → hard as T grows, hard output on the grid, extreme inputs stay finite;
//! - `backends`: the same inputs give the same outputs and gradients on every backend;
//! - `methods`: the baselines' hand-derived values and surrogate gradients, DSQ against central
//!   differences, and every method's training forward equal to its hard function;
//! - `granularity`: per-channel weight scales: hand-derived values and codes, the per-channel
//!   initialisation, gradients against the host model channel by channel, records, refusals;
//! - `conv`: the conv backward against finite differences (f64) and against Burn's (f32);
//! - `norm`: the batch-norm op against finite differences (f64) and against Burn's module (f32).

mod backends;
mod common;
mod conv;
mod golden;
mod gradcheck;
mod granularity;
mod methods;
mod norm;
mod properties;
mod reference;
