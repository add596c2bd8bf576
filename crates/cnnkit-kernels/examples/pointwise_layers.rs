//! Times MobileNetV2's 1×1 layers at batch 1: the `gemm` crate (W · X, then bias and
//! activation in a second pass) against `pointwise::run_par`, which `conv2d_forward_ep` uses. Run: cargo run --release -p cnnkit-kernels --example pointwise_layers
mod common;
use cnnkit_kernels::conv::Epilogue;
use cnnkit_kernels::matmul::{gemm, MatRef};
use common::median;
use std::time::Instant;

fn main() {
    common::on_worker(run);
}

fn run() {
    let iters: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    for (ci, co, s) in [
        (16, 96, 112),
        (24, 144, 56),
        (144, 24, 56),
        (32, 192, 28),
        (192, 32, 28),
        (64, 384, 14),
        (384, 64, 14),
        (96, 576, 14),
        (576, 96, 14),
        (160, 960, 7),
        (960, 160, 7),
        (320, 1280, 7),
    ] {
        let r = |n: usize| (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2).collect::<Vec<f32>>();
        let (x, w, b) = (r(ci * s * s), r(co * ci), r(co));
        let mut y = vec![0f32; co * s * s];
        let mut y2 = vec![0f32; co * s * s];
        let ep = Epilogue::Clamp(0.0, 6.0);
        let (mut t1, mut t2) = (vec![], vec![]);
        for _ in 0..iters {
            let t0 = Instant::now();
            gemm(MatRef::row_major(&w, co, ci), MatRef::row_major(&x, ci, s * s), &mut y, false, true);
            y.chunks_mut(s * s).zip(&b).for_each(|(row, &bv)| ep.apply_bias(row, bv));
            t1.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            let o = cnnkit_kernels::pointwise::Operands {
                m: co,
                n: s * s,
                k: ci,
                a: w.as_ptr(),
                lda: ci,
                b: x.as_ptr(),
                ldb: s * s,
                bias: Some(b.as_ptr()),
                ep,
                residual: None,
                after: Epilogue::None,
                y: y2.as_mut_ptr(),
                ldy: s * s,
            };
            // SAFETY: AVX-512 on the benchmark machine; the buffers hold the operands.
            unsafe { cnnkit_kernels::pointwise::run_par(&o) };
            t2.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let (a, b) = (median(t1), median(t2));
        let gf = 2.0 * (ci * co * s * s) as f64 / 1e6;
        println!("{ci:>4}→{co:<5}@{s:>3}: gemm crate {a:.3} ms ({:.0} GF/s), pointwise {b:.3} ms ({:.0} GF/s)", gf / a, gf / b);
    }
}
