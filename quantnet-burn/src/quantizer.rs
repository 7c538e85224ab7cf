//! The quantizer as a Burn module: learned `α`, `β`, frozen thresholds, a level set and a shared
//! temperature.
//!
//! A [`Quantizer`] is what quantized layers hold. Its record carries `α`, `β`, the thresholds and
//! the level values (as non-trained parameters), so saving and loading a model round-trips them
//! exactly. The temperature is a [`Temperature`] cell shared by every quantizer of one kind
//! (weights or activations) so that one per-epoch hook raises them all. It is part of the record
//! too (one `f32` per quantizer): saving stores the current value and loading sets the shared
//! cell to it, except while a [`TemperatureHook`](crate::train::TemperatureHook) drives the cell:
//! burn-train saves a checkpoint before the hook moves T on, so a resumed run takes T from the
//! schedule and the epoch ([`TemperatureHook::start_at`](crate::train::TemperatureHook::start_at)),
//! which is what the interrupted run would have used next.
//!
//! **Soft or hard.** In [`QuantMode::Auto`] (the default) a quantizer is soft on an autodiff
//! backend (training) and hard on any other (`model.valid()`, evaluation, inference), so
//! validation always measures the hard-quantized model. `Soft` and `Hard` force one or the other
//! (soft accuracy is a diagnostic); `Off` passes values through unchanged.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use burn::module::{
    AutodiffModule, Content, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper,
    ModuleVisitor, Param, ParamId,
};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::init::{self, ThresholdInit};
use crate::levels::LevelSet;
use crate::method::{self, Method};
use crate::op::{GradientMode, QuantBackend, QuantParams, hard_quantize, soft_quantize};

/// `data` as host values of type `E`: how initialisation and diagnostics read tensors back.
///
/// # Errors
/// [`Error::InvalidParameter`] naming `what` if the values cannot be read.
pub(crate) fn read_back<E: burn::tensor::Element>(
    data: burn::tensor::TensorData,
    what: &'static str,
) -> Result<Vec<E>> {
    data.convert::<E>()
        .to_vec::<E>()
        .map_err(|e| Error::InvalidParameter {
            name: what,
            value: String::new(),
            reason: format!("reading it back from the device failed: {e:?}"),
        })
}

/// A temperature shared by clones: setting it on one sets it on all.
///
/// A cell registered with a [`TemperatureHook`](crate::train::TemperatureHook) is *scheduled*:
/// from then on its schedule decides T, and loading a record (a checkpoint saved before the hook
/// moved T on, say) no longer overwrites it.
#[derive(Clone, Debug)]
pub struct Temperature(Arc<TemperatureCell>);

#[derive(Debug)]
struct TemperatureCell {
    bits: AtomicU32,
    scheduled: AtomicBool,
    /// The temperatures of the training steps not yet reported to a
    /// [`TemperatureMetric`](crate::train::TemperatureMetric) (`None`: no metric reads them).
    steps: std::sync::Mutex<Option<std::collections::VecDeque<f32>>>,
}

impl Temperature {
    /// A new cell holding `t`.
    ///
    /// # Panics
    /// If `t` is not finite and positive.
    pub fn new(t: f32) -> Self {
        crate::op::check_temperature(t).unwrap_or_else(|e| panic!("{e}"));
        Self(Arc::new(TemperatureCell {
            bits: AtomicU32::new(t.to_bits()),
            scheduled: AtomicBool::new(false),
            steps: std::sync::Mutex::new(None),
        }))
    }

    /// The current temperature.
    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.bits.load(Ordering::Relaxed))
    }

    /// Sets the temperature for every quantizer sharing this cell.
    ///
    /// # Panics
    /// If `t` is not finite and positive.
    pub fn set(&self, t: f32) {
        crate::op::check_temperature(t).unwrap_or_else(|e| panic!("{e}"));
        self.0.bits.store(t.to_bits(), Ordering::Relaxed);
    }

    /// Whether a hook's schedule drives this cell (loaded records then leave it alone).
    pub fn is_scheduled(&self) -> bool {
        self.0.scheduled.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_scheduled(&self) {
        self.0.scheduled.store(true, Ordering::Relaxed);
    }

    /// From now on, [`Self::push_step`] keeps each step's temperature for [`Self::pop_step`].
    pub(crate) fn record_steps(&self) {
        let mut steps = self.0.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.get_or_insert_with(Default::default);
    }

    /// Records the temperature a training step runs at (when a metric reads them).
    pub(crate) fn push_step(&self, t: f32) {
        let mut steps = self.0.steps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(steps) = steps.as_mut() {
            steps.push_back(t);
        }
    }

    /// The oldest recorded step temperature not yet taken.
    pub(crate) fn pop_step(&self) -> Option<f32> {
        let mut steps = self.0.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.as_mut().and_then(|s| s.pop_front())
    }
}

