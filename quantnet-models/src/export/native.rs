//! The Burn-native export: a Burn record whose quantized weights are Burn's own quantized
//! tensors ([`quantnet_burn::native`]), and a JSON manifest beside it.

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use quantnet_burn::{LevelSet, QuantBackend, QuantizerConfig};
use serde::{Deserialize, Serialize};

use super::{ModelHeader, corrupt, write_error};
use crate::error::{Error, Result};
use crate::models::{Arch, InputShape, Model};
use crate::quantize::{self, QuantPolicy, Temperatures};

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
    // The activation quantizers stay quantnet's: their stored parameters must describe them.
    crate::quantize::settle(&mut native);
    let mut layers = Vec::new();
    for (name, layer) in native.slots().weights {
        let fail = |e: quantnet_burn::Error| Error::Layer {
            layer: name.clone(),
            source: e,
        };
        let mut layer = layer;
        let Some((quantizer, values)) = layer.make_native().map_err(fail)? else {
            continue;
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
    /// The model.
    #[serde(flatten)]
    pub header: ModelHeader,
    /// The layers stored as Burn quantized tensors.
    pub layers: Vec<NativeLayer>,
}

/// Writes `model` as a Burn record (`NamedMpkFileRecorder`, full precision settings) at `path`
/// (which must end in `.mpk`) with every quantized weight as Burn's own quantized tensor
/// ([`to_native`]), and the [`NativeManifest`] beside it as `.json`. Both are written to
/// temporary names and renamed, so a failure leaves no half-written file.
///
/// # Errors
/// As [`to_native`]; [`Error::Invalid`] for a path not ending in `.mpk`; [`Error::Record`],
/// [`Error::Write`].
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
    let manifest = NativeManifest {
        header: ModelHeader::of(&native, arch, input, dataset),
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
        .map_err(|source| Error::Record {
            path: path.to_path_buf(),
            source,
        })?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(Error::Manifest)?;
    let sidecar = path.with_extension("json");
    let sidecar_partial = path.with_file_name(format!("{stem}-partial.json"));
    std::fs::write(&sidecar_partial, json).map_err(write_error(&sidecar_partial))?;
    std::fs::rename(&partial_file, path).map_err(write_error(path))?;
    std::fs::rename(&sidecar_partial, &sidecar).map_err(write_error(&sidecar))?;
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
    let skeleton = manifest.header.skeleton::<B>(&sidecar, device)?;
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
    // Burn's recorders panic on some malformed input; keep that a clear error.
    let record = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        NamedMpkFileRecorder::<FullPrecisionSettings>::new().load(path.to_path_buf(), device)
    }))
    .map_err(|_| corrupt(path, "not a Burn record of this model"))?
    .map_err(|e| corrupt(path, format!("not a Burn record of this model: {e}")))?;
    Ok((manifest, skeleton.load_record(record)))
}
