//! 2-D pooling kernels on NCHW planes. Parallel over the N·C planes.
//!
//! Max pooling records, per output, the flat index (ih·W + iw) of the winner inside its plane,
//! exactly like PyTorch's `return_indices`, so backward and MaxUnpool2d are scatters.

use crate::Float;
use rayon::prelude::*;

/// Geometry of a pooling window sweep over one (H, W) plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub ceil_mode: bool,
}

fn pooled_size(inp: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Option<usize> {
    let eff = d * (k - 1) + 1;
    if inp + 2 * p < eff || s == 0 {
        return None;
    }
    let num = inp + 2 * p - eff;
    let mut out = if ceil { num.div_ceil(s) + 1 } else { num / s + 1 };
    // PyTorch: the last window must start inside the input or the left padding.
    if ceil && (out - 1) * s >= inp + p {
        out -= 1;
    }
    Some(out)
}

impl PoolGeom {
    /// Output (OH, OW), following PyTorch's pooling_output_shape; None when impossible.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        Some((
            pooled_size(self.h, self.kh, self.stride.0, self.padding.0, self.dilation.0, self.ceil_mode)?,
            pooled_size(self.w, self.kw, self.stride.1, self.padding.1, self.dilation.1, self.ceil_mode)?,
        ))
    }
}

/// The kernel taps k in [lo, hi) whose input position start + k·d lies inside [0, n).
fn tap_range(start: isize, k: usize, d: usize, n: usize) -> (usize, usize) {
    let lo = if start < 0 { ((-start) as usize).div_ceil(d) } else { 0 };
    let hi = if start >= n as isize { 0 } else { ((n as isize - start) as usize).div_ceil(d) }.min(k);
    (lo.min(hi), hi)
}

/// x: (P, H, W) planes; y, idx: (P, OH, OW).
pub fn max_pool2d<T: Float>(g: &PoolGeom, x: &[T], y: &mut [T], idx: &mut [i64]) {
    let (oh, ow) = g.out_hw().expect("PoolGeom checked by caller");
    let plane_in = g.h * g.w;
    let plain2x2 =
        g.kh == 2 && g.kw == 2 && g.stride == (2, 2) && g.padding == (0, 0) && g.dilation == (1, 1) && 2 * oh <= g.h && 2 * ow <= g.w;
    if plain2x2 && oh * ow > 0 {
        y.par_chunks_mut(oh * ow).zip(idx.par_chunks_mut(oh * ow)).enumerate().for_each(|(pi, (yp, ip))| {
            T::with_scratch(4 * oh * ow, |sc| max_pool_plane_2x2_best(g, oh, ow, &x[pi * plane_in..(pi + 1) * plane_in], yp, ip, sc))
        });
        return;
    }
    if g.dilation == (1, 1) && oh * ow > 0 {
        let len = g.h * g.stride.1 * phase_width(g, ow);
        y.par_chunks_mut(oh * ow).zip(idx.par_chunks_mut(oh * ow)).enumerate().for_each(|(pi, (yp, ip))| {
            T::with_scratch(len, |ph| max_pool_plane_phased_idx_best(g, oh, ow, &x[pi * plane_in..(pi + 1) * plane_in], yp, ip, ph));
        });
        return;
    }
    // Dilated windows (the phased kernels above handle dilation 1).
    y.par_chunks_mut(oh * ow).zip(idx.par_chunks_mut(oh * ow)).enumerate().for_each(|(pi, (yp, ip))| {
        crate::simd::with_best_isa(|| {
            let xp = &x[pi * plane_in..(pi + 1) * plane_in];
            for oy in 0..oh {
                let hs = (oy * g.stride.0) as isize - g.padding.0 as isize;
                let (k0, k1) = tap_range(hs, g.kh, g.dilation.0, g.h);
                for ox in 0..ow {
                    let ws = (ox * g.stride.1) as isize - g.padding.1 as isize;
                    let (j0, j1) = tap_range(ws, g.kw, g.dilation.1, g.w);
                    let mut best = T::neg_infinity();
                    let mut bi: i64 = -1;
                    for ki in k0..k1 {
                        let row = (hs + (ki * g.dilation.0) as isize) as usize * g.w;
                        for kj in j0..j1 {
                            let at = row + (ws + (kj * g.dilation.1) as isize) as usize;
                            let v = xp[at];
                            if bi < 0 || v > best || v.is_nan() {
                                best = v;
                                bi = at as i64;
                            }
                        }
                    }
                    yp[oy * ow + ox] = best;
                    ip[oy * ow + ox] = bi.max(0);
                }
            }
        })
    });
}

