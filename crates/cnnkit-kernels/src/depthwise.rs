//! Direct depthwise convolution: one input channel per group (`C_in == G`), any channel
//! multiplier M = C_out/G, kernel size, stride, padding and dilation.
//!
//! im2col + GEMM is a poor fit here: each group's GEMM is (M, K·K) @ (K·K, P), far too thin
//! for the GEMM kernel to reach its peak, and the cols matrix costs K·K times the input in
//! memory traffic. These kernels work on one (image, channel) plane at a time instead.
//!
//! Each output row is split into a border (outputs whose taps may fall into the padding,
//! bounds-checked per tap) and an interior (every tap in bounds), where each tap is a plain
//! slice axpy that LLVM vectorises. Strided inputs are first split into `stride` phase planes
//! (phase r holds columns r, r+s, r+2s, …), so a strided tap also reads one contiguous slice.
//! Output channel co reads input channel co / M. Weight: (C_out, 1, KH, KW).

use crate::conv::ConvGeom;
use crate::Float;
use rayon::prelude::*;

/// Below this many outputs per call the work is too small to pay for rayon's task overhead.
/// (32 Ki kept MobileNetV2's 576-channel stride-2 layer, 28 Ki outputs, on one thread: 56 µs
/// at batch 1, where a second thread costs ~1 µs to start inside a planned graph run.)
const PAR_MIN: usize = 8 * 1024;

/// True when `g` is a depthwise convolution these kernels handle (one input channel per group).
pub fn applies(g: &ConvGeom) -> bool {
    g.groups > 1 && g.c_in == g.groups
}

fn parallel(outputs: usize) -> bool {
    outputs >= PAR_MIN && crate::num_threads() > 1
}

/// Output indices o in lo..hi whose tap o·s + off lands inside 0..len (clamped to 0..out).
fn valid(out: usize, len: usize, s: usize, off: isize) -> (usize, usize) {
    let si = s as isize;
    let lo = if off >= 0 { 0 } else { ((-off + si - 1) / si) as usize };
    let last = len as isize - 1 - off;
    let hi = if last < 0 { 0 } else { (last / si + 1) as usize };
    let lo = lo.min(out);
    (lo, hi.min(out).max(lo))
}

/// Splits a plane into `s` phase planes: phases (s, H, ⌈W/s⌉), phase r row y column j =
/// x[y, j·s + r] (zero past the row's end). x: (H, W).
#[inline(always)]
fn deinterleave<T: Float>(x: &[T], h: usize, w: usize, s: usize, phases: &mut [T]) {
    let pw = w.div_ceil(s);
    for r in 0..s {
        for y in 0..h {
            let dst = &mut phases[(r * h + y) * pw..(r * h + y + 1) * pw];
            let src = &x[y * w..(y + 1) * w];
            for (j, d) in dst.iter_mut().enumerate() {
                *d = src.get(j * s + r).copied().unwrap_or(T::zero());
            }
        }
    }
}

/// Inverse of [`deinterleave`], accumulating: x[y, j·s + r] += phase r [y, j]. x: (H, W).
#[inline(always)]
fn interleave_add<T: Float>(phases: &[T], h: usize, w: usize, s: usize, x: &mut [T]) {
    let pw = w.div_ceil(s);
    for y in 0..h {
        let dst = &mut x[y * w..(y + 1) * w];
        for r in 0..s.min(w) {
            let src = &phases[(r * h + y) * pw..(r * h + y + 1) * pw];
            dst[r..].iter_mut().step_by(s).zip(src).for_each(|(d, &v)| *d += v);
        }
    }
}

/// Lanes per block: one AVX2 register of f32. [`axpy`] works in fixed blocks of LANES so
/// that rows as short as MobileNet's (7..112) vectorise fully; LLVM's own vector loops are
/// unrolled 4× and would leave most of a short row to their scalar epilogue.
const LANES: usize = 8;

/// out[i] += Σ_k w_k · src_k[i] over all taps, four taps per pass so each pass loads and
/// stores `out` once for four multiply-adds. Every src_k is at least out.len() long.
#[inline(always)]
fn acc_taps<T: Float>(out: &mut [T], taps: &[(T, &[T])]) {
    let n = out.len();
    for grp in taps.chunks(4) {
        match *grp {
            [(w0, a), (w1, b), (w2, c), (w3, d)] => {
                out.iter_mut().zip(&a[..n]).zip(&b[..n]).zip(&c[..n]).zip(&d[..n]).for_each(|((((o, &a), &b), &c), &d)| {
                    *o += w0 * a + w1 * b + w2 * c + w3 * d;
                })
            }
            [(w0, a), (w1, b), (w2, c)] => {
                out.iter_mut().zip(&a[..n]).zip(&b[..n]).zip(&c[..n]).for_each(|(((o, &a), &b), &c)| *o += w0 * a + w1 * b + w2 * c)
            }
            [(w0, a), (w1, b)] => out.iter_mut().zip(&a[..n]).zip(&b[..n]).for_each(|((o, &a), &b)| *o += w0 * a + w1 * b),
            [(w0, a)] => out.iter_mut().zip(&a[..n]).for_each(|(o, &a)| *o += w0 * a),
            _ => {}
        }
    }
}

/// dst[i] += a · src[i], in fixed blocks (see [`LANES`]). src is at least dst.len() long.
#[inline(always)]
fn axpy<T: Float>(dst: &mut [T], a: T, src: &[T]) {
    let src = &src[..dst.len()];
    let mut db = dst.chunks_exact_mut(LANES);
    let mut sb = src.chunks_exact(LANES);
    for (d, s) in (&mut db).zip(&mut sb) {
        for l in 0..LANES {
            d[l] += a * s[l];
        }
    }
    db.into_remainder().iter_mut().zip(sb.remainder()).for_each(|(d, &v)| *d += a * v);
}

/// Σ a[i]·b[i] with eight independent partial sums, so the loop vectorises without
/// reassociating a single accumulator.
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (p, q) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += p[k] * q[k];
        }
    }
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::zero(), |s, (&p, &q)| s + p * q);
    acc.iter().fold(tail, |s, &v| s + v)
}

/// Horizontal layout of one tap column kj: `off` is the input column of output 0 (may be
/// negative); outputs lo..hi have this tap in bounds.
#[derive(Clone, Copy)]
struct ColTap {
    off: isize,
    lo: usize,
    hi: usize,
}

impl ColTap {
    /// Where outputs a.. of this tap start in the phase planes: (phase, column). Needs a ≥ lo.
    fn start(&self, a: usize, s: usize) -> (usize, usize) {
        let p = (a as isize * s as isize + self.off) as usize;
        (p % s, p / s)
    }
}

impl ColTap {
    /// Tap column `kj` for an output row of `ow` columns.
    fn new(g: &ConvGeom, ow: usize, kj: usize) -> Self {
        let off = (kj * g.dilation.1) as isize - g.padding.1 as isize;
        let (lo, hi) = valid(ow, g.w, g.stride.1, off);
        ColTap { off, lo, hi }
    }
}

