//! A 1×1 convolution of NCHW planes with few input channels (AVX-512):
//!
//!   y (M, N) = after(ep(A (M, K) · B (K, N) + bias) + residual)
//!
//! vectorised along the pixels (N), with B (the input planes) and y read and written where they
//! lie, rows `ldb` and `ldy` apart. The microkernel holds a tile of [`MT`] output channels ×
//! 64 pixels in 24 zmm registers; per input channel it loads four vectors of B and broadcasts
//! MT weights into 4·MT FMAs, and it adds bias, activations and residual before the tile's only
//! store. MobileNetV2's expansion layers have K = 16–32: the `gemm` crate packed both operands
//! on every call and its output took a second pass for bias and activation, 66 GFLOP/s per
//! thread on the 16→96 layer at 112×112 (this kernel: see BENCHMARKS.md).

use crate::conv::Epilogue;

/// Output channels per tile: 6 × 4 accumulators, 4 B vectors and a broadcast fit 32 registers.
pub const MT: usize = 6;
/// Pixels per tile: four 16-lane vectors.
pub const NT: usize = 64;

/// True when the kernel can run (AVX-512F).
pub fn available() -> bool {
    crate::packed::available()
}

/// The operands of one product. Element (m, k) of A is `a[m·lda + k]` (row-major weights; lda
/// is K for a whole weight matrix, more for a range of its columns), (k, j) of B is
/// `b[k·ldb + j]`, (m, j) of y `y[m·ldy + j]` and of the residual `r[m·ldr + j]`.
#[derive(Clone, Copy)]
pub struct Operands {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub bias: Option<*const f32>,
    pub ep: Epilogue,
    /// The residual and its row stride, added after `ep`, before `after`.
    pub residual: Option<(*const f32, usize)>,
    pub after: Epilogue,
    pub y: *mut f32,
    pub ldy: usize,
}

// SAFETY: the pointers are only dereferenced under the contracts of `run` and `run_par`, whose
// tasks read the shared operands and write disjoint tiles of y.
unsafe impl Send for Operands {}
unsafe impl Sync for Operands {}

