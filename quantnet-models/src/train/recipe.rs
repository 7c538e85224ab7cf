//! The recipe as one value for a user's own burn-train setup: [`Recipe`] holds the run's
//! configuration, temperatures and hook, and hands out the parts: [`Recipe::prepare`] before
//! training, [`Recipe::step`], [`Recipe::optimizer`], [`Recipe::lr`] and [`Recipe::attach`]
//! for the user's `Learner` and `SupervisedTraining`, [`Recipe::finish`] after training. Data
//! comes as Burn's [`Dataset`] and [`Batcher`], and the model runs its own [`InferenceStep`]:
//! nothing here knows the task.

use std::collections::HashSet;
use std::fmt;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, HasAutodiffModule, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::ItemLazy;
use burn::train::metric::Adaptor;
use burn::train::{InferenceStep, LearningComponentsTypes, SupervisedTraining, TrainStep};
use quantnet_burn::QatBackend;
use quantnet_burn::train::{GroupLr, ParamGroup, RunLr, TemperatureHook, TemperatureMetric};

use super::parts::{self, Pass};
use super::step::{QatStep, quantizer_scale_ids};
use crate::data::sample_indices;
use crate::error::Result;
use crate::models::QatModel;
use crate::qat::{CalibrationWeights, ClipDomain, QatConfig, QuantLrGroup};
use crate::quantize::{BN_REESTIMATION_BATCHES, Temperatures, bn_order};

/// One quantized training run's recipe in a user's own burn-train setup, for any model (a
/// [`QatModel`] with the user's [`TrainStep`] and [`InferenceStep`]) and any data (a [`Dataset`]
/// and a [`Batcher`] for the model's batch type on both backends):
///
/// ```text
/// let recipe = Recipe::new(QatConfig::new(policy).with_epochs(3), steps_per_epoch);
/// let (model, prepared) = recipe.prepare::<B, _, _>(model, &train_set, &batcher, &device)?;
/// println!("{prepared}");
/// let optimizer = recipe.optimizer(AdamConfig::new().init());
/// let trained = recipe
///     .attach(SupervisedTraining::new(dir, train_loader, valid_loader))
///     .metrics((AccuracyMetric::new(), LossMetric::new()))
///     .launch(Learner::new(recipe.step(model), optimizer, recipe.lr()));
/// let (model, finished) = recipe.finish::<B, _, _>(trained.model.into_model(), &train_set, &batcher, &device);
/// ```
///
/// `config.epochs` is the run's length (the per-step anneal and the learning-rate schedule end
/// with it); the recipe's other choices are `config`'s fields (the temperature schedules,
/// calibration sample, batch-norm re-estimation, ŵ-domain clipping, the quantizer-scale
/// learning-rate group).
#[derive(Clone, Debug)]
pub struct Recipe {
    config: QatConfig,
    temps: Temperatures,
    hook: TemperatureHook,
    steps_per_epoch: usize,
}

/// What [`Recipe::prepare`] did (its `Display` is one line a program can print).
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// Weight quantizers made.
    pub weights: usize,
    /// Batches the batch-norm statistics were re-estimated over (0: not re-estimated).
    pub batch_norm_batches: usize,
    /// Activation quantizers calibrated.
    pub acts: usize,
    /// Examples the calibration saw.
    pub calibration_examples: usize,
    /// The weights the calibration saw.
    pub calibrate: CalibrationWeights,
    /// The weight and activation temperatures of the first step (what a soft calibration ran
    /// at).
    pub first_temperatures: (f32, f32),
    /// Parameters in the quantizer-scale learning-rate group, and their multiplier.
    pub scale_group: (usize, f64),
}

/// What [`Recipe::finish`] found and did (its `Display` is one line a program can print).
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Optimizer steps that ticked the temperature hook, and the run's planned steps.
    pub steps: (usize, usize),
    /// The weight and activation temperatures of the last step (what the settled quantizers
    /// were trained towards).
    pub last_temperatures: (f32, f32),
    /// Batches the batch-norm statistics were re-estimated over for the hard network (0: not
    /// re-estimated).
    pub batch_norm_batches: usize,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "annealed step by step over {} of {} steps to temperatures {:.2} / {:.2}",
            self.steps.0, self.steps.1, self.last_temperatures.0, self.last_temperatures.1
        )?;
        if self.batch_norm_batches > 0 {
            write!(
                f,
                "; batch norm re-estimated for the hard network over {} batches",
                self.batch_norm_batches
            )?;
        }
        write!(f, "; quantizers settled (hard)")
    }
}

