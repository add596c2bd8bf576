//! 2-D convolution over im2col + GEMM, forward and both backward passes.
//!
//! Layouts are NCHW and contiguous. Weight: (C_out, C_in/G, KH, KW).
//! Per image and group: cols (C_in/G·KH·KW, OH·OW) = im2col(x); y = W_g @ cols.
//! 1×1 stride-1 unpadded convolutions skip im2col: the image itself is the cols matrix.
//! Threads: batches with at least as many images as threads split over images (each thread
//! runs a single-threaded GEMM on its own image); small batches let GEMM use all threads.

use crate::depthwise;
use crate::matmul::{gemm, gemm_strided, MatRef};
use crate::Float;
use rayon::prelude::*;

/// Everything a convolution kernel needs to know about shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl ConvGeom {
    /// A 1×1 stride-1 convolution without padding (a pointwise layer).
    pub fn pointwise(n: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> ConvGeom {
        ConvGeom { n, c_in, c_out, h, w, kh: 1, kw: 1, stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
    /// Output size, or None when the (dilated) kernel does not fit the padded input.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let eh = self.dilation.0 * (self.kh - 1) + 1;
        let ew = self.dilation.1 * (self.kw - 1) + 1;
        let ph = self.h + 2 * self.padding.0;
        let pw = self.w + 2 * self.padding.1;
        if eh > ph || ew > pw || self.stride.0 == 0 || self.stride.1 == 0 {
            return None;
        }
        Some(((ph - eh) / self.stride.0 + 1, (pw - ew) / self.stride.1 + 1))
    }
    fn oh_ow(&self) -> (usize, usize) {
        self.out_hw().expect("ConvGeom checked by caller")
    }
    /// Rows of the cols matrix for one group: C_in/G · KH · KW.
    pub fn col_rows(&self) -> usize {
        self.c_in / self.groups * self.kh * self.kw
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.padding == (0, 0)
    }
    /// Multiply-adds ×2 of the forward pass.
    pub fn flops(&self) -> f64 {
        let (oh, ow) = self.out_hw().unwrap_or((0, 0));
        2.0 * (self.n * self.c_out * self.col_rows() * oh * ow) as f64
    }
}

/// Unfolds one group of one image. x: (C_in/G, H, W); cols: (C_in/G·KH·KW, OH·OW).
pub fn im2col<T: Float>(g: &ConvGeom, x: &[T], cols: &mut [T]) {
    im2col_rows(g, x, 0, g.oh_ow().0, cols)
}

/// dst = src (src at least as long) without a memcpy call for short rows: fixed-size block
/// moves, which LLVM emits as vector loads and stores, the last block overlapping the one
/// before. (The 7- and 14-wide rows of ResNet's last stages made im2col mostly call overhead.)
#[inline(always)]
pub(crate) fn copy_row<T: Float>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    let src = &src[..n];
    if n >= 64 {
        dst.copy_from_slice(src);
    } else if n >= 8 {
        copy_blocks::<T, 8>(dst, src);
    } else if n >= 4 {
        copy_blocks::<T, 4>(dst, src);
    } else {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v);
    }
}

/// [`copy_row`] in blocks of B elements; needs B <= dst.len() == src.len().
#[inline(always)]
fn copy_blocks<T: Float, const B: usize>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    let block = |i: usize, dst: &mut [T]| {
        if let Ok(b) = <[T; B]>::try_from(&src[i..i + B]) {
            dst[i..i + B].copy_from_slice(&b);
        }
    };
    let mut i = 0;
    while i + B <= n {
        block(i, dst);
        i += B;
    }
    if i < n {
        block(n - B, dst);
    }
}

/// Padded planes up to this many elements (16 KiB of f32, L1-resident) are built whole by im2col.
const SMALL_PADDED_PLANE: usize = 4096;

/// im2col restricted to output rows oy0..oy1: cols (C_in/G·KH·KW, (oy1−oy0)·OW).
pub fn im2col_rows<T: Float>(g: &ConvGeom, x: &[T], oy0: usize, oy1: usize, cols: &mut [T]) {
    im2col_rows_ld(g, x, oy0, oy1, cols, (oy1 - oy0) * g.oh_ow().1)
}

best_isa_fn!(pub im2col_rows_ld, im2col_rows_avx2, im2col_rows_impl, (g: &ConvGeom, x: &[T], oy0: usize, oy1: usize, cols: &mut [T], ld: usize));

/// im2col restricted to output rows oy0..oy1, row r of cols at `cols[r·ld ..][.. (oy1−oy0)·OW]`
/// (ld > (oy1−oy0)·OW places one image's columns inside a matrix holding several side by side).
///
/// Per input row used, the row is copied once into a zero-padded buffer (the padding columns
/// become real zeros) and, for column strides S > 1, split into S phases (phase r holds padded
/// columns r, r + S, …). Tap column kj of every output in the row then starts at padded column
/// kj·dw and is one contiguous run of OW elements in phase (kj·dw) % S: a single short copy per
/// (tap, output row) with no bounds tests or zero-filling.
#[inline(always)]
fn im2col_rows_impl<T: Float>(g: &ConvGeom, x: &[T], oy0: usize, oy1: usize, cols: &mut [T], ld: usize) {
    let ow = g.oh_ow().1;
    let oh = oy1 - oy0;
    let cpg = g.c_in / g.groups;
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (dh, dw) = g.dilation;
    let wpad = g.w + 2 * pw;
    let kk = g.kh * g.kw;
    if sw == 1 && (g.h + 2 * ph) * wpad <= SMALL_PADDED_PLANE {
        // Small planes: each channel is zero-padded whole, once, and every (tap, output row)
        // is one short copy from it. (Padding row by row, per kernel row, made a memcpy call
        // per 4-wide row the larger part of im2col on ResNet's 4×4 stage.)
        let mut padded = vec![T::zero(); (g.h + 2 * ph) * wpad];
        for c in 0..cpg {
            let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for (iy, row) in plane.chunks_exact(g.w).enumerate() {
                copy_row(&mut padded[(iy + ph) * wpad + pw..][..g.w], row);
            }
            let crows = &mut cols[c * kk * ld..];
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let r = (ki * g.kw + kj) * ld;
                    for oy in 0..oh {
                        let src = &padded[((oy + oy0) * sh + ki * dh) * wpad + kj * dw..];
                        copy_row(&mut crows[r + oy * ow..r + (oy + 1) * ow], src);
                    }
                }
            }
        }
        return;
    }
    let plen = wpad.div_ceil(sw);
    let mut padded = vec![T::zero(); wpad + sw * plen];
    let (prow, phases) = padded.split_at_mut(wpad);
    for c in 0..cpg {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let crows = &mut cols[c * kk * ld..];
        for ki in 0..g.kh {
            for oy in 0..oh {
                let iy = ((oy + oy0) * sh + ki * dh) as isize - ph as isize;
                let at = |kj: usize| (ki * g.kw + kj) * ld + oy * ow;
                if iy < 0 || iy >= g.h as isize {
                    for kj in 0..g.kw {
                        crows[at(kj)..at(kj) + ow].fill(T::zero());
                    }
                    continue;
                }
                let iy = iy as usize;
                prow[pw..pw + g.w].copy_from_slice(&plane[iy * g.w..(iy + 1) * g.w]);
                let src: &[T] = if sw == 1 {
                    prow
                } else {
                    for (r, ph) in phases.chunks_exact_mut(plen).enumerate() {
                        for (j, d) in ph.iter_mut().enumerate() {
                            *d = prow.get(j * sw + r).copied().unwrap_or(T::zero());
                        }
                    }
                    phases
                };
                for kj in 0..g.kw {
                    let start = kj * dw;
                    let from = (start % sw) * plen + start / sw;
                    copy_row(&mut crows[at(kj)..at(kj) + ow], &src[from..from + ow]);
                }
            }
        }
    }
}

/// Folds cols back, accumulating into x. cols: (C_in/G·KH·KW, OH·OW); x: (C_in/G, H, W).
pub fn col2im<T: Float>(g: &ConvGeom, cols: &[T], x: &mut [T]) {
    let (oh, ow) = g.oh_ow();
    col2im_ld(g, cols, oh * ow, x)
}