/// Columns of one phase row in [`max_pool_plane_phased`]: enough for every tap of every output.
fn phase_width(g: &PoolGeom, ow: usize) -> usize {
    ow + (g.kw - 1) / g.stride.1
}

/// The common 2×2/2 unpadded window with indices, every window inside the image. All output
/// rows' input pairs are first split into four flat planes (even/odd columns of the upper and
/// lower row), so each tap is one contiguous run over the whole plane, and the branch-free
/// selects (in PyTorch's scan order) run as one long vector loop even when rows are short
/// (7 and 14 wide in the MNIST network). The winner's tap offset (0, 1, W, W + 1) is stored
/// first and the row base 2·oy·W + 2·ox added after. x: (H, W); y, idx: (OH, OW);
/// sc: 4·OH·OW scratch.
#[inline(always)]
fn max_pool_plane_2x2<T: Float>(g: &PoolGeom, oh: usize, ow: usize, xp: &[T], yp: &mut [T], ip: &mut [i64], sc: &mut [T]) {
    let n = oh * ow;
    let (e0, rest) = sc[..4 * n].split_at_mut(n);
    let (o0, rest) = rest.split_at_mut(n);
    let (e1, o1) = rest.split_at_mut(n);
    for oy in 0..oh {
        let (r0, r1) = (2 * oy * g.w, (2 * oy + 1) * g.w);
        let at = oy * ow..(oy + 1) * ow;
        for (src, e, o) in [
            (&xp[r0..r0 + 2 * ow], &mut e0[at.clone()], &mut o0[at.clone()]),
            (&xp[r1..r1 + 2 * ow], &mut e1[at.clone()], &mut o1[at.clone()]),
        ] {
            for ((p, e), o) in src.chunks_exact(2).zip(e.iter_mut()).zip(o.iter_mut()) {
                *e = p[0];
                *o = p[1];
            }
        }
    }
    let w = g.w as i64;
    let take = |v: T, m: T| (v > m) | v.is_nan();
    for (i, (y, k)) in yp[..n].iter_mut().zip(ip[..n].iter_mut()).enumerate() {
        let (mut m, mut off) = (e0[i], 0i64);
        for (v, o) in [(o0[i], 1i64), (e1[i], w), (o1[i], w + 1)] {
            let t = take(v, m);
            m = if t { v } else { m };
            off = if t { o } else { off };
        }
        *y = m;
        *k = off;
    }
    for (oy, ir) in ip[..n].chunks_exact_mut(ow).enumerate() {
        let base = 2 * oy as i64 * w;
        for (ox, i) in ir.iter_mut().enumerate() {
            *i += base + 2 * ox as i64;
        }
    }
}
best_isa_fn!(max_pool_plane_2x2_best, max_pool_plane_2x2_avx2, max_pool_plane_2x2, (g: &PoolGeom, oh: usize, ow: usize, xp: &[T], yp: &mut [T], ip: &mut [i64], sc: &mut [T]));

/// Splits every row of x into S phase rows of the −∞-padded row (see
/// [`max_pool_plane_phased`]). x: (H, W); ph: (H, S, [`phase_width`]).
#[inline(always)]
fn fill_phases<T: Float>(g: &PoolGeom, ow: usize, x: &[T], ph: &mut [T]) {
    let (s, pad) = (g.stride.1, g.padding.1);
    let pw = phase_width(g, ow);
    for r in 0..s {
        // The indices j0..j1 whose column j·S + r − pad lies inside the row: the same for
        // every row, so computed once per phase.
        let j0 = pad.saturating_sub(r).div_ceil(s).min(pw);
        let j1 = if g.w + pad > r { ((g.w - 1 + pad - r) / s + 1).clamp(j0, pw) } else { j0 };
        for iy in 0..g.h {
            let src = &x[iy * g.w..(iy + 1) * g.w];
            let dst = &mut ph[(iy * s + r) * pw..(iy * s + r + 1) * pw];
            dst[..j0].fill(T::neg_infinity());
            if j1 > j0 {
                let c0 = j0 * s + r - pad;
                dst[j0..j1].iter_mut().zip(src[c0..].iter().step_by(s)).for_each(|(d, &v)| *d = v);
            }
            dst[j1..].fill(T::neg_infinity());
        }
    }
}

