//! Training and evaluating an SSD with the recipe (feature `train`): batches of augmented
//! images with their prior targets ([`DetectBatcher`]), the multibox loss ([`multibox_loss`]),
//! the burn-train steps ([`DetectStep`]), the VOC mAP as a burn-train metric ([`MapMetric`]),
//! decoding and NMS ([`detections`]), and the recipe's phases for a detector
//! ([`DetectQat::run`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module, Param};
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, LossMetric, Metric, MetricAttributes, MetricMetadata, MetricName,
    Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim, SupervisedTraining, TrainOutput,
    TrainStep,
};
use quantnet_burn::train::{GroupLr, RunLr, TemperatureHook, TemperatureMetric};
use quantnet_burn::{QatBackend, QuantBackend, QuantMode};
use serde::{Deserialize, Serialize};

use super::boxes::{Prior, Target, decode, hard_negatives, nms};
use super::data::{DetectItem, DetectSet};
use super::map::{Detection, GroundTruth, Interpolation, MapReport, mean_average_precision};
use super::ssd::{Ssd, SsdKind};
use crate::error::{Error, Result};
use crate::models::{ImageModel, Model, QatModel};
use crate::qat::{ClipDomain, QatConfig, Renderers, TrainPhase};
use crate::quantize::{self, Temperatures};
use crate::train::{Pass, QatStep, QuantizerScales};

/// Batches of training samples the detector recipe re-estimates batch-norm statistics with
/// (before calibration and before the hard evaluation): fewer than the classifiers'
/// [`quantize::BN_REESTIMATION_BATCHES`] (200), as a detector's pass costs tens of a small
/// classifier's; with Burn's momentum 0.1, 0.9⁵⁰ ≈ 0.5 % of the old statistics remain.
pub const BN_BATCHES: usize = 50;

/// A detector the recipe trains: an [`ImageModel`] (its `forward` is the raw outputs, for
/// calibration) whose heads give box offsets and class scores for the default boxes of an
/// [`SsdKind`].
pub trait Detector<B: Backend>: ImageModel<B> {
    /// The SSD it is; `None` for a model that is not a detector ([`Model`] of a classifier).
    fn kind(&self) -> Option<SsdKind>;

    /// Object classes it scores (without the background; 0 for a classifier).
    fn classes(&self) -> usize;

    /// Box offsets `[batch, priors, 4]` and class scores `[batch, priors, classes + 1]`.
    ///
    /// # Panics
    /// When [`Detector::kind`] is `None`.
    fn heads(&self, images: Tensor<B, 4>) -> (Tensor<B, 3>, Tensor<B, 3>)
    where
        B: QuantBackend;
}

impl<B: Backend> QatModel<B> for Ssd<B> {
    fn slots(&mut self) -> crate::models::Slots<'_, B> {
        let mut slots = crate::models::Slots::new();
        Ssd::slots(self, &mut slots);
        slots
    }

    fn float_layers(&self, _n: usize) -> Vec<usize> {
        Ssd::float_layers(self)
    }
}

impl<B: Backend> ImageModel<B> for Ssd<B> {
    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: QuantBackend,
    {
        Ssd::forward(self, images)
    }
}

impl<B: Backend> Detector<B> for Ssd<B> {
    fn kind(&self) -> Option<SsdKind> {
        Some(Ssd::kind(self))
    }

    fn classes(&self) -> usize {
        Ssd::classes(self)
    }

    fn heads(&self, images: Tensor<B, 4>) -> (Tensor<B, 3>, Tensor<B, 3>)
    where
        B: QuantBackend,
    {
        Ssd::heads(self, images)
    }
}

impl<B: Backend> Detector<B> for Model<B> {
    fn kind(&self) -> Option<SsdKind> {
        match self {
            Model::Ssd(m) => Some(m.kind()),
            _ => None,
        }
    }

    fn classes(&self) -> usize {
        match self {
            Model::Ssd(m) => m.classes(),
            _ => 0,
        }
    }

    fn heads(&self, images: Tensor<B, 4>) -> (Tensor<B, 3>, Tensor<B, 3>)
    where
        B: QuantBackend,
    {
        match self {
            Model::Ssd(m) => m.heads(images),
            _ => panic!("heads() of a classifier: check Detector::kind first"),
        }
    }
}

/// A [`Detector`] on the inner backend of `B` whose autodiff twin is one too.
pub trait DetectTrainModel<B: QatBackend>:
    Detector<B::InnerBackend> + burn::module::HasAutodiffModule<B, TrainModule: Detector<B>>
{
}

impl<B: QatBackend, M> DetectTrainModel<B> for M
where
    M: Detector<B::InnerBackend> + burn::module::HasAutodiffModule<B>,
    M::TrainModule: Detector<B>,
{
}

/// A batch: the input images, each prior's target, and the boxes for the mAP.
#[derive(Clone, Debug)]
pub struct DetectBatch<B: Backend> {
    /// `[batch, 3, S, S]`.
    pub images: Tensor<B, 4>,
    /// Regression targets `[batch, priors, 4]` (0 for background priors).
    pub offsets: Tensor<B, 3>,
    /// Class labels `[batch, priors]` (0: background, `c + 1`: class `c`).
    pub labels: Tensor<B, 2, Int>,
    /// The same targets on the host (hard-negative mining).
    pub targets: Vec<Vec<Target>>,
    /// The boxes of the batch's images (image fractions), `image` being the set's index.
    pub truths: Vec<GroundTruth>,
    /// The set's index of each image.
    pub ids: Vec<usize>,
}

/// Stacks [`DetectItem`]s into a [`DetectBatch`], matching each image's boxes to `priors`.
#[derive(Clone, Debug)]
pub struct DetectBatcher {
    /// The detector's default boxes.
    pub priors: Arc<Vec<Prior>>,
}

