//! The models: one architecture gives the full-precision and the quantized variant.
//!
//! A model is built full precision ([`Model::new`]); [`crate::quantize::quantize_weights`] and
//! [`crate::quantize::calibrate_acts`] then give its
//! chosen layers quantizers (weights from their current values, activations from a calibration
//! pass). Every model lists its weight layers in forward order and its activation-quantizer slots
//! through [`Model::slots`]: the quantization policy (first conv and last linear full precision
//! unless told otherwise) works on that list, so it is the same for every model.

pub mod alexnet;
pub mod fc;
pub mod lenet;
pub mod resnet;
pub mod vgg;

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use quantnet_burn::{QatBackend, QuantBackend, Quantizer};
use serde::{Deserialize, Serialize};

use quantnet_burn::nn::{QuantAct, QuantConv2d, QuantLinear};

pub use alexnet::AlexNetBn;
pub use fc::FcNet;
pub use lenet::Lenet5;
/// `#[derive(QatModel)]`: the trait's `slots` from the model's fields (see [`quantnet_derive`]).
pub use quantnet_derive::QatModel;
pub use resnet::ResNet;
pub use vgg::VggSmall;

/// The architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// LeNet-5 (conv 6, conv 16, fc 120, fc 84, fc classes).
    Lenet5,
    /// Brevitas' TFC: three hidden layers of 64 with batch norm.
    Tfc,
    /// Brevitas' SFC: three hidden layers of 256.
    Sfc,
    /// Brevitas' LFC: three hidden layers of 1024.
    Lfc,
    /// VGG-small for CIFAR (LQ-Nets' layout: 128-128-256-256-512-512, one linear).
    VggSmall,
    /// ResNet-20 for CIFAR (3 stages of 3 basic blocks, 16/32/64 channels).
    Resnet20,
    /// torchvision's ResNet-18.
    Resnet18,
    /// torchvision's ResNet-50.
    Resnet50,
    /// torchvision's AlexNet with batch norm after every conv and hidden linear (paper-spec §5).
    AlexnetBn,
    /// The small SSD detector (192×192 inputs; [`crate::detect::SsdKind::Small`]).
    SsdSmall,
    /// SSD300 on VGG-16 ([`crate::detect::SsdKind::Ssd300`]).
    Ssd300,
}

impl Arch {
    /// Every architecture, in the order of the docs.
    pub const ALL: [Arch; 11] = [
        Arch::Lenet5,
        Arch::Tfc,
        Arch::Sfc,
        Arch::Lfc,
        Arch::VggSmall,
        Arch::Resnet20,
        Arch::Resnet18,
        Arch::Resnet50,
        Arch::AlexnetBn,
        Arch::SsdSmall,
        Arch::Ssd300,
    ];

    /// The classifiers (every architecture but the detectors).
    pub const CLASSIFIERS: [Arch; 9] = [
        Arch::Lenet5,
        Arch::Tfc,
        Arch::Sfc,
        Arch::Lfc,
        Arch::VggSmall,
        Arch::Resnet20,
        Arch::Resnet18,
        Arch::Resnet50,
        Arch::AlexnetBn,
    ];

    /// The SSD this architecture is, if it is a detector.
    pub fn detector(self) -> Option<crate::detect::SsdKind> {
        match self {
            Arch::SsdSmall => Some(crate::detect::SsdKind::Small),
            Arch::Ssd300 => Some(crate::detect::SsdKind::Ssd300),
            _ => None,
        }
    }

    /// Whether `input` is large enough for this architecture (its pools and strides leave at
    /// least one pixel); the error says what the smallest input is.
    ///
    /// # Errors
    /// A message naming the architecture, the input and the minimum.
    pub fn check_input(self, input: InputShape) -> Result<(), String> {
        let min = match self {
            Arch::Lenet5 => 28,
            Arch::Tfc | Arch::Sfc | Arch::Lfc => 1,
            Arch::VggSmall | Arch::Resnet20 => 8,
            Arch::Resnet18 | Arch::Resnet50 => 32,
            Arch::AlexnetBn => 63,
            Arch::SsdSmall | Arch::Ssd300 => {
                let side = self.detector().map_or(0, |k| k.image_size());
                if (input.channels, input.height, input.width) != (3, side, side)
                    || input.classes < 1
                {
                    return Err(format!(
                        "{self} needs 3×{side}×{side} images and 1+ object classes; got \
                         {}×{}×{} with {} classes",
                        input.channels, input.height, input.width, input.classes
                    ));
                }
                return Ok(());
            }
        };
        if input.height < min || input.width < min || input.channels == 0 || input.classes < 2 {
            return Err(format!(
                "{self} needs images of at least {min}×{min} pixels, 1+ channels and 2+ classes; \
                 got {}×{}×{} with {} classes",
                input.channels, input.height, input.width, input.classes
            ));
        }
        Ok(())
    }

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Lenet5 => "lenet5",
            Arch::Tfc => "tfc",
            Arch::Sfc => "sfc",
            Arch::Lfc => "lfc",
            Arch::VggSmall => "vgg-small",
            Arch::Resnet20 => "resnet20",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet50 => "resnet50",
            Arch::AlexnetBn => "alexnet-bn",
            Arch::SsdSmall => "ssd-small",
            Arch::Ssd300 => "ssd300",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Arch::ALL.iter().map(|a| a.name()).collect();
                format!("`{s}`: expected {}", names.join(", "))
            })
    }
}