/// [`max_pool_plane_phased`] that also records each output's argmax (flat index in the
/// plane), with PyTorch's rule: scan order (ki, kj), a larger value or a NaN takes over, and a
/// window of −∞ reports its first in-image position. The index of tap (ki, kj) is linear in ox
/// (row·W + ox·S + kj − pad), so the selects vectorise too. idx: (OH, OW).
#[inline(always)]
fn max_pool_plane_phased_idx<T: Float>(g: &PoolGeom, oh: usize, ow: usize, x: &[T], y: &mut [T], idx: &mut [i64], ph: &mut [T]) {
    let (s, pad) = (g.stride.1, g.padding.1 as i64);
    let pw = phase_width(g, ow);
    let take = |v: T, m: T| (v > m) | v.is_nan();
    fill_phases(g, ow, x, ph);
    for (oy, (yr, ir)) in y.chunks_exact_mut(ow).zip(idx.chunks_exact_mut(ow)).take(oh).enumerate() {
        let hs = (oy * g.stride.0) as isize - g.padding.0 as isize;
        let (k0, k1) = tap_range(hs, g.kh, 1, g.h);
        yr.fill(T::neg_infinity());
        let first_row = (hs + k0 as isize) as i64 * g.w as i64;
        for (ox, i) in ir.iter_mut().enumerate() {
            *i = first_row + ((ox * s) as i64 - pad).max(0);
        }
        for ki in k0..k1 {
            let iy = (hs + ki as isize) as usize;
            for kj in 0..g.kw {
                let tap = &ph[(iy * s + kj % s) * pw + kj / s..][..ow];
                let base = (iy * g.w + kj) as i64 - pad;
                for (ox, ((a, i), &b)) in yr.iter_mut().zip(ir.iter_mut()).zip(tap).enumerate() {
                    let t = take(b, *a);
                    *a = if t { b } else { *a };
                    *i = if t { base + (ox * s) as i64 } else { *i };
                }
            }
        }
    }
}
best_isa_fn!(max_pool_plane_phased_idx_best, max_pool_plane_phased_idx_avx2, max_pool_plane_phased_idx, (g: &PoolGeom, oh: usize, ow: usize, x: &[T], y: &mut [T], idx: &mut [i64], ph: &mut [T]));

/// One plane of max pooling values for dilation 1. Each input row is split once into S (the
/// column stride) phase rows of the −∞-padded row: phase r, index j = padded column j·S + r.
/// Tap kj of output ox is then phase kj % S at index ox + kj / S, so every tap of a whole
/// output row is one contiguous slice and the max runs as a vector loop (the per-output
/// window loop of the general path is scalar). x: (H, W); y: (OH, OW);
/// ph: (H, S, [`phase_width`]) scratch.
#[inline(always)]
fn max_pool_plane_phased<T: Float>(g: &PoolGeom, oh: usize, ow: usize, x: &[T], y: &mut [T], ph: &mut [T]) {
    let s = g.stride.1;
    let pw = phase_width(g, ow);
    let take = |v: T, m: T| (v > m) | v.is_nan();
    fill_phases(g, ow, x, ph);
    for (oy, yr) in y.chunks_exact_mut(ow).take(oh).enumerate() {
        yr.fill(T::neg_infinity());
        let hs = (oy * g.stride.0) as isize - g.padding.0 as isize;
        let (k0, k1) = tap_range(hs, g.kh, 1, g.h);
        for ki in k0..k1 {
            let iy = (hs + ki as isize) as usize;
            for kj in 0..g.kw {
                let tap = &ph[(iy * s + kj % s) * pw + kj / s..][..ow];
                for (a, &b) in yr.iter_mut().zip(tap) {
                    *a = if take(b, *a) { b } else { *a };
                }
            }
        }
    }
}
best_isa_fn!(max_pool_plane_phased_best, max_pool_plane_phased_avx2, max_pool_plane_phased, (g: &PoolGeom, oh: usize, ow: usize, x: &[T], y: &mut [T], ph: &mut [T]));