impl Default for Temperature {
    fn default() -> Self {
        Self::new(1.0)
    }
}

/// A quantizer's [`Temperature`] as a module field: the shared cell, saved as its value.
///
/// A module without parameters whose record is one `f32`: saving a model stores T, loading one
/// sets the (shared) cell to the stored T unless a hook schedules that cell (see
/// [`Temperature`]). Burn's derive only treats fields that mention the
/// backend as modules, hence the backend marker.
#[derive(Clone, Debug)]
pub struct TemperatureField<B: Backend> {
    cell: Temperature,
    backend: PhantomData<B>,
}

impl<B: Backend> TemperatureField<B> {
    fn new(cell: &Temperature) -> Self {
        Self {
            cell: cell.clone(),
            backend: PhantomData,
        }
    }
}

impl<B: Backend> Module<B> for TemperatureField<B> {
    type Record = f32;

    fn collect_devices(&self, devices: Vec<B::Device>) -> Vec<B::Device> {
        devices
    }

    fn fork(self, _device: &B::Device) -> Self {
        self
    }

    fn to_device(self, _device: &B::Device) -> Self {
        self
    }

    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

    fn map<M: ModuleMapper<B>>(self, _mapper: &mut M) -> Self {
        self
    }

    fn load_record(self, record: f32) -> Self {
        // A scheduled cell follows its schedule; a record holding no usable temperature
        // (hand-edited, corrupted) keeps the current one.
        if !self.cell.is_scheduled() && crate::op::check_temperature(record).is_ok() {
            self.cell.set(record);
        }
        self
    }

    fn into_record(self) -> f32 {
        self.cell.get()
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for TemperatureField<B> {
    type InnerModule = TemperatureField<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        TemperatureField::new(&self.cell)
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        Self::new(&module.cell)
    }
}

impl<B: Backend> ModuleDisplayDefault for TemperatureField<B> {
    fn content(&self, content: Content) -> Option<Content> {
        content.add_formatted(&self.cell.get()).optional()
    }
}

impl<B: Backend> ModuleDisplay for TemperatureField<B> {}

/// When a quantizer uses the soft function, the hard one, or none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantMode {
    /// Soft on autodiff backends (training), hard otherwise (evaluation).
    #[default]
    Auto,
    /// Always the soft function at the current temperature.
    Soft,
    /// Always the hard function.
    Hard,
    /// Identity: quantization bypassed.
    Off,
}

/// Whether a weight quantizer has one `α`/`β` pair for the whole tensor or one per output
/// channel.
///
/// Per channel, channel `c` is quantized as `α_c·Q(β_c·w)` where `Q` is the quantizer with unit
/// scales and the layer's one set of thresholds: the thresholds live in the normalised `β_c·w`
/// domain, where every channel's largest weight maps to the same place (`5p/4`), so one k-means
/// over all the normalised weights sets them. Each `(α_c, β_c)` follows the per-tensor rule on
/// its channel's weights (`β_c = 5p/(4q_c)`, `α_c = 1/β_c`). Activations and the baselines are
/// per tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One `α`/`β` pair for the tensor (the paper's layer-wise parameters).
    #[default]
    Tensor,
    /// One `α`/`β` pair per output channel (`qn` weights only).
    Channel,
    /// One quantization function (`α`, `β`, thresholds) shared by every quantized weight layer
    /// of a model: the paper's "shared" ablation (its Table 6), `qn` weights only. A model's
    /// quantizers are made shared by `quantnet_models::quantize::quantize_weights` (one
    /// quantizer initialised from all the layers' weights, the same parameters in every layer,
    /// kept one parameter by [`tie_shared_params`](crate::tie_shared_params)); a single
    /// quantizer is per tensor.
    Shared,
}

impl Granularity {
    /// The name used in configs and on the command line (`tensor`, `channel`, `shared`).
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Tensor => "tensor",
            Granularity::Channel => "channel",
            Granularity::Shared => "shared",
        }
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Granularity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tensor" => Ok(Granularity::Tensor),
            "channel" => Ok(Granularity::Channel),
            "shared" => Ok(Granularity::Shared),
            _ => Err(Error::parse(s, "expected tensor, channel or shared")),
        }
    }
}

