//! One convolution's three passes timed apart — forward, input gradient, weight gradient —
//! through the dispatching entry points (the algorithm `conv2d_*` choose) and, for 3×3 stride-1
//! layers, through Winograd and im2col + GEMM forced; prints medians of ITERS runs.
//!   cargo run --release -p cnnkit-kernels --example conv_parts -- N C_IN C_OUT SIZE KERNEL STRIDE PADDING [ITERS]
use cnnkit_kernels::conv::{conv2d_backward_input, conv2d_backward_weight, conv2d_forward, ConvGeom};
use std::time::Instant;
fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut ts: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2] * 1e3
}
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    if args.len() < 7 {
        eprintln!("usage: conv_parts N C_IN C_OUT SIZE KERNEL STRIDE PADDING [ITERS]");
        std::process::exit(2);
    }
    let (n, ci, co, s, k, st, p) = (args[0], args[1], args[2], args[3], args[4], args[5], args[6]);
    let iters = args.get(7).copied().unwrap_or(20);
    let g = ConvGeom { n, c_in: ci, h: s, w: s, c_out: co, kh: k, kw: k, stride: (st, st), padding: (p, p), dilation: (1, 1), groups: 1 };
    let Some((oh, ow)) = g.out_hw() else {
        eprintln!("kernel larger than the padded input");
        std::process::exit(2);
    };
    let x: Vec<f32> = (0..n * ci * s * s).map(|i| ((i * 7 % 13) as f32) * 0.01).collect();
    let w: Vec<f32> = (0..co * ci * k * k).map(|i| ((i * 5 % 11) as f32) * 0.01).collect();
    let gy: Vec<f32> = (0..n * co * oh * ow).map(|i| ((i * 3 % 7) as f32) * 0.01).collect();
    let mut y = vec![0f32; gy.len()];
    let mut gx = vec![0f32; x.len()];
    let mut gw = vec![0f32; w.len()];
    let gf = g.flops() / 1e6;
    let tf = time(iters, || conv2d_forward(&g, &x, &w, None, &mut y));
    let ti = time(iters, || conv2d_backward_input(&g, &gy, &w, &mut gx));
    let tw = time(iters, || conv2d_backward_weight(&g, &x, &gy, &mut gw));
    println!(
        "{:?} winograd={}: fwd {tf:.2} ms ({:.0} GF/s) | grad x {ti:.2} ms ({:.0}) | grad w {tw:.2} ms ({:.0}) | total {:.2} ms",
        (n, ci, co, s, k, st, p),
        cnnkit_kernels::winograd::applies(&g),
        gf / tf,
        gf / ti,
        gf / tw,
        tf + ti + tw
    );
}