/// ResNet's stem pooling: 3×3, stride 2, padding ≤ 1, no dilation.
fn is_3x3s2(g: &PoolGeom) -> bool {
    (g.kh, g.kw) == (3, 3) && g.stride == (2, 2) && g.dilation == (1, 1) && g.padding.0 <= 1 && g.padding.1 <= 1
}

/// One plane of [`max_pool2d_values`] for [`is_3x3s2`] windows, f32 with AVX-512: 16 outputs
/// per step, each input row's columns 2·ox0 − pad .. + 33 read by four masked loads (columns
/// outside the row read as −∞, the padding) and split into even and odd columns by
/// permutes, so each of a window's nine taps is one compare-and-select. The phased kernel
/// above copies every row into phase rows element by element first: ResNet's stem pooling
/// (64 planes 112×112 → 56×56) took 0.7 ms. x: (H, W); y: (OH, OW).
///
/// # Safety
/// The CPU supports AVX-512F; x holds H·W elements and y OH·OW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_pool_plane_3x3s2_avx512(g: &PoolGeom, oh: usize, ow: usize, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= g.h * g.w && y.len() >= oh * ow);
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    // PyTorch's rule: a larger value or a NaN takes over (so NaN propagates).
    let take = |m: __m512, v: __m512| {
        let k = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, m) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_mask_blend_ps(k, m, v)
    };
    let lm = |start: isize| crate::simd::lane_mask(start, g.w);
    for oy in 0..oh {
        let hs = (2 * oy) as isize - g.padding.0 as isize;
        let (k0, k1) = tap_range(hs, 3, 1, g.h);
        for ox0 in (0..ow).step_by(16) {
            let l = (ow - ox0).min(16);
            // Output ox0 + j reads columns c0 + 2j, c0 + 2j + 1, c0 + 2j + 2.
            let c0 = (2 * ox0) as isize - g.padding.1 as isize;
            let (ma0, ma1, mb0, mb1) = (lm(c0), lm(c0 + 16), lm(c0 + 1), lm(c0 + 17));
            let mut m = ninf;
            for ki in k0..k1 {
                let r = x.as_ptr().add((hs + ki as isize) as usize * g.w);
                // SAFETY: masked-off lanes are not read; the read lanes lie in the row.
                let a0 = _mm512_mask_loadu_ps(ninf, ma0, r.wrapping_offset(c0));
                let a1 = _mm512_mask_loadu_ps(ninf, ma1, r.wrapping_offset(c0 + 16));
                let b0 = _mm512_mask_loadu_ps(ninf, mb0, r.wrapping_offset(c0 + 1));
                let b1 = _mm512_mask_loadu_ps(ninf, mb1, r.wrapping_offset(c0 + 17));
                use crate::simd::stride2_lanes;
                m = take(m, stride2_lanes::<false>(a0, a1));
                m = take(m, stride2_lanes::<true>(a0, a1));
                m = take(m, stride2_lanes::<true>(b0, b1));
            }
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(oy * ow + ox0), ((1u32 << l) - 1) as __mmask16, m);
        }
    }
}