/// How one quantizer is set up: its levels, gradient rule and initialisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizerConfig {
    /// Target levels `Y`.
    pub levels: LevelSet,
    /// Gradient rule of the backward pass.
    #[serde(default)]
    pub gradient: GradientMode,
    /// k-means (paper) or uniform thresholds.
    #[serde(default)]
    pub threshold_init: ThresholdInit,
    /// Half-width of the band around 0 (weights: `Some(0.05)`; activations: `None`).
    #[serde(default)]
    pub zero_band: Option<f32>,
    /// Train the thresholds too (the paper freezes them).
    #[serde(default)]
    pub learn_thresholds: bool,
    /// How the quantizer trains: ours (`qn`) or a baseline ([`Method`]).
    #[serde(default)]
    pub method: Method,
    /// Whether it quantizes activations (a batch: LSQ's gradient scale counts one sample's
    /// elements) rather than weights.
    #[serde(default)]
    pub activations: bool,
    /// One `α`/`β` per tensor or per output channel ([`Granularity`]).
    #[serde(default)]
    pub granularity: Granularity,
}

impl QuantizerConfig {
    /// A weight quantizer: k-means thresholds with the ±0.05 band, exact gradients.
    pub fn weights(levels: LevelSet) -> Self {
        Self {
            levels,
            gradient: GradientMode::Exact,
            threshold_init: ThresholdInit::KMeans,
            zero_band: Some(init::ZERO_BAND),
            learn_thresholds: false,
            method: Method::Qn,
            activations: false,
            granularity: Granularity::Tensor,
        }
    }

    /// An activation quantizer: k-means thresholds, no band, exact gradients.
    pub fn activations(levels: LevelSet) -> Self {
        Self {
            zero_band: None,
            activations: true,
            ..Self::weights(levels)
        }
    }

    /// The same configuration training with `method` (see [`Method`]).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `method` cannot quantize to these levels (`bwn` needs
    /// binary, `twn` ternary levels) or, for an activation quantizer, quantizes weights only.
    pub fn with_method(self, method: Method) -> Result<Self> {
        let method = if self.activations {
            method.for_acts()?
        } else {
            method.for_weights()
        };
        method.check_levels(&self.levels)?;
        let config = Self { method, ..self };
        config.check_granularity()?;
        Ok(config)
    }

    /// The same configuration with one `α`/`β` per tensor, per output channel, or shared by a
    /// model's weight layers ([`Granularity`]).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for per-channel or shared scales on an activation quantizer or
    /// with a method other than `qn`.
    pub fn with_granularity(self, granularity: Granularity) -> Result<Self> {
        let config = Self {
            granularity,
            ..self
        };
        config.check_granularity()?;
        Ok(config)
    }

    /// Whether `α`, `β` and the thresholds train, for a quantizer with `thresholds`.
    fn trained(&self, thresholds: &[f32]) -> (bool, bool, bool) {
        // With every (fixed) threshold at 0 (binary weights), β does not change the hard
        // function, step(β·x) = step(x): training it would only soften the soft one (β drifts
        // down, the soft network stops approaching the hard one), so it is not trained.
        let beta_matters = self.learn_thresholds || thresholds.iter().any(|&b| b != 0.0);
        // The baselines: STE, BWN and TWN learn no scale; LSQ, PACT and DSQ learn one step
        // (β = 1/α); none learns its thresholds.
        match self.method {
            Method::Qn => (true, beta_matters, self.learn_thresholds),
            Method::Ste | Method::Bwn | Method::Twn => (false, false, false),
            Method::Lsq | Method::Pact | Method::Dsq => (true, false, false),
        }
    }

    /// Refuses the combinations per-channel scales are not built for.
    fn check_granularity(&self) -> Result<()> {
        if self.granularity == Granularity::Tensor {
            return Ok(());
        }
        let refuse = |reason: &str| {
            Err(Error::InvalidParameter {
                name: "granularity",
                value: self.granularity.to_string(),
                reason: reason.into(),
            })
        };
        if self.activations {
            refuse("activations are quantized per tensor (one range per layer)")
        } else if self.method != Method::Qn {
            refuse(&format!(
                "per-channel and shared scales are built for `qn` weights; {} is per tensor",
                self.method
            ))
        } else {
            Ok(())
        }
    }

    /// The same configuration with another gradient rule.
    pub fn with_gradient(self, gradient: GradientMode) -> Self {
        Self { gradient, ..self }
    }

    /// The same configuration with another threshold initialisation.
    pub fn with_threshold_init(self, threshold_init: ThresholdInit) -> Self {
        Self {
            threshold_init,
            ..self
        }
    }

