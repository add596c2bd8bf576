//! The Tensor: shared storage + a layout + (when it was computed from tensors that require
//! grad) the [`Op`] that made it, which is all backward needs.

use crate::dtype::{DType, Elem, Storage};
use crate::layout::Layout;
use crate::op::Op;
use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct Inner {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<RwLock<Storage>>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    /// How this tensor was computed; None for leaves and for results made without grad.
    pub(crate) op: Option<Op>,
    pub(crate) requires_grad: AtomicBool,
    pub(crate) retain_grad: AtomicBool,
    /// Accumulated gradient: leaves that require grad, and non-leaves after `retain_grad`.
    pub(crate) grad: Mutex<Option<Tensor>>,
}

impl Drop for Inner {
    /// Inside a recycling scope, hands a storage that dies with this tensor (no view shares it)
    /// to the buffer free lists (see [`crate::recycle`]).
    fn drop(&mut self) {
        if !crate::recycle::active() {
            return;
        }
        if let Some(lock) = Arc::get_mut(&mut self.storage) {
            if let Ok(s) = lock.get_mut() {
                crate::recycle::give(std::mem::replace(s, Storage::U8(Vec::new())));
            }
        }
    }
}

/// An n-dimensional array with reverse-mode autograd. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

fn lock_err<T>(_: T) -> Error {
    Error::Backward("a tensor lock was poisoned by a panic in another thread".into())
}

impl Tensor {
    // ---------------------------------------------------------------- construction

    pub(crate) fn from_parts(storage: Arc<RwLock<Storage>>, layout: Layout, dtype: DType, op: Option<Op>) -> Tensor {
        let requires_grad = op.is_some();
        Tensor(Arc::new(Inner {
            id: TensorId::new(),
            storage,
            layout,
            dtype,
            op,
            requires_grad: AtomicBool::new(requires_grad),
            retain_grad: AtomicBool::new(false),
            grad: Mutex::new(None),
        }))
    }

    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Tensor {
        let dtype = storage.dtype();
        Tensor::from_parts(Arc::new(RwLock::new(storage)), Layout::contiguous(shape), dtype, None)
    }

    /// A result tensor computed from `op`'s inputs; records `op` only when grad is needed.
    pub(crate) fn from_op(storage: Storage, shape: &[usize], op: Op) -> Tensor {
        let op = if crate::grad_mode::is_grad_enabled() && op.inputs().iter().any(|t| t.requires_grad()) { Some(op) } else { None };
        let dtype = storage.dtype();
        Tensor::from_parts(Arc::new(RwLock::new(storage)), Layout::contiguous(shape), dtype, op)
    }

    /// A view of `self`'s storage with a new layout, recording `op` when grad is needed.
    pub(crate) fn view_op(&self, layout: Layout, op: Op) -> Tensor {
        let op = if crate::grad_mode::is_grad_enabled() && self.requires_grad() { Some(op) } else { None };
        Tensor::from_parts(self.0.storage.clone(), layout, self.0.dtype, op)
    }