/// The interior lo..hi (every kj tap in bounds) and each kj tap's own valid range.
fn col_taps(g: &ConvGeom, ow: usize) -> (usize, usize, Vec<ColTap>) {
    let taps: Vec<ColTap> = (0..g.kw).map(|kj| ColTap::new(g, ow, kj)).collect();
    let lo = taps.iter().map(|t| t.lo).max().unwrap_or(0);
    let hi = taps.iter().map(|t| t.hi).min().unwrap_or(ow).max(lo);
    (lo, hi, taps)
}

/// One output plane. x: (H, W) (the input channel); w: (KH, KW); y: (OH, OW) (overwritten);
/// phases: (S, H, ⌈W/S⌉) scratch, used only when the column stride S > 1.
#[inline(always)]
fn forward_plane<T: Float>(g: &ConvGeom, x: &[T], w: &[T], bias: T, y: &mut [T], phases: &mut [T]) {
    let Some((oh, ow)) = g.out_hw() else { return };
    let s = g.stride.1;
    let (lo, hi, ctaps) = col_taps(g, ow);
    let (src, pw): (&[T], usize) = if s == 1 {
        (x, g.w)
    } else {
        deinterleave(x, g.h, g.w, s, phases);
        (phases, g.w.div_ceil(s))
    };
    let row_at = |iy: usize, ct: &ColTap, a: usize, n: usize| {
        let (r, q) = ct.start(a, s);
        let base = (r * g.h + iy) * pw + q;
        &src[base..base + n]
    };
    let mut taps: Vec<(T, &[T])> = Vec::with_capacity(g.kh * g.kw);
    for (oy, row) in y.chunks_mut(ow.max(1)).take(oh).enumerate() {
        row.iter_mut().for_each(|v| *v = bias);
        taps.clear();
        for ki in 0..g.kh {
            let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.padding.0 as isize;
            if iy < 0 || iy >= g.h as isize {
                continue;
            }
            let iy = iy as usize;
            for (kj, ct) in ctaps.iter().enumerate() {
                let wv = w[ki * g.kw + kj];
                if hi > lo {
                    taps.push((wv, row_at(iy, ct, lo, hi - lo)));
                }
                // The border: the parts of this tap's valid range outside the interior.
                for (a, b) in [(ct.lo, lo.min(ct.hi)), (hi.max(ct.lo), ct.hi)] {
                    if b > a {
                        axpy(&mut row[a..b], wv, row_at(iy, ct, a, b - a));
                    }
                }
            }
        }
        acc_taps(&mut row[lo..hi], &taps);
    }
}

best_isa_fn!(backward_input_plane_best, backward_input_plane_avx2, backward_input_plane, (g: &ConvGeom, gy: &[T], w: &[T], dst: &mut [T]));
best_isa_fn!(backward_weight_plane_3x3_best, backward_weight_plane_3x3_avx2, backward_weight_plane_3x3, (g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T], sc: &mut [T]));
best_isa_fn!(backward_weight_plane_3x3s1_flat_best, backward_weight_plane_3x3s1_flat_avx2, backward_weight_plane_3x3s1_flat, (g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T], sc: &mut [T]));
best_isa_fn!(forward_plane_3x3s1_best, forward_plane_3x3s1_avx2, forward_plane_3x3s1_any, (h: usize, wd: usize, x: &[T], w: &[T], bias: T, y: &mut [T], sc: &mut [T]));
best_isa_fn!(forward_plane_3x3s2_best, forward_plane_3x3s2_avx2, forward_plane_3x3s2, (h: usize, wd: usize, x: &[T], w: &[T], bias: T, y: &mut [T], sc: &mut [T]));
best_isa_fn!(backward_input_plane_3x3s2_best, backward_input_plane_3x3s2_avx2, backward_input_plane_3x3s2, (h: usize, wd: usize, gy: &[T], w: &[T], gx: &mut [T], sc: &mut [T]));
best_isa_fn!(backward_weight_plane_best, backward_weight_plane_avx2, backward_weight_plane, (g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T], ph: &mut [T]));

/// The commonest depthwise shape (MobileNet, EfficientNet, ShuffleNet): 3×3, stride 1,
/// padding 1, no dilation.
fn is_3x3_s1_p1(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == (1, 1) && g.padding == (1, 1) && g.dilation == (1, 1)
}

/// One 3×3/1 pad-1 plane with all nine taps accumulated in registers and one store per output
/// (the generic path does one multiply-add pass over the output row per tap). Rows outside
/// the image read a zero row. x: (H, W); w: (3, 3); y: (H, W); zero: W scratch.
#[inline(always)]
fn forward_plane_3x3s1<T: Float>(h: usize, wd: usize, x: &[T], w: &[T], bias: T, y: &mut [T], zero: &mut [T]) {
    {
        zero.iter_mut().for_each(|v| *v = T::zero());
        for oy in 0..h {
            let row = |iy: isize| -> &[T] {
                if iy < 0 || iy >= h as isize {
                    &zero[..wd]
                } else {
                    &x[iy as usize * wd..(iy as usize + 1) * wd]
                }
            };
            let rows = [row(oy as isize - 1), row(oy as isize), row(oy as isize + 1)];
            let yr = &mut y[oy * wd..(oy + 1) * wd];
            let tap = |ox: isize, r: &[T], k: &[T]| -> T {
                let mut a = T::zero();
                for (kx, &wv) in k.iter().enumerate() {
                    let ix = ox + kx as isize - 1;
                    if ix >= 0 && (ix as usize) < wd {
                        a += wv * r[ix as usize];
                    }
                }
                a
            };
            // Edge columns (they touch the padding).
            for ox in [0, wd - 1] {
                yr[ox] = bias + (0..3).map(|ky| tap(ox as isize, rows[ky], &w[ky * 3..ky * 3 + 3])).fold(T::zero(), |s, v| s + v);
            }
            if wd < 3 {
                continue;
            }
            // Interior: x[ox-1], x[ox], x[ox+1] as three shifted slices, so the loop vectorises.
            let n = wd - 2;
            let out = &mut yr[1..wd - 1];
            let (w0, w1, w2) = (&w[0..3], &w[3..6], &w[6..9]);
            let (a, b, c) = (rows[0], rows[1], rows[2]);
            for (i, o) in out.iter_mut().enumerate().take(n) {
                *o = bias
                    + (w0[0] * a[i] + w0[1] * a[i + 1] + w0[2] * a[i + 2])
                    + (w1[0] * b[i] + w1[1] * b[i + 1] + w1[2] * b[i + 2])
                    + (w2[0] * c[i] + w2[1] * c[i + 1] + w2[2] * c[i + 2]);
            }
        }
    }
}

/// The load masks of one 16-output step of a 3×3 pad-1 stride-S row of W columns, the same
/// for every input row (computed once per step): stride 1 the three taps' columns
/// ox0 − 1, ox0, ox0 + 1 onward; stride 2 the four loads at 2·ox0, 2·ox0 + 16, 2·ox0 − 1,
/// 2·ox0 + 15.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn step_masks<const S: usize>(ox0: usize, wd: usize) -> [u16; 4] {
    let m = |start: isize| crate::simd::lane_mask(start, wd);
    let c0 = (S * ox0) as isize;
    if S == 1 {
        [m(c0 - 1), m(c0), m(c0 + 1), 0]
    } else {
        [m(c0), m(c0 + 16), m(c0 - 1), m(c0 + 15)]
    }
}

