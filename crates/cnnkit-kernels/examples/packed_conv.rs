//! One convolution at batch 1, forward, through the gemm crate and through cnnkit's packed GEMM
//! (weights packed once, as inference keeps them), in one process; prints medians of 400 runs.
//!   cargo run --release -p cnnkit-kernels --example packed_conv -- C_IN C_OUT SIZE KERNEL STRIDE PADDING [COLD]
//! With COLD = 1, 64 MiB are written between runs (untimed), so the weights come from memory
//! as they do in a network, where every other layer's weights and activations pass through
//! the caches in between.
mod common;
use cnnkit_kernels::conv::{conv2d_forward, conv2d_forward_packed, ConvGeom, Epilogue};
use cnnkit_kernels::matmul::MatRef;
use cnnkit_kernels::packed::PackedA;
use std::time::Instant;
fn time(cold: usize, mut f: impl FnMut()) -> f64 {
    let mut ts = vec![];
    let mut other = vec![0u8; cold << 20];
    for i in 0..400 {
        other.iter_mut().for_each(|v| *v = i as u8);
        let t = Instant::now();
        f();
        ts.push(t.elapsed().as_secs_f64());
    }
    common::median(ts)
}
fn main() {
    common::on_worker(run);
}

fn run() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    if args.len() < 6 {
        eprintln!("usage: packed_conv C_IN C_OUT SIZE KERNEL STRIDE PADDING");
        std::process::exit(2);
    }
    let (ci, co, s, k, st, p) = (args[0], args[1], args[2], args[3], args[4], args[5]);
    let cold = args.get(6).map_or(0, |&c| if c == 1 { 64 } else { c });
    let g =
        ConvGeom { n: 1, c_in: ci, h: s, w: s, c_out: co, kh: k, kw: k, stride: (st, st), padding: (p, p), dilation: (1, 1), groups: 1 };
    let (oh, ow) = g.out_hw().unwrap();
    let x: Vec<f32> = (0..ci * s * s).map(|i| ((i * 7 % 13) as f32) * 0.01).collect();
    let w: Vec<f32> = (0..co * ci * k * k).map(|i| ((i * 5 % 11) as f32) * 0.01).collect();
    let mut y = vec![0f32; co * oh * ow];
    let mut y2 = vec![0f32; co * oh * ow];
    let t1 = time(cold, || conv2d_forward(&g, &x, &w, None, &mut y));
    let pw = PackedA::new(MatRef::row_major(&w, co, g.col_rows()));
    let t2 = time(cold, || conv2d_forward_packed(&g, &x, &w, &pw, None, Epilogue::None, &mut y2));
    let md = y.iter().zip(&y2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!(
        "{:?}: gemm crate {:.3} ms {:.1} GF/s | packed {:.3} ms {:.1} GF/s (max diff {md:e})",
        (ci, co, s, k, st, p),
        t1 * 1e3,
        g.flops() / t1 / 1e9,
        t2 * 1e3,
        g.flops() / t2 / 1e9
    );
}
