//! Turning a full-precision model into a quantized one: the precision policy, weight
//! quantizers from the trained weights, activation quantizers from a calibration pass.

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use quantnet_burn::{
    GradientMode, Granularity, LevelSet, Method, QatBackend, QuantBackend, QuantMode,
    QuantizerConfig, Temperature, ThresholdInit,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::{ImageModel, QatModel, has_batch_norm};
use quantnet_burn::nn::ActStats;

/// What is quantized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantPolicy {
    /// Weight quantizer (`None`: full-precision weights).
    pub weights: Option<QuantizerConfig>,
    /// Activation quantizer (`None`: full-precision activations).
    pub acts: Option<QuantizerConfig>,
    /// Quantize the first and the last weight layer too (the paper keeps them full precision).
    #[serde(default)]
    pub quantize_all: bool,
    /// Calibrate each activation quantizer's range `q` at this percentile of the sampled
    /// activations instead of their maximum (the paper's rule), e.g. 99.9: one outlier then
    /// cannot stretch the levels over values that almost never occur.
    #[serde(default)]
    pub act_percentile: Option<f32>,
    /// Set each activation range to the one whose hard quantization of the calibration sample
    /// has the least squared error ([`mse_range`]), searched below the maximum (or the
    /// percentile): at 2 bits the best range is far below the maximum.
    #[serde(default)]
    pub act_mse: bool,
}

impl QuantPolicy {
    /// Full precision everywhere.
    pub fn float() -> Self {
        Self {
            weights: None,
            acts: None,
            quantize_all: false,
            act_percentile: None,
            act_mse: false,
        }
    }

    /// The recipe's defaults for `weights` and `acts` level sets (`None`: full precision):
    /// weights with the exact gradient and k-means thresholds; activations with midpoint
    /// thresholds and the smooth straight-through gradient (`σ'` at T = 1, `official:1`),
    /// their range the least-squared-error one below the 99.9th percentile. What
    /// `quantnet train --weights W --acts A` quantizes with.
    pub fn recipe(weights: Option<LevelSet>, acts: Option<LevelSet>) -> Self {
        Self {
            weights: weights.map(QuantizerConfig::weights),
            acts: acts.map(|levels| {
                QuantizerConfig::activations(levels)
                    .with_threshold_init(ThresholdInit::Uniform)
                    .with_gradient(GradientMode::Official { cap: 1.0 })
            }),
            quantize_all: false,
            act_percentile: Some(99.9),
            act_mse: true,
        }
    }

    /// The same policy training with `method` (weights and activations; PACT's weights train as
    /// `ste`, see [`quantnet_burn::Method`]).
    ///
    /// # Errors
    /// [`Error::Config`] when the method cannot quantize what the policy asks for: activations
    /// with a weight-only method (`bwn`, `twn`), or weight levels the method does not produce.
    pub fn with_method(self, method: quantnet_burn::Method) -> Result<Self> {
        let config = |c: Option<QuantizerConfig>, what: &str| {
            c.map(|c| c.with_method(method))
                .transpose()
                .map_err(|e| Error::Config {
                    field: "method",
                    reason: format!("{method} with {what}: {e}"),
                })
        };
        let refuse = |reason: &str| Error::Config {
            field: "method",
            reason: format!("{method} {reason}"),
        };
        match method {
            Method::Bwn | Method::Twn if self.weights.is_none() => {
                return Err(refuse(
                    "quantizes weights: give the weight levels (weights = 1 or 2)",
                ));
            }
            Method::Pact if self.acts.is_none() => {
                return Err(refuse(
                    "learns the clipping of quantized activations: give their bits (acts = 2)",
                ));
            }
            _ => {}
        }
        Ok(Self {
            weights: config(self.weights, "quantized weights")?,
            acts: config(self.acts, "quantized activations")?,
            ..self
        })
    }

