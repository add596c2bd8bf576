//! Runtime CPU dispatch for the plain-loop kernels (elementwise, reductions, pooling).
//!
//! The binary is built for baseline x86-64 so it runs anywhere; `with_best_isa` runs a
//! closure inside a function compiled for AVX2 + FMA when the CPU has them, so LLVM
//! auto-vectorises the closure's (inlined) loops with 256-bit registers. Elsewhere the same
//! closure runs as compiled for the baseline (SSE2 on x86-64, NEON on aarch64).
//! GEMM does its own dispatch (the `gemm` crate: AVX2, AVX-512, NEON).

/// True when AVX2 and FMA are available (checked once).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(not(target_arch = "x86_64"))]
pub fn has_avx2_fma() -> bool {
    false
}

/// Runs `f`, compiled for AVX2 + FMA when the CPU supports them.
#[inline(always)]
pub fn with_best_isa<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if has_avx2_fma() {
            // SAFETY: the CPU was just checked to support AVX2 and FMA.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Defines `$name`, which runs the `#[inline(always)]` kernel `$inner` compiled for AVX2 + FMA
/// where the CPU has them (through the twin `$avx2`). Use it instead of [`with_best_isa`] for
/// large kernels: LLVM declines to inline a closure that large into `with_best_isa`'s AVX2
/// wrapper, which silently leaves the loops at SSE2 width (measured: the Winograd transforms
/// and the depthwise plane kernels ran with 128-bit registers).
macro_rules! best_isa_fn {
    ($vis:vis $name:ident, $avx2:ident, $inner:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<T: crate::Float>($($arg: $ty),*) $(-> $ret)? {
            $inner($($arg),*)
        }
        $vis fn $name<T: crate::Float>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if crate::simd::has_avx2_fma() {
                // SAFETY: the CPU was just checked to support AVX2 and FMA.
                return unsafe { $avx2($($arg),*) };
            }
            $inner($($arg),*)
        }
    };
}

/// Elements per parallel task in the elementwise kernels: large enough to amortise task
/// overhead, small enough to balance two or more cores.
pub const CHUNK: usize = 1 << 14;

/// Builds a vector of `n` elements by letting `fill` initialise every element of each chunk
/// (parallel chunks of [`CHUNK`]). Skips zero-filling memory that is about to be overwritten.
fn build<U: Copy + Send + Sync>(n: usize, fill: impl Fn(usize, &mut [std::mem::MaybeUninit<U>]) + Sync + Send) -> Vec<U> {
    let mut out: Vec<U> = Vec::with_capacity(n);
    over_chunks(&mut out.spare_capacity_mut()[..n], fill);
    // SAFETY: `fill` wrote every element of every chunk (each callback below writes its whole
    // output slice), so the first n elements are initialised.
    unsafe { out.set_len(n) };
    out
}

/// out[i] = f(x[i]), in parallel chunks, each vectorised for the best ISA.
pub fn map<T: Copy + Send + Sync, U: Copy + Send + Sync>(x: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    build(x.len(), |start, o| {
        let i = &x[start..start + o.len()];
        with_best_isa(|| {
            o.iter_mut().zip(i).for_each(|(o, &v)| {
                o.write(f(v));
            })
        })
    })
}

/// f(chunk) over x in place, in parallel chunks of [`CHUNK`], each vectorised for the best ISA.
pub fn chunks_in_place<T: Copy + Send + Sync>(x: &mut [T], f: impl Fn(&mut [T]) + Sync + Send) {
    over_chunks(x, |_, c| with_best_isa(|| f(c)))
}

/// Runs `fill(start, chunk)` over `out` in parallel chunks of [`CHUNK`] (serially when short):
/// the one chunking rule of every elementwise kernel here.
fn over_chunks<U: Send>(out: &mut [U], fill: impl Fn(usize, &mut [U]) + Sync + Send) {
    use rayon::prelude::*;
    if out.len() >= 2 * CHUNK {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| fill(i * CHUNK, o));
    } else {
        fill(0, out);
    }
}

