//! The recipe's steps around training, for any model and batch type: [`prepare`] (quantize,
//! re-estimate batch norm, calibrate) before the user's `Learner` runs, [`finish`] after it.

use burn::module::{HasAutodiffModule, Module};
use burn::tensor::backend::Backend;
use quantnet_burn::train::TemperatureHook;
use quantnet_burn::{QatBackend, QuantMode};

use crate::error::Result;
use crate::models::{QatModel, has_batch_norm};
use crate::qat::{CalibrationWeights, QatConfig};
use crate::quantize::{self, Temperatures};

/// Batches, and how one of them runs through a model (`F: FnMut(&M, Item)`).
pub struct Pass<I, F> {
    /// The batches.
    pub batches: I,
    /// Runs one batch through the model given.
    pub forward: F,
}

impl<I, F> Pass<I, F> {
    /// `batches`, run by `forward`.
    pub fn new(batches: I, forward: F) -> Self {
        Self { batches, forward }
    }
}

/// Whether [`prepare`] and [`finish`] re-estimate `model`'s batch norm: the policy quantizes,
/// `config.bn_reestimate` holds and the model has batch norm.
pub(crate) fn reestimates<B: Backend, M: Module<B>>(config: &QatConfig, model: &M) -> bool {
    !config.policy.is_float() && config.bn_reestimate && has_batch_norm(model)
}

/// What the recipe does between full-precision training and quantized training
/// ([`crate::qat::Qat::run`]'s quantize step), for a user's model on the inner backend of `B`:
///
/// 1. weight quantizers from the trained weights (`config.policy`);
/// 2. with `config.calibrate` soft (the default), the temperatures of training's first step
///    (`hook.start_at(0)`: give the hook that knows the run, [`TemperatureHook::over`]);
/// 3. when the policy quantizes and `config.bn_reestimate` holds and the model has batch norm:
///    its statistics re-estimated for the quantized weights calibration will see, over
///    `batch_norm` (run on the autodiff twin; [`quantize::BN_REESTIMATION_BATCHES`] batches
///    make the old statistics vanish);
/// 4. the activation quantizers calibrated over `calibration` (run on the model itself, the
///    weights soft at the first step's temperature, or hard), their quantizers made on `device`.
///
/// Returns the model and how many weight and activation quantizers were made.
///
/// # Errors
/// As [`quantize::quantize_weights`] and [`quantize::calibrate_acts_by`].
pub fn prepare<B, M, I, F, J, G>(
    mut model: M,
    config: &QatConfig,
    temps: &Temperatures,
    hook: &TemperatureHook,
    device: &B::Device,
    calibration: Pass<I, F>,
    batch_norm: Pass<J, G>,
) -> Result<(M, (usize, usize))>
where
    B: QatBackend,
    M: QatModel<B::InnerBackend> + HasAutodiffModule<B>,
    M::TrainModule: QatModel<B>,
    I: IntoIterator,
    F: FnMut(&M, I::Item) -> usize,
    J: IntoIterator,
    G: FnMut(&M::TrainModule, J::Item),
{
    let policy = &config.policy;
    let weights = quantize::quantize_weights(&mut model, policy, temps)?;
    let soft = config.calibrate == CalibrationWeights::Soft;
    if soft {
        hook.start_at(0);
    }
    if reestimates(config, &model) {
        let mode = if soft {
            QuantMode::Soft
        } else {
            QuantMode::Hard
        };
        model = quantize::reestimate_batch_norm_with_by::<B, M, _>(
            model,
            mode,
            batch_norm.batches,
            batch_norm.forward,
        );
    }
    if soft {
        quantize::set_weight_mode(&mut model, QuantMode::Soft);
    }
    let acts = quantize::calibrate_acts_by(
        &mut model,
        policy,
        temps,
        device,
        calibration.batches,
        calibration.forward,
    );
    if soft {
        quantize::set_weight_mode(&mut model, QuantMode::Auto);
    }
    Ok((model, (weights, acts?)))
}

/// What the recipe does after quantized training: the temperatures of the run's last step
/// (`hook.finish()`; burn-train's last epoch boundary has moved them on), batch-norm statistics
/// re-estimated for the hard network over `batch_norm` (when the policy quantizes,
/// `config.bn_reestimate` holds and the model has batch norm: training gathered them under soft
/// quantizers), and every quantizer settled ([`quantize::settle`]), so that the model (on the
/// inner backend) evaluates and saves as the hard network it is.
pub fn finish<B, M, J, G>(
    model: M,
    config: &QatConfig,
    hook: &TemperatureHook,
    batch_norm: Pass<J, G>,
) -> M
where
    B: QatBackend,
    M: QatModel<B::InnerBackend> + HasAutodiffModule<B>,
    M::TrainModule: QatModel<B>,
    J: IntoIterator,
    G: FnMut(&M::TrainModule, J::Item),
{
    hook.finish();
    let mut model = if !config.policy.is_float() && config.bn_reestimate && has_batch_norm(&model) {
        quantize::reestimate_batch_norm_with_by::<B, M, _>(
            model,
            QuantMode::Hard,
            batch_norm.batches,
            batch_norm.forward,
        )
    } else {
        model
    };
    quantize::settle(&mut model);
    model
}
