//! Direct forward convolution for few input channels and stride 2 (a network's first layer),
//! f32 with AVX-512: MobileNetV2's and EfficientNet's stem (3 → 32, 3×3, stride 2), ResNet's
//! (3 → 64, 7×7, stride 2).
//!
//! With K = C_in·KH·KW of 27, im2col + GEMM has little depth per output for the GEMM, and a
//! stride-2 im2col gathers every other column: MobileNetV2's stem ran at 66–83 GFLOP/s on two
//! threads. Here 16 output pixels of one row are one vector. For each step their K input
//! vectors (the taps) are gathered once into an L1 buffer (masked loads read the padding as
//! zeros, permutes keep the even columns), and then every output channel is a K-long chain of
//! FMAs with broadcast weights, 12 channels at a time in registers, bias and activation
//! applied before the one store: 0.28 → 0.15 ms at 224×224. At stride 1 im2col + GEMM keeps
//! up (the seed's CIFAR 3 → 16 and MNIST 1 → 32 layers ran as fast or faster), so it keeps
//! those.

use crate::conv::{ConvGeom, Epilogue};
use rayon::prelude::*;

/// Most K = C_in·KH·KW for [`applies`]: the taps buffer (K × 16 floats, 10 KiB) must stay in
/// L1. ResNet's 7×7 stem (K = 147) is inside: 1.47 → 1.2 ms at 224×224, batch 1.
const MAX_K: usize = 160;
/// Output channels kept in registers per pass over the taps.
const CB: usize = 12;

/// True when [`forward`] handles `g` on this CPU: AVX-512F, one group, stride 2 in both
/// directions, no dilation, K = C_in·KH·KW ≤ [`MAX_K`], kernels at most 8 wide.
pub fn applies(g: &ConvGeom) -> bool {
    crate::packed::available()
        && g.groups == 1
        && g.dilation == (1, 1)
        && g.stride == (2, 2)
        && g.c_in * g.kh * g.kw <= MAX_K
        && g.kw <= 8
        && g.out_hw().is_some()
}

/// y = act(conv(x, w) + b) where [`applies`] holds. x: (N, C_in, H, W); w: (C_out, C_in, KH,
/// KW); b: (C_out); y: (N, C_out, OH, OW) (overwritten). Output rows run in parallel.
pub fn forward(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>, ep: Epilogue, y: &mut [f32]) {
    assert!(applies(g), "direct: unsupported geometry {g:?}");
    let (oh, ow) = g.out_hw().expect("checked by applies");
    let k = g.c_in * g.kh * g.kw;
    assert!(x.len() >= g.n * g.c_in * g.h * g.w && w.len() >= g.c_out * k && y.len() >= g.n * g.c_out * oh * ow);
    assert!(b.is_none_or(|b| b.len() >= g.c_out));
    let yp = crate::conv::SyncPtr(y.as_mut_ptr());
    let rows = g.n * oh;
    // Rows in chunks, a few per thread's share, so the tasks are not too small.
    let per = rows.div_ceil(4 * crate::num_threads()).max(1);
    (0..rows.div_ceil(per)).into_par_iter().for_each(|c| {
        let mut taps = [0f32; MAX_K * 16];
        for r in c * per..((c + 1) * per).min(rows) {
            let (i, oy) = (r / oh, r % oh);
            // SAFETY: AVX-512F is checked by applies; row (i, oy) of every output channel is
            // written by this task only, inside y (asserted above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                row(g, &x[i * g.c_in * g.h * g.w..][..g.c_in * g.h * g.w], w, b, ep, oy, yp.get().add(i * g.c_out * oh * ow), &mut taps)
            };
        }
    });
}

