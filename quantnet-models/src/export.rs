//! The `.qnet` export: quantized weights as bit-packed level codes, everything else as float32,
//! and the way back to a runnable model. The format is documented in `docs/qnet-format.md`.
//!
//! ```text
//! offset  size  content
//! 0       4     magic "QNET"
//! 4       4     format version, u32 little-endian (1)
//! 8       8     manifest length M, u64 little-endian
//! 16      M     manifest, UTF-8 JSON (Manifest)
//! 16+M    P     payload: the tensors' bytes, at the offsets the manifest gives
//! end-4   4     CRC-32 (IEEE) of every byte before it, u32 little-endian
//! ```
//!
//! A quantized weight is stored as one code `k` per weight, `bits = ceil(log2 |Y|)` bits each,
//! packed least-significant bit first; it decodes to `α · Y[k]`, which is bit for bit what
//! `hard_quantize` computes in training (`fl(α·y_k)`). Float tensors (the first and last layer,
//! biases, batch norm, activation quantizers) are little-endian f32. Tensors are keyed by their
//! module path (`Lenet5.conv2.conv.weight`), so a file only loads into the model it was made from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use quantnet_burn::{LevelSet, QuantBackend, QuantizerConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::{Arch, InputShape, Model};
use crate::quantize::{self, QuantPolicy, Temperatures, read_f32};

/// The magic bytes.
pub const MAGIC: &[u8; 4] = b"QNET";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// What the file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The architecture.
    pub arch: Arch,
    /// Its input.
    pub input: InputShape,
    /// The data set it was trained on, if known (`fashion-mnist`).
    #[serde(default)]
    pub dataset: Option<String>,
    /// The activation levels, if activations are quantized.
    pub acts: Option<Vec<f32>>,
    /// Tensors stored as float32.
    pub floats: Vec<FloatEntry>,
    /// Quantized weights stored as codes.
    pub coded: Vec<CodedEntry>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// A float32 tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FloatEntry {
    /// Module path.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte offset in the payload.
    pub offset: u64,
}

/// A quantized weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodedEntry {
    /// Module path of the (float) weight it replaces.
    pub path: String,
    /// The layer's name in the model (`conv2`).
    pub layer: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bits per code.
    pub bits: u32,
    /// The level table `Y` (code `k` means `α·Y[k]`).
    pub levels: Vec<f32>,
    /// The output scale `α`.
    pub alpha: f32,
    /// Byte offset in the payload.
    pub offset: u64,
    /// Bytes of packed codes.
    pub len: u64,
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zlib and PNG.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Packs `codes` at `bits` bits each, least-significant bit first.
pub fn pack(codes: &[u32], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; (codes.len() * bits as usize).div_ceil(8)];
    for (i, &c) in codes.iter().enumerate() {
        for b in 0..bits as usize {
            if (c >> b) & 1 == 1 {
                let at = i * bits as usize + b;
                out[at / 8] |= 1 << (at % 8);
            }
        }
    }
    out
}

/// Unpacks `n` codes of `bits` bits.
pub fn unpack(bytes: &[u8], bits: u32, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            (0..bits as usize).fold(0u32, |c, b| {
                let at = i * bits as usize + b;
                c | (u32::from((bytes[at / 8] >> (at % 8)) & 1) << b)
            })
        })
        .collect()
}

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