/// The three taps of one input row for outputs ox0 .. ox0 + 16 of a 3×3 pad-1 stride-S plane:
/// lane j of tap kx holds column S·(ox0 + j) + kx − 1 of the row at `r`, zero outside the row
/// (the padding; `mk` from [`step_masks`]). Stride 1: one masked load per tap. Stride 2:
/// columns 2·ox0 − 1 .. 2·ox0 + 31 as four masked loads, split into even and odd columns by
/// permutes.
///
/// # Safety
/// The CPU supports AVX-512F; `r` points at a row of the W columns `mk` was made for.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn row_taps<const S: usize>(r: *const f32, ox0: usize, mk: [u16; 4]) -> [std::arch::x86_64::__m512; 3] {
    use std::arch::x86_64::*;
    // SAFETY (all loads): masked-off lanes are not read; the read lanes lie in the row.
    let at = |c: isize| r.wrapping_offset(c);
    let c0 = (S * ox0) as isize;
    if S == 1 {
        return [_mm512_maskz_loadu_ps(mk[0], at(c0 - 1)), _mm512_maskz_loadu_ps(mk[1], at(c0)), _mm512_maskz_loadu_ps(mk[2], at(c0 + 1))];
    }
    use crate::simd::stride2_lanes;
    let (u0, u1) = (_mm512_maskz_loadu_ps(mk[0], at(c0)), _mm512_maskz_loadu_ps(mk[1], at(c0 + 16)));
    let (v0, v1) = (_mm512_maskz_loadu_ps(mk[2], at(c0 - 1)), _mm512_maskz_loadu_ps(mk[3], at(c0 + 15)));
    [stride2_lanes::<false>(v0, v1), stride2_lanes::<false>(u0, u1), stride2_lanes::<true>(u0, u1)]
}

/// The 3×3 pad-1 stride-S (1 or 2) plane kernels for f32 with AVX-512, bias and activation
/// included: 16 outputs per step, each of the nine taps one vector from [`row_taps`] and one
/// FMA, the clamp applied before the single store. The auto-vectorised kernels run 8 lanes
/// with separate multiplies and adds, and their activation is a second pass over the plane:
/// MobileNetV2's 144-channel 56×56 layer took 0.27 ms. x: (H, W); w: (3, 3);
/// y: ((H − 1)/S + 1, (W − 1)/S + 1) (overwritten).
///
/// # Safety
/// The CPU supports AVX-512F; x and y hold their planes and w 9 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)] // a plane, its filter and bias, and the activation
unsafe fn forward_plane_3x3_avx512<const S: usize>(
    h: usize,
    wd: usize,
    x: &[f32],
    w: &[f32],
    bias: f32,
    ep: crate::conv::Epilogue,
    y: &mut [f32],
) {
    let (oh, ow) = ((h - 1) / S + 1, (wd - 1) / S + 1);
    debug_assert!(x.len() >= h * wd && y.len() >= oh * ow && w.len() >= 9);
    forward_rows_3x3_avx512::<S>(h, wd, x.as_ptr(), 0, 0..oh, w, bias, ep, y.as_mut_ptr());
}

/// Output rows `rows` of one 3×3 pad-1 stride-S plane of height h and width wd, from a window
/// of its input rows: `x` points at input row `row0`, and the window holds every row the output
/// rows read (S·oy − 1 ..= S·oy + 1, clipped to the plane). Output row oy is written at
/// `y[(oy − rows.start)·OW ..]`. The fused inverted-residual block (`crate::fused`) runs its
/// depthwise layer on strips of rows this way.
///
/// The plane is walked in columns of 16 outputs, top to bottom, the taps of the input rows
/// kept in registers from one output row to the next: at stride 1 each output vector loads one
/// new input row (3 loads, not 9), and the column's load masks are made once. (Row by row with
/// every tap loaded and the masks remade per vector, the kernel ran at ~30 GFLOP/s per thread
/// on a hot 56×56 plane.)
///
/// # Safety
/// The CPU supports AVX-512F; the window's rows are readable; y holds rows.len()·OW values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)] // the window's geometry, the filter, bias and activation
pub(crate) unsafe fn forward_rows_3x3_avx512<const S: usize>(
    h: usize,
    wd: usize,
    x: *const f32,
    row0: usize,
    rows: std::ops::Range<usize>,
    w: &[f32],
    bias: f32,
    ep: crate::conv::Epilogue,
    y: *mut f32,
) {
    use std::arch::x86_64::*;
    let ow = (wd - 1) / S + 1;
    let wv: [__m512; 9] = std::array::from_fn(|k| _mm512_set1_ps(w[k]));
    let (lo, hi) = ep.bounds::<f32>();
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let clamp = ep != crate::conv::Epilogue::None;
    let vb = _mm512_set1_ps(bias);
    for ox0 in (0..ow).step_by(16) {
        let mk = step_masks::<S>(ox0, wd);
        // The taps of input row iy; rows outside the plane are padding (zero).
        let taps = |iy: usize| {
            if iy == 0 || iy > h {
                [_mm512_setzero_ps(); 3]
            } else {
                row_taps::<S>(x.add((iy - 1 - row0) * wd), ox0, mk)
            }
        };
        let store = ((1u32 << (ow - ox0).min(16)) - 1) as __mmask16;
        // Input rows are numbered from 1 here (iy + 1), so that row −1 (padding) is 0.
        let (mut t0, mut t1) = (taps(S * rows.start), taps(S * rows.start + 1));
        for oy in rows.clone() {
            let t2 = taps(S * oy + 2);
            // One sum per kernel row, added at the end: three short FMA chains, not one of nine.
            let mut a0 = _mm512_fmadd_ps(wv[0], t0[0], vb);
            let mut a1 = _mm512_mul_ps(wv[3], t1[0]);
            let mut a2 = _mm512_mul_ps(wv[6], t2[0]);
            for k in 1..3 {
                a0 = _mm512_fmadd_ps(wv[k], t0[k], a0);
                a1 = _mm512_fmadd_ps(wv[3 + k], t1[k], a1);
                a2 = _mm512_fmadd_ps(wv[6 + k], t2[k], a2);
            }
            let mut acc = _mm512_add_ps(_mm512_add_ps(a0, a1), a2);
            if clamp {
                acc = crate::simd::clamp_ps(acc, vlo, vhi);
            }
            _mm512_mask_storeu_ps(y.add((oy - rows.start) * ow + ox0), store, acc);
            if S == 1 {
                (t0, t1) = (t1, t2);
            } else if oy + 1 < rows.end {
                (t0, t1) = (t2, taps(S * oy + 3));
            }
        }
    }
}

