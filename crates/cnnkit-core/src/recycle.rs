//! Buffer recycling: the allocation arena of inference and of training steps.
//!
//! Inside a [`recycle_buffers`] scope, a tensor's storage that dies (its last `Tensor`
//! handle dropped, no view left) is kept in a per-thread free list keyed by (dtype, length)
//! instead of going back to the allocator, and ops whose kernels overwrite their whole output
//! (convolution, pooling, batch norm, matmul, softmax, elementwise maps, the convolution and
//! batch-norm gradients) take their output buffer from that list. A network run repeatedly on
//! same-shaped inputs therefore allocates only during its first run; afterwards every
//! activation lives in a buffer freed earlier in the same run or the run before, and no output
//! is zero-filled (a recycled buffer's stale contents are overwritten). `Graph::run` and the
//! trainer's epoch loop open a scope; training thereby reuses each step's activations and
//! gradients in the next (measured: zero-filling fresh outputs was 14% of an MNIST epoch).
//!
//! Only lengths that some op has asked for are kept, and a buffer that waits through
//! [`MAX_AGE_BYTES`] of later arrivals is freed, so buffers outside the repeating pattern
//! (a data loader's batches, a gradient produced twice a step but requested once) do not
//! pin memory; peak memory stays that of the run itself.
//!
//! The free lists are per thread, so no locking is involved; [`crate::on_worker`] carries the
//! calling thread's lists (and scope) to the pool worker that runs its closure and back, so a
//! scope opened around repeated `Graph::run` calls covers the work wherever it executes. They
//! are emptied when the outermost scope ends, and never hold more than [`MAX_POOLED_BYTES`].

use crate::dtype::{DType, Elem, Storage};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::marker::PhantomData;

/// Buffers smaller than this many elements are not worth keeping: malloc serves them fast.
const MIN_LEN: usize = 1024;
/// The most memory the free lists of one thread keep; past it, dead buffers are freed.
pub const MAX_POOLED_BYTES: usize = 1 << 30;
/// A pooled buffer not reused before this many bytes of later buffers arrive is freed. A
/// training step or a network run frees its buffers and reuses them in the next, so a buffer
/// that waited this long belongs to no repeating pattern (a gradient produced twice a step but
/// requested once, the odd last batch of an epoch) and would otherwise pin memory.
const MAX_AGE_BYTES: u64 = 1 << 30;

#[derive(Default)]
pub(crate) struct Pool {
    depth: usize,
    bytes: usize,
    /// Per (dtype, length): dead buffers with their arrival numbers, newest at the back
    /// (reused first: the warmest in cache).
    free: HashMap<(DType, usize), VecDeque<(u64, Storage)>>,
    /// Every pooled buffer's arrival stamp (bytes that arrived before it, plus its own) → its
    /// key. When the lists are full, or a buffer has waited too long, the oldest buffer goes
    /// back to the allocator, so buffers that are never asked for again age out instead of
    /// pinning memory.
    order: BTreeMap<u64, (DType, usize)>,
    arrivals: u64,
    /// The (dtype, length) pairs some op has asked for: only those are kept (a buffer of a
    /// length nobody requests, such as a data loader's batch, would never be reused).
    wanted: HashSet<(DType, usize)>,
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
/// that the steady state allocates nothing, or across a custom training loop so each step
/// reuses the previous step's activations and gradients (`cnnkit_train`'s trainer does);
/// `Graph::run` also opens one for its own duration.
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
                p.order.clear();
                p.wanted.clear();
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
    take(n).unwrap_or_else(|| vec![T::default(); n])
}

/// A dead buffer of exactly `n` elements (stale contents) when a recycling scope is open on
/// this thread and one is free; None otherwise (the caller allocates).
pub(crate) fn take<T: Elem>(n: usize) -> Option<Vec<T>> {
    if n < MIN_LEN {
        return None;
    }
    POOL.try_with(|p| p.try_borrow_mut().ok().filter(|p| p.depth > 0).and_then(|mut p| p.take(n))).ok().flatten()
}

