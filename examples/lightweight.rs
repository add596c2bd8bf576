//! The seed's §5.3.5: lightweight architectures (MobileNet, ShuffleNet) built for phones and
//! edge devices — far fewer parameters and multiply-adds than a ResNet, thanks to depthwise
//! separable convolutions (MobileNet) and channel split + shuffle (ShuffleNet).
//!
//! Prints parameters, size and single-image latency at 224×224 for each, then trains a
//! ShuffleNet V2 ×0.5 and a MobileNetV2 on the built-in 32×32 shapes images. (MobileNetV3's
//! BatchNorm momentum is 0.01, as in torchvision: its running statistics need far more than
//! this example's 240 steps to catch up, so in eval mode it lags behind on a run this short.)
//!
//! Run: `cargo run --release --example lightweight`

use cnnkit::prelude::*;
use cnnkit::synthetic::{shapes, SHAPE_CLASSES};
use std::time::Instant;

fn latency_ms(model: &dyn Module, x: &Tensor) -> Result<f64> {
    with_no_grad(|| -> Result<f64> {
        model.forward(x)?; // warm-up
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            model.forward(x)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[1])
    })
}

fn main() -> Result<()> {
    cnnkit::core::retain_freed_memory();
    manual_seed(0);
    let x = Tensor::randn(&[1, 3, 224, 224], DType::F32);
    println!("{:<20} {:>12} {:>9} {:>12}", "model", "parameters", "MB", "ms/image");
    for name in ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0"] {
        let m = cnnkit::models::build(name, 3, 224, 224, 1000)?;
        m.eval();
        let n = m.num_parameters();
        println!("{name:<20} {n:>12} {:>9.1} {:>12.1}", n as f64 * 4.0 / 1e6, latency_ms(m.as_ref(), &x)?);
    }

    // Train two of them from scratch on small images.
    let (x, y, _, _) = shapes(3000, 32, 3, 1)?;
    let (tx, ty, _, _) = shapes(500, 32, 3, 2)?;
    for name in ["shufflenet_v2_x0_5", "mobilenet_v2"] {
        let model = cnnkit::models::build(name, 3, 32, 32, SHAPE_CLASSES.len())?;
        let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 3e-3, ..Default::default() })?;
        let mut g = Generator::new(0);
        let t = Instant::now();
        for _epoch in 0..4 {
            model.train(true);
            let perm = Tensor::randperm_with(3000, &mut g);
            for start in (0..3000).step_by(50) {
                let idx = perm.narrow(0, start, 50)?;
                opt.zero_grad();
                let loss =
                    cross_entropy(&model.forward(&x.index_select(0, &idx)?)?, &y.index_select(0, &idx)?, &CrossEntropyOptions::default())?;
                loss.backward()?;
                opt.step()?;
            }
        }
        model.eval();
        let (_, pred) = with_no_grad(|| model.forward(&tx))?.max_dim(1, false)?;
        let acc = pred.eq(&ty)?.count_nonzero()? as f64 / 500.0;
        println!("{name}: {:.1}% test accuracy on shapes after 4 epochs ({:.1} s)", 100.0 * acc, t.elapsed().as_secs_f64());
    }
    Ok(())
}