/// The weight gradient's twin of [`forward_plane_3x3_avx512`]: gw[3·ky + kx] += Σ gy · tap,
/// nine vector sums over one plane with the taps of [`row_taps`], summed across lanes once at
/// the end. (The auto-vectorised kernels were 8% of a MobileNetV2 training step.)
/// x: (H, W); gy: ((H − 1)/S + 1, (W − 1)/S + 1); gw: (3, 3), accumulated.
///
/// # Safety
/// The CPU supports AVX-512F; x and gy hold their planes and gw 9 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn backward_weight_plane_3x3_avx512<const S: usize>(h: usize, wd: usize, x: &[f32], gy: &[f32], gw: &mut [f32]) {
    use std::arch::x86_64::*;
    let (oh, ow) = ((h - 1) / S + 1, (wd - 1) / S + 1);
    debug_assert!(x.len() >= h * wd && gy.len() >= oh * ow && gw.len() >= 9);
    let mut acc = [_mm512_setzero_ps(); 9];
    for oy in 0..oh {
        for ox0 in (0..ow).step_by(16) {
            // Lanes past the row's end are zero in g, so their taps add nothing.
            let g = _mm512_maskz_loadu_ps(((1u32 << (ow - ox0).min(16)) - 1) as __mmask16, gy.as_ptr().add(oy * ow + ox0));
            let mk = step_masks::<S>(ox0, wd);
            for ky in 0..3 {
                let Some(iy) = (S * oy + ky).checked_sub(1).filter(|&iy| iy < h) else { continue };
                let t = row_taps::<S>(x.as_ptr().add(iy * wd), ox0, mk);
                for (kx, tv) in t.into_iter().enumerate() {
                    acc[3 * ky + kx] = _mm512_fmadd_ps(g, tv, acc[3 * ky + kx]);
                }
            }
        }
    }
    for (d, a) in gw.iter_mut().zip(acc) {
        *d += _mm512_reduce_add_ps(a);
    }
}

/// Planes at most this wide take [`forward_plane_3x3s1_flat`]: their rows are too short for
/// the row kernel's vector loop (a 7-wide row has 5 interior outputs and 2 scalar edges).
const FLAT_MAX_W: usize = 32;

/// Scratch elements [`forward_plane_3x3s1_any`] needs for an (H, W) plane.
fn scratch_3x3s1(h: usize, wd: usize) -> usize {
    if wd <= FLAT_MAX_W {
        (h + 2) * (wd + 2) + 2 + h * (wd + 2)
    } else {
        wd
    }
}

/// The same as [`forward_plane_3x3s1`] for narrow planes: the plane is copied into a
/// zero-bordered (H + 2, W + 2) buffer and the nine taps run as one vector loop over the flat
/// buffer (two junk columns per row, dropped when the rows are copied out), so there are no
/// edge cases and no short rows. x: (H, W); w: (3, 3); y: (H, W);
/// scratch: [`scratch_3x3s1`] elements.
#[inline(always)]
fn forward_plane_3x3s1_flat<T: Float>(h: usize, wd: usize, x: &[T], w: &[T], bias: T, y: &mut [T], scratch: &mut [T]) {
    let wp = wd + 2;
    let (pad, out) = scratch.split_at_mut((h + 2) * wp + 2);
    pad[..wp + 1].fill(T::zero());
    for (iy, src) in x.chunks_exact(wd).take(h).enumerate() {
        // Row iy lands at padded row iy + 1, columns 1..=W; its right border and the next
        // row's left border are adjacent.
        let at = (iy + 1) * wp + 1;
        pad[at..at + wd].copy_from_slice(src);
        pad[at + wd..at + wd + 2].fill(T::zero());
    }
    pad[(h + 1) * wp + 1..].fill(T::zero());
    // out[i] for i = oy·(W+2) + ox is output (oy, ox); tap (ki, kj) reads pad[i + ki·(W+2) + kj].
    let n = h * wp;
    let out = &mut out[..n];
    let t = |k: usize| &pad[(k / 3) * wp + k % 3..][..n];
    let (a0, a1, a2, b0, b1, b2, c0, c1, c2) = (t(0), t(1), t(2), t(3), t(4), t(5), t(6), t(7), t(8));
    for (i, o) in out.iter_mut().enumerate() {
        *o = bias
            + (w[0] * a0[i] + w[1] * a1[i] + w[2] * a2[i])
            + (w[3] * b0[i] + w[4] * b1[i] + w[5] * b2[i])
            + (w[6] * c0[i] + w[7] * c1[i] + w[8] * c2[i]);
    }
    for (yr, orow) in y.chunks_exact_mut(wd).take(h).zip(out.chunks_exact(wp)) {
        yr.copy_from_slice(&orow[..wd]);
    }
}

/// A 3×3/1 pad-1 plane by whichever kernel suits its width. scratch: [`scratch_3x3s1`].
#[inline(always)]
fn forward_plane_3x3s1_any<T: Float>(h: usize, wd: usize, x: &[T], w: &[T], bias: T, y: &mut [T], scratch: &mut [T]) {
    if wd <= FLAT_MAX_W {
        forward_plane_3x3s1_flat(h, wd, x, w, bias, y, scratch)
    } else {
        forward_plane_3x3s1(h, wd, x, w, bias, y, scratch)
    }
}

/// The MobileNet downsampling depthwise shape: 3×3, stride 2, padding 1, no dilation.
fn is_3x3_s2_p1(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == (2, 2) && g.padding == (1, 1) && g.dilation == (1, 1)
}

/// Splits one row into its even and odd columns: even[j] = src[2j], odd[j] = src[2j + 1],
/// zero past the row's end. even, odd: ⌈W/2⌉ each.
#[inline(always)]
fn split_row<T: Float>(src: &[T], even: &mut [T], odd: &mut [T]) {
    let pairs = src.len() / 2;
    for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)).take(pairs) {
        *e = p[0];
        *o = p[1];
    }
    if src.len() % 2 == 1 {
        even[pairs] = src[src.len() - 1];
        odd[pairs] = T::zero();
    }
}

/// One 3×3/2 pad-1 plane with all nine taps accumulated in registers. Input columns 2·ox − 1,
/// 2·ox, 2·ox + 1 of output ox are odd[ox − 1], even[ox], odd[ox] of the split row, so every
/// tap reads a contiguous slice. x: (H, W); w: (3, 3); y: (⌈H/2⌉, ⌈W/2⌉);
/// scratch: 7·⌈W/2⌉ (three split rows and a zero row).
#[inline(always)]
fn forward_plane_3x3s2<T: Float>(h: usize, wd: usize, x: &[T], w: &[T], bias: T, y: &mut [T], scratch: &mut [T]) {
    let (oh, ow) = (h.div_ceil(2), wd.div_ceil(2));
    if ow == 0 {
        return;
    }
    let (rows, zero) = scratch[..7 * ow].split_at_mut(6 * ow);
    zero.iter_mut().for_each(|v| *v = T::zero());
    for oy in 0..oh {
        // Split input rows 2·oy − 1, 2·oy, 2·oy + 1 (row −1 and row H are the zero padding).
        for (k, pair) in rows.chunks_exact_mut(2 * ow).enumerate() {
            let iy = (2 * oy + k) as isize - 1;
            let (e, o) = pair.split_at_mut(ow);
            if iy < 0 || iy >= h as isize {
                e.iter_mut().chain(o.iter_mut()).for_each(|v| *v = T::zero());
            } else {
                split_row(&x[iy as usize * wd..(iy as usize + 1) * wd], e, o);
            }
        }
        let split = |k: usize| (&rows[2 * k * ow..(2 * k + 1) * ow], &rows[(2 * k + 1) * ow..(2 * k + 2) * ow]);
        let ((e0, o0), (e1, o1), (e2, o2)) = (split(0), split(1), split(2));
        let yr = &mut y[oy * ow..(oy + 1) * ow];
        // Output 0: its left tap column is the padding.
        yr[0] = bias + (w[1] * e0[0] + w[2] * o0[0]) + (w[4] * e1[0] + w[5] * o1[0]) + (w[7] * e2[0] + w[8] * o2[0]);
        for i in 1..ow {
            yr[i] = bias
                + (w[0] * o0[i - 1] + w[1] * e0[i] + w[2] * o0[i])
                + (w[3] * o1[i - 1] + w[4] * e1[i] + w[5] * o1[i])
                + (w[6] * o2[i - 1] + w[7] * e2[i] + w[8] * o2[i]);
        }
    }
}

