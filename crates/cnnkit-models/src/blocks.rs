//! Building blocks shared by the zoo, named as in torchvision so state_dict keys match:
//! `Conv2dNormActivation` (a Sequential conv → norm → activation), `NamedSequential`
//! (an `nn.Sequential(OrderedDict)`), `SqueezeExcitation`, `StochasticDepth`, and the
//! torchvision weight-initialisation rules.

use cnnkit_core::random::with_default_generator;
use cnnkit_core::{DType, Error, Result, Tensor};
use cnnkit_nn::graph::{GraphBuilder, GraphOp};
use cnnkit_nn::init::{self, FanMode, Nonlinearity};
use cnnkit_nn::{
    AdaptiveAvgPool2d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, Hardsigmoid, Hardswish, Module, ModuleExt, ReLU, ReLU6,
    Sequential, SiLU, Sigmoid,
};
use std::sync::atomic::{AtomicBool, Ordering};

/// torchvision's `_make_divisible`: rounds `v` to the nearest multiple of `divisor`, never
/// going below 90% of `v` (MobileNet channel counts).
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// The activation after a conv block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
    Hardswish,
    Silu,
}

impl Act {
    pub fn layer(self) -> Option<Box<dyn Module>> {
        match self {
            Act::None => None,
            Act::Relu => Some(Box::new(ReLU::default())),
            Act::Relu6 => Some(Box::new(ReLU6::default())),
            Act::Hardswish => Some(Box::new(Hardswish::default())),
            Act::Silu => Some(Box::new(SiLU::default())),
        }
    }
}

/// torchvision's `Conv2dNormActivation`: Conv2d(k, stride, padding (k−1)/2·dilation, groups,
/// bias=False) → BatchNorm2d → activation, as a Sequential with children "0", "1", "2".
/// x: (N, in, H, W) → (N, out, H/stride, W/stride).
pub fn conv_norm_act(inp: usize, out: usize, k: usize, stride: usize, groups: usize, bn: BatchNormConfig, act: Act) -> Result<Sequential> {
    conv_norm_act_dilated(inp, out, k, stride, groups, 1, bn, act)
}

#[allow(clippy::too_many_arguments)]
pub fn conv_norm_act_dilated(
    inp: usize,
    out: usize,
    k: usize,
    stride: usize,
    groups: usize,
    dilation: usize,
    bn: BatchNormConfig,
    act: Act,
) -> Result<Sequential> {
    let conv = Conv2d::new(
        Conv2dConfig::new(inp, out, k).stride(stride).padding((k - 1) / 2 * dilation).dilation(dilation).groups(groups).bias(false),
    )?;
    let mut s = Sequential::new().add(conv).add(BatchNorm2d::new_2d_with(out, bn)?);
    if let Some(a) = act.layer() {
        s.push(a);
    }
    Ok(s)
}

/// BatchNorm2d with torchvision's defaults (eps 1e-5, momentum 0.1).
pub fn bn_default() -> BatchNormConfig {
    BatchNormConfig::default()
}

/// `nn.Sequential(OrderedDict([...]))`: runs its children in order under their own names
/// ("conv0", "norm0", "denseblock1", …).
#[derive(Default)]
pub struct NamedSequential {
    pub layers: Vec<(String, Box<dyn Module>)>,
}

impl NamedSequential {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, name: &str, m: impl Module + 'static) {
        self.layers.push((name.to_string(), Box::new(m)));
    }
}

impl Module for NamedSequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (_, l) in &self.layers {
            h = l.as_ref().call(&h)?;
        }
        Ok(h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.iter().map(|(n, l)| (n.clone(), l.as_ref())).collect()
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let mut h = x.to_string();
        for (n, l) in &self.layers {
            h = g.module(n, l.as_ref(), &h)?;
        }
        Ok(h)
    }
    fn describe(&self) -> String {
        "Sequential".into()
    }
}

/// torchvision's `SqueezeExcitation` (Hu et al. 2018): x · scale(fc2(act(fc1(avgpool(x))))),
/// fc1/fc2 being 1×1 convolutions with bias. MobileNetV3 uses ReLU + Hardsigmoid,
/// EfficientNet SiLU + Sigmoid. x: (N, C, H, W) → same shape.
pub struct SqueezeExcitation {
    pub avgpool: AdaptiveAvgPool2d,
    pub fc1: Conv2d,
    pub fc2: Conv2d,
    pub activation: Box<dyn Module>,
    pub scale_activation: Box<dyn Module>,
}