/// dst += src (same length) in fixed 8- and 4-element blocks, so that the short rows of the
/// small feature maps (4 and 8 wide in a CIFAR ResNet's last stages) are vector adds too.
#[inline(always)]
fn add_row<T: Float>(dst: &mut [T], src: &[T]) {
    let mut db = dst.chunks_exact_mut(8);
    let mut sb = src.chunks_exact(8);
    for (d, s) in (&mut db).zip(&mut sb) {
        for l in 0..8 {
            d[l] += s[l];
        }
    }
    let (dr, sr) = (db.into_remainder(), sb.remainder());
    let mut d4 = dr.chunks_exact_mut(4);
    let mut s4 = sr.chunks_exact(4);
    for (d, s) in (&mut d4).zip(&mut s4) {
        for l in 0..4 {
            d[l] += s[l];
        }
    }
    d4.into_remainder().iter_mut().zip(s4.remainder()).for_each(|(d, &v)| *d += v);
}

/// dst[i·s] += src[i]. Kept out of line at the baseline ISA on purpose: compiled for AVX2,
/// LLVM vectorises this strided update with masked stores (vmaskmovps), which are microcoded
/// and slow on AMD Zen (measured: half of col2im's time in a CIFAR ResNet step).
#[inline(never)]
fn add_strided<T: Float>(dst: &mut [T], s: usize, src: &[T]) {
    dst.iter_mut().step_by(s).zip(src).for_each(|(d, &v)| *d += v);
}

best_isa_fn!(pub col2im_ld, col2im_ld_avx2, col2im_ld_impl, (g: &ConvGeom, cols: &[T], ld: usize, x: &mut [T]));

/// col2im reading row r of cols at `cols[r·ld ..][.. OH·OW]` (one image's columns inside a
/// matrix that holds several images side by side).
#[inline(always)]
fn col2im_ld_impl<T: Float>(g: &ConvGeom, cols: &[T], ld: usize, x: &mut [T]) {
    let (oh, ow) = g.oh_ow();
    let cpg = g.c_in / g.groups;
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (dh, dw) = g.dilation;
    if sw == 1 {
        // Per (channel, ki, output row): the K tap rows are added at full length into a
        // zero-bordered row buffer (tap kj at padded column kj·dw), whose interior then goes
        // into x once. Full-length adds are whole vector blocks; clipped per-tap adds were
        // mostly ragged scalar tails (3, 7, 15 wide).
        let wpad = g.w + 2 * pw;
        let mut prow = vec![T::zero(); wpad];
        for c in 0..cpg {
            let plane = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ki in 0..g.kh {
                for oy in 0..oh {
                    let iy = (oy * sh + ki * dh) as isize - ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    prow.fill(T::zero());
                    for kj in 0..g.kw {
                        let row = (c * g.kh + ki) * g.kw + kj;
                        let at = kj * dw;
                        add_row(&mut prow[at..at + ow], &cols[row * ld + oy * ow..][..ow]);
                    }
                    let iy = iy as usize;
                    add_row(&mut plane[iy * g.w..(iy + 1) * g.w], &prow[pw..pw + g.w]);
                }
            }
        }
        return;
    }
    for c in 0..cpg {
        let plane = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &cols[row * ld..row * ld + oh * ow];
                // Outputs lo..hi land inside the row (0 <= ox·sw + off < W), starting at column
                // d0: the same for every output row, so computed once per tap.
                let off = (kj * dw) as isize - pw as isize;
                let si = sw as isize;
                let lo = if off >= 0 { 0 } else { ((-off + si - 1) / si) as usize }.min(ow);
                let hi = if g.w as isize > off { ((g.w as isize - 1 - off) / si + 1) as usize } else { 0 }.clamp(lo, ow);
                if hi == lo {
                    continue;
                }
                let d0 = (lo as isize * si + off) as usize;
                for oy in 0..oh {
                    let iy = (oy * sh + ki * dh) as isize - ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    add_strided(&mut dst[d0..], sw, &src[oy * ow + lo..oy * ow + hi]);
                }
            }
        }
    }
}

fn batch_parallel(n: usize) -> bool {
    n >= crate::num_threads() && crate::num_threads() > 1
}

/// Runs `f(image_index, out_chunk)` over the batch, in parallel when the batch is large enough.
fn over_batch<T: Float>(n: usize, out: &mut [T], per: usize, f: impl Fn(usize, &mut [T], bool) + Sync) {
    if batch_parallel(n) {
        out.par_chunks_mut(per).enumerate().for_each(|(i, o)| f(i, o, false));
    } else {
        out.chunks_mut(per).enumerate().for_each(|(i, o)| f(i, o, true));
    }
}

/// An elementwise activation applied to a convolution's output while it is still in cache,
/// as each block of it is produced: the inference "fused epilogue" (ONNX Conv → Relu / Clip,
/// nn.ReLU / nn.ReLU6 after a conv). NaN stays NaN, as in the separate ops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    None,
    Relu,
    /// Clip to [lo, hi] (ReLU6 is Clamp(0, 6)).
    Clamp(f64, f64),
}

impl Epilogue {
    /// Applies the activation to `y` in place (selects, not branches, so the loop vectorises).
    #[inline(always)]
    pub fn apply<T: Float>(self, y: &mut [T]) {
        match self {
            Epilogue::None => {}
            Epilogue::Relu => y.iter_mut().for_each(|v| *v = if *v < T::zero() { T::zero() } else { *v }),
            Epilogue::Clamp(..) => {
                let (lo, hi) = self.bounds::<T>();
                y.iter_mut().for_each(|v| *v = clamp(*v, lo, hi))
            }
        }
    }

    /// y = act(y + bias), one pass.
    #[inline(always)]
    pub fn apply_bias<T: Float>(self, y: &mut [T], bias: T) {
        let (lo, hi) = self.bounds::<T>();
        y.iter_mut().for_each(|v| *v = clamp(*v + bias, lo, hi))
    }

    /// The activation as a clamp to [lo, hi], ±∞ where unbounded.
    #[inline(always)]
    pub fn bounds<T: Float>(self) -> (T, T) {
        match self {
            Epilogue::None => (T::neg_infinity(), T::infinity()),
            Epilogue::Relu => (T::zero(), T::infinity()),
            Epilogue::Clamp(lo, hi) => (T::from_f64(lo).unwrap_or(T::neg_infinity()), T::from_f64(hi).unwrap_or(T::infinity())),
        }
    }

    /// [`Epilogue::apply`] over a whole tensor: parallel chunks, each vectorised for the best ISA.
    pub fn apply_par<T: Float>(self, y: &mut [T]) {
        if self != Epilogue::None {
            crate::simd::chunks_in_place(y, |c| self.apply(c));
        }
    }
}

/// v clamped to [lo, hi] by compare and select (NaN fails both tests and stays NaN).
#[inline(always)]
fn clamp<T: Float>(v: T, lo: T, hi: T) -> T {
    let c = if v < lo { lo } else { v };
    if c > hi {
        hi
    } else {
        c
    }
}

/// y = conv(x, w) + b. x: (N, C_in, H, W); w: (C_out, C_in/G, KH, KW); b: (C_out); y: (N, C_out, OH, OW).
pub fn conv2d_forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>, y: &mut [T]) {
    conv2d_forward_ep(g, x, w, b, Epilogue::None, y)
}