/// The input a model is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    /// Image channels.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
}

/// A weight layer of a model, as listed by [`Model::slots`].
#[derive(Debug)]
pub enum WeightLayer<'a, B: Backend> {
    /// A convolution.
    Conv(&'a mut QuantConv2d<B>),
    /// A linear layer.
    Linear(&'a mut QuantLinear<B>),
}

impl<B: Backend> WeightLayer<'_, B> {
    /// The weight's output-channel axis (where per-channel scales run).
    pub fn channel_axis(&self) -> usize {
        match self {
            WeightLayer::Conv(_) => QuantConv2d::<B>::CHANNEL_AXIS,
            WeightLayer::Linear(_) => QuantLinear::<B>::CHANNEL_AXIS,
        }
    }

    /// The layer's weight quantizer slot.
    pub fn quantizer(&mut self) -> &mut Option<Quantizer<B>> {
        match self {
            WeightLayer::Conv(c) => &mut c.quantizer,
            WeightLayer::Linear(l) => &mut l.quantizer,
        }
    }

    /// `"conv"` or `"linear"`.
    pub fn kind(&self) -> &'static str {
        match self {
            WeightLayer::Conv(_) => "conv",
            WeightLayer::Linear(_) => "linear",
        }
    }

    /// The id of the layer's weight parameter.
    pub fn weight_id(&self) -> burn::module::ParamId {
        match self {
            WeightLayer::Conv(c) => c.conv.weight.id,
            WeightLayer::Linear(l) => l.linear.weight.id,
        }
    }

    /// The layer's (latent, full-precision) weight, flattened.
    pub fn weight(&self) -> Tensor<B, 1> {
        match self {
            WeightLayer::Conv(c) => c.conv.weight.val().flatten(0, 3),
            WeightLayer::Linear(l) => l.linear.weight.val().flatten(0, 1),
        }
    }

    /// The weight quantizer's level codes of the weight ([`Quantizer::codes`], in the weight's
    /// own shape, so per-channel scales find their channels); `None` for a full-precision layer.
    pub fn codes(&self) -> Option<quantnet_burn::Result<quantnet_burn::Codes>>
    where
        B: QuantBackend,
    {
        match self {
            WeightLayer::Conv(c) => c.quantizer.as_ref().map(|q| q.codes(c.conv.weight.val())),
            WeightLayer::Linear(l) => l.quantizer.as_ref().map(|q| q.codes(l.linear.weight.val())),
        }
    }

    /// The fraction of the weight at each level ([`Quantizer::occupancy`]); `None` for a
    /// full-precision layer.
    pub fn occupancy(&self) -> Option<quantnet_burn::Result<Vec<f32>>>
    where
        B: QuantBackend,
    {
        match self {
            WeightLayer::Conv(c) => {
                (c.quantizer.as_ref()).map(|q| q.occupancy(c.conv.weight.val()))
            }
            WeightLayer::Linear(l) => {
                (l.quantizer.as_ref()).map(|q| q.occupancy(l.linear.weight.val()))
            }
        }
    }

    /// The weight in the quantizer's threshold domain, `β·w` (`β_c·w` per channel), flattened;
    /// `None` for a full-precision layer.
    pub fn normalised_weight(&self) -> Option<Tensor<B, 1>>
    where
        B: QuantBackend,
    {
        match self {
            WeightLayer::Conv(c) => {
                (c.quantizer.as_ref()).map(|q| q.normalised(c.conv.weight.val()).flatten(0, 3))
            }
            WeightLayer::Linear(l) => {
                (l.quantizer.as_ref()).map(|q| q.normalised(l.linear.weight.val()).flatten(0, 1))
            }
        }
    }

    /// The weight's shape.
    pub fn weight_shape(&self) -> Vec<usize> {
        match self {
            WeightLayer::Conv(c) => c.conv.weight.dims().to_vec(),
            WeightLayer::Linear(l) => l.linear.weight.dims().to_vec(),
        }
    }

    /// Sets the layer's quantizer from its current weights (see
    /// `QuantLinear::quantize_from_weights`).
    ///
    /// # Errors
    /// As `QuantizerConfig::init_from_data`.
    pub fn quantize_from_weights(
        &mut self,
        config: &quantnet_burn::QuantizerConfig,
        temperature: &quantnet_burn::Temperature,
    ) -> quantnet_burn::Result<()> {
        match self {
            WeightLayer::Conv(c) => c.quantize_from_weights(config, temperature),
            WeightLayer::Linear(l) => l.quantize_from_weights(config, temperature),
        }
    }

    /// Replaces the float layer by its Burn-native copy (its weight as Burn's own quantized
    /// tensor) and takes the quantizer out; returns the quantizer and the weight's size, or
    /// `None` for a full-precision layer (left as it is).
    ///
    /// # Errors
    /// As `QuantLinear::to_native` (a level set Burn cannot hold).
    pub fn make_native(&mut self) -> quantnet_burn::Result<Option<(Quantizer<B>, usize)>>
    where
        B: QuantBackend,
    {
        let values = self.weight_shape().iter().product();
        let quantizer = match self {
            WeightLayer::Conv(c) if c.quantizer.is_some() => {
                c.conv = c.to_native()?;
                c.quantizer.take()
            }
            WeightLayer::Linear(l) if l.quantizer.is_some() => {
                l.linear = l.to_native()?;
                l.quantizer.take()
            }
            _ => None,
        };
        Ok(quantizer.map(|q| (q, values)))
    }

    /// Initialises lazily initialised parameters now (see `QuantLinear::materialise`).
    pub(crate) fn materialise(&self) {
        match self {
            WeightLayer::Conv(c) => c.materialise(),
            WeightLayer::Linear(l) => l.materialise(),
        }
    }
}

