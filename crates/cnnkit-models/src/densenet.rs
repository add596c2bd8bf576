//! DenseNet-121 (Huang et al. 2017) as torchvision builds it: every layer of a dense block
//! sees the concatenation of all earlier outputs. Names: features.conv0, features.norm0,
//! features.denseblockK.denselayerJ.{norm1,conv1,norm2,conv2}, features.transitionK, norm5.

use crate::blocks::{check_input, init_weights, ConvInit, LinearInit, NamedSequential};
use cnnkit_core::{Result, Tensor};
use cnnkit_nn::graph::{GraphBuilder, GraphOp};
use cnnkit_nn::{AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Linear, MaxPool2d, Module, ModuleExt, ReLU};

/// BN → ReLU → 1×1 conv (bn_size·growth) → BN → ReLU → 3×3 conv (growth).
/// x: the concatenated features (N, C_in, H, W) → new features (N, growth, H, W).
pub struct DenseLayer {
    pub norm1: BatchNorm2d,
    pub conv1: Conv2d,
    pub norm2: BatchNorm2d,
    pub conv2: Conv2d,
}

impl DenseLayer {
    pub fn new(num_input_features: usize, growth_rate: usize, bn_size: usize) -> Result<Self> {
        let mid = bn_size * growth_rate;
        Ok(DenseLayer {
            norm1: BatchNorm2d::new_2d(num_input_features)?,
            conv1: Conv2d::new(Conv2dConfig::new(num_input_features, mid, 1).bias(false))?,
            norm2: BatchNorm2d::new_2d(mid)?,
            conv2: Conv2d::new(Conv2dConfig::new(mid, growth_rate, 3).padding(1).bias(false))?,
        })
    }
}

impl Module for DenseLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.call(&self.norm1.call(x)?.relu()?)?;
        self.conv2.call(&self.norm2.call(&h)?.relu()?)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("norm1", &self.norm1, x)?;
        let h = g.node(GraphOp::Relu, &[&h])?;
        let h = g.module("conv1", &self.conv1, &h)?;
        let h = g.module("norm2", &self.norm2, &h)?;
        let h = g.node(GraphOp::Relu, &[&h])?;
        g.module("conv2", &self.conv2, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("norm1".into(), &self.norm1 as &dyn Module),
            ("conv1".into(), &self.conv1),
            ("norm2".into(), &self.norm2),
            ("conv2".into(), &self.conv2),
        ]
    }
}

/// Layers named denselayer1…; output = cat(input, every layer's output) along channels.
/// x: (N, C, H, W) → (N, C + layers·growth, H, W).
pub struct DenseBlock {
    pub layers: Vec<DenseLayer>,
}

impl Module for DenseBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut features = vec![x.clone()];
        for l in &self.layers {
            let input = Tensor::cat(&features, 1)?;
            features.push(l.call(&input)?);
        }
        Tensor::cat(&features, 1)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let mut features = vec![x.to_string()];
        for (i, l) in self.layers.iter().enumerate() {
            let refs: Vec<&str> = features.iter().map(String::as_str).collect();
            let input = if refs.len() == 1 { refs[0].to_string() } else { g.node(GraphOp::Concat { axis: 1 }, &refs)? };
            features.push(g.module(&format!("denselayer{}", i + 1), l, &input)?);
        }
        let refs: Vec<&str> = features.iter().map(String::as_str).collect();
        g.node(GraphOp::Concat { axis: 1 }, &refs)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.iter().enumerate().map(|(i, l)| (format!("denselayer{}", i + 1), l as &dyn Module)).collect()
    }
}

/// torchvision's `DenseNet`. x: (N, C, H, W) → logits (N, num_classes).
pub struct DenseNet {
    pub features: NamedSequential,
    pub classifier: Linear,
    in_channels: usize,
}

impl DenseNet {
    /// DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 stem features, bn_size 4.
    pub fn densenet121(in_channels: usize, num_classes: usize) -> Result<Self> {
        Self::new(32, [6, 12, 24, 16], 64, 4, in_channels, num_classes)
    }

    pub fn new(
        growth: usize,
        blocks: [usize; 4],
        init_features: usize,
        bn_size: usize,
        in_channels: usize,
        num_classes: usize,
    ) -> Result<Self> {
        let mut f = NamedSequential::new();
        f.push("conv0", Conv2d::new(Conv2dConfig::new(in_channels, init_features, 7).stride(2).padding(3).bias(false))?);
        f.push("norm0", BatchNorm2d::new_2d(init_features)?);
        f.push("relu0", ReLU::default());
        f.push("pool0", MaxPool2d::new(3).stride(2).padding(1));
        let mut c = init_features;
        for (i, &n) in blocks.iter().enumerate() {
            let layers = (0..n).map(|j| DenseLayer::new(c + j * growth, growth, bn_size)).collect::<Result<Vec<_>>>()?;
            f.push(&format!("denseblock{}", i + 1), DenseBlock { layers });
            c += n * growth;
            if i + 1 != blocks.len() {
                let mut t = NamedSequential::new();
                t.push("norm", BatchNorm2d::new_2d(c)?);
                t.push("relu", ReLU::default());
                t.push("conv", Conv2d::new(Conv2dConfig::new(c, c / 2, 1).bias(false))?);
                t.push("pool", AvgPool2d::new(2).stride(2));
                f.push(&format!("transition{}", i + 1), t);
                c /= 2;
            }
        }
        f.push("norm5", BatchNorm2d::new_2d(c)?);
        let m = DenseNet { features: f, classifier: Linear::new(c, num_classes)?, in_channels };
        // torchvision: kaiming_normal_ (fan_in) convs, BN 1/0, Linear bias 0.
        init_weights(&m, ConvInit::KaimingNormalFanIn, LinearInit::Default)?;
        if let Some(b) = &m.classifier.bias {
            cnnkit_nn::init::zeros_(b)?;
        }
        Ok(m)
    }

    /// Pooled features: x (N, C, H, W) → (N, 1024).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        check_input("DenseNet", x, self.in_channels)?;
        self.features.call(x)?.relu()?.adaptive_avg_pool2d((1, 1))?.flatten(1, -1)
    }
}

impl Module for DenseNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.classifier.call(&self.features(x)?)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("features", &self.features, x)?;
        let h = g.node(GraphOp::Relu, &[&h])?;
        let h = g.node(GraphOp::GlobalAveragePool, &[&h])?;
        let h = g.node(GraphOp::Flatten { axis: 1 }, &[&h])?;
        g.module("classifier", &self.classifier, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("features".into(), &self.features as &dyn Module), ("classifier".into(), &self.classifier)]
    }
}