impl SqueezeExcitation {
    /// `hard`: MobileNetV3's ReLU + Hardsigmoid; otherwise EfficientNet's SiLU + Sigmoid.
    pub fn new(input_channels: usize, squeeze_channels: usize, hard: bool) -> Result<Self> {
        let (activation, scale_activation): (Box<dyn Module>, Box<dyn Module>) = if hard {
            (Box::new(ReLU::default()), Box::new(Hardsigmoid::default()))
        } else {
            (Box::new(SiLU::default()), Box::new(Sigmoid::default()))
        };
        Ok(SqueezeExcitation {
            avgpool: AdaptiveAvgPool2d::new((1, 1)),
            fc1: Conv2d::new(Conv2dConfig::new(input_channels, squeeze_channels, 1))?,
            fc2: Conv2d::new(Conv2dConfig::new(squeeze_channels, input_channels, 1))?,
            activation,
            scale_activation,
        })
    }
    /// The per-channel scale. x: (N, C, H, W) → (N, C, 1, 1).
    pub fn scale(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.avgpool.call(x)?;
        let s = self.activation.call(&self.fc1.call(&s)?)?;
        self.scale_activation.call(&self.fc2.call(&s)?)
    }
}

impl Module for SqueezeExcitation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.scale(x)?.mul(x)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let s = g.module("avgpool", &self.avgpool, x)?;
        let s = g.module("fc1", &self.fc1, &s)?;
        let s = g.module("activation", self.activation.as_ref(), &s)?;
        let s = g.module("fc2", &self.fc2, &s)?;
        let s = g.module("scale_activation", self.scale_activation.as_ref(), &s)?;
        g.node(GraphOp::Mul, &[&s, x])
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("avgpool".into(), &self.avgpool as &dyn Module),
            ("fc1".into(), &self.fc1),
            ("fc2".into(), &self.fc2),
            ("activation".into(), self.activation.as_ref()),
            ("scale_activation".into(), self.scale_activation.as_ref()),
        ]
    }
}

/// torchvision's `StochasticDepth(p, "row")` (Huang et al. 2016): in training, zeroes each
/// sample's residual branch with probability p and scales survivors by 1/(1−p); identity in
/// eval. x: (N, …) → same shape.
pub struct StochasticDepth {
    pub p: f64,
    training: AtomicBool,
}

impl StochasticDepth {
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("StochasticDepth", format!("drop probability has to be between 0 and 1, but got {p}")));
        }
        Ok(StochasticDepth { p, training: AtomicBool::new(true) })
    }
}

impl Module for StochasticDepth {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training.load(Ordering::Relaxed) || self.p == 0.0 {
            return Ok(x.clone());
        }
        let survival = 1.0 - self.p;
        let mut shape = vec![1; x.ndim()];
        shape[0] = x.shape()[0];
        let keep = Tensor::full(&shape, survival, x.dtype()).bernoulli()?;
        let keep = if survival > 0.0 { keep.mul_scalar(1.0 / survival)? } else { keep };
        x.mul(&keep)
    }
    fn set_own_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
    /// Eval mode: the identity.
    fn to_graph(&self, _g: &mut GraphBuilder, x: &str) -> Result<String> {
        Ok(x.to_string())
    }
    fn describe(&self) -> String {
        format!("StochasticDepth(p={}, mode=row)", self.p)
    }
}

/// How `init_weights` fills conv and linear weights (biases always become 0, BatchNorm
/// weights 1): the rules in torchvision's model constructors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConvInit {
    /// kaiming_normal_(mode="fan_out", nonlinearity="relu") (ResNet, VGG, MobileNet, EfficientNet).
    KaimingNormalFanOut,
    /// kaiming_normal_() with fan_in (DenseNet).
    KaimingNormalFanIn,
    /// Leave PyTorch's default.
    Default,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinearInit {
    /// normal_(0, std) (VGG 0.01, MobileNet 0.01).
    Normal(f64),
    /// uniform_(±1/√out_features) (EfficientNet).
    UniformOut,
    /// Leave PyTorch's default (ResNet, DenseNet).
    Default,
}

