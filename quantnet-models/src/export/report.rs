//! The size of a `.qnet` export, per tensor group.

use serde::Serialize;

use super::writer::Export;

/// One line per stored tensor group: bytes in the file against float32 and against the
/// theoretical minimum (`bits/32` of float32).
#[derive(Clone, Debug, Serialize)]
pub struct SizeRow {
    /// Layer or tensor.
    pub name: String,
    /// Number of values.
    pub values: usize,
    /// Bits per value in the file.
    pub bits: u32,
    /// Bytes in the file (codes, or f32 data).
    pub bytes: u64,
    /// Bytes as float32.
    pub float_bytes: u64,
    /// `values · bits / 8`.
    pub minimum_bytes: f64,
}

/// The size report of an export.
pub fn size_report(export: &Export) -> Vec<SizeRow> {
    let mut rows: Vec<SizeRow> = export
        .manifest
        .coded
        .iter()
        .map(|c| {
            let n: usize = c.shape.iter().product();
            SizeRow {
                name: c.layer.clone(),
                values: n,
                bits: c.bits,
                bytes: c.len,
                float_bytes: 4 * n as u64,
                minimum_bytes: n as f64 * f64::from(c.bits) / 8.0,
            }
        })
        .collect();
    let n: usize = export
        .manifest
        .floats
        .iter()
        .map(|f| f.shape.iter().product::<usize>())
        .sum();
    rows.push(SizeRow {
        name: "float tensors".into(),
        values: n,
        bits: 32,
        bytes: 4 * n as u64,
        float_bytes: 4 * n as u64,
        minimum_bytes: 4.0 * n as f64,
    });
    rows
}
