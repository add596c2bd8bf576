//! SqueezeNet 1.1 (Iandola et al. 2016; the torchvision variant with 3×3 stem and early
//! pooling): Fire modules = 1×1 squeeze, then parallel 1×1 and 3×3 expands concatenated.

use crate::blocks::check_input;
use cnnkit_core::random::with_default_generator;
use cnnkit_core::{Result, Tensor};
use cnnkit_nn::graph::{GraphBuilder, GraphOp};
use cnnkit_nn::init::{self, FanMode, Nonlinearity};
use cnnkit_nn::{AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Dropout, MaxPool2d, Module, ModuleExt, ReLU, Sequential};

/// x: (N, inplanes, H, W) → (N, e1 + e3, H, W).
pub struct Fire {
    pub squeeze: Conv2d,
    pub expand1x1: Conv2d,
    pub expand3x3: Conv2d,
}

impl Fire {
    pub fn new(inplanes: usize, squeeze: usize, e1: usize, e3: usize) -> Result<Self> {
        Ok(Fire {
            squeeze: Conv2d::new(Conv2dConfig::new(inplanes, squeeze, 1))?,
            expand1x1: Conv2d::new(Conv2dConfig::new(squeeze, e1, 1))?,
            expand3x3: Conv2d::new(Conv2dConfig::new(squeeze, e3, 3).padding(1))?,
        })
    }
}

impl Module for Fire {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.squeeze.call(x)?.relu()?;
        Tensor::cat(&[self.expand1x1.call(&s)?.relu()?, self.expand3x3.call(&s)?.relu()?], 1)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let s = g.module("squeeze", &self.squeeze, x)?;
        let s = g.node(GraphOp::Relu, &[&s])?;
        let e1 = g.module("expand1x1", &self.expand1x1, &s)?;
        let e1 = g.node(GraphOp::Relu, &[&e1])?;
        let e3 = g.module("expand3x3", &self.expand3x3, &s)?;
        let e3 = g.node(GraphOp::Relu, &[&e3])?;
        g.node(GraphOp::Concat { axis: 1 }, &[&e1, &e3])
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("squeeze".into(), &self.squeeze as &dyn Module), ("expand1x1".into(), &self.expand1x1), ("expand3x3".into(), &self.expand3x3)]
    }
}

/// torchvision's `squeezenet1_1`. x: (N, C, H, W) → logits (N, num_classes); the classifier
/// is a 1×1 conv + ReLU + global average pool, so logits are ≥ 0 as in torchvision.
pub struct SqueezeNet {
    pub features: Sequential,
    pub classifier: Sequential,
    in_channels: usize,
}

impl SqueezeNet {
    pub fn v1_1(in_channels: usize, num_classes: usize) -> Result<Self> {
        let pool = || MaxPool2d::new(3).stride(2).ceil_mode(true);
        let features = Sequential::new()
            .add(Conv2d::new(Conv2dConfig::new(in_channels, 64, 3).stride(2))?)
            .add(ReLU::default())
            .add(pool())
            .add(Fire::new(64, 16, 64, 64)?)
            .add(Fire::new(128, 16, 64, 64)?)
            .add(pool())
            .add(Fire::new(128, 32, 128, 128)?)
            .add(Fire::new(256, 32, 128, 128)?)
            .add(pool())
            .add(Fire::new(256, 48, 192, 192)?)
            .add(Fire::new(384, 48, 192, 192)?)
            .add(Fire::new(384, 64, 256, 256)?)
            .add(Fire::new(512, 64, 256, 256)?);
        let final_conv = Conv2d::new(Conv2dConfig::new(512, num_classes, 1))?;
        // torchvision: final conv ~ N(0, 0.01), other convs kaiming_uniform, all biases 0.
        with_default_generator(|g| -> Result<()> {
            init::normal_with(&final_conv.weight, 0.0, 0.01, g)?;
            for (name, p) in features.named_parameters() {
                if name.ends_with("weight") {
                    init::kaiming_uniform_with(&p, 0.0, FanMode::FanIn, Nonlinearity::Relu, g)?;
                } else {
                    init::zeros_(&p)?;
                }
            }
            Ok(())
        })?;
        if let Some(b) = &final_conv.bias {
            init::zeros_(b)?;
        }
        let classifier = Sequential::new().add(Dropout::new(0.5)?).add(final_conv).add(ReLU::default()).add(AdaptiveAvgPool2d::new((1, 1)));
        Ok(SqueezeNet { features, classifier, in_channels })
    }
}

impl Module for SqueezeNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_input("SqueezeNet", x, self.in_channels)?;
        self.classifier.call(&self.features.call(x)?)?.flatten(1, -1)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("features", &self.features, x)?;
        let h = g.module("classifier", &self.classifier, &h)?;
        g.node(GraphOp::Flatten { axis: 1 }, &[&h])
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("features".into(), &self.features as &dyn Module), ("classifier".into(), &self.classifier)]
    }
}
