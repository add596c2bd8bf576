//! Convolution weights kept packed for cnnkit's own GEMM between calls, so inference packs each
//! layer's weights once instead of on every forward ([`cnnkit_kernels::packed`]).
//!
//! The cache is keyed by the weight tensor's storage (plus its offset and matrix shape). An
//! entry holds a `Weak` to that storage: it stops matching when the storage is freed, and the
//! `Weak` keeps the allocation's address from being reused for another storage meanwhile.
//! Every in-place write goes through `Tensor::write_storage`, which drops the storage's
//! entries while it holds the write lock; entries are made under the read lock, so a packed
//! copy never outlives the values it was made from. Only forwards autograd does not record
//! consult it (inference, `no_grad` evaluation), so training steps never pay for packing.

use crate::dtype::Storage;
use cnnkit_kernels::matmul::MatRef;
use cnnkit_kernels::packed::PackedA;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

struct Entry {
    storage: Weak<RwLock<Storage>>,
    offset: usize,
    packed: Arc<PackedA>,
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
/// False while the cache is empty: writes then skip the lock (every optimizer step writes
/// every parameter).
static ANY: AtomicBool = AtomicBool::new(false);
/// Most bytes of packed weights kept; the oldest entries go first (a ResNet-50's small-plane
/// layers take ~60 MiB).
const MAX_BYTES: usize = 512 << 20;

fn bytes(p: &PackedA) -> usize {
    p.m_padded() * p.k * 4
}

/// The packed (m, k) matrix of the f32 weights `wd`, which are the values of `storage` from
/// `offset` (the caller holds its read lock): from the cache, or packed now and kept.
pub(crate) fn packed_weights(storage: &Arc<RwLock<Storage>>, offset: usize, wd: &[f32], m: usize, k: usize) -> Arc<PackedA> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.retain(|e| e.storage.strong_count() > 0);
    let hit = cache
        .iter()
        .position(|e| e.offset == offset && e.packed.m == m && e.packed.k == k && std::ptr::eq(e.storage.as_ptr(), Arc::as_ptr(storage)));
    if let Some(i) = hit {
        // Most recently used last, so eviction takes the least recently used.
        let e = cache.remove(i);
        let p = e.packed.clone();
        cache.push(e);
        return p;
    }
    let packed = Arc::new(PackedA::new(MatRef::row_major(&wd[..m * k], m, k)));
    let mut total: usize = cache.iter().map(|e| bytes(&e.packed)).sum::<usize>() + bytes(&packed);
    while total > MAX_BYTES && !cache.is_empty() {
        total -= bytes(&cache.remove(0).packed);
    }
    cache.push(Entry { storage: Arc::downgrade(storage), offset, packed: packed.clone() });
    ANY.store(true, Ordering::Release);
    packed
}

/// Drops `storage`'s entries: called by `Tensor::write_storage` while it holds the write lock.
pub(crate) fn forget(storage: &Arc<RwLock<Storage>>) {
    if !ANY.load(Ordering::Acquire) {
        return;
    }
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.retain(|e| e.storage.strong_count() > 0 && !std::ptr::eq(e.storage.as_ptr(), Arc::as_ptr(storage)));
    ANY.store(!cache.is_empty(), Ordering::Release);
}

/// Number of packed weight matrices held (for tests).
pub fn cached_weights() -> usize {
    let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.iter().filter(|e| e.storage.strong_count() > 0).count()
}
