//! AlexNet (Krizhevsky et al. 2012, torchvision's one-GPU variant) and VGG (Simonyan &
//! Zisserman 2015), with torchvision's `features` / `avgpool` / `classifier` layout.

use crate::blocks::{init_weights, ConvInit, FeaturesClassifier, LinearInit};
use cnnkit_core::Result;
use cnnkit_nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Dropout, Linear, MaxPool2d, ReLU, Sequential};

impl FeaturesClassifier {
    /// torchvision's `alexnet` (PyTorch's default init, dropout 0.5).
    pub fn alexnet(in_channels: usize, num_classes: usize) -> Result<Self> {
        let c = |i, o, k, s, p| Conv2d::new(Conv2dConfig::new(i, o, k).stride(s).padding(p));
        let pool = || MaxPool2d::new(3).stride(2);
        let features = Sequential::new()
            .add(c(in_channels, 64, 11, 4, 2)?)
            .add(ReLU::default())
            .add(pool())
            .add(c(64, 192, 5, 1, 2)?)
            .add(ReLU::default())
            .add(pool())
            .add(c(192, 384, 3, 1, 1)?)
            .add(ReLU::default())
            .add(c(384, 256, 3, 1, 1)?)
            .add(ReLU::default())
            .add(c(256, 256, 3, 1, 1)?)
            .add(ReLU::default())
            .add(pool());
        let classifier = Sequential::new()
            .add(Dropout::new(0.5)?)
            .add(Linear::new(256 * 6 * 6, 4096)?)
            .add(ReLU::default())
            .add(Dropout::new(0.5)?)
            .add(Linear::new(4096, 4096)?)
            .add(ReLU::default())
            .add(Linear::new(4096, num_classes)?);
        Ok(FeaturesClassifier::from_parts("AlexNet", in_channels, features, AdaptiveAvgPool2d::new((6, 6)), classifier))
    }

    /// torchvision's VGG: `depth` 11 (config A) or 16 (config D), optional BatchNorm after
    /// every conv. Initialised as torchvision (kaiming_normal fan_out, N(0, 0.01) linears).
    pub fn vgg(depth: usize, batch_norm: bool, in_channels: usize, num_classes: usize) -> Result<Self> {
        // 0 = max-pool, otherwise a 3×3 conv with that many channels.
        const A: &[usize] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
        const D: &[usize] = &[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
        let cfg = match depth {
            11 => A,
            16 => D,
            _ => return Err(cnnkit_core::Error::invalid("vgg", format!("depth {depth} not available (11 or 16)"))),
        };
        let mut features = Sequential::new();
        let mut c = in_channels;
        for &v in cfg {
            if v == 0 {
                features.push(Box::new(MaxPool2d::new(2).stride(2)));
                continue;
            }
            features.push(Box::new(Conv2d::new(Conv2dConfig::new(c, v, 3).padding(1))?));
            if batch_norm {
                features.push(Box::new(BatchNorm2d::new_2d(v)?));
            }
            features.push(Box::new(ReLU::default()));
            c = v;
        }
        let classifier = Sequential::new()
            .add(Linear::new(512 * 7 * 7, 4096)?)
            .add(ReLU::default())
            .add(Dropout::new(0.5)?)
            .add(Linear::new(4096, 4096)?)
            .add(ReLU::default())
            .add(Dropout::new(0.5)?)
            .add(Linear::new(4096, num_classes)?);
        let m = FeaturesClassifier::from_parts("VGG", in_channels, features, AdaptiveAvgPool2d::new((7, 7)), classifier);
        init_weights(&m, ConvInit::KaimingNormalFanOut, LinearInit::Normal(0.01))?;
        Ok(m)
    }
}