/// [`map`] into an existing buffer (a recycled one): out[i] = f(x[i]) for i < out.len() ≤ x.len().
pub fn map_into<T: Copy + Send + Sync, U: Copy + Send + Sync>(x: &[T], out: &mut [U], f: impl Fn(T) -> U + Sync + Send) {
    over_chunks(out, |start, o| {
        let i = &x[start..start + o.len()];
        with_best_isa(|| o.iter_mut().zip(i).for_each(|(o, &v)| *o = f(v)))
    })
}

/// [`zip`] into an existing buffer: out[i] = f(a[i], b[i]) for i < out.len() ≤ a.len(), b.len().
pub fn zip_into<T: Copy + Send + Sync, U: Copy + Send + Sync>(a: &[T], b: &[T], out: &mut [U], f: impl Fn(T, T) -> U + Sync + Send) {
    over_chunks(out, |start, o| {
        let (x, y) = (&a[start..start + o.len()], &b[start..start + o.len()]);
        with_best_isa(|| o.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (&p, &q))| *o = f(p, q)))
    })
}

/// out[i] = f(a[i], b[i]), in parallel chunks, each vectorised for the best ISA.
pub fn zip<T: Copy + Send + Sync, U: Copy + Send + Sync>(a: &[T], b: &[T], f: impl Fn(T, T) -> U + Sync + Send) -> Vec<U> {
    let n = a.len().min(b.len());
    build(n, |start, o| {
        let (x, y) = (&a[start..start + o.len()], &b[start..start + o.len()]);
        with_best_isa(|| {
            o.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (&p, &q))| {
                o.write(f(p, q));
            })
        })
    })
}

/// Σ c in f64, on the calling thread (inline it into a [`with_best_isa`] closure).
#[inline(always)]
pub fn sum_f64<T: crate::Float>(c: &[T]) -> f64 {
    // Eight independent partial sums let the loop vectorise without reassociation.
    let mut acc = [0f64; 8];
    let mut it = c.chunks_exact(8);
    for ch in &mut it {
        for k in 0..8 {
            acc[k] += ch[k].to_f64().unwrap_or(0.0);
        }
    }
    let tail: f64 = it.remainder().iter().map(|v| v.to_f64().unwrap_or(0.0)).sum();
    acc.iter().sum::<f64>() + tail
}

/// Σ rows of length `r`: out[j] = Σ x[j·r .. (j+1)·r], accumulated in f64 for accuracy.
pub fn row_sums<T: crate::Float>(x: &[T], r: usize) -> Vec<f64> {
    use rayon::prelude::*;
    if r == 0 {
        return vec![0.0; 0];
    }
    let rows = x.len() / r;
    let sum_row = |c: &[T]| with_best_isa(|| sum_f64(c));
    if x.len() >= 2 * CHUNK && rows > 1 {
        x.par_chunks(r).map(sum_row).collect()
    } else {
        x.chunks(r).map(sum_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn transpose16_transposes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        use std::arch::x86_64::*;
        let m: Vec<f32> = (0..256).map(|v| v as f32).collect();
        let mut out = [0f32; 256];
        // SAFETY: AVX-512F was detected; m and out hold 16 rows of 16.
        unsafe {
            let mut r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(m.as_ptr().add(16 * i)));
            transpose16(&mut r);
            r.iter().enumerate().for_each(|(j, v)| _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), *v));
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[16 * j + i], m[16 * i + j], "({i}, {j})");
            }
        }
    }

    #[test]
    fn dispatched_kernels_match_scalar_loops() {
        let x: Vec<f32> = (0..100_103).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let y: Vec<f32> = (0..100_103).map(|i| ((i * 11) % 7) as f32).collect();
        let m = map(&x, |v| v.max(0.0) * 2.0);
        assert!(m.iter().zip(&x).all(|(a, b)| *a == b.max(0.0) * 2.0));
        let z = zip(&x, &y, |a, b| a * b + 1.0);
        assert!(z.iter().zip(x.iter().zip(&y)).all(|(o, (a, b))| *o == a * b + 1.0));
        let s = row_sums(&x[..100_100], 1001);
        for (j, v) in s.iter().enumerate() {
            let want: f64 = x[j * 1001..(j + 1) * 1001].iter().map(|&v| v as f64).sum();
            assert!((v - want).abs() < 1e-9);
        }
    }
}