/// Max pooling values only, for inference (no indices to record). x: (P, H, W) planes;
/// y: (P, OH, OW). Separable: each output row is the elementwise max, over its window's rows,
/// of a horizontal window max of that row; selects instead of branches (activations make the
/// comparisons unpredictable). NaN propagates as in PyTorch.
pub fn max_pool2d_values<T: Float>(g: &PoolGeom, x: &[T], y: &mut [T]) {
    let (oh, ow) = g.out_hw().expect("PoolGeom checked by caller");
    let plane_in = g.h * g.w;
    #[cfg(target_arch = "x86_64")]
    if is_3x3s2(g) && crate::packed::available() && oh * ow > 0 {
        if let (Some(x), Some(y)) = (crate::simd::as_f32(x), crate::simd::as_f32_mut(y)) {
            y.par_chunks_mut(oh * ow).enumerate().for_each(|(pi, yp)| {
                // SAFETY: AVX-512F was detected; the plane and its output have their sizes.
                unsafe { max_pool_plane_3x3s2_avx512(g, oh, ow, &x[pi * plane_in..(pi + 1) * plane_in], yp) }
            });
            return;
        }
    }
    if g.dilation == (1, 1) && oh * ow > 0 {
        let len = g.h * g.stride.1 * phase_width(g, ow);
        y.par_chunks_mut(oh * ow).enumerate().for_each(|(pi, yp)| {
            T::with_scratch(len, |ph| max_pool_plane_phased_best(g, oh, ow, &x[pi * plane_in..(pi + 1) * plane_in], yp, ph));
        });
        return;
    }
    let take = |v: T, m: T| (v > m) | v.is_nan();
    // Width of a window's taps in the input row.
    let span = (g.kw - 1) * g.dilation.1 + 1;
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(pi, yp)| {
        crate::simd::with_best_isa(|| {
            let xp = &x[pi * plane_in..(pi + 1) * plane_in];
            T::with_scratch(ow, |hm| {
                for oy in 0..oh {
                    let hs = (oy * g.stride.0) as isize - g.padding.0 as isize;
                    let (k0, k1) = tap_range(hs, g.kh, g.dilation.0, g.h);
                    let yr = &mut yp[oy * ow..(oy + 1) * ow];
                    yr.iter_mut().for_each(|v| *v = T::neg_infinity());
                    for ki in k0..k1 {
                        let r = (hs + (ki * g.dilation.0) as isize) as usize;
                        let row = &xp[r * g.w..(r + 1) * g.w];
                        for (ox, h) in hm.iter_mut().enumerate() {
                            let ws = (ox * g.stride.1) as isize - g.padding.1 as isize;
                            let interior = ws >= 0 && ws as usize + span <= g.w;
                            let mut m = T::neg_infinity();
                            if interior {
                                // Every tap is inside the row: no range computation.
                                let base = &row[ws as usize..ws as usize + span];
                                for kj in 0..g.kw {
                                    let v = base[kj * g.dilation.1];
                                    m = if take(v, m) { v } else { m };
                                }
                            } else {
                                let (j0, j1) = tap_range(ws, g.kw, g.dilation.1, g.w);
                                for kj in j0..j1 {
                                    let v = row[(ws + (kj * g.dilation.1) as isize) as usize];
                                    m = if take(v, m) { v } else { m };
                                }
                            }
                            *h = m;
                        }
                        for (a, &b) in yr.iter_mut().zip(hm.iter()) {
                            *a = if take(b, *a) { b } else { *a };
                        }
                    }
                }
            })
        })
    });
}

/// Scatter-adds gy into gx at the recorded indices. gy, idx: (P, OH·OW); gx: (P, H·W) (overwritten).
pub fn scatter_plane_indices<T: Float>(gy: &[T], idx: &[i64], out_plane: usize, in_plane: usize, gx: &mut [T]) {
    gx.par_chunks_mut(out_plane).enumerate().for_each(|(pi, gp)| {
        crate::simd::with_best_isa(|| {
            gp.iter_mut().for_each(|v| *v = T::zero());
            let g = &gy[pi * in_plane..(pi + 1) * in_plane];
            let ii = &idx[pi * in_plane..(pi + 1) * in_plane];
            for (&v, &i) in g.iter().zip(ii) {
                if (i as usize) < out_plane {
                    gp[i as usize] += v;
                }
            }
        })
    });
}

/// Gathers per plane: y[p, j] = x[p, idx[p, j]]. x: (P, in_plane); idx, y: (P, out_plane).
pub fn gather_plane_indices<T: Float>(x: &[T], idx: &[i64], in_plane: usize, out_plane: usize, y: &mut [T]) {
    y.par_chunks_mut(out_plane).enumerate().for_each(|(pi, yp)| {
        crate::simd::with_best_isa(|| {
            let xp = &x[pi * in_plane..(pi + 1) * in_plane];
            for (o, &i) in yp.iter_mut().zip(&idx[pi * out_plane..(pi + 1) * out_plane]) {
                *o = xp.get(i as usize).copied().unwrap_or(T::zero());
            }
        })
    });
}

/// The input window [hs, he) × [ws, we) of output (oy, ox), and its divisor, as PyTorch's avg_pool2d.
fn avg_window(g: &PoolGeom, oy: usize, ox: usize, count_include_pad: bool) -> (usize, usize, usize, usize, usize) {
    let hs = (oy * g.stride.0) as isize - g.padding.0 as isize;
    let ws = (ox * g.stride.1) as isize - g.padding.1 as isize;
    let he = (hs + g.kh as isize).min((g.h + g.padding.0) as isize);
    let we = (ws + g.kw as isize).min((g.w + g.padding.1) as isize);
    let pool_size = ((he - hs) * (we - ws)) as usize;
    let (hs, ws) = (hs.max(0) as usize, ws.max(0) as usize);
    let (he, we) = (he.min(g.h as isize).max(0) as usize, we.min(g.w as isize).max(0) as usize);
    let div = if count_include_pad { pool_size } else { he.saturating_sub(hs) * we.saturating_sub(ws) };
    (hs, he, ws, we, div)
}