/// Output row oy of one image, every channel. x: (C_in, H, W); y: the image's output
/// (C_out, OH, OW); taps: K·16 scratch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)] // geometry, operands, the row and its scratch
unsafe fn row(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>, ep: Epilogue, oy: usize, y: *mut f32, taps: &mut [f32]) {
    use std::arch::x86_64::*;
    let (oh, ow) = g.out_hw().unwrap_or((0, 0));
    let (kh, kw) = (g.kh, g.kw);
    let k = g.c_in * kh * kw;
    let (lo, hi) = ep.bounds::<f32>();
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let clamp = ep != Epilogue::None;
    for ox0 in (0..ow).step_by(16) {
        let l = (ow - ox0).min(16);
        // The taps: taps[t·16 + j] = x[ci][2·oy + ky − ph][2·(ox0 + j) + kx − pw], t = (ci, ky, kx).
        // Per kx: the first column read and the masks of its one or two loads (the same for
        // every input row).
        let cols: [(isize, u16, u16); 8] = std::array::from_fn(|kx| {
            let c0 = (2 * ox0 + kx) as isize - g.padding.1 as isize;
            (c0, crate::simd::lane_mask(c0, g.w), crate::simd::lane_mask(c0 + 16, g.w))
        });
        for ci in 0..g.c_in {
            for ky in 0..kh {
                let iy = (2 * oy + ky) as isize - g.padding.0 as isize;
                let t0 = (ci * kh + ky) * kw;
                if iy < 0 || iy >= g.h as isize {
                    taps[t0 * 16..(t0 + kw) * 16].fill(0.0);
                    continue;
                }
                let r = x.as_ptr().add((ci * g.h + iy as usize) * g.w);
                for (kx, &(c0, ma, mb)) in cols.iter().enumerate().take(kw) {
                    _mm512_storeu_ps(taps.as_mut_ptr().add((t0 + kx) * 16), even_columns(r, c0, ma, mb));
                }
            }
        }
        let store = ((1u32 << l) - 1) as __mmask16;
        let out = |co: usize| y.add((co * oh + oy) * ow + ox0);
        let mut co0 = 0;
        while co0 + CB <= g.c_out {
            channels::<CB>(k, taps, w, b, co0, clamp, vlo, vhi, store, out);
            co0 += CB;
        }
        // The last few channels: a register block of their exact count, so the accumulators
        // stay in registers (a runtime count would spill them to the stack).
        macro_rules! rest {
            ($($n:literal),*) => {
                match g.c_out - co0 {
                    0 => {}
                    $($n => channels::<$n>(k, taps, w, b, co0, clamp, vlo, vhi, store, out),)*
                    _ => unreachable!("fewer than CB channels remain"),
                }
            };
        }
        rest!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11);
    }
}

/// One tap for 16 outputs of a stride-2 row: columns c0, c0 + 2, …, c0 + 30 of the input row
/// at `r`, zero where the masks (`simd::lane_mask` of c0 and of c0 + 16 for the row's width)
/// leave the row. Two masked loads and a permute that keeps the even columns.
///
/// # Safety
/// AVX-512F; `r` points at an input row of the width the masks were made for.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn even_columns(r: *const f32, c0: isize, ma: u16, mb: u16) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: masked-off lanes are not read; the read lanes lie in the row.
    let a = _mm512_maskz_loadu_ps(ma, r.wrapping_offset(c0));
    let b = _mm512_maskz_loadu_ps(mb, r.wrapping_offset(c0 + 16));
    crate::simd::stride2_lanes::<false>(a, b)
}

/// Output channels co0 .. co0 + NC of one 16-pixel step: NC chains of K FMAs over the taps,
/// then bias, activation and a masked store at `out(co)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn channels<const NC: usize>(
    k: usize,
    taps: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    co0: usize,
    clamp: bool,
    vlo: std::arch::x86_64::__m512,
    vhi: std::arch::x86_64::__m512,
    store: std::arch::x86_64::__mmask16,
    out: impl Fn(usize) -> *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc: [__m512; NC] = std::array::from_fn(|j| _mm512_set1_ps(b.map_or(0.0, |b| b[co0 + j])));
    let wp = w.as_ptr().add(co0 * k);
    for t in 0..k {
        let tv = _mm512_loadu_ps(taps.as_ptr().add(t * 16));
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(tv, _mm512_set1_ps(*wp.add(j * k + t)), *a);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let mut v = *a;
        if clamp {
            v = crate::simd::clamp_ps(v, vlo, vhi);
        }
        _mm512_mask_storeu_ps(out(co0 + j), store, v);
    }
}

