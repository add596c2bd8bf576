//! Times MobileNetV2's inverted residual blocks at batch 1, layer by layer (1×1 layers on the
//! weights packed where the network's plan packs them) against the fused kernel
//! (`cnnkit_kernels::fused`), then the stem and the first block: the stem's own kernel
//! and the fused block against the block that makes the stem's rows itself.
//! Run: cargo run --release -p cnnkit-kernels --example fused_block [ITERS]
mod common;
use cnnkit_kernels::conv::{conv2d_forward_ep, conv2d_forward_packed, ConvGeom, Epilogue};
use cnnkit_kernels::fused::{forward, InvertedResidual, PackedWeights, Pointwise, Stem};
use cnnkit_kernels::matmul::MatRef;
use cnnkit_kernels::packed::PackedA;
use common::median;
use std::time::Instant;

fn main() {
    common::on_worker(run);
}

fn run() {
    let iters: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    // (C_in, expansion, C_out, H, stride)
    let blocks = [
        (32, 1, 16, 112, 1),
        (16, 6, 24, 112, 2),
        (24, 6, 24, 56, 1),
        (24, 6, 32, 56, 2),
        (32, 6, 32, 28, 1),
        (32, 6, 64, 28, 2),
        (64, 6, 64, 14, 1),
        (64, 6, 96, 14, 1),
        (96, 6, 96, 14, 1),
        (96, 6, 160, 14, 2),
        (160, 6, 160, 7, 1),
        (160, 6, 320, 7, 1),
    ];
    let relu6 = Epilogue::Clamp(0.0, 6.0);
    for (c_in, t, c_out, h, s) in blocks {
        let c_mid = c_in * t;
        let r = |n: usize| (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2).collect::<Vec<f32>>();
        let (x, ew, eb, dw, db, pw, pb) = (r(c_in * h * h), r(c_mid * c_in), r(c_mid), r(c_mid * 9), r(c_mid), r(c_out * c_mid), r(c_out));
        let residual = s == 1 && c_in == c_out;
        // Packed once, as the network's plan keeps them (the split by channels needs them).
        let (pe, pp) = (PackedA::new(MatRef::row_major(&ew, c_mid, c_in)), PackedA::new(MatRef::row_major(&pw, c_out, c_mid)));
        let blk = InvertedResidual {
            c_in,
            c_mid,
            c_out,
            h,
            w: h,
            expand: (t > 1).then_some(Pointwise { w: &ew, b: Some(&eb), ep: relu6 }),
            stem: None,
            dw_w: &dw,
            dw_b: Some(&db),
            dw_ep: relu6,
            stride: s,
            project: Pointwise { w: &pw, b: Some(&pb), ep: Epilogue::None },
            after: Epilogue::None,
            packed: Some(PackedWeights { expand: &pe, project: &pp }),
        };
        let oh = (h - 1) / s + 1;
        let res = r(c_out * oh * oh);
        let pwg = |ci, co, hh| ConvGeom::pointwise(1, ci, co, hh, hh);
        let dg = ConvGeom {
            n: 1,
            c_in: c_mid,
            c_out: c_mid,
            h,
            w: h,
            kh: 3,
            kw: 3,
            stride: (s, s),
            padding: (1, 1),
            dilation: (1, 1),
            groups: c_mid,
        };
        let mut mid = vec![0.0f32; c_mid * h * h];
        let mut d = vec![0.0f32; c_mid * oh * oh];
        let mut y = vec![0.0f32; c_out * oh * oh];
        let mut layers = || {
            let m: &[f32] = if t > 1 {
                conv2d_forward_packed(&pwg(c_in, c_mid, h), &x, &ew, &pe, Some(&eb), relu6, &mut mid);
                &mid
            } else {
                &x
            };
            conv2d_forward_ep(&dg, m, &dw, Some(&db), relu6, &mut d);
            conv2d_forward_packed(&pwg(c_mid, c_out, oh), &d, &pw, &pp, Some(&pb), Epilogue::None, &mut y);
            if residual {
                y.iter_mut().zip(&res).for_each(|(v, q)| *v += q);
            }
        };
        let mut tl = vec![];
        let mut tf = vec![];
        let mut yf = vec![0.0f32; c_out * oh * oh];
        for _ in 0..iters {
            let t0 = Instant::now();
            layers();
            tl.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            if blk.applies() {
                forward(&blk, 1, &x, residual.then_some(&res[..]), &mut yf);
            }
            tf.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "{c_in:>3}→{c_mid:>3}→{c_out:>3} @{h:>3} s{s}: layers {:.3} ms, fused {:.3} ms{}",
            median(tl),
            median(tf),
            if blk.applies() { "" } else { " (not applicable)" }
        );
    }
    stem_and_first_block(iters);
}

fn stem_and_first_block(iters: usize) {
    let r = |n: usize| (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2).collect::<Vec<f32>>();
    // Leaked so the blocks can hold them in a closure's return value.
    let r = |n: usize| -> &'static [f32] { r(n).leak() };
    let (img, sw, sb, dw, db, pw, pb) = (r(3 * 224 * 224), r(32 * 27), r(32), r(32 * 9), r(32), r(16 * 32), r(16));
    let relu6 = Epilogue::Clamp(0.0, 6.0);
    let g =
        ConvGeom { n: 1, c_in: 3, h: 224, w: 224, c_out: 32, kh: 3, kw: 3, stride: (2, 2), padding: (1, 1), dilation: (1, 1), groups: 1 };
    let stem = Stem { c_img: 3, h: 224, w: 224, kh: 3, kw: 3, padding: (1, 1), conv: Pointwise { w: sw, b: Some(sb), ep: relu6 } };
    let blk = |stem: Option<Stem<'static>>| InvertedResidual {
        c_in: 32,
        c_mid: 32,
        c_out: 16,
        h: 112,
        w: 112,
        expand: None,
        stem,
        dw_w: dw,
        dw_b: Some(db),
        dw_ep: relu6,
        stride: 1,
        project: Pointwise { w: pw, b: Some(pb), ep: Epilogue::None },
        after: Epilogue::None,
        packed: None,
    };
    let (plain, fused) = (blk(None), blk(Some(stem)));
    let (mut x, mut y, mut y2) = (vec![0f32; 32 * 112 * 112], vec![0f32; 16 * 112 * 112], vec![0f32; 16 * 112 * 112]);
    let (mut ta, mut tb) = (vec![], vec![]);
    for _ in 0..iters {
        let t0 = Instant::now();
        conv2d_forward_ep(&g, img, sw, Some(sb), relu6, &mut x);
        forward(&plain, 1, &x, None, &mut y);
        ta.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        forward(&fused, 1, img, None, &mut y2);
        tb.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!("stem 3→32 s2 @224 + 32→32→16 @112: stem, then block {:.3} ms; block with the stem {:.3} ms", median(ta), median(tb));
}