    /// The same policy with one `α`/`β` per weight tensor, per output channel, or one weight
    /// quantizer shared by every quantized layer ([`Granularity`]; activations stay per tensor).
    ///
    /// # Errors
    /// [`Error::Config`] for per-channel or shared scales without quantized weights or with a
    /// method other than `qn`.
    pub fn with_granularity(self, granularity: Granularity) -> Result<Self> {
        let refuse = |reason: String| Error::Config {
            field: "granularity",
            reason: format!("{granularity} {reason}"),
        };
        let weights = match self.weights {
            Some(w) => Some(
                w.with_granularity(granularity)
                    .map_err(|e| refuse(e.to_string()))?,
            ),
            None if granularity != Granularity::Tensor => {
                let what = match granularity {
                    Granularity::Shared => "shares one weight quantizer between layers",
                    _ => "sets the weight scales per output channel",
                };
                return Err(refuse(format!(
                    "{what}: quantize the weights (weights = 1, 2, ...)"
                )));
            }
            None => None,
        };
        Ok(Self { weights, ..self })
    }

    /// The method the policy trains with (`qn` for a full-precision policy).
    pub fn method(&self) -> quantnet_burn::Method {
        match (&self.weights, &self.acts) {
            // PACT's weights train as STE: the activation quantizer names the method.
            (_, Some(a)) => a.method,
            (Some(w), None) => w.method,
            (None, None) => quantnet_burn::Method::Qn,
        }
    }

    /// Whether weight layer `i` of `n` (forward order) is quantized, when the first and the
    /// last are kept full precision (classifiers).
    pub fn quantizes_weight(&self, i: usize, n: usize) -> bool {
        self.quantizes_layer(i, &[0, n.saturating_sub(1)])
    }

    /// Whether weight layer `i` is quantized, when the model keeps the layers `float` full
    /// precision ([`QatModel::float_layers`]).
    pub fn quantizes_layer(&self, i: usize, float: &[usize]) -> bool {
        self.weights.is_some() && (self.quantize_all || !float.contains(&i))
    }

    /// Whether anything is quantized.
    pub fn is_float(&self) -> bool {
        self.weights.is_none() && self.acts.is_none()
    }
}

/// The temperature cells shared by a model's quantizers (the hook raises them every epoch).
#[derive(Clone, Debug, Default)]
pub struct Temperatures {
    /// Weight quantizers' temperature.
    pub weights: Temperature,
    /// Activation quantizers' temperature.
    pub acts: Temperature,
}

fn layer_error(layer: &str, source: quantnet_burn::Error) -> Error {
    Error::Layer {
        layer: layer.to_string(),
        source,
    }
}

/// A tensor's values as f32 on the host; `what` names it in the error.
pub(crate) fn read_f32(data: TensorData, what: &str) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::ReadBack {
            what: what.to_string(),
            reason: format!("{e:?}"),
        })
}

/// The weight layers `model` keeps full precision by default ([`QatModel::float_layers`]).
fn float_layers<B: Backend, M: QatModel<B>>(model: &mut M) -> Vec<usize> {
    let n = model.slots().weights.len();
    model.float_layers(n)
}