/// Partial sums per reduction below: eight independent accumulators, so LLVM vectorises the
/// loop (a single accumulator is a serial chain of dependent adds).
const RL: usize = 8;
/// Elements summed in T (f32 for f32 data) before the block's total goes into the f64 sum:
/// 128 adds per lane keep the f32 rounding near 1e-6 relative while the inner loop stays in
/// f32 vector registers (f64 accumulation of f32 data did not vectorise).
const RBLOCK: usize = 1024;

#[inline(always)]
fn f64_of<T: crate::Float>(v: T) -> f64 {
    v.to_f64().unwrap_or(f64::NAN)
}

#[inline(always)]
fn t_of<T: crate::Float>(v: f64) -> T {
    T::from_f64(v).unwrap_or(T::nan())
}

/// (Σ a, Σ a·(b − mean)), blockwise in T and across blocks in f64. a, b: the same length
/// (BatchNorm backward: a = gy, b = x).
#[inline(always)]
fn sums_dev_impl<T: crate::Float>(a: &[T], b: &[T], mean: f64) -> (f64, f64) {
    let m = t_of::<T>(mean);
    let (mut s64, mut t64) = (0.0, 0.0);
    for (ba, bb) in a.chunks(RBLOCK).zip(b.chunks(RBLOCK)) {
        let (mut s, mut t) = ([T::zero(); RL], [T::zero(); RL]);
        let (ca, cb) = (ba.chunks_exact(RL), bb.chunks_exact(RL));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (pa, pb) in ca.zip(cb) {
            // Fixed-size copies: with them LLVM turns the lane loop into vector operations.
            let (Ok(pa), Ok(pb)) = (<[T; RL]>::try_from(pa), <[T; RL]>::try_from(pb)) else { continue };
            let d: [T; RL] = std::array::from_fn(|l| pb[l] - m);
            for l in 0..RL {
                s[l] += pa[l];
                t[l] += pa[l] * d[l];
            }
        }
        // The tail into its own sums: indexing the lanes by a loop variable would keep them
        // in memory (and the loop above scalar).
        let (mut st, mut tt) = (T::zero(), T::zero());
        for (&u, &v) in ra.iter().zip(rb) {
            st += u;
            tt += u * (v - m);
        }
        s64 += s.iter().fold(f64_of(st), |acc, &v| acc + f64_of(v));
        t64 += t.iter().fold(f64_of(tt), |acc, &v| acc + f64_of(v));
    }
    (s64, t64)
}
best_isa_fn!(sums_dev_best, sums_dev_avx2, sums_dev_impl, (a: &[T], b: &[T], mean: f64) -> (f64, f64));

/// `x` as &[f32] when T is f32.
pub(crate) fn as_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (same type, so same size, alignment and validity).
        Some(unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
    } else {
        None
    }
}

/// Lanes k of a 16-lane load starting at column `start` of a row of `len` columns that fall
/// inside the row (0 ≤ start + k < len): the mask of an AVX-512 masked load that reads a
/// padded row's real columns only.
#[inline(always)]
pub(crate) fn lane_mask(start: isize, len: usize) -> u16 {
    let lo = (-start).clamp(0, 16) as u32;
    let hi = (len as isize - start).clamp(0, 16) as u32;
    if hi <= lo {
        0
    } else {
        (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16
    }
}

/// v clamped to [lo, hi] as `conv::Epilogue` does (NaN stays NaN): two instructions, where
/// compare-and-blend took four on the output's critical path.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn clamp_ps(
    v: std::arch::x86_64::__m512,
    lo: std::arch::x86_64::__m512,
    hi: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // maxps/minps return their second operand when either is NaN: v, so NaN stays NaN.
    _mm512_min_ps(hi, _mm512_max_ps(lo, v))
}