/// Keeps a dead tensor's storage for reuse (called from the tensor's drop, only when
/// [`active`]); frees it instead when it is small, not a float type, of a length no op has
/// asked for, or too large for the lists.
pub(crate) fn give(s: Storage) {
    if s.len() < MIN_LEN || !matches!(s.dtype(), DType::F32 | DType::F64) {
        return;
    }
    let _ = POOL.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if p.depth > 0 {
                p.put(s, MAX_POOLED_BYTES, MAX_AGE_BYTES);
            }
        }
    });
}

impl Pool {
    fn take<T: Elem>(&mut self, n: usize) -> Option<Vec<T>> {
        self.wanted.insert((T::DTYPE, n));
        match self.free.get_mut(&(T::DTYPE, n)).and_then(|l| l.pop_back()) {
            Some((at, mut s)) => {
                self.order.remove(&at);
                self.hits += 1;
                self.bytes -= n * T::DTYPE.size_in_bytes();
                T::slice_mut(&mut s).map(std::mem::take)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Pools `s` unless its length is unwanted or it alone exceeds `max_bytes`; first frees
    /// the oldest buffers while the lists would exceed `max_bytes` or the oldest has waited
    /// through `max_age` bytes of later arrivals (it is then not part of a repeating pattern).
    fn put(&mut self, s: Storage, max_bytes: usize, max_age: u64) {
        let key = (s.dtype(), s.len());
        let bytes = key.1 * key.0.size_in_bytes();
        if bytes > max_bytes || !self.wanted.contains(&key) {
            return;
        }
        self.arrivals += bytes as u64;
        while let Some((&at, &old_key)) = self.order.first_key_value() {
            if self.bytes + bytes <= max_bytes && at + max_age >= self.arrivals {
                break;
            }
            self.order.remove(&at);
            // The oldest buffer overall is the oldest of its key: the front of its list.
            if let Some((_, old)) = self.free.get_mut(&old_key).and_then(|l| l.pop_front()) {
                self.bytes -= old.len() * old_key.0.size_in_bytes();
            }
        }
        let at = self.arrivals;
        self.bytes += bytes;
        self.free.entry(key).or_default().push_back((at, s));
        self.order.insert(at, key);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(n: usize) -> Storage {
        Storage::F32(vec![1.0; n])
    }

    #[test]
    fn keeps_only_wanted_lengths() {
        let mut p = Pool::default();
        p.put(buf(2048), 1 << 20, 1 << 20);
        assert_eq!(p.bytes, 0, "nobody asked for 2048 elements yet");
        assert!(p.take::<f32>(2048).is_none());
        p.put(buf(2048), 1 << 20, 1 << 20);
        let v = p.take::<f32>(2048).expect("wanted now");
        assert_eq!((v.len(), p.hits, p.misses, p.bytes), (2048, 1, 1, 0));
        assert!(p.take::<f64>(2048).is_none(), "keyed by dtype too");
    }

    #[test]
    fn frees_the_oldest_when_full_or_stale() {
        let mut p = Pool::default();
        for n in [1024, 2048, 4096] {
            p.take::<f32>(n);
        }
        // Full: 16 KiB lists; adding 8 KiB to 4 + 8 KiB frees the oldest (the 4 KiB one).
        p.put(buf(1024), 16 << 10, 1 << 30);
        p.put(buf(2048), 16 << 10, 1 << 30);
        p.put(buf(2048), 16 << 10, 1 << 30);
        assert_eq!(p.bytes, 16 << 10);
        assert!(p.take::<f32>(1024).is_none(), "the oldest buffer was freed");
        assert_eq!(p.bytes, 16 << 10);
        // Stale: with a 20 KiB age limit, a 2048 buffer that sat through 16 KiB + 16 KiB of later
        // arrivals is freed even though the lists have room; the newest ones stay.
        p.put(buf(4096), 1 << 30, 20 << 10);
        p.put(buf(4096), 1 << 30, 20 << 10);
        assert!(p.take::<f32>(2048).is_none() && p.take::<f32>(4096).is_some() && p.take::<f32>(4096).is_some());
        assert_eq!((p.bytes, p.order.len()), (0, 0));
    }
}
