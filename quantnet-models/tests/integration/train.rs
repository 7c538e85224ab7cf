//! Training with burn-train's Learner and the temperature hook, on a real MNIST subset.
//!
//! A small MLP, `784 -> QuantLinear(64, ternary) -> ReLU -> QuantAct(u2) -> Linear(10)`, trains
//! on the first 1000 MNIST training images and validates on the first 500 test images. The
//! hook must raise T at each epoch boundary, validation must run hard-quantized (the inner
//! backend), and a run stopped after epoch 1 and resumed must end with the same temperature and
//! the same weights as an uninterrupted run with the same seed.
//!
//! The training data are not shuffled: burn-train 0.21 does not restore the data loader's
//! shuffling RNG when it resumes from a checkpoint, so a resumed run would see epoch 1's order
//! again in epoch 2 (checked: with `.shuffle(3)` the resumed α differs in the third digit). With a
//! fixed order the resumed run is bit-identical.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::AdamConfig;
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use quantnet_burn::train::{TemperatureHook, TemperatureMetric};
use quantnet_burn::{
    LevelSet, QuantAct, QuantBackend, QuantLinear, QuantizerConfig, Temperature,
    TemperatureSchedule,
};
use quantnet_models::data::{ImageBatch, ImageItem, Split, mnist};

use crate::backend::Inner;

type B = crate::backend::Train;

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    fc1: QuantLinear<B>,
    act: QuantAct<B>,
    fc2: Linear<B>,
}

impl<B: QuantBackend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = burn::tensor::activation::relu(self.fc1.forward(x));
        self.fc2.forward(self.act.forward(h))
    }

    fn classify(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        let output = self.forward(batch.images.flatten(1, 3));
        let loss = CrossEntropyLossConfig::new()
            .init(&output.device())
            .forward(output.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, output, batch.targets)
    }
}

impl<B: AutodiffBackend + QuantBackend> TrainStep for Mlp<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let item = self.classify(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: QuantBackend> InferenceStep for Mlp<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        self.classify(batch)
    }
}

/// The MNIST fixture (600 training and 200 test images, `fixtures/README.md`).
fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mnist")
}

fn items(dir: &Path, split: Split, n: usize) -> Vec<ImageItem> {
    mnist::load(dir, split).unwrap().items(n, 0.0, 1.0)
}

struct Run {
    temperature: f32,
    fc1_weight: Vec<f32>,
    fc1_alpha: Vec<f32>,
    dir: PathBuf,
}

