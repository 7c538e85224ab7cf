//! Export to ONNX (feature `onnx`): a `.qnet` model as a standard ONNX graph (opset 13, IR 8)
//! with quantize/dequantize nodes, for ONNX Runtime, TensorRT, OpenVINO and the like.
//!
//! - **Input** `image`: f32 `[N, C, H, W]` in `[0, 1]` (pixel / 255); the data set's
//!   normalisation (`(x − mean) / std` per channel) is the graph's first two nodes.
//!   **Output** `scores`: f32 `[N, classes]`.
//! - **Quantized weights** are int8 initializers holding the levels (`−1, 0, 1` for ternary;
//!   `3pm4`'s `−4, −2, −1, 0, 1, 2, 4` exactly as well), each followed by a `DequantizeLinear`
//!   whose scale is `α` (per output channel, `axis = 0`, when the channels' scales differ).
//! - **Activation quantizers** compute the hard function exactly: `t = β·v`, one
//!   `GreaterOrEqual(t, b_i)` per threshold, their weighted sum gives the level `y`, and `α·y`
//!   goes through a `QuantizeLinear` → `DequantizeLinear` pair with scale `α` and zero point 0
//!   (uint8 for non-negative levels, int8 otherwise), which is the identity on these values and
//!   marks the tensor as `α`-step integers for a runtime. A QDQ pair alone would round at the
//!   midpoints between levels; quantnet's thresholds come from the data (k-means) and are not
//!   midpoints, so the comparisons carry them. Levels that are not integers in −128..=255 have no
//!   QDQ pair and are refused.
//! - Full-precision layers, batch norm (`BatchNormalization`), ReLU, residual adds, max and
//!   average pooling are the standard float ops. Linear layers are `Flatten` + `Gemm`.
//!
//! The graph computes Burn's hard forward (scales inside the sums), so its predictions are the
//! model's; a runtime's float summation order may move a value that sits on a threshold.

#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
#[rustfmt::skip]
pub mod pb;

use std::path::Path;

use prost::Message;

use crate::error::{Error, Result};
use crate::kernels::Isa;
use crate::layer::{ActQuant, Conv, Weights};
use crate::net::{Engine, Exec, Mode, Source};
use pb::attribute_proto::AttributeType;
use pb::tensor_proto::DataType;

/// The ONNX opset the graph uses (per-axis `DequantizeLinear` needs 13).
pub const OPSET: i64 = 13;
/// The ONNX IR version written.
pub const IR_VERSION: i64 = 8;

/// A data set's input normalisation, `(x − mean) / std` per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalisation {
    /// Per-channel means (one value: every channel).
    pub mean: Vec<f32>,
    /// Per-channel standard deviations.
    pub std: Vec<f32>,
}

/// The ONNX model (serialised `ModelProto`) of a `.qnet` file's bytes (`path` names it in
/// errors), its input normalised by `norm`.
///
/// # Errors
/// As [`Engine::from_bytes`]; [`Error::Unsupported`] for activation levels that no
/// quantize/dequantize pair expresses, or an adaptive average pool whose bins are uneven.
pub fn to_onnx(bytes: &[u8], path: &Path, norm: &Normalisation) -> Result<Vec<u8>> {
    Ok(model(bytes, path, norm)?.encode_to_vec())
}