/// y = act(conv(x, w) + b), the activation applied block by block as the output is produced.
/// Shapes as [`conv2d_forward`].
pub fn conv2d_forward_ep<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>, ep: Epilogue, y: &mut [T]) {
    if depthwise::applies(g) {
        return depthwise::forward(g, x, w, b, ep, y);
    }
    if crate::direct::applies(g) {
        let f = crate::simd::as_f32;
        if let (Some(x), Some(w), Some(y)) = (f(x), f(w), crate::simd::as_f32_mut(y)) {
            return crate::direct::forward(g, x, w, b.and_then(f), ep, y);
        }
    }
    if crate::winograd::applies(g) {
        return crate::winograd::forward_ep(g, x, w, b, ep, y);
    }
    if g.is_pointwise() && g.groups == 1 && crate::pointwise::available() {
        let f = crate::simd::as_f32;
        if let (Some(x), Some(w), Some(y)) = (f(x), f(w), crate::simd::as_f32_mut(y)) {
            return pointwise_forward(g, x, w, b.and_then(f), ep, y);
        }
    }
    let (oh, ow) = g.oh_ow();
    let p = oh * ow;
    let kr = g.col_rows();
    let cog = g.c_out / g.groups;
    let x_img = g.c_in * g.h * g.w;
    let x_grp = (g.c_in / g.groups) * g.h * g.w;
    if p < SMALL_PLANE && g.n > 1 {
        return forward_batched(g, x, w, b, ep, y);
    }
    over_batch(g.n, y, g.c_out * p, |i, yi, par| {
        if forward_bands(g, &x[i * x_img..(i + 1) * x_img], w, b, ep, yi, par) {
            return;
        }
        T::with_scratch(if g.is_pointwise() { 0 } else { kr * p }, |cols| {
            for grp in 0..g.groups {
                let xg = &x[i * x_img + grp * x_grp..i * x_img + (grp + 1) * x_grp];
                let colm: &[T] = if g.is_pointwise() {
                    xg
                } else {
                    im2col(g, xg, cols);
                    cols
                };
                let wg = &w[grp * cog * kr..(grp + 1) * cog * kr];
                let out = &mut yi[grp * cog * p..(grp + 1) * cog * p];
                let bg = b.map(|b| &b[grp * cog..(grp + 1) * cog]);
                // Bias and activation in one pass over each block the GEMM wrote.
                let finish = |o: &mut [T], c0: usize| {
                    if bg.is_some() || ep != Epilogue::None {
                        crate::simd::with_best_isa(|| {
                            for (r, row) in o.chunks_exact_mut(p.max(1)).enumerate() {
                                ep.apply_bias(row, bg.map_or(T::zero(), |b| b[c0 + r]));
                            }
                        })
                    }
                };
                let t = crate::num_threads();
                if par && t > 1 && cog >= 64 * t {
                    // Output channels split over threads, one single-threaded GEMM each: the
                    // gemm crate's own splitting wakes its workers per call (~15% of a
                    // 512-channel 7×7 layer in scheduler time at batch 1).
                    let rows = cog.div_ceil(t).next_multiple_of(16);
                    let cm = MatRef::row_major(colm, kr, p);
                    out.par_chunks_mut(rows * p).zip(wg.par_chunks(rows * kr)).enumerate().for_each(|(ci, (o, wr))| {
                        gemm(MatRef::row_major(wr, wr.len() / kr, kr), cm, o, false, false);
                        finish(o, ci * rows);
                    });
                } else {
                    gemm(MatRef::row_major(wg, cog, kr), MatRef::row_major(colm, kr, p), out, false, par);
                    finish(out, 0);
                }
            }
        });
    });
}

/// A 1×1 stride-1 forward on [`crate::pointwise`] (f32, AVX-512): per image, y_i (C_out, P) =
/// ep(W (C_out, C_in) · x_i (C_in, P) + b), the input read in place and bias and activation
/// applied before the only store. Measured on MobileNetV2's 1×1 layers at batch 1, one thread
/// (`examples/pointwise_layers.rs`, gemm crate → pointwise): 32→192 at 28×28 50 → 105
/// GFLOP/s, 144→24 at 56×56 75 → 105, 576→96 at 14×14 103 → 110; on two threads 16→96 at
/// 112×112 111 → 138 but 96→576 at 14×14 168 → 146. Images split over the threads when
/// the batch has one per thread, else each image's tiles do.
fn pointwise_forward(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>, ep: Epilogue, y: &mut [f32]) {
    let p = g.h * g.w;
    let (xi_len, yi_len) = (g.c_in * p, g.c_out * p);
    assert!(x.len() >= g.n * xi_len && y.len() >= g.n * yi_len && w.len() >= g.c_out * g.c_in && b.is_none_or(|b| b.len() >= g.c_out));
    if p == 0 || g.c_out == 0 {
        return;
    }
    let ops = |xi: &[f32], yi: &mut [f32]| crate::pointwise::Operands {
        m: g.c_out,
        n: p,
        k: g.c_in,
        a: w.as_ptr(),
        lda: g.c_in,
        b: xi.as_ptr(),
        ldb: p,
        bias: b.map(|b| b.as_ptr()),
        ep,
        residual: None,
        after: Epilogue::None,
        y: yi.as_mut_ptr(),
        ldy: p,
    };
    let y = &mut y[..g.n * yi_len];
    // SAFETY (both arms): AVX-512 was checked by the caller; x_i, W, b and y_i hold the
    // operands' elements (asserted above), and each image's y_i is written by its own call.
    if batch_parallel(g.n) {
        y.par_chunks_mut(yi_len).enumerate().for_each(|(i, yi)| unsafe { crate::pointwise::run(&ops(&x[i * xi_len..], yi)) });
    } else {
        y.chunks_mut(yi_len).enumerate().for_each(|(i, yi)| unsafe { crate::pointwise::run_par(&ops(&x[i * xi_len..], yi)) });
    }
}

/// Output planes below this many pixels use cnnkit's own GEMM ([`crate::packed`]) when the
/// caller holds the weights packed (inference). It vectorises along output channels, where
/// the `gemm` crate vectorises along pixels and fills 64 lanes with a 7×7 plane's 49.
/// Measured, whole layers at batch 1 on two threads (gemm crate → packed): 512→512 3×3 at
/// 7×7 1.51 → 1.25 ms, 256→512 3×3 s2 at 14×14 0.93 → 0.74 ms, 128→256 3×3 s2 at 28×28
/// (196 output pixels) 0.88 → 0.80 ms, but 64→128 3×3 s2 at 56×56 (784) 0.83 → 0.94 ms.
/// Packing the weights on every call would cost more than it saves: they are read once per
/// call either way, and packing reads them by columns.
const PACKED_MAX_PIXELS: usize = 256;
/// Fewest output channels and K = C_in·KH·KW for the packed path. Smaller layers lose to
/// its fixed costs (packing B, per-panel tasks) and split unevenly over threads in panels of
/// 32 channels: MobileNetV2's 576→96 and 960→160 1×1 layers at 14×14 and 7×7 ran 1.4–2×
/// slower packed, its 160→960 a tie.
const PACKED_MIN_DIM: usize = 256;

/// Pointwise (1×1 stride-1) layers on planes under this many pixels run the packed GEMM with
/// the input read in place as B (`packed::gemm_bias_act_b_in_place`), from
/// [`POINTWISE_IN_PLACE_MIN_DIM`] channels and K. Measured at batch 1, MobileNetV2's 7×7 layers
/// (gemm crate → in place): 960→320 0.205 → 0.163 ms, 320→1280 0.248 → 0.225, 160→960
/// 0.103 → 0.093, 576→160 0.069 → 0.063, 960→160 a tie; at 14×14 a tie or slower (96→576
/// 0.118 → 0.150).
const POINTWISE_IN_PLACE_MAX_PIXELS: usize = 64;
/// Fewest output channels and input channels for the in-place pointwise path.
const POINTWISE_IN_PLACE_MIN_DIM: usize = 128;

/// True when [`conv2d_forward_packed`] would use weights packed by
/// [`crate::packed::PackedA::new`] for `g` (f32 only; one image, one group, a plane under
/// `PACKED_MAX_PIXELS` (256) pixels, on a CPU with AVX-512): the caller then packs w, viewed as the
/// (C_out, C_in·KH·KW) matrix, once and keeps it while w is unchanged.
pub fn wants_packed_weights(g: &ConvGeom) -> bool {
    let Some((oh, ow)) = g.out_hw() else { return false };
    let min_dim = if g.is_pointwise() && oh * ow < POINTWISE_IN_PLACE_MAX_PIXELS { POINTWISE_IN_PLACE_MIN_DIM } else { PACKED_MIN_DIM };
    g.n == 1
        && g.groups == 1
        && oh * ow < PACKED_MAX_PIXELS
        && g.c_out >= min_dim
        && g.col_rows() >= min_dim
        && crate::packed::available()
        && !depthwise::applies(g)
        && !crate::winograd::applies(g)
}