impl fmt::Display for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weights = match self.calibrate {
            CalibrationWeights::Soft => format!(
                "soft weights at the first step's temperatures {:.2} / {:.2}",
                self.first_temperatures.0, self.first_temperatures.1
            ),
            CalibrationWeights::Hard => "hard weights".to_string(),
        };
        write!(f, "quantized {} weight layer(s); ", self.weights)?;
        if self.batch_norm_batches > 0 {
            write!(
                f,
                "batch norm re-estimated over {} batches; ",
                self.batch_norm_batches
            )?;
        }
        write!(
            f,
            "calibrated {} activation quantizer(s) on {} examples ({weights}); {} quantizer \
             scale(s) train at {}x the learning rate",
            self.acts, self.calibration_examples, self.scale_group.0, self.scale_group.1
        )
    }
}

/// The quantizer-scale learning-rate group of [`Recipe::optimizer`]: the parameters
/// [`quantizer_scale_ids`] names.
#[derive(Clone, Copy, Debug)]
pub struct QuantizerScales(pub QuantLrGroup);

impl<B: Backend, M: QatModel<B>> ParamGroup<QatStep<B, M>> for QuantizerScales {
    fn ids(&self, module: &QatStep<B, M>) -> HashSet<ParamId> {
        quantizer_scale_ids(module, self.0).into_iter().collect()
    }
}

impl Recipe {
    /// The recipe of `config` for a run of `config.epochs` epochs of `steps_per_epoch` optimizer
    /// steps, with fresh temperatures.
    pub fn new(config: QatConfig, steps_per_epoch: usize) -> Self {
        let temps = Temperatures::default();
        let hook = config.hook(&temps).over(config.epochs, steps_per_epoch);
        Self {
            config,
            temps,
            hook,
            steps_per_epoch,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QatConfig {
        &self.config
    }

    /// The temperatures the quantizers read.
    pub fn temperatures(&self) -> &Temperatures {
        &self.temps
    }

    /// The temperature hook (clones share the run's step count).
    pub fn hook(&self) -> TemperatureHook {
        self.hook.clone()
    }

    /// [`parts::prepare`] with the recipe's data choices: the policy's weight quantizers; batch
    /// norm re-estimated (when the config asks and the model has it) over
    /// [`BN_REESTIMATION_BATCHES`] batches of `config.batch_size` examples shuffled from
    /// `dataset` (cycled when it is smaller), run through the autodiff twin's
    /// [`InferenceStep`]; the activation quantizers calibrated on `config.calibration_images`
    /// examples sampled from `dataset` (seeded by `config.seed`), run through the model's
    /// [`InferenceStep`] in batches of 100.
    ///
    /// # Errors
    /// As [`parts::prepare`]; a `dataset` that yields no example for an index below its length
    /// is a calibration error (nothing seen).
    pub fn prepare<B, M, I>(
        &self,
        model: M,
        dataset: &impl Dataset<I>,
        batcher: &(
             impl Batcher<B::InnerBackend, I, M::Input>
             + Batcher<B, I, <M::TrainModule as InferenceStep>::Input>
         ),
        device: &B::Device,
    ) -> Result<(M, Prepared)>
    where
        B: QatBackend,
        M: QatModel<B::InnerBackend> + HasAutodiffModule<B> + InferenceStep,
        M::TrainModule: QatModel<B> + InferenceStep,
    {
        let config = &self.config;
        let calibration = sample_indices(dataset.len(), config.calibration_images, config.seed);
        let calibration_batches = calibration.chunks(100).map(|chunk| {
            let items: Vec<I> = chunk.iter().filter_map(|&i| dataset.get(i)).collect();
            (
                items.len(),
                Batcher::<B::InnerBackend, I, M::Input>::batch(batcher, items, device),
            )
        });
        let bn_batches = self.bn_batches_run(&model);
        let bn = self
            .bn_batches::<B, I, <M::TrainModule as InferenceStep>::Input>(dataset, batcher, device);
        let (model, (weights, acts)) = parts::prepare::<B, M, _, _, _, _>(
            model,
            config,
            &self.temps,
            &self.hook,
            device,
            Pass::new(calibration_batches, |m: &M, (n, batch)| {
                drop(m.step(batch));
                n
            }),
            Pass::new(bn, |m: &M::TrainModule, batch| drop(m.step(batch))),
        )?;
        let scales = quantizer_scale_ids(&model, config.quant_lr_group).len();
        Ok((
            model,
            Prepared {
                weights,
                batch_norm_batches: bn_batches,
                acts,
                calibration_examples: calibration.len(),
                calibrate: config.calibrate,
                first_temperatures: (self.temps.weights.get(), self.temps.acts.get()),
                scale_group: (scales, config.quant_lr_mult),
            },
        ))
    }

    /// The batch-norm passes' batches ([`crate::quantize`]'s order over `dataset`), made as the
    /// pass takes them: none is made when the pass does not run.
    fn bn_batches<'a, B: Backend, I, X>(
        &self,
        dataset: &'a impl Dataset<I>,
        batcher: &'a impl Batcher<B, I, X>,
        device: &'a B::Device,
    ) -> impl Iterator<Item = X> + 'a {
        let size = self.config.batch_size;
        let order = bn_order(dataset.len(), size, self.config.seed);
        (0..BN_REESTIMATION_BATCHES).map(move |b| {
            let items: Vec<I> = (order[b * size..(b + 1) * size].iter())
                .filter_map(|&i| dataset.get(i))
                .collect();
            batcher.batch(items, device)
        })
    }

