//! Writing a `.qnet` file: weights hard-quantized to codes, every other float parameter as is.

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use quantnet_burn::{Codes, QuantBackend};

use super::ModelHeader;
use super::format::{
    ChannelScales, CodedEntry, FloatEntry, MAGIC, Manifest, VERSION, VERSION_CHANNEL_SCALES, crc32,
    pack,
};
use crate::error::{Error, Result};
use crate::models::{Arch, InputShape, Model};
use crate::quantize::read_f32;

/// Collects every float parameter with its module path.
struct Collect<B: Backend> {
    path: Vec<String>,
    out: Vec<(String, ParamId, Vec<usize>, TensorData)>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        self.out
            .push((self.path.join("."), param.id, shape, t.into_data()));
    }
}

/// Field names of float parameters inside modules are the last path component; the visitor
/// sees the parameter's own field name through `enter_module`.
fn collect<B: Backend>(model: &Model<B>) -> Vec<(String, ParamId, Vec<usize>, TensorData)> {
    let mut c = Collect {
        path: Vec::new(),
        out: Vec::new(),
        _b: std::marker::PhantomData,
    };
    model.visit(&mut c);
    c.out
}

/// A quantized weight on its way into the file: layer name, bits, levels, α (one per tensor
/// or per output channel), codes.
type Coded = (String, u32, Vec<f32>, Codes);

/// A quantized model as a `.qnet` file in memory, and a report of its size.
#[derive(Clone, Debug)]
pub struct Export {
    /// The whole file.
    pub bytes: Vec<u8>,
    /// The manifest in it.
    pub manifest: Manifest,
}

/// Builds the `.qnet` bytes of `model` (weights hard-quantized to codes).
///
/// # Errors
/// [`Error::Layer`] if a hard-quantized weight is not exactly one of `α·Y` (an internal
/// invariant); [`Error::ReadBack`] if a tensor cannot be read back.
pub fn export<B: QuantBackend>(
    model: &mut Model<B>,
    arch: Arch,
    input: InputShape,
    dataset: Option<String>,
) -> Result<Export> {
    // Quantized weights: their ids, codes and level tables; weight-quantizer parameters (stored
    // as α and the level table instead) are skipped.
    // Every method's hard function in the stored α, β and thresholds (see `quantize::settle`).
    crate::quantize::settle(model);
    let mut coded_ids: HashMap<ParamId, Coded> = HashMap::new();
    let mut skip: HashSet<ParamId> = HashSet::new();
    let header = ModelHeader::of(model, arch, input, dataset);
    {
        let slots = model.slots();
        for (name, mut layer) in slots.weights {
            let weight_id = layer.weight_id();
            let Some(q) = layer.quantizer().as_ref() else {
                continue;
            };
            for p in [&q.alpha, &q.beta, &q.thresholds, &q.levels] {
                skip.insert(p.id);
            }
            skip.extend(q.sharpness.as_ref().map(|p| p.id));
            let levels = q.level_set().levels().to_vec();
            let bits = q.level_set().bits();
            let codes = layer.codes().transpose().map_err(|source| Error::Layer {
                layer: name.clone(),
                source,
            })?;
            let Some(codes) = codes else { continue };
            coded_ids.insert(weight_id, (name, bits, levels, codes));
        }
        // DSQ's sharpness shapes only the training gradient: the hard function needs α, β and
        // the thresholds, which every method stores (`quantize::settle`).
        for (_, slot) in slots.acts {
            if let Some(p) = slot.quantizer.as_ref().and_then(|q| q.sharpness.as_ref()) {
                skip.insert(p.id);
            }
        }
    }
    let mut payload = Vec::new();
    let mut floats = Vec::new();
    let mut coded = Vec::new();
    for (path, id, shape, data) in collect(model) {
        if skip.contains(&id) {
            continue;
        }
        let offset = payload.len() as u64;
        if let Some((layer, bits, levels, codes)) = coded_ids.remove(&id) {
            let packed: Vec<u8> = pack(
                &codes.codes.iter().map(|&k| k as u32).collect::<Vec<_>>(),
                bits,
            );
            let (alpha, channel_scales) = match codes.channel_axis {
                Some(axis) => (
                    0.0,
                    Some(ChannelScales {
                        axis,
                        alpha: codes.alpha,
                    }),
                ),
                None => (codes.alpha[0], None),
            };
            coded.push(CodedEntry {
                path,
                layer,
                shape,
                bits,
                levels,
                alpha,
                channel_scales,
                offset,
                len: packed.len() as u64,
            });
            payload.extend(packed);
        } else {
            for v in read_f32(data, &path)? {
                payload.extend(v.to_le_bytes());
            }
            floats.push(FloatEntry {
                path,
                shape,
                offset,
            });
        }
    }
    let manifest = Manifest {
        header,
        floats,
        coded,
        payload_len: payload.len() as u64,
    };
    let json = serde_json::to_vec(&manifest).map_err(Error::Manifest)?;
    let mut bytes = Vec::with_capacity(20 + json.len() + payload.len());
    bytes.extend(MAGIC);
    let version = if manifest.coded.iter().any(|c| c.channel_scales.is_some()) {
        VERSION_CHANNEL_SCALES
    } else {
        VERSION
    };
    bytes.extend(version.to_le_bytes());
    bytes.extend((json.len() as u64).to_le_bytes());
    bytes.extend(json);
    bytes.extend(payload);
    let crc = crc32(&bytes);
    bytes.extend(crc.to_le_bytes());
    Ok(Export { bytes, manifest })
}
