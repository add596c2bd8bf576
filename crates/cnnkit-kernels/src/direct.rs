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
                row(
                    g,
                    &x[i * g.c_in * g.h * g.w..][..g.c_in * g.h * g.w],
                    w,
                    b,
                    ep,
                    oy,
                    yp.get().add((i * g.c_out * oh + oy) * ow),
                    oh * ow,
                    &mut taps,
                )
            };
        }
    });
}

/// Output row oy of one image, every channel: channel co's row written at `dst + co·ld_c`
/// (OW floats). x: (C_in, H, W); taps: K·16 scratch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)] // geometry, operands, the row, its destination and scratch
unsafe fn row(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    ep: Epilogue,
    oy: usize,
    dst: *mut f32,
    ld_c: usize,
    taps: &mut [f32],
) {
    use std::arch::x86_64::*;
    let ow = g.out_hw().map_or(0, |(_, ow)| ow);
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
        let out = |co: usize| dst.add(co * ld_c + ox0);
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

/// True when [`forward_max_pooled`] handles `g` followed by a 3×3 stride-2 max pool with
/// padding 1 (floor mode): [`applies`], and an output plane of at least 2×2.
pub fn applies_max_pooled(g: &ConvGeom) -> bool {
    applies(g) && g.out_hw().is_some_and(|(oh, ow)| oh >= 2 && ow >= 2)
}

/// The pooled plane of [`forward_max_pooled`]: ((OH − 1)/2 + 1, (OW − 1)/2 + 1).
pub fn max_pooled_hw(g: &ConvGeom) -> Option<(usize, usize)> {
    g.out_hw().map(|(oh, ow)| ((oh - 1) / 2 + 1, (ow - 1) / 2 + 1))
}

/// y = max_pool(act(conv(x, w) + b)), the max pool 3×3, stride 2, padding 1 (ResNet's stem:
/// conv 7×7 s2, ReLU, max pool). x: (N, C_in, H, W); y: (N, C_out, PH, PW) with (PH, PW) from
/// [`max_pooled_hw`] (overwritten).
///
/// Each task walks a range of pooled rows, making the convolution rows they read (2·py − 1 ..=
/// 2·py + 1) into a ring of three rows per channel and pooling them at once: the convolution's
/// output never reaches memory. At 224×224 it is 3.2 MB per image, written to a cold buffer
/// and read back by the pool; in ResNet18 at batch 1 those two passes made the stem 1.5 + 0.17 ms
/// against the convolution's 1.2 ms alone.
/// Panics unless [`applies_max_pooled`] and the slices have those sizes.
pub fn forward_max_pooled(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>, ep: Epilogue, y: &mut [f32]) {
    assert!(applies_max_pooled(g), "direct: unsupported geometry {g:?}");
    let (oh, ow) = g.out_hw().expect("checked by applies");
    let (ph, pw) = max_pooled_hw(g).expect("checked by applies");
    let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * ph * pw);
    assert!(x.len() >= g.n * x_img && w.len() >= g.c_out * g.col_rows() && y.len() >= g.n * y_img);
    assert!(b.is_none_or(|b| b.len() >= g.c_out));
    let yp = crate::conv::SyncPtr(y.as_mut_ptr());
    let rows = g.n * ph;
    // Pooled rows in chunks, a few per thread's share; a chunk makes one convolution row twice
    // only at its start (the row shared with the previous chunk).
    let per = rows.div_ceil(2 * crate::num_threads()).max(1);
    (0..rows.div_ceil(per)).into_par_iter().for_each(|c| {
        let mut taps = [0f32; MAX_K * 16];
        crate::packed::with_local(3 * g.c_out * ow, |ring| {
            // Convolution row r of the current image is kept in slot r % 3: ring[(co·3 + slot)·OW ..].
            let mut have: [Option<(usize, usize)>; 3] = [None; 3];
            for r in c * per..((c + 1) * per).min(rows) {
                let (i, py) = (r / ph, r % ph);
                let xi = &x[i * x_img..][..x_img];
                let (lo, hi) = ((2 * py).saturating_sub(1), (2 * py + 2).min(oh));
                for oy in lo..hi {
                    let slot = oy % 3;
                    if have[slot] != Some((i, oy)) {
                        // SAFETY: AVX-512F is checked by applies; the ring holds 3 rows per channel.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            row(g, xi, w, b, ep, oy, ring.as_mut_ptr().add(slot * ow), 3 * ow, &mut taps)
                        };
                        have[slot] = Some((i, oy));
                    }
                }
                for co in 0..g.c_out {
                    let rings = &ring[co * 3 * ow..][..3 * ow];
                    // SAFETY: row py of plane (i, co) of y belongs to this task; y holds n images.
                    let out = unsafe { std::slice::from_raw_parts_mut(yp.get().add((i * g.c_out + co) * ph * pw + py * pw), pw) };
                    let ring_row = |oy: usize| &rings[(oy % 3) * ow..][..ow];
                    // SAFETY: AVX-512F (applies); the rows are OW long and out (OW − 1)/2 + 1.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        pool_row(ring_row(lo), (lo + 1 < hi).then(|| ring_row(lo + 1)), (lo + 2 < hi).then(|| ring_row(lo + 2)), out)
                    };
                }
            }
        });
    });
}