/// A quantized weight on its way into the file: layer name, bits, levels, α, codes.
type Coded = (String, u32, Vec<f32>, f32, Vec<u32>);

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
/// [`Error::Invalid`] if a hard-quantized weight is not exactly one of `α·Y` (an internal
/// invariant) or a tensor cannot be read back.
pub fn export<B: QuantBackend>(
    model: &mut Model<B>,
    arch: Arch,
    input: InputShape,
    dataset: Option<String>,
) -> Result<Export> {
    // Quantized weights: their ids, codes and level tables; weight-quantizer parameters (stored
    // as α and the level table instead) are skipped.
    let mut coded_ids: HashMap<ParamId, Coded> = HashMap::new();
    let mut skip: HashSet<ParamId> = HashSet::new();
    let mut acts: Option<Vec<f32>> = None;
    {
        let slots = model.slots();
        for (name, mut layer) in slots.weights {
            let (weight_id, weight) = (layer.weight_id(), layer.weight());
            let Some(q) = layer.quantizer().as_ref() else {
                continue;
            };
            for p in [&q.alpha, &q.beta, &q.thresholds, &q.levels] {
                skip.insert(p.id);
            }
            let levels = q.level_set().levels().to_vec();
            let bits = q.level_set().bits();
            let (alpha, codes) = q.codes(weight).map_err(|source| Error::Layer {
                layer: name.clone(),
                source,
            })?;
            let codes = codes.into_iter().map(|k| k as u32).collect();
            coded_ids.insert(weight_id, (name, bits, levels, alpha, codes));
        }
        for (_, slot) in slots.acts {
            if let Some(q) = &slot.quantizer {
                acts = Some(q.level_set().levels().to_vec());
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
        if let Some((layer, bits, levels, alpha, codes)) = coded_ids.remove(&id) {
            let packed = pack(&codes, bits);
            coded.push(CodedEntry {
                path,
                layer,
                shape,
                bits,
                levels,
                alpha,
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
        arch,
        input,
        dataset,
        acts,
        floats,
        coded,
        payload_len: payload.len() as u64,
    };
    let json = serde_json::to_vec(&manifest)
        .map_err(|e| Error::Invalid(format!("serialising the manifest: {e}")))?;
    let mut bytes = Vec::with_capacity(20 + json.len() + payload.len());
    bytes.extend(MAGIC);
    bytes.extend(VERSION.to_le_bytes());
    bytes.extend((json.len() as u64).to_le_bytes());
    bytes.extend(json);
    bytes.extend(payload);
    let crc = crc32(&bytes);
    bytes.extend(crc.to_le_bytes());
    Ok(Export { bytes, manifest })
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Checks a `.qnet` file's framing and checksum and returns its manifest and payload.
///
/// # Errors
/// [`Error::Corrupt`] naming `path` for a truncated file, bad magic, another format version, a
/// checksum mismatch, or a manifest that does not describe the payload.
pub fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<(Manifest, &'a [u8])> {
    if bytes.len() < 20 {
        return Err(corrupt(
            path,
            format!(
                "{} bytes is too short for a .qnet file (truncated?)",
                bytes.len()
            ),
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err(corrupt(path, "not a .qnet file (bad magic)"));
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != VERSION {
        return Err(corrupt(
            path,
            format!("format version {version}; this quantnet reads version {VERSION}"),
        ));
    }
    let body = &bytes[..bytes.len() - 4];
    let stored = u32::from_le_bytes([
        bytes[bytes.len() - 4],
        bytes[bytes.len() - 3],
        bytes[bytes.len() - 2],
        bytes[bytes.len() - 1],
    ]);
    if crc32(body) != stored {
        return Err(corrupt(
            path,
            "checksum mismatch (the file is truncated or corrupted)",
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let m = usize::try_from(u64::from_le_bytes(len)).unwrap_or(usize::MAX);
    if m > body.len() - 16 {
        return Err(corrupt(path, "manifest length past the end of the file"));
    }
    let manifest: Manifest = serde_json::from_slice(&body[16..16 + m])
        .map_err(|e| corrupt(path, format!("bad manifest: {e}")))?;
    let payload = &body[16 + m..];
    if manifest.payload_len != payload.len() as u64 {
        return Err(corrupt(path, "payload length disagrees with the manifest"));
    }
    for f in &manifest.floats {
        let n: usize = f.shape.iter().product();
        if f.offset.saturating_add(4 * n as u64) > payload.len() as u64 {
            return Err(corrupt(
                path,
                format!("{} lies past the end of the payload", f.path),
            ));
        }
    }
    for c in &manifest.coded {
        let n: usize = c.shape.iter().product();
        if c.levels.is_empty()
            || c.levels.len() > 1 << c.bits.min(16)
            || c.len != (n as u64 * u64::from(c.bits)).div_ceil(8)
            || c.offset.saturating_add(c.len) > payload.len() as u64
        {
            return Err(corrupt(
                path,
                format!("{}: inconsistent code table or length", c.path),
            ));
        }
    }
    Ok((manifest, payload))
}

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

/// Decodes the codes of `entry` to `α·Y[k]`.
///
/// # Errors
/// [`Error::Invalid`] for a code outside the level table.
pub fn decode(entry: &CodedEntry, payload: &[u8]) -> Result<Vec<f32>> {
    let n: usize = entry.shape.iter().product();
    let start = usize::try_from(entry.offset).unwrap_or(usize::MAX);
    let bytes = &payload[start..start + usize::try_from(entry.len).unwrap_or(0)];
    unpack(bytes, entry.bits, n)
        .into_iter()
        .map(|k| {
            entry
                .levels
                .get(k as usize)
                .map(|y| entry.alpha * y)
                .ok_or_else(|| Error::Invalid(format!("{}: code {k} has no level", entry.path)))
        })
        .collect()
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
    manifest
        .arch
        .check_input(manifest.input)
        .map_err(|e| corrupt(path, e))?;
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
    let acts = match &manifest.acts {
        Some(levels) => Some(QuantizerConfig::activations(
            LevelSet::new(levels.clone()).map_err(|e| corrupt(path, e.to_string()))?,
        )),
        None => None,
    };
    let policy = QuantPolicy {
        weights: None,
        acts,
        quantize_all: false,
        act_percentile: None,
        act_mse: false,
    };
    let mut model = Model::new(manifest.arch, manifest.input, device);
    quantize::skeleton(&mut model, &policy, &Temperatures::default(), device)?;
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

/// A quantized weight written as Burn's own quantized tensor by [`to_native`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NativeLayer {
    /// The layer.
    pub name: String,
    /// Its level set.
    pub levels: String,
    /// Burn's quantized value type (`Q2S`, `Q4S`, `Q8S`).
    pub burn_type: String,
    /// Number of weights.
    pub values: usize,
}

/// `model` with every quantized weight replaced by Burn's own quantized tensor (integers and
/// one scale, [`quantnet_burn::native`]) and its weight quantizer removed: a model whose record
/// Burn's recorders save and load as is, into [`native_skeleton`]. Its outputs equal the
/// hard-quantized model's exactly for the built-in level sets. Activation quantizers stay.
///
/// # Errors
/// [`Error::Layer`] naming the first layer whose level set Burn cannot hold (use `.qnet` then).
pub fn to_native<B: QuantBackend>(model: &Model<B>) -> Result<(Model<B>, Vec<NativeLayer>)> {
    let mut native = model.clone();
    let mut layers = Vec::new();
    for (name, layer) in native.slots().weights {
        let fail = |e: quantnet_burn::Error| Error::Layer {
            layer: name.clone(),
            source: e,
        };
        let (quantizer, values) = match layer {
            crate::models::WeightLayer::Conv(c) => {
                let native = c.to_native().map_err(fail)?;
                let Some(q) = c.quantizer.take() else {
                    continue;
                };
                c.conv = native;
                (q, c.conv.weight.shape().num_elements())
            }
            crate::models::WeightLayer::Linear(l) => {
                let native = l.to_native().map_err(fail)?;
                let Some(q) = l.quantizer.take() else {
                    continue;
                };
                l.linear = native;
                (q, l.linear.weight.shape().num_elements())
            }
        };
        let scheme = quantnet_burn::native::native_scheme(quantizer.level_set()).map_err(fail)?;
        layers.push(NativeLayer {
            name,
            levels: quantizer.level_set().name(),
            burn_type: format!("{:?}", scheme.value),
            values,
        });
    }
    Ok((native, layers))
}

/// The structure a [`to_native`] record loads into: `arch` for `input`, activation quantizers
/// with `acts` levels (if any), no weight quantizers.
///
/// # Errors
/// As [`quantize::skeleton`].
pub fn native_skeleton<B: Backend>(
    arch: Arch,
    input: InputShape,
    acts: Option<LevelSet>,
    device: &B::Device,
) -> Result<Model<B>> {
    let policy = QuantPolicy {
        weights: None,
        acts: acts.map(QuantizerConfig::activations),
        quantize_all: false,
        act_percentile: None,
        act_mse: false,
    };
    let mut model = Model::new(arch, input, device);
    quantize::skeleton(&mut model, &policy, &Temperatures::default(), device)?;
    Ok(model)
}

/// What a Burn-native export holds, written as JSON next to the record (`model.json` beside
/// `model.mpk`): enough to rebuild the structure the record loads into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NativeManifest {
    /// The architecture.
    pub arch: Arch,
    /// Its input.
    pub input: InputShape,
    /// The data set it was trained on, if known.
    #[serde(default)]
    pub dataset: Option<String>,
    /// The activation levels, if activations are quantized.
    pub acts: Option<Vec<f32>>,
    /// The layers stored as Burn quantized tensors.
    pub layers: Vec<NativeLayer>,
}

/// Writes `model` as a Burn record (`NamedMpkFileRecorder`, full precision settings) at `path`
/// (which must end in `.mpk`) with every quantized weight as Burn's own quantized tensor
/// ([`to_native`]), and the [`NativeManifest`] beside it as `.json`. Both are written to
/// temporary names and renamed, so a failure leaves no half-written file.
///
/// # Errors
/// As [`to_native`]; [`Error::Invalid`] for a path not ending in `.mpk`; [`Error::Io`].
pub fn write_native<B: QuantBackend>(
    model: &Model<B>,
    arch: Arch,
    input: InputShape,
    dataset: Option<String>,
    path: &Path,
) -> Result<NativeManifest> {
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    if path.extension().and_then(|e| e.to_str()) != Some("mpk") {
        return Err(Error::Invalid(format!(
            "{}: a Burn record file must end in .mpk",
            path.display()
        )));
    }
    let (native, layers) = to_native(model)?;
    let mut acts = None;
    for (_, slot) in native.clone().slots().acts {
        if let Some(q) = &slot.quantizer {
            acts = Some(q.level_set().levels().to_vec());
        }
    }
    let manifest = NativeManifest {
        arch,
        input,
        dataset,
        acts,
        layers,
    };
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    // The recorder replaces the extension with its own: write `NAME-partial.mpk`, then rename.
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?;
    let partial = path.with_file_name(format!("{stem}-partial"));
    let partial_file = path.with_file_name(format!("{stem}-partial.mpk"));
    recorder
        .record(native.into_record(), partial.clone())
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Invalid(format!("serialising the manifest: {e}")))?;
    let sidecar = path.with_extension("json");
    let sidecar_partial = path.with_file_name(format!("{stem}-partial.json"));
    let write = |what: &Path| {
        let what = what.to_path_buf();
        move |e: std::io::Error| Error::Invalid(format!("writing {}: {e}", what.display()))
    };
    std::fs::write(&sidecar_partial, json).map_err(write(&sidecar_partial))?;
    std::fs::rename(&partial_file, path).map_err(write(path))?;
    std::fs::rename(&sidecar_partial, &sidecar).map_err(write(&sidecar))?;
    Ok(manifest)
}

/// Loads a [`write_native`] export (the `.mpk` record and its `.json` manifest) onto `device`.
///
/// # Errors
/// [`Error::Io`] for missing files, [`Error::Corrupt`] for a manifest or record that does not
/// parse or does not fit the manifest's model.
pub fn load_native<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(NativeManifest, Model<B>)> {
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    let sidecar = path.with_extension("json");
    let text = std::fs::read(&sidecar).map_err(|source| Error::Io {
        path: sidecar.clone(),
        source,
    })?;
    let manifest: NativeManifest =
        serde_json::from_slice(&text).map_err(|e| corrupt(&sidecar, e.to_string()))?;
    manifest
        .arch
        .check_input(manifest.input)
        .map_err(|e| corrupt(&sidecar, e))?;
    let acts = match &manifest.acts {
        Some(levels) => {
            Some(LevelSet::new(levels.clone()).map_err(|e| corrupt(&sidecar, e.to_string()))?)
        }
        None => None,
    };
    if !path.is_file() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    for layer in &manifest.layers {
        let value = match layer.burn_type.as_str() {
            "Q2S" => burn::tensor::quantization::QuantValue::Q2S,
            "Q4S" => burn::tensor::quantization::QuantValue::Q4S,
            "Q8S" => burn::tensor::quantization::QuantValue::Q8S,
            other => {
                return Err(corrupt(
                    &sidecar,
                    format!("{}: unknown Burn type {other}", layer.name),
                ));
            }
        };
        quantnet_burn::native::check_backend::<B>(device, value).map_err(|e| Error::Layer {
            layer: layer.name.clone(),
            source: e,
        })?;
    }
    let skeleton = native_skeleton::<B>(manifest.arch, manifest.input, acts, device)?;
    // Burn's recorders panic on some malformed input; keep that a clear error.
    let record = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        NamedMpkFileRecorder::<FullPrecisionSettings>::new().load(path.to_path_buf(), device)
    }))
    .map_err(|_| corrupt(path, "not a Burn record of this model"))?
    .map_err(|e| corrupt(path, format!("not a Burn record of this model: {e}")))?;
    Ok((manifest, skeleton.load_record(record)))
}
