//! The seed's §3.1 listings: the CIFAR SimpleCNN (two conv+ReLU+pool blocks, then Linear),
//! trained with CrossEntropyLoss and Adam(lr=0.001) in the article's loop, then evaluated
//! as in §3.1.2 (`model.eval()`, `torch.no_grad()`, `torch.max(outputs, 1)`).
//!
//! CIFAR-10 itself needs a download; this runs on cnnkit's built-in 32×32 colour `shapes`
//! images instead (same tensor shapes). The article's `Linear(32*28*28, 10)` assumes 112×112
//! inputs; at 32×32 the flatten size is 32·8·8.
//!
//! Run: `cargo run --release --example cifar_cnn`

use cnnkit::models::CifarCnn;
use cnnkit::prelude::*;
use cnnkit::synthetic::{shapes, SHAPE_CLASSES};

fn main() -> Result<()> {
    cnnkit::core::retain_freed_memory();
    manual_seed(0);
    let (train_x, train_y, _, _) = shapes(8000, 32, 3, 1)?;
    let (val_x, val_y, _, _) = shapes(1000, 32, 3, 2)?;
    let model = CifarCnn::new(3, 32, 32, SHAPE_CLASSES.len())?;
    let criterion = CrossEntropyLoss::new();
    let mut optimizer = Adam::new(model.parameters(), AdamConfig { lr: 0.001, ..Default::default() })?;
    let mut g = Generator::new(0);
    let batch_size = 32;
    for epoch in 0..5 {
        model.train(true);
        let perm = Tensor::randperm_with(8000, &mut g);
        let (mut running_loss, mut batches) = (0.0, 0);
        for start in (0..8000).step_by(batch_size) {
            let idx = perm.narrow(0, start, batch_size)?;
            let (images, labels) = (train_x.index_select(0, &idx)?, train_y.index_select(0, &idx)?);
            optimizer.zero_grad();
            let outputs = model.forward(&images)?;
            let loss = criterion.forward(&outputs, &labels)?;
            loss.backward()?;
            optimizer.step()?;
            running_loss += loss.item()?;
            batches += 1;
        }
        println!("Epoch {}, Loss: {:.4}", epoch + 1, running_loss / batches as f64);
    }
    // §3.1.2: evaluation on held-out images.
    model.eval();
    let (mut correct, mut total) = (0, 0);
    with_no_grad(|| -> Result<()> {
        for start in (0..1000).step_by(250) {
            let (images, labels) = (val_x.narrow(0, start, 250)?, val_y.narrow(0, start, 250)?);
            let outputs = model.forward(&images)?;
            let (_, predicted) = outputs.max_dim(1, false)?;
            total += labels.numel();
            correct += predicted.eq(&labels)?.count_nonzero()?;
        }
        Ok(())
    })?;
    println!("Accuracy of the network on the validation images: {:.2}%", 100.0 * correct as f64 / total as f64);
    Ok(())
}
