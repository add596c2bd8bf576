//! End to end: the seed's SimpleCNN learns the built-in synthetic digits (accuracy floor).

use cnnkit::models::SimpleCnn;
use cnnkit::prelude::*;
use cnnkit::synthetic::digits28;

#[test]
fn simple_cnn_learns_synthetic_digits() -> Result<()> {
    manual_seed(0);
    let (x, y) = digits28(3000, 11)?;
    let (tx, ty) = digits28(500, 12)?;
    let model = SimpleCnn::new(1, 28, 28, 10)?;
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() })?;
    let mut g = Generator::new(5);
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for _epoch in 0..2 {
        let perm = Tensor::randperm_with(3000, &mut g);
        for start in (0..3000).step_by(50) {
            let idx = perm.narrow(0, start, 50)?;
            opt.zero_grad();
            let loss =
                cross_entropy(&model.forward(&x.index_select(0, &idx)?)?, &y.index_select(0, &idx)?, &CrossEntropyOptions::default())?;
            loss.backward()?;
            opt.step()?;
            last_loss = loss.item()?;
            first_loss.get_or_insert(last_loss);
        }
    }
    let acc = with_no_grad(|| -> Result<f64> { Ok(model.forward(&tx)?.argmax(1, false)?.eq(&ty)?.count_nonzero()? as f64 / 500.0) })?;
    assert!(last_loss < first_loss.unwrap_or(0.0) * 0.5, "loss did not fall: {first_loss:?} -> {last_loss}");
    assert!(acc >= 0.9, "test accuracy {acc} below the 90% floor");
    Ok(())
}
