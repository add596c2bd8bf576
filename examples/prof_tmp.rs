use cnnkit::nn::loss::*;
use cnnkit::prelude::*;
use std::time::Instant;
fn main() {
    cnnkit::core::retain_freed_memory();
    manual_seed(0);
    let m = cnnkit::models::CifarCnn::new(3, 32, 32, 10).unwrap();
    let x = Tensor::randn(&[64, 3, 32, 32], DType::F32);
    let y = Tensor::from_vec((0..64i64).map(|i| i % 10).collect::<Vec<_>>(), &[64]).unwrap();
    let opts = CrossEntropyOptions::default();
    let mut opt = Sgd::new(m.parameters(), SgdConfig { lr: 0.01, momentum: 0.9, ..Default::default() }).unwrap();
    let mut acc = [0f64; 9];
    let n = 50;
    for it in 0..n + 5 {
        let ts = [Instant::now(); 1];
        let c1 = m.conv1.forward(&x).unwrap();
        let t1 = Instant::now();
        let r1 = c1.relu().unwrap();
        let t2 = Instant::now();
        let p1 = m.pool.forward(&r1).unwrap();
        let t3 = Instant::now();
        let c2 = m.conv2.forward(&p1).unwrap();
        let t4 = Instant::now();
        let p2 = m.pool.forward(&c2.relu().unwrap()).unwrap();
        let out = m.fc.forward(&p2.flatten(1, -1).unwrap()).unwrap();
        let t5 = Instant::now();
        let loss = cross_entropy(&out, &y, &opts).unwrap();
        let t6 = Instant::now();
        loss.backward().unwrap();
        let t7 = Instant::now();
        opt.step().unwrap();
        opt.zero_grad();
        let t8 = Instant::now();
        if it >= 5 {
            let d = [t1 - ts[0], t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7, t8 - ts[0]];
            for (a, b) in acc.iter_mut().zip(d) {
                *a += b.as_secs_f64() * 1e3 / n as f64;
            }
        }
    }
    {
        let r1 = m.conv1.forward(&x).unwrap().relu().unwrap().detach();
        let xv = r1.to_vec::<f32>().unwrap();
        let g = cnnkit::kernels::pool::PoolGeom {
            h: 32,
            w: 32,
            kh: 2,
            kw: 2,
            stride: (2, 2),
            padding: (0, 0),
            dilation: (1, 1),
            ceil_mode: false,
        };
        let mut yv = vec![0f32; 64 * 16 * 256];
        let mut iv = vec![0i64; 64 * 16 * 256];
        let t = Instant::now();
        for _ in 0..50 {
            cnnkit::kernels::pool::max_pool2d(&g, &xv, &mut yv, &mut iv);
        }
        println!("kernel on real data {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 50.0);
        let t = Instant::now();
        for _ in 0..50 {
            std::hint::black_box(r1.max_pool2d(Pool2dArgs::new(2)).unwrap());
        }
        println!("op on real data {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 50.0);
    }
    println!(
        "conv1 {:.2} relu1 {:.2} pool1 {:.2} conv2 {:.2} relu2+pool2+fc {:.2} loss {:.2} backward {:.2} step {:.2} total {:.2}",
        acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7], acc[8]
    );
}