/// One pooled row: out[px] = the max of columns 2·px − 1 ..= 2·px + 1 (inside the row) of
/// the rows given (one to three), a NaN propagating as in PyTorch's max pool. Sixteen outputs
/// per step: the rows' maximum over 32 columns (and the step before's last), split into the
/// window's three columns by the stride-2 permutes (`simd::stride2_lanes`), columns outside
/// the row read as −∞.
///
/// # Safety
/// The CPU supports AVX-512F; out.len() = (r0.len() − 1)/2 + 1; r1 and r2 as long as r0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool_row(r0: &[f32], r1: Option<&[f32]>, r2: Option<&[f32]>, out: &mut [f32]) {
    use crate::simd::stride2_lanes;
    use std::arch::x86_64::*;
    let ow = r0.len();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    // max(a, b) where a NaN in either wins (maxps returns its second operand for a NaN).
    let max = |a: __m512, b: __m512| _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a), a);
    // The rows' maximum of the 16 columns from c (−∞ outside the row).
    let col = |c: isize| {
        let m = crate::simd::lane_mask(c, ow);
        // SAFETY: masked-off lanes are not read; the others lie in the rows (ow floats each).
        let mut v = _mm512_mask_loadu_ps(ninf, m, r0.as_ptr().wrapping_offset(c));
        for r in [r1, r2].into_iter().flatten() {
            v = max(v, _mm512_mask_loadu_ps(ninf, m, r.as_ptr().wrapping_offset(c)));
        }
        v
    };
    // Lane j of `shifted(u, prev)` is column c − 1 + j where u holds columns c .. c + 16 and
    // prev the 16 before them: each column's maximum over the rows is taken once.
    let shifted =
        |u: __m512, prev: __m512| _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(_mm512_castps_si512(u), _mm512_castps_si512(prev)));
    // Columns c0 − 16 .. c0 (left of the row at the start: −∞).
    let mut prev = ninf;
    for px0 in (0..out.len()).step_by(16) {
        let c0 = (2 * px0) as isize;
        let (u0, u1) = (col(c0), col(c0 + 16));
        let (v0, v1) = (shifted(u0, prev), shifted(u1, u0));
        prev = u1;
        let v = max(max(stride2_lanes::<false>(v0, v1), stride2_lanes::<false>(u0, u1)), stride2_lanes::<true>(u0, u1));
        let store = ((1u32 << (out.len() - px0).min(16)) - 1) as __mmask16;
        // SAFETY: outputs px0 .. px0 + 16, masked to the row.
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(px0), store, v);
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
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// The convolution with its 3×3 stride-2 pad-1 max pool against the naive convolution
        /// pooled naively: odd and even planes, several images and pooled-row chunks, each
        /// activation (a negative clamp floor, so the pool sees negative values), pooled rows of one
        /// and two 16-output steps.
        #[test]
        fn max_pooled_matches_naive(n in 1usize..3, c_in in 1usize..4, c_out in 1usize..20, h in 3usize..40, w in 3usize..100,
                                    k in 1usize..8, p in 0usize..4, act in 0usize..3, seed in 0u64..10_000) {
            let g = ConvGeom { n, c_in, h, w, c_out, kh: k, kw: k, stride: (2, 2), padding: (p, p), dilation: (1, 1), groups: 1 };
            if !applies_max_pooled(&g) {
                return Ok(());
            }
            let (oh, ow) = g.out_hw().unwrap();
            let (ph, pw) = max_pooled_hw(&g).unwrap();
            let mut sd = seed;
            let mut rnd = |len: usize| -> Vec<f64> {
                (0..len).map(|_| { sd = sd.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((sd >> 33) as f64 / (1u64 << 31) as f64) - 0.5 }).collect()
            };
            let (x, wt, bv) = (rnd(n * c_in * h * w), rnd(c_out * c_in * k * k), rnd(c_out));
            let ep = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(-0.1, 0.2)][act];
            let mut conv = reference::conv2d_naive(&g, &x, &wt, Some(&bv));
            ep.apply(&mut conv);
            let mut want = vec![f64::NEG_INFINITY; n * c_out * ph * pw];
            for (plane, out) in conv.chunks(oh * ow).zip(want.chunks_mut(ph * pw)) {
                for py in 0..ph {
                    for px in 0..pw {
                        for oy in (2 * py).saturating_sub(1)..(2 * py + 2).min(oh) {
                            for ox in (2 * px).saturating_sub(1)..(2 * px + 2).min(ow) {
                                out[py * pw + px] = out[py * pw + px].max(plane[oy * ow + ox]);
                            }
                        }
                    }
                }
            }
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let mut y = vec![f32::NAN; want.len()];
            forward_max_pooled(&g, &f(&x), &f(&wt), Some(&f(&bv)), ep, &mut y);
            prop_assert!(reference::max_abs_diff(&y, &want) < 1e-5, "{:?} {:?}", g, ep);
        }
    }

    /// A NaN in the input reaches the pooled output, as PyTorch's max pool lets it.
    #[test]
    fn max_pooled_propagates_nan() {
        let g =
            ConvGeom { n: 1, c_in: 1, h: 8, w: 8, c_out: 2, kh: 1, kw: 1, stride: (2, 2), padding: (0, 0), dilation: (1, 1), groups: 1 };
        if !applies_max_pooled(&g) {
            return;
        }
        let mut x = vec![1.0f32; 64];
        // Convolution output (1, 1) of both channels, which every 3×3 window of the 4×4 plane
        // covers; the other outputs are 1 and 2, which a NaN-dropping max would return.
        x[2 * 8 + 2] = f32::NAN;
        let mut y = vec![0.0f32; 2 * 4];
        forward_max_pooled(&g, &x, &[1.0, 2.0], None, Epilogue::Relu, &mut y);
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    }

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