/// x: (P, H, W); y: (P, OH, OW). Dilation is not part of average pooling.
pub fn avg_pool2d<T: Float>(g: &PoolGeom, count_include_pad: bool, x: &[T], y: &mut [T]) {
    let (oh, ow) = g.out_hw().expect("PoolGeom checked by caller");
    let plane_in = g.h * g.w;
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(pi, yp)| {
        crate::simd::with_best_isa(|| {
            let xp = &x[pi * plane_in..(pi + 1) * plane_in];
            for oy in 0..oh {
                for ox in 0..ow {
                    let (hs, he, ws, we, div) = avg_window(g, oy, ox, count_include_pad);
                    let mut s = T::zero();
                    for iy in hs..he {
                        for ix in ws..we {
                            s += xp[iy * g.w + ix];
                        }
                    }
                    yp[oy * ow + ox] = if div == 0 { T::zero() } else { s / count::<T>(div) };
                }
            }
        })
    });
}

/// Backward of avg_pool2d. gy: (P, OH, OW); gx: (P, H, W) (overwritten).
pub fn avg_pool2d_backward<T: Float>(g: &PoolGeom, count_include_pad: bool, gy: &[T], gx: &mut [T]) {
    let (oh, ow) = g.out_hw().expect("PoolGeom checked by caller");
    gx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(pi, gp)| {
        crate::simd::with_best_isa(|| {
            gp.iter_mut().for_each(|v| *v = T::zero());
            let gyp = &gy[pi * oh * ow..(pi + 1) * oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    let (hs, he, ws, we, div) = avg_window(g, oy, ox, count_include_pad);
                    if div == 0 {
                        continue;
                    }
                    let v = gyp[oy * ow + ox] / count::<T>(div);
                    for iy in hs..he {
                        for ix in ws..we {
                            gp[iy * g.w + ix] += v;
                        }
                    }
                }
            }
        })
    });
}

/// PyTorch's adaptive window for output o of `out` over `inp`: [floor(o·in/out), ceil((o+1)·in/out)).
pub fn adaptive_range(o: usize, inp: usize, out: usize) -> (usize, usize) {
    (o * inp / out, ((o + 1) * inp).div_ceil(out))
}

/// x: (P, H, W); y: (P, OH, OW).
pub fn adaptive_avg_pool2d<T: Float>(h: usize, w: usize, oh: usize, ow: usize, x: &[T], y: &mut [T]) {
    if oh == 1 && ow == 1 {
        return global_avg_pool(h * w, x, y);
    }
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(pi, yp)| {
        crate::simd::with_best_isa(|| {
            let xp = &x[pi * h * w..(pi + 1) * h * w];
            for oy in 0..oh {
                let (hs, he) = adaptive_range(oy, h, oh);
                for ox in 0..ow {
                    let (ws, we) = adaptive_range(ox, w, ow);
                    let mut s = T::zero();
                    for iy in hs..he {
                        for ix in ws..we {
                            s += xp[iy * w + ix];
                        }
                    }
                    yp[oy * ow + ox] = s / count::<T>((he - hs) * (we - ws));
                }
            }
        })
    });
}

/// The mean of each of y.len() planes of `hw` values in x (a network's global pooling).
/// Planes go to the threads in chunks of at least ~64 K values: MobileNetV2's 1280 planes of
/// 7×7 are one chunk (one task per plane had cost more than the sums).
fn global_avg_pool<T: Float>(hw: usize, x: &[T], y: &mut [T]) {
    if hw == 0 {
        return y.fill(T::nan());
    }
    let per = (1 << 16) / hw + 1;
    y.par_chunks_mut(per).enumerate().for_each(|(c, yc)| {
        let xc = &x[c * per * hw..][..yc.len() * hw];
        crate::simd::with_best_isa(|| {
            for (o, plane) in yc.iter_mut().zip(xc.chunks_exact(hw)) {
                *o = T::from_f64(crate::simd::sum_f64(plane) / hw as f64).unwrap_or_else(T::nan);
            }
        })
    });
}

