//! ResNet (He et al. 2016) as torchvision builds it (v1.5: the stride sits in the 3×3 conv of
//! a bottleneck), with torchvision's attribute names: conv1, bn1, layer1…layer4, fc.
//! `cifar_stem` swaps the 7×7/2 stem and max-pool for a 3×3/1 conv, for 32×32 inputs.

use crate::blocks::{check_input, init_weights, ConvInit, LinearInit};
use cnnkit_core::Tensor;
use cnnkit_core::{Epilogue, Result};
use cnnkit_nn::graph::{GraphBuilder, GraphOp};
use cnnkit_nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Identity, Linear, MaxPool2d, Module, ModuleExt, Sequential};

fn conv3x3(inp: usize, out: usize, stride: usize) -> Result<Conv2d> {
    Conv2d::new(Conv2dConfig::new(inp, out, 3).stride(stride).padding(1).bias(false))
}
fn conv1x1(inp: usize, out: usize, stride: usize) -> Result<Conv2d> {
    Conv2d::new(Conv2dConfig::new(inp, out, 1).stride(stride).bias(false))
}

/// Two 3×3 convs with a shortcut. x: (N, inplanes, H, W) → (N, planes, H/stride, W/stride).
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    /// 1×1 conv + BN when the shape changes ("downsample.0", "downsample.1").
    pub downsample: Option<Sequential>,
}

/// 1×1 reduce, 3×3 (strided), 1×1 expand ×4, with a shortcut.
/// x: (N, inplanes, H, W) → (N, 4·planes, H/stride, W/stride).
pub struct Bottleneck {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    pub conv3: Conv2d,
    pub bn3: BatchNorm2d,
    pub downsample: Option<Sequential>,
}

fn downsample(inplanes: usize, out: usize, stride: usize) -> Result<Option<Sequential>> {
    if stride == 1 && inplanes == out {
        return Ok(None);
    }
    Ok(Some(Sequential::new().add(conv1x1(inplanes, out, stride)?).add(BatchNorm2d::new_2d(out)?)))
}

impl BasicBlock {
    pub const EXPANSION: usize = 1;
    pub fn new(inplanes: usize, planes: usize, stride: usize) -> Result<Self> {
        Ok(BasicBlock {
            conv1: conv3x3(inplanes, planes, stride)?,
            bn1: BatchNorm2d::new_2d(planes)?,
            conv2: conv3x3(planes, planes, 1)?,
            bn2: BatchNorm2d::new_2d(planes)?,
            downsample: downsample(inplanes, planes, stride)?,
        })
    }
}

impl Bottleneck {
    pub const EXPANSION: usize = 4;
    pub fn new(inplanes: usize, planes: usize, stride: usize) -> Result<Self> {
        Ok(Bottleneck {
            conv1: conv1x1(inplanes, planes, 1)?,
            bn1: BatchNorm2d::new_2d(planes)?,
            conv2: conv3x3(planes, planes, stride)?,
            bn2: BatchNorm2d::new_2d(planes)?,
            conv3: conv1x1(planes, planes * 4, 1)?,
            bn3: BatchNorm2d::new_2d(planes * 4)?,
            downsample: downsample(inplanes, planes * 4, stride)?,
        })
    }
}

/// The graph of `out + shortcut(x)` followed by ReLU.
fn residual_graph(g: &mut GraphBuilder, ds: &Option<Sequential>, x: &str, out: &str) -> Result<String> {
    let id = match ds {
        Some(d) => g.module("downsample", d, x)?,
        None => x.to_string(),
    };
    let sum = g.node(GraphOp::Add, &[out, &id])?;
    g.node(GraphOp::Relu, &[&sum])
}

fn shortcut(ds: &Option<Sequential>, x: &Tensor) -> Result<Tensor> {
    match ds {
        Some(d) => d.call(x),
        None => Ok(x.clone()),
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.bn1.call_act(&self.conv1.call(x)?, Epilogue::Relu)?;
        let out = self.bn2.call(&self.conv2.call(&out)?)?;
        out.add(&shortcut(&self.downsample, x)?)?.relu()
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("conv1", &self.conv1, x)?;
        let h = g.module("bn1", &self.bn1, &h)?;
        let h = g.node(GraphOp::Relu, &[&h])?;
        let h = g.module("conv2", &self.conv2, &h)?;
        let h = g.module("bn2", &self.bn2, &h)?;
        residual_graph(g, &self.downsample, x, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut c: Vec<(String, &dyn Module)> =
            vec![("conv1".into(), &self.conv1), ("bn1".into(), &self.bn1), ("conv2".into(), &self.conv2), ("bn2".into(), &self.bn2)];
        if let Some(d) = &self.downsample {
            c.push(("downsample".into(), d));
        }
        c
    }
}

impl Module for Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.bn1.call_act(&self.conv1.call(x)?, Epilogue::Relu)?;
        let out = self.bn2.call_act(&self.conv2.call(&out)?, Epilogue::Relu)?;
        let out = self.bn3.call(&self.conv3.call(&out)?)?;
        out.add(&shortcut(&self.downsample, x)?)?.relu()
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let mut h = x.to_string();
        for (i, (c, b)) in [(&self.conv1, &self.bn1), (&self.conv2, &self.bn2), (&self.conv3, &self.bn3)].into_iter().enumerate() {
            h = g.module(&format!("conv{}", i + 1), c, &h)?;
            h = g.module(&format!("bn{}", i + 1), b, &h)?;
            if i < 2 {
                h = g.node(GraphOp::Relu, &[&h])?;
            }
        }
        residual_graph(g, &self.downsample, x, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut c: Vec<(String, &dyn Module)> = vec![
            ("conv1".into(), &self.conv1),
            ("bn1".into(), &self.bn1),
            ("conv2".into(), &self.conv2),
            ("bn2".into(), &self.bn2),
            ("conv3".into(), &self.conv3),
            ("bn3".into(), &self.bn3),
        ];
        if let Some(d) = &self.downsample {
            c.push(("downsample".into(), d));
        }
        c
    }
}