/// Gives the policy's weight layers quantizers initialised from their current weights
/// (`β = 5p/4q`, thresholds by k-means or as configured; [`Granularity::Shared`]: one quantizer
/// from all their weights, in every layer). A layer that already has a quantizer with the
/// policy's level set, method and granularity keeps it (a model loaded from a quantized run
/// continues as it was; a layer-wise policy gives each layer of a run that shared one
/// quantizer its own copy of the shared values). Returns how many quantizers were made.
///
/// # Errors
/// [`Error::Layer`] names the layer whose weights cannot set a quantizer (all zero, non-finite).
pub fn quantize_weights<B: Backend, M: QatModel<B>>(
    model: &mut M,
    policy: &QuantPolicy,
    temperatures: &Temperatures,
) -> Result<usize> {
    let Some(config) = &policy.weights else {
        return Ok(0);
    };
    if config.granularity == Granularity::Shared {
        return share_weight_quantizer(model, policy, config, temperatures);
    }
    let float = float_layers(model);
    let mut slots = model.slots();
    let mut count = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, (name, layer)) in slots.weights.iter_mut().enumerate() {
        if !policy.quantizes_layer(i, &float) {
            continue;
        }
        if let Some(q) = layer.quantizer().as_mut()
            && q.level_set() == &config.levels
            && q.method() == config.method
            && q.granularity() == config.granularity
        {
            // Kept, but trained with the policy's gradient rule (not part of the record).
            q.set_gradient(config.gradient);
            if !seen.insert(q.alpha.id) {
                // A run that shared one quantizer, continued layer-wise: each layer its own
                // parameters (new ids, the trained flags of the config) with the shared values.
                let values = |t: Tensor<B, 1>| read_f32(t.into_data(), name);
                let alpha = values(q.alpha.val())?[0];
                let beta = values(q.beta.val())?[0];
                let thresholds = values(q.thresholds.val())?;
                let device = q.alpha.val().device();
                *q = config
                    .init_with(alpha, beta, &thresholds, &temperatures.weights, &device)
                    .map_err(|e| layer_error(name, e))?;
            }
            continue;
        }
        layer
            .quantize_from_weights(config, &temperatures.weights)
            .map_err(|e| layer_error(name, e))?;
        count += 1;
    }
    Ok(count)
}

/// [`quantize_weights`] for [`Granularity::Shared`]: one quantizer initialised from the
/// weights of every quantized layer together (`q` their largest magnitude, the thresholds by
/// k-means over all of them), the same parameters (one `ParamId` each) in every layer. Layers
/// that already share one quantizer of the policy's levels and method keep it. Returns how many
/// layers were given the shared quantizer.
fn share_weight_quantizer<B: Backend, M: QatModel<B>>(
    model: &mut M,
    policy: &QuantPolicy,
    config: &QuantizerConfig,
    temperatures: &Temperatures,
) -> Result<usize> {
    let float = float_layers(model);
    let mut slots = model.slots();
    let mut layers: Vec<_> = slots
        .weights
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| policy.quantizes_layer(*i, &float))
        .map(|(_, layer)| layer)
        .collect();
    let mut alphas = std::collections::HashSet::new();
    let mut kept = true;
    for (_, layer) in layers.iter_mut() {
        match layer.quantizer().as_mut() {
            Some(q)
                if q.level_set() == &config.levels
                    && q.method() == config.method
                    && q.channel_axis().is_none() =>
            {
                alphas.insert(q.alpha.id);
            }
            _ => kept = false,
        }
    }
    if kept && alphas.len() <= 1 {
        for (_, layer) in layers.iter_mut() {
            if let Some(q) = layer.quantizer().as_mut() {
                q.set_gradient(config.gradient);
            }
        }
        return Ok(0);
    }
    let mut pooled = Vec::new();
    let mut device = None;
    for (name, layer) in layers.iter_mut() {
        layer.materialise();
        let weight = layer.weight();
        device.get_or_insert_with(|| weight.device());
        pooled.extend(read_f32(weight.into_data(), name)?);
    }
    let Some(device) = device else {
        return Ok(0);
    };
    let shared = config
        .init_from_data::<B>(&pooled, &temperatures.weights, &device)
        .map_err(|e| layer_error("the shared weight quantizer", e))?;
    for (_, layer) in layers.iter_mut() {
        *layer.quantizer() = Some(shared.clone());
    }
    Ok(layers.len())
}

/// Calibrates the activation quantizers: runs `batches` through the model (on a non-autodiff
/// backend, so weight quantizers are hard), records what reaches every activation slot, and sets
/// each slot's quantizer from the maximum and a sample of the values (paper-spec §3: `β` from the
/// maximum, thresholds by k-means). Slots that already have a quantizer with the policy's level
/// set keep it and quantize during the pass. Returns how many slots were calibrated.
/// [`calibrate_acts_by`] does the same for any model and batch type.
///
/// # Errors
/// [`Error::Layer`] names a slot whose activations are all zero; [`Error::Calibration`] one
/// whose activations are not finite, or says that `batches` is empty.
pub fn calibrate_acts<B: QuantBackend, M: ImageModel<B>>(
    model: &mut M,
    policy: &QuantPolicy,
    temperatures: &Temperatures,
    batches: impl IntoIterator<Item = Tensor<B, 4>>,
) -> Result<usize> {
    calibrate(model, policy, temperatures, |model| {
        let (mut seen, mut device) = (0, None);
        for batch in batches {
            device = Some(batch.device());
            seen += batch.dims()[0];
            drop(model.forward(batch));
        }
        device.filter(|_| seen > 0)
    })
}