/// [`conv2d_forward_ep`] with the weights also given packed (`pw`, from w): where
/// [`wants_packed_weights`] holds it runs on cnnkit's own GEMM, elsewhere it ignores `pw`.
pub fn conv2d_forward_packed(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    pw: &crate::packed::PackedA,
    b: Option<&[f32]>,
    ep: Epilogue,
    y: &mut [f32],
) {
    let kr = g.col_rows();
    if !wants_packed_weights(g) || pw.m != g.c_out || pw.k != kr {
        return conv2d_forward_ep(g, x, w, b, ep, y);
    }
    let (oh, ow) = g.oh_ow();
    let p = oh * ow;
    if g.is_pointwise() && p < POINTWISE_IN_PLACE_MAX_PIXELS {
        // B is the image itself, (C_in, P): read in place, not packed.
        return crate::packed::gemm_bias_act_b_in_place(pw, x, p, p, b, ep, y, true);
    }
    let pb_len = crate::packed::packed_b_len(kr, p);
    let cols_len = if g.is_pointwise() { 0 } else { kr * p };
    f32::with_scratch(pb_len + cols_len, |buf| {
        let (pb, cols) = buf.split_at_mut(pb_len);
        // im2col and packing in parallel chunks of input channels (serial, they were ~10% of
        // a 512-channel 7×7 layer on two threads): chunk c owns cols rows and packed-B rows
        // c·KH·KW·per .. and writes nothing else.
        let kk = g.kh * g.kw;
        let per = g.c_in.div_ceil(2 * crate::num_threads()).max(1);
        let pbp = SyncPtr(pb.as_mut_ptr());
        let chunk = |(c, cols): (usize, &mut [f32])| {
            let (c0, cn) = (c * per, per.min(g.c_in - c * per));
            let sub = ConvGeom { c_in: cn, ..*g };
            let rows = cn * kk;
            let colm: &[f32] = if g.is_pointwise() {
                &x[c0 * p..(c0 + cn) * p]
            } else {
                im2col(&sub, &x[c0 * g.h * g.w..(c0 + cn) * g.h * g.w], cols);
                &cols[..rows * p]
            };
            // SAFETY: pb holds packed_b_len(kr, p) floats; this chunk's rows c0·KH·KW ..
            // + rows are written by this chunk only.
            unsafe { crate::packed::pack_b_rows(MatRef::row_major(colm, rows, p), c0 * kk, kr, pbp.get()) };
        };
        if g.is_pointwise() {
            (0..g.c_in.div_ceil(per)).into_par_iter().map(|c| (c, &mut [][..])).for_each(chunk);
        } else {
            cols.par_chunks_mut(per * kk * p).enumerate().for_each(chunk);
        }
        crate::packed::gemm_bias_act(pw, pb, p, b, ep, y, true);
    });
}

/// The forward for small planes: chunks of B images (B·OH·OW ≥ SMALL_PLANE) share one GEMM,
/// out (C_out/G, B·P) = W_g (C_out/G, K) · cols (K, B·P), whose columns are then scattered to
/// the images with bias and activation; chunks run in parallel. (Per-image GEMMs with a 4×4
/// plane ran in the gemm crate's narrow edge kernel: 6.5% of a resnet18 CIFAR step.)
fn forward_batched<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>, ep: Epilogue, y: &mut [T]) {
    let (oh, ow) = g.oh_ow();
    let p = oh * ow;
    let kr = g.col_rows();
    let cog = g.c_out / g.groups;
    let x_img = g.c_in * g.h * g.w;
    let x_grp = (g.c_in / g.groups) * g.h * g.w;
    // Chunks of SMALL_PLANE columns, but at least one per thread when the batch allows.
    let per = SMALL_PLANE.div_ceil(p).min(g.n.div_ceil(crate::num_threads())).max(1);
    y.par_chunks_mut(per * g.c_out * p).enumerate().for_each(|(ci, yc)| {
        let imgs = yc.len() / (g.c_out * p);
        let m = imgs * p;
        T::with_scratch(kr * m + cog * m, |buf| {
            let (cols, out) = buf.split_at_mut(kr * m);
            for grp in 0..g.groups {
                for bi in 0..imgs {
                    let xi = &x[(ci * per + bi) * x_img + grp * x_grp..][..x_grp];
                    im2col_rows_ld(g, xi, 0, oh, &mut cols[bi * p..], m);
                }
                let wg = MatRef::row_major(&w[grp * cog * kr..(grp + 1) * cog * kr], cog, kr);
                gemm(wg, MatRef::row_major(&cols[..kr * m], kr, m), &mut out[..cog * m], false, false);
                crate::simd::with_best_isa(|| {
                    for bi in 0..imgs {
                        for co in 0..cog {
                            let dst = &mut yc[(bi * g.c_out + grp * cog + co) * p..][..p];
                            copy_row(dst, &out[co * m + bi * p..]);
                            ep.apply_bias(dst, b.map_or(T::zero(), |b| b[grp * cog + co]));
                        }
                    }
                });
            }
        });
    });
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A raw output pointer shared by threads that write disjoint blocks of it.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: only used where threads write disjoint parts of the output: `forward_bands`
// column ranges, `packed::gemm_bias_act`'s row panels.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the Sync wrapper, not the raw field).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Cache-blocked forward of one image: bands of output pixels (whole output rows, or any
/// pixel range for 1×1 convolutions), each band's bias, GEMM and activation done while its
/// (C_out, band) block of y is still in L2, and each band's im2col (K, band) kept near L2 size.
/// With `par`, bands run on all threads, each with a single-threaded GEMM (the gemm crate's
/// own splitting wakes its workers per call). Returns false (doing nothing) when the image is
/// too small to split that way: the caller then splits output channels or uses one GEMM.
/// x: (C_in, H, W); w: (C_out, K); y: (C_out, OH, OW).
fn forward_bands<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>, ep: Epilogue, y: &mut [T], par: bool) -> bool {
    let (oh, ow) = g.oh_ow();
    let (p, kr, pointwise) = (oh * ow, g.col_rows(), g.is_pointwise());
    if g.groups != 1 {
        return false;
    }
    // A band is whole output rows (im2col works by rows); a 1×1 band is any pixel range.
    let (unit, units) = if pointwise { (1, p) } else { (ow, oh) };
    // ~512 KiB of cols and output block per band, but at least 128 pixels for the GEMM's sake.
    let per_px = if pointwise { g.c_out } else { kr + g.c_out };
    let mut px = ((1usize << 17) / per_px.max(1)).max(128);
    if pointwise {
        px = px.next_multiple_of(64);
    }
    // Bands of a multiple of 64 pixels where at most halving the band gets one: the gemm
    // crate's microkernel covers 64 pixels, and a remainder runs in a narrower edge kernel.
    let round = |b: usize| {
        if pointwise {
            return b.next_multiple_of(16);
        }
        let rows = 64 / gcd(64, unit);
        if b >= 2 * rows {
            b / rows * rows
        } else {
            b.max(1)
        }
    };
    let mut per_band = round(px.div_ceil(unit));
    let t = crate::num_threads();
    if par && units.div_ceil(per_band) < 2 * t {
        // Too few bands to keep every thread busy: two bands per thread, or one if that leaves
        // under 128 pixels a band; a wide layer on a small image splits channels instead (each
        // band would pack the whole weight matrix for a narrow GEMM).
        per_band = round(units.div_ceil(2 * t));
        if per_band * unit < 128 {
            per_band = round(units.div_ceil(t));
            if g.c_out >= 64 * t || per_band * unit < 64 {
                return false;
            }
        }
    }
    let bands = units.div_ceil(per_band);
    if par && bands < 2 {
        return false;
    }
    let wm = MatRef::row_major(w, g.c_out, kr);
    let yp = SyncPtr(y.as_mut_ptr());
    let run = |bi: usize| {
        let (u0, u1) = (bi * per_band, ((bi + 1) * per_band).min(units));
        let (p0, n) = (u0 * unit, (u1 - u0) * unit);
        // SAFETY: row co of this band is y[co·p + p0 ..][.. n], inside y (p0 + n ≤ p) and
        // written by this band only; the GEMM below writes the same (C_out, n) block.
        let row = |co: usize| unsafe { std::slice::from_raw_parts_mut(yp.get().add(co * p + p0), n) };
        let mul = |cols: MatRef<T>| unsafe { crate::matmul::gemm_raw(wm, cols, yp.get().add(p0), p as isize, 1, false, false) };
        if let (true, Some(w32), Some(x32)) = (crate::pointwise::available(), crate::simd::as_f32(w), crate::simd::as_f32(x)) {
            // f32 with AVX-512: the pointwise kernel (broadcast weights, 64 pixels a tile) with
            // bias and activation before its one store.
            let b32 = b.and_then(crate::simd::as_f32);
            let run = |src: *const f32, ldb: usize| {
                // SAFETY: as for `row` above: rows co of this band, columns p0 .. p0 + n of y
                // (an f32 slice, as w and x are), written by this band only; src holds (K, n)
                // with rows ldb apart.
                unsafe {
                    crate::pointwise::run(&crate::pointwise::Operands {
                        m: g.c_out,
                        n,
                        k: kr,
                        a: w32.as_ptr(),
                        lda: kr,
                        b: src,
                        ldb,
                        bias: b32.map(|b| b.as_ptr()),
                        ep,
                        residual: None,
                        after: Epilogue::None,
                        y: (yp.get() as *mut f32).add(p0),
                        ldy: p,
                    })
                }
            };
            if pointwise {
                run(x32[p0..].as_ptr(), p);
            } else {
                f32::with_scratch(kr * n, |cols| {
                    im2col_rows(g, x32, u0, u1, cols);
                    run(cols.as_ptr(), n);
                });
            }
            return;
        }
        if pointwise {
            mul(MatRef { data: &x[p0..], rows: kr, cols: n, rs: p as isize, cs: 1 });
        } else {
            T::with_scratch(kr * n, |cols| {
                im2col_rows(g, x, u0, u1, cols);
                mul(MatRef::row_major(cols, kr, n));
            });
        }
        // Bias and activation in one pass over the block while it is in cache (a bias written
        // before the GEMM was the pass that first touched the output: ~9% of MobileNet b1).
        if b.is_some() || ep != Epilogue::None {
            crate::simd::with_best_isa(|| (0..g.c_out).for_each(|co| ep.apply_bias(row(co), b.map_or(T::zero(), |b| b[co]))));
        }
    };
    if par {
        (0..bands).into_par_iter().for_each(run);
    } else {
        (0..bands).for_each(run);
    }
    true
}

