//! The seed's §2.1.2 listing: `nn.Conv2d(in_channels=3, out_channels=64, kernel_size=3,
//! stride=1, padding=1)` — its parameters and what it does to an RGB image batch.
//!
//! Run: `cargo run --release --example conv_layer`

use cnnkit::prelude::*;

fn main() -> Result<()> {
    manual_seed(0);
    let conv_layer = Conv2d::new(Conv2dConfig::new(3, 64, 3).stride(1).padding(1))?;
    println!("{}", conv_layer.describe());
    for (name, p) in conv_layer.named_parameters() {
        println!("  {name:<6} {:?}", p.shape());
    }
    // padding=1 keeps a 3×3 convolution's output the size of its input.
    let images = Tensor::randn(&[4, 3, 32, 32], DType::F32);
    let features = conv_layer.forward(&images)?;
    println!("input {:?} -> feature maps {:?}", images.shape(), features.shape());
    // Grouped and depthwise variants, as the article's optimisation notes suggest.
    let grouped = Conv2d::new(Conv2dConfig::new(64, 64, 3).padding(1).groups(4))?;
    let depthwise = Conv2d::new(Conv2dConfig::new(64, 64, 3).padding(1).groups(64))?;
    println!(
        "parameters: dense {} / groups=4 {} / depthwise {}",
        Conv2d::new(Conv2dConfig::new(64, 64, 3).padding(1))?.num_parameters(),
        grouped.num_parameters(),
        depthwise.num_parameters()
    );
    assert_eq!(features.shape(), &[4, 64, 32, 32]);
    Ok(())
}