/// The input gradient of one 3×3/2 pad-1 plane (multiplier 1), as a gather: input (2i + a,
/// 2j + b) receives gy taps only from outputs i, i + 1 (rows) and j, j + 1 (columns), so
/// each of the four parities is a short fixed sum. gy: (OH, OW); w: (3, 3); gx: (H, W)
/// (overwritten); scratch: 4·(OW + 1) (two zero-padded gy rows and the even/odd results).
#[inline(always)]
fn backward_input_plane_3x3s2<T: Float>(h: usize, wd: usize, gy: &[T], w: &[T], gx: &mut [T], scratch: &mut [T]) {
    let (oh, ow) = (h.div_ceil(2), wd.div_ceil(2));
    if ow == 0 {
        return;
    }
    let (bufs, out) = scratch[..4 * (ow + 1)].split_at_mut(2 * (ow + 1));
    let (a, b) = bufs.split_at_mut(ow + 1);
    let (ev, od) = out.split_at_mut(ow + 1);
    let half = wd / 2; // odd columns 2j + 1 < W
    for i in 0..oh {
        // a = gy row i, b = gy row i + 1, each with a zero past the end (column OW).
        a[..ow].copy_from_slice(&gy[i * ow..(i + 1) * ow]);
        a[ow] = T::zero();
        if i + 1 < oh {
            b[..ow].copy_from_slice(&gy[(i + 1) * ow..(i + 2) * ow]);
        } else {
            b[..ow].iter_mut().for_each(|v| *v = T::zero());
        }
        b[ow] = T::zero();
        for (ry, r) in [(2 * i, 0usize), (2 * i + 1, 1)] {
            if ry >= h {
                break;
            }
            if r == 0 {
                // Row 2i: only kernel row 1 (output row i).
                for j in 0..ow {
                    ev[j] = w[4] * a[j];
                    od[j] = w[5] * a[j] + w[3] * a[j + 1];
                }
            } else {
                // Row 2i + 1: kernel row 2 from output row i, kernel row 0 from row i + 1.
                for j in 0..ow {
                    ev[j] = w[7] * a[j] + w[1] * b[j];
                    od[j] = (w[8] * a[j] + w[6] * a[j + 1]) + (w[2] * b[j] + w[0] * b[j + 1]);
                }
            }
            let row = &mut gx[ry * wd..(ry + 1) * wd];
            for ((p, &e), &o) in row.chunks_exact_mut(2).zip(&ev[..half]).zip(&od[..half]) {
                p[0] = e;
                p[1] = o;
            }
            if wd % 2 == 1 {
                row[wd - 1] = ev[ow - 1];
            }
        }
    }
}

/// One 3×3 pad-1 stride-S (1 or 2) plane, y = act(conv(x, w) + bias): the AVX-512 kernel
/// for f32 where the CPU has it (activation included: returns true), else the
/// auto-vectorised one (returns false: the caller applies the activation). x: (H, W);
/// w: (3, 3); y: ((H − 1)/S + 1, (W − 1)/S + 1).
fn plane_3x3<T: Float, const S: usize>(h: usize, wd: usize, x: &[T], w: &[T], bias: T, ep: crate::conv::Epilogue, y: &mut [T]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(x32), Some(w32), Some(y32)) =
        (crate::packed::available(), crate::simd::as_f32(x), crate::simd::as_f32(w), crate::simd::as_f32_mut(y))
    {
        // SAFETY: AVX-512F was detected; the plane, filter and output have their sizes.
        unsafe { forward_plane_3x3_avx512::<S>(h, wd, x32, w32, bias.to_f32().unwrap_or(0.0), ep, y32) };
        return true;
    }
    if S == 1 {
        T::with_scratch(scratch_3x3s1(h, wd), |sc| forward_plane_3x3s1_best(h, wd, x, w, bias, y, sc));
    } else {
        T::with_scratch(7 * wd.div_ceil(2), |sc| forward_plane_3x3s2_best(h, wd, x, w, bias, y, sc));
    }
    false
}

/// y = conv(x, w) + b for depthwise `g`. x: (N, C_in, H, W); w: (C_out, 1, KH, KW); b: (C_out);
/// y: (N, C_out, OH, OW) (overwritten).
/// `ep` is applied to each output plane right after it is computed.
pub fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>, ep: crate::conv::Epilogue, y: &mut [T]) {
    let Some((oh, ow)) = g.out_hw() else { return };
    let p = oh * ow;
    let m = g.c_out / g.groups;
    let (kk, hw) = (g.kh * g.kw, g.h * g.w);
    let scratch = if g.stride.1 > 1 { g.stride.1 * g.h * g.w.div_ceil(g.stride.1) } else { 0 };
    let plane = |idx: usize, yp: &mut [T]| {
        let (i, co) = (idx / g.c_out, idx % g.c_out);
        let xp = &x[(i * g.c_in + co / m) * hw..][..hw];
        let wk = &w[co * kk..(co + 1) * kk];
        let bias = b.map_or(T::zero(), |b| b[co]);
        if is_3x3_s1_p1(g) {
            if plane_3x3::<T, 1>(g.h, g.w, xp, wk, bias, ep, yp) {
                return;
            }
        } else if is_3x3_s2_p1(g) {
            if plane_3x3::<T, 2>(g.h, g.w, xp, wk, bias, ep, yp) {
                return;
            }
        } else {
            // Baseline ISA on purpose (measured): acc_taps' 4×-unrolled AVX2 loops leave most
            // of a short row to the scalar epilogue and ran ~30% slower than SSE2 on 56-wide rows.
            T::with_scratch(scratch, |ph| forward_plane(g, xp, wk, bias, yp, ph));
        }
        crate::simd::with_best_isa(|| ep.apply(yp));
    };
    let y = &mut y[..g.n * g.c_out * p];
    if p == 0 {
        return;
    }
    if parallel(y.len()) {
        y.par_chunks_mut(p).enumerate().for_each(|(idx, yp)| plane(idx, yp));
    } else {
        y.chunks_mut(p).enumerate().for_each(|(idx, yp)| plane(idx, yp));
    }
}