/// As [`to_onnx`], the `ModelProto` itself.
///
/// # Errors
/// As [`to_onnx`].
pub fn model(bytes: &[u8], path: &Path, norm: &Normalisation) -> Result<pb::ModelProto> {
    let engine = Engine::build(bytes, path, Isa::Scalar, Mode::F32, true)?;
    let input = engine.header().input;
    let c = input.channels;
    for (what, v) in [("mean", &norm.mean), ("std", &norm.std)] {
        if v.len() != 1 && v.len() != c {
            return Err(Error::Unsupported(format!(
                "a normalisation {what} of {} values for {c} input channels",
                v.len()
            )));
        }
    }
    let mut g = Graph {
        sources: &engine.sources,
        names: engine.names.clone(),
        ..Graph::default()
    };
    let per_channel = |v: &[f32]| (0..c).map(|i| v[i.min(v.len() - 1)]).collect::<Vec<_>>();
    let mean = g.floats("input.mean", &[1, c as i64, 1, 1], &per_channel(&norm.mean));
    let std = g.floats("input.std", &[1, c as i64, 1, 1], &per_channel(&norm.std));
    let centred = g.node("Sub", "input.centred", &["image", &mean], vec![]);
    let x = g.node("Div", "input.normalised", &[&centred, &std], vec![]);
    let x = Sym {
        name: x,
        dims: Dims::Map(c, input.height, input.width),
    };
    let out = engine.run_net(x, &mut g);
    if let Some(e) = g.error.take() {
        return Err(e);
    }
    let out = g.flat(out)?;
    let scores = g.node("Identity", "scores", &[&out.name], vec![]);
    let dims = |d: &[Option<i64>]| -> Option<pb::TypeProto> {
        use pb::tensor_shape_proto::{Dimension, dimension::Value};
        let dim = d
            .iter()
            .map(|v| Dimension {
                value: Some(match v {
                    Some(n) => Value::DimValue(*n),
                    None => Value::DimParam("N".into()),
                }),
                ..Dimension::default()
            })
            .collect();
        Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..pb::TypeProto::default()
        })
    };
    let (h, w) = (input.height as i64, input.width as i64);
    let graph = pb::GraphProto {
        name: engine.header().arch.clone(),
        node: g.nodes,
        initializer: g.inits,
        input: vec![pb::ValueInfoProto {
            name: "image".into(),
            r#type: dims(&[None, Some(c as i64), Some(h), Some(w)]),
            doc_string: "images, NCHW, pixel / 255 in [0, 1]".into(),
        }],
        output: vec![pb::ValueInfoProto {
            name: scores,
            r#type: dims(&[None, Some(input.classes as i64)]),
            doc_string: "class scores".into(),
        }],
        ..pb::GraphProto::default()
    };
    Ok(pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "quantnet".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        doc_string: format!(
            "{} trained by quantnet (Quantization Networks), exported from .qnet",
            engine.header().arch
        ),
        ..pb::ModelProto::default()
    })
}

/// What a tensor of the graph holds: a map `[N, C, H, W]` or a flat `[N, F]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dims {
    Map(usize, usize, usize),
    Flat(usize),
}

/// A tensor of the graph being written.
#[derive(Clone, Debug)]
struct Sym {
    name: String,
    dims: Dims,
}

/// The graph being written, in the order of the network's forward pass.
#[derive(Default)]
struct Graph<'a> {
    sources: &'a [Source],
    names: Vec<String>,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    /// The first error met while walking the network (the walk itself cannot fail).
    error: Option<Error>,
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..pb::AttributeProto::default()
    }
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..pb::AttributeProto::default()
    }
}

fn float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..pb::AttributeProto::default()
    }
}

