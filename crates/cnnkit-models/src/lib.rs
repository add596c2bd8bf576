//! cnnkit's model zoo: torchvision's architectures with torchvision's module structure,
//! defaults, initialisation and state_dict keys (a torchvision checkpoint loads with no
//! mapping), plus the seed article's models. Build by name with [`build`].
//!
//! Names: simple-cnn, cifar-cnn, lenet5, alexnet, vgg11, vgg11_bn, vgg16, vgg16_bn, resnet18,
//! resnet34, resnet50, resnet101, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large,
//! shufflenet_v2_x0_5, shufflenet_v2_x1_0, squeezenet1_1, efficientnet_b0, densenet121.
//! A ResNet name with the suffix `_cifar` (resnet18_cifar) uses the CIFAR stem: a 3×3/1 conv
//! and no max-pool, for 32×32 inputs. `-` and `_` are interchangeable in names.

pub mod blocks;
pub mod densenet;
pub mod efficientnet;
pub mod mobilenet;
pub mod resnet;
pub mod seed;
pub mod shufflenet;
pub mod squeezenet;
pub mod vgg;

pub use blocks::FeaturesClassifier;
pub use densenet::DenseNet;
pub use efficientnet::EfficientNet;
pub use mobilenet::MobileNet;
pub use resnet::{BlockKind, ResNet};
pub use seed::{CifarCnn, LeNet5, SimpleCnn};
pub use shufflenet::ShuffleNetV2;
pub use squeezenet::SqueezeNet;

use cnnkit_core::{Error, Result};
use cnnkit_nn::Module;

/// Every name [`build`] knows, in the spelling the docs use.
pub const MODEL_NAMES: &[&str] = &[
    "simple-cnn",
    "cifar-cnn",
    "lenet5",
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "efficientnet_b0",
    "densenet121",
];

/// The canonical spelling of a model name (`resnet18-cifar` → `resnet18_cifar`,
/// `simple_cnn` → `simple-cnn`), or an error listing the known names.
pub fn canonical_name(name: &str) -> Result<String> {
    let key = name.trim().to_ascii_lowercase().replace('-', "_");
    let (base, cifar) = match key.strip_suffix("_cifar") {
        Some(b) if b.starts_with("resnet") => (b.to_string(), true),
        _ => (key.clone(), false),
    };
    let found = MODEL_NAMES.iter().find(|n| n.replace('-', "_") == base);
    match found {
        Some(n) if cifar => Ok(format!("{n}_cifar")),
        Some(n) => Ok(n.to_string()),
        None => {
            Err(Error::invalid("model", format!("unknown model '{name}' (known: {}; ResNets also as NAME_cifar)", MODEL_NAMES.join(", "))))
        }
    }
}

/// The dotted name of a model's final classifier layer (what fine-tuning replaces).
pub fn head_name(name: &str) -> Result<&'static str> {
    let n = canonical_name(name)?;
    let base = n.strip_suffix("_cifar").unwrap_or(&n);
    Ok(match base {
        "simple-cnn" | "cifar-cnn" => "fc",
        "lenet5" => "classifier.4",
        "alexnet" | "vgg11" | "vgg11_bn" | "vgg16" | "vgg16_bn" => "classifier.6",
        "mobilenet_v2" | "efficientnet_b0" | "squeezenet1_1" => "classifier.1",
        "mobilenet_v3_small" | "mobilenet_v3_large" => "classifier.3",
        "densenet121" => "classifier",
        _ => "fc",
    })
}

/// Builds a model by name for inputs (in_channels, height, width) and `classes` outputs.
/// The zoo architectures work for any input large enough for their downsampling (they end
/// in adaptive pooling); the seed models size their classifier from height and width.
pub fn build(name: &str, in_channels: usize, height: usize, width: usize, classes: usize) -> Result<Box<dyn Module>> {
    let n = canonical_name(name)?;
    let c = in_channels;
    let resnet = |kind, layers, cifar| -> Result<Box<dyn Module>> { Ok(Box::new(ResNet::new(kind, layers, c, classes, cifar)?)) };
    Ok(match n.as_str() {
        "simple-cnn" => Box::new(SimpleCnn::new(c, height, width, classes)?),
        "cifar-cnn" => Box::new(CifarCnn::new(c, height, width, classes)?),
        "lenet5" => Box::new(LeNet5::new(c, height, width, classes)?),
        "alexnet" => Box::new(FeaturesClassifier::alexnet(c, classes)?),
        "vgg11" => Box::new(FeaturesClassifier::vgg(11, false, c, classes)?),
        "vgg11_bn" => Box::new(FeaturesClassifier::vgg(11, true, c, classes)?),
        "vgg16" => Box::new(FeaturesClassifier::vgg(16, false, c, classes)?),
        "vgg16_bn" => Box::new(FeaturesClassifier::vgg(16, true, c, classes)?),
        "resnet18" => resnet(BlockKind::Basic, [2, 2, 2, 2], false)?,
        "resnet34" => resnet(BlockKind::Basic, [3, 4, 6, 3], false)?,
        "resnet50" => resnet(BlockKind::Bottleneck, [3, 4, 6, 3], false)?,
        "resnet101" => resnet(BlockKind::Bottleneck, [3, 4, 23, 3], false)?,
        "resnet18_cifar" => resnet(BlockKind::Basic, [2, 2, 2, 2], true)?,
        "resnet34_cifar" => resnet(BlockKind::Basic, [3, 4, 6, 3], true)?,
        "resnet50_cifar" => resnet(BlockKind::Bottleneck, [3, 4, 6, 3], true)?,
        "resnet101_cifar" => resnet(BlockKind::Bottleneck, [3, 4, 23, 3], true)?,
        "mobilenet_v2" => Box::new(MobileNet::v2(c, classes)?),
        "mobilenet_v3_small" => Box::new(MobileNet::v3(false, c, classes)?),
        "mobilenet_v3_large" => Box::new(MobileNet::v3(true, c, classes)?),
        "shufflenet_v2_x0_5" => Box::new(ShuffleNetV2::new([24, 48, 96, 192, 1024], c, classes)?),
        "shufflenet_v2_x1_0" => Box::new(ShuffleNetV2::new([24, 116, 232, 464, 1024], c, classes)?),
        "squeezenet1_1" => Box::new(SqueezeNet::v1_1(c, classes)?),
        "efficientnet_b0" => Box::new(EfficientNet::b0(c, classes)?),
        "densenet121" => Box::new(DenseNet::densenet121(c, classes)?),
        other => return Err(Error::invalid("model", format!("unknown model '{other}'"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonicalised() {
        assert_eq!(canonical_name("resnet18-cifar").unwrap(), "resnet18_cifar");
        assert_eq!(canonical_name("simple_cnn").unwrap(), "simple-cnn");
        assert_eq!(canonical_name("MobileNet-V2").unwrap(), "mobilenet_v2");
        assert!(canonical_name("vgg19").is_err());
        assert!(canonical_name("mobilenet_v2_cifar").is_err());
    }

    #[test]
    fn make_divisible_matches_torchvision() {
        use blocks::make_divisible;
        assert_eq!(make_divisible(32.0, 8), 32);
        assert_eq!(make_divisible(60.0, 8), 64);
        assert_eq!(make_divisible(4.0, 8), 8);
        assert_eq!(make_divisible(36.0, 8), 40);
        assert_eq!(make_divisible(32.0 * 0.35, 8), 16);
    }
}
