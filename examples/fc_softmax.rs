//! The seed's §2.3 listings: `nn.Linear(in_features=64, out_features=10)` applied to a
//! flattened feature map, then `F.softmax(output, dim=1)` to turn scores into probabilities.
//!
//! Run: `cargo run --release --example fc_softmax`

use cnnkit::prelude::*;

fn main() -> Result<()> {
    manual_seed(0);
    let fc_layer = Linear::new(64, 10)?;
    println!("{}", fc_layer.describe());
    // A batch of two 4×4×4 feature maps, flattened like `input_feature_map.view(-1, 64)`.
    let input_feature_map = Tensor::randn(&[2, 4, 4, 4], DType::F32);
    let output = fc_layer.forward(&input_feature_map.view(&[-1, 64])?)?;
    let probabilities = output.softmax(1)?;
    println!("scores {:?}\nprobabilities\n{probabilities}", output.shape());
    let sums = probabilities.sum(&[1], false)?.to_vec::<f32>()?;
    println!("row sums {sums:?}; predicted classes {:?}", probabilities.argmax(1, false)?.to_vec::<i64>()?);
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    Ok(())
}