    /// A quantizer initialised from `data` (the layer's weights, or sampled activations):
    /// `β = 5p/(4q)` with `q = max|data|`, `α = 1/β`, thresholds as configured.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for empty, all-zero or non-finite data.
    pub fn init_from_data<B: Backend>(
        &self,
        data: &[f32],
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<Quantizer<B>> {
        check_finite(data)?;
        if self.method != Method::Qn {
            let (alpha, beta, thresholds) = method::initial_state(self.method, &self.levels, data)?;
            return self.init_with(alpha, beta, &thresholds, temperature, device);
        }
        let q = data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (alpha, beta) = init::initial_scales(&self.levels, q)?;
        let scaled: Vec<f32> = data.iter().map(|v| v * beta).collect();
        let thresholds =
            init::thresholds(&scaled, &self.levels, self.threshold_init, self.zero_band)?;
        self.init_with(alpha, beta, &thresholds, temperature, device)
    }

    /// A weight quantizer initialised from a layer's weights `data` (row-major, shape `dims`)
    /// whose output channels run along `channel_axis`: per tensor as [`Self::init_from_data`],
    /// or one `(α_c, β_c)` per output channel by the same rule ([`Granularity::Channel`]; a
    /// channel of zeros takes the tensor's scale) with the thresholds from k-means over every
    /// normalised weight `β_c·w`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for empty, all-zero or non-finite data, `dims` that do not
    /// describe `data`, or `channel_axis` outside `dims`.
    pub fn init_from_weights<B: Backend>(
        &self,
        data: &[f32],
        dims: &[usize],
        channel_axis: usize,
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<Quantizer<B>> {
        if self.granularity != Granularity::Channel {
            // Shared: each quantizer on its own is per tensor (see `Granularity::Shared`).
            return self.init_from_data(data, temperature, device);
        }
        self.check_granularity()?;
        let channels = ChannelLayout::new(dims, channel_axis, data.len())?;
        check_finite(data)?;
        let mut max_abs = vec![0.0f32; channels.count];
        for (i, v) in data.iter().enumerate() {
            let c = channels.of(i);
            max_abs[c] = max_abs[c].max(v.abs());
        }
        let q = max_abs.iter().fold(0.0f32, |m, v| m.max(*v));
        let scales = max_abs
            .iter()
            .map(|&q_c| init::initial_scales(&self.levels, if q_c > 0.0 { q_c } else { q }))
            .collect::<Result<Vec<_>>>()?;
        let scaled: Vec<f32> = data
            .iter()
            .enumerate()
            .map(|(i, v)| v * scales[channels.of(i)].1)
            .collect();
        let thresholds =
            init::thresholds(&scaled, &self.levels, self.threshold_init, self.zero_band)?;
        let (alpha, beta): (Vec<f32>, Vec<f32>) = scales.into_iter().unzip();
        self.init_per_channel(
            &alpha,
            &beta,
            &thresholds,
            channel_axis,
            temperature,
            device,
        )
    }

    /// A per-channel quantizer with the given scales (one `α_c`, `β_c` per output channel along
    /// `channel_axis`) and thresholds (in the normalised `β_c·w` domain).
    ///
    /// # Errors
    /// As [`QuantParams::new`], for scales that are empty, of different lengths, not finite or
    /// zero, and for a configuration that is not per channel.
    pub fn init_per_channel<B: Backend>(
        &self,
        alpha: &[f32],
        beta: &[f32],
        thresholds: &[f32],
        channel_axis: usize,
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<Quantizer<B>> {
        if self.granularity != Granularity::Channel {
            return Err(Error::InvalidParameter {
                name: "granularity",
                value: self.granularity.to_string(),
                reason: "per-channel scales need a per-channel configuration".into(),
            });
        }
        if alpha.is_empty() || alpha.len() != beta.len() {
            return Err(Error::InvalidParameter {
                name: "alpha",
                value: format!("{} α and {} β", alpha.len(), beta.len()),
                reason: "one α and one β per output channel".into(),
            });
        }
        if let Some(bad) = alpha
            .iter()
            .chain(beta)
            .find(|v| !v.is_finite() || **v == 0.0)
        {
            return Err(Error::InvalidParameter {
                name: "alpha/beta",
                value: bad.to_string(),
                reason: "every per-channel scale must be finite and non-zero".into(),
            });
        }
        let mut q = self.init_with(alpha[0], beta[0], thresholds, temperature, device)?;
        let (train_alpha, train_beta, _) = self.trained(thresholds);
        q.alpha = param(Tensor::from_floats(alpha, device), train_alpha);
        q.beta = param(Tensor::from_floats(beta, device), train_beta);
        q.channel_axis = Some(channel_axis);
        Ok(q)
    }

    /// A quantizer with the given scales and thresholds.
    ///
    /// # Errors
    /// As [`QuantParams::new`].
    pub fn init_with<B: Backend>(
        &self,
        alpha: f32,
        beta: f32,
        thresholds: &[f32],
        temperature: &Temperature,
        device: &B::Device,
    ) -> Result<Quantizer<B>> {
        // A config built field by field is checked as `with_method` checks it.
        self.method.check_levels(&self.levels)?;
        if self.activations {
            self.method.for_acts()?;
        }
        self.check_granularity()?;
        let p = QuantParams::<B>::new(&self.levels, alpha, beta, thresholds, device)?;
        let levels = Tensor::<B, 1>::from_floats(self.levels.levels(), device);
        let (train_alpha, train_beta, train_thresholds) = self.trained(thresholds);
        let sharpness = (self.method == Method::Dsq).then(|| {
            param(
                Tensor::from_floats([method::DSQ_INITIAL_SHARPNESS], device),
                true,
            )
        });
        Ok(Quantizer {
            alpha: param(p.alpha, train_alpha),
            beta: param(p.beta, train_beta),
            thresholds: param(p.thresholds, train_thresholds),
            levels: param(levels, false),
            sharpness,
            level_set: self.levels.clone(),
            gradient: self.gradient,
            method: self.method,
            per_sample: self.activations,
            channel_axis: None,
            temperature: TemperatureField::new(temperature),
            mode: QuantMode::Auto,
        })
    }
}

/// Refuses data with a non-finite value (the initialisation rules need finite data).
fn check_finite(data: &[f32]) -> Result<()> {
    match data.iter().find(|v| !v.is_finite()) {
        Some(bad) => Err(Error::InvalidParameter {
            name: "data",
            value: bad.to_string(),
            reason: "quantizer initialisation needs finite values".into(),
        }),
        None => Ok(()),
    }
}

/// Where a row-major tensor's element `i` falls along one axis: the output channel of a weight
/// (per-channel scales, in training and in the `.qnet` files that store them).
#[derive(Clone, Copy, Debug)]
pub struct ChannelLayout {
    /// Channels along the axis.
    count: usize,
    /// Elements per step along the axis (the product of the dimensions after it).
    inner: usize,
}

impl ChannelLayout {
    /// The layout of a tensor of shape `dims` holding `len` values, along `axis`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `axis` is outside `dims` or `dims` does not hold `len`
    /// (at least one) values.
    pub fn new(dims: &[usize], axis: usize, len: usize) -> Result<Self> {
        let bad = |reason: String| Error::InvalidParameter {
            name: "channel_axis",
            value: axis.to_string(),
            reason,
        };
        if axis >= dims.len() {
            return Err(bad(format!("the weight has {} dimensions", dims.len())));
        }
        if dims.iter().product::<usize>() != len || len == 0 {
            return Err(bad(format!("shape {dims:?} does not hold {len} values")));
        }
        Ok(Self {
            count: dims[axis],
            inner: dims[axis + 1..].iter().product(),
        })
    }

    /// The channel of element `i`: `(i / Π dims[axis+1..]) mod dims[axis]`.
    pub fn of(&self, i: usize) -> usize {
        (i / self.inner) % self.count
    }
}

/// A parameter holding `value` that remembers whether it is trained.
///
/// `Param::from_tensor` takes the flag from the tensor, and a tensor of a non-autodiff backend
/// never requires grad: a quantizer made on the inner backend (calibration runs there) would
/// come back from `AutodiffModule::from_inner` frozen. A parameter made like Burn's own
/// initialisers (lazy, with an explicit flag) keeps it.
fn param<B: Backend>(value: Tensor<B, 1>, require_grad: bool) -> Param<Tensor<B, 1>> {
    let device = value.device();
    let shape = value.shape();
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| {
            value
                .clone()
                .to_device(device)
                .set_require_grad(require_grad)
        },
        device,
        require_grad,
        shape,
    )
}

/// A weight hard-quantized to level indices ([`Quantizer::codes`]): element `i` is
/// `α_c·Y[codes[i]]` bit for bit, with `c` its output channel along `channel_axis`, or `c = 0`
/// per tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Codes {
    /// The output scales: one per tensor, or one per output channel.
    pub alpha: Vec<f32>,
    /// The output-channel axis of per-channel scales (`None`: one scale).
    pub channel_axis: Option<usize>,
    /// The level index of every element (row-major).
    pub codes: Vec<usize>,
}

/// A Quantization Networks quantizer (see the [module docs](self)).
#[derive(Module, Debug)]
pub struct Quantizer<B: Backend> {
    /// Output scale `α` (trained).
    pub alpha: Param<Tensor<B, 1>>,
    /// Input scale `β` (trained).
    pub beta: Param<Tensor<B, 1>>,
    /// Thresholds `b_i` in the `β·x` domain (frozen unless configured otherwise).
    pub thresholds: Param<Tensor<B, 1>>,
    /// The level values `Y`, persisted with the record (never trained).
    pub levels: Param<Tensor<B, 1>>,
    /// DSQ's sharpness `δ` (trained; `None` for every other method).
    pub sharpness: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    level_set: LevelSet,
    #[module(skip)]
    gradient: GradientMode,
    #[module(skip)]
    method: Method,
    #[module(skip)]
    per_sample: bool,
    /// The output-channel axis of a per-channel weight quantizer (`None`: per tensor).
    #[module(skip)]
    channel_axis: Option<usize>,
    /// The shared temperature (its value is saved with the record).
    temperature: TemperatureField<B>,
    #[module(skip)]
    mode: QuantMode,
}

impl<B: QuantBackend> Quantizer<B> {
    /// Quantizes `x` (soft or hard, see [`QuantMode`]).
    ///
    /// # Shapes
    /// Any shape; the output has the same shape.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let soft = match self.mode {
            QuantMode::Off => return x,
            QuantMode::Soft => true,
            QuantMode::Hard => false,
            QuantMode::Auto => B::ad_enabled(&x.device()),
        };
        let params = self.params_for(&x);
        match (soft, self.method) {
            (false, _) => self.per_channel(x, &params, hard_quantize),
            (true, Method::Qn) => self.per_channel(x, &params, |x, p| {
                soft_quantize(x, p, self.temperature.cell.get(), self.gradient)
            }),
            (true, m) => method::train_forward(
                m,
                x,
                &params,
                &self.level_set,
                self.sharpness.as_ref().map(Param::val),
                self.per_sample,
            ),
        }
    }

    /// The hard function of `x` whatever the mode: the values training's forward lands on and
    /// inference uses (`α·y_k`, or `α_c·y_k` per channel).
    pub fn hard<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let params = self.params_for(&x);
        self.per_channel(x, &params, hard_quantize)
    }

    /// `x` in the threshold domain: `β·x`, or `β_c·x` per channel (what the thresholds are
    /// compared with).
    pub fn normalised<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let params = self.params_for(&x);
        self.scaled(x, &params)
    }

    /// `β·x` with `params`' `β`, broadcast along the channel axis per channel.
    fn scaled<const D: usize>(&self, x: Tensor<B, D>, params: &QuantParams<B>) -> Tensor<B, D> {
        let shape = self.channel_shape(&x).unwrap_or([1; D]);
        x * params.beta.clone().reshape(shape)
    }

    /// `f(x, params)`, or per channel `α_c·f(β_c·x, unit scales)` with `α`, `β` broadcast along
    /// the channel axis: the fused quantizer runs with `α = β = 1`, and the per-channel scales
    /// are ordinary tensor products that autodiff differentiates. The hard values are
    /// `fl(α_c·y_k)` bit for bit, as per tensor (`1·(β_c·x)` and `1·y_k` are exact).
    fn per_channel<const D: usize>(
        &self,
        x: Tensor<B, D>,
        params: &QuantParams<B>,
        f: impl FnOnce(Tensor<B, D>, &QuantParams<B>) -> Tensor<B, D>,
    ) -> Tensor<B, D> {
        let Some(shape) = self.channel_shape(&x) else {
            return f(x, params);
        };
        let unit = QuantParams {
            alpha: params.alpha.ones_like().slice(0..1),
            beta: params.beta.ones_like().slice(0..1),
            thresholds: params.thresholds.clone(),
            steps: params.steps.clone(),
            offset: params.offset,
        };
        let beta = params.beta.clone().reshape(shape);
        let alpha = params.alpha.clone().reshape(shape);
        f(x * beta, &unit) * alpha
    }

    /// The broadcast shape of the per-channel scales for `x` (`[1, .., C, .., 1]`), `None` per
    /// tensor.
    ///
    /// # Panics
    /// If `x` has no channel axis of this quantizer's width (a per-channel quantizer applied
    /// to a tensor it was not made for).
    fn channel_shape<const D: usize>(&self, x: &Tensor<B, D>) -> Option<[usize; D]> {
        let axis = self.channel_axis?;
        let channels = self.alpha.dims()[0];
        let dims = x.dims();
        assert!(
            axis < D && (dims[axis] == channels || channels == 1),
            "a per-channel quantizer with {channels} channels along axis {axis} cannot quantize \
             a tensor of shape {dims:?}"
        );
        let mut shape = [1; D];
        shape[axis] = channels;
        Some(shape)
    }

    /// The parameters that quantize `x`: [`Self::params`], except for the methods whose scale
    /// and thresholds are functions of the tensor itself (`bwn`, `twn`: computed from `x`).
    pub fn params_for<const D: usize>(&self, x: &Tensor<B, D>) -> QuantParams<B> {
        if self.method.is_data_scaled() {
            let stored = self.params();
            method::data_scaled_params(self.method, x, stored.steps, stored.offset)
        } else {
            self.params()
        }
    }

    /// This quantizer with `α`, `β` and the thresholds it applies to `x` stored in its
    /// parameters (computed from `x` for `bwn`/`twn`, `β = 1/α` for the methods that tie them):
    /// the record then describes the hard function by itself, whatever method reads it.
    pub fn settled<const D: usize>(mut self, x: &Tensor<B, D>) -> Self {
        let p = self.params_for(x);
        self.alpha = self.alpha.map(|old| {
            let trained = old.is_require_grad();
            p.alpha.clone().detach().set_require_grad(trained)
        });
        self.beta = self.beta.map(|old| {
            let trained = old.is_require_grad();
            p.beta.clone().detach().set_require_grad(trained)
        });
        self.thresholds = self.thresholds.map(|old| {
            let trained = old.is_require_grad();
            p.thresholds.clone().detach().set_require_grad(trained)
        });
        self
    }

    /// The quantizer's parameters as op arguments (`s_i` from the persisted levels; `β = 1/α`
    /// for the methods that learn one step size). Per channel, `α` and `β` hold one value per
    /// channel and the op functions refuse them: quantize through [`Self::forward`] or
    /// [`Self::hard`].
    pub fn params(&self) -> QuantParams<B> {
        let levels = self.levels.val();
        let n = levels.dims()[0];
        let steps = levels.clone().slice(1..n) - levels.slice(0..n - 1);
        // |α|, |β|: positive by construction, whatever the optimizer does to the parameters (a
        // negative β would reverse the quantizer, a negative α flip the layer's sign).
        let alpha = self.alpha.val().abs();
        let beta = if self.method.ties_beta() {
            alpha.clone().recip()
        } else {
            self.beta.val().abs()
        };
        QuantParams {
            alpha,
            beta,
            thresholds: self.thresholds.val(),
            steps,
            offset: self.level_set.offset(),
        }
    }
}