impl Graph<'_> {
    /// Adds a node with one output, named `out`; returns the output's name.
    fn node(
        &mut self,
        op: &str,
        out: &str,
        inputs: &[&str],
        attribute: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: out.to_string(),
            op_type: op.into(),
            attribute,
            ..pb::NodeProto::default()
        });
        out.to_string()
    }

    fn init(&mut self, name: &str, dims: &[i64], ty: DataType, raw: Vec<u8>) -> String {
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: ty as i32,
            raw_data: raw,
            ..pb::TensorProto::default()
        });
        name.to_string()
    }

    fn floats(&mut self, name: &str, dims: &[i64], v: &[f32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, dims, DataType::Float, raw)
    }

    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.floats(name, &[], &[v])
    }

    /// `x` as `[N, F]` (a `Flatten` when it is a map).
    fn flat(&mut self, x: Sym) -> Result<Sym> {
        match x.dims {
            Dims::Flat(_) => Ok(x),
            Dims::Map(c, h, w) => {
                let name = format!("{}.flat", x.name);
                let name = self.node("Flatten", &name, &[&x.name], vec![int("axis", 1)]);
                Ok(Sym {
                    name,
                    dims: Dims::Flat(c * h * w),
                })
            }
        }
    }

    /// The weight of layer `name`: int8 levels and a `DequantizeLinear` by `α`, or floats.
    fn weight(&mut self, name: &str, w: &Weights, dims: &[i64]) -> String {
        match w {
            Weights::Float(v) => self.floats(&format!("{name}.weight"), dims, v),
            Weights::Levels { levels, alpha } => {
                let raw = levels.iter().map(|&y| y as u8).collect();
                let q = self.init(&format!("{name}.weight_levels"), dims, DataType::Int8, raw);
                let per_channel = alpha.iter().any(|&a| a != alpha[0]);
                let (scale, zero, attrs) = if per_channel {
                    let n = alpha.len() as i64;
                    let s = self.floats(&format!("{name}.weight_scale"), &[n], alpha);
                    let z = vec![0u8; alpha.len()];
                    let z = self.init(&format!("{name}.weight_zero"), &[n], DataType::Int8, z);
                    (s, z, vec![int("axis", 0)])
                } else {
                    let s = self.scalar(&format!("{name}.weight_scale"), alpha[0]);
                    let z = self.init(&format!("{name}.weight_zero"), &[], DataType::Int8, vec![0]);
                    (s, z, vec![])
                };
                self.node(
                    "DequantizeLinear",
                    &format!("{name}.weight"),
                    &[&q, &scale, &zero],
                    attrs,
                )
            }
        }
    }

    /// The activation quantizer `q` on `v` (after ReLU): exact thresholds, then a QDQ pair.
    fn quantizer(&mut self, name: &str, v: &str, q: &ActQuant) -> Result<String> {
        let (lo, hi) = (q.levels[0], q.levels[q.levels.len() - 1]);
        let integral = q.levels.iter().all(|y| y.fract() == 0.0);
        let zero_type = if integral && lo >= 0.0 && hi <= 255.0 {
            DataType::Uint8
        } else if integral && lo >= -128.0 && hi <= 127.0 {
            DataType::Int8
        } else {
            return Err(Error::Unsupported(format!(
                "{name}: activation levels {:?} are not integers in −128..=127 or 0..=255, which \
                 no QuantizeLinear/DequantizeLinear pair expresses",
                q.levels
            )));
        };
        let beta = self.scalar(&format!("{name}.act_beta"), q.beta);
        let t = self.node("Mul", &format!("{name}.act_t"), &[v, &beta], vec![]);
        let mut terms = Vec::new();
        for (i, (b, s)) in q
            .thresholds
            .iter()
            .zip(q.levels.windows(2).map(|w| w[1] - w[0]))
            .enumerate()
        {
            let b = self.scalar(&format!("{name}.act_threshold{i}"), *b);
            let ge = self.node(
                "GreaterOrEqual",
                &format!("{name}.act_ge{i}"),
                &[&t, &b],
                vec![],
            );
            let c = self.node(
                "Cast",
                &format!("{name}.act_step{i}"),
                &[&ge],
                vec![int("to", DataType::Float as i64)],
            );
            terms.push(if s == 1.0 {
                c
            } else {
                let s = self.scalar(&format!("{name}.act_gap{i}"), s);
                self.node("Mul", &format!("{name}.act_term{i}"), &[&c, &s], vec![])
            });
        }
        let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
        let mut y = if refs.len() == 1 {
            terms[0].clone()
        } else {
            self.node("Sum", &format!("{name}.act_count"), &refs, vec![])
        };
        if lo != 0.0 {
            let o = self.scalar(&format!("{name}.act_lowest"), lo);
            y = self.node("Add", &format!("{name}.act_level"), &[&y, &o], vec![]);
        }
        let alpha = self.scalar(&format!("{name}.act_scale"), q.alpha);
        let value = self.node("Mul", &format!("{name}.act_value"), &[&y, &alpha], vec![]);
        let zero = self.init(&format!("{name}.act_zero"), &[], zero_type, vec![0]);
        let codes = self.node(
            "QuantizeLinear",
            &format!("{name}.act_codes"),
            &[&value, &alpha, &zero],
            vec![],
        );
        Ok(self.node(
            "DequantizeLinear",
            &format!("{name}.act"),
            &[&codes, &alpha, &zero],
            vec![],
        ))
    }

    fn layer(&mut self, conv: &Conv, x: &Sym, residual: Option<&Sym>) -> Result<Sym> {
        let src = &self.sources[conv.id];
        let name = self.names[conv.id].clone();
        let g = src.geo;
        // A conv's or linear layer's bias is its third input (an epilogue alone has none).
        let bias = match (&src.weights, &src.epi.bias) {
            (Some(_), Some(b)) => Some(self.floats(&format!("{name}.bias"), &[g.cout as i64], b)),
            _ => None,
        };
        let (mut v, dims) = match &src.weights {
            None => (x.name.clone(), x.dims),
            Some(w) if src.linear => {
                let x = self.flat(x.clone())?;
                let k = (g.cin * g.kh * g.kw) as i64;
                let w = self.weight(&name, w, &[g.cout as i64, k]);
                let mut inputs = vec![x.name.as_str(), w.as_str()];
                inputs.extend(bias.as_deref());
                let y = self.node(
                    "Gemm",
                    &format!("{name}.gemm"),
                    &inputs,
                    vec![int("transB", 1)],
                );
                (y, Dims::Flat(g.cout))
            }
            Some(w) => {
                let Dims::Map(_, h, wd) = x.dims else {
                    return Err(Error::Unsupported(format!(
                        "{name}: a conv on a flat input"
                    )));
                };
                let shape = [g.cout, g.cin, g.kh, g.kw].map(|d| d as i64);
                let w = self.weight(&name, w, &shape);
                let mut inputs = vec![x.name.as_str(), w.as_str()];
                inputs.extend(bias.as_deref());
                let (s, p) = (g.stride as i64, g.pad as i64);
                let attrs = vec![
                    ints("kernel_shape", &[g.kh as i64, g.kw as i64]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p, p, p, p]),
                ];
                let y = self.node("Conv", &format!("{name}.conv"), &inputs, attrs);
                let out = |n: usize, k: usize| (n + 2 * g.pad - k) / g.stride + 1;
                (y, Dims::Map(g.cout, out(h, g.kh), out(wd, g.kw)))
            }
        };
        let epi = &src.epi;
        if let Some(bn) = &epi.bn {
            let n = [bn.gamma.len() as i64];
            let inputs = [
                v.clone(),
                self.floats(&format!("{name}.bn_gamma"), &n, &bn.gamma),
                self.floats(&format!("{name}.bn_beta"), &n, &bn.beta),
                self.floats(&format!("{name}.bn_mean"), &n, &bn.mean),
                self.floats(&format!("{name}.bn_var"), &n, &bn.var),
            ];
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            v = self.node(
                "BatchNormalization",
                &format!("{name}.bn"),
                &refs,
                vec![float("epsilon", bn.epsilon as f32)],
            );
        }
        if let Some(r) = residual.filter(|_| epi.residual) {
            v = self.node("Add", &format!("{name}.add"), &[&v, &r.name], vec![]);
        }
        if epi.relu {
            v = self.node("Relu", &format!("{name}.relu"), &[&v], vec![]);
        }
        if let Some(q) = &epi.quant {
            v = self.quantizer(&name, &v, q)?;
        }
        Ok(Sym { name: v, dims })
    }

    /// Runs `f`, or passes an earlier error on (the walk goes on with a placeholder).
    fn guard(&mut self, x: &Sym, f: impl FnOnce(&mut Self) -> Result<Sym>) -> Sym {
        if self.error.is_some() {
            return x.clone();
        }
        f(self).unwrap_or_else(|e| {
            self.error = Some(e);
            x.clone()
        })
    }
}