/// Which residual block a ResNet stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

/// torchvision's `ResNet`. x: (N, C, H, W) → logits (N, num_classes).
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    /// MaxPool2d(3, 2, 1), or Identity with the CIFAR stem.
    pub maxpool: Box<dyn Module>,
    pub layer1: Sequential,
    pub layer2: Sequential,
    pub layer3: Sequential,
    pub layer4: Sequential,
    pub avgpool: AdaptiveAvgPool2d,
    pub fc: Linear,
    in_channels: usize,
}

impl ResNet {
    /// `layers`: blocks per stage ([2,2,2,2] = resnet18). Initialised as torchvision:
    /// kaiming_normal(fan_out) convs, BN weight 1 / bias 0, default Linear.
    pub fn new(kind: BlockKind, layers: [usize; 4], in_channels: usize, num_classes: usize, cifar_stem: bool) -> Result<Self> {
        let expansion = match kind {
            BlockKind::Basic => BasicBlock::EXPANSION,
            BlockKind::Bottleneck => Bottleneck::EXPANSION,
        };
        let mut inplanes = 64;
        let mut stage = |planes: usize, blocks: usize, stride: usize| -> Result<Sequential> {
            let mut s = Sequential::new();
            for i in 0..blocks {
                let st = if i == 0 { stride } else { 1 };
                match kind {
                    BlockKind::Basic => s.push(Box::new(BasicBlock::new(inplanes, planes, st)?)),
                    BlockKind::Bottleneck => s.push(Box::new(Bottleneck::new(inplanes, planes, st)?)),
                }
                inplanes = planes * expansion;
            }
            Ok(s)
        };
        let (conv1, maxpool): (Conv2d, Box<dyn Module>) = if cifar_stem {
            (conv3x3(in_channels, 64, 1)?, Box::new(Identity::new()))
        } else {
            (
                Conv2d::new(Conv2dConfig::new(in_channels, 64, 7).stride(2).padding(3).bias(false))?,
                Box::new(MaxPool2d::new(3).stride(2).padding(1)),
            )
        };
        let m = ResNet {
            conv1,
            bn1: BatchNorm2d::new_2d(64)?,
            maxpool,
            layer1: stage(64, layers[0], 1)?,
            layer2: stage(128, layers[1], 2)?,
            layer3: stage(256, layers[2], 2)?,
            layer4: stage(512, layers[3], 2)?,
            avgpool: AdaptiveAvgPool2d::new((1, 1)),
            fc: Linear::new(512 * expansion, num_classes)?,
            in_channels,
        };
        init_weights(&m, ConvInit::KaimingNormalFanOut, LinearInit::Default)?;
        // The fc keeps PyTorch's default init, bias included.
        Ok(m)
    }

    /// Everything before the classifier: x (N, C, H, W) → pooled features (N, 512·expansion).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        check_input("ResNet", x, self.in_channels)?;
        let h = self.maxpool.call(&self.bn1.call_act(&self.conv1.call(x)?, Epilogue::Relu)?)?;
        let h = self.layer4.call(&self.layer3.call(&self.layer2.call(&self.layer1.call(&h)?)?)?)?;
        self.avgpool.call(&h)?.flatten(1, -1)
    }
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc.call(&self.features(x)?)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("conv1", &self.conv1, x)?;
        let h = g.module("bn1", &self.bn1, &h)?;
        let mut h = g.node(GraphOp::Relu, &[&h])?;
        h = g.module("maxpool", self.maxpool.as_ref(), &h)?;
        for (n, l) in [("layer1", &self.layer1), ("layer2", &self.layer2), ("layer3", &self.layer3), ("layer4", &self.layer4)] {
            h = g.module(n, l, &h)?;
        }
        let h = g.module("avgpool", &self.avgpool, &h)?;
        let h = g.node(GraphOp::Flatten { axis: 1 }, &[&h])?;
        g.module("fc", &self.fc, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("conv1".into(), &self.conv1 as &dyn Module),
            ("bn1".into(), &self.bn1),
            ("maxpool".into(), self.maxpool.as_ref()),
            ("layer1".into(), &self.layer1),
            ("layer2".into(), &self.layer2),
            ("layer3".into(), &self.layer3),
            ("layer4".into(), &self.layer4),
            ("avgpool".into(), &self.avgpool),
            ("fc".into(), &self.fc),
        ]
    }
}