/// One input-gradient plane, accumulating. gy: (M, OH, OW) (the channel's M output planes);
/// w: (M, KH, KW); dst: (S, H, ⌈W/S⌉) phase planes, or (H, W) when S == 1.
#[inline(always)]
fn backward_input_plane<T: Float>(g: &ConvGeom, gy: &[T], w: &[T], dst: &mut [T]) {
    let Some((oh, ow)) = g.out_hw() else { return };
    let s = g.stride.1;
    let pw = g.w.div_ceil(s);
    let kk = g.kh * g.kw;
    for (j, gyp) in gy.chunks(oh * ow).enumerate() {
        for kj in 0..g.kw {
            // The scatter of tap column kj: output ox adds into input column ox·s + off.
            let t = ColTap::new(g, ow, kj);
            if t.hi == t.lo {
                continue;
            }
            let ((lo, hi), (r, q)) = ((t.lo, t.hi), t.start(t.lo, s));
            for ki in 0..g.kh {
                let wv = w[j * kk + ki * g.kw + kj];
                for oy in 0..oh {
                    let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.padding.0 as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let base = (r * g.h + iy as usize) * pw + q;
                    axpy(&mut dst[base..base + (hi - lo)], wv, &gyp[oy * ow + lo..oy * ow + hi]);
                }
            }
        }
    }
}

/// gx = d(conv)/dx · gy for depthwise `g`. gy: (N, C_out, OH, OW); w: (C_out, 1, KH, KW);
/// gx: (N, C_in, H, W) (overwritten).
pub fn backward_input<T: Float>(g: &ConvGeom, gy: &[T], w: &[T], gx: &mut [T]) {
    let Some((oh, ow)) = g.out_hw() else { return };
    let m = g.c_out / g.groups;
    let (p, hw, kk) = (oh * ow, g.h * g.w, g.kh * g.kw);
    let s = g.stride.1;
    let scratch = if s > 1 { s * g.h * g.w.div_ceil(s) } else { 0 };
    let plane = |idx: usize, gxp: &mut [T]| {
        let (i, c) = (idx / g.c_in, idx % g.c_in);
        let gyp = &gy[(i * g.c_out + c * m) * p..][..m * p];
        let wk = &w[c * m * kk..(c + 1) * m * kk];
        if m == 1 && is_3x3_s1_p1(g) {
            // The input gradient of a 3×3/1 pad-1 conv is the same conv of gy with the kernel
            // rotated 180°: reuse the register-blocked forward plane (it overwrites gxp).
            let flipped: [T; 9] = std::array::from_fn(|k| wk[8 - k]);
            plane_3x3::<T, 1>(g.h, g.w, gyp, &flipped, T::zero(), crate::conv::Epilogue::None, gxp);
            return;
        }
        if m == 1 && is_3x3_s2_p1(g) {
            return T::with_scratch(4 * (ow + 1), |sc| backward_input_plane_3x3s2_best(g.h, g.w, gyp, wk, gxp, sc));
        }
        gxp.iter_mut().for_each(|v| *v = T::zero());
        if s == 1 {
            backward_input_plane_best(g, gyp, wk, gxp);
        } else {
            // Strided scatters become contiguous in phase planes; interleave them back after.
            T::with_scratch(scratch, |ph| {
                ph.iter_mut().for_each(|v| *v = T::zero());
                backward_input_plane_best(g, gyp, wk, ph);
                interleave_add(ph, g.h, g.w, s, gxp);
            });
        }
    };
    let gx = &mut gx[..g.n * g.c_in * hw];
    if hw == 0 {
        return;
    }
    if parallel(gx.len().max(g.n * g.c_out * p)) {
        gx.par_chunks_mut(hw).enumerate().for_each(|(idx, gxp)| plane(idx, gxp));
    } else {
        gx.chunks_mut(hw).enumerate().for_each(|(idx, gxp)| plane(idx, gxp));
    }
}

/// Accumulates one image's weight gradient of one output channel. x: (H, W) (the input
/// channel); gy: (OH, OW); gw: (KH, KW); phases: (S, H, ⌈W/S⌉) scratch when S > 1.
#[inline(always)]
fn backward_weight_plane<T: Float>(g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T], phases: &mut [T]) {
    let Some((oh, ow)) = g.out_hw() else { return };
    let s = g.stride.1;
    let (src, pw): (&[T], usize) = if s == 1 {
        (x, g.w)
    } else {
        deinterleave(x, g.h, g.w, s, phases);
        (phases, g.w.div_ceil(s))
    };
    for kj in 0..g.kw {
        let t = ColTap::new(g, ow, kj);
        if t.hi == t.lo {
            continue;
        }
        let ((lo, hi), (r, q)) = ((t.lo, t.hi), t.start(t.lo, s));
        for ki in 0..g.kh {
            let mut sum = T::zero();
            for oy in 0..oh {
                let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.padding.0 as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let base = (r * g.h + iy as usize) * pw + q;
                sum += dot(&gy[oy * ow + lo..oy * ow + hi], &src[base..base + (hi - lo)]);
            }
            gw[ki * g.kw + kj] += sum;
        }
    }
}

/// acc[k][l] += Σ gy[i]·src_k[i] over i ≡ l (mod LANES) for the three tap slices src_k (each
/// at least gy.len() long), tail[k] += the same over the last gy.len() % LANES elements. The partial sums stay per lane across calls, so a plane's rows are
/// reduced once at the end instead of once per row.
#[inline(always)]
fn dot3_lanes<T: Float>(gy: &[T], src: [&[T]; 3], acc: &mut [[T; LANES]; 3], tail: &mut [T; 3]) {
    let n = gy.len();
    let (a, b, c) = (&src[0][..n], &src[1][..n], &src[2][..n]);
    // Local copies, so LLVM keeps the lanes in registers (three &mut into one array defeat
    // its alias analysis and leave the loop scalar).
    let [mut pa, mut pb, mut pc] = *acc;
    let (mut cg, mut ca, mut cb, mut cc) = (gy.chunks_exact(LANES), a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    for (((g, a), b), c) in (&mut cg).zip(&mut ca).zip(&mut cb).zip(&mut cc) {
        for l in 0..LANES {
            pa[l] += g[l] * a[l];
            pb[l] += g[l] * b[l];
            pc[l] += g[l] * c[l];
        }
    }
    *acc = [pa, pb, pc];
    // The tail goes to separate sums: indexing the lanes by a loop variable here would keep
    // them in memory for the whole loop above.
    for (((&g, &a), &b), &c) in cg.remainder().iter().zip(ca.remainder()).zip(cb.remainder()).zip(cc.remainder()) {
        tail[0] += g * a;
        tail[1] += g * b;
        tail[2] += g * c;
    }
}

/// One image's weight gradient of one 3×3 pad-1 channel (stride 1 or 2), accumulating, in a
/// single pass over gy with the nine sums in registers. Each input row is laid out so that the
/// three tap columns of output ox read index ox of three slices: stride 1 pads the row with a
/// zero on each side; stride 2 splits it into even columns and odd columns with a leading zero
/// (taps 2·ox − 1, 2·ox, 2·ox + 1 are odd'[ox], even[ox], odd'[ox + 1]).
/// x: (H, W); gy: (OH, OW); gw: (3, 3); scratch: 2·W + 4.
#[inline(always)]
fn backward_weight_plane_3x3<T: Float>(g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T], scratch: &mut [T]) {
    let Some((oh, ow)) = g.out_hw() else { return };
    let (s, wd) = (g.stride.1, g.w);
    let mut acc = [[[T::zero(); LANES]; 3]; 3];
    let mut tails = [[T::zero(); 3]; 3];
    let buf = &mut scratch[..2 * wd + 4];
    for oy in 0..oh {
        let gyr = &gy[oy * ow..(oy + 1) * ow];
        for (ki, (acc_row, tail)) in acc.iter_mut().zip(tails.iter_mut()).enumerate() {
            let iy = (oy * s + ki) as isize - 1;
            if iy < 0 || iy >= g.h as isize {
                continue;
            }
            let xr = &x[iy as usize * wd..(iy as usize + 1) * wd];
            let taps: [&[T]; 3] = if s == 1 {
                buf[0] = T::zero();
                buf[1..=wd].copy_from_slice(xr);
                buf[wd + 1] = T::zero();
                [&buf[..ow], &buf[1..ow + 1], &buf[2..ow + 2]]
            } else {
                let (even, odd) = buf.split_at_mut(ow);
                odd[0] = T::zero();
                split_row(xr, even, &mut odd[1..ow + 1]);
                let (even, odd) = (&*even, &*odd);
                [&odd[..ow], &even[..ow], &odd[1..ow + 1]]
            };
            dot3_lanes(gyr, taps, acc_row, tail);
        }
    }
    add_sums(&acc, &tails, gw);
}

