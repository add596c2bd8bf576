//! Forward hooks (`register_forward_hook`): a callback that sees a module's input and output
//! each time it runs, and may replace the output. Grad-CAM and feature extraction use them.
//!
//! Hooks live in a process-wide table keyed by the module's identity (address and size), so
//! layers carry no hook fields. Register on a module at its final place in memory (after the
//! model is built and no longer moved); the returned handle removes the hook when dropped.

use crate::module::{hook_key, Module, ModuleExt};
use cnnkit_core::{Error, Result, Tensor};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// (input, output) → optionally a replacement output.
pub type HookFn = dyn Fn(&Tensor, &Tensor) -> Option<Tensor> + Send + Sync;

struct Entry {
    id: u64,
    key: (usize, usize),
    f: Arc<HookFn>,
}

static HOOKS: RwLock<Vec<Entry>> = RwLock::new(Vec::new());
static COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Removes its hook when dropped (or explicitly with [`HookHandle::remove`]).
#[must_use = "the hook is removed when the handle is dropped"]
pub struct HookHandle {
    id: u64,
}

impl HookHandle {
    pub fn remove(self) {}
}

impl Drop for HookHandle {
    fn drop(&mut self) {
        if let Ok(mut h) = HOOKS.write() {
            h.retain(|e| e.id != self.id);
            COUNT.store(h.len(), Ordering::Release);
        }
    }
}

/// Registers `f` to run after every forward of `module`.
pub fn register_forward_hook<M: Module + ?Sized>(
    module: &M,
    f: impl Fn(&Tensor, &Tensor) -> Option<Tensor> + Send + Sync + 'static,
) -> HookHandle {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut h = HOOKS.write().unwrap_or_else(|p| p.into_inner());
    h.push(Entry { id, key: hook_key(module), f: Arc::new(f) });
    COUNT.store(h.len(), Ordering::Release);
    HookHandle { id }
}

/// Registers a hook on the submodule at dotted `path` ("layer4", "features.28").
pub fn register_forward_hook_at<M: Module + Sized>(
    model: &M,
    path: &str,
    f: impl Fn(&Tensor, &Tensor) -> Option<Tensor> + Send + Sync + 'static,
) -> Result<HookHandle> {
    let m = model.get_submodule(path).ok_or_else(|| Error::invalid("register_forward_hook", format!("no submodule named '{path}'")))?;
    Ok(register_forward_hook(m, f))
}

/// True when a hook is registered for `key`.
pub(crate) fn any(key: (usize, usize)) -> bool {
    COUNT.load(Ordering::Acquire) > 0 && HOOKS.read().map_or(true, |h| h.iter().any(|e| e.key == key))
}

/// Runs the hooks registered for `key` on (x, y); cheap when no hook exists anywhere.
pub(crate) fn run(key: (usize, usize), x: &Tensor, y: Tensor) -> Result<Tensor> {
    if COUNT.load(Ordering::Acquire) == 0 {
        return Ok(y);
    }
    let fs: Vec<Arc<HookFn>> = match HOOKS.read() {
        Ok(h) => h.iter().filter(|e| e.key == key).map(|e| e.f.clone()).collect(),
        Err(_) => return Ok(y),
    };
    let mut y = y;
    for f in fs {
        if let Some(r) = f(x, &y) {
            y = r;
        }
    }
    Ok(y)
}
