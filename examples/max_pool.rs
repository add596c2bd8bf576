//! The seed's §2.2 listings: `nn.MaxPool2d(kernel_size=2, stride=2)` and
//! `F.max_pool2d` on the 4×4 feature map 1..16, which keeps each 2×2 window's maximum.
//!
//! Run: `cargo run --release --example max_pool`

use cnnkit::prelude::*;

fn main() -> Result<()> {
    let max_pool_layer = MaxPool2d::new(2).stride(2);
    println!("{}", max_pool_layer.describe());
    let input_feature_map = Tensor::from_vec((1..=16).map(|v| v as f32).collect(), &[1, 4, 4])?;
    let pooled_feature_map = input_feature_map.max_pool2d(Pool2dArgs::new(2))?;
    println!("{pooled_feature_map}");
    assert_eq!(pooled_feature_map.to_vec::<f32>()?, vec![6.0, 8.0, 14.0, 16.0]);
    // Average pooling, for comparison.
    println!("{}", input_feature_map.avg_pool2d(Pool2dArgs::new(2), true)?);
    Ok(())
}