/// Transposes the 16×16 block held in `r` (row i in r[i]) in place: afterwards r[j] holds
/// column j. Four rounds of 16 shuffles (pairs of floats, of doubles, then 128-bit lanes twice).
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn transpose16(r: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved; per 128-bit lane L, columns 4L, 4L+1 and
    // 4L+2, 4L+3.
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4i+q]: per lane L, rows 4i .. 4i+3 of column 4L+q.
    for i in 0..4 {
        let (a, b, c, d) =
            (_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2]), _mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3]));
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    // t[8i+q]: rows 8i .. 8i+7 of columns q, 8+q (lanes 0 and 2 of each source), and
    // t[8i+4+q] of columns 4+q, 12+q (lanes 1 and 3).
    for i in 0..2 {
        for q in 0..4 {
            t[8 * i + q] = _mm512_shuffle_f32x4::<0x88>(r[8 * i + q], r[8 * i + 4 + q]);
            t[8 * i + 4 + q] = _mm512_shuffle_f32x4::<0xdd>(r[8 * i + q], r[8 * i + 4 + q]);
        }
    }
    // Rows 0 .. 7 with rows 8 .. 15: whole columns.
    for q in 0..8 {
        r[q] = _mm512_shuffle_f32x4::<0x88>(t[q], t[8 + q]);
        r[q + 8] = _mm512_shuffle_f32x4::<0xdd>(t[q], t[8 + q]);
    }
}

/// Columns 0, 2, …, 30 (`ODD` false) or 1, 3, …, 31 (`ODD` true) of the 32 consecutive
/// values lo ++ hi: a stride-2 row split into its even and odd columns.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn stride2_lanes<const ODD: bool>(
    lo: std::arch::x86_64::__m512,
    hi: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let idx = if ODD {
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
    } else {
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
    };
    _mm512_permutex2var_ps(lo, idx, hi)
}

/// `x` as &mut [f32] when T is f32.
pub(crate) fn as_f32_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: as in `as_f32`; the borrow is moved into the result.
        Some(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
    } else {
        None
    }
}

/// The eight f32 lanes of `v` summed in f64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn hsum_f64(v: std::arch::x86_64::__m256) -> f64 {
    let mut l = [0f32; 8];
    // SAFETY: l holds 8 f32; storeu has no alignment requirement.
    unsafe { std::arch::x86_64::_mm256_storeu_ps(l.as_mut_ptr(), v) };
    l.iter().map(|&x| x as f64).sum()
}

/// [`sums_dev_impl`] for f32 with explicit AVX2 + FMA: LLVM leaves the generic lane loops
/// scalar here (measured: 7% of a MobileNet training step in scalar vsubss/vmovss).
/// SAFETY: the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums_dev_f32_avx2(a: &[f32], b: &[f32], mean: f64) -> (f64, f64) {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(mean as f32);
    let (mut s64, mut t64) = (0.0, 0.0);
    let n = a.len().min(b.len());
    for (ba, bb) in a[..n].chunks(RBLOCK).zip(b[..n].chunks(RBLOCK)) {
        let (mut s, mut t) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let full = ba.len() / 8 * 8;
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= ba.len() == bb.len().
            let (va, vb) = unsafe { (_mm256_loadu_ps(ba.as_ptr().add(i)), _mm256_loadu_ps(bb.as_ptr().add(i))) };
            s = _mm256_add_ps(s, va);
            t = _mm256_fmadd_ps(va, _mm256_sub_ps(vb, m), t);
        }
        s64 += hsum_f64(s);
        t64 += hsum_f64(t);
        for (&u, &v) in ba[full..].iter().zip(&bb[full..]) {
            s64 += u as f64;
            t64 += u as f64 * (v as f64 - mean);
        }
    }
    (s64, t64)
}

/// (Σ a, Σ a·(b − mean)), blockwise in T and across blocks in f64. a, b: the same length
/// (BatchNorm backward: a = gy, b = x).
pub fn sums_dev_f64<T: crate::Float>(a: &[T], b: &[T], mean: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(a), Some(b), true) = (as_f32(a), as_f32(b), has_avx2_fma()) {
        // SAFETY: the CPU was just checked to support AVX2 and FMA.
        return unsafe { sums_dev_f32_avx2(a, b, mean) };
    }
    sums_dev_best(a, b, mean)
}