impl<B: Backend> Batcher<B, DetectItem, DetectBatch<B>> for DetectBatcher {
    fn batch(&self, items: Vec<DetectItem>, device: &B::Device) -> DetectBatch<B> {
        let n = items.len();
        let p = self.priors.len();
        let side = items.first().map_or(0, |i| i.side);
        let mut pixels = Vec::with_capacity(n * 3 * side * side);
        let mut offsets = vec![0.0f32; n * p * 4];
        let mut labels = vec![0i64; n * p];
        let mut targets = Vec::with_capacity(n);
        let mut truths = Vec::new();
        let mut ids = Vec::with_capacity(n);
        for (b, item) in items.into_iter().enumerate() {
            pixels.extend_from_slice(&item.planes);
            let t = item.targets(&self.priors);
            for (k, target) in t.iter().enumerate() {
                if let Target::Object {
                    label, offsets: o, ..
                } = target
                {
                    labels[b * p + k] = *label as i64;
                    offsets[(b * p + k) * 4..(b * p + k + 1) * 4].copy_from_slice(o);
                }
            }
            targets.push(t);
            truths.extend(
                item.boxes
                    .iter()
                    .map(|&(bbox, class, difficult)| GroundTruth {
                        image: item.index,
                        class,
                        bbox,
                        difficult,
                    }),
            );
            ids.push(item.index);
        }
        DetectBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, 3, side, side]), device),
            offsets: Tensor::from_data(TensorData::new(offsets, [n, p, 4]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n, p]), device),
            targets,
            truths,
            ids,
        }
    }
}

/// The images of a [`DetectSet`] as Burn dataset items: each read `repeats` times per epoch,
/// with SSD's augmentation when `seed` is given (every read draws anew: a draw counter mixed
/// with the seed, so one loader thread reads the same sequence in every run).
pub struct DetectReads {
    set: DetectSet,
    side: usize,
    seed: Option<u64>,
    repeats: usize,
    draws: AtomicU64,
}

impl DetectReads {
    /// The reads of `set` at `side × side`.
    pub fn new(set: DetectSet, side: usize, seed: Option<u64>, repeats: usize) -> Self {
        Self {
            set,
            side,
            seed,
            repeats: repeats.max(1),
            draws: AtomicU64::new(0),
        }
    }
}

impl Dataset<DetectItem> for DetectReads {
    fn get(&self, index: usize) -> Option<DetectItem> {
        let i = index % self.set.len().max(1);
        let draw = self.seed.map(|seed| {
            crate::data::splitmix64(
                seed ^ self.draws.fetch_add(1, Ordering::Relaxed).rotate_left(17),
            )
        });
        match self.set.read(i, self.side, draw) {
            Ok(item) => Some(item),
            // The loader thread cannot return an error; the set was read once before training
            // (`DetectQat::run` checks every image).
            Err(e) => panic!("{e}"),
        }
    }

    fn len(&self) -> usize {
        self.set.len() * self.repeats
    }
}

/// SSD's multibox loss: smooth-L1 on the positive priors' offsets plus cross-entropy on the
/// positives and the hardest negatives (3 per positive, by their background loss), divided by
/// the number of positives (at least 1).
pub fn multibox_loss<B: Backend>(
    loc: Tensor<B, 3>,
    conf: Tensor<B, 3>,
    batch: &DetectBatch<B>,
) -> Tensor<B, 1> {
    let [n, p, _] = conf.dims();
    let device = conf.device();
    let ce = log_softmax(conf, 2)
        .gather(2, batch.labels.clone().unsqueeze_dim::<3>(2))
        .reshape([n, p])
        .neg();
    let values: Vec<f32> = ce
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_else(|_| vec![0.0; n * p]);
    let mut selected = vec![0.0f32; n * p];
    let mut positives = 0usize;
    for (b, targets) in batch.targets.iter().enumerate() {
        let negatives = hard_negatives(targets, &values[b * p..(b + 1) * p], 3);
        for (k, t) in targets.iter().enumerate() {
            let positive = matches!(t, Target::Object { .. });
            positives += usize::from(positive);
            if positive || negatives[k] {
                selected[b * p + k] = 1.0;
            }
        }
    }
    let selected = Tensor::<B, 2>::from_data(TensorData::new(selected, [n, p]), &device);
    let conf_loss = (ce * selected).sum();
    let positive = batch.labels.clone().greater_elem(0).float();
    let diff = (loc - batch.offsets.clone()).abs();
    let small = diff.clone().clamp_max(1.0);
    // Smooth L1: ½d² below 1, |d| − ½ above (½m² + |d| − m with m = min(|d|, 1)).
    let smooth = small.clone() * small.clone() * 0.5 + diff - small;
    let loc_loss = (smooth.sum_dim(2).reshape([n, p]) * positive).sum();
    (loc_loss + conf_loss) / positives.max(1) as f64
}

/// How detections are made from the heads: SSD's test settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectParams {
    /// Scores below this are dropped (SSD: 0.01).
    pub min_score: f32,
    /// NMS IoU threshold (SSD: 0.45).
    pub nms: f32,
    /// Boxes kept per class before NMS and per image after (SSD: 200).
    pub top_k: usize,
}

impl Default for DetectParams {
    fn default() -> Self {
        Self {
            min_score: 0.01,
            nms: 0.45,
            top_k: 200,
        }
    }
}

