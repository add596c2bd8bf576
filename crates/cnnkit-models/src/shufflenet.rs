//! ShuffleNet V2 (Ma et al. 2018) as torchvision builds it: conv1 → maxpool → stage2..4 of
//! channel-split blocks with a channel shuffle → conv5 → global mean → fc.

use crate::blocks::check_input;
use cnnkit_core::{Error, Result, Tensor};
use cnnkit_nn::graph::{GraphBuilder, GraphOp};
use cnnkit_nn::{BatchNorm2d, Conv2d, Conv2dConfig, Linear, MaxPool2d, Module, ModuleExt, ReLU, Sequential};

fn conv(inp: usize, out: usize, k: usize, stride: usize, groups: usize) -> Result<Conv2d> {
    Conv2d::new(Conv2dConfig::new(inp, out, k).stride(stride).padding(k / 2).groups(groups).bias(false))
}

/// Interleaves the channels of `groups` groups. x: (N, C, H, W) → same shape.
pub fn channel_shuffle(x: &Tensor, groups: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 || groups == 0 || !s[1].is_multiple_of(groups) {
        return Err(Error::bad_shape("channel_shuffle", s, format!("expected (N, C, H, W) with C divisible by {groups}")));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    x.reshape(&[n, groups, c / groups, h, w])?.transpose(1, 2)?.contiguous()?.reshape(&[n, c, h, w])
}

/// The ShuffleNet V2 unit. Stride 1: split channels in half, transform one half (branch2),
/// concatenate, shuffle. Stride 2: both branches see the whole input and halve the size.
/// x: (N, inp, H, W) → (N, oup, H/stride, W/stride).
pub struct ShuffleBlock {
    /// Empty Sequential when stride is 1 (torchvision keeps it, with no parameters).
    pub branch1: Sequential,
    pub branch2: Sequential,
    pub stride: usize,
}

impl ShuffleBlock {
    pub fn new(inp: usize, oup: usize, stride: usize) -> Result<Self> {
        let bf = oup / 2;
        if stride == 1 && inp != bf * 2 {
            return Err(Error::invalid("ShuffleBlock", format!("stride 1 needs inp == oup, got {inp} and {oup}")));
        }
        let branch1 = if stride > 1 {
            Sequential::new()
                .add(conv(inp, inp, 3, stride, inp)?)
                .add(BatchNorm2d::new_2d(inp)?)
                .add(conv(inp, bf, 1, 1, 1)?)
                .add(BatchNorm2d::new_2d(bf)?)
                .add(ReLU::default())
        } else {
            Sequential::new()
        };
        let branch2 = Sequential::new()
            .add(conv(if stride > 1 { inp } else { bf }, bf, 1, 1, 1)?)
            .add(BatchNorm2d::new_2d(bf)?)
            .add(ReLU::default())
            .add(conv(bf, bf, 3, stride, bf)?)
            .add(BatchNorm2d::new_2d(bf)?)
            .add(conv(bf, bf, 1, 1, 1)?)
            .add(BatchNorm2d::new_2d(bf)?)
            .add(ReLU::default());
        Ok(ShuffleBlock { branch1, branch2, stride })
    }
}

impl Module for ShuffleBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = if self.stride == 1 {
            let halves = x.chunk(2, 1)?;
            Tensor::cat(&[halves[0].clone(), self.branch2.call(&halves[1])?], 1)?
        } else {
            Tensor::cat(&[self.branch1.call(x)?, self.branch2.call(x)?], 1)?
        };
        channel_shuffle(&out, 2)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let out = if self.stride == 1 {
            let halves = g.node_n(GraphOp::Split { axis: 1, num_outputs: Some(2) }, &[x], 2)?;
            let b2 = g.module("branch2", &self.branch2, &halves[1])?;
            g.node(GraphOp::Concat { axis: 1 }, &[&halves[0], &b2])?
        } else {
            let b1 = g.module("branch1", &self.branch1, x)?;
            let b2 = g.module("branch2", &self.branch2, x)?;
            g.node(GraphOp::Concat { axis: 1 }, &[&b1, &b2])?
        };
        cnnkit_nn::ChannelShuffle::new(2).to_graph(g, &out)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("branch1".into(), &self.branch1 as &dyn Module), ("branch2".into(), &self.branch2)]
    }
}

/// torchvision's `ShuffleNetV2`. x: (N, C, H, W) → logits (N, num_classes).
pub struct ShuffleNetV2 {
    pub conv1: Sequential,
    pub maxpool: MaxPool2d,
    pub stage2: Sequential,
    pub stage3: Sequential,
    pub stage4: Sequential,
    pub conv5: Sequential,
    pub fc: Linear,
    in_channels: usize,
}

impl ShuffleNetV2 {
    /// `out_channels`: [stem, stage2, stage3, stage4, conv5] — x0.5: [24, 48, 96, 192, 1024],
    /// x1.0: [24, 116, 232, 464, 1024]. Stages repeat 4, 8, 4 blocks. PyTorch's default init.
    pub fn new(out_channels: [usize; 5], in_channels: usize, num_classes: usize) -> Result<Self> {
        let cna = |i: usize, o: usize, k: usize, s: usize| -> Result<Sequential> {
            Ok(Sequential::new().add(conv(i, o, k, s, 1)?).add(BatchNorm2d::new_2d(o)?).add(ReLU::default()))
        };
        let stage = |i: usize, o: usize, repeats: usize| -> Result<Sequential> {
            let mut s = Sequential::new().add(ShuffleBlock::new(i, o, 2)?);
            for _ in 1..repeats {
                s.push(Box::new(ShuffleBlock::new(o, o, 1)?));
            }
            Ok(s)
        };
        let c = out_channels;
        Ok(ShuffleNetV2 {
            conv1: cna(in_channels, c[0], 3, 2)?,
            maxpool: MaxPool2d::new(3).stride(2).padding(1),
            stage2: stage(c[0], c[1], 4)?,
            stage3: stage(c[1], c[2], 8)?,
            stage4: stage(c[2], c[3], 4)?,
            conv5: cna(c[3], c[4], 1, 1)?,
            fc: Linear::new(c[4], num_classes)?,
            in_channels,
        })
    }

    /// Pooled features: x (N, C, H, W) → (N, conv5 channels).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        check_input("ShuffleNetV2", x, self.in_channels)?;
        let h = self.maxpool.call(&self.conv1.call(x)?)?;
        let h = self.conv5.call(&self.stage4.call(&self.stage3.call(&self.stage2.call(&h)?)?)?)?;
        h.mean(&[2, 3], false)
    }
}

impl Module for ShuffleNetV2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc.call(&self.features(x)?)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let mut h = g.module("conv1", &self.conv1, x)?;
        h = g.module("maxpool", &self.maxpool, &h)?;
        for (n, l) in [("stage2", &self.stage2), ("stage3", &self.stage3), ("stage4", &self.stage4), ("conv5", &self.conv5)] {
            h = g.module(n, l, &h)?;
        }
        let axes = g.const_i64(&[2, 3])?;
        let h = g.node(GraphOp::ReduceMean { keepdims: false, noop_with_empty_axes: false }, &[&h, &axes])?;
        g.module("fc", &self.fc, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("conv1".into(), &self.conv1 as &dyn Module),
            ("maxpool".into(), &self.maxpool),
            ("stage2".into(), &self.stage2),
            ("stage3".into(), &self.stage3),
            ("stage4".into(), &self.stage4),
            ("conv5".into(), &self.conv5),
            ("fc".into(), &self.fc),
        ]
    }
}