/// Trains `epochs` epochs (resuming from the checkpoint of epoch `resume_from` if given) in `dir`.
fn train(dir: &Path, epochs: usize, resume_from: Option<usize>) -> Run {
    let device = Default::default();
    let data = mnist_dir();
    B::seed(&device, 7);
    let weights_t = Temperature::new(1.0);
    let acts_t = Temperature::new(1.0);
    let fc1 = LinearConfig::new(784, 64).init::<B>(&device);
    let calibration: Vec<f32> = items(&data, Split::Train, 50)
        .into_iter()
        .flat_map(|i| i.pixels)
        .collect();
    let model = Mlp {
        fc1: QuantLinear::from_float(
            fc1,
            &QuantizerConfig::weights(LevelSet::ternary()),
            &weights_t,
        )
        .unwrap(),
        act: QuantAct::calibrate(
            &QuantizerConfig::activations(LevelSet::unsigned(2).unwrap()),
            &calibration,
            &acts_t,
            &device,
        )
        .unwrap(),
        fc2: LinearConfig::new(64, 10).init(&device),
    };
    let hook = TemperatureHook::new()
        .with(&weights_t, TemperatureSchedule::linear(5.0))
        .with(&acts_t, TemperatureSchedule::linear(10.0));
    hook.start_at(resume_from.unwrap_or(0));
    let batcher = quantnet_models::data::ImageBatcher {
        channels: 1,
        rows: 28,
        cols: 28,
    };
    let train = DataLoaderBuilder::new(batcher)
        .batch_size(100)
        .num_workers(1)
        .build(InMemDataset::new(items(&data, Split::Train, 600)));
    let valid = DataLoaderBuilder::new(batcher)
        .batch_size(250)
        .num_workers(1)
        .build(InMemDataset::new(items(&data, Split::Test, 200)));
    let mut training = SupervisedTraining::new(dir.to_str().unwrap(), train, valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(TemperatureMetric::new("Weight temperature", &weights_t))
        .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
        .early_stopping(hook)
        .renderer(quantnet_models::qat::PlainRenderer::new("mlp"))
        .num_epochs(epochs);
    if let Some(epoch) = resume_from {
        training = training.checkpoint(epoch);
    }
    let result = training.launch(Learner::new(model, AdamConfig::new().init(), 5e-3));
    let model = result.model;
    let values = |t: Tensor<Inner, 1>| t.into_data().to_vec::<f32>().unwrap();
    Run {
        temperature: weights_t.get(),
        fc1_weight: values(model.fc1.linear.weight.val().flatten(0, 1)),
        fc1_alpha: values(model.fc1.quantizer.as_ref().expect("quantized").alpha.val()),
        dir: dir.to_path_buf(),
    }
}

/// The MNIST fixture as the recipe's data (MNIST's normalisation).
fn mnist_data() -> quantnet_models::qat::QatData {
    quantnet_models::qat::QatData::new(
        mnist::load(&mnist_dir(), Split::Train).unwrap(),
        mnist::load(&mnist_dir(), Split::Test).unwrap(),
        (vec![0.1307], vec![0.3081]),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quantnet-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The validation accuracy of `epoch` that burn-train logged.
fn logged_valid_accuracy(run: &Run, epoch: usize) -> f64 {
    let path = run.dir.join(format!("valid/epoch-{epoch}/Accuracy.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    assert!(!values.is_empty(), "{} holds no values", path.display());
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn hook_raises_temperature_and_resume_matches_an_uninterrupted_run() {
    let _serial = crate::backend::serial();
    let full = train(&scratch("full"), 2, None);
    // After 2 epochs the hook has set T for the third: 5·3 = 15.
    assert_eq!(full.temperature, 15.0);
    // Validation ran on the inner backend, i.e. hard-quantized, and was logged every epoch.
    for epoch in [1, 2] {
        let acc = logged_valid_accuracy(&full, epoch);
        assert!(
            acc > 30.0,
            "epoch {epoch}: hard-quantized validation accuracy {acc}% is not well above chance (10%)"
        );
        eprintln!("epoch {epoch}: hard-quantized validation accuracy {acc:.1}%");
    }
    let weights_log = full.dir.join("train/epoch-2/Weight_temperature.log");
    let logged = std::fs::read_to_string(&weights_log).unwrap();
    assert!(
        logged.lines().all(|l| l.starts_with("10")),
        "epoch 2 trains at T = 10: {logged}"
    );

    let dir = scratch("resumed");
    train(&dir, 1, None);
    let resumed = train(&dir, 2, Some(1));
    assert_eq!(resumed.temperature, full.temperature);
    assert_eq!(resumed.fc1_alpha, full.fc1_alpha);
    assert_eq!(resumed.fc1_weight, full.fc1_weight);
    for d in [&full.dir, &dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A user's model for the library recipe: `784 -> 128 -> act -> 64 -> act -> 10`, built from
/// the layer slots and listed in one `impl QatModel`.
#[derive(Module, Debug)]
struct UserMlp<B: Backend> {
    fc1: quantnet_burn::nn::QuantLinear<B>,
    act1: quantnet_burn::nn::QuantAct<B>,
    fc2: quantnet_burn::nn::QuantLinear<B>,
    act2: quantnet_burn::nn::QuantAct<B>,
    fc3: quantnet_burn::nn::QuantLinear<B>,
}

impl<B: Backend> UserMlp<B> {
    fn new(device: &B::Device) -> Self {
        use quantnet_burn::nn::{QuantAct, QuantLinear};
        Self {
            fc1: QuantLinear::float(LinearConfig::new(784, 128).init(device)),
            act1: QuantAct::float(),
            fc2: QuantLinear::float(LinearConfig::new(128, 64).init(device)),
            act2: QuantAct::float(),
            fc3: QuantLinear::float(LinearConfig::new(64, 10).init(device)),
        }
    }
}

impl<B: Backend> quantnet_models::models::QatModel<B> for UserMlp<B> {
    fn slots(&mut self) -> quantnet_models::models::Slots<'_, B> {
        // The push form of the builder the example uses.
        let mut slots = quantnet_models::models::Slots::new();
        slots.linear("fc1", &mut self.fc1);
        slots.act("act1", &mut self.act1);
        slots.linear("fc2", &mut self.fc2);
        slots.act("act2", &mut self.act2);
        slots.linear("fc3", &mut self.fc3);
        slots
    }
}

impl<B: Backend> quantnet_models::models::ImageModel<B> for UserMlp<B> {
    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: QuantBackend,
    {
        use burn::tensor::activation::relu;
        let x = self
            .act1
            .forward(relu(self.fc1.forward(images.flatten(1, 3))));
        let x = self.act2.forward(relu(self.fc2.forward(x)));
        self.fc3.forward(x)
    }
}

/// A user's progress renderer that records which phase saw which updates.
struct Recorder {
    phase: String,
    seen: Arc<Mutex<Vec<(String, &'static str)>>>,
}

impl Recorder {
    fn note(&self, event: &'static str) {
        let mut seen = self.seen.lock().unwrap();
        if seen.last() != Some(&(self.phase.clone(), event)) {
            seen.push((self.phase.clone(), event));
        }
    }
}

impl burn::train::renderer::MetricsRendererTraining for Recorder {
    fn update_train(&mut self, _: burn::train::renderer::MetricState) {
        self.note("train");
    }

    fn update_valid(&mut self, _: burn::train::renderer::MetricState) {
        self.note("valid");
    }

    fn render_train(
        &mut self,
        _: burn::train::renderer::TrainingProgress,
        _: Vec<burn::train::renderer::ProgressType>,
    ) {
    }

    fn render_valid(
        &mut self,
        _: burn::train::renderer::TrainingProgress,
        _: Vec<burn::train::renderer::ProgressType>,
    ) {
    }
}

impl burn::train::renderer::MetricsRendererEvaluation for Recorder {
    fn update_test(
        &mut self,
        _: burn::train::renderer::EvaluationName,
        _: burn::train::renderer::MetricState,
    ) {
    }

    fn render_test(
        &mut self,
        _: burn::train::renderer::EvaluationProgress,
        _: Vec<burn::train::renderer::ProgressType>,
    ) {
    }
}

impl burn::train::renderer::MetricsRenderer for Recorder {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, _: burn::train::metric::MetricDefinition) {}
}

/// The library recipe on a model it has never seen: one full-precision epoch, then ternary
/// weights (fc2 only: the first and last layer stay full precision) and 2-bit activations for
/// two epochs on the MNIST fixture. The report says what happened, and the files are written.
#[test]
fn the_library_recipe_quantizes_a_user_model() {
    use quantnet_models::qat::{Qat, QatConfig};
    let _serial = crate::backend::serial();
    let dir = scratch("recipe");
    let data = mnist_data();
    let policy = quantnet_models::QuantPolicy::recipe(
        Some(LevelSet::ternary()),
        Some(LevelSet::unsigned(2).unwrap()),
    );
    let config = QatConfig::new(policy).with_batch_size(32).with_seed(3);
    let device = Default::default();
    B::seed(&device, 3);
    let model = UserMlp::<Inner>::new(&device);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let (mut model, report) = Qat::new(config, &dir)
        .renderer(quantnet_models::qat::Renderers::new(move |phase| {
            Box::new(Recorder {
                phase: phase.to_string(),
                seen: recorder.clone(),
            })
        }))
        .run::<B, _>(model, &data, &device)
        .unwrap();
    // Each phase's progress went to the user's renderer: training and validation updates of
    // the pretraining and the quantized phase, in that order.
    let seen = seen.lock().unwrap().clone();
    let mut phases: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    phases.dedup();
    assert_eq!(phases, ["pretrain", "quantized"], "{seen:?}");
    for phase in phases {
        for event in ["train", "valid"] {
            assert!(
                seen.contains(&(phase.to_string(), event)),
                "{phase} {event}: {seen:?}"
            );
        }
    }
    // Pretrained, then quantized: fc2 and both activation slots.
    let fp = report.full_precision_accuracy.unwrap();
    assert!(fp > 60.0, "{report:?}");
    assert_eq!(report.quantized, (1, 2));
    assert_eq!((report.train_images, report.test_images), (600, 200));
    let names: Vec<&str> = report.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["fc2", "act1", "act2"]);
    // The anneal ends at 500; each epoch's logged temperatures lie on the way there.
    assert_eq!(report.temperatures, (Some(500.0), Some(500.0)));
    assert_eq!(report.epochs.len(), 2);
    let w1 = report.epochs[0].weights_temperature.unwrap();
    let w2 = report.epochs[1].weights_temperature.unwrap();
    assert!(5.0 < w1 && w1 < w2 && w2 < 500.0, "{report:?}");
    // The hard-quantized model is the reported one: its accuracy is well above chance and
    // agrees with the last validation epoch.
    assert!(report.test_accuracy_hard > 50.0, "{report:?}");
    let hard = quantnet_models::train::accuracy(&model, &data.test, data.batcher, 100, &device);
    assert_eq!(hard, report.test_accuracy_hard);
    assert!(report.epochs[1].test_accuracy_hard.is_some());
    // metrics.csv: a header and one row per epoch; model.mpk loads into the structure.
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("epoch,train_loss"), "{csv}");
    assert!(dir.join("model.mpk").is_file());
    quantnet_models::quantize::check_levels(&mut model).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Granularity::Shared` (the paper's "shared" ablation): with every layer quantized, the three
/// weight layers hold one quantizer (one `ParamId` for α), and after an epoch of the recipe (the
/// Learner, the quantizer learning-rate group, checkpoints) it is still one function: α and β
/// are bit for bit the same in every layer, and they trained (α·β moved away from the
/// initial 1). Without tying, only the first layer's copy would move (Burn's optimizers take each
/// gradient once); that the gradient is every layer's sum is `tie`'s unit test.
#[test]
fn a_shared_weight_quantizer_trains_as_one_function() {
    use quantnet_burn::Granularity;
    use quantnet_models::models::QatModel;
    use quantnet_models::qat::{Qat, QatConfig};
    let _serial = crate::backend::serial();
    let dir = scratch("shared");
    let data = mnist_data();
    let policy = quantnet_models::QuantPolicy {
        quantize_all: true,
        ..quantnet_models::QuantPolicy::recipe(Some(LevelSet::ternary()), None)
    }
    .with_granularity(Granularity::Shared)
    .unwrap();
    let config = QatConfig::new(policy)
        .with_batch_size(32)
        .with_seed(3)
        .with_pretrain_epochs(0)
        .with_epochs(1);
    let device = Default::default();
    B::seed(&device, 3);
    let (mut model, report) = Qat::new(config, &dir)
        .run::<B, _>(UserMlp::<Inner>::new(&device), &data, &device)
        .unwrap();
    assert_eq!(report.quantized.0, 3, "{report:?}");
    let scalar = |t: Tensor<Inner, 1>| t.into_data().to_vec::<f32>().unwrap()[0];
    let mut ids = std::collections::HashSet::new();
    let mut scales = Vec::new();
    for (_, mut layer) in model.slots().weights {
        let q = layer.quantizer().as_ref().expect("every layer quantized");
        ids.insert(q.alpha.id);
        scales.push((
            scalar(q.alpha.val()).to_bits(),
            scalar(q.beta.val()).to_bits(),
        ));
    }
    assert_eq!(ids.len(), 1, "one α parameter");
    assert!(scales.iter().all(|s| *s == scales[0]), "{scales:?}");
    let (alpha, beta) = (f32::from_bits(scales[0].0), f32::from_bits(scales[0].1));
    assert!(
        (alpha * beta - 1.0).abs() > 1e-3,
        "α = {alpha}, β = {beta}: not trained"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// LeNet-5 with one weight quantizer shared by conv2, fc1 and fc2, as training starts or resumes
/// (moved to the autodiff backend, each layer holds its own copy of the shared values): the
/// training step's gradient for the shared α is the sum of the three layers' gradients, computed
/// independently with each layer given its own parameters. Without the tie before the forward,
/// the step registers one layer's gradient (each copy's overwrites the last). Continuing such a
/// model layer-wise gives each layer its own parameters, with the shared values.
#[test]
fn the_training_step_trains_a_shared_quantizer_on_the_sum_of_its_layers_gradients() {
    use burn::module::AutodiffModule;
    use burn::tensor::{Distribution, Int};
    use burn::train::TrainStep;
    use quantnet_burn::Granularity;
    use quantnet_models::quantize::quantize_weights;
    use quantnet_models::train::{MonitorOptions, Monitored};
    use quantnet_models::{Arch, Model, QuantPolicy, Temperatures};
    let _serial = crate::backend::serial();
    let device = Default::default();
    Inner::seed(&device, 4);
    let input = quantnet_models::data::Dataset::Mnist.input();
    let layer_wise = QuantPolicy {
        weights: Some(QuantizerConfig::weights(LevelSet::ternary())),
        ..QuantPolicy::float()
    };
    let shared = layer_wise
        .clone()
        .with_granularity(Granularity::Shared)
        .unwrap();
    let temps = Temperatures::default();
    let mut model = Model::<Inner>::new(Arch::Lenet5, input, &device);
    assert_eq!(quantize_weights(&mut model, &shared, &temps).unwrap(), 3);
    let alpha_ids = |m: &mut Model<Inner>| -> Vec<burn::module::ParamId> {
        m.slots()
            .weights
            .into_iter()
            .filter_map(|(_, mut l)| l.quantizer().as_ref().map(|q| q.alpha.id))
            .collect()
    };
    let ids = alpha_ids(&mut model);
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| *id == ids[0]));

    // On the autodiff backend, every parameter initialised once: a clone of a lazy parameter
    // draws its own values (conv1's weights, say), and the model is cloned below.
    struct Touch;
    impl burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    let ad = <Model<B> as AutodiffModule<B>>::from_inner(model);
    ad.visit(&mut Touch);
    let images = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let targets = Tensor::<B, 1, Int>::from_ints([3, 1, 4, 1], &device);
    let batch = ImageBatch {
        images: images.clone(),
        targets: targets.clone(),
    };
    let out = TrainStep::step(
        &Monitored::new(ad.clone(), MonitorOptions::default()),
        batch,
    );
    let got = out.grads.get::<Inner, 1>(ids[0]).expect("a gradient for α");
    let got = got.into_data().to_vec::<f32>().unwrap()[0];

    // Each layer its own parameters: `quantize_weights` with the layer-wise policy keeps the
    // values and gives the copies fresh ids (the continuation path).
    let mut separate = ad.clone();
    assert_eq!(
        quantize_weights(&mut separate, &layer_wise, &temps).unwrap(),
        0
    );
    let own: std::collections::HashSet<_> = separate
        .slots()
        .weights
        .into_iter()
        .filter_map(|(_, mut l)| l.quantizer().as_ref().map(|q| q.alpha.id))
        .collect();
    assert_eq!(own.len(), 3);
    let logits = separate.forward(images);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets);
    let grads = loss.backward();
    let mut sum = 0.0f32;
    for (_, mut layer) in separate.slots().weights {
        if let Some(q) = layer.quantizer().as_ref() {
            let g = q.alpha.val().grad(&grads).expect("each layer's α gradient");
            sum += g.into_data().to_vec::<f32>().unwrap()[0];
        }
    }
    assert!(
        (got - sum).abs() <= 1e-4 * sum.abs().max(1e-3),
        "shared α gradient {got}, sum of the layers' {sum}"
    );
}

/// A user's model that is no image classifier as far as quantnet knows: it reads rows of 784
/// features (its own batch type, [`Rows`]), has its own loss, training and validation steps,
/// and lists only its layer slots (`QatModel`, no `ImageModel`).
#[derive(Module, Debug)]
struct RowNet<B: Backend> {
    fc1: quantnet_burn::nn::QuantLinear<B>,
    act1: quantnet_burn::nn::QuantAct<B>,
    fc2: quantnet_burn::nn::QuantLinear<B>,
    act2: quantnet_burn::nn::QuantAct<B>,
    fc3: quantnet_burn::nn::QuantLinear<B>,
}

/// The user's batch: features and classes.
#[derive(Clone, Debug)]
struct Rows<B: Backend> {
    x: Tensor<B, 2>,
    y: Tensor<B, 1, burn::tensor::Int>,
}

#[derive(Clone)]
struct RowBatcher;

impl<B: Backend> burn::data::dataloader::batcher::Batcher<B, ImageItem, Rows<B>> for RowBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &B::Device) -> Rows<B> {
        let n = items.len();
        let x: Vec<f32> = items
            .iter()
            .flat_map(|i| i.pixels.iter().copied())
            .collect();
        let y: Vec<i64> = items.iter().map(|i| i.label).collect();
        Rows {
            x: Tensor::from_data(burn::tensor::TensorData::new(x, [n, 784]), device),
            y: Tensor::from_data(burn::tensor::TensorData::new(y, [n]), device),
        }
    }
}

impl<B: Backend> RowNet<B> {
    fn new(device: &B::Device) -> Self {
        use quantnet_burn::nn::{QuantAct, QuantLinear};
        Self {
            fc1: QuantLinear::float(LinearConfig::new(784, 128).init(device)),
            act1: QuantAct::float(),
            fc2: QuantLinear::float(LinearConfig::new(128, 64).init(device)),
            act2: QuantAct::float(),
            fc3: QuantLinear::float(LinearConfig::new(64, 10).init(device)),
        }
    }
}

impl<B: QuantBackend> RowNet<B> {
    fn output(&self, rows: Rows<B>) -> ClassificationOutput<B> {
        use burn::tensor::activation::relu;
        let x = self.act1.forward(relu(self.fc1.forward(rows.x)));
        let x = self.act2.forward(relu(self.fc2.forward(x)));
        let scores = self.fc3.forward(x);
        let loss = CrossEntropyLossConfig::new()
            .init(&scores.device())
            .forward(scores.clone(), rows.y.clone());
        ClassificationOutput::new(loss, scores, rows.y)
    }
}

impl<B: AutodiffBackend + QuantBackend> TrainStep for RowNet<B> {
    type Input = Rows<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, rows: Rows<B>) -> TrainOutput<ClassificationOutput<B>> {
        let item = self.output(rows);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: QuantBackend> InferenceStep for RowNet<B> {
    type Input = Rows<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, rows: Rows<B>) -> ClassificationOutput<B> {
        self.output(rows)
    }
}

impl<B: Backend> quantnet_models::models::QatModel<B> for RowNet<B> {
    fn slots(&mut self) -> quantnet_models::models::Slots<'_, B> {
        quantnet_models::models::Slots::new()
            .with_linear("fc1", &mut self.fc1)
            .with_act("act1", &mut self.act1)
            .with_linear("fc2", &mut self.fc2)
            .with_act("act2", &mut self.act2)
            .with_linear("fc3", &mut self.fc3)
    }
}

/// Percent of `items` that `model` (hard-quantized: the inner backend) classifies right.
fn row_accuracy(model: &RowNet<Inner>, items: &[ImageItem]) -> f64 {
    let device = Default::default();
    let rows: Rows<Inner> =
        burn::data::dataloader::batcher::Batcher::batch(&RowBatcher, items.to_vec(), &device);
    let out = InferenceStep::step(model, rows);
    let hits = out
        .output
        .argmax(1)
        .flatten::<1>(0, 1)
        .equal(out.targets)
        .int()
        .sum()
        .into_scalar();
    let hits: i64 = burn::tensor::ElementConversion::elem(hits);
    100.0 * hits as f64 / items.len() as f64
}

/// The values burn-train logged for a training metric in `epoch` (one per step).
fn logged_steps(dir: &Path, epoch: usize, name: &str) -> Vec<f64> {
    let path = dir.join(format!("train/epoch-{epoch}/{name}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect()
}

/// The recipe's parts in a user's own burn-train setup, on a model and batch type quantnet has
/// never seen: the user trains it in full precision with their own `Learner`, quantizes the
/// weights (`quantize_weights`), calibrates the activations on their own batches through their
/// own step (`calibrate_acts_by`), and trains on with their own `Learner`, metrics and
/// optimizer, given the model in a `QatStep` (per-step anneal), `GroupLr` with
/// `quantizer_scale_ids` (the quantizer scales at 100× the rate) and the hook as early
/// stopping. The weight temperature must rise at every step from 5 to 500, the activation
/// quantizers' α must train, and the hard-quantized model must classify the MNIST fixture's
/// test images well above chance.
#[test]
fn a_users_own_learner_trains_with_the_recipes_parts() {
    use quantnet_burn::train::GroupLr;
    use quantnet_models::qat::{PlainRenderer, QatConfig, QuantLrGroup};
    use quantnet_models::quantize::{Temperatures, calibrate_acts_by, quantize_weights};
    use quantnet_models::train::{QatStep, quantizer_scale_ids};
    let _serial = crate::backend::serial();
    let dir = scratch("parts");
    let device = Default::default();
    B::seed(&device, 11);
    let train_items = items(&mnist_dir(), Split::Train, 600);
    let test_items = items(&mnist_dir(), Split::Test, 200);
    let loaders = || {
        let train = DataLoaderBuilder::new(RowBatcher)
            .batch_size(32)
            .num_workers(1)
            .build(InMemDataset::new(train_items.clone()));
        let valid = DataLoaderBuilder::new(RowBatcher)
            .batch_size(100)
            .num_workers(1)
            .build(InMemDataset::new(test_items.clone()));
        (train, valid)
    };

    // The user's full-precision training, as it was.
    let (train, valid) = loaders();
    let fp = SupervisedTraining::new(dir.join("fp").to_str().unwrap(), train, valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .renderer(PlainRenderer::new("fp"))
        .num_epochs(2)
        .launch(Learner::new(
            RowNet::<B>::new(&device),
            AdamConfig::new().init(),
            1e-3,
        ));
    let mut model = fp.model;
    let fp_accuracy = row_accuracy(&model, &test_items);

    // The parts: ternary weights (fc2: the first and last layer stay float), 2-bit
    // activations calibrated on 200 of the user's rows through the user's own step.
    let policy = quantnet_models::QuantPolicy::recipe(
        Some(LevelSet::ternary()),
        Some(LevelSet::unsigned(2).unwrap()),
    );
    let config = QatConfig::new(policy.clone());
    let temps = Temperatures::default();
    let (epochs, steps) = (2, 600usize.div_ceil(32));
    let hook = config.hook(&temps).over(epochs, steps);
    hook.start_at(0);
    assert_eq!(quantize_weights(&mut model, &policy, &temps).unwrap(), 1);
    let calibration: Vec<Rows<Inner>> = train_items[..200]
        .chunks(50)
        .map(|c| burn::data::dataloader::batcher::Batcher::batch(&RowBatcher, c.to_vec(), &device))
        .collect();
    let calibrated = calibrate_acts_by(
        &mut model,
        &policy,
        &temps,
        &device,
        calibration,
        |m, rows| {
            let n = rows.y.dims()[0];
            drop(InferenceStep::step(m, rows));
            n
        },
    );
    assert_eq!(calibrated.unwrap(), 2);
    let alpha = |m: &RowNet<Inner>| -> f32 {
        let q = m.act1.quantizer.as_ref().expect("act1 is quantized");
        q.alpha.val().into_scalar()
    };
    let calibrated_alpha = alpha(&model);

    // The user's Learner again, with the model in a `QatStep`.
    let (train, valid) = loaders();
    let step = QatStep::new(<RowNet<B> as burn::module::AutodiffModule<B>>::from_inner(
        model,
    ))
    .with_hook(hook.clone());
    let optimizer = GroupLr::new(
        AdamConfig::new().init(),
        |m: &QatStep<B, RowNet<B>>| quantizer_scale_ids(m, QuantLrGroup::All),
        100.0,
    );
    let qat = dir.join("qat");
    let result = SupervisedTraining::new(qat.to_str().unwrap(), train, valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(TemperatureMetric::new("Weight temperature", &temps.weights))
        .metric_train_numeric(TemperatureMetric::new("Act temperature", &temps.acts))
        .early_stopping(hook)
        .renderer(PlainRenderer::new("qat"))
        .num_epochs(epochs)
        .launch(Learner::new(step, optimizer, 1e-4));
    let model = result.model.into_model();

    // Every step ran at a higher weight temperature, from the schedule's 5 to its 500.
    let steps_logged: Vec<f64> = (1..=epochs)
        .flat_map(|e| logged_steps(&qat, e, "Weight_temperature"))
        .collect();
    assert_eq!(steps_logged.len(), epochs * steps, "{steps_logged:?}");
    assert!((steps_logged[0] - 5.0).abs() < 1e-4, "{steps_logged:?}");
    assert!(
        (steps_logged[epochs * steps - 1] - 500.0).abs() < 1e-2,
        "{steps_logged:?}"
    );
    assert!(
        steps_logged.windows(2).all(|w| w[1] > w[0]),
        "{steps_logged:?}"
    );
    // The activation scales trained (at 100× the rate), fc2 is still ternary.
    assert_ne!(alpha(&model), calibrated_alpha);
    let fc2 = model.fc2.quantizer.as_ref().expect("fc2 is quantized");
    assert_eq!(fc2.level_set(), &LevelSet::ternary());
    let hard = row_accuracy(&model, &test_items);
    eprintln!("full precision {fp_accuracy:.1}%, hard-quantized {hard:.1}%");
    assert!(fp_accuracy > 60.0, "full precision {fp_accuracy}%");
    assert!(
        hard > 60.0,
        "hard-quantized {hard}% (full precision {fp_accuracy}%)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `prepare` and `finish` on a model with batch norm (quantnet's TFC, MNIST fixture images):
/// the policy's quantizers are made, batch norm is re-estimated over the batches given (on the
/// autodiff twin) before calibration and again after training for the hard network, and only
/// when the config asks; `finish` leaves the last step's temperatures (500) and a network whose
/// hard outputs follow its new statistics.
#[test]
fn prepare_and_finish_reestimate_batch_norm_and_calibrate_any_model() {
    use quantnet_models::qat::QatConfig;
    use quantnet_models::quantize::Temperatures;
    use quantnet_models::train::{Pass, finish, prepare};
    use quantnet_models::{Arch, Model};
    let _serial = crate::backend::serial();
    let device = Default::default();
    let batcher = quantnet_models::data::ImageBatcher {
        channels: 1,
        rows: 28,
        cols: 28,
    };
    let images = |n: usize| -> Vec<ImageBatch<Inner>> {
        (items(&mnist_dir(), Split::Train, n).chunks(50))
            .map(|c| burn::data::dataloader::batcher::Batcher::batch(&batcher, c.to_vec(), &device))
            .collect()
    };
    let policy = quantnet_models::QuantPolicy::recipe(
        Some(LevelSet::ternary()),
        Some(LevelSet::unsigned(2).unwrap()),
    );
    let input = quantnet_models::data::Dataset::Mnist.input();
    let scores = |m: &Model<Inner>| -> Vec<f32> {
        let batch = images(50).remove(0);
        m.forward(batch.images).into_data().to_vec::<f32>().unwrap()
    };
    for bn_reestimate in [true, false] {
        B::seed(&device, 4);
        let model = Model::<Inner>::new(Arch::Tfc, input, &device);
        assert!(quantnet_models::models::has_batch_norm(&model));
        let config = QatConfig::new(policy.clone()).with_bn_reestimate(bn_reestimate);
        let temps = Temperatures::default();
        let hook = config.hook(&temps).over(2, 10);
        let (mut seen, mut bn_passes) = (0, 0);
        let calibration = Pass::new(images(200), |m: &Model<Inner>, b: ImageBatch<Inner>| {
            let n = b.targets.dims()[0];
            seen += n;
            drop(m.forward(b.images));
            n
        });
        let bn = Pass::new(images(150), |m: &Model<B>, b: ImageBatch<Inner>| {
            bn_passes += 1;
            drop(m.forward(Tensor::from_inner(b.images)));
        });
        let (model, made) =
            prepare::<B, _, _, _, _, _>(model, &config, &temps, &hook, &device, calibration, bn)
                .unwrap();
        // TFC's four weight layers less the first and last; its three activation slots.
        assert_eq!(made, (2, 3));
        assert_eq!(seen, 200);
        assert_eq!(bn_passes, if bn_reestimate { 3 } else { 0 });
        // Soft calibration started the run: training's first step's temperatures.
        assert_eq!((temps.weights.get(), temps.acts.get()), (5.0, 10.0));
        let before = scores(&model);
        let mut bn_passes = 0;
        let bn = Pass::new(images(100), |m: &Model<B>, b: ImageBatch<Inner>| {
            bn_passes += 1;
            drop(m.forward(Tensor::from_inner(b.images)));
        });
        let model = finish::<B, _, _, _>(model, &config, &hook, bn);
        assert_eq!(bn_passes, if bn_reestimate { 2 } else { 0 });
        assert_eq!((temps.weights.get(), temps.acts.get()), (500.0, 500.0));
        let after = scores(&model);
        assert_eq!(
            before != after,
            bn_reestimate,
            "new statistics change the hard scores"
        );
    }
}

/// A user's CNN with batch norm, its slots derived (`#[derive(QatModel)]`), its own steps on
/// quantnet's image batches.
#[derive(Module, quantnet_models::models::QatModel, Debug)]
struct BnNet<B: Backend> {
    conv1: quantnet_burn::QuantConv2d<B>,
    norm1: burn::nn::BatchNorm<B>,
    conv2: quantnet_burn::QuantConv2d<B>,
    norm2: burn::nn::BatchNorm<B>,
    acts: [QuantAct<B>; 2],
    fc: QuantLinear<B>,
}

impl<B: Backend> BnNet<B> {
    fn new(device: &B::Device) -> Self {
        use burn::nn::conv::Conv2dConfig;
        let conv = |c_in, c_out| Conv2dConfig::new([c_in, c_out], [3, 3]).with_stride([2, 2]);
        Self {
            conv1: conv(1, 8).init(device).into(),
            norm1: burn::nn::BatchNormConfig::new(8).init(device),
            conv2: conv(8, 16).init(device).into(),
            norm2: burn::nn::BatchNormConfig::new(16).init(device),
            acts: [QuantAct::float(), QuantAct::float()],
            fc: LinearConfig::new(16 * 6 * 6, 10).init(device).into(),
        }
    }
}

impl<B: QuantBackend> BnNet<B> {
    fn classify(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        use burn::tensor::activation::relu;
        let x = self.conv1.forward(batch.images);
        let x = self.acts[0].forward(relu(self.norm1.forward(x)));
        let x = self.acts[1].forward(relu(self.norm2.forward(self.conv2.forward(x))));
        let output = self.fc.forward(x.flatten(1, 3));
        let loss = CrossEntropyLossConfig::new()
            .init(&output.device())
            .forward(output.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, output, batch.targets)
    }
}

impl<B: AutodiffBackend + QuantBackend> TrainStep for BnNet<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let item = self.classify(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: QuantBackend> InferenceStep for BnNet<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        self.classify(batch)
    }
}

/// `Recipe` in a user's own `SupervisedTraining`/`Learner`, with Burn's `Dataset` and a
/// `Batcher`: `prepare` quantizes the derived model's middle conv, re-estimates batch norm over
/// 200 batches and calibrates both activation quantizers on every fixture image (600 < 1000) at
/// the first step's temperatures; `attach` makes the run the config's 2 epochs (burn-train's
/// default is 1) with the temperatures as metrics; `step` anneals per step to the schedule's
/// end; `optimizer` puts the quantizer scales in their group (3 per `qn` quantizer); `finish`
/// re-estimates batch norm for the hard network (the running statistics move) and the hard
/// model classifies the fixture's test images above chance.
#[test]
fn a_recipe_runs_in_a_users_learner_on_a_dataset_and_batcher() {
    use quantnet_models::data::ImageBatcher;
    use quantnet_models::qat::{CalibrationWeights, PlainRenderer, QatConfig};
    use quantnet_models::train::{Finished, Prepared, Recipe};
    let _serial = crate::backend::serial();
    let dir = scratch("recipe");
    let device = Default::default();
    B::seed(&device, 5);
    let train = InMemDataset::new(items(&mnist_dir(), Split::Train, 600));
    let test = items(&mnist_dir(), Split::Test, 200);
    let batcher = ImageBatcher {
        channels: 1,
        rows: 28,
        cols: 28,
    };
    let policy = quantnet_models::QuantPolicy::recipe(
        Some(LevelSet::ternary()),
        Some(LevelSet::unsigned(2).unwrap()),
    );
    let (epochs, batch) = (2, 32);
    let steps = 600usize.div_ceil(batch);
    // A fresh model: trained from scratch at 3e-3 (the recipe's default 1e-4 fine-tunes).
    let config = QatConfig::new(policy)
        .with_epochs(epochs)
        .with_batch_size(16)
        .with_lr(Some(3e-3));
    let recipe = Recipe::new(config, steps);
    let (model, prepared) = recipe
        .prepare::<B, _, _>(BnNet::<Inner>::new(&device), &train, &batcher, &device)
        .unwrap();
    assert_eq!(
        prepared,
        Prepared {
            weights: 1,
            batch_norm_batches: 200,
            acts: 2,
            calibration_examples: 600,
            calibrate: CalibrationWeights::Soft,
            first_temperatures: (5.0, 10.0),
            scale_group: (9, 100.0),
        }
    );

    let train_items: Vec<ImageItem> = burn::data::dataset::Dataset::iter(&train).collect();
    let train_loader = DataLoaderBuilder::<B, _, _>::new(batcher)
        .batch_size(batch)
        .num_workers(1)
        .build(InMemDataset::new(train_items));
    let test_loader = DataLoaderBuilder::<Inner, _, _>::new(batcher)
        .batch_size(100)
        .num_workers(1)
        .build(InMemDataset::new(test.clone()));
    let qat = dir.join("qat");
    let optimizer = recipe.optimizer(AdamConfig::new().init());
    let trained = recipe
        .attach(SupervisedTraining::new(
            qat.to_str().unwrap(),
            train_loader,
            test_loader,
        ))
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .renderer(PlainRenderer::new("recipe"))
        .launch(Learner::new(recipe.step(model), optimizer, recipe.lr()));
    let model = trained.model.into_model();
    let logged: Vec<f64> = (1..=epochs)
        .flat_map(|e| logged_steps(&qat, e, "Weight_temperature"))
        .collect();
    assert_eq!(logged.len(), epochs * steps, "{logged:?}");
    assert!(logged.windows(2).all(|w| w[1] > w[0]), "{logged:?}");

    let running_mean = |m: &BnNet<Inner>| m.norm2.running_mean.value().into_data();
    let before = running_mean(&model);
    let (model, finished) = recipe.finish::<B, _, _>(model, &train, &batcher, &device);
    assert_eq!(
        finished,
        Finished {
            steps: (epochs * steps, epochs * steps),
            last_temperatures: (500.0, 500.0),
            batch_norm_batches: 200,
        }
    );
    assert_ne!(running_mean(&model), before, "batch norm re-estimated");
    let conv2 = model.conv2.quantizer.as_ref().expect("conv2 is quantized");
    assert_eq!(conv2.level_set(), &LevelSet::ternary());
    assert!(model.conv1.quantizer.is_none() && model.fc.quantizer.is_none());
    let hits: usize = test
        .chunks(100)
        .map(|c| {
            let batch: ImageBatch<Inner> =
                burn::data::dataloader::batcher::Batcher::batch(&batcher, c.to_vec(), &device);
            let out = InferenceStep::step(&model, batch);
            let predicted = out.output.argmax(1).flatten::<1>(0, 1);
            predicted.equal(out.targets).int().sum().into_scalar() as usize
        })
        .sum();
    eprintln!("hard-quantized: {hits} of 200");
    assert!(hits > 100, "hard-quantized {hits} of 200");
    let _ = std::fs::remove_dir_all(&dir);
}