/// Backward of adaptive_avg_pool2d. gy: (P, OH, OW); gx: (P, H, W) (overwritten).
pub fn adaptive_avg_pool2d_backward<T: Float>(h: usize, w: usize, oh: usize, ow: usize, gy: &[T], gx: &mut [T]) {
    gx.par_chunks_mut(h * w).enumerate().for_each(|(pi, gp)| {
        crate::simd::with_best_isa(|| {
            gp.iter_mut().for_each(|v| *v = T::zero());
            let gyp = &gy[pi * oh * ow..(pi + 1) * oh * ow];
            for oy in 0..oh {
                let (hs, he) = adaptive_range(oy, h, oh);
                for ox in 0..ow {
                    let (ws, we) = adaptive_range(ox, w, ow);
                    let v = gyp[oy * ow + ox] / count::<T>((he - hs) * (we - ws));
                    for iy in hs..he {
                        for ix in ws..we {
                            gp[iy * w + ix] += v;
                        }
                    }
                }
            }
        })
    });
}

/// x: (P, H, W); y, idx: (P, OH, OW).
pub fn adaptive_max_pool2d<T: Float>(h: usize, w: usize, oh: usize, ow: usize, x: &[T], y: &mut [T], idx: &mut [i64]) {
    y.par_chunks_mut(oh * ow).zip(idx.par_chunks_mut(oh * ow)).enumerate().for_each(|(pi, (yp, ip))| {
        crate::simd::with_best_isa(|| {
            let xp = &x[pi * h * w..(pi + 1) * h * w];
            for oy in 0..oh {
                let (hs, he) = adaptive_range(oy, h, oh);
                for ox in 0..ow {
                    let (ws, we) = adaptive_range(ox, w, ow);
                    let mut best = T::neg_infinity();
                    let mut bi = hs * w + ws;
                    for iy in hs..he {
                        for ix in ws..we {
                            let v = xp[iy * w + ix];
                            if v > best || v.is_nan() {
                                best = v;
                                bi = iy * w + ix;
                            }
                        }
                    }
                    yp[oy * ow + ox] = best;
                    ip[oy * ow + ox] = bi as i64;
                }
            }
        })
    });
}