/// Below this many output pixels per image, the input gradient batches images into one GEMM:
/// per-image products with n = OH·OW of 16 or 64 run in the GEMM's narrow edge kernels
/// (measured: 19% of a resnet18 CIFAR step in `x1x6`).
const SMALL_PLANE: usize = 256;

/// gx = d(conv)/dx · gy. gy: (N, C_out, OH, OW); w as in forward; gx: (N, C_in, H, W) (overwritten).
pub fn conv2d_backward_input<T: Float>(g: &ConvGeom, gy: &[T], w: &[T], gx: &mut [T]) {
    if depthwise::applies(g) {
        return depthwise::backward_input(g, gy, w, gx);
    }
    if crate::winograd::applies(g) {
        return crate::winograd::backward_input(g, gy, w, gx);
    }
    let (oh, ow) = g.oh_ow();
    let p = oh * ow;
    let kr = g.col_rows();
    let cog = g.c_out / g.groups;
    let x_grp = (g.c_in / g.groups) * g.h * g.w;
    if p < SMALL_PLANE && g.n > 1 && !g.is_pointwise() {
        return backward_input_batched(g, gy, w, gx);
    }
    over_batch(g.n, gx, g.c_in * g.h * g.w, |i, gxi, par| {
        gxi.iter_mut().for_each(|v| *v = T::zero());
        T::with_scratch(kr * p, |cols| {
            for grp in 0..g.groups {
                let gyg = &gy[(i * g.c_out + grp * cog) * p..(i * g.c_out + (grp + 1) * cog) * p];
                let wg = MatRef::row_major(&w[grp * cog * kr..(grp + 1) * cog * kr], cog, kr);
                let dst = &mut gxi[grp * x_grp..(grp + 1) * x_grp];
                if g.is_pointwise() {
                    gemm(wg.t(), MatRef::row_major(gyg, cog, p), dst, false, par);
                } else {
                    gemm(wg.t(), MatRef::row_major(gyg, cog, p), cols, false, par);
                    col2im(g, cols, dst);
                }
            }
        });
    });
}

/// The input gradient for small planes: chunks of B images (B·OH·OW ≥ SMALL_PLANE) share one
/// GEMM, cols (K, B·P) = W_gᵀ (K, C_out/G) · gy_chunk (C_out/G, B·P); chunks run in parallel.
fn backward_input_batched<T: Float>(g: &ConvGeom, gy: &[T], w: &[T], gx: &mut [T]) {
    let (oh, ow) = g.oh_ow();
    let p = oh * ow;
    let kr = g.col_rows();
    let cog = g.c_out / g.groups;
    let x_img = g.c_in * g.h * g.w;
    let x_grp = (g.c_in / g.groups) * g.h * g.w;
    // Chunks of SMALL_PLANE columns, but one per thread when the batch allows; a chunk that
    // is the whole batch runs its GEMM on all threads (one 16×512×4×4 chunk had run on one
    // thread: 20 ms where two chunks of 8 take 12).
    let t = crate::num_threads();
    let b = SMALL_PLANE.div_ceil(p).min(g.n.div_ceil(t)).clamp(1, g.n);
    let par = b == g.n;
    gx.par_chunks_mut(b * x_img).enumerate().for_each(|(ci, gxc)| {
        let imgs = gxc.len() / x_img;
        let m = imgs * p;
        gxc.iter_mut().for_each(|v| *v = T::zero());
        T::with_scratch(kr * m + cog * m, |buf| {
            let (cols, gyb) = buf.split_at_mut(kr * m);
            for grp in 0..g.groups {
                for bi in 0..imgs {
                    let i = ci * b + bi;
                    for co in 0..cog {
                        gyb[co * m + bi * p..co * m + (bi + 1) * p].copy_from_slice(&gy[(i * g.c_out + grp * cog + co) * p..][..p]);
                    }
                }
                let wg = MatRef::row_major(&w[grp * cog * kr..(grp + 1) * cog * kr], cog, kr);
                gemm(wg.t(), MatRef::row_major(&gyb[..cog * m], cog, m), &mut cols[..kr * m], false, par);
                for bi in 0..imgs {
                    col2im_ld(g, &cols[bi * p..], m, &mut gxc[bi * x_img + grp * x_grp..bi * x_img + (grp + 1) * x_grp]);
                }
            }
        });
    });
}

/// Most rows the shorter operand of a dot-form weight gradient may have: its K chunk
/// (crate::dot, 512 values a row) is re-read for every 4 rows of the other, so it must stay
/// in L2. Measured (batch 32, two threads, gemm crate → dot form): 1×1 64→64 at 32×32
/// 4.4 → 2.0 ms, 1×1 s2 128→256 at 16×16 1.9 → 1.3 ms; MNIST's 1→32 3×3 (batch 64)
/// 0.41 → 0.22 ms, CIFAR's 3→16 0.80 → 0.54 ms.
const DOT_MAX_ROWS: usize = 128;
/// Fewest pixels per product (K of the dot form) for the dot form: each output's lanes are
/// summed once per product, which short products do not amortise (64→128 3×3 s2 at 32×32,
/// 224 pixels per band: 8.5 → 11.2 ms in dot form).
const DOT_MIN_K: usize = 512;

