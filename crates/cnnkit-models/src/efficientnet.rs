//! EfficientNet-B0 (Tan & Le 2019) as torchvision builds it: stem → 7 stages of MBConv blocks
//! (expand, depthwise, squeeze-excitation with SiLU/Sigmoid, project, stochastic depth on the
//! residual) → 1×1 head conv → pool → dropout → Linear.

use crate::blocks::{
    bn_default, conv_norm_act, init_weights, make_divisible, Act, ConvInit, LinearInit, SqueezeExcitation, StochasticDepth,
};
use cnnkit_core::{Result, Tensor};
use cnnkit_nn::graph::{GraphBuilder, GraphOp};
use cnnkit_nn::{AdaptiveAvgPool2d, Dropout, Linear, Module, ModuleExt, Sequential};

/// Mobile inverted bottleneck. Children: `block` (Sequential), `stochastic_depth`.
/// x: (N, inp, H, W) → (N, out, H/stride, W/stride).
pub struct MBConv {
    pub block: Sequential,
    pub stochastic_depth: StochasticDepth,
    pub use_res_connect: bool,
}

impl MBConv {
    pub fn new(expand_ratio: usize, kernel: usize, stride: usize, inp: usize, out: usize, sd_prob: f64) -> Result<Self> {
        let expanded = make_divisible((inp * expand_ratio) as f64, 8);
        let mut block = Sequential::new();
        if expanded != inp {
            block.push(Box::new(conv_norm_act(inp, expanded, 1, 1, 1, bn_default(), Act::Silu)?));
        }
        block.push(Box::new(conv_norm_act(expanded, expanded, kernel, stride, expanded, bn_default(), Act::Silu)?));
        block.push(Box::new(SqueezeExcitation::new(expanded, (inp / 4).max(1), false)?));
        block.push(Box::new(conv_norm_act(expanded, out, 1, 1, 1, bn_default(), Act::None)?));
        Ok(MBConv { block, stochastic_depth: StochasticDepth::new(sd_prob)?, use_res_connect: stride == 1 && inp == out })
    }
}

impl Module for MBConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.block.call(x)?;
        if self.use_res_connect {
            self.stochastic_depth.call(&y)?.add(x)
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
        vec![("block".into(), &self.block as &dyn Module), ("stochastic_depth".into(), &self.stochastic_depth)]
    }
}

/// torchvision's `EfficientNet` (B0 configuration): features → pool → dropout + Linear.
pub type EfficientNet = crate::blocks::FeaturesClassifier;

impl crate::blocks::FeaturesClassifier {
    /// torchvision's `efficientnet_b0`. x: (N, C, H, W) → logits (N, num_classes).
    pub fn b0(in_channels: usize, num_classes: usize) -> Result<Self> {
        // (expand ratio, kernel, stride, in, out, layers): torchvision's _efficientnet_conf for
        // width and depth multipliers 1.0.
        const CONF: [(usize, usize, usize, usize, usize, usize); 7] = [
            (1, 3, 1, 32, 16, 1),
            (6, 3, 2, 16, 24, 2),
            (6, 5, 2, 24, 40, 2),
            (6, 3, 2, 40, 80, 3),
            (6, 5, 1, 80, 112, 3),
            (6, 5, 2, 112, 192, 4),
            (6, 3, 1, 192, 320, 1),
        ];
        const STOCHASTIC_DEPTH: f64 = 0.2;
        let total: usize = CONF.iter().map(|c| c.5).sum();
        let mut features = Sequential::new().add(conv_norm_act(in_channels, 32, 3, 2, 1, bn_default(), Act::Silu)?);
        let mut block_id = 0;
        for (t, k, s, i, o, n) in CONF {
            let mut stage = Sequential::new();
            for j in 0..n {
                // The drop probability grows linearly with depth (torchvision's sd_prob).
                let p = STOCHASTIC_DEPTH * block_id as f64 / total as f64;
                stage.push(Box::new(MBConv::new(t, k, if j == 0 { s } else { 1 }, if j == 0 { i } else { o }, o, p)?));
                block_id += 1;
            }
            features.push(Box::new(stage));
        }
        features.push(Box::new(conv_norm_act(320, 1280, 1, 1, 1, bn_default(), Act::Silu)?));
        let classifier = Sequential::new().add(Dropout::new(0.2)?).add(Linear::new(1280, num_classes)?);
        let m = EfficientNet::from_parts("EfficientNet", in_channels, features, AdaptiveAvgPool2d::new((1, 1)), classifier);
        init_weights(&m, ConvInit::KaimingNormalFanOut, LinearInit::UniformOut)?;
        Ok(m)
    }
}