/// (Σ x, Σ (x − mean)²), blockwise in T and across blocks in f64 (BatchNorm statistics: the
/// sum with mean 0 first, then the squares around the mean).
#[inline(always)]
fn sum_sq_dev_impl<T: crate::Float>(x: &[T], mean: f64) -> (f64, f64) {
    let m = t_of::<T>(mean);
    let (mut s64, mut q64) = (0.0, 0.0);
    for bx in x.chunks(RBLOCK) {
        let (mut s, mut q) = ([T::zero(); RL], [T::zero(); RL]);
        let cx = bx.chunks_exact(RL);
        let rx = cx.remainder();
        for p in cx {
            let Ok(p) = <[T; RL]>::try_from(p) else { continue };
            for l in 0..RL {
                let d = p[l] - m;
                s[l] += p[l];
                q[l] += d * d;
            }
        }
        let (mut st, mut qt) = (T::zero(), T::zero());
        for &u in rx {
            let d = u - m;
            st += u;
            qt += d * d;
        }
        s64 += s.iter().fold(f64_of(st), |acc, &v| acc + f64_of(v));
        q64 += q.iter().fold(f64_of(qt), |acc, &v| acc + f64_of(v));
    }
    (s64, q64)
}
best_isa_fn!(sum_sq_dev_best, sum_sq_dev_avx2, sum_sq_dev_impl, (x: &[T], mean: f64) -> (f64, f64));

/// [`sum_sq_dev_impl`] for f32 with explicit AVX2 + FMA (see [`sums_dev_f32_avx2`]).
/// SAFETY: the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_sq_dev_f32_avx2(x: &[f32], mean: f64) -> (f64, f64) {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(mean as f32);
    let (mut s64, mut q64) = (0.0, 0.0);
    for bx in x.chunks(RBLOCK) {
        let (mut s, mut q) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let full = bx.len() / 8 * 8;
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= bx.len().
            let v = unsafe { _mm256_loadu_ps(bx.as_ptr().add(i)) };
            let d = _mm256_sub_ps(v, m);
            s = _mm256_add_ps(s, v);
            q = _mm256_fmadd_ps(d, d, q);
        }
        s64 += hsum_f64(s);
        q64 += hsum_f64(q);
        for &u in &bx[full..] {
            s64 += u as f64;
            q64 += (u as f64 - mean) * (u as f64 - mean);
        }
    }
    (s64, q64)
}

/// (Σ x, Σ (x − mean)²), blockwise in T and across blocks in f64 (BatchNorm statistics: the
/// sum with mean 0 first, then the squares around the mean).
pub fn sum_sq_dev_f64<T: crate::Float>(x: &[T], mean: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(x), true) = (as_f32(x), has_avx2_fma()) {
        // SAFETY: the CPU was just checked to support AVX2 and FMA.
        return unsafe { sum_sq_dev_f32_avx2(x, mean) };
    }
    sum_sq_dev_best(x, mean)
}

#[cfg(test)]
mod reduction_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The vectorised f64-total reductions (f32 AVX2 path, generic path for f64) against
        /// plain f64 sums, on lengths with tails and several blocks.
        #[test]
        fn reductions_match_f64_sums(n in 0usize..3000, seed in 0u64..1000, mean in -1.0f64..1.0) {
            let mut s = seed;
            let a: Vec<f64> = (0..n).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5 }).collect();
            let b: Vec<f64> = a.iter().rev().map(|v| v * 3.0 + 0.25).collect();
            let (a32, b32): (Vec<f32>, Vec<f32>) = (a.iter().map(|&v| v as f32).collect(), b.iter().map(|&v| v as f32).collect());
            let (a, b): (Vec<f64>, Vec<f64>) = (a32.iter().map(|&v| v as f64).collect(), b32.iter().map(|&v| v as f64).collect());
            let want_s: f64 = a.iter().sum();
            let want_t: f64 = a.iter().zip(&b).map(|(u, v)| u * (v - mean)).sum();
            let want_q: f64 = a.iter().map(|u| (u - mean) * (u - mean)).sum();
            let tol = 1e-5 * (n as f64 + 1.0);
            for (s_, t_) in [sums_dev_f64(&a32, &b32, mean), sums_dev_f64(&a, &b, mean)] {
                prop_assert!((s_ - want_s).abs() <= tol && (t_ - want_t).abs() <= tol, "{s_} {t_} vs {want_s} {want_t}");
            }
            for (s_, q_) in [sum_sq_dev_f64(&a32, mean), sum_sq_dev_f64(&a, mean)] {
                prop_assert!((s_ - want_s).abs() <= tol && (q_ - want_q).abs() <= tol, "{s_} {q_} vs {want_s} {want_q}");
            }
        }
    }
}