/// A model the recipe's parts can quantize: any Burn module built from [`QuantConv2d`],
/// [`QuantLinear`] and [`QuantAct`] that lists them in forward order. This is all the parts
/// need ([`crate::quantize::quantize_weights`], [`crate::quantize::calibrate_acts_by`],
/// [`crate::train::QatStep`], [`crate::train::quantizer_scale_ids`]): the model keeps its own
/// inputs, outputs, loss and training step. The whole recipe ([`crate::qat::Qat`]) trains
/// image models, which also say how images go through them ([`ImageModel`]). A user's model
/// derives it from its fields (`#[derive(QatModel)]`: every `QuantConv2d`, `QuantLinear` and
/// `QuantAct` field, arrays, `Vec`s and `Option`s of them, and sub-models marked
/// `#[qat(nested)]`, in declaration order; see [`quantnet_derive`]):
///
/// ```
/// use burn::module::Module;
/// use burn::tensor::backend::Backend;
/// use quantnet_burn::nn::{QuantAct, QuantLinear};
/// use quantnet_models::models::QatModel;
///
/// #[derive(Module, QatModel, Debug)]
/// struct Mlp<B: Backend> {
///     fc1: QuantLinear<B>,
///     act1: QuantAct<B>,
///     fc2: QuantLinear<B>,
/// }
/// ```
///
/// or lists its slots in one short `impl`, which may also choose the layers kept full precision
/// ([`QatModel::float_layers`]):
///
/// ```
/// use burn::module::Module;
/// use burn::tensor::{Tensor, backend::Backend};
/// use quantnet_burn::QuantBackend;
/// use quantnet_burn::nn::{QuantAct, QuantLinear};
/// use quantnet_models::models::{ImageModel, QatModel, Slots};
///
/// #[derive(Module, Debug)]
/// struct Mlp<B: Backend> {
///     fc1: QuantLinear<B>,
///     act1: QuantAct<B>,
///     fc2: QuantLinear<B>,
/// }
///
/// impl<B: Backend> QatModel<B> for Mlp<B> {
///     fn slots(&mut self) -> Slots<'_, B> {
///         Slots::new()
///             .with_linear("fc1", &mut self.fc1)
///             .with_act("act1", &mut self.act1)
///             .with_linear("fc2", &mut self.fc2)
///     }
/// }
///
/// // Only for the whole recipe (`Qat::run`), which feeds it images.
/// impl<B: Backend> ImageModel<B> for Mlp<B> {
///     fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
///     where
///         B: QuantBackend,
///     {
///         let x = images.flatten(1, 3);
///         let x = self.act1.forward(burn::tensor::activation::relu(self.fc1.forward(x)));
///         self.fc2.forward(x)
///     }
/// }
/// ```
pub trait QatModel<B: Backend>: Module<B> + burn::module::ModuleDisplay + 'static {
    /// The model's weight layers and activation slots, in forward order (the precision policy
    /// keeps the first and the last weight layer full precision).
    fn slots(&mut self) -> Slots<'_, B>;

    /// The weight layers (indices into [`QatModel::slots`]' weights, of `n`) that the precision
    /// policy keeps full precision unless it quantizes everything: by default the first and the
    /// last, as the paper does for classifiers.
    fn float_layers(&self, n: usize) -> Vec<usize> {
        vec![0, n.saturating_sub(1)]
    }
}