/// Decodes the heads' outputs of a batch into detections (image fractions), per image: for
/// each class, the boxes above `min_score` (at most `top_k`, best first) through NMS; then the
/// image's best `top_k`. `image` is taken from `ids`.
pub fn detections<B: Backend>(
    loc: Tensor<B, 3>,
    conf: Tensor<B, 3>,
    priors: &[Prior],
    ids: &[usize],
    params: DetectParams,
) -> Vec<Detection> {
    let [n, p, k] = conf.dims();
    let read = |t: TensorData| t.convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let scores = read(softmax(conf, 2).into_data());
    let offsets = read(loc.into_data());
    if scores.len() != n * p * k || offsets.len() != n * p * 4 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (b, &id) in ids.iter().enumerate().take(n) {
        let boxes: Vec<_> = (0..p)
            .map(|j| {
                let o = &offsets[(b * p + j) * 4..(b * p + j + 1) * 4];
                decode(&[o[0], o[1], o[2], o[3]], &priors[j])
            })
            .collect();
        let mut image = Vec::new();
        for class in 1..k {
            let mut candidates: Vec<usize> = (0..p)
                .filter(|&j| scores[(b * p + j) * k + class] > params.min_score)
                .collect();
            candidates.sort_by(|&x, &y| {
                let (sx, sy) = (
                    scores[(b * p + x) * k + class],
                    scores[(b * p + y) * k + class],
                );
                sy.total_cmp(&sx).then(x.cmp(&y))
            });
            candidates.truncate(params.top_k);
            let cand_boxes: Vec<_> = candidates.iter().map(|&j| boxes[j]).collect();
            let cand_scores: Vec<f32> = candidates
                .iter()
                .map(|&j| scores[(b * p + j) * k + class])
                .collect();
            for kept in nms(&cand_boxes, &cand_scores, params.nms, params.top_k) {
                image.push(Detection {
                    image: id,
                    class: class - 1,
                    score: cand_scores[kept],
                    bbox: cand_boxes[kept].map(|v| v.clamp(0.0, 1.0)),
                });
            }
        }
        image.sort_by(|a, b| b.score.total_cmp(&a.score));
        image.truncate(params.top_k);
        out.extend(image);
    }
    out
}

/// The detections and boxes of one validation batch, for [`MapMetric`].
#[derive(Clone, Debug, Default)]
pub struct MapInput {
    /// Detections (image fractions).
    pub detections: Vec<Detection>,
    /// Ground truth.
    pub truths: Vec<GroundTruth>,
    /// Object classes.
    pub classes: usize,
}

/// A step's output: the loss, and on validation the detections.
pub struct DetectOutput<B: Backend> {
    /// The multibox loss.
    pub loss: Tensor<B, 1>,
    /// Validation only.
    pub map: Option<MapInput>,
}

impl<B: Backend> ItemLazy for DetectOutput<B> {
    type ItemSync = Self;

    fn sync(self) -> Self {
        self
    }
}

impl<B: Backend> Adaptor<LossInput<B>> for DetectOutput<B> {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(self.loss.clone())
    }
}

impl<B: Backend> Adaptor<MapInput> for DetectOutput<B> {
    fn adapt(&self) -> MapInput {
        self.map.clone().unwrap_or_default()
    }
}

/// VOC07 mAP (%, IoU 0.5, 11-point) of a validation epoch: the detections and boxes of every
/// batch are gathered, and the mAP is computed once, at the epoch's last batch (recomputing it at
/// every batch would cost the square of the batches).
///
/// burn-train's epoch value of a numeric metric is the count-weighted mean of its per-batch
/// entries: the earlier batches' entries have count 0, the last one the mAP with count 1, so the
/// epoch value is the mAP of the whole epoch.
#[derive(Clone)]
pub struct MapMetric {
    name: MetricName,
    detections: Vec<Detection>,
    truths: Vec<GroundTruth>,
    current: f64,
}

impl MapMetric {
    /// The metric ("mAP").
    pub fn new() -> Self {
        Self {
            name: Arc::new("mAP".to_string()),
            detections: Vec::new(),
            truths: Vec::new(),
            current: 0.0,
        }
    }

    /// Adds a batch; at the epoch's `last` batch, computes the mAP. Returns the entry's value
    /// and count (see the type's docs).
    fn push(&mut self, item: &MapInput, last: bool) -> (f64, usize) {
        self.detections.extend_from_slice(&item.detections);
        self.truths.extend_from_slice(&item.truths);
        if !last {
            return (0.0, 0);
        }
        self.current = 100.0
            * mean_average_precision(
                &self.detections,
                &self.truths,
                item.classes,
                0.5,
                Interpolation::ElevenPoint,
            )
            .map;
        (self.current, 1)
    }
}

impl Default for MapMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for MapMetric {
    type Input = MapInput;

    fn update(&mut self, item: &MapInput, metadata: &MetricMetadata) -> SerializedEntry {
        let progress = &metadata.progress;
        let (value, count) = self.push(item, progress.items_processed >= progress.items_total);
        let formatted = if count > 0 {
            format!("{value:.2} %")
        } else {
            format!(
                "at the epoch's end ({}/{} images)",
                progress.items_processed, progress.items_total
            )
        };
        let serialized = NumericEntry::Aggregated {
            aggregated_value: value,
            count,
        }
        .serialize();
        SerializedEntry::new(formatted, serialized)
    }

    fn clear(&mut self) {
        self.detections.clear();
        self.truths.clear();
        self.current = 0.0;
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("%".into()),
            higher_is_better: true,
        }
        .into()
    }
}

impl Numeric for MapMetric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Value(self.current)
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Value(self.current)
    }
}

/// A detector's own training and validation steps (the multibox loss; detections and their
/// mAP inputs): the task's part of what burn-train trains. The recipe's duties around the step
/// (the per-step tick, shared-parameter ties, clipping in the `ŵ` domain) are
/// [`crate::train::QatStep`]'s, which wraps it as it wraps any user's model.
#[derive(Module, Debug)]
pub struct DetectStep<B: Backend, M: Module<B>> {
    model: M,
    /// Always `None`: Burn's module derive needs a field that names the backend.
    marker: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    priors: Arc<Vec<Prior>>,
    #[module(skip)]
    classes: usize,
}

impl<B: Backend, M: Module<B>> DetectStep<B, M> {
    /// Wraps `model` for `classes` object classes with `priors`.
    pub fn new(model: M, priors: Arc<Vec<Prior>>, classes: usize) -> Self {
        Self {
            model,
            marker: None,
            priors,
            classes,
        }
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model.
    pub fn into_model(self) -> M {
        self.model
    }
}

impl<B, M> TrainStep for DetectStep<B, M>
where
    B: AutodiffBackend + QuantBackend,
    M: Detector<B> + AutodiffModule<B>,
    M::InnerModule: Detector<B::InnerBackend>,
{
    type Input = DetectBatch<B>;
    type Output = DetectOutput<B>;

    fn step(&self, batch: DetectBatch<B>) -> TrainOutput<DetectOutput<B>> {
        let (loc, conf) = self.model.heads(batch.images.clone());
        let loss = multibox_loss(loc, conf, &batch);
        let grads = loss.backward();
        TrainOutput::new(self, grads, DetectOutput { loss, map: None })
    }
}

impl<B: QuantBackend, M: Detector<B>> InferenceStep for DetectStep<B, M> {
    type Input = DetectBatch<B>;
    type Output = DetectOutput<B>;