/// A window's element count as a float (exact for any realistic window; never fails).
fn count<T: Float>(n: usize) -> T {
    T::from_usize(n).unwrap_or_else(T::one)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_follow_pytorch() {
        let g = |h, k, s, p, d, c| PoolGeom { h, w: h, kh: k, kw: k, stride: (s, s), padding: (p, p), dilation: (d, d), ceil_mode: c };
        assert_eq!(g(4, 2, 2, 0, 1, false).out_hw(), Some((2, 2)));
        assert_eq!(g(5, 2, 2, 0, 1, false).out_hw(), Some((2, 2)));
        assert_eq!(g(5, 2, 2, 0, 1, true).out_hw(), Some((3, 3)));
        assert_eq!(g(6, 3, 2, 1, 1, true).out_hw(), Some((4, 4)));
        assert_eq!(g(5, 3, 2, 1, 1, true).out_hw(), Some((3, 3)));
        assert_eq!(g(7, 3, 2, 1, 2, false).out_hw(), Some((3, 3)));
        assert_eq!(g(2, 3, 1, 0, 1, false).out_hw(), None);
    }

    #[test]
    fn seed_max_pool_example() {
        // The seed's §2.2.2 example: 4×4 ramp, 2×2 max pool, stride 2.
        let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let g = PoolGeom { h: 4, w: 4, kh: 2, kw: 2, stride: (2, 2), padding: (0, 0), dilation: (1, 1), ceil_mode: false };
        let mut y = vec![0.0; 4];
        let mut i = vec![0; 4];
        max_pool2d(&g, &x, &mut y, &mut i);
        assert_eq!(y, vec![6.0, 8.0, 14.0, 16.0]);
        assert_eq!(i, vec![5, 7, 13, 15]);
    }

    use proptest::prelude::*;
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(80))]
        #[test]
        fn max_pool_matches_naive(h in 2usize..12, w in 2usize..12, k in 1usize..4, s in 1usize..4, p in 0usize..2, d in 1usize..3, ceil: bool, seed in 0u64..1000) {
            let g = PoolGeom { h, w, kh: k, kw: k, stride: (s, s), padding: (p.min(k / 2), p.min(k / 2)), dilation: (d, d), ceil_mode: ceil };
            prop_assume!(g.out_hw().is_some());
            let (oh, ow) = g.out_hw().unwrap();
            // Few distinct values so ties (and their first-index rule) are exercised.
            let x: Vec<f32> = (0..2 * h * w).map(|i| ((i as u64 * 2654435761 + seed) % 7) as f32).collect();
            let mut y = vec![0.0; 2 * oh * ow];
            let mut idx = vec![0; 2 * oh * ow];
            max_pool2d(&g, &x, &mut y, &mut idx);
            let (yn, inn) = crate::reference::max_pool2d_naive(&g, &x, 2);
            prop_assert_eq!(&y, &yn);
            prop_assert_eq!(idx, inn);
            let mut yv = vec![0.0; 2 * oh * ow];
            max_pool2d_values(&g, &x, &mut yv);
            prop_assert_eq!(yv, yn);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(60))]
        /// The 3×3/2 values kernel on rows of several 16-lane steps, padding 0 and 1, both
        /// rounding modes, with NaNs and −∞ among the values, against the naive twin.
        #[test]
        fn max_pool_3x3s2_values_match_naive(h in 3usize..20, w in 3usize..80, p in 0usize..2, ceil: bool, seed in 0u64..1000) {
            let g = PoolGeom { h, w, kh: 3, kw: 3, stride: (2, 2), padding: (p, p), dilation: (1, 1), ceil_mode: ceil };
            let (oh, ow) = g.out_hw().unwrap();
            let x: Vec<f32> = (0..2 * h * w)
                .map(|i| match (i as u64 * 2654435761 + seed) % 101 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    v => v as f32 - 50.0,
                })
                .collect();
            let mut y = vec![0.0; 2 * oh * ow];
            max_pool2d_values(&g, &x, &mut y);
            let (yn, _) = crate::reference::max_pool2d_naive(&g, &x, 2);
            for (a, b) in y.iter().zip(&yn) {
                prop_assert!(a == b || (a.is_nan() && b.is_nan()), "{:?}: {} vs {}", g, a, b);
            }
        }
    }

    #[test]
    fn max_pool_values_propagate_nan() {
        for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
            let g = PoolGeom { h: 6, w: 7, kh: k, kw: k, stride: (s, s), padding: (p, p), dilation: (1, 1), ceil_mode: false };
            let (oh, ow) = g.out_hw().unwrap_or((0, 0));
            let mut x: Vec<f32> = (0..42).map(|i| i as f32).collect();
            x[8] = f32::NAN; // row 1, column 1
            let mut y = vec![0.0; oh * ow];
            max_pool2d_values(&g, &x, &mut y);
            let (yn, _) = crate::reference::max_pool2d_naive(&g, &x, 1);
            for (a, b) in y.iter().zip(&yn) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{k} {s} {p}: {y:?} vs {yn:?}");
            }
            assert!(y.iter().any(|v| v.is_nan()));
        }
    }

    #[test]
    fn max_pool_indices_of_all_minus_infinity_windows() {
        // PyTorch reports the first in-image position of a window that holds only −∞.
        let g = PoolGeom { h: 4, w: 5, kh: 3, kw: 3, stride: (2, 2), padding: (1, 1), dilation: (1, 1), ceil_mode: false };
        let (oh, ow) = g.out_hw().unwrap_or((0, 0));
        let mut x = vec![f32::NEG_INFINITY; 20];
        x[19] = 1.0;
        let (mut y, mut idx) = (vec![0.0; oh * ow], vec![0; oh * ow]);
        max_pool2d(&g, &x, &mut y, &mut idx);
        let (yn, inn) = crate::reference::max_pool2d_naive(&g, &x, 1);
        assert_eq!((y, idx), (yn, inn));
    }

    #[test]
    fn adaptive_ranges_cover_input() {
        assert_eq!(adaptive_range(0, 5, 3), (0, 2));
        assert_eq!(adaptive_range(1, 5, 3), (1, 4));
        assert_eq!(adaptive_range(2, 5, 3), (3, 5));
    }
}