/// A [`QatModel`] that takes images: what the whole recipe ([`crate::qat::Qat`]) pretrains,
/// calibrates on image batches and trains as a classifier (the detectors' training too). The
/// models of this crate implement it ([`Model`]).
pub trait ImageModel<B: Backend>: QatModel<B> {
    /// Class scores (a detector: its raw outputs, one row per image).
    ///
    /// # Shapes
    /// `[batch, channels, height, width] -> [batch, classes]`.
    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: QuantBackend;
}

/// An [`ImageModel`] on the inner backend of `B` whose autodiff twin (Burn's module derive
/// makes it) is one too: what the recipe trains. Implemented for every such model.
pub trait QatTrainModel<B: QatBackend>:
    ImageModel<B::InnerBackend> + burn::module::HasAutodiffModule<B, TrainModule: ImageModel<B>>
{
}

impl<B: QatBackend, M> QatTrainModel<B> for M
where
    M: ImageModel<B::InnerBackend> + burn::module::HasAutodiffModule<B>,
    M::TrainModule: ImageModel<B>,
{
}

/// Whether `module` holds a Burn batch-norm layer (the recipe re-estimates their statistics for
/// the quantized network).
pub fn has_batch_norm<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Finder(bool);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Finder {
        fn enter_module(&mut self, _name: &str, container_type: &str) {
            self.0 |= container_type.starts_with("Struct:BatchNorm");
        }
    }
    let mut finder = Finder(false);
    module.visit(&mut finder);
    finder.0
}

/// The quantizable places of a model: weight layers and activation slots, in forward order.
#[derive(Debug)]
pub struct Slots<'a, B: Backend> {
    /// Weight layers (name, layer).
    pub weights: Vec<(String, WeightLayer<'a, B>)>,
    /// Activation-quantizer slots (name, slot).
    pub acts: Vec<(String, &'a mut QuantAct<B>)>,
}

impl<B: Backend> Default for Slots<'_, B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, B: Backend> Slots<'a, B> {
    /// No slots.
    pub fn new() -> Self {
        Self {
            weights: Vec::new(),
            acts: Vec::new(),
        }
    }

    /// Adds a convolution (builder form of [`Slots::conv`]).
    pub fn with_conv(mut self, name: impl Into<String>, layer: &'a mut QuantConv2d<B>) -> Self {
        self.conv(name, layer);
        self
    }

    /// Adds a linear layer.
    pub fn with_linear(mut self, name: impl Into<String>, layer: &'a mut QuantLinear<B>) -> Self {
        self.linear(name, layer);
        self
    }

    /// Adds an activation slot.
    pub fn with_act(mut self, name: impl Into<String>, slot: &'a mut QuantAct<B>) -> Self {
        self.act(name, slot);
        self
    }

    /// Adds a convolution.
    pub fn conv(&mut self, name: impl Into<String>, layer: &'a mut QuantConv2d<B>) {
        self.weights.push((name.into(), WeightLayer::Conv(layer)));
    }

    /// Adds a linear layer.
    pub fn linear(&mut self, name: impl Into<String>, layer: &'a mut QuantLinear<B>) {
        self.weights.push((name.into(), WeightLayer::Linear(layer)));
    }

    /// Adds an activation slot.
    pub fn act(&mut self, name: impl Into<String>, slot: &'a mut QuantAct<B>) {
        self.acts.push((name.into(), slot));
    }

    /// Adds a sub-model's slots, each name prefixed with `prefix.` (what `#[qat(nested)]` of
    /// `#[derive(QatModel)]` writes).
    pub fn nest(&mut self, prefix: impl Into<String>, inner: Slots<'a, B>) {
        let prefix = prefix.into();
        let named = |name: String| format!("{prefix}.{name}");
        (self.weights).extend(inner.weights.into_iter().map(|(n, w)| (named(n), w)));
        (self.acts).extend(inner.acts.into_iter().map(|(n, a)| (named(n), a)));
    }

    /// Every quantizer that is set, weights first.
    pub fn quantizers(self) -> impl Iterator<Item = &'a mut Quantizer<B>> {
        let weights = self.weights.into_iter().filter_map(|(_, w)| match w {
            WeightLayer::Conv(c) => c.quantizer.as_mut(),
            WeightLayer::Linear(l) => l.quantizer.as_mut(),
        });
        let acts = self
            .acts
            .into_iter()
            .filter_map(|(_, a)| a.quantizer.as_mut());
        weights.chain(acts)
    }
}