    fn step(&self, batch: DetectBatch<B>) -> DetectOutput<B> {
        let (loc, conf) = self.model.heads(batch.images.clone());
        let loss = multibox_loss(loc.clone(), conf.clone(), &batch);
        let detections = detections(loc, conf, &self.priors, &batch.ids, DetectParams::default());
        DetectOutput {
            loss,
            map: Some(MapInput {
                detections,
                truths: batch.truths,
                classes: self.classes,
            }),
        }
    }
}

impl<B: Backend, M: QatModel<B>> QatModel<B> for DetectStep<B, M> {
    fn slots(&mut self) -> crate::models::Slots<'_, B> {
        self.model.slots()
    }

    fn float_layers(&self, n: usize) -> Vec<usize> {
        self.model.float_layers(n)
    }
}

/// The test mAP of a detector: VOC07's 11-point and the all-point interpolation, at IoU 0.5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapScores {
    /// 11-point mAP (%): the VOC2007 metric, the paper's.
    pub map: f64,
    /// All-point mAP (%), VOC2010 onwards.
    pub map_all_points: f64,
    /// 11-point AP (%) of each class (`None`: no box of the class in the test set).
    pub per_class: Vec<Option<f64>>,
}

impl MapScores {
    fn from_reports(eleven: MapReport, all: MapReport) -> Self {
        Self {
            map: 100.0 * eleven.map,
            map_all_points: 100.0 * all.map,
            per_class: eleven
                .per_class
                .iter()
                .map(|a| a.map(|a| 100.0 * a))
                .collect(),
        }
    }
}

/// Detections of every image of `set` (whole image resized to the detector's input), in
/// batches of `batch_size`; `image` is the index in `set`.
///
/// # Errors
/// An image that cannot be read; [`Error::Config`] for a model that is not a detector.
pub fn detect_set<B: QuantBackend, M: Detector<B>>(
    model: &M,
    set: &DetectSet,
    batch_size: usize,
    params: DetectParams,
    device: &B::Device,
) -> Result<Vec<Detection>> {
    let kind = model.kind().ok_or_else(not_a_detector)?;
    let priors = Arc::new(kind.priors());
    let batcher = DetectBatcher {
        priors: priors.clone(),
    };
    let mut out = Vec::new();
    let ids: Vec<usize> = (0..set.len()).collect();
    for chunk in ids.chunks(batch_size.max(1)) {
        let items = chunk
            .iter()
            .map(|&i| set.read(i, kind.image_size(), None))
            .collect::<Result<Vec<_>>>()?;
        let batch: DetectBatch<B> = batcher.batch(items, device);
        let (loc, conf) = model.heads(batch.images);
        out.extend(detections(loc, conf, &priors, &batch.ids, params));
    }
    Ok(out)
}

/// [`MapScores`] of `model` on `set`.
///
/// # Errors
/// As [`detect_set`].
pub fn evaluate_map<B: QuantBackend, M: Detector<B>>(
    model: &M,
    set: &DetectSet,
    batch_size: usize,
    device: &B::Device,
) -> Result<MapScores> {
    let detections = detect_set(model, set, batch_size, DetectParams::default(), device)?;
    let truths: Vec<GroundTruth> = (0..set.len()).flat_map(|i| set.truths(i, i)).collect();
    let classes = set.classes.len();
    Ok(MapScores::from_reports(
        mean_average_precision(
            &detections,
            &truths,
            classes,
            0.5,
            Interpolation::ElevenPoint,
        ),
        mean_average_precision(&detections, &truths, classes, 0.5, Interpolation::AllPoints),
    ))
}

fn not_a_detector() -> Error {
    Error::Config {
        field: "model",
        reason: "is not a detector (ssd-small, ssd300)".into(),
    }
}

/// What [`DetectQat::run`] measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectReport {
    /// Training and test images, and the test set's boxes.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Boxes in the test images.
    pub test_boxes: usize,
    /// The pretrained full-precision detector's test mAP (quantized runs that pretrained).
    pub map_fp: Option<MapScores>,
    /// The detector's test mAP, hard-quantized (its mAP).
    pub map_hard: Option<MapScores>,
    /// With the soft quantizers at the final temperatures (a diagnostic).
    pub map_soft: Option<MapScores>,
    /// The pretrained full-precision detector's mAP on the training samples (whole, not
    /// augmented): how well it fits what it saw.
    pub train_map_fp: Option<MapScores>,
    /// The detector's mAP on the training samples, hard-quantized.
    pub train_map_hard: Option<MapScores>,
    /// Quantized weight layers and calibrated activation slots.
    pub quantized: (usize, usize),
    /// Final weight and activation temperatures (quantized runs).
    pub temperatures: (Option<f32>, Option<f32>),
    /// Training loss of each main-phase epoch, as burn-train logged it.
    pub train_loss: Vec<f64>,
    /// Validation mAP (%) of each main-phase epoch (hard-quantized).
    pub valid_map: Vec<f64>,
    /// Wall seconds of each main-phase epoch (validation included).
    pub seconds_per_epoch: Vec<f64>,
}

/// The recipe for a detector: [`crate::qat::Qat`]'s phases (full-precision pretraining,
/// quantization, calibration, training with the temperature hook, batch norm for the hard
/// network, hard evaluation) with SSD's data, loss and mAP.
///
/// From [`QatConfig`] it takes the policy, the epochs, `batch_size`, the learning rates and
/// schedule, the optimizer, weight decay, temperatures, calibration images (and whether they
/// see soft weights), batch-norm re-estimation, `quant_lr_mult` and `quant_lr_group`, `clip` and
/// `clip_in` (the `ŵ` domain by [`crate::train::QatStep`], as for classifiers, when weights are
/// quantized) and the seed. Its quantize step and its end are [`crate::train::prepare`] and
/// [`crate::train::finish`]; several devices train as classifiers do ([`DetectQat::run_on`]), and
/// `phase` [`TrainPhase::Acts`] trains only the activation quantizers. Not (yet) for detectors:
/// resuming.
#[derive(Clone, Debug)]
pub struct DetectQat {
    config: QatConfig,
    dir: PathBuf,
    repeats: usize,
    quiet: bool,
    renderers: Option<Renderers>,
}

