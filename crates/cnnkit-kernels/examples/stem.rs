//! Times the stride-2 stems of MobileNetV2 (3→32 3×3) and ResNet (3→64 7×7) at 224×224,
//! batch 1, through `direct::forward` (which `conv2d_forward_ep` uses for them) and through
//! im2col + the gemm crate. Run: cargo run --release -p cnnkit-kernels --example stem [iters]
//! (RAYON_NUM_THREADS=1 for one thread).
mod common;
use cnnkit_kernels::conv::{im2col, ConvGeom, Epilogue};
use cnnkit_kernels::matmul::{gemm, MatRef};
use common::median;
use std::time::Instant;

fn main() {
    common::on_worker(run);
}

fn run() {
    let iters: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let size: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(224);
    for (c_out, k, p) in [(32, 3, 1), (64, 7, 3)] {
        let g =
            ConvGeom { n: 1, c_in: 3, h: size, w: size, c_out, kh: k, kw: k, stride: (2, 2), padding: (p, p), dilation: (1, 1), groups: 1 };
        let (oh, ow) = g.out_hw().unwrap();
        let r = |n: usize| (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2).collect::<Vec<f32>>();
        let (x, w, b) = (r(3 * size * size), r(c_out * g.col_rows()), r(c_out));
        let mut y = vec![0f32; c_out * oh * ow];
        let mut cols = vec![0f32; g.col_rows() * oh * ow];
        let ep = Epilogue::Clamp(0.0, 6.0);
        let (mut t1, mut t2) = (vec![], vec![]);
        for _ in 0..iters {
            let t0 = Instant::now();
            im2col(&g, &x, &mut cols);
            gemm(MatRef::row_major(&w, c_out, g.col_rows()), MatRef::row_major(&cols, g.col_rows(), oh * ow), &mut y, false, true);
            y.chunks_mut(oh * ow).zip(&b).for_each(|(row, &bv)| ep.apply_bias(row, bv));
            t1.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            cnnkit_kernels::direct::forward(&g, &x, &w, Some(&b), ep, &mut y);
            t2.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let (a, d) = (median(t1), median(t2));
        let gf = g.flops() / 1e6;
        println!("3→{c_out} {k}×{k} s2 @{size}: im2col + gemm crate {a:.3} ms ({:.0} GF/s), direct {d:.3} ms ({:.0} GF/s)", gf / a, gf / d);
    }
}
