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
    ($vis:vis $name:ident, $avx2:ident, $inner:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<T: crate::Float>($($arg: $ty),*) {
            $inner($($arg),*)
        }
        $vis fn $name<T: crate::Float>($($arg: $ty),*) {
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
    use rayon::prelude::*;
    let mut out: Vec<U> = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    if n >= 2 * CHUNK {
        spare.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| fill(i * CHUNK, o));
    } else {
        fill(0, spare);
    }
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

/// x[i] = f(x[i]) in place, in parallel chunks, each vectorised for the best ISA.
pub fn map_in_place<T: Copy + Send + Sync>(x: &mut [T], f: impl Fn(T) -> T + Sync + Send) {
    use rayon::prelude::*;
    let run = |c: &mut [T]| with_best_isa(|| c.iter_mut().for_each(|v| *v = f(*v)));
    if x.len() >= 2 * CHUNK {
        x.par_chunks_mut(CHUNK).for_each(run);
    } else {
        run(x);
    }
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

/// Σ rows of length `r`: out[j] = Σ x[j·r .. (j+1)·r], accumulated in f64 for accuracy.
pub fn row_sums<T: crate::Float>(x: &[T], r: usize) -> Vec<f64> {
    use rayon::prelude::*;
    if r == 0 {
        return vec![0.0; 0];
    }
    let rows = x.len() / r;
    let sum_row = |c: &[T]| -> f64 {
        with_best_isa(|| {
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
        })
    };
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