impl DetectQat {
    /// The recipe `config`, writing into `dir`.
    pub fn new(config: QatConfig, dir: impl Into<PathBuf>) -> Self {
        Self {
            config,
            dir: dir.into(),
            repeats: 1,
            quiet: false,
            renderers: None,
        }
    }

    /// Each training phase's progress goes to the renderer `renderers` makes for it (see
    /// [`crate::qat::Qat::renderer`]).
    pub fn renderer(mut self, renderers: Renderers) -> Self {
        self.renderers = Some(renderers);
        self
    }

    /// Each training image is read (with a new augmentation draw) `repeats` times per epoch:
    /// a set of a few large images gives enough crops per epoch.
    pub fn repeats(mut self, repeats: usize) -> Self {
        self.repeats = repeats.max(1);
        self
    }

    /// No progress lines.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    fn say(&self, line: std::fmt::Arguments<'_>) {
        if !self.quiet {
            crate::qat::PlainRenderer::say(line);
        }
    }

    /// Pretrains, quantizes, calibrates and trains `model` on `train`, evaluating on `test`;
    /// writes `model.mpk` (hard network's statistics, settled quantizers), `init.mpk` and
    /// burn-train's logs into the directory.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config, a model that is not a detector, or a data set whose
    /// classes are not the model's; an image that cannot be read; a layer that cannot be
    /// quantized; writing the files.
    pub fn run<B, M>(
        &self,
        model: M,
        train: &DetectSet,
        test: &DetectSet,
        device: &B::Device,
    ) -> Result<(M, DetectReport)>
    where
        B: QatBackend,
        M: DetectTrainModel<B>,
    {
        self.run_on::<B, M>(model, train, test, std::slice::from_ref(device))
    }

    /// [`DetectQat::run`] on several devices, as classifiers train
    /// ([`crate::qat::Qat::run_on`]): each runs an equal share of every step's images, the
    /// optimizer steps once with their mean gradient (scaled by `1/n` in the training step) and
    /// the temperature moves once per step; quantization, batch norm and evaluation run on the
    /// first device. The multibox loss is normalised by each device's positive boxes, so `n`
    /// devices are not exactly one device with the whole batch.
    ///
    /// # Errors
    /// As [`DetectQat::run`]; [`Error::Config`] for no device or a batch size that does not split
    /// evenly.
    pub fn run_on<B, M>(
        &self,
        model: M,
        train: &DetectSet,
        test: &DetectSet,
        devices: &[B::Device],
    ) -> Result<(M, DetectReport)>
    where
        B: QatBackend,
        M: DetectTrainModel<B>,
    {
        let cfg = &self.config;
        cfg.validate()?;
        let device = crate::qat::split_over(cfg, devices)?;
        let n = devices.len();
        let kind = model.kind().ok_or_else(not_a_detector)?;
        for set in [train, test] {
            if set.classes.len() != model.classes() {
                return Err(Error::Config {
                    field: "data",
                    reason: format!(
                        "has {} classes ({}); the detector scores {}",
                        set.classes.len(),
                        set.classes.join(", "),
                        model.classes()
                    ),
                });
            }
        }
        if train.is_empty() || test.is_empty() {
            return Err(Error::Config {
                field: "data",
                reason: "needs training and test images".into(),
            });
        }
        for set in [train, test] {
            // Every image decodes (the loader's threads cannot return an error).
            for i in 0..set.images.len() {
                set.pixels(i)?;
            }
        }
        let side = kind.image_size();
        let priors = Arc::new(kind.priors());
        let policy = &cfg.policy;
        let quantized = !policy.is_float();
        let temps = Temperatures::default();
        let steps = steps_on(train.len() * self.repeats, cfg.batch_size, n);
        let mut report = DetectReport {
            train_images: train.len(),
            test_images: test.len(),
            test_boxes: test.boxes(),
            ..DetectReport::default()
        };
        let eval_batch = cfg.batch_size;
        let mut model = model;
        quantize::attach(&mut model, &temps);
        if quantized && cfg.pretrain_epochs > 0 {
            self.say(format_args!(
                "full-precision pretraining: {} epoch(s)",
                cfg.pretrain_epochs
            ));
            let phase = Phase {
                name: "pretrain",
                lr: cfg.pretrain_lr,
                dir: self.dir.join("pretrain"),
                epochs: cfg.pretrain_epochs,
                hook: TemperatureHook::new(),
                acts_only: false,
            };
            let (trained, _) =
                self.fit::<B, M>(model, phase, train, test, &priors, &temps, devices)?;
            model = trained;
            let fp = evaluate_map(&model, test, eval_batch, device)?;
            let fit = evaluate_map(&model, train, eval_batch, device)?;
            self.say(format_args!(
                "full precision: test mAP {:.2}% (training samples: {:.2}%)",
                fp.map, fit.map
            ));
            report.map_fp = Some(fp);
            report.train_map_fp = Some(fit);
        }
        // Quantize (`train::prepare`): weights from the trained weights, batch norm for them
        // (soft, at the first step's temperature), activations calibrated on the training
        // images.
        let hook = cfg.hook(&temps).over(cfg.epochs, steps);
        let sample = crate::data::sample_indices(train.len(), cfg.calibration_images, cfg.seed);
        // Batches of whole training samples, read as the passes take them (a failed read ends
        // the stream and is returned after the pass).
        let failed: std::cell::RefCell<Option<Error>> = std::cell::RefCell::new(None);
        let reads = |indices: Vec<usize>| {
            let batcher = DetectBatcher {
                priors: priors.clone(),
            };
            let failed = &failed;
            let batches: Vec<Vec<usize>> = indices
                .chunks(cfg.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
            batches.into_iter().map_while(move |c| {
                let items = c
                    .iter()
                    .map(|&i| train.read(i, side, None))
                    .collect::<Result<Vec<_>>>();
                match items {
                    Ok(items) => {
                        let batch: DetectBatch<B::InnerBackend> = batcher.batch(items, device);
                        Some(batch.images)
                    }
                    Err(e) => {
                        *failed.borrow_mut() = Some(e);
                        None
                    }
                }
            })
        };
        let check = || failed.borrow_mut().take().map_or(Ok(()), Err);
        // The batch-norm passes' samples: the training samples in turn.
        let bn_order: Vec<usize> = (0..BN_BATCHES * cfg.batch_size)
            .map(|k| k % train.len())
            .collect();
        let bn_pass = |order: Vec<usize>| {
            Pass::new(
                reads(order),
                |m: &M::TrainModule, x: Tensor<B::InnerBackend, 4>| {
                    drop(m.forward(Tensor::from_inner(x).detach()));
                },
            )
        };
        let calibration = Pass::new(reads(sample), |m: &M, x: Tensor<B::InnerBackend, 4>| {
            let n = x.dims()[0];
            drop(m.forward(x));
            n
        });
        let prepared = crate::train::prepare::<B, M, _, _, _, _>(
            model,
            cfg,
            &temps,
            &hook,
            device,
            calibration,
            bn_pass(bn_order.clone()),
        );
        check()?;
        let (model, (w, a)) = prepared?;
        report.quantized = (w, a);
        if quantized {
            self.say(format_args!(
                "quantized {w} weight layer(s), calibrated {a} activation quantizer(s)"
            ));
            let mut init = model.clone();
            quantize::settle(&mut init);
            save(&init, &self.dir, "init")?;
        }
        let hook = cfg.hook(&temps).over(cfg.epochs, steps).ticked_by(n);
        let phase = Phase {
            name: if quantized { "quantized" } else { "train" },
            lr: cfg.main_lr(),
            dir: self.dir.join("train"),
            epochs: cfg.epochs,
            hook,
            acts_only: cfg.phase == TrainPhase::Acts,
        };
        let main_dir = phase.dir.clone();
        let (mut model, seconds) =
            self.fit::<B, M>(model, phase, train, test, &priors, &temps, devices)?;
        quantize::attach(&mut model, &temps);
        // The last step's temperatures, batch norm for the hard network, quantizers settled
        // (`train::finish`).
        let last = cfg.hook(&temps).over(cfg.epochs, 1);
        let mut model = crate::train::finish::<B, M, _, _>(model, cfg, &last, bn_pass(bn_order));
        check()?;
        save(&model, &self.dir, "model")?;
        report.seconds_per_epoch = seconds;
        report.train_loss = epoch_values(&main_dir.join("train"), "Loss", cfg.epochs);
        report.valid_map = epoch_values(&main_dir.join("valid"), "mAP", cfg.epochs);
        report.map_hard = Some(evaluate_map(&model, test, eval_batch, device)?);
        report.train_map_hard = Some(evaluate_map(&model, train, eval_batch, device)?);
        if quantized {
            quantize::set_mode(&mut model, QuantMode::Soft);
            report.map_soft = Some(evaluate_map(&model, test, eval_batch, device)?);
            quantize::set_mode(&mut model, QuantMode::Auto);
        }
        report.temperatures = (
            policy.weights.as_ref().map(|_| temps.weights.get()),
            policy.acts.as_ref().map(|_| temps.acts.get()),
        );
        Ok((model, report))
    }

    /// One burn-train run of a phase.
    #[allow(clippy::too_many_arguments)]
    fn fit<B, M>(
        &self,
        model: M,
        phase: Phase<'_>,
        train: &DetectSet,
        test: &DetectSet,
        priors: &Arc<Vec<Prior>>,
        temps: &Temperatures,
        devices: &[B::Device],
    ) -> Result<(M, Vec<f64>)>
    where
        B: QatBackend,
        M: DetectTrainModel<B>,
    {
        let cfg = &self.config;
        let n = devices.len().max(1);
        let kind = model.kind().ok_or_else(not_a_detector)?;
        let side = kind.image_size();
        let dir = phase
            .dir
            .to_str()
            .ok_or_else(|| Error::Invalid("the run directory's path is not UTF-8".into()))?
            .to_string();
        let classes = train.classes.len();
        let batcher = DetectBatcher {
            priors: priors.clone(),
        };
        // One loader thread: the augmentation draws then come in the same order in every run.
        let train_loader: Arc<dyn DataLoader<B, DetectBatch<B>>> =
            DataLoaderBuilder::new(batcher.clone())
                .batch_size(cfg.batch_size / n)
                .shuffle(cfg.seed)
                .num_workers(1)
                .build(DetectReads::new(
                    train.clone(),
                    side,
                    Some(cfg.seed),
                    self.repeats,
                ));
        let valid_loader: Arc<dyn DataLoader<B::InnerBackend, DetectBatch<B::InnerBackend>>> =
            DataLoaderBuilder::new(batcher)
                .batch_size(cfg.batch_size)
                .num_workers(1)
                .build(DetectReads::new(test.clone(), side, None, 1));
        let clock = crate::qat::fit::EpochClock::new();
        phase.hook.start_at(0);
        // With quantized weights the norm is taken over ∂ℓ/∂ŵ by the training step (as for
        // classifiers); otherwise the two domains coincide and the optimizer clips.
        let weights_quantized = crate::stats::layer_stats(&model)?
            .iter()
            .any(|s| s.occupancy.is_some());
        let clip_in_wq = (cfg.clip).filter(|_| cfg.clip_in == ClipDomain::Wq && weights_quantized);
        let clipping = (cfg.clip)
            .filter(|_| clip_in_wq.is_none())
            .map(GradientClippingConfig::Norm);
        let mut model = M::TrainModule::from_inner(model);
        if phase.acts_only {
            let n = quantize::train_only_act_quantizers(&mut model);
            self.say(format_args!(
                "training only the {n} activation quantizer(s); everything else is fixed"
            ));
        }
        let step = DetectStep::new(model, priors.clone(), classes);
        // burn-train sums the devices' gradients; the optimizer gets their mean.
        let mut model = QatStep::new(step)
            .with_hook(phase.hook.clone())
            .with_grad_scale(1.0 / n as f32);
        if let Some(max_norm) = clip_in_wq {
            model = model.with_clip_in_wq(max_norm);
        }
        let steps = steps_on(train.len() * self.repeats, cfg.batch_size, n);
        let strategy = match devices {
            [device] => ExecutionStrategy::single(device.clone()),
            _ => ExecutionStrategy::multi(devices.to_vec(), MultiDeviceOptim::OptimMainDevice),
        };
        macro_rules! launch {
            ($optimizer:expr) => {{
                SupervisedTraining::new(dir.clone(), train_loader.clone(), valid_loader.clone())
                    .metric_train_numeric(LossMetric::<B>::new())
                    .metric_valid_numeric(LossMetric::<B::InnerBackend>::new())
                    .metric_valid_numeric(MapMetric::new())
                    .metric_train_numeric(TemperatureMetric::new(
                        "Weight temperature",
                        &temps.weights,
                    ))
                    .metric_train_numeric(TemperatureMetric::new("Act temperature", &temps.acts))
                    .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
                    .early_stopping(phase.hook.clone().with_early_stopping(clock.clone()))
                    .renderer(Renderers::for_phase(
                        self.renderers.as_ref(),
                        phase.name,
                        self.quiet,
                    ))
                    .num_epochs(phase.epochs)
                    .with_training_strategy(strategy.into())
                    .launch(Learner::new(
                        model,
                        GroupLr::new(
                            $optimizer,
                            QuantizerScales(cfg.quant_lr_group),
                            cfg.quant_lr_mult,
                        ),
                        RunLr::new(phase.lr, cfg.lr_schedule, phase.epochs, steps),
                    ))
                    .model
                    .into_model()
                    .into_model()
            }};
        }
        let trained = crate::qat::fit::with_optimizer!(cfg, clipping, launch);
        Ok((trained, clock.seconds()))
    }
}

