//! Convolution weights kept prepared between calls, so inference prepares each layer's weights
//! once instead of on every forward: packed into panels for cnnkit's own GEMM
//! ([`cnnkit_kernels::packed`]), or Winograd-transformed (U = G g Gᵀ, 4× the filter bytes).
//!
//! The cache is keyed by the weight tensor's storage (plus its offset and matrix shape). An
//! entry holds a `Weak` to that storage: it stops matching when the storage is freed, and the
//! `Weak` keeps the allocation's address from being reused for another storage meanwhile.
//! Every in-place write goes through `Tensor::write_storage`, which drops the storage's
//! entries while it holds the write lock; entries are made under the read lock, so a packed
//! copy never outlives the values it was made from. Only forwards autograd does not record
//! consult it (inference, `no_grad` evaluation), so training steps never pay for packing.

use crate::dtype::Storage;
use cnnkit_kernels::conv::ConvGeom;
use cnnkit_kernels::matmul::MatRef;
use cnnkit_kernels::packed::PackedA;
use cnnkit_kernels::winograd;
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// What an entry holds: which transform of the weights, for which matrix shape.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// [`PackedA`] of the (m, k) weight matrix.
    Packed { m: usize, k: usize },
    /// Winograd U of (c_out, c_in) 3×3 filters.
    WinogradU { c_out: usize, c_in: usize },
}

struct Entry {
    storage: Weak<RwLock<Storage>>,
    offset: usize,
    kind: Kind,
    value: Arc<dyn Any + Send + Sync>,
    bytes: usize,
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
/// False while the cache is empty: writes then skip the lock (every optimizer step writes
/// every parameter).
static ANY: AtomicBool = AtomicBool::new(false);
/// Most bytes of prepared weights kept; the least recently used go first (ResNet-50's
/// small-plane layers and Winograd U at batch 1 take ~150 MiB; resnet18's U from batch 4,
/// its 512-channel layers included, ~150 MiB: peak RSS at batch 8 287 → 427 MB).
const MAX_BYTES: usize = 512 << 20;

/// The entry of `storage` at `offset` of this kind, or `make()` kept as one (the caller holds
/// the storage's read lock, so no write can come between making and keeping).
fn get_or_make<V: Any + Send + Sync>(
    storage: &Arc<RwLock<Storage>>,
    offset: usize,
    kind: Kind,
    make: impl FnOnce() -> (V, usize),
) -> Arc<V> {
    let matches = |e: &Entry| e.offset == offset && e.kind == kind && std::ptr::eq(e.storage.as_ptr(), Arc::as_ptr(storage));
    {
        let mut cache = lock();
        if let Some(i) = cache.iter().position(matches) {
            // Most recently used last, so eviction takes the least recently used.
            let e = cache.remove(i);
            let v = e.value.clone();
            cache.push(e);
            if let Ok(v) = v.downcast::<V>() {
                return v;
            }
        }
    }
    // Made without the cache's lock: making runs parallel kernels, and a pool worker that
    // blocked on the lock meanwhile would leave them waiting for it (a deadlock, seen with
    // two graphs run from two threads).
    let (v, bytes) = make();
    let v = Arc::new(v);
    let mut cache = lock();
    cache.retain(|e| e.storage.strong_count() > 0 && !matches(e));
    let mut total: usize = cache.iter().map(|e| e.bytes).sum::<usize>() + bytes;
    while total > MAX_BYTES && !cache.is_empty() {
        total -= cache.remove(0).bytes;
    }
    cache.push(Entry { storage: Arc::downgrade(storage), offset, kind, value: v.clone(), bytes });
    ANY.store(true, Ordering::Release);
    v
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The packed (m, k) matrix of the f32 weights `wd`, which are the values of `storage` from
/// `offset` (the caller holds its read lock): from the cache, or packed now and kept.
pub(crate) fn packed_weights(storage: &Arc<RwLock<Storage>>, offset: usize, wd: &[f32], m: usize, k: usize) -> Arc<PackedA> {
    get_or_make(storage, offset, Kind::Packed { m, k }, || {
        let p = PackedA::new(MatRef::row_major(&wd[..m * k], m, k));
        let bytes = p.m_padded() * k * 4;
        (p, bytes)
    })
}

/// Winograd's transformed (and, with AVX-512, packed) weights of the 3×3 f32 filters `wd` of
/// `g` (values of `storage` from `offset`, read-locked by the caller): from the cache, or
/// made now and kept.
pub(crate) fn winograd_u(storage: &Arc<RwLock<Storage>>, offset: usize, wd: &[f32], g: &ConvGeom) -> Arc<winograd::KeptU> {
    get_or_make(storage, offset, Kind::WinogradU { c_out: g.c_out, c_in: g.c_in }, || {
        let u = winograd::KeptU::new(g, wd);
        let bytes = u.bytes();
        (u, bytes)
    })
}

/// Drops `storage`'s entries: called by `Tensor::write_storage` while it holds the write lock.
pub(crate) fn forget(storage: &Arc<RwLock<Storage>>) {
    if !ANY.load(Ordering::Acquire) {
        return;
    }
    let mut cache = lock();
    cache.retain(|e| e.storage.strong_count() > 0 && !std::ptr::eq(e.storage.as_ptr(), Arc::as_ptr(storage)));
    ANY.store(!cache.is_empty(), Ordering::Release);
}

/// Number of prepared weight sets held (for tests).
pub fn cached_weights() -> usize {
    let cache = lock();
    cache.iter().filter(|e| e.storage.strong_count() > 0).count()
}