/// gw[3·ki + kj] += the lane and tail sums of tap (ki, kj).
#[inline(always)]
fn add_sums<T: Float>(acc: &[[[T; LANES]; 3]; 3], tails: &[[T; 3]; 3], gw: &mut [T]) {
    for (k, (lanes, &t)) in acc.iter().flatten().zip(tails.iter().flatten()).enumerate() {
        gw[k] += lanes.iter().fold(t, |s, &v| s + v);
    }
}

/// [`backward_weight_plane_3x3`] for stride-1 planes up to [`FLAT_MAX_W`] wide: x padded whole
/// (row pitch W + 2) and gy laid out at the same pitch with zeros in the two extra columns, so
/// each kernel row's three sums are one flat pass of [`dot3_lanes`] over the plane (gy against
/// x shifted by ki·(W + 2) + kj). Per-row copies and vector tails were most of the work on
/// MobileNet's 3–24-wide planes. x: (H, W); gy: (H, W); gw: (3, 3);
/// scratch: [`flat_weight_scratch`].
#[inline(always)]
fn backward_weight_plane_3x3s1_flat<T: Float>(g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T], scratch: &mut [T]) {
    let (h, wd) = (g.h, g.w);
    let wp = wd + 2;
    let (xp, gp) = scratch.split_at_mut((h + 2) * wp + 2);
    let gp = &mut gp[..h * wp];
    xp.fill(T::zero());
    for (iy, row) in x.chunks_exact(wd).enumerate() {
        crate::conv::copy_row(&mut xp[(iy + 1) * wp + 1..][..wd], row);
    }
    for (dst, row) in gp.chunks_exact_mut(wp).zip(gy.chunks_exact(wd)) {
        crate::conv::copy_row(&mut dst[..wd], row);
        dst[wd] = T::zero();
        dst[wd + 1] = T::zero();
    }
    let mut acc = [[[T::zero(); LANES]; 3]; 3];
    let mut tails = [[T::zero(); 3]; 3];
    for (ki, (acc_row, tail)) in acc.iter_mut().zip(tails.iter_mut()).enumerate() {
        let o = ki * wp;
        dot3_lanes(gp, [&xp[o..], &xp[o + 1..], &xp[o + 2..]], acc_row, tail);
    }
    add_sums(&acc, &tails, gw);
}

/// Scratch elements [`backward_weight_plane_3x3s1_flat`] needs for an H×W plane.
fn flat_weight_scratch(h: usize, w: usize) -> usize {
    (h + 2) * (w + 2) + 2 + h * (w + 2)
}