/// Optimizer steps per epoch of `len` samples in steps of `batch_size` split over `devices`:
/// burn-train gives each device an equal share of the samples (the last one the remainder)
/// and steps once per batch of each ([`crate::qat::QatData::steps_per_epoch_on`]).
fn steps_on(len: usize, batch_size: usize, devices: usize) -> usize {
    let devices = devices.max(1);
    let per_device = (batch_size / devices).max(1);
    let share = len / devices;
    (len - share * (devices - 1)).div_ceil(per_device)
}

struct Phase<'a> {
    name: &'a str,
    lr: f64,
    dir: PathBuf,
    epochs: usize,
    hook: TemperatureHook,
    /// Train only the activation quantizers.
    acts_only: bool,
}

/// The epoch values of metric `name` from burn-train's logs in `dir` (`epoch-N/NAME.log`, one
/// `value,count` entry per batch: the count-weighted mean), epochs `1..=epochs` that have one.
fn epoch_values(dir: &Path, name: &str, epochs: usize) -> Vec<f64> {
    (1..=epochs)
        .filter_map(|e| {
            let text =
                std::fs::read_to_string(dir.join(format!("epoch-{e}")).join(format!("{name}.log")))
                    .ok()?;
            let (mut sum, mut count) = (0.0, 0.0);
            for line in text.lines() {
                let mut parts = line.split(',');
                let value: f64 = parts.next()?.trim().parse().ok()?;
                let n: f64 = parts
                    .next()
                    .and_then(|c| c.trim().parse().ok())
                    .unwrap_or(1.0);
                sum += value * n;
                count += n;
            }
            (count > 0.0).then(|| sum / count)
        })
        .collect()
}