/// gw = d(conv)/dw · gy, summed over the batch. gw: (C_out, C_in/G, KH, KW) (overwritten).
pub fn conv2d_backward_weight<T: Float>(g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T]) {
    if depthwise::applies(g) {
        return depthwise::backward_weight(g, x, gy, gw);
    }
    if crate::winograd::applies_to_weight_grad(g) {
        return crate::winograd::backward_weight(g, x, gy, gw);
    }
    let (oh, ow) = g.oh_ow();
    let p = oh * ow;
    let kr = g.col_rows();
    let cog = g.c_out / g.groups;
    let x_img = g.c_in * g.h * g.w;
    let x_grp = (g.c_in / g.groups) * g.h * g.w;
    // gw (C_out/G, K) += gy (C_out/G, P) · colsᵀ (P, K), accumulated column-major: with that
    // output layout the gemm crate packs only gy (small) and reads cols in place (measured: a
    // row-major output made it repack all of cols, 42% of this kernel). Work goes in blocks
    // that stay in cache: a band of output rows of one image, or several small images at once.
    const BLOCK: usize = 128 * 1024;
    let rows_per_blk = (BLOCK / (kr * ow).max(1)).clamp(1, oh);
    // Several images per GEMM only for small planes, whose per-image reduction (P) is too
    // short: a first layer's 28×28 image is long enough, and batching it cost a copy of gy
    // (MNIST conv 1→32: fwd+bwd ~15% faster per image). Small planes get at least SMALL_PLANE
    // pixels per GEMM even past BLOCK: with one 4×4 image per call, each call's k is 16 and it
    // reads and writes the whole gw (9 MiB for 512 → 512 channels).
    let imgs_per_blk = if rows_per_blk == oh && p < SMALL_PLANE { (BLOCK / (kr * p).max(1)).max(SMALL_PLANE / p).clamp(1, 16) } else { 1 };
    let pb = rows_per_blk * ow * imgs_per_blk;
    let scratch = pb * kr + cog * pb;
    // The products in dot form (crate::dot) where it has its own kernel and one operand is
    // short: gw (C_out/G, K) += gy (C_out/G, P) · cols (K, P)ᵀ, both operands read along P in
    // place. The operand with fewer rows goes second (the one re-read for every 4 rows of the
    // other), so that its chunk stays in L2; with gy second, the output is gwᵀ.
    let dot = crate::dot::available() && crate::simd::as_f32(x).is_some() && cog.min(kr) <= DOT_MAX_ROWS && pb >= DOT_MIN_K;
    let dot_t = cog < kr;
    if !dot && g.groups == 1 && p < SMALL_PLANE && g.n > 1 && kr * cog >= SMALL_PLANE_MIN_GW {
        return backward_weight_small_planes(g, x, gy, gw);
    }
    // Accumulates images `imgs` into acc: per group (C_out/G, K) row-major with `dot` and not
    // `dot_t`, else column-major ((K, C_out/G) row-major).
    let run = |imgs: &[usize], acc: &mut [T], buf: &mut [T], par: bool| {
        let (cols, rest) = buf.split_at_mut(pb * kr);
        let gyb = &mut rest[..cog * pb];
        for chunk in imgs.chunks(imgs_per_blk) {
            for grp in 0..g.groups {
                let dst = &mut acc[grp * cog * kr..(grp + 1) * cog * kr];
                for oy0 in (0..oh).step_by(rows_per_blk) {
                    let oy1 = (oy0 + rows_per_blk).min(oh);
                    let n = (oy1 - oy0) * ow;
                    let m = n * chunk.len();
                    // colsᵀ (m, K): image b's pixels in rows b·n .. (b+1)·n. A 1×1 stride-1
                    // unpadded conv of one image reads the image itself (C_in, P) in place.
                    let cm = if g.is_pointwise() && chunk.len() == 1 {
                        let i = chunk[0];
                        let xg = &x[i * x_img + grp * x_grp + oy0 * ow..];
                        MatRef { data: xg, rows: n, cols: kr, rs: 1, cs: p as isize }
                    } else {
                        for (b, &i) in chunk.iter().enumerate() {
                            let xg = &x[i * x_img + grp * x_grp..i * x_img + (grp + 1) * x_grp];
                            // Straight into its columns of the batched matrix (row stride m).
                            im2col_rows_ld(g, xg, oy0, oy1, &mut cols[b * n..kr * m], m);
                        }
                        MatRef { data: &cols[..kr * m], rows: m, cols: kr, rs: 1, cs: m as isize }
                    };
                    // gy's rows for these pixels (C_out/G, m): in place for one image, else
                    // copied side by side.
                    let gyv = if chunk.len() == 1 {
                        let i = chunk[0];
                        MatRef { data: &gy[(i * g.c_out + grp * cog) * p + oy0 * ow..], rows: cog, cols: n, rs: p as isize, cs: 1 }
                    } else {
                        for (b, &i) in chunk.iter().enumerate() {
                            for co in 0..cog {
                                let src = &gy[(i * g.c_out + grp * cog + co) * p..][..n];
                                gyb[co * m + b * n..co * m + (b + 1) * n].copy_from_slice(src);
                            }
                        }
                        MatRef::row_major(&gyb[..cog * m], cog, m)
                    };
                    if dot {
                        // Both operands by their rows along the pixels: gy's (stride rs) and
                        // cols' (the columns of cm, stride cs).
                        let (ga, lda, xb, ldb) = (gyv.data, gyv.rs as usize, cm.data, cm.cs as usize);
                        if dot_t {
                            crate::dot::gemm_nt(kr, cog, m, xb, ldb, ga, lda, dst, cog, true, par);
                        } else {
                            crate::dot::gemm_nt(cog, kr, m, ga, lda, xb, ldb, dst, kr, true, par);
                        }
                    } else {
                        gemm_strided(gyv, cm, dst, 1, cog as isize, true, par);
                    }
                }
            }
        }
    };
    let mut acc = vec![T::zero(); gw.len()];
    if batch_parallel(g.n) {
        // Each thread accumulates a private gradient over its share of images, then they are summed.
        let t = crate::num_threads().min(g.n);
        let partials: Vec<Vec<T>> = (0..t)
            .into_par_iter()
            .map(|tid| {
                let mut part = vec![T::zero(); gw.len()];
                let imgs: Vec<usize> = (tid..g.n).step_by(t).collect();
                T::with_scratch(scratch, |buf| run(&imgs, &mut part, buf, false));
                part
            })
            .collect();
        for part in partials {
            acc.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
    } else {
        let imgs: Vec<usize> = (0..g.n).collect();
        T::with_scratch(scratch, |buf| run(&imgs, &mut acc, buf, true));
    }
    if dot && !dot_t {
        gw.copy_from_slice(&acc);
        return;
    }
    // Column-major (K, C_out/G) per group → row-major (C_out/G, K).
    for grp in 0..g.groups {
        let r = grp * cog * kr..(grp + 1) * cog * kr;
        transpose(&acc[r.clone()], kr, cog, &mut gw[r]);
    }
}

/// Fewest weights for [`backward_weight_small_planes`]: below this the per-thread partial
/// sums it avoids are cheap, and its products (K = C_in·KH·KW rows split, N·P deep) run
/// slower than per-image-chunk ones (128→256 3×3 s2 at 16×16, 0.3 M weights: 7.8 → 9.1 ms;
/// 1×1 s2 256→512: 1.5 → 2.4 ms). 512→512 3×3 at 4×4 (2.4 M): 19.2 → 16.5 ms at batch 32.
const SMALL_PLANE_MIN_GW: usize = 1 << 20;

/// Columns (images × pixels) per product of [`backward_weight_small_planes`]: 4608 rows of
/// a 512-channel 3×3 layer's cols at 1024 columns are 18 MiB, within L3 for two threads.
const SMALL_PLANE_COLS: usize = 1024;

/// The weight gradient of small planes, one group: gwᵀ (K, C_out) = cols (K, N·P) ·
/// gy_b (C_out, N·P)ᵀ with the rows of K (input channels) split over the threads, so every
/// thread writes its own rows of one result and reads one shared copy of gy_b. Splitting the
/// images instead gives every thread a gw-sized partial sum to allocate, fill and add:
/// 32×512×4×4 (3×3) took 19–22 ms that way, against 13 for the forward.
fn backward_weight_small_planes<T: Float>(g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T]) {
    let (oh, ow) = g.oh_ow();
    let (p, khw, hw) = (oh * ow, g.kh * g.kw, g.h * g.w);
    let (kr, co, mall) = (g.col_rows(), g.c_out, g.n * oh * ow);
    let imgs = (SMALL_PLANE_COLS / p).clamp(1, g.n);
    let per_task = g.c_in.div_ceil(crate::num_threads().max(1));
    let mut acc = vec![T::zero(); kr * co];
    // gy_b (C_out, N·P): image i's pixels of channel c in row c, columns i·P .. (i+1)·P. In
    // the second per-thread buffer: the tasks below, some on this thread, use the first.
    T::with_aux_scratch(co * mall, |gyb| {
        gyb.par_chunks_mut(mall).enumerate().for_each(|(c, row)| {
            for (i, dst) in row.chunks_exact_mut(p).enumerate() {
                dst.copy_from_slice(&gy[(i * co + c) * p..][..p]);
            }
        });
        let gyb = &*gyb;
        acc.par_chunks_mut(per_task * khw * co).enumerate().for_each(|(t, part)| {
            let (c0, nc) = (t * per_task, part.len() / (khw * co));
            let gs = ConvGeom { c_in: nc, groups: 1, ..*g };
            let rows = nc * khw;
            T::with_scratch(rows * imgs * p, |cols| {
                for i0 in (0..g.n).step_by(imgs) {
                    let i1 = (i0 + imgs).min(g.n);
                    let m = (i1 - i0) * p;
                    for i in i0..i1 {
                        let xs = &x[i * g.c_in * hw + c0 * hw..][..nc * hw];
                        im2col_rows_ld(&gs, xs, 0, oh, &mut cols[(i - i0) * p..rows * m], m);
                    }
                    let b = MatRef { data: &gyb[i0 * p..], rows: m, cols: co, rs: 1, cs: mall as isize };
                    gemm(MatRef::row_major(&cols[..rows * m], rows, m), b, part, i0 > 0, false);
                }
            });
        });
    });
    transpose(&acc, kr, co, gw);
}

/// dst (cols, rows) = src (rows, cols)ᵀ, in tiles: each tile's source rows stay in L1
/// while its destination rows are written contiguously.
pub fn transpose<T: Float>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        let r1 = (r0 + B).min(rows);
        for c in 0..cols {
            let drow = &mut dst[c * rows + r0..c * rows + r1];
            for (k, d) in drow.iter_mut().enumerate() {
                *d = src[(r0 + k) * cols + c];
            }
        }
    }
}

