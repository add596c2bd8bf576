//! The seed's §4.1 transfer-learning listing: take a pretrained ResNet-18, replace its last
//! fully connected layer with a 2-class one (`model.fc = nn.Linear(model.fc.in_features, 2)`),
//! freeze every other weight, and train only the new head with Adam(lr=0.001).
//!
//! With torchvision's ImageNet weights (downloaded elsewhere, e.g.
//! https://download.pytorch.org/models/resnet18-f37072fd.pth) pass the file:
//!   `cargo run --release --example transfer_learning -- resnet18-f37072fd.pth`
//! The .pth is read directly, without Python. Offline, the example first "pretrains" the
//! ResNet-18 on the built-in six-class shapes images, then transfers it to a new 2-class task
//! (round shapes vs. angular ones, standing in for the article's cats vs. dogs).
//!
//! One difference from the listing, on purpose: the frozen backbone runs in eval mode, so its
//! BatchNorm running statistics stay as pretrained (in PyTorch, `model.train()` would keep
//! updating them even with requires_grad=False).

use cnnkit::models::{BlockKind, ResNet};
use cnnkit::prelude::*;
use cnnkit::synthetic::shapes;

/// Trains `params` of `model` on (x, y) for `epochs`, the seed's loop. x: (N, 3, H, W); y: (N).
fn train(model: &ResNet, params: Vec<Tensor>, x: &Tensor, y: &Tensor, epochs: usize, lr: f64) -> Result<()> {
    let mut optimizer = Adam::new(params, AdamConfig { lr, ..Default::default() })?;
    let criterion = CrossEntropyLoss::new();
    let n = x.shape()[0];
    let mut g = Generator::new(1);
    for epoch in 0..epochs {
        let perm = Tensor::randperm_with(n, &mut g);
        let mut running_loss = 0.0;
        for start in (0..n).step_by(32) {
            let idx = perm.narrow(0, start, 32.min(n - start))?;
            optimizer.zero_grad();
            let loss = criterion.forward(&model.forward(&x.index_select(0, &idx)?)?, &y.index_select(0, &idx)?)?;
            loss.backward()?;
            optimizer.step()?;
            running_loss += loss.item()?;
        }
        println!("  epoch {}, loss {:.4}", epoch + 1, running_loss / n.div_ceil(32) as f64);
    }
    Ok(())
}

fn accuracy(model: &ResNet, x: &Tensor, y: &Tensor) -> Result<f64> {
    let (_, predicted) = with_no_grad(|| model.forward(x))?.max_dim(1, false)?;
    Ok(predicted.eq(y)?.count_nonzero()? as f64 / y.numel() as f64)
}

fn main() -> Result<()> {
    cnnkit::core::retain_freed_memory();
    manual_seed(0);
    // 1. The pretrained ResNet-18 (`models.resnet18(pretrained=True)`).
    let mut model = ResNet::new(BlockKind::Basic, [2, 2, 2, 2], 3, 1000, false)?;
    match std::env::args().nth(1) {
        Some(path) => {
            let sd = cnnkit::io::load_state_dict_file(std::path::Path::new(&path))?;
            model.load_state_dict(&sd, true)?;
            println!("loaded torchvision weights from {path}");
        }
        None => {
            println!("no weights file given: pretraining ResNet-18 on the six built-in shape classes");
            model.fc = Linear::new(model.fc.in_features, 6)?;
            let (x, y, _, _) = shapes(3000, 32, 3, 11)?;
            model.train(true);
            train(&model, model.parameters(), &x, &y, 2, 1e-3)?;
        }
    }
    // 2. The new task: round shapes (circle, ring) vs angular ones (square, triangle, star, cross).
    let to_task = |y: &Tensor| -> Result<Tensor> {
        let v: Vec<i64> = y.to_vec::<i64>()?.into_iter().map(|c| i64::from(!(c == 0 || c == 5))).collect();
        Tensor::from_vec(v, y.shape())
    };
    let (x, y, _, _) = shapes(1000, 32, 3, 21)?;
    let (tx, ty, _, _) = shapes(500, 32, 3, 22)?;
    let (y, ty) = (to_task(&y)?, to_task(&ty)?);

    // 3. Replace the last fully connected layer: model.fc = nn.Linear(model.fc.in_features, 2).
    model.fc = Linear::new(model.fc.in_features, 2)?;
    // 4. Freeze every weight, then unfreeze the new head.
    for p in model.parameters() {
        p.set_requires_grad(false)?;
    }
    for p in model.fc.parameters() {
        p.set_requires_grad(true)?;
    }
    let trainable: usize = model.trainable_parameters().iter().map(|t| t.numel()).sum();
    println!("training {trainable} of {} parameters (the new fc)", model.num_parameters());
    // 5. Train only the head (optimizer = Adam(model.fc.parameters(), lr=0.001)); the frozen
    //    backbone stays in eval mode.
    model.eval();
    train(&model, model.fc.parameters(), &x, &y, 3, 1e-3)?;
    // 6. Evaluate on held-out images.
    println!("round vs angular accuracy: {:.1}%", 100.0 * accuracy(&model, &tx, &ty)?);
    Ok(())
}