impl Exec for Graph<'_> {
    type T = Sym;

    fn conv(&mut self, conv: &Conv, x: &Sym, residual: Option<&Sym>) -> Sym {
        self.guard(x, |g| g.layer(conv, x, residual))
    }

    fn max_pool(&mut self, x: &Sym, k: usize, s: usize, p: usize) -> Sym {
        self.guard(x, |g| {
            let Dims::Map(c, h, w) = x.dims else {
                return Err(Error::Unsupported("max pooling a flat tensor".into()));
            };
            let (k, s, p) = (k as i64, s as i64, p as i64);
            let name = g.node(
                "MaxPool",
                &format!("{}.maxpool", x.name),
                &[&x.name],
                vec![
                    ints("kernel_shape", &[k, k]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p, p, p, p]),
                ],
            );
            let out = |n: usize| (n + 2 * p as usize - k as usize) / s as usize + 1;
            Ok(Sym {
                name,
                dims: Dims::Map(c, out(h), out(w)),
            })
        })
    }

    fn global_avg_pool(&mut self, x: &Sym) -> Sym {
        self.guard(x, |g| {
            let Dims::Map(c, _, _) = x.dims else {
                return Err(Error::Unsupported("pooling a flat tensor".into()));
            };
            let name = g.node(
                "GlobalAveragePool",
                &format!("{}.avgpool", x.name),
                &[&x.name],
                vec![],
            );
            Ok(Sym {
                name,
                dims: Dims::Map(c, 1, 1),
            })
        })
    }

    fn adaptive_avg_pool(&mut self, x: &Sym, oh: usize, ow: usize) -> Sym {
        self.guard(x, |g| {
            let Dims::Map(c, h, w) = x.dims else {
                return Err(Error::Unsupported("pooling a flat tensor".into()));
            };
            if (h, w) == (oh, ow) {
                return Ok(x.clone());
            }
            if h % oh != 0 || w % ow != 0 {
                return Err(Error::Unsupported(format!(
                    "an adaptive average pool from {h}×{w} to {oh}×{ow} (uneven bins: ONNX has \
                     no adaptive pool; export at an input size whose map divides evenly)"
                )));
            }
            let (kh, kw) = ((h / oh) as i64, (w / ow) as i64);
            let name = g.node(
                "AveragePool",
                &format!("{}.avgpool", x.name),
                &[&x.name],
                vec![ints("kernel_shape", &[kh, kw]), ints("strides", &[kh, kw])],
            );
            Ok(Sym {
                name,
                dims: Dims::Map(c, oh, ow),
            })
        })
    }
}