/// gw = d(conv)/dw · gy for depthwise `g`, summed over the batch. x: (N, C_in, H, W);
/// gy: (N, C_out, OH, OW); gw: (C_out, 1, KH, KW) (overwritten).
pub fn backward_weight<T: Float>(g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T]) {
    let Some((oh, ow)) = g.out_hw() else { return };
    let m = g.c_out / g.groups;
    let (p, hw, kk) = (oh * ow, g.h * g.w, g.kh * g.kw);
    let s = g.stride.1;
    let scratch = if s > 1 { s * g.h * g.w.div_ceil(s) } else { 0 };
    // One plane kernel for the whole call, with the scratch it needs.
    type PlaneFn<T> = fn(&ConvGeom, &[T], &[T], &mut [T], &mut [T]);
    let (plane, len): (PlaneFn<T>, usize) = if is_3x3_s1_p1(g) && g.w <= FLAT_MAX_W {
        (backward_weight_plane_3x3s1_flat_best, flat_weight_scratch(g.h, g.w))
    } else if is_3x3_s1_p1(g) || is_3x3_s2_p1(g) {
        (backward_weight_plane_3x3_best, 2 * g.w + 4)
    } else {
        (backward_weight_plane_best, scratch)
    };
    #[cfg(target_arch = "x86_64")]
    let fast = (is_3x3_s1_p1(g) || is_3x3_s2_p1(g)) && crate::packed::available();
    let chan = |co: usize, gwc: &mut [T]| {
        gwc.iter_mut().for_each(|v| *v = T::zero());
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(x32), Some(gy32), Some(gw32)) =
            (fast, crate::simd::as_f32(x), crate::simd::as_f32(gy), crate::simd::as_f32_mut(gwc))
        {
            for i in 0..g.n {
                let (xp, gyp) = (&x32[(i * g.c_in + co / m) * hw..][..hw], &gy32[(i * g.c_out + co) * p..][..p]);
                // SAFETY: AVX-512F was detected; the planes and the 9 weights have their sizes.
                unsafe {
                    if g.stride.1 == 1 {
                        backward_weight_plane_3x3_avx512::<1>(g.h, g.w, xp, gyp, gw32)
                    } else {
                        backward_weight_plane_3x3_avx512::<2>(g.h, g.w, xp, gyp, gw32)
                    }
                }
            }
            return;
        }
        T::with_scratch(len, |sc| {
            for i in 0..g.n {
                let xp = &x[(i * g.c_in + co / m) * hw..][..hw];
                let gyp = &gy[(i * g.c_out + co) * p..][..p];
                plane(g, xp, gyp, gwc, sc);
            }
        });
    };
    let gw = &mut gw[..g.c_out * kk];
    if kk == 0 {
        return;
    }
    if parallel(g.n * g.c_out * p) {
        gw.par_chunks_mut(kk).enumerate().for_each(|(co, gwc)| chan(co, gwc));
    } else {
        gw.chunks_mut(kk).enumerate().for_each(|(co, gwc)| chan(co, gwc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    use crate::reference::rand_vec;

    fn close(a: &[f64], e: &[f64]) -> Result<(), String> {
        for (k, (a, e)) in a.iter().zip(e).enumerate() {
            if (a - e).abs() > 1e-5 * e.abs().max(1.0) {
                return Err(format!("at {k}: {a} vs {e}"));
            }
        }
        Ok(())
    }

    fn depthwise_strategy() -> impl Strategy<Value = ConvGeom> {
        (1usize..4, 1usize..13, 1usize..3, 1usize..21, 1usize..21, 1usize..6, 1usize..6, 1usize..4, 1usize..4, 0usize..3, 1usize..3)
            .prop_map(|(n, c, mult, h, w, kh, kw, sh, sw, p, d)| ConvGeom {
                n,
                c_in: c,
                h,
                w,
                c_out: c * mult,
                kh,
                kw,
                stride: (sh, sw),
                padding: (p, p),
                dilation: (d, 3 - d),
                groups: c,
            })
            .prop_filter("kernel must fit", |g| g.out_hw().is_some())
    }

    fn check(g: &ConvGeom, seed: u64) -> Result<(), String> {
        let mut s = seed;
        let (oh, ow) = g.out_hw().ok_or("no output")?;
        let x = rand_vec(g.n * g.c_in * g.h * g.w, &mut s);
        let w = rand_vec(g.c_out * g.kh * g.kw, &mut s);
        let b = rand_vec(g.c_out, &mut s);
        let gy = rand_vec(g.n * g.c_out * oh * ow, &mut s);
        let mut y = vec![7.0; gy.len()];
        forward(g, &x, &w, Some(&b), crate::conv::Epilogue::None, &mut y);
        close(&y, &reference::conv2d_naive(g, &x, &w, Some(&b))).map_err(|e| format!("fwd {e}"))?;
        let (gx_want, gw_want) = reference::conv2d_backward_naive(g, &x, &w, &gy);
        let mut gx = vec![7.0; x.len()];
        backward_input(g, &gy, &w, &mut gx);
        close(&gx, &gx_want).map_err(|e| format!("gx {e}"))?;
        let mut gw = vec![7.0; w.len()];
        backward_weight(g, &x, &gy, &mut gw);
        close(&gw, &gw_want).map_err(|e| format!("gw {e}"))
    }

    /// Large enough to take the parallel paths, with a multiplier and stride 2.
    #[test]
    fn parallel_paths_match_naive() {
        for (stride, mult) in [(1, 1), (2, 2)] {
            let g = ConvGeom {
                n: 2,
                c_in: 8,
                h: 45,
                w: 47,
                c_out: 8 * mult,
                kh: 3,
                kw: 3,
                stride: (stride, stride),
                padding: (1, 1),
                dilation: (1, 1),
                groups: 8,
            };
            if let Err(e) = check(&g, 11) {
                panic!("{g:?}: {e}");
            }
        }
    }

    #[test]
    fn f32_matches_f64() {
        let g =
            ConvGeom { n: 1, c_in: 4, h: 9, w: 11, c_out: 4, kh: 5, kw: 5, stride: (2, 2), padding: (2, 2), dilation: (1, 1), groups: 4 };
        let mut s = 3;
        let (oh, ow) = g.out_hw().unwrap_or((0, 0));
        let x = rand_vec(g.n * g.c_in * g.h * g.w, &mut s);
        let w = rand_vec(g.c_out * 25, &mut s);
        let mut y = vec![0.0; g.c_out * oh * ow];
        forward(&g, &x, &w, None, crate::conv::Epilogue::None, &mut y);
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let mut yf = vec![0f32; y.len()];
        forward(&g, &xf, &wf, None, crate::conv::Epilogue::None, &mut yf);
        let yd: Vec<f64> = yf.iter().map(|&v| v as f64).collect();
        assert_eq!(close(&yd, &y), Ok(()));
    }

    /// The specialised MobileNet shapes (3×3, padding 1, stride 1 or 2), which the general
    /// strategy above (dilation never (1, 1)) does not reach. Odd and even sizes, tiny planes,
    /// and widths on both sides of FLAT_MAX_W (the flat and the row-by-row kernels).
    fn mobilenet_strategy() -> impl Strategy<Value = ConvGeom> {
        (1usize..3, 1usize..6, 1usize..3, 1usize..24, prop_oneof![1usize..24, 30usize..40], 1usize..3).prop_map(|(n, c, mult, h, w, s)| {
            ConvGeom { n, c_in: c, h, w, c_out: c * mult, kh: 3, kw: 3, stride: (s, s), padding: (1, 1), dilation: (1, 1), groups: c }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn specialised_3x3_kernels_match_naive(g in mobilenet_strategy(), seed in 0u64..10_000) {
            prop_assert_eq!(check(&g, seed), Ok(()), "{:?}", g);
        }

        /// The f32 kernels (AVX-512 with the activation fused, where the CPU has it) on the
        /// specialised shapes, every activation, against the naive twin in f64: rows of one
        /// to three 16-lane steps with partial last steps, and planes of one row or column;
        /// both gradients too.
        #[test]
        fn f32_specialised_kernels_match_naive(g in mobilenet_strategy(), act in 0usize..3, seed in 0u64..10_000) {
            let mut s = seed;
            let (oh, ow) = g.out_hw().unwrap();
            let x = rand_vec(g.n * g.c_in * g.h * g.w, &mut s);
            let w = rand_vec(g.c_out * 9, &mut s);
            let b = rand_vec(g.c_out, &mut s);
            let ep = [crate::conv::Epilogue::None, crate::conv::Epilogue::Relu, crate::conv::Epilogue::Clamp(-0.1, 0.2)][act];
            let mut want = crate::reference::conv2d_naive(&g, &x, &w, Some(&b));
            ep.apply(&mut want);
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let mut y = vec![f32::NAN; g.n * g.c_out * oh * ow];
            forward(&g, &f(&x), &f(&w), Some(&f(&b)), ep, &mut y);
            prop_assert!(crate::reference::max_abs_diff(&y, &want) < 1e-5, "{:?} {:?}", g, ep);
            // The input gradient, whose 3×3/1 case runs the forward kernel on gy.
            let gy = rand_vec(g.n * g.c_out * oh * ow, &mut s);
            let (gx_want, gw_want) = crate::reference::conv2d_backward_naive(&g, &x, &w, &gy);
            let mut gx = vec![f32::NAN; x.len()];
            backward_input(&g, &f(&gy), &f(&w), &mut gx);
            prop_assert!(crate::reference::max_abs_diff(&gx, &gx_want) < 1e-5, "gx {:?}", g);
            let mut gw = vec![f32::NAN; w.len()];
            backward_weight(&g, &f(&x), &f(&gy), &mut gw);
            prop_assert!(crate::reference::max_abs_diff(&gw, &gw_want) < 1e-4, "gw {:?}", g);
        }

        #[test]
        fn depthwise_kernels_match_naive(g in depthwise_strategy(), seed in 0u64..10_000) {
            prop_assert_eq!(check(&g, seed), Ok(()), "{:?}", g);
        }
    }
}
