//! C (M, N) (+)= A (M, K) · B (N, K)ᵀ for operands whose rows run along K: the shape of a
//! convolution's weight gradient, where K is the pixels (or Winograd tiles) summed over and
//! the output is small.
//!
//! Example: the first layer of the seed's CIFAR network, gw (16, 27) = gy (16, 1024) ·
//! cols (27, 1024)ᵀ per image. A general GEMM vectorises along an output dimension, here 16
//! or 27 long, and packs both operands for each short product; it ran that layer's weight
//! gradient at 42–50 GFLOP/s on two threads. Here each output is a dot product vectorised
//! along K, which both operands already hold contiguously: nothing is packed.
//!
//! The AVX-512 kernel keeps a 4 × 4 block of C as 16 vector accumulators. Per 16 values of K
//! it makes 8 loads (4 rows of A, 4 of B) and 16 FMAs, and sums each accumulator's lanes
//! once at the end. K runs in chunks of [`KC`], so the 4 + 4 rows a block reads stay in L1.
//! Other CPUs and f64 fall back to the `gemm` crate through strided views.

use crate::matmul::{gemm_strided, MatRef};
use crate::Float;
use rayon::prelude::*;

/// Rows of A, and rows of B, per block: 16 accumulators plus 8 loaded vectors in 32 zmm.
const R: usize = 4;
/// Depth of a K chunk: 4 + 4 rows of 512 floats are 16 KiB, half of L1.
const KC: usize = 512;

/// True when [`gemm_nt`] runs its own kernel for f32 on this CPU (AVX-512F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// c[i·ldc + j] (+)= Σ_{k<K} a[i·lda + k] · b[j·ldb + k] for i < m, j < n.
/// a: (M, K) with row stride lda; b: (N, K) with row stride ldb; c: (M, N) with row stride
/// ldc. `accumulate = false` overwrites c. `parallel` splits the rows of C over the threads.
/// Panics when a view runs past its slice (callers pass shapes they computed).
#[allow(clippy::too_many_arguments)] // three strided operands and their shape
pub fn gemm_nt<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * ldc + n <= c.len() && (k == 0 || ((m - 1) * lda + k <= a.len() && (n - 1) * ldb + k <= b.len())),
        "gemm_nt: view out of bounds"
    );
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].iter_mut().for_each(|v| *v = T::zero()));
        }
        return;
    }
    if let (true, Some(a32), Some(b32), Some(c32)) =
        (available(), crate::simd::as_f32(a), crate::simd::as_f32(b), crate::simd::as_f32_mut(c))
    {
        let t = crate::num_threads();
        let split = parallel && t > 1 && m * n * k >= 1 << 18;
        if split && m < R * t && n >= 2 * R * t {
            // Too few rows of C to share (a batch-1 classifier: one row, 1000 columns): each
            // thread takes a range of C's columns, i.e. of B's rows. The product reads B once,
            // so it is bound by memory, and two cores draw more of it than one.
            let cols_per_task = n.div_ceil(R).div_ceil(t) * R;
            let cp = crate::conv::SyncPtr(c32.as_mut_ptr());
            (0..n.div_ceil(cols_per_task)).into_par_iter().for_each(|task| {
                let j0 = task * cols_per_task;
                let nr = cols_per_task.min(n - j0);
                // SAFETY: avx512f was detected; the views were checked against the slices
                // above; each task writes only columns j0 .. j0 + nr of c's m rows.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    product(m, nr, k, a32.as_ptr(), lda, b32[j0 * ldb..].as_ptr(), ldb, cp.get().add(j0), ldc, accumulate)
                }
            });
            return;
        }
        // Blocks of R rows of C; split over the threads only when there are enough of them.
        let rows_per_task = if split { m.div_ceil(R).div_ceil(t).max(1) * R } else { m };
        let cl = c32.len();
        c32[..cl.min(m * ldc)].par_chunks_mut(rows_per_task * ldc).enumerate().for_each(|(t, ct)| {
            let i0 = t * rows_per_task;
            let mr = rows_per_task.min(m - i0);
            // SAFETY: avx512f was detected; the views were checked against the slices above
            // (ct holds rows i0 .. i0 + mr of c, the last possibly shorter than ldc but ≥ n).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                product(mr, n, k, a32[i0 * lda..].as_ptr(), lda, b32.as_ptr(), ldb, ct.as_mut_ptr(), ldc, accumulate)
            }
        });
        return;
    }
    let av = MatRef { data: a, rows: m, cols: k, rs: lda as isize, cs: 1 };
    let bv = MatRef { data: b, rows: n, cols: k, rs: ldb as isize, cs: 1 };
    gemm_strided(av, bv.t(), c, ldc as isize, 1, accumulate, parallel)
}