impl<B: QuantBackend> Quantizer<B> {
    /// The scales and, for every element of `x`, the index `k` of its level: [`Self::hard`]`(x)`
    /// is `α·Y[k]` (`α_c·Y[k]` per channel) bit for bit, and `k` is found by those bits. What
    /// exports store instead of the hard values.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if values cannot be read back, or a hard value is not `α·y`
    /// for any level.
    pub fn codes<const D: usize>(&self, x: Tensor<B, D>) -> Result<Codes> {
        let dims = x.dims();
        let params = self.params_for(&x);
        let alpha = read_back::<f32>(params.alpha.clone().into_data(), "alpha")?;
        let hard = read_back::<f32>(self.hard(x).into_data(), "hard values")?;
        let channels = match self.channel_axis {
            Some(axis) if alpha.len() > 1 => Some(ChannelLayout::new(&dims, axis, hard.len())?),
            _ => None,
        };
        let tables: Vec<Vec<u32>> = alpha
            .iter()
            .map(|a| {
                self.level_set
                    .levels()
                    .iter()
                    .map(|y| (a * y).to_bits())
                    .collect()
            })
            .collect();
        let codes = hard
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let table = &tables[channels.map_or(0, |c| c.of(i))];
                table.iter().position(|t| *t == v.to_bits()).ok_or_else(|| {
                    Error::InvalidParameter {
                        name: "weight",
                        value: v.to_string(),
                        reason: "a hard-quantized value is not α·y for any level".into(),
                    }
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(Codes {
            channel_axis: channels.and(self.channel_axis),
            alpha,
            codes,
        })
    }

    /// The fraction of `x`'s elements that the hard quantizer maps to each level (in the order of
    /// [`LevelSet::levels`]): the level occupancy of a layer's weights. Reads one value per level
    /// back from the device.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if the counts cannot be read back.
    pub fn occupancy<const D: usize>(&self, x: Tensor<B, D>) -> Result<Vec<f32>> {
        let total = x.shape().num_elements().max(1) as f32;
        let params = self.params_for(&x);
        let bx: Tensor<B, 1> = self.scaled(x, &params).flatten(0, D - 1);
        let thresholds = params.thresholds;
        let n = self.level_set.num_steps();
        // Elements at or above threshold i: level k holds those above b_{k-1} but below b_k.
        // The n counts are gathered on the device and read back together.
        let counts = (0..n)
            .map(|i| {
                let b_i = thresholds.clone().slice(i..i + 1);
                bx.clone().greater_equal(b_i.expand(bx.shape())).int().sum()
            })
            .collect::<Vec<_>>();
        let at_or_above = read_back::<i64>(Tensor::cat(counts, 0).into_data(), "level counts")?
            .into_iter()
            .map(|c| c as f32);
        let mut above = std::iter::once(total)
            .chain(at_or_above)
            .chain(std::iter::once(0.0));
        let mut previous = above.next().unwrap_or(total);
        Ok(above
            .map(|next| {
                let share = (previous - next) / total;
                previous = next;
                share
            })
            .collect())
    }
}

impl<B: Backend> Quantizer<B> {
    /// The level set.
    pub fn level_set(&self) -> &LevelSet {
        &self.level_set
    }

    /// Checks that the persisted `levels` parameter equals the level set this quantizer was
    /// built with, and that the record's scales fit its granularity (one `α`/`β` per tensor, or
    /// as many `β` as `α` per channel). The forward pass takes the steps from `levels` and the
    /// offset from the level set, so a record loaded into a skeleton of another set would
    /// compute silently wrong levels: call this after loading a record (reads `levels` back to
    /// the host).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming both sets.
    pub fn check_levels(&self) -> Result<()> {
        let stored: Vec<f32> = self
            .levels
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let (alphas, betas) = (self.alpha.dims()[0], self.beta.dims()[0]);
        if self.channel_axis.is_none() && (alphas != 1 || betas != 1) {
            return Err(Error::InvalidParameter {
                name: "alpha",
                value: format!("{alphas} α, {betas} β"),
                reason: "the record has per-channel scales but the quantizer is per tensor: \
                         build the model with per-channel weight scales (granularity channel)"
                    .into(),
            });
        }
        if alphas != betas {
            return Err(Error::InvalidParameter {
                name: "alpha",
                value: format!("{alphas} α, {betas} β"),
                reason: "a per-channel record needs as many β as α".into(),
            });
        }
        if stored.as_slice() == self.level_set.levels() {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "levels",
                value: format!("{stored:?}"),
                reason: format!(
                    "the record's levels differ from the quantizer's level set {:?}",
                    self.level_set.levels()
                ),
            })
        }
    }