/// Applies torchvision's per-model initialisation by parameter rank: 4-D weights are conv
/// kernels, 2-D weights linear layers, 1-D weights norm scales (set to 1); a bias becomes 0
/// (norm biases always; conv and linear biases when their rule is not `Default`).
pub fn init_weights(m: &dyn Module, conv: ConvInit, linear: LinearInit) -> Result<()> {
    let params = m.named_parameters();
    // A bias follows the rule of its layer, told apart by the rank of the sibling weight.
    let weight_rank = |bias_name: &str| -> usize {
        let w = format!("{}weight", bias_name.strip_suffix("bias").unwrap_or(""));
        params.iter().find(|(n, _)| *n == w).map_or(0, |(_, t)| t.ndim())
    };
    with_default_generator(|g| {
        for (name, p) in &params {
            if name.ends_with("bias") {
                let rule_set = match weight_rank(name) {
                    4 => conv != ConvInit::Default,
                    2 => linear != LinearInit::Default,
                    _ => true,
                };
                if rule_set {
                    init::zeros_(p)?;
                }
                continue;
            }
            match p.ndim() {
                4 => match conv {
                    ConvInit::KaimingNormalFanOut => init::kaiming_normal_with(p, 0.0, FanMode::FanOut, Nonlinearity::Relu, g)?,
                    ConvInit::KaimingNormalFanIn => init::kaiming_normal_with(p, 0.0, FanMode::FanIn, Nonlinearity::Relu, g)?,
                    ConvInit::Default => {}
                },
                2 => match linear {
                    LinearInit::Normal(std) => init::normal_with(p, 0.0, std, g)?,
                    LinearInit::UniformOut => {
                        let r = 1.0 / (p.shape()[0] as f64).sqrt();
                        init::uniform_with(p, -r, r, g)?
                    }
                    LinearInit::Default => {}
                },
                1 => init::ones_(p)?,
                _ => {}
            }
        }
        Ok(())
    })
}

/// features → adaptive average pool → flatten → classifier: the layout of torchvision's
/// AlexNet, VGG, MobileNet and EfficientNet (constructors in vgg.rs, mobilenet.rs,
/// efficientnet.rs). x: (N, C, H, W) → logits (N, num_classes).
pub struct FeaturesClassifier {
    pub features: Sequential,
    pub avgpool: AdaptiveAvgPool2d,
    pub classifier: Sequential,
    name: &'static str,
    in_channels: usize,
}

impl FeaturesClassifier {
    /// `name` is the torchvision class name, used in errors and `describe`.
    pub fn from_parts(
        name: &'static str,
        in_channels: usize,
        features: Sequential,
        avgpool: AdaptiveAvgPool2d,
        classifier: Sequential,
    ) -> Self {
        FeaturesClassifier { features, avgpool, classifier, name, in_channels }
    }

    /// Flattened pooled features before the classifier: x (N, C, H, W) → (N, F).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        check_input(self.name, x, self.in_channels)?;
        self.avgpool.call(&self.features.call(x)?)?.flatten(1, -1)
    }
}

impl Module for FeaturesClassifier {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.classifier.call(&self.features(x)?)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("features", &self.features, x)?;
        let h = g.module("avgpool", &self.avgpool, &h)?;
        let h = g.node(GraphOp::Flatten { axis: 1 }, &[&h])?;
        g.module("classifier", &self.classifier, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("features".into(), &self.features as &dyn Module), ("avgpool".into(), &self.avgpool), ("classifier".into(), &self.classifier)]
    }
    fn describe(&self) -> String {
        self.name.into()
    }
}

/// Checks an input is (N, C, H, W) with the channel count the model was built for.
pub fn check_input(model: &'static str, x: &Tensor, channels: usize) -> Result<()> {
    if x.ndim() != 4 || x.shape()[1] != channels {
        return Err(Error::bad_shape(model, x.shape(), format!("expected an (N, {channels}, H, W) input")));
    }
    if x.dtype() != DType::F32 && x.dtype() != DType::F64 {
        return Err(Error::DType { op: model, got: x.dtype(), expected: "float32 or float64" });
    }
    Ok(())
}