/// Writes `NAME.mpk` into `dir` (creating it).
fn save<B: Backend, M: Module<B>>(model: &M, dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| crate::qat::write_error(dir, e))?;
    crate::qat::save_model_as(model, dir, name)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type B = Flex;

    fn batch(labels: Vec<i64>, offsets: Vec<f32>, targets: Vec<Target>) -> DetectBatch<B> {
        let device = Default::default();
        let p = labels.len();
        DetectBatch {
            images: Tensor::zeros([1, 3, 1, 1], &device),
            offsets: Tensor::from_data(TensorData::new(offsets, [1, p, 4]), &device),
            labels: Tensor::from_data(TensorData::new(labels, [1, p]), &device),
            targets: vec![targets],
            truths: Vec::new(),
            ids: vec![0],
        }
    }

    #[test]
    fn the_multibox_loss_of_a_hand_made_batch() {
        let device = Default::default();
        // Two priors, one class: prior 0 is the object (label 1, offsets 0), prior 1 background.
        let object = Target::Object {
            truth: 0,
            label: 1,
            offsets: [0.0; 4],
        };
        let b = batch(vec![1, 0], vec![0.0; 8], vec![object, Target::Background]);
        // Equal logits: each prior's cross-entropy is ln 2; one positive allows three
        // negatives, so the one background prior is kept: 2 ln 2.
        let conf = Tensor::<B, 3>::zeros([1, 2, 2], &device);
        // Prior 0's offsets are off by 0.5, 2, 0, 0: smooth L1 ½·0.5² + (2 − ½) = 1.625.
        // Prior 1's (background) are not trained: any value.
        let loc = Tensor::<B, 3>::from_data(
            TensorData::new(vec![0.5f32, 2.0, 0.0, 0.0, 9.0, 9.0, 9.0, 9.0], [1, 2, 4]),
            &device,
        );
        let loss: f32 = multibox_loss(loc, conf, &b).into_scalar();
        let expected = 1.625 + 2.0 * std::f32::consts::LN_2;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        // Without a positive nothing is mined and nothing regressed: 0 (divided by 1).
        let b = batch(vec![0, 0], vec![0.0; 8], vec![Target::Background; 2]);
        let loss: f32 = multibox_loss(
            Tensor::<B, 3>::ones([1, 2, 4], &device),
            Tensor::<B, 3>::zeros([1, 2, 2], &device),
            &b,
        )
        .into_scalar();
        assert_eq!(loss, 0.0);
    }

    #[test]
    fn the_multibox_loss_trains_through_autodiff() {
        let device = Default::default();
        let object = Target::Object {
            truth: 0,
            label: 1,
            offsets: [0.0; 4],
        };
        let b = batch(vec![1, 0], vec![0.0; 8], vec![object, Target::Background]);
        let b = DetectBatch::<Autodiff<B>> {
            images: Tensor::from_inner(b.images),
            offsets: Tensor::from_inner(b.offsets),
            labels: Tensor::from_inner(b.labels),
            targets: b.targets,
            truths: b.truths,
            ids: b.ids,
        };
        let conf = Tensor::<Autodiff<B>, 3>::zeros([1, 2, 2], &device).require_grad();
        let loc = Tensor::<Autodiff<B>, 3>::from_data(
            TensorData::new(vec![0.5f32, 2.0, 0.0, 0.0, 9.0, 9.0, 9.0, 9.0], [1, 2, 4]),
            &device,
        )
        .require_grad();
        let grads = multibox_loss(loc.clone(), conf.clone(), &b).backward();
        // d/dloc of smooth L1: d below 1, sign(d) above; background priors get nothing.
        let g = loc
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(g, [0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // d/dlogits of cross-entropy: softmax − one-hot = ∓½ for each kept prior.
        let g = conf
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(g, [0.5, -0.5, -0.5, 0.5]);
    }

    #[test]
    fn detections_keep_the_best_of_overlapping_boxes_per_class() {
        let device = Default::default();
        // Three priors: two nearly the same box, one apart. Class 1 scores 0.9, 0.8, 0.7.
        let priors = vec![
            [0.3, 0.3, 0.2, 0.2],
            [0.31, 0.3, 0.2, 0.2],
            [0.8, 0.8, 0.2, 0.2],
        ];
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let conf = Tensor::<B, 3>::from_data(
            TensorData::new(
                vec![0.0, logit(0.9), 0.0, logit(0.8), 0.0, logit(0.7)],
                [1, 3, 2],
            ),
            &device,
        );
        let loc = Tensor::<B, 3>::zeros([1, 3, 4], &device);
        let found = detections(loc, conf, &priors, &[5], DetectParams::default());
        // Prior 1 overlaps prior 0 by IoU 0.038/0.042 ≈ 0.90 > 0.45: suppressed.
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].image, 5);
        assert_eq!(found[0].class, 0);
        assert!((found[0].score - 0.9).abs() < 1e-6);
        let b = found[0].bbox;
        assert!(
            (b[0] - 0.2).abs() < 1e-6 && (b[2] - 0.4).abs() < 1e-6,
            "{b:?}"
        );
        assert!((found[1].score - 0.7).abs() < 1e-6);
        // A score threshold above 0.7 drops the last.
        let params = DetectParams {
            min_score: 0.75,
            ..DetectParams::default()
        };
        let conf = Tensor::<B, 3>::from_data(
            TensorData::new(
                vec![0.0, logit(0.9), 0.0, logit(0.8), 0.0, logit(0.7)],
                [1, 3, 2],
            ),
            &device,
        );
        let found = detections(
            Tensor::zeros([1, 3, 4], &device),
            conf,
            &priors,
            &[0],
            params,
        );
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn the_map_metric_of_an_epoch_is_the_map_of_all_its_batches() {
        let gt = |image, bbox| GroundTruth {
            image,
            class: 0,
            bbox,
            difficult: false,
        };
        let det = |image, score, bbox| Detection {
            image,
            class: 0,
            score,
            bbox,
        };
        let a = [0.0, 0.0, 0.5, 0.5];
        let b = [0.5, 0.5, 1.0, 1.0];
        let batches = [
            MapInput {
                detections: vec![det(0, 0.9, a), det(0, 0.8, b)],
                truths: vec![gt(0, a)],
                classes: 1,
            },
            MapInput {
                detections: vec![det(1, 0.95, a), det(1, 0.3, b)],
                truths: vec![gt(1, b), gt(1, a)],
                classes: 1,
            },
        ];
        let mut metric = MapMetric::new();
        let entries: Vec<(f64, usize)> = batches
            .iter()
            .enumerate()
            .map(|(k, b)| metric.push(b, k + 1 == batches.len()))
            .collect();
        let all_d: Vec<_> = batches.iter().flat_map(|b| b.detections.clone()).collect();
        let all_t: Vec<_> = batches.iter().flat_map(|b| b.truths.clone()).collect();
        let whole =
            100.0 * mean_average_precision(&all_d, &all_t, 1, 0.5, Interpolation::ElevenPoint).map;
        // Ranked 0.95 (TP), 0.9 (TP), 0.8 (FP), 0.3 (TP) against 3 boxes: precision 1 up to
        // recall 2/3, then 3/4 at recall 1: 11-point AP (7·1 + 4·0.75)/11.
        assert!((whole - 100.0 * 10.0 / 11.0).abs() < 1e-9, "{whole}");
        assert!((metric.value().current() - whole).abs() < 1e-9);
        // burn-train's epoch value, the count-weighted mean of the entries, is the whole
        // epoch's mAP (the first batch alone would score 100 %).
        assert_eq!(entries[0], (0.0, 0));
        let (sum, count) = entries
            .iter()
            .fold((0.0, 0), |(s, n), &(v, c)| (s + v * c as f64, n + c));
        assert!((sum / count as f64 - whole).abs() < 1e-9);
        // Through burn-train's entry: the last batch (progress at its total) carries it.
        let meta = |done| MetricMetadata {
            progress: burn::data::dataloader::Progress {
                items_processed: done,
                items_total: 2,
            },
            global_progress: burn::data::dataloader::Progress {
                items_processed: 1,
                items_total: 1,
            },
            iteration: None,
            lr: None,
        };
        metric.clear();
        let first = metric.update(&batches[0], &meta(1));
        assert_eq!(first.serialized, "0,0");
        let last = metric.update(&batches[1], &meta(2));
        assert_eq!(last.serialized, format!("{whole},1"));
        metric.clear();
        assert_eq!(metric.value().current(), 0.0);
    }
}