    /// Builds a tensor from a flat row-major vector. `data.len()` must equal the shape's product.
    pub fn from_vec<T: Elem>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::bad_shape("from_vec", shape, format!("needs {n} elements, got {}", data.len())));
        }
        Ok(Tensor::from_storage(T::into_storage(data), shape))
    }
    pub fn from_slice<T: Elem>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }
    /// A 0-d tensor.
    pub fn scalar<T: Elem>(v: T) -> Tensor {
        Tensor::from_storage(T::into_storage(vec![v]), &[])
    }
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Tensor {
        let n = shape.iter().product();
        let s = crate::any_dispatch!(dtype, T => T::into_storage(vec![T::of_f64(value); n]));
        Tensor::from_storage(s, shape)
    }
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_storage(Storage::zeros(dtype, shape.iter().product()), shape)
    }
    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape(), self.dtype())
    }
    pub fn ones_like(&self) -> Tensor {
        Tensor::ones(self.shape(), self.dtype())
    }
    pub fn full_like(&self, v: f64) -> Tensor {
        Tensor::full(self.shape(), v, self.dtype())
    }
    /// `torch.arange(start, end, step)`.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType) -> Result<Tensor> {
        if step == 0.0 || (end - start) / step < 0.0 {
            return Err(Error::invalid("arange", format!("empty or infinite range {start}..{end} step {step}")));
        }
        let n = ((end - start) / step).ceil() as usize;
        let s = crate::any_dispatch!(dtype, T => T::into_storage((0..n).map(|i| T::of_f64(start + i as f64 * step)).collect()));
        Ok(Tensor::from_storage(s, &[n]))
    }
    /// `torch.eye(n)`.
    pub fn eye(n: usize, dtype: DType) -> Tensor {
        let mut v = vec![0.0f64; n * n];
        (0..n).for_each(|i| v[i * n + i] = 1.0);
        let s = crate::any_dispatch!(dtype, T => T::into_storage(v.iter().map(|&x| T::of_f64(x)).collect()));
        Tensor::from_storage(s, &[n, n])
    }

    // ---------------------------------------------------------------- accessors

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.layout.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape()
    }
    pub fn strides(&self) -> &[usize] {
        &self.0.layout.strides
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn ndim(&self) -> usize {
        self.shape().len()
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// `size(dim)` with PyTorch's negative-dim convention.
    pub fn size(&self, dim: isize) -> Result<usize> {
        Ok(self.shape()[self.norm_dim(dim, "size")?])
    }
    /// Normalises a possibly negative dim.
    pub fn norm_dim(&self, dim: isize, op: &'static str) -> Result<usize> {
        norm_dim(dim, self.ndim(), op)
    }
    /// True when this tensor is the only user of its whole, row-major storage.
    pub(crate) fn owns_storage(&self) -> bool {
        let l = &self.0.layout;
        Arc::strong_count(&self.0.storage) == 1
            && l.offset == 0
            && l.is_contiguous()
            && self.read_storage().map(|s| s.len() == l.numel()).unwrap_or(false)
    }
    /// True when both tensors view the same storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    pub(crate) fn read_storage(&self) -> Result<RwLockReadGuard<'_, Storage>> {
        self.0.storage.read().map_err(lock_err)
    }
    pub(crate) fn write_storage(&self) -> Result<RwLockWriteGuard<'_, Storage>> {
        let guard = self.0.storage.write().map_err(lock_err)?;
        // Under the write lock: no packed copy of the old values can be made after this.
        crate::prepared::forget(&self.0.storage);
        Ok(guard)
    }

    /// Runs `f` on the elements in logical order, borrowing the storage when contiguous.
    pub fn with_data<T: Elem, R>(&self, f: impl FnOnce(&[T]) -> R) -> Result<R> {
        let s = self.read_storage()?;
        let data = T::slice(&s).ok_or(Error::DType { op: "with_data", got: self.dtype(), expected: T::DTYPE.name() })?;
        let l = &self.0.layout;
        if l.is_contiguous() {
            Ok(f(&data[l.offset..l.offset + l.numel()]))
        } else {
            let mut v = Vec::with_capacity(l.numel());
            l.for_each_offset(|o| v.push(data[o]));
            Ok(f(&v))
        }
    }

    /// A row-major copy of the elements. The dtype must be exactly `T`.
    pub fn to_vec<T: Elem>(&self) -> Result<Vec<T>> {
        self.with_data(|d: &[T]| d.to_vec())
    }
    /// The elements as f64, whatever the dtype.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        crate::any_dispatch!(self.dtype(), T => self.with_data(|d: &[T]| d.iter().map(|v| v.as_f64()).collect()))
    }
    /// The elements as f32, whatever the dtype.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.to_f64_vec()?.into_iter().map(|v| v as f32).collect())
    }
    /// The single value of a one-element tensor (`.item()`).
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::bad_shape("item", self.shape(), "needs exactly one element"));
        }
        Ok(self.to_f64_vec()?[0])
    }

    /// Overwrites the elements in place (no autograd), e.g. for optimizer updates and running
    /// statistics. `f` gets a contiguous mutable slice; non-contiguous tensors are refused.
    pub fn update_data<T: Elem, R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        let l = self.0.layout.clone();
        if !l.is_contiguous() {
            return Err(Error::bad_shape("update_data", &l.shape, "in-place update needs a contiguous tensor"));
        }
        let mut s = self.write_storage()?;
        let got = s.dtype();
        let v = T::slice_mut(&mut s).ok_or(Error::DType { op: "update_data", got, expected: T::DTYPE.name() })?;
        Ok(f(&mut v[l.offset..l.offset + l.numel()]))
    }

    /// Copies `src`'s values into `self` in place (`tensor.copy_(src)`), converting the dtype.
    pub fn copy_(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::mismatch("copy_", self.shape(), src.shape()));
        }
        let vals = src.to_f64_vec()?;
        crate::any_dispatch!(self.dtype(), T => self.update_data(|d: &mut [T]| d.iter_mut().zip(&vals).for_each(|(a, &b)| *a = T::of_f64(b))))
    }

    // ---------------------------------------------------------------- autograd state

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }
    /// Marks a leaf as a parameter whose gradient backward accumulates (`requires_grad_`).
    pub fn set_requires_grad(&self, on: bool) -> Result<&Tensor> {
        if self.0.op.is_some() {
            return Err(Error::Backward("requires_grad can only be changed on leaf tensors (use detach)".into()));
        }
        if on && !self.dtype().is_float() {
            return Err(Error::DType { op: "requires_grad", got: self.dtype(), expected: "a float dtype" });
        }
        self.0.requires_grad.store(on, Ordering::Relaxed);
        Ok(self)
    }
    /// Builder form of [`Tensor::set_requires_grad`] for fresh leaves.
    pub fn requires_grad_(self) -> Result<Tensor> {
        self.set_requires_grad(true)?;
        Ok(self)
    }
    pub fn is_leaf(&self) -> bool {
        self.0.op.is_none()
    }
    pub(crate) fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }
    /// Keeps this non-leaf tensor's gradient after backward (Grad-CAM reads it at a layer output).
    pub fn retain_grad(&self) {
        self.0.retain_grad.store(true, Ordering::Relaxed);
    }
    pub(crate) fn retains_grad(&self) -> bool {
        self.0.retain_grad.load(Ordering::Relaxed)
    }
    /// The accumulated gradient, if any.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().ok().and_then(|g| g.clone())
    }
    pub fn set_grad(&self, g: Option<Tensor>) {
        if let Ok(mut slot) = self.0.grad.lock() {
            *slot = g;
        }
    }
    /// Clears the gradient (`zero_grad(set_to_none=True)`, PyTorch's default).
    pub fn zero_grad(&self) {
        self.set_grad(None);
    }
    pub(crate) fn accumulate_grad(&self, g: &Tensor) -> Result<()> {
        let mut slot = self.0.grad.lock().map_err(lock_err)?;
        let new = match slot.take() {
            Some(old) => old.add(g)?,
            // A fresh gradient that owns all of its storage is kept as is; one that shares
            // storage (a view, or the same tensor routed to two inputs) is copied, because
            // gradients may later be modified in place (clip_grad_norm_).
            None if g.owns_storage() => g.clone(),
            None => g.contiguous_copy()?,
        };
        *slot = Some(new);
        Ok(())
    }
    /// A tensor sharing this one's data but cut from the graph.
    pub fn detach(&self) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), self.0.layout.clone(), self.0.dtype, None)
    }
}