/// The taps of output rows oy0 .. oy1 of one image, as a (K, P) matrix for the pointwise
/// kernel (im2col of a band of rows; the fused block's stem, `crate::fused::Stem`):
/// taps[t·P + (oy − oy0)·OW + ox] = x[ci][2·oy + ky − ph][2·ox + kx − pw] for t = (ci, ky,
/// kx), P = (oy1 − oy0)·OW, zero in the padding. x: (C_in, H, W); `g` as [`applies`] takes
/// it. 16 outputs of a row at a time, as [`row`] gathers them.
///
/// (Run on its own, this and `pointwise::run` over bands of rows were as fast as [`forward`]
/// for MobileNetV2's stem but 5–10% slower for ResNet's, K = 147, whose 64-pixel panels of
/// taps overflow L1.)
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gather(g: &ConvGeom, x: &[f32], oy0: usize, oy1: usize, taps: &mut [f32]) {
    use std::arch::x86_64::*;
    let ow = g.out_hw().map_or(0, |(_, ow)| ow);
    let (kh, kw) = (g.kh, g.kw);
    let p = (oy1 - oy0) * ow;
    assert!(taps.len() >= g.c_in * kh * kw * p && x.len() >= g.c_in * g.h * g.w);
    let tp = taps.as_mut_ptr();
    // Row by row, each input row walked left to right (in 16-output steps), so its lines are
    // read in order and the hardware prefetcher streams the image in. (Column slab by slab,
    // every step's two lines of a row missed: 3% of MobileNetV2 at batch 1, nearly all of it
    // stalled on those loads.)
    for oy in oy0..oy1 {
        for ci in 0..g.c_in {
            for ky in 0..kh {
                let iy = (2 * oy + ky) as isize - g.padding.0 as isize;
                let t0 = (ci * kh + ky) * kw;
                let row = (iy >= 0 && iy < g.h as isize).then(|| x.as_ptr().add((ci * g.h + iy as usize) * g.w));
                for ox0 in (0..ow).step_by(16) {
                    // Masked stores: a row's last vector must not run into the next row's taps.
                    let store = ((1u32 << (ow - ox0).min(16)) - 1) as __mmask16;
                    let at = (oy - oy0) * ow + ox0;
                    for kx in 0..kw {
                        let v = match row {
                            Some(r) => {
                                let c0 = (2 * ox0 + kx) as isize - g.padding.1 as isize;
                                even_columns(r, c0, crate::simd::lane_mask(c0, g.w), crate::simd::lane_mask(c0 + 16, g.w))
                            }
                            None => _mm512_setzero_ps(),
                        };
                        _mm512_mask_storeu_ps(tp.add((t0 + kx) * p + at), store, v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(60))]
        /// Against the naive twin: kernels 1 to 7 (K up to 147), padding 0 to 3, rows of
        /// one to three 16-pixel steps, channel counts past a register block, each activation.
        #[test]
        fn direct_matches_naive(n in 1usize..3, c_in in 1usize..4, c_out in 1usize..30, h in 1usize..12, w in 1usize..70,
                                k in 1usize..8, p in 0usize..4, act in 0usize..3, bias: bool, seed in 0u64..10_000) {
            let g = ConvGeom { n, c_in, h, w, c_out, kh: k, kw: k, stride: (2, 2), padding: (p, p), dilation: (1, 1), groups: 1 };
            if !applies(&g) {
                return Ok(());
            }
            let (oh, ow) = g.out_hw().unwrap();
            let mut sd = seed;
            let mut rnd = |len: usize| -> Vec<f64> {
                (0..len).map(|_| { sd = sd.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((sd >> 33) as f64 / (1u64 << 31) as f64) - 0.5 }).collect()
            };
            let (x, wt, bv) = (rnd(n * c_in * h * w), rnd(c_out * c_in * k * k), rnd(c_out));
            let ep = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(-0.1, 0.2)][act];
            let bo = bias.then_some(&bv[..]);
            let mut want = reference::conv2d_naive(&g, &x, &wt, bo);
            ep.apply(&mut want);
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let b32 = f(&bv);
            let mut y = vec![f32::NAN; n * c_out * oh * ow];
            forward(&g, &f(&x), &f(&wt), bias.then_some(&b32[..]), ep, &mut y);
            prop_assert!(reference::max_abs_diff(&y, &want) < 1e-5, "{:?} {:?}", g, ep);
        }

        /// The band gather against im2col of the same rows: every tap, the padding's zeros,
        /// rows that end in a partial vector.
        #[test]
        fn gather_matches_im2col(c_in in 1usize..4, h in 1usize..40, w in 1usize..70, k in 1usize..8, p in 0usize..4,
                                 rows in 1usize..6, seed in 0u64..10_000) {
            let g = ConvGeom { n: 1, c_in, h, w, c_out: 1, kh: k, kw: k, stride: (2, 2), padding: (p, p), dilation: (1, 1), groups: 1 };
            if !applies(&g) {
                return Ok(());
            }
            let (oh, ow) = g.out_hw().unwrap();
            let mut sd = seed;
            let x: Vec<f32> = reference::rand_vec(c_in * h * w, &mut sd).into_iter().map(|v| v as f32).collect();
            let (oy0, oy1) = ((seed as usize) % oh, ((seed as usize) % oh + rows).min(oh));
            let len = g.col_rows() * (oy1 - oy0) * ow;
            let mut want = vec![0f32; len];
            crate::conv::im2col_rows(&g, &x, oy0, oy1, &mut want);
            // One float more than the taps, which must stay untouched.
            let mut got = vec![f32::NAN; len + 1];
            // SAFETY: AVX-512F is checked by applies.
            unsafe { gather(&g, &x, oy0, oy1, &mut got) };
            prop_assert_eq!(&got[..len], &want[..]);
            prop_assert!(got[len].is_nan());
        }
    }
}