/// gb = Σ over N, OH, OW of gy. gy: (N, C_out, OH, OW); gb: (C_out) (overwritten).
pub fn conv2d_backward_bias<T: Float>(g: &ConvGeom, gy: &[T], gb: &mut [T]) {
    let (oh, ow) = g.oh_ow();
    // One vectorised, parallel sum per (image, channel) plane, then a sum over images.
    let sums = crate::simd::row_sums(&gy[..g.n * g.c_out * oh * ow], oh * ow);
    for (co, b) in gb.iter_mut().enumerate() {
        *b = T::from_f64((0..g.n).map(|i| sums[i * g.c_out + co]).sum()).unwrap_or(T::zero());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    use crate::reference::rand_vec;

    fn geom_strategy() -> impl Strategy<Value = ConvGeom> {
        // Input channels per group up to 8: K = C_in/G·KH·KW from 1 to 72.
        (
            1usize..4,
            prop_oneof![1usize..4, 5usize..9],
            1usize..6,
            1usize..3,
            3usize..10,
            3usize..10,
            1usize..4,
            1usize..4,
            1usize..3,
            0usize..3,
            1usize..3,
        )
            .prop_map(|(n, cpg, copg, groups, h, w, kh, kw, s, p, d)| ConvGeom {
                n,
                c_in: cpg * groups,
                h,
                w,
                c_out: copg * groups,
                kh,
                kw,
                stride: (s, if w % 2 == 0 { 1 } else { s }),
                padding: (p, p.min(1)),
                dilation: (d, 1),
                groups,
            })
            .prop_filter("kernel must fit", |g| g.out_hw().is_some())
    }

    /// Large enough that the weight gradient works in bands of output rows (one image at a time).
    #[test]
    fn banded_weight_gradient_matches_naive() {
        let g =
            ConvGeom { n: 3, c_in: 64, h: 21, w: 40, c_out: 5, kh: 3, kw: 3, stride: (1, 2), padding: (1, 1), dilation: (1, 1), groups: 1 };
        let mut s = 5;
        let (oh, ow) = g.out_hw().unwrap();
        let x = rand_vec(g.n * g.c_in * g.h * g.w, &mut s);
        let w = rand_vec(g.c_out * g.col_rows(), &mut s);
        let gy = rand_vec(g.n * g.c_out * oh * ow, &mut s);
        let (_, gw_want) = reference::conv2d_backward_naive(&g, &x, &w, &gy);
        let mut gw = vec![0.0; w.len()];
        conv2d_backward_weight(&g, &x, &gy, &mut gw);
        for (a, e) in gw.iter().zip(&gw_want) {
            assert!((a - e).abs() < 1e-9, "gw {a} vs {e}");
        }
    }

    #[test]
    fn channel_split_forward_matches_naive() {
        // One small image with many output channels: the GEMM is split over output channels
        // (uneven chunks) when there is more than one thread.
        for (n, c_out) in [(1, 200), (1, 130), (3, 128)] {
            let g = ConvGeom { n, c_in: 5, h: 9, w: 8, c_out, kh: 3, kw: 3, stride: (2, 1), padding: (1, 1), dilation: (1, 1), groups: 1 };
            let mut sd = 4;
            let x = rand_vec(g.n * g.c_in * g.h * g.w, &mut sd);
            let w = rand_vec(g.c_out * g.col_rows(), &mut sd);
            let b = rand_vec(g.c_out, &mut sd);
            let want = reference::conv2d_naive(&g, &x, &w, Some(&b));
            let mut y = vec![f64::NAN; want.len()];
            conv2d_forward(&g, &x, &w, Some(&b), &mut y);
            for (a, e) in y.iter().zip(&want) {
                assert!((a - e).abs() < 1e-9, "{a} vs {e}");
            }
        }
    }

    #[test]
    fn banded_forward_matches_naive() {
        // One image split into bands of output pixels: whole rows for a ResNet-like stem and
        // strided 3×3s, any pixel range (not a multiple of the rounding) for 1×1s; serial and
        // parallel bands; with and without bias and a fused activation.
        let cases = [(3, 96, 7, 2, 3, 6), (4, 80, 3, 1, 1, 6), (2, 200, 5, 2, 2, 6), (24, 57, 1, 1, 0, 40), (300, 30, 1, 1, 0, 20)];
        for (ci, &(c_in, hw, k, s, pad, c_out)) in cases.iter().enumerate() {
            let g = ConvGeom {
                n: 1,
                c_in,
                h: hw,
                w: hw + 3,
                c_out,
                kh: k,
                kw: k,
                stride: (s, s),
                padding: (pad, pad),
                dilation: (1, 1),
                groups: 1,
            };
            let mut sd = 9 + ci as u64;
            let x = rand_vec(g.c_in * g.h * g.w, &mut sd);
            let w = rand_vec(g.c_out * g.col_rows(), &mut sd);
            let b = rand_vec(g.c_out, &mut sd);
            for (bias, ep, par) in [(true, Epilogue::None, true), (false, Epilogue::Relu, true), (true, Epilogue::Clamp(-0.5, 0.5), false)]
            {
                let b = bias.then_some(&b[..]);
                let mut want = reference::conv2d_naive(&g, &x, &w, b);
                ep.apply(&mut want);
                let mut y = vec![f64::NAN; want.len()];
                assert!(forward_bands(&g, &x, &w, b, ep, &mut y, par), "{g:?} would not take the banded path");
                assert!(reference::max_abs_diff(&y, &want) < 1e-9, "{g:?} {ep:?} par {par}");
            }
        }
    }

    /// The small-plane weight gradient (input channels split over the threads, images in
    /// chunks of SMALL_PLANE_COLS columns) on shapes smaller than its dispatch rule's: odd
    /// channel counts, several chunks, stride 2 and 1×1.
    #[test]
    fn small_plane_weight_gradient_matches_naive() {
        for (n, c_in, c_out, hw, k, st) in
            [(5usize, 7usize, 9usize, 15usize, 3usize, 1usize), (70, 3, 4, 4, 3, 1), (9, 5, 6, 9, 3, 2), (33, 11, 3, 5, 1, 1)]
        {
            let p = k / 2;
            let g = ConvGeom { n, c_in, h: hw, w: hw, c_out, kh: k, kw: k, stride: (st, st), padding: (p, p), dilation: (1, 1), groups: 1 };
            let (oh, ow) = g.out_hw().unwrap();
            assert!(oh * ow < SMALL_PLANE);
            let mut s = 3 + n as u64;
            let (x, w, gy) =
                (rand_vec(n * c_in * hw * hw, &mut s), rand_vec(c_out * g.col_rows(), &mut s), rand_vec(n * c_out * oh * ow, &mut s));
            let (_, want) = reference::conv2d_backward_naive(&g, &x, &w, &gy);
            let mut gw = vec![f64::NAN; want.len()];
            backward_weight_small_planes(&g, &x, &gy, &mut gw);
            let err = reference::max_abs_diff(&gw, &want);
            assert!(err < 1e-9, "{g:?}: {err}");
        }
    }

    /// The 1×1 weight gradient that reads the image in place (one image per block, including
    /// blocks of output rows that start past row 0) matches the naive gradient.
    #[test]
    fn pointwise_weight_gradient_in_place() {
        for (n, h) in [(1usize, 24usize), (2, 48)] {
            let g = ConvGeom { n, c_in: 96, h, w: h, c_out: 8, kh: 1, kw: 1, stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 };
            let mut s = 5 + n as u64;
            let (x, w, gy) = (rand_vec(n * 96 * h * h, &mut s), rand_vec(8 * 96, &mut s), rand_vec(n * 8 * h * h, &mut s));
            let (_, want) = crate::reference::conv2d_backward_naive(&g, &x, &w, &gy);
            let mut gw = vec![f64::NAN; want.len()];
            conv2d_backward_weight(&g, &x, &gy, &mut gw);
            let err = crate::reference::max_abs_diff(&gw, &want);
            assert!(err < 1e-9, "n {n} h {h}: {err}");
        }
    }

    /// The fused epilogue equals the plain forward followed by the activation, on every
    /// forward path: depthwise, Winograd, im2col + GEMM (split over output channels or not)
    /// and the banded single-image path.
    #[test]
    fn epilogue_matches_separate_activation() {
        let geoms = [
            ConvGeom { n: 2, c_in: 8, h: 13, w: 11, c_out: 8, kh: 3, kw: 3, stride: (1, 1), padding: (1, 1), dilation: (1, 1), groups: 8 },
            ConvGeom {
                n: 2,
                c_in: 16,
                h: 20,
                w: 20,
                c_out: 16,
                kh: 3,
                kw: 3,
                stride: (1, 1),
                padding: (1, 1),
                dilation: (1, 1),
                groups: 1,
            },
            ConvGeom { n: 1, c_in: 4, h: 9, w: 9, c_out: 256, kh: 3, kw: 3, stride: (2, 2), padding: (1, 1), dilation: (1, 1), groups: 1 },
            ConvGeom { n: 3, c_in: 6, h: 7, w: 7, c_out: 5, kh: 1, kw: 1, stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 },
            ConvGeom {
                n: 1,
                c_in: 3,
                h: 112,
                w: 112,
                c_out: 8,
                kh: 7,
                kw: 7,
                stride: (2, 2),
                padding: (3, 3),
                dilation: (1, 1),
                groups: 1,
            },
        ];
        for (gi, g) in geoms.iter().enumerate() {
            let (oh, ow) = g.out_hw().unwrap();
            let mut s = 17 + gi as u64;
            // Values in [−4, 4): activations both below 0 and above the clip's 6.
            let rnd = |n: usize, s: &mut u64| -> Vec<f32> { rand_vec(n, s).iter().map(|&v| (v * 8.0) as f32).collect() };
            let x = rnd(g.n * g.c_in * g.h * g.w, &mut s);
            let w = rnd(g.c_out * (g.c_in / g.groups) * g.kh * g.kw, &mut s);
            let b = rnd(g.c_out, &mut s);
            let mut plain = vec![0f32; g.n * g.c_out * oh * ow];
            conv2d_forward(g, &x, &w, Some(&b), &mut plain);
            for ep in [Epilogue::Relu, Epilogue::Clamp(-1.0, 6.0)] {
                let mut want = plain.clone();
                ep.apply(&mut want);
                let mut got = vec![f32::NAN; want.len()];
                conv2d_forward_ep(g, &x, &w, Some(&b), ep, &mut got);
                assert_eq!(got, want, "{g:?} {ep:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The packed-weight forward (inference on small planes) against the naive twin, on
        /// geometries where it applies: C_out and K from 256 (C_out past whole 32-row panels),
        /// planes of 1 to 100 pixels (past whole 14-pixel panels), strides, padding, 1×1 and
        /// 3×3, bias and each epilogue.
        #[test]
        fn packed_forward_matches_naive(c_out in 256usize..300, cin3 in 29usize..40, cin1 in 256usize..290, pointwise: bool, hw in 1usize..11, s in 1usize..3, act in 0usize..3, seed in 0u64..10_000) {
            let (k, p) = if pointwise { (1, 0) } else { (3, 1) };
            let g = ConvGeom { n: 1, c_in: if pointwise { cin1 } else { cin3 }, h: hw, w: hw, c_out, kh: k, kw: k, stride: (s, s), padding: (p, p), dilation: (1, 1), groups: 1 };
            if !crate::packed::available() {
                return Ok(());
            }
            prop_assert!(wants_packed_weights(&g), "{g:?}");
            let mut sd = seed;
            let x = rand_vec(g.c_in * hw * hw, &mut sd);
            let w = rand_vec(c_out * g.col_rows(), &mut sd);
            let b = rand_vec(c_out, &mut sd);
            let ep = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(-0.2, 0.3)][act];
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (xf, wf, bf) = (f(&x), f(&w), f(&b));
            let pw = crate::packed::PackedA::new(MatRef::row_major(&wf, c_out, g.col_rows()));
            let (oh, ow) = g.oh_ow();
            let mut y = vec![f32::NAN; c_out * oh * ow];
            conv2d_forward_packed(&g, &xf, &wf, &pw, Some(&bf), ep, &mut y);
            let mut want = reference::conv2d_naive(&g, &x, &w, Some(&b));
            ep.apply(&mut want);
            prop_assert!(reference::max_abs_diff(&y, &want) < 1e-4, "{g:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// The f32 1×1 forward on the pointwise kernel (per-image tiles split over the threads,
        /// or images split) against the naive twin in f64, with bias and each activation.
        #[test]
        fn f32_pointwise_forward_matches_naive(n in 1usize..4, c_in in 1usize..40, c_out in 1usize..40, h in 1usize..30, w in 1usize..30, act in 0usize..3, seed in 0u64..10_000) {
            let g = ConvGeom::pointwise(n, c_in, c_out, h, w);
            let mut sd = seed;
            let (x, wt, b) = (rand_vec(n * c_in * h * w, &mut sd), rand_vec(c_out * c_in, &mut sd), rand_vec(c_out, &mut sd));
            let ep = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(-0.2, 0.3)][act];
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let mut y = vec![f32::NAN; n * c_out * h * w];
            conv2d_forward_ep(&g, &f(&x), &f(&wt), Some(&f(&b)), ep, &mut y);
            let mut want = reference::conv2d_naive(&g, &x, &wt, Some(&b));
            ep.apply(&mut want);
            prop_assert!(reference::max_abs_diff(&y, &want) < 1e-5, "{g:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(60))]
        #[test]
        fn conv_kernels_match_naive(g in geom_strategy(), seed in 0u64..10_000) {
            let mut s = seed;
            let (oh, ow) = g.out_hw().unwrap();
            let x = rand_vec(g.n * g.c_in * g.h * g.w, &mut s);
            let w = rand_vec(g.c_out * g.col_rows(), &mut s);
            let b = rand_vec(g.c_out, &mut s);
            let gy = rand_vec(g.n * g.c_out * oh * ow, &mut s);
            let mut y = vec![0.0; gy.len()];
            conv2d_forward(&g, &x, &w, Some(&b), &mut y);
            let want = reference::conv2d_naive(&g, &x, &w, Some(&b));
            for (a, e) in y.iter().zip(&want) { prop_assert!((a - e).abs() < 1e-9, "fwd {a} vs {e}"); }
            let mut want_act = want.clone();
            Epilogue::Clamp(-0.25, 0.5).apply(&mut want_act);
            conv2d_forward_ep(&g, &x, &w, Some(&b), Epilogue::Clamp(-0.25, 0.5), &mut y);
            prop_assert!(reference::max_abs_diff(&y, &want_act) < 1e-9, "fused activation");
            let (gx_want, gw_want) = reference::conv2d_backward_naive(&g, &x, &w, &gy);
            let mut gx = vec![7.0; x.len()];
            conv2d_backward_input(&g, &gy, &w, &mut gx);
            for (a, e) in gx.iter().zip(&gx_want) { prop_assert!((a - e).abs() < 1e-9, "gx {a} vs {e}"); }
            let mut gw = vec![7.0; w.len()];
            conv2d_backward_weight(&g, &x, &gy, &mut gw);
            for (a, e) in gw.iter().zip(&gw_want) { prop_assert!((a - e).abs() < 1e-9, "gw {a} vs {e}"); }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// f32 backward passes on shapes that take the fast paths the f64 tests above miss:
        /// the dot-form weight gradient (crate::dot: few input channels or a 1×1, 512+ pixels
        /// per product, either operand second, one image per product or several small ones)
        /// and the input gradient of small planes batched into chunks (one chunk for the whole
        /// batch included), against the naive twin in f64.
        #[test]
        fn f32_backward_matches_naive(n in 1usize..18, c_in in 1usize..9, c_out in 1usize..40, hw in 4usize..34, pointwise: bool, wide in 0usize..2, seed in 0u64..10_000) {
            let (k, p) = if pointwise { (1, 0) } else { (3, 1) };
            let c_in = if pointwise && wide == 1 { c_in * 16 } else { c_in };
            let g = ConvGeom { n, c_in, h: hw, w: hw, c_out, kh: k, kw: k, stride: (1, 1), padding: (p, p), dilation: (1, 1), groups: 1 };
            let (oh, ow) = g.oh_ow();
            let mut sd = seed;
            let x = rand_vec(n * c_in * hw * hw, &mut sd);
            let w = rand_vec(c_out * g.col_rows(), &mut sd);
            let gy = rand_vec(n * c_out * oh * ow, &mut sd);
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (xf, wf, gyf) = (f(&x), f(&w), f(&gy));
            let (gx_want, gw_want) = reference::conv2d_backward_naive(&g, &x, &w, &gy);
            let mut gw = vec![f32::NAN; w.len()];
            conv2d_backward_weight(&g, &xf, &gyf, &mut gw);
            // Sums of up to 18·33² products of values in [−0.5, 0.5).
            prop_assert!(reference::max_abs_diff(&gw, &gw_want) < 2e-3, "gw {g:?}");
            let mut gx = vec![f32::NAN; x.len()];
            conv2d_backward_input(&g, &gyf, &wf, &mut gx);
            prop_assert!(reference::max_abs_diff(&gx, &gx_want) < 1e-4, "gx {g:?}");
        }
    }
}