/// [`calibrate_acts`] for any model and any batch type: `forward` runs one of the user's
/// `batches` through the model (its own forward, or its `InferenceStep`; give it the model on a
/// backend without autodiff, so that weight quantizers compute hard as they will when
/// training starts, or in the soft mode they train in) and returns how many examples it held.
/// The quantizers are made on `device`.
///
/// # Errors
/// As [`calibrate_acts`] (no example in `batches`: [`Error::Calibration`]).
pub fn calibrate_acts_by<B: QuantBackend, M: QatModel<B>, X>(
    model: &mut M,
    policy: &QuantPolicy,
    temperatures: &Temperatures,
    device: &B::Device,
    batches: impl IntoIterator<Item = X>,
    mut forward: impl FnMut(&M, X) -> usize,
) -> Result<usize> {
    calibrate(model, policy, temperatures, |model| {
        let seen: usize = batches.into_iter().map(|x| forward(model, x)).sum();
        (seen > 0).then(|| device.clone())
    })
}

/// The calibration of [`calibrate_acts`]: `run` runs the batches through the model, whose
/// observers record, and returns the quantizers' device (`None`: no example was seen).
fn calibrate<B: QuantBackend, M: QatModel<B>>(
    model: &mut M,
    policy: &QuantPolicy,
    temperatures: &Temperatures,
    run: impl FnOnce(&M) -> Option<B::Device>,
) -> Result<usize> {
    let Some(config) = &policy.acts else {
        return Ok(0);
    };
    let mut todo = Vec::new();
    for (i, (_, slot)) in model.slots().acts.into_iter().enumerate() {
        if let Some(q) = slot.quantizer.as_mut()
            && q.level_set() == &config.levels
            && q.method() == config.method
        {
            q.set_gradient(config.gradient);
            continue;
        }
        slot.quantizer = None;
        slot.observer.start();
        todo.push(i);
    }
    if todo.is_empty() {
        return Ok(0);
    }
    let device = run(model);
    let stats: Vec<(String, Option<ActStats>)> = model
        .slots()
        .acts
        .into_iter()
        .map(|(name, slot)| (name, slot.observer.take()))
        .collect();
    let Some(device) = device else {
        return Err(Error::Calibration {
            slot: None,
            reason: "needs at least one example".into(),
        });
    };
    let mut slots = model.slots();
    for ((i, (name, slot)), (_, stats)) in slots.acts.iter_mut().enumerate().zip(stats) {
        if !todo.contains(&i) {
            continue;
        }
        let stats = stats.unwrap_or_default();
        if stats.non_finite {
            return Err(Error::Calibration {
                slot: Some(name.clone()),
                reason: "non-finite activations (diverged model?)".into(),
            });
        }
        // The sample is strided; the maximum is over every value, and sets β (or the percentile
        // of the sample does, with the values above it clipped to it).
        let mut values = stats.samples;
        let upper = match policy.act_percentile {
            None => stats.max,
            Some(p) => percentile(&values, p).unwrap_or(stats.max),
        };
        let q = if policy.act_mse {
            let q = mse_range(&values, &config.levels, upper);
            // The least-error range is found for qn's α = 4q/(5p); the methods that set α = q/p
            // (ste, pact, dsq) get the same α from 0.8·q.
            match config.method {
                Method::Ste | Method::Pact | Method::Dsq => 0.8 * q,
                _ => q,
            }
        } else {
            upper
        };
        // The quantizer's range is the maximum of what it is given: clip to `q`, and make sure
        // `q` is there.
        for v in &mut values {
            *v = v.min(q);
        }
        values.push(q);
        let q = config
            .init_from_data(&values, &temperatures.acts, &device)
            .map_err(|e| layer_error(name, e))?;
        slot.quantizer = Some(q);
    }
    Ok(todo.len())
}