/// Any of the models.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Model<B: Backend> {
    /// LeNet-5.
    Lenet5(Lenet5<B>),
    /// TFC, SFC, LFC.
    Fc(FcNet<B>),
    /// VGG-small.
    VggSmall(VggSmall<B>),
    /// ResNet-20, -18, -50.
    ResNet(ResNet<B>),
    /// AlexNet with batch norm.
    AlexNetBn(AlexNetBn<B>),
    /// An SSD detector.
    Ssd(crate::detect::Ssd<B>),
}

impl<B: Backend> Model<B> {
    /// A full-precision `arch` for `input`, randomly initialised.
    pub fn new(arch: Arch, input: InputShape, device: &B::Device) -> Self {
        match arch {
            Arch::Lenet5 => Model::Lenet5(Lenet5::new(input, device)),
            Arch::Tfc => Model::Fc(FcNet::new(input, 64, device)),
            Arch::Sfc => Model::Fc(FcNet::new(input, 256, device)),
            Arch::Lfc => Model::Fc(FcNet::new(input, 1024, device)),
            Arch::VggSmall => Model::VggSmall(VggSmall::new(input, device)),
            Arch::Resnet20 => Model::ResNet(ResNet::resnet20(input, device)),
            Arch::Resnet18 => Model::ResNet(ResNet::resnet18(input, device)),
            Arch::Resnet50 => Model::ResNet(ResNet::resnet50(input, device)),
            Arch::AlexnetBn => Model::AlexNetBn(AlexNetBn::new(input, device)),
            Arch::SsdSmall => Model::Ssd(crate::detect::Ssd::new(
                crate::detect::SsdKind::Small,
                input,
                device,
            )),
            Arch::Ssd300 => Model::Ssd(crate::detect::Ssd::new(
                crate::detect::SsdKind::Ssd300,
                input,
                device,
            )),
        }
    }

    /// Whether the model has batch-norm layers (see [`has_batch_norm`]).
    pub fn has_batch_norm(&self) -> bool {
        has_batch_norm(self)
    }

    /// The model's weight layers and activation slots, in forward order.
    pub fn slots(&mut self) -> Slots<'_, B> {
        let mut slots = Slots::new();
        match self {
            Model::Lenet5(m) => m.slots(&mut slots),
            Model::Fc(m) => m.slots(&mut slots),
            Model::VggSmall(m) => m.slots(&mut slots),
            Model::ResNet(m) => m.slots(&mut slots),
            Model::AlexNetBn(m) => m.slots(&mut slots),
            Model::Ssd(m) => m.slots(&mut slots),
        }
        slots
    }
}

impl<B: QuantBackend> Model<B> {
    /// Class scores.
    ///
    /// # Shapes
    /// `[batch, channels, height, width] -> [batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Model::Lenet5(m) => m.forward(x),
            Model::Fc(m) => m.forward(x),
            Model::VggSmall(m) => m.forward(x),
            Model::ResNet(m) => m.forward(x),
            Model::AlexNetBn(m) => m.forward(x),
            Model::Ssd(m) => m.forward(x),
        }
    }
}

impl<B: Backend> QatModel<B> for Model<B> {
    fn slots(&mut self) -> Slots<'_, B> {
        Model::slots(self)
    }

    fn float_layers(&self, n: usize) -> Vec<usize> {
        match self {
            Model::Ssd(m) => m.float_layers(),
            _ => vec![0, n.saturating_sub(1)],
        }
    }
}

impl<B: Backend> ImageModel<B> for Model<B> {
    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2>
    where
        B: QuantBackend,
    {
        Model::forward(self, images)
    }
}

/// A full-precision `k×k` convolution slot (Burn's default initialisation).
pub(crate) fn conv<B: Backend>(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
    device: &B::Device,
) -> QuantConv2d<B> {
    QuantConv2d::float(
        burn::nn::conv::Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(burn::nn::PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .init(device),
    )
}

/// A full-precision linear slot (Burn's default initialisation).
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> QuantLinear<B> {
    QuantLinear::float(
        burn::nn::LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .init(device),
    )
}