/// Runs the product on all threads: output channels split into one range of whole tiles per
/// thread when there are enough of them (each thread writes whole rows of y and reads all of
/// B, which a 1×1 layer's planes keep in L2), else pixel ranges of whole tiles.
///
/// # Safety
/// As [`run`].
pub unsafe fn run_par(o: &Operands) {
    use rayon::prelude::*;
    let t = crate::num_threads();
    let (rows, cols) = (o.m.div_ceil(MT), o.n.div_ceil(NT));
    let by_rows = rows >= 2 * t || cols < t;
    let units = if by_rows { rows } else { cols };
    let per = units.div_ceil(t).max(1);
    let task = |i: usize| {
        let (u0, u1) = (i * per, ((i + 1) * per).min(units));
        let ((m0, m1), (j0, j1)) =
            if by_rows { ((u0 * MT, (u1 * MT).min(o.m)), (0, o.n)) } else { ((0, o.m), (u0 * NT, (u1 * NT).min(o.n))) };
        let sub = Operands {
            m: m1 - m0,
            n: j1 - j0,
            a: o.a.add(m0 * o.lda),
            b: o.b.add(j0),
            bias: o.bias.map(|b| b.add(m0)),
            residual: o.residual.map(|(r, ld)| (r.add(m0 * ld + j0), ld)),
            y: o.y.add(m0 * o.ldy + j0),
            ..*o
        };
        // SAFETY: rows m0 .. m1 × columns j0 .. j1 of the caller's product, written by this
        // task only.
        unsafe { run(&sub) };
    };
    let tasks = units.div_ceil(per);
    if t > 1 && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Runs the product on the calling thread.
///
/// # Safety
/// [`available`]; every element the [`Operands`] name is valid (y's for writing, and not
/// accessed by anyone else during the call); k > 0.
pub unsafe fn run(o: &Operands) {
    for j0 in (0..o.n).step_by(NT) {
        let w = NT.min(o.n - j0);
        for m0 in (0..o.m).step_by(MT) {
            let rows = MT.min(o.m - m0);
            // First pass over the pixels: fetch the next tile's weight rows while this runs.
            let pf = if j0 == 0 && m0 + MT < o.m { o.a.wrapping_add((m0 + MT) * o.lda) } else { std::ptr::null() };
            // Full tiles unmasked; a narrower one runs only the vectors it covers (a 14×14
            // plane's last 4 pixels: one vector, not four).
            match (rows, w.div_ceil(16), w == NT) {
                (6, 4, true) => tile::<6, 4, false>(o, m0, j0, w, pf),
                (6, 4, false) => tile::<6, 4, true>(o, m0, j0, w, pf),
                (6, 3, _) => tile::<6, 3, true>(o, m0, j0, w, pf),
                (6, 2, _) => tile::<6, 2, true>(o, m0, j0, w, pf),
                (6, _, _) => tile::<6, 1, true>(o, m0, j0, w, pf),
                (5, _, _) => tile::<5, 4, true>(o, m0, j0, w, pf),
                (4, _, _) => tile::<4, 4, true>(o, m0, j0, w, pf),
                (3, _, _) => tile::<3, 4, true>(o, m0, j0, w, pf),
                (2, _, _) => tile::<2, 4, true>(o, m0, j0, w, pf),
                _ => tile::<1, 4, true>(o, m0, j0, w, pf),
            }
        }
    }
}

/// One tile: output channels m0 .. m0 + R, pixels j0 .. j0 + w (w ≤ 16·V; `MASKED` when the
/// tile may be narrower than 16·V, so loads and stores are masked to w).
///
/// # Safety
/// As [`run`], for this tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const V: usize, const MASKED: bool>(o: &Operands, m0: usize, j0: usize, w: usize, pf: *const f32) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; V] = std::array::from_fn(|v| if MASKED { crate::simd::lane_mask((16 * v) as isize, w) } else { 0xffff });
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let bp = o.b.add(j0);
    for kk in 0..o.k {
        if kk % 16 == 0 && !pf.is_null() {
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(r * o.lda + kk) as *const i8);
            }
        }
        let row = bp.add(kk * o.ldb);
        // SAFETY (loads): masked-off lanes are not read; the others lie in B's row kk.
        let bv: [__m512; V] =
            std::array::from_fn(
                |v| if MASKED { _mm512_maskz_loadu_ps(masks[v], row.add(16 * v)) } else { _mm512_loadu_ps(row.add(16 * v)) },
            );
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*o.a.add((m0 + r) * o.lda + kk));
            for v in 0..V {
                acc[v] = _mm512_fmadd_ps(av, bv[v], acc[v]);
            }
        }
    }
    let (lo, hi) = o.ep.bounds::<f32>();
    let (alo, ahi) = o.after.bounds::<f32>();
    let (vlo, vhi, valo, vahi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi), _mm512_set1_ps(alo), _mm512_set1_ps(ahi));
    for (r, acc) in acc.iter().enumerate() {
        let m = m0 + r;
        let vb = _mm512_set1_ps(o.bias.map_or(0.0, |b| *b.add(m)));
        let out = o.y.add(m * o.ldy + j0);
        for v in 0..V {
            let mut t = _mm512_add_ps(acc[v], vb);
            if o.ep != Epilogue::None {
                t = crate::simd::clamp_ps(t, vlo, vhi);
            }
            if let Some((res, ldr)) = o.residual {
                let rp = res.add(m * ldr + j0 + 16 * v);
                t = _mm512_add_ps(t, if MASKED { _mm512_maskz_loadu_ps(masks[v], rp) } else { _mm512_loadu_ps(rp) });
                if o.after != Epilogue::None {
                    t = crate::simd::clamp_ps(t, valo, vahi);
                }
            }
            if MASKED {
                _mm512_mask_storeu_ps(out.add(16 * v), masks[v], t);
            } else {
                _mm512_storeu_ps(out.add(16 * v), t);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const R: usize, const V: usize, const MASKED: bool>(_: &Operands, _: usize, _: usize, _: usize, _: *const f32) {
    unreachable!("pointwise::available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a naive f64 product: every tile height, full and masked widths, strided B
        /// and y, bias, both activations and the residual.
        #[test]
        fn matches_naive(m in 1usize..20, n in 1usize..150, k in 1usize..40, pad in 0usize..20, apad in 0usize..3, acts in 0usize..9, res in any::<bool>(), seed in 0u64..1000) {
            prop_assume!(available());
            let mut s = seed;
            let mut r = |len: usize| -> Vec<f32> {
                (0..len).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0 }).collect()
            };
            let (ldb, ldy) = (n + pad, n + 2 * pad);
            let lda = k + apad;
            let (a, b, bias, rv) = (r(m * lda), r(k * ldb), r(m), r(m * ldy));
            let eps = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(0.0, 6.0)];
            let (ep, after) = (eps[acts % 3], eps[acts / 3]);
            let mut y = vec![f32::NAN; m * ldy];
            let o = Operands {
                m, n, k, a: a.as_ptr(), lda, b: b.as_ptr(), ldb, bias: Some(bias.as_ptr()), ep,
                residual: res.then_some((rv.as_ptr(), ldy)), after, y: y.as_mut_ptr(), ldy,
            };
            // SAFETY: AVX-512F checked; the buffers hold every element the operands name.
            unsafe { run(&o) };
            let clamp = |e: Epilogue, v: f64| { let (l, h) = e.bounds::<f64>(); v.max(l).min(h) };
            for i in 0..m {
                for j in 0..ldy {
                    let got = y[i * ldy + j];
                    if j >= n {
                        prop_assert!(got.is_nan(), "wrote past the row at ({i}, {j})");
                        continue;
                    }
                    let mut want = bias[i] as f64 + (0..k).map(|kk| a[i * lda + kk] as f64 * b[kk * ldb + j] as f64).sum::<f64>();
                    want = clamp(ep, want);
                    if res {
                        want = clamp(after, want + rv[i * ldy + j] as f64);
                    }
                    prop_assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "({i}, {j}): {got} vs {want}");
                }
            }
        }
    }
}
