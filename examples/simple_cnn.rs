//! The seed's §1.2 listing — a SimpleCNN (one conv 1→32, ReLU, 2×2 max pool, Linear) —
//! trained on cnnkit's built-in synthetic 28×28 digits with Adam and cross-entropy, the
//! article's training loop, then evaluated on held-out digits.
//!
//! The article flattens with `x.view(-1, 32 * 7 * 7)`, which is wrong after a single 2×2
//! pool of a 28×28 input (14×14 remain); the model here uses 32 × 14 × 14.
//!
//! Run: `cargo run --release --example simple_cnn` (about 10 s on 2 cores; reaches >95%).

use cnnkit::models::SimpleCnn;
use cnnkit::prelude::*;
use cnnkit::synthetic::digits28;
use std::time::Instant;

fn main() -> Result<()> {
    cnnkit::core::retain_freed_memory();
    manual_seed(0);
    let (train_x, train_y) = digits28(6000, 1)?;
    let (test_x, test_y) = digits28(1000, 2)?;
    let model = SimpleCnn::new(1, 28, 28, 10)?;
    println!("{}", model.summary());
    let criterion = CrossEntropyLoss::new();
    let mut optimizer = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() })?;

    let batch_size = 64;
    let mut g = Generator::new(3);
    for epoch in 0..3 {
        let t0 = Instant::now();
        model.train(true);
        let perm = Tensor::randperm_with(6000, &mut g);
        let mut running_loss = 0.0;
        let mut batches = 0;
        for start in (0..6000).step_by(batch_size) {
            let idx = perm.narrow(0, start, batch_size.min(6000 - start))?;
            let (images, labels) = (train_x.index_select(0, &idx)?, train_y.index_select(0, &idx)?);
            optimizer.zero_grad();
            let outputs = model.forward(&images)?;
            let loss = criterion.forward(&outputs, &labels)?;
            loss.backward()?;
            optimizer.step()?;
            running_loss += loss.item()?;
            batches += 1;
        }
        let acc = evaluate(&model, &test_x, &test_y)?;
        println!(
            "Epoch {}, Loss: {:.4}, test accuracy {:.2}% ({:.1}s)",
            epoch + 1,
            running_loss / batches as f64,
            100.0 * acc,
            t0.elapsed().as_secs_f64()
        );
    }
    let acc = evaluate(&model, &test_x, &test_y)?;
    println!("Accuracy of the network on the 1000 test images: {:.2}%", 100.0 * acc);
    if acc < 0.95 {
        return Err(Error::invalid("simple_cnn", format!("accuracy {acc} below the stated 95%")));
    }
    Ok(())
}

/// The article's §3.1.2 evaluation: eval mode, no grad, argmax over the logits.
fn evaluate(model: &SimpleCnn, x: &Tensor, y: &Tensor) -> Result<f64> {
    model.eval();
    let _guard = no_grad();
    let predicted = model.forward(x)?.argmax(1, false)?;
    let correct = predicted.eq(y)?.count_nonzero()?;
    Ok(correct as f64 / y.numel() as f64)
}