/// The whole product on one thread, K chunk by K chunk.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn product(m: usize, n: usize, k: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, acc: bool) {
    // With one block of rows of A, no row of B is read twice: walk each whole, so the
    // prefetchers see long streams (chunked, a batch-1 classifier's weight rows came from
    // memory in 2 KiB pieces far apart).
    let step = if m <= R { k } else { KC };
    for k0 in (0..k).step_by(step) {
        let kc = step.min(k - k0);
        let first = k0 == 0 && !acc;
        for i0 in (0..m).step_by(R) {
            for j0 in (0..n).step_by(R) {
                let (pa, pb, pc) = (a.add(i0 * lda + k0), b.add(j0 * ldb + k0), c.add(i0 * ldc + j0));
                block_dispatch(R.min(m - i0), R.min(n - j0), kc, pa, lda, pb, ldb, pc, ldc, !first);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block_dispatch(
    mr: usize,
    nr: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    macro_rules! go {
        ($($m:literal $n:literal),*) => {
            match (mr, nr) {
                $(($m, $n) => block::<$m, $n>(k, a, lda, b, ldb, c, ldc, acc),)*
                _ => unreachable!("block sizes are 1..=4"),
            }
        };
    }
    go!(4 4, 4 3, 4 2, 4 1, 3 4, 3 3, 3 2, 3 1, 2 4, 2 3, 2 2, 2 1, 1 4, 1 3, 1 2, 1 1)
}

/// One MR × NR block of C: c[i·ldc + j] (+)= Σ_k a[i·lda + k]·b[j·ldb + k].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // indices name the register tile's rows and columns
#[target_feature(enable = "avx512f")]
unsafe fn block<const MR: usize, const NR: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    use std::arch::x86_64::*;
    let mut s = [[_mm512_setzero_ps(); NR]; MR];
    let full = k / 16 * 16;
    let mut kk = 0;
    while kk < full {
        let av: [__m512; MR] = std::array::from_fn(|i| _mm512_loadu_ps(a.add(i * lda + kk)));
        for j in 0..NR {
            let bv = _mm512_loadu_ps(b.add(j * ldb + kk));
            for i in 0..MR {
                s[i][j] = _mm512_fmadd_ps(av[i], bv, s[i][j]);
            }
        }
        kk += 16;
    }
    if kk < k {
        // The tail: masked loads read nothing past K (and so nothing past the slices).
        let mask: __mmask16 = (1u16 << (k - kk)) - 1;
        let av: [__m512; MR] = std::array::from_fn(|i| _mm512_maskz_loadu_ps(mask, a.add(i * lda + kk)));
        for j in 0..NR {
            let bv = _mm512_maskz_loadu_ps(mask, b.add(j * ldb + kk));
            for i in 0..MR {
                s[i][j] = _mm512_fmadd_ps(av[i], bv, s[i][j]);
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            let v = _mm512_reduce_add_ps(s[i][j]);
            let p = c.add(i * ldc + j);
            *p = if acc { *p + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The naive twin: c (+)= a · bᵀ in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, c: &mut [f64], ldc: usize) {
        for i in 0..m {
            for j in 0..n {
                c[i * ldc + j] += (0..k).map(|t| a[i * lda + t] as f64 * b[j * ldb + t] as f64).sum::<f64>();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(80))]
        #[test]
        fn gemm_nt_matches_naive(m in 1usize..23, n in 1usize..19, k in 0usize..1300, pad in 0usize..5, acc: bool, par: bool, seed in 0u64..1000) {
            let mut s = seed;
            let mut rnd = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5 };
            let (lda, ldb, ldc) = (k + pad, k + 2 * pad, n + pad);
            // Operands end exactly where their last row ends, so an overread would fault or
            // be caught by the bounds check.
            let a: Vec<f32> = (0..(m - 1) * lda + k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..(n - 1) * ldb + k).map(|_| rnd()).collect();
            let c0: Vec<f32> = (0..(m - 1) * ldc + n).map(|_| rnd()).collect();
            let mut c = c0.clone();
            gemm_nt(m, n, k, &a, lda, &b, ldb, &mut c, ldc, acc, par);
            let mut want: Vec<f64> = c0.iter().map(|&v| if acc { v as f64 } else { 0.0 }).collect();
            naive(m, n, k, &a, lda, &b, ldb, &mut want, ldc);
            for i in 0..m {
                for j in 0..ldc.min(c.len() - i * ldc) {
                    let (got, w) = (c[i * ldc + j] as f64, want[i * ldc + j]);
                    if j < n {
                        prop_assert!((got - w).abs() < 1e-4 * (1.0 + (k as f64).sqrt()), "({i}, {j}): {got} vs {w}");
                    } else {
                        // Padding between rows of C is left alone.
                        prop_assert_eq!(c[i * ldc + j], c0[i * ldc + j]);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Few rows of C and many columns (a batch-1 classifier): the columns are split over
        /// the threads. Run inside a pool of two so the split happens on any machine.
        #[test]
        fn gemm_nt_column_split_matches_naive(m in 1usize..8, n in 40usize..1100, k in 300usize..1300, acc: bool, seed in 0u64..1000) {
            prop_assume!(m * n * k >= 1 << 18);
            let mut s = seed;
            let mut rnd = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5 };
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            let mut c = c0.clone();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().map_err(|e| TestCaseError::fail(e.to_string()))?;
            pool.install(|| gemm_nt(m, n, k, &a, k, &b, k, &mut c, n, acc, true));
            let mut want: Vec<f64> = c0.iter().map(|&v| if acc { v as f64 } else { 0.0 }).collect();
            naive(m, n, k, &a, k, &b, k, &mut want, n);
            for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                prop_assert!((got as f64 - w).abs() < 1e-4 * (1.0 + (k as f64).sqrt()), "{i}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn f64_falls_back_to_gemm() {
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]; // (2, 3)
        let b = [1.0f64, 0.0, -1.0]; // (1, 3)
        let mut c = [10.0f64, 20.0];
        gemm_nt(2, 1, 3, &a, 3, &b, 3, &mut c, 1, true, false);
        assert_eq!(c, [8.0, 18.0]);
    }
}
