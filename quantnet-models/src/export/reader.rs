//! Reading a `.qnet` file back into a runnable model.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::corrupt;
use super::format::{Manifest, decode, parse};
use crate::error::{Error, Result};
use crate::models::Model;

/// Replaces every float parameter by the file's tensor of the same path.
struct Fill<'a, B: Backend> {
    path: Vec<String>,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    errors: Vec<String>,
    device: &'a B::Device,
}

impl<B: Backend> ModuleMapper<B> for Fill<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.path.join(".");
        let (id, tensor, mapper) = param.consume();
        let Some((shape, values)) = self.tensors.remove(&path) else {
            self.errors.push(format!("the file has no tensor {path}"));
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if shape != tensor.dims().to_vec() {
            self.errors.push(format!(
                "{path}: the file's shape {shape:?} is not the model's {:?}",
                tensor.dims()
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let t = Tensor::from_data(TensorData::new(values, shape), self.device);
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Loads a `.qnet` file into a runnable model: quantized layers hold their decoded weights (no
/// weight quantizer), activation quantizers their trained parameters (hard at inference).
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Corrupt`] as [`parse`], or when the file
/// does not match the model it names (missing or extra tensors, other shapes).
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<(Manifest, Model<B>)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (manifest, payload) = parse(&bytes, path)?;
    let model = manifest.header.skeleton::<B>(path, device)?;
    let mut tensors = BTreeMap::new();
    for f in &manifest.floats {
        let n: usize = f.shape.iter().product();
        let start = usize::try_from(f.offset).unwrap_or(usize::MAX);
        let values = payload[start..start + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(f.path.clone(), (f.shape.clone(), values));
    }
    for c in &manifest.coded {
        let values = decode(c, payload).map_err(|e| corrupt(path, e.to_string()))?;
        tensors.insert(c.path.clone(), (c.shape.clone(), values));
    }
    let mut fill = Fill {
        path: Vec::new(),
        tensors,
        errors: Vec::new(),
        device,
    };
    let model = model.map(&mut fill);
    if let Some(extra) = fill.tensors.keys().next() {
        fill.errors.push(format!(
            "the model has no parameter {extra} (a file for another model?)"
        ));
    }
    if !fill.errors.is_empty() {
        return Err(corrupt(path, fill.errors.join("; ")));
    }
    Ok((manifest, model))
}