    /// How many batches the batch-norm passes run on `model` (0: they do not).
    fn bn_batches_run<B: Backend, M: burn::module::Module<B>>(&self, model: &M) -> usize {
        if parts::reestimates(&self.config, model) {
            BN_REESTIMATION_BATCHES
        } else {
            0
        }
    }

    /// The model (from [`Recipe::prepare`], on the inner backend) as the `Learner`'s model: on
    /// the autodiff backend in a [`QatStep`] that ticks the hook (the per-step anneal), ties
    /// shared parameters and, with `config.clip` in [`ClipDomain::Wq`], clips the gradient norm
    /// over `∂ℓ/∂ŵ` (with [`ClipDomain::W`], clip in the user's optimizer instead).
    pub fn step<B, M>(&self, model: M) -> QatStep<B, M::TrainModule>
    where
        B: AutodiffBackend,
        M: HasAutodiffModule<B>,
    {
        let step = QatStep::new(M::TrainModule::from_inner(model)).with_hook(self.hook());
        match (self.config.clip, self.config.clip_in) {
            (Some(max_norm), ClipDomain::Wq) => step.with_clip_in_wq(max_norm),
            _ => step,
        }
    }

    /// The user's optimizer with the quantizer scales in their own learning-rate group
    /// (`config.quant_lr_mult` × the base rate, `config.quant_lr_group`).
    pub fn optimizer<O>(&self, inner: O) -> GroupLr<O, QuantizerScales> {
        GroupLr::new(
            inner,
            QuantizerScales(self.config.quant_lr_group),
            self.config.quant_lr_mult,
        )
    }

    /// The learning-rate schedule: `config`'s main-phase rate ([`QatConfig::main_lr`]) and
    /// schedule over the run.
    pub fn lr(&self) -> RunLr {
        RunLr::new(
            self.config.main_lr(),
            self.config.lr_schedule,
            self.config.epochs,
            self.steps_per_epoch,
        )
    }

    /// `training` for the recipe's run: `config.epochs` epochs (the length the anneal and the
    /// learning-rate schedule were planned for), the recipe's hook as its early-stopping strategy
    /// (it raises epoch-wise schedules and ends the anneal) and the two temperatures as training
    /// metrics (the temperature each step ran at).
    pub fn attach<LC>(&self, training: SupervisedTraining<LC>) -> SupervisedTraining<LC>
    where
        LC: LearningComponentsTypes,
        <<LC::TrainingModel as TrainStep>::Output as ItemLazy>::ItemSync: Adaptor<()>,
    {
        training
            .metric_train_numeric(TemperatureMetric::new(
                "Weight temperature",
                &self.temps.weights,
            ))
            .metric_train_numeric(TemperatureMetric::new("Act temperature", &self.temps.acts))
            .early_stopping(self.hook())
            .num_epochs(self.config.epochs)
    }

    /// [`parts::finish`] over the same batch-norm batches as [`Recipe::prepare`]: the last step's
    /// temperatures, statistics for the hard network, quantizers settled. Give it the trained
    /// model on the inner backend (`trained.model.into_model()`).
    pub fn finish<B, M, I>(
        &self,
        model: M,
        dataset: &impl Dataset<I>,
        batcher: &impl Batcher<B, I, <M::TrainModule as InferenceStep>::Input>,
        device: &B::Device,
    ) -> (M, Finished)
    where
        B: QatBackend,
        M: QatModel<B::InnerBackend> + HasAutodiffModule<B>,
        M::TrainModule: QatModel<B> + InferenceStep,
    {
        let steps = (
            self.hook.steps_ticked(),
            self.config.epochs * self.steps_per_epoch,
        );
        let batch_norm_batches = self.bn_batches_run(&model);
        let bn = self.bn_batches(dataset, batcher, device);
        let model = parts::finish::<B, M, _, _>(
            model,
            &self.config,
            &self.hook,
            Pass::new(bn, |m: &M::TrainModule, batch| drop(m.step(batch))),
        );
        let finished = Finished {
            steps,
            last_temperatures: (self.temps.weights.get(), self.temps.acts.get()),
            batch_norm_batches,
        };
        (model, finished)
    }
}