/// Normalises a possibly negative dim against `ndim`.
pub fn norm_dim(dim: isize, ndim: usize, op: &'static str) -> Result<usize> {
    let d = if dim < 0 { dim + ndim as isize } else { dim };
    if d < 0 || d as usize >= ndim.max(1) {
        return Err(Error::DimOutOfRange { op, dim, ndim });
    }
    Ok(d as usize)
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor(shape={:?}, dtype={}", self.shape(), self.dtype().name())?;
        if self.requires_grad() {
            write!(f, ", requires_grad=true")?;
        }
        write!(f, ")")
    }
}

/// PyTorch-like printing: `tensor([[1.0000, 2.0000], ...], dtype=...)`, long dims elided.
impl std::fmt::Display for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vals = match self.to_f64_vec() {
            Ok(v) => v,
            Err(e) => return write!(f, "<unreadable tensor: {e}>"),
        };
        let float = self.dtype().is_float();
        let fmt_v = |v: f64| if float { format!("{v:.4}") } else { format!("{v}") };
        fn rec(
            f: &mut std::fmt::Formatter<'_>,
            vals: &[f64],
            shape: &[usize],
            depth: usize,
            fmt_v: &dyn Fn(f64) -> String,
        ) -> std::fmt::Result {
            if shape.is_empty() {
                return write!(f, "{}", fmt_v(vals[0]));
            }
            let n = shape[0];
            let step: usize = shape[1..].iter().product();
            write!(f, "[")?;
            let show: Vec<usize> = if n > 6 { (0..3).chain(n - 3..n).collect() } else { (0..n).collect() };
            for (k, &i) in show.iter().enumerate() {
                if k > 0 {
                    write!(f, ",")?;
                    if shape.len() > 1 {
                        write!(f, "\n{}", " ".repeat(depth + 8))?;
                    } else {
                        write!(f, " ")?;
                    }
                }
                if n > 6 && k == 3 {
                    write!(f, "...,")?;
                    write!(f, "{}", if shape.len() > 1 { format!("\n{}", " ".repeat(depth + 8)) } else { " ".into() })?;
                }
                rec(f, &vals[i * step..(i + 1) * step], &shape[1..], depth + 1, fmt_v)?;
            }
            write!(f, "]")
        }
        write!(f, "tensor(")?;
        rec(f, &vals, self.shape(), 0, &fmt_v)?;
        if self.dtype() != DType::F32 && self.dtype() != DType::I64 {
            write!(f, ", dtype={}", self.dtype().name())?;
        }
        write!(f, ")")
    }
}
