//! MobileNetV2 (Sandler et al. 2018) and MobileNetV3 (Howard et al. 2019) as torchvision
//! builds them: `features` (Conv2dNormActivation stem, inverted residual blocks, 1×1 head
//! conv), global average pool, `classifier`. Depthwise convolutions are Conv2d with
//! groups = channels.

use crate::blocks::SqueezeExcitation;
use crate::blocks::{bn_default, conv_norm_act, conv_norm_act_dilated, init_weights, make_divisible, Act, ConvInit, LinearInit};
use cnnkit_core::{Result, Tensor};
use cnnkit_nn::graph::{GraphBuilder, GraphOp};
use cnnkit_nn::{
    AdaptiveAvgPool2d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, Dropout, Hardswish, Linear, Module, ModuleExt, Sequential,
};

/// MobileNetV2's block: [1×1 expand → ReLU6] → 3×3 depthwise → ReLU6 → 1×1 linear project,
/// plus the input when stride 1 and channels match. Children: `conv` (a Sequential).
/// x: (N, inp, H, W) → (N, oup, H/stride, W/stride).
pub struct InvertedResidual {
    pub conv: Sequential,
    pub use_res_connect: bool,
}

impl InvertedResidual {
    pub fn new(inp: usize, oup: usize, stride: usize, expand_ratio: usize) -> Result<Self> {
        let hidden = inp * expand_ratio;
        let mut conv = Sequential::new();
        if expand_ratio != 1 {
            conv.push(Box::new(conv_norm_act(inp, hidden, 1, 1, 1, bn_default(), Act::Relu6)?));
        }
        conv.push(Box::new(conv_norm_act(hidden, hidden, 3, stride, hidden, bn_default(), Act::Relu6)?));
        conv.push(Box::new(Conv2d::new(Conv2dConfig::new(hidden, oup, 1).bias(false))?));
        conv.push(Box::new(BatchNorm2d::new_2d(oup)?));
        Ok(InvertedResidual { conv, use_res_connect: stride == 1 && inp == oup })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv.call(x)?;
        if self.use_res_connect {
            x.add(&y)
        } else {
            Ok(y)
        }
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let y = g.module("conv", &self.conv, x)?;
        if self.use_res_connect {
            g.node(GraphOp::Add, &[x, &y])
        } else {
            Ok(y)
        }
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv".into(), &self.conv as &dyn Module)]
    }
}

/// torchvision's MobileNetV2 / V3: features → global average pool → classifier.
pub type MobileNet = crate::blocks::FeaturesClassifier;

impl crate::blocks::FeaturesClassifier {
    /// torchvision's `mobilenet_v2(width_mult=1.0)`; dropout 0.2 before the classifier.
    pub fn v2(in_channels: usize, num_classes: usize) -> Result<Self> {
        Self::v2_width(in_channels, num_classes, 1.0)
    }

