//! Exporting a trained quantized model, in two formats:
//!
//! - **`.qnet`** ([`mod@format`], [`writer`], [`reader`]): quantized weights as bit-packed level
//!   codes, everything else as float32, and the way back to a runnable model; the compact,
//!   portable one. The format is documented in `docs/qnet-format.md`.
//! - **Burn-native** ([`native`]): a Burn record whose quantized weights are Burn's own quantized
//!   tensors, with a JSON manifest beside it; a Burn user loads it with Burn's recorder.
//!
//! - **ONNX** ([`to_onnx`]): a standard graph with quantize/dequantize nodes (opset 13), for ONNX
//!   Runtime and other deployment runtimes; written from the `.qnet` export by
//!   `quantnet_infer::onnx` (docs/onnx.md).
//!
//! [`report`] gives the size of a `.qnet` export per tensor group.

pub mod format;
pub mod native;
pub mod reader;
pub mod report;
pub mod writer;

use std::path::Path;

use burn::tensor::backend::Backend;
use quantnet_burn::LevelSet;
use serde::{Deserialize, Serialize};

pub use format::{
    ChannelScales, CodedEntry, FloatEntry, MAGIC, Manifest, VERSION, VERSION_CHANNEL_SCALES, crc32,
    decode, pack, parse, unpack,
};
pub use native::{
    NativeLayer, NativeManifest, load_native, native_skeleton, to_native, write_native,
};
pub use reader::load;
pub use report::{SizeRow, size_report};
pub use writer::{Export, export};

use crate::error::{Error, Result};
use crate::models::{Arch, InputShape, Model};

/// `model` as an ONNX model (serialised `ModelProto`, opset 13): int8 weight levels with
/// `DequantizeLinear`, exact activation quantizers with a `QuantizeLinear`/`DequantizeLinear`
/// pair, the rest as standard float ops. Its input is the image in `[0, 1]` (pixel / 255), NCHW;
/// `dataset`'s normalisation is the graph's first ops. Settles the quantizers as [`export()`]
/// does.
///
/// # Errors
/// As [`export()`]; [`Error::Invalid`] for what ONNX cannot express (activation levels that are
/// not integers, an adaptive pool with uneven bins).
pub fn to_onnx<B: quantnet_burn::QuantBackend>(
    model: &mut Model<B>,
    arch: Arch,
    input: InputShape,
    dataset: crate::data::Dataset,
) -> Result<Vec<u8>> {
    let exported = export(model, arch, input, Some(dataset.to_string()))?;
    let (mean, std) = dataset.normalisation();
    let norm = quantnet_infer::onnx::Normalisation { mean, std };
    quantnet_infer::onnx::to_onnx(&exported.bytes, Path::new("model.qnet"), &norm)
        .map_err(|e| Error::Invalid(format!("ONNX export: {e}")))
}

/// What both export formats say about the model: enough to rebuild the structure its tensors
/// load into. Flattened into each manifest's JSON (the fields sit at its top level).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    /// The architecture.
    pub arch: Arch,
    /// Its input.
    pub input: InputShape,
    /// The data set it was trained on, if known (`fashion-mnist`).
    #[serde(default)]
    pub dataset: Option<String>,
    /// The activation levels, if activations are quantized.
    pub acts: Option<Vec<f32>>,
}

impl ModelHeader {
    /// The header of `model` (its activation levels read from its activation quantizers).
    pub fn of<B: Backend>(
        model: &Model<B>,
        arch: Arch,
        input: InputShape,
        dataset: Option<String>,
    ) -> Self {
        let mut acts = None;
        for (_, slot) in model.clone().slots().acts {
            if let Some(q) = &slot.quantizer {
                acts = Some(q.level_set().levels().to_vec());
            }
        }
        Self {
            arch,
            input,
            dataset,
            acts,
        }
    }

    /// The structure the exported tensors load into: the architecture for its input, activation
    /// quantizers with the header's levels (if any), no weight quantizers.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `path` (the file the header came from) for an input the
    /// architecture cannot take or levels that are not a level set.
    pub fn skeleton<B: Backend>(&self, path: &Path, device: &B::Device) -> Result<Model<B>> {
        self.arch
            .check_input(self.input)
            .map_err(|e| corrupt(path, e))?;
        let acts = match &self.acts {
            Some(levels) => {
                Some(LevelSet::new(levels.clone()).map_err(|e| corrupt(path, e.to_string()))?)
            }
            None => None,
        };
        native_skeleton(self.arch, self.input, acts, device)
    }
}

/// [`Error::Corrupt`] naming `path`.
pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// [`Error::Write`] naming `path`.
pub(crate) fn write_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_path_buf(),
        source,
    }
}
