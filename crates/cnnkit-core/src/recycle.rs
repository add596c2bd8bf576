//! Activation-buffer recycling: the allocation arena of inference mode.
//!
//! Inside a [`recycle_buffers`] scope, a tensor's storage that dies (its last `Tensor`
//! handle dropped, no view left) is kept in a per-thread free list keyed by (dtype, length)
//! instead of going back to the allocator, and ops whose kernels overwrite their whole output
//! (convolution, pooling, batch norm, matmul, softmax) take their output buffer from that list.
//! A network run repeatedly on same-shaped inputs therefore allocates only during its first
//! run; afterwards every activation lives in a buffer freed earlier in the same run or the run
//! before, and no output is zero-filled (a recycled buffer's stale contents are overwritten).
//!
//! The free lists are per thread, so no locking is involved; [`crate::on_worker`] carries the
//! calling thread's lists (and scope) to the pool worker that runs its closure and back, so a
//! scope opened around repeated `Graph::run` calls covers the work wherever it executes. They
//! are emptied when the outermost scope ends, and never hold more than [`MAX_POOLED_BYTES`].

use crate::dtype::{DType, Elem, Storage};
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;

/// Buffers smaller than this many elements are not worth keeping: malloc serves them fast.
const MIN_LEN: usize = 1024;
/// The most memory the free lists of one thread keep; past it, dead buffers are freed.
pub const MAX_POOLED_BYTES: usize = 1 << 30;

#[derive(Default)]
pub(crate) struct Pool {
    depth: usize,
    bytes: usize,
    free: HashMap<(DType, usize), Vec<Storage>>,
    hits: u64,
    misses: u64,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// The scope returned by [`recycle_buffers`]; recycling stops (and the free lists of this
/// thread are emptied) when the outermost one is dropped. Not `Send`: the lists are per thread.
#[must_use = "recycling lasts only as long as the guard is alive"]
pub struct RecycleGuard {
    _thread_bound: PhantomData<*const ()>,
}

/// Starts recycling activation buffers on this thread until the returned guard is dropped.
/// Scopes nest. Hold one across repeated inference calls (a serving loop, a benchmark) so
/// that the steady state allocates nothing; `Graph::run` also opens one for its own duration.
pub fn recycle_buffers() -> RecycleGuard {
    POOL.with(|p| p.borrow_mut().depth += 1);
    RecycleGuard { _thread_bound: PhantomData }
}

impl Drop for RecycleGuard {
    fn drop(&mut self) {
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            p.depth = p.depth.saturating_sub(1);
            if p.depth == 0 {
                p.free.clear();
                p.bytes = 0;
            }
        });
    }
}

/// (hits, misses) of output-buffer requests on this thread since it started: a hit reused a
/// dead tensor's buffer, a miss allocated. For tests and diagnostics.
pub fn recycle_stats() -> (u64, u64) {
    POOL.try_with(|p| {
        let p = p.borrow();
        (p.hits, p.misses)
    })
    .unwrap_or((0, 0))
}

/// True while a [`recycle_buffers`] scope is open on this thread.
pub(crate) fn active() -> bool {
    POOL.try_with(|p| p.try_borrow().map(|p| p.depth > 0).unwrap_or(false)).unwrap_or(false)
}

/// A buffer of `n` elements for an op output that the op overwrites completely: a recycled
/// one (stale contents) inside a recycling scope when one of that length is free, otherwise
/// a fresh zeroed allocation.
pub(crate) fn output_vec<T: Elem>(n: usize) -> Vec<T> {
    if n >= MIN_LEN {
        let reused = POOL
            .try_with(|p| {
                let mut p = p.try_borrow_mut().ok()?;
                if p.depth == 0 {
                    return None;
                }
                let hit = p.free.get_mut(&(T::DTYPE, n)).and_then(|l| l.pop());
                match hit {
                    Some(mut s) => {
                        p.hits += 1;
                        p.bytes -= n * T::DTYPE.size_in_bytes();
                        T::slice_mut(&mut s).map(std::mem::take)
                    }
                    None => {
                        p.misses += 1;
                        None
                    }
                }
            })
            .ok()
            .flatten();
        if let Some(v) = reused {
            return v;
        }
    }
    vec![T::default(); n]
}

/// Keeps a dead tensor's storage for reuse (called from the tensor's drop, only when
/// [`active`]); frees it instead when it is small, not a float type, or the lists are full.
pub(crate) fn give(s: Storage) {
    let (dtype, n) = (s.dtype(), s.len());
    if n < MIN_LEN || !matches!(dtype, DType::F32 | DType::F64) {
        return;
    }
    let _ = POOL.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            let bytes = n * dtype.size_in_bytes();
            if p.depth > 0 && p.bytes + bytes <= MAX_POOLED_BYTES {
                p.bytes += bytes;
                p.free.entry((dtype, n)).or_default().push(s);
            }
        }
    });
}

/// Replaces this thread's free lists, scope depth and counters with `p`, returning the old
/// ones (how [`crate::on_worker`] moves them between threads).
pub(crate) fn swap_pool(p: Pool) -> Pool {
    POOL.try_with(|c| match c.try_borrow_mut() {
        Ok(mut cur) => std::mem::replace(&mut *cur, p),
        Err(_) => p,
    })
    .unwrap_or_default()
}