    pub fn v2_width(in_channels: usize, num_classes: usize, width_mult: f64) -> Result<Self> {
        // (expand ratio t, channels c, repeats n, first stride s), from the paper's Table 2.
        const SETTING: [(usize, usize, usize, usize); 7] =
            [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
        let mut input_channel = make_divisible(32.0 * width_mult, 8);
        let last_channel = make_divisible(1280.0 * width_mult.max(1.0), 8);
        let mut features = Sequential::new().add(conv_norm_act(in_channels, input_channel, 3, 2, 1, bn_default(), Act::Relu6)?);
        for (t, c, n, s) in SETTING {
            let out = make_divisible(c as f64 * width_mult, 8);
            for i in 0..n {
                features.push(Box::new(InvertedResidual::new(input_channel, out, if i == 0 { s } else { 1 }, t)?));
                input_channel = out;
            }
        }
        features.push(Box::new(conv_norm_act(input_channel, last_channel, 1, 1, 1, bn_default(), Act::Relu6)?));
        let classifier = Sequential::new().add(Dropout::new(0.2)?).add(Linear::new(last_channel, num_classes)?);
        let m = MobileNet::from_parts("MobileNetV2", in_channels, features, AdaptiveAvgPool2d::new((1, 1)), classifier);
        init_weights(&m, ConvInit::KaimingNormalFanOut, LinearInit::Normal(0.01))?;
        Ok(m)
    }

    /// torchvision's `mobilenet_v3_large` / `mobilenet_v3_small` (width 1.0, no dilation).
    pub fn v3(large: bool, in_channels: usize, num_classes: usize) -> Result<Self> {
        // (input, kernel, expanded, out, use_se, use_hardswish, stride), torchvision's
        // _mobilenet_v3_conf (the paper's Tables 1 and 2).
        #[rustfmt::skip]
        const LARGE: [(usize, usize, usize, usize, bool, bool, usize); 15] = [
            (16, 3, 16, 16, false, false, 1), (16, 3, 64, 24, false, false, 2), (24, 3, 72, 24, false, false, 1),
            (24, 5, 72, 40, true, false, 2), (40, 5, 120, 40, true, false, 1), (40, 5, 120, 40, true, false, 1),
            (40, 3, 240, 80, false, true, 2), (80, 3, 200, 80, false, true, 1), (80, 3, 184, 80, false, true, 1),
            (80, 3, 184, 80, false, true, 1), (80, 3, 480, 112, true, true, 1), (112, 3, 672, 112, true, true, 1),
            (112, 5, 672, 160, true, true, 2), (160, 5, 960, 160, true, true, 1), (160, 5, 960, 160, true, true, 1),
        ];
        #[rustfmt::skip]
        const SMALL: [(usize, usize, usize, usize, bool, bool, usize); 11] = [
            (16, 3, 16, 16, true, false, 2), (16, 3, 72, 24, false, false, 2), (24, 3, 88, 24, false, false, 1),
            (24, 5, 96, 40, true, true, 2), (40, 5, 240, 40, true, true, 1), (40, 5, 240, 40, true, true, 1),
            (40, 5, 120, 48, true, true, 1), (48, 5, 144, 48, true, true, 1), (48, 5, 288, 96, true, true, 2),
            (96, 5, 576, 96, true, true, 1), (96, 5, 576, 96, true, true, 1),
        ];
        let (conf, last_channel): (&[_], usize) = if large { (&LARGE, 1280) } else { (&SMALL, 1024) };
        // torchvision's V3 BatchNorm: eps 0.001, momentum 0.01.
        let bn = || BatchNormConfig { eps: 0.001, momentum: Some(0.01), ..BatchNormConfig::default() };
        let mut features = Sequential::new().add(conv_norm_act(in_channels, 16, 3, 2, 1, bn(), Act::Hardswish)?);
        for &(inp, k, exp, out, se, hs, stride) in conf {
            features.push(Box::new(V3Block::new(inp, k, exp, out, se, if hs { Act::Hardswish } else { Act::Relu }, stride, bn)?));
        }
        let last_in = conf[conf.len() - 1].3;
        let last_out = 6 * last_in;
        features.push(Box::new(conv_norm_act(last_in, last_out, 1, 1, 1, bn(), Act::Hardswish)?));
        let classifier = Sequential::new()
            .add(Linear::new(last_out, last_channel)?)
            .add(Hardswish::default())
            .add(Dropout::new(0.2)?)
            .add(Linear::new(last_channel, num_classes)?);
        let name = if large { "MobileNetV3Large" } else { "MobileNetV3Small" };
        let m = MobileNet::from_parts(name, in_channels, features, AdaptiveAvgPool2d::new((1, 1)), classifier);
        init_weights(&m, ConvInit::KaimingNormalFanOut, LinearInit::Normal(0.01))?;
        Ok(m)
    }
}

/// MobileNetV3's block: [1×1 expand] → k×k depthwise → [squeeze-excitation with Hardsigmoid]
/// → 1×1 project, each conv with BN; residual when stride 1 and channels match.
/// Children: `block` (a Sequential). x: (N, inp, H, W) → (N, out, H/stride, W/stride).
pub struct V3Block {
    pub block: Sequential,
    pub use_res_connect: bool,
}

impl V3Block {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inp: usize,
        k: usize,
        exp: usize,
        out: usize,
        se: bool,
        act: Act,
        stride: usize,
        bn: impl Fn() -> BatchNormConfig,
    ) -> Result<Self> {
        let mut block = Sequential::new();
        if exp != inp {
            block.push(Box::new(conv_norm_act(inp, exp, 1, 1, 1, bn(), act)?));
        }
        block.push(Box::new(conv_norm_act_dilated(exp, exp, k, stride, exp, 1, bn(), act)?));
        if se {
            block.push(Box::new(SqueezeExcitation::new(exp, make_divisible((exp / 4) as f64, 8), true)?));
        }
        block.push(Box::new(conv_norm_act(exp, out, 1, 1, 1, bn(), Act::None)?));
        Ok(V3Block { block, use_res_connect: stride == 1 && inp == out })
    }
}

impl Module for V3Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.block.call(x)?;
        if self.use_res_connect {
            y.add(x)
        } else {
            Ok(y)
        }
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let y = g.module("block", &self.block, x)?;
        if self.use_res_connect {
            g.node(GraphOp::Add, &[&y, x])
        } else {
            Ok(y)
        }
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("block".into(), &self.block as &dyn Module)]
    }
}
