//! Running a fused update over a parameter, its gradient and its state buffers: split into
//! chunks that run in parallel (rayon) for large parameters, each chunk compiled for AVX2
//! when the CPU has it so LLVM vectorises the loop with 256-bit registers.
//!
//! The updates are elementwise, so neither the chunking nor the vector width changes a
//! single bit of the result (Rust never contracts `a*b + c` into an FMA on its own).

use cnnkit_core::{Error, Result};

/// Elements per parallel task: large enough to amortise a task, small enough to balance cores.
const CHUNK: usize = 1 << 14;

/// Runs `f`, compiled for AVX2 when the CPU supports it (the same closure runs as compiled for
/// the baseline ISA elsewhere).
#[inline(always)]
fn with_best_isa<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU was just checked to support AVX2.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Splits every non-empty buffer at `mid` (empty ones, i.e. absent state, stay empty).
fn split<'a, T, const K: usize>(bufs: [&'a mut [T]; K], mid: usize) -> ([&'a mut [T]; K], [&'a mut [T]; K]) {
    let mut left: [&'a mut [T]; K] = std::array::from_fn(|_| Default::default());
    let mut right: [&'a mut [T]; K] = std::array::from_fn(|_| Default::default());
    for (i, b) in bufs.into_iter().enumerate() {
        if !b.is_empty() {
            let (l, r) = b.split_at_mut(mid);
            left[i] = l;
            right[i] = r;
        }
    }
    (left, right)
}

fn run<T: Send + Sync, const K: usize>(ps: &mut [T], gs: &[T], bufs: [&mut [T]; K], f: &(impl Fn(&mut [T], &[T], [&mut [T]; K]) + Sync)) {
    if ps.len() < 2 * CHUNK {
        return with_best_isa(|| f(ps, gs, bufs));
    }
    let mid = ps.len() / 2;
    let (pl, pr) = ps.split_at_mut(mid);
    let (gl, gr) = gs.split_at(mid);
    let (bl, br) = split(bufs, mid);
    rayon::join(|| run(pl, gl, bl, f), || run(pr, gr, br, f));
}

/// Calls `f(p, g, bufs)` on matching pieces of the parameter `ps`, the gradient `gs` and the
/// state buffers (each of `ps`'s length, or empty for state the update does not use).
pub(crate) fn for_chunks<T: Send + Sync, const K: usize>(
    op: &'static str,
    ps: &mut [T],
    gs: &[T],
    bufs: [&mut [T]; K],
    f: impl Fn(&mut [T], &[T], [&mut [T]; K]) + Sync,
) -> Result<()> {
    let n = ps.len();
    if gs.len() != n || bufs.iter().any(|b| !b.is_empty() && b.len() != n) {
        return Err(Error::invalid(op, format!("a gradient or state buffer does not have the parameter's {n} elements")));
    }
    run(ps, gs, bufs, &f);
    Ok(())
}
