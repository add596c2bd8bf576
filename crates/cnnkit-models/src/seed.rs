//! The seed article's own models, with PyTorch's attribute names (so state_dict keys match a
//! PyTorch script defining the same classes).

use cnnkit_core::{Epilogue, Result, Tensor};
use cnnkit_nn::graph::{GraphBuilder, GraphOp};
use cnnkit_nn::{Conv2d, Conv2dConfig, Linear, MaxPool2d, Module, ModuleExt};

/// The seed's §1.2 SimpleCNN: conv 1→32 3×3 pad 1, ReLU, maxpool 2, Linear to the classes.
/// The article's `Linear(32*7*7, 10)` is a bug (one 2× pool of 28×28 leaves 14×14); here the
/// flatten size follows the input: 32·(H/2)·(W/2).
/// x: (N, C, H, W) → logits (N, classes).
pub struct SimpleCnn {
    pub conv1: Conv2d,
    pub pool: MaxPool2d,
    pub fc: Linear,
}

impl SimpleCnn {
    pub fn new(in_channels: usize, height: usize, width: usize, classes: usize) -> Result<Self> {
        Ok(SimpleCnn {
            conv1: Conv2d::new(Conv2dConfig::new(in_channels, 32, 3).padding(1))?,
            pool: MaxPool2d::new(2).stride(2),
            fc: Linear::new(32 * (height / 2) * (width / 2), classes)?,
        })
    }
}

impl Module for SimpleCnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.pool.call(&self.conv1.call_act(x, Epilogue::Relu)?)?;
        self.fc.call(&h.flatten(1, -1)?)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("conv1", &self.conv1, x)?;
        let h = g.node(GraphOp::Relu, &[&h])?;
        let h = g.module("pool", &self.pool, &h)?;
        let h = g.node(GraphOp::Flatten { axis: 1 }, &[&h])?;
        g.module("fc", &self.fc, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv1".into(), &self.conv1), ("pool".into(), &self.pool), ("fc".into(), &self.fc)]
    }
}

/// The seed's §3.1 CIFAR SimpleCNN: conv 3→16 and 16→32 (3×3 pad 1), each with ReLU and
/// maxpool 2, then Linear. The article's `32*28*28` assumes 112×112 inputs; here the flatten
/// size follows the input: 32·(H/4)·(W/4) (2048 at 32×32).
/// x: (N, C, H, W) → logits (N, classes).
pub struct CifarCnn {
    pub conv1: Conv2d,
    pub pool: MaxPool2d,
    pub conv2: Conv2d,
    pub fc: Linear,
}

impl CifarCnn {
    pub fn new(in_channels: usize, height: usize, width: usize, classes: usize) -> Result<Self> {
        Ok(CifarCnn {
            conv1: Conv2d::new(Conv2dConfig::new(in_channels, 16, 3).padding(1))?,
            pool: MaxPool2d::new(2).stride(2),
            conv2: Conv2d::new(Conv2dConfig::new(16, 32, 3).padding(1))?,
            fc: Linear::new(32 * (height / 4) * (width / 4), classes)?,
        })
    }
}

impl Module for CifarCnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.pool.call(&self.conv1.call_act(x, Epilogue::Relu)?)?;
        let h = self.pool.call(&self.conv2.call_act(&h, Epilogue::Relu)?)?;
        self.fc.call(&h.flatten(1, -1)?)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let mut h = x.to_string();
        for (n, c) in [("conv1", &self.conv1), ("conv2", &self.conv2)] {
            h = g.module(n, c, &h)?;
            h = g.node(GraphOp::Relu, &[&h])?;
            h = g.module("pool", &self.pool, &h)?;
        }
        let h = g.node(GraphOp::Flatten { axis: 1 }, &[&h])?;
        g.module("fc", &self.fc, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv1".into(), &self.conv1), ("pool".into(), &self.pool), ("conv2".into(), &self.conv2), ("fc".into(), &self.fc)]
    }
}

/// LeNet-5 (LeCun et al. 1998) in its common PyTorch form: conv 6@5×5 (pad 2), ReLU, max pool,
/// conv 16@5×5, ReLU, max pool, then 120 → 84 → classes fully connected layers with ReLU.
/// x: (N, C, H, W) → logits (N, classes). 28×28 inputs give the classic 16·5·5 features.
pub struct LeNet5 {
    pub features: cnnkit_nn::Sequential,
    pub classifier: cnnkit_nn::Sequential,
}

impl LeNet5 {
    pub fn new(in_channels: usize, height: usize, width: usize, classes: usize) -> Result<Self> {
        use cnnkit_nn::{Flatten, ReLU, Sequential};
        let side = |n: usize| (n / 2).saturating_sub(4) / 2;
        let (fh, fw) = (side(height), side(width));
        if fh == 0 || fw == 0 {
            return Err(cnnkit_core::Error::invalid("lenet5", format!("input {height}×{width} is too small (needs at least 12×12)")));
        }
        Ok(LeNet5 {
            features: Sequential::new()
                .add(Conv2d::new(Conv2dConfig::new(in_channels, 6, 5).padding(2))?)
                .add(ReLU::default())
                .add(MaxPool2d::new(2))
                .add(Conv2d::new(Conv2dConfig::new(6, 16, 5))?)
                .add(ReLU::default())
                .add(MaxPool2d::new(2))
                .add(Flatten::new()),
            classifier: Sequential::new()
                .add(Linear::new(16 * fh * fw, 120)?)
                .add(ReLU::default())
                .add(Linear::new(120, 84)?)
                .add(ReLU::default())
                .add(Linear::new(84, classes)?),
        })
    }
}

impl Module for LeNet5 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.classifier.call(&self.features.call(x)?)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("features", &self.features, x)?;
        g.module("classifier", &self.classifier, &h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("features".into(), &self.features), ("classifier".into(), &self.classifier)]
    }
}