/// The range `q` in `(0, upper]` whose hard quantization of `values` has the least squared
/// error, for the paper's initial scales (`β = 5p/(4q)`, `α = 1/β`, `p = max|Y|`) and midpoint
/// thresholds: 200 candidates `upper·k/200`. Returns `upper` when `values` is empty or `upper` is
/// not positive.
///
/// For example, values `{0, 1, …, 99}` with levels `{0, 1}` and `upper = 99`: `α = 4q/5` and the
/// threshold is at `α/2`. The error is least where `α` is the mean of the values at or above
/// `α/2` (Lloyd's condition): `α = (α/2 + 99)/2`, `α = 66`, so `q ≈ 82.5`, well below the
/// maximum; the grid's nearest candidate is `q = 99·168/200 = 83.16`.
pub fn mse_range(values: &[f32], levels: &quantnet_burn::LevelSet, upper: f32) -> f32 {
    let ys = levels.levels();
    if values.is_empty() || !(upper > 0.0 && upper.is_finite()) || levels.max_abs() == 0.0 {
        return upper;
    }
    let mids = levels.midpoint_thresholds();
    let error = |q: f32| -> f64 {
        // Every candidate is finite and positive: the scales exist.
        let Ok((alpha, beta)) = quantnet_burn::initial_scales(levels, q) else {
            return f64::INFINITY;
        };
        values
            .iter()
            .map(|&x| {
                let k = mids.iter().take_while(|&&b| beta * x >= b).count();
                let d = f64::from(x - alpha * ys[k]);
                d * d
            })
            .sum()
    };
    const CANDIDATES: usize = 200;
    (1..=CANDIDATES)
        .map(|k| upper * k as f32 / CANDIDATES as f32)
        .map(|q| (q, error(q)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(upper, |(q, _)| q)
}

/// The `p`-th percentile (0–100, nearest rank) of `values`; `None` when empty.
pub fn percentile(values: &[f32], p: f32) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * sorted.len() as f32).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Gives the model the structure `policy` asks for with placeholder quantizers (α = β = 1,
/// midpoint thresholds): the skeleton a saved quantized model's record loads into.
///
/// # Errors
/// As [`QuantizerConfig::init_with`].
pub fn skeleton<B: Backend, M: QatModel<B>>(
    model: &mut M,
    policy: &QuantPolicy,
    temperatures: &Temperatures,
    device: &B::Device,
) -> Result<()> {
    let placeholder = |config: &QuantizerConfig, t: &Temperature, name: &str| {
        config
            .init_with(1.0, 1.0, &config.levels.midpoint_thresholds(), t, device)
            .map_err(|e| layer_error(name, e))
    };
    let float = float_layers(model);
    let mut slots = model.slots();
    if let Some(config) = &policy.weights {
        for (i, (name, layer)) in slots.weights.iter_mut().enumerate() {
            if policy.quantizes_layer(i, &float) {
                layer.materialise();
                let q = match config.granularity {
                    // Shared: the record gives every layer the same parameters (one id each),
                    // which training ties into one tensor (`tie_shared_params`).
                    Granularity::Tensor | Granularity::Shared => {
                        placeholder(config, &temperatures.weights, name)?
                    }
                    // One α/β broadcast over the channels until the record brings all of them.
                    Granularity::Channel => config
                        .init_per_channel(
                            &[1.0],
                            &[1.0],
                            &config.levels.midpoint_thresholds(),
                            layer.channel_axis(),
                            &temperatures.weights,
                            device,
                        )
                        .map_err(|e| layer_error(name, e))?,
                };
                *layer.quantizer() = Some(q);
            }
        }
    }
    if let Some(config) = &policy.acts {
        for (name, slot) in slots.acts.iter_mut() {
            slot.quantizer = Some(placeholder(config, &temperatures.acts, name)?);
        }
    }
    Ok(())
}

/// Stores in every weight quantizer's parameters the `α`, `β` and thresholds it applies to its
/// layer's current weights ([`quantnet_burn::Quantizer::settled`]): for the methods that compute
/// them from the weights (`bwn`, `twn`) or tie `β` to `α` (`lsq`, `pact`, `dsq`), the saved record
/// then describes the hard network by itself. Call before saving a trained model.
pub fn settle<B: QuantBackend, M: QatModel<B>>(model: &mut M) {
    for (_, mut layer) in model.slots().weights {
        let weight = layer.weight();
        if let Some(q) = layer.quantizer().take() {
            *layer.quantizer() = Some(q.settled(&weight));
        }
    }
    for (_, slot) in model.slots().acts {
        if let Some(q) = slot.quantizer.take() {
            // An activation quantizer's parameters depend on no tensor but its own.
            let probe = q.alpha.val();
            slot.quantizer = Some(q.settled(&probe));
        }
    }
}

/// Sets the weight quantizers of the model to `mode` (e.g. `Soft` to calibrate activations on
/// the weights training will see).
pub fn set_weight_mode<B: Backend, M: QatModel<B>>(model: &mut M, mode: QuantMode) {
    for (_, mut layer) in model.slots().weights {
        if let Some(q) = layer.quantizer().as_mut() {
            q.set_mode(mode);
        }
    }
}

/// Sets every quantizer of the model to `mode` (e.g. `Soft` to measure soft accuracy on a
/// non-autodiff backend, `Auto` to go back).
pub fn set_mode<B: Backend, M: QatModel<B>>(model: &mut M, mode: QuantMode) {
    for q in model.slots().quantizers() {
        q.set_mode(mode);
    }
}

/// Re-attaches the model's quantizers to `temperatures` (after loading a record, or after a
/// `valid()` copy, so that the hook's cells drive them).
pub fn attach<B: Backend, M: QatModel<B>>(model: &mut M, temperatures: &Temperatures) {
    let slots = model.slots();
    for (_, mut layer) in slots.weights {
        if let Some(q) = layer.quantizer().take() {
            *layer.quantizer() = Some(q.with_temperature(&temperatures.weights));
        }
    }
    for (_, slot) in slots.acts {
        if let Some(q) = slot.quantizer.take() {
            slot.quantizer = Some(q.with_temperature(&temperatures.acts));
        }
    }
}

/// Checks every quantizer's persisted levels against its level set
/// ([`quantnet_burn::Quantizer::check_levels`]): call after loading a record into a skeleton.
///
/// # Errors
/// [`Error::Layer`] naming the first layer whose record holds other levels.
pub fn check_levels<B: Backend, M: QatModel<B>>(model: &mut M) -> Result<()> {
    let slots = model.slots();
    for (name, mut layer) in slots.weights {
        if let Some(q) = layer.quantizer().as_ref() {
            q.check_levels().map_err(|e| layer_error(&name, e))?;
        }
    }
    for (name, slot) in slots.acts {
        if let Some(q) = slot.quantizer.as_ref() {
            q.check_levels().map_err(|e| layer_error(&name, e))?;
        }
    }
    Ok(())
}

/// Batches [`reestimate_batch_norm`] runs by default: Burn's batch norm keeps an exponential
/// average with momentum 0.1, so the statistics from before weigh `0.9^200 ≈ 7e-10` after them.
pub const BN_REESTIMATION_BATCHES: usize = 200;

/// The examples of the batch-norm passes, in order: [`BN_REESTIMATION_BATCHES`] batches of
/// `batch_size` from a seeded shuffle of `0..len` (in a random order, so that batches of
/// class-sorted folders mix classes), cycled through when `len` is smaller.
pub(crate) fn bn_order(len: usize, batch_size: usize, seed: u64) -> Vec<usize> {
    let wanted = BN_REESTIMATION_BATCHES * batch_size;
    let sample = crate::data::shuffled_indices(len, wanted.min(len), seed);
    sample.into_iter().cycle().take(wanted).collect()
}

/// Re-estimates every batch-norm layer's running statistics for the network as it computes
/// now, e.g. with its weights hard-quantized (statistics gathered while training saw soft
/// weights, or full-precision ones, do not fit the hard network). Runs `batches` through the
/// model in training mode (batch norm normalises with the batch's statistics and updates its
/// running ones; dropout is active as in training) and takes no gradient step. The quantizers
/// compute in whatever mode they are in: see [`reestimate_batch_norm_with`] to choose it. Returns the number of batches run.
///
/// Give it at least [`BN_REESTIMATION_BATCHES`] batches for the old statistics to vanish (a
/// shorter run mixes old and new); a model without batch norm is left as it is.
pub fn reestimate_batch_norm<B: AutodiffBackend + QuantBackend, M: ImageModel<B>>(
    model: &M,
    batches: impl IntoIterator<Item = Tensor<B, 4>>,
) -> usize {
    reestimate_batch_norm_by(model, batches, |m, x| drop(m.forward(x.detach())))
}

/// [`reestimate_batch_norm`] for any module and batch type: `forward` runs one of the user's
/// `batches` through the module given (a copy of `model` that tracks no gradient and shares its
/// batch-norm statistics). Returns the number of batches run.
pub fn reestimate_batch_norm_by<B: AutodiffBackend, M: Module<B>, X>(
    model: &M,
    batches: impl IntoIterator<Item = X>,
    mut forward: impl FnMut(&M, X),
) -> usize {
    // The passes run on a copy whose parameters track no gradient, so no autodiff graph is
    // built: Burn keeps the graph of tracked operations that never meet a backward pass, and
    // the copy shares the batch-norm running statistics (Burn's `RunningState`) with `model`.
    // With tracked parameters memory grew by each pass's activations: a 1-epoch ternary/4-bit
    // small-SSD run on the neon-trees fixture peaked at 7.8 GB (162 MB now), its re-estimation
    // passes being 100 batches of eight 192×192 images (a hard activation quantizer cuts the
    // graph, so a backward pass from the output would not free what lies before it).
    let frozen = model.clone().no_grad();
    let mut n = 0;
    for x in batches {
        forward(&frozen, x);
        n += 1;
    }
    n
}

/// [`reestimate_batch_norm`] for the network with every quantizer in `mode`, given on the
/// inner backend: [`QuantMode::Hard`] before hard evaluation and export (the network as it will
/// run), [`QuantMode::Soft`] before calibrating activations against soft weights. The model
/// goes to the autodiff backend for the pass (Burn's batch norm updates its statistics only
/// there) and comes back with every quantizer in [`QuantMode::Auto`]. A model without batch
/// norm comes back as it was.
pub fn reestimate_batch_norm_with<B, M>(
    model: M,
    mode: QuantMode,
    batches: impl IntoIterator<Item = Tensor<B::InnerBackend, 4>>,
) -> M
where
    B: QatBackend,
    M: crate::models::QatTrainModel<B>,
{
    let batches = batches.into_iter().map(Tensor::from_inner);
    reestimate_batch_norm_with_by::<B, M, _>(model, mode, batches, |m, x| {
        drop(m.forward(x.detach()))
    })
}

/// [`reestimate_batch_norm_with`] for any model and batch type: `forward` runs one of the
/// user's `batches` (on the autodiff backend) through the model's autodiff twin, given with
/// every quantizer in `mode`.
pub fn reestimate_batch_norm_with_by<B, M, X>(
    model: M,
    mode: QuantMode,
    batches: impl IntoIterator<Item = X>,
    forward: impl FnMut(&M::TrainModule, X),
) -> M
where
    B: QatBackend,
    M: QatModel<B::InnerBackend> + burn::module::HasAutodiffModule<B>,
    M::TrainModule: QatModel<B>,
{
    if !has_batch_norm(&model) {
        return model;
    }
    let mut model = <M::TrainModule as burn::module::AutodiffModule<B>>::from_inner(model);
    set_mode(&mut model, mode);
    reestimate_batch_norm_by(&model, batches, forward);
    set_mode(&mut model, QuantMode::Auto);
    burn::module::AutodiffModule::valid(&model)
}

/// The paper's second phase, "activations only": freezes every parameter of `model` (weights,
/// biases, batch norm, the weight quantizers' α/β) except the activation quantizers' α and β,
/// so training moves only those, and sets the weight quantizers to [`QuantMode::Hard`]: the
/// weights are fixed at their quantized values, as in the paper (not soft at a restarted
/// temperature). Batch-norm running statistics still update in training mode.
/// Returns how many activation quantizers stay trainable.
pub fn train_only_act_quantizers<B: Backend, M: QatModel<B>>(model: &mut M) -> usize {
    *model = model.clone().no_grad();
    set_weight_mode(model, QuantMode::Hard);
    let mut trainable = 0;
    for (_, slot) in model.slots().acts {
        if let Some(q) = slot.quantizer.as_mut() {
            // What the method learns: qn α and β; lsq, pact, dsq their step (β follows it) and
            // dsq its sharpness; ste nothing.
            let (alpha, beta) = match q.method() {
                Method::Qn => (true, true),
                Method::Lsq | Method::Pact | Method::Dsq => (true, false),
                _ => (false, false),
            };
            q.alpha = q.alpha.clone().set_require_grad(alpha);
            q.beta = q.beta.clone().set_require_grad(beta);
            q.sharpness = q.sharpness.take().map(|p| p.set_require_grad(true));
            trainable += 1;
        }
    }
    trainable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library's policy errors name its fields and values, not the CLI's flags (issue 26):
    /// a method that needs weights or activations the policy does not quantize, a weight-only
    /// method on activations, levels a method does not make, per-channel scales without weights.
    #[test]
    fn policy_errors_name_no_cli_flags() {
        use quantnet_burn::{LevelSet, Method};
        let u2 = || Some(LevelSet::unsigned(2).unwrap());
        let errors = [
            QuantPolicy::recipe(None, u2()).with_method(Method::Bwn),
            QuantPolicy::recipe(Some(LevelSet::ternary()), None).with_method(Method::Pact),
            QuantPolicy::recipe(Some(LevelSet::ternary()), u2()).with_method(Method::Twn),
            QuantPolicy::recipe(Some(LevelSet::ternary()), None).with_method(Method::Bwn),
            QuantPolicy::recipe(None, u2()).with_granularity(Granularity::Channel),
        ];
        for e in errors {
            let text = e.expect_err("refused").to_string();
            assert!(!text.contains("--"), "{text}");
        }
    }

    #[test]
    fn mse_range_finds_lloyds_optimum_below_the_maximum() {
        // See the doc example: the optimum α = 66, q = 82.5; the grid gives 83.16.
        let values: Vec<f32> = (0..100).map(|v| v as f32).collect();
        let binary = quantnet_burn::LevelSet::unsigned(1).unwrap();
        let q = mse_range(&values, &binary, 99.0);
        assert!((q - 83.16).abs() < 1e-3, "{q}");
        // 999 values spread over [0, 1) and one outlier at 10, 2 bits (levels 0..3, α = 4q/15):
        // covering the outlier (q = 10, α = 2.67) rounds the bulk to 0, error ≈ 999/3 + 2² =
        // 337; q ≈ 1 (α ≈ 0.27) costs the bulk ≈ 999·α²/12 ≈ 6 and the outlier (10 − 0.8)² ≈
        // 85. The best range clips the outlier.
        let mut values: Vec<f32> = (0..999).map(|i| i as f32 / 999.0).collect();
        values.push(10.0);
        let two_bits = quantnet_burn::LevelSet::unsigned(2).unwrap();
        let q = mse_range(&values, &two_bits, 10.0);
        assert!(q < 2.0, "{q}");
        // Degenerate input: the upper bound comes back.
        assert_eq!(mse_range(&[], &two_bits, 3.0), 3.0);
        assert_eq!(mse_range(&values, &two_bits, 0.0), 0.0);
    }
}