    /// The shared temperature cell.
    pub fn temperature(&self) -> &Temperature {
        &self.temperature.cell
    }

    /// Makes this quantizer share `temperature` (e.g. after loading a record).
    pub fn with_temperature(mut self, temperature: &Temperature) -> Self {
        self.temperature = TemperatureField::new(temperature);
        self
    }

    /// The current mode.
    pub fn mode(&self) -> QuantMode {
        self.mode
    }

    /// Switches this quantizer to `mode`.
    pub fn set_mode(&mut self, mode: QuantMode) {
        self.mode = mode;
    }

    /// This quantizer in `mode`.
    pub fn with_mode(mut self, mode: QuantMode) -> Self {
        self.mode = mode;
        self
    }

    /// How this quantizer trains.
    pub fn method(&self) -> Method {
        self.method
    }

    /// One `α`/`β` per tensor or per output channel.
    pub fn granularity(&self) -> Granularity {
        if self.channel_axis.is_some() {
            Granularity::Channel
        } else {
            Granularity::Tensor
        }
    }

    /// The output-channel axis of per-channel scales (`None`: per tensor).
    pub fn channel_axis(&self) -> Option<usize> {
        self.channel_axis
    }

    /// The gradient rule.
    pub fn gradient(&self) -> GradientMode {
        self.gradient
    }

    /// Sets the gradient rule (it is not part of the record: a loaded quantizer takes its
    /// skeleton's, so whoever continues training sets the rule it trains with).
    pub fn set_gradient(&mut self, gradient: GradientMode) {
        self.gradient = gradient;
    }
}
