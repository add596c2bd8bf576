//! Shape and indexing ops. Views (reshape of contiguous data, permute, transpose, narrow,
//! expand, squeeze, unsqueeze) rewrite the layout and share storage; the rest copy.

use crate::dtype::Elem;
use crate::layout::{contiguous_strides, Layout};
use crate::op::Op;
use crate::{any_dispatch, DType, Error, Result, Tensor};
use std::sync::Arc;

/// Padding mode of `pad`, as F.pad's `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Replicate,
    Circular,
}

impl Tensor {
    /// A row-major copy (used by backward and by ops that need plain memory).
    pub(crate) fn contiguous_copy(&self) -> Result<Tensor> {
        let s = any_dispatch!(self.dtype(), T => T::into_storage(self.to_vec::<T>()?));
        Ok(Tensor::from_storage(s, self.shape()))
    }

    /// The same values in row-major memory; returns `self` when already so.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let s = any_dispatch!(self.dtype(), T => T::into_storage(self.to_vec::<T>()?));
        Ok(Tensor::from_op(s, self.shape(), Op::Copy { x: self.clone() }))
    }

    /// Reshape to `shape` (same element count); a view when the data is contiguous.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::mismatch("reshape", self.shape(), shape));
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let src = self.contiguous()?;
        let layout = Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: src.layout().offset };
        Ok(src.view_op(layout, Op::Reshape { x: src.clone() }))
    }

    /// `view` with PyTorch's `-1` for one inferred dimension.
    pub fn view(&self, shape: &[isize]) -> Result<Tensor> {
        let known: usize = shape.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
        let infer = shape.iter().filter(|&&d| d < 0).count();
        if infer > 1 || (infer == 1 && (known == 0 || !self.numel().is_multiple_of(known))) {
            return Err(Error::bad_shape("view", self.shape(), format!("cannot view as {shape:?}")));
        }
        let s: Vec<usize> = shape.iter().map(|&d| if d < 0 { self.numel() / known.max(1) } else { d as usize }).collect();
        self.reshape(&s)
    }

    /// Reorders dims (`permute`); a view.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let n = self.ndim();
        let mut seen = vec![false; n];
        if perm.len() != n || perm.iter().any(|&p| p >= n || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::bad_shape("permute", self.shape(), format!("bad permutation {perm:?}")));
        }
        let l = self.layout();
        let layout = Layout {
            shape: perm.iter().map(|&p| l.shape[p]).collect(),
            strides: perm.iter().map(|&p| l.strides[p]).collect(),
            offset: l.offset,
        };
        Ok(self.view_op(layout, Op::Permute { x: self.clone(), perm: perm.to_vec() }))
    }

    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let (a, b) = (self.norm_dim(d0, "transpose")?, self.norm_dim(d1, "transpose")?);
        let mut perm: Vec<usize> = (0..self.ndim()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of a 2-d tensor.
    pub fn t(&self) -> Result<Tensor> {
        if self.ndim() != 2 {
            return Err(Error::bad_shape("t", self.shape(), "expects a 2-d tensor"));
        }
        self.transpose(0, 1)
    }

    /// Elements [start, start+len) along dim; a view.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = self.norm_dim(dim, "narrow")?;
        if start + len > self.shape()[d] {
            return Err(Error::bad_shape("narrow", self.shape(), format!("range {start}..{} exceeds dim {d}", start + len)));
        }
        let mut layout = self.layout().clone();
        layout.offset += start * layout.strides[d];
        layout.shape[d] = len;
        Ok(self.view_op(layout, Op::Narrow { x: self.clone(), dim: d, start }))
    }

    /// Broadcasts to `shape` with zero strides (`expand` / `broadcast_to`); a view.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let off = shape.len().checked_sub(self.ndim()).ok_or_else(|| Error::mismatch("broadcast_to", self.shape(), shape))?;
        let l = self.layout();
        let mut strides = vec![0; shape.len()];
        for (i, &d) in shape.iter().enumerate() {
            if i >= off {
                let sd = l.shape[i - off];
                if sd == d {
                    strides[i] = l.strides[i - off];
                } else if sd != 1 {
                    return Err(Error::mismatch("broadcast_to", self.shape(), shape));
                }
            }
        }
        let layout = Layout { shape: shape.to_vec(), strides, offset: l.offset };
        Ok(self.view_op(layout, Op::Expand { x: self.clone() }))
    }
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        self.broadcast_to(shape)
    }

    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let d = crate::tensor::norm_dim(dim, self.ndim() + 1, "unsqueeze")?;
        let mut s = self.shape().to_vec();
        s.insert(d, 1);
        self.reshape_view(&s)
    }
    /// Removes `dim` if it has size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = self.norm_dim(dim, "squeeze")?;
        if self.shape()[d] != 1 {
            return Ok(self.clone());
        }
        let mut s = self.shape().to_vec();
        s.remove(d);
        self.reshape_view(&s)
    }
    /// Removes every size-1 dim.
    pub fn squeeze_all(&self) -> Result<Tensor> {
        let s: Vec<usize> = self.shape().iter().copied().filter(|&d| d != 1).collect();
        self.reshape_view(&s)
    }
    /// Inserting or removing size-1 dims never needs a copy, even for strided tensors.
    fn reshape_view(&self, shape: &[usize]) -> Result<Tensor> {
        if self.is_contiguous() {
            return self.reshape(shape);
        }
        let l = self.layout();
        let kept: Vec<usize> = l.shape.iter().zip(&l.strides).filter(|(&d, _)| d != 1).map(|(_, &s)| s).collect();
        let mut k = kept.iter();
        let strides = shape.iter().map(|&d| if d == 1 { 0 } else { *k.next().unwrap_or(&0) }).collect();
        let layout = Layout { shape: shape.to_vec(), strides, offset: l.offset };
        Ok(self.view_op(layout, Op::Reshape { x: self.clone() }))
    }
    /// Flattens dims start..=end into one.
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.ndim() == 0 {
            return self.reshape(&[1]);
        }
        let (a, b) = (self.norm_dim(start, "flatten")?, self.norm_dim(end, "flatten")?);
        if a > b {
            return Err(Error::invalid("flatten", "start_dim after end_dim"));
        }
        let s = self.shape();
        let mut out: Vec<usize> = s[..a].to_vec();
        out.push(s[a..=b].iter().product());
        out.extend_from_slice(&s[b + 1..]);
        self.reshape(&out)
    }

    /// Concatenates along `dim`; all other dims must match.
    pub fn cat(xs: &[Tensor], dim: isize) -> Result<Tensor> {
        let first = xs.first().ok_or_else(|| Error::invalid("cat", "no tensors"))?;
        let d = first.norm_dim(dim, "cat")?;
        for x in xs {
            if x.dtype() != first.dtype()
                || x.ndim() != first.ndim()
                || x.shape().iter().enumerate().any(|(i, &s)| i != d && s != first.shape()[i])
            {
                return Err(Error::mismatch("cat", first.shape(), x.shape()));
            }
        }
        let outer: usize = first.shape()[..d].iter().product();
        let mut shape = first.shape().to_vec();
        shape[d] = xs.iter().map(|x| x.shape()[d]).sum();
        let s = any_dispatch!(first.dtype(), T => {
            let parts: Vec<Vec<T>> = xs.iter().map(|x| x.to_vec::<T>()).collect::<Result<_>>()?;
            let blocks: Vec<usize> = xs.iter().map(|x| x.numel() / outer.max(1)).collect();
            let mut out = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for (p, &bl) in parts.iter().zip(&blocks) {
                    out.extend_from_slice(&p[o * bl..(o + 1) * bl]);
                }
            }
            T::into_storage(out)
        });
        Ok(Tensor::from_op(s, &shape, Op::Cat { xs: xs.to_vec(), dim: d }))
    }

    /// Stacks equal-shaped tensors along a new dim.
    pub fn stack(xs: &[Tensor], dim: isize) -> Result<Tensor> {
        let first = xs.first().ok_or_else(|| Error::invalid("stack", "no tensors"))?;
        let d = crate::tensor::norm_dim(dim, first.ndim() + 1, "stack")?;
        let us: Vec<Tensor> = xs.iter().map(|x| x.unsqueeze(d as isize)).collect::<Result<_>>()?;
        Tensor::cat(&us, d as isize)
    }

    /// Splits into pieces of `size` along dim (the last may be smaller); views.
    pub fn split(&self, size: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = self.norm_dim(dim, "split")?;
        if size == 0 {
            return Err(Error::invalid("split", "split size must be positive"));
        }
        let n = self.shape()[d];
        (0..n).step_by(size).map(|s| self.narrow(d as isize, s, size.min(n - s))).collect()
    }
    /// Splits into `chunks` nearly equal pieces along dim (PyTorch's rounding).
    pub fn chunk(&self, chunks: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = self.norm_dim(dim, "chunk")?;
        if chunks == 0 {
            return Err(Error::invalid("chunk", "chunks must be positive"));
        }
        self.split(self.shape()[d].div_ceil(chunks).max(1), d as isize)
    }

    /// Picks entries `idx` (1-d int64) along dim.
    pub fn index_select(&self, dim: isize, idx: &Tensor) -> Result<Tensor> {
        let d = self.norm_dim(dim, "index_select")?;
        let iv = index_values(idx, "index_select", self.shape()[d])?;
        if idx.ndim() > 1 {
            return Err(Error::bad_shape("index_select", idx.shape(), "index must be 1-d"));
        }
        let outer: usize = self.shape()[..d].iter().product();
        let inner: usize = self.shape()[d + 1..].iter().product();
        let n = self.shape()[d];
        let mut shape = self.shape().to_vec();
        shape[d] = iv.len();
        // Borrow the data (no copy of the whole tensor: batching indexes a big dataset).
        let s = any_dispatch!(self.dtype(), T => {
            let out = self.with_data(|x: &[T]| {
                let mut out = Vec::with_capacity(outer * iv.len() * inner);
                for o in 0..outer {
                    for &i in &iv {
                        out.extend_from_slice(&x[(o * n + i) * inner..(o * n + i + 1) * inner]);
                    }
                }
                out
            })?;
            T::into_storage(out)
        });
        Ok(Tensor::from_op(s, &shape, Op::IndexSelect { x: self.clone(), dim: d, idx: idx.clone() }))
    }

    /// out[..i..] = self[..idx[..i..]..] along dim (`torch.gather`). idx has self's ndim.
    pub fn gather(&self, dim: isize, idx: &Tensor) -> Result<Tensor> {
        let d = self.norm_dim(dim, "gather")?;
        let offs = scatter_offsets(self.shape(), idx, d, "gather")?;
        let s = any_dispatch!(self.dtype(), T => T::into_storage(self.with_data(|x: &[T]| offs.iter().map(|&(o, _)| x[o]).collect::<Vec<T>>())?));
        Ok(Tensor::from_op(s, idx.shape(), Op::Gather { x: self.clone(), dim: d, idx: idx.clone() }))
    }

    /// A copy of self with src written at idx along dim (`scatter`), or added (`scatter_add`).
    fn scatter_impl(&self, dim: isize, idx: &Tensor, src: &Tensor, add: bool) -> Result<Tensor> {
        let d = self.norm_dim(dim, "scatter")?;
        if src.dtype() != self.dtype() {
            return Err(Error::invalid("scatter", "src dtype differs from self"));
        }
        let offs = scatter_offsets(self.shape(), idx, d, "scatter")?;
        if src.shape() != idx.shape() {
            return Err(Error::mismatch("scatter (src must have the index's shape)", src.shape(), idx.shape()));
        }
        let s = any_dispatch!(self.dtype(), T => {
            let mut out = self.to_vec::<T>()?;
            let sv = src.to_vec::<T>()?;
            for &(o, si) in &offs {
                out[o] = if add { T::of_f64(out[o].as_f64() + sv[si].as_f64()) } else { sv[si] };
            }
            T::into_storage(out)
        });
        Ok(Tensor::from_op(s, self.shape(), Op::Scatter { x: self.clone(), dim: d, idx: idx.clone(), src: src.clone(), add }))
    }
    pub fn scatter(&self, dim: isize, idx: &Tensor, src: &Tensor) -> Result<Tensor> {
        self.scatter_impl(dim, idx, src, false)
    }
    pub fn scatter_add(&self, dim: isize, idx: &Tensor, src: &Tensor) -> Result<Tensor> {
        self.scatter_impl(dim, idx, src, true)
    }

    /// Per-plane pixel remap of the last two dims: output (OH, OW), pixel j from input map[j]
    /// (or `fill` where map[j] < 0).
    pub(crate) fn plane_map(&self, map: Arc<Vec<i64>>, oh: usize, ow: usize, fill: f64) -> Result<Tensor> {
        let nd = self.ndim();
        if nd < 2 {
            return Err(Error::bad_shape("plane_map", self.shape(), "needs at least 2 dims"));
        }
        let (h, w) = (self.shape()[nd - 2], self.shape()[nd - 1]);
        let planes = self.numel() / (h * w).max(1);
        let mut shape = self.shape().to_vec();
        shape[nd - 2] = oh;
        shape[nd - 1] = ow;
        let s = any_dispatch!(self.dtype(), T => {
            let x = self.to_vec::<T>()?;
            let f = T::of_f64(fill);
            let mut out = Vec::with_capacity(planes * oh * ow);
            for p in 0..planes {
                let xp = &x[p * h * w..(p + 1) * h * w];
                out.extend(map.iter().map(|&m| if m < 0 { f } else { xp[m as usize] }));
            }
            T::into_storage(out)
        });
        Ok(Tensor::from_op(s, &shape, Op::PlaneMap { x: self.clone(), map }))
    }

    /// Pads the last two dims (`F.pad(x, (left, right, top, bottom), mode, value)`); for a
    /// (N, C, L) input give top = bottom = 0. Negative amounts crop.
    pub fn pad2d(&self, pad: [isize; 4], mode: PadMode, value: f64) -> Result<Tensor> {
        let nd = self.ndim();
        if nd < 2 {
            return Err(Error::bad_shape("pad", self.shape(), "needs at least 2 dims"));
        }
        let (h, w) = (self.shape()[nd - 2] as isize, self.shape()[nd - 1] as isize);
        let [l, r, t, b] = pad;
        let (oh, ow) = (h + t + b, w + l + r);
        if oh <= 0 || ow <= 0 {
            return Err(Error::bad_shape("pad", self.shape(), format!("padding {pad:?} leaves nothing")));
        }
        if mode == PadMode::Reflect && (l.max(r) >= w || t.max(b) >= h) {
            return Err(Error::bad_shape("pad", self.shape(), format!("reflect padding {pad:?} must be smaller than the input")));
        }
        if mode == PadMode::Circular && (l.max(r) > w || t.max(b) > h) {
            return Err(Error::bad_shape("pad", self.shape(), format!("circular padding {pad:?} larger than the input")));
        }
        let src = |i: isize, n: isize| -> isize {
            match mode {
                PadMode::Constant => {
                    if i < 0 || i >= n {
                        -1
                    } else {
                        i
                    }
                }
                PadMode::Reflect => {
                    if i < 0 {
                        -i
                    } else if i >= n {
                        2 * (n - 1) - i
                    } else {
                        i
                    }
                }
                PadMode::Replicate => i.clamp(0, n - 1),
                PadMode::Circular => i.rem_euclid(n),
            }
        };
        let mut map = Vec::with_capacity((oh * ow) as usize);
        for oy in 0..oh {
            for ox in 0..ow {
                let (iy, ix) = (src(oy - t, h), src(ox - l, w));
                map.push(if iy < 0 || ix < 0 { -1 } else { (iy * w + ix) as i64 });
            }
        }
        self.plane_map(Arc::new(map), oh as usize, ow as usize, value)
    }
}

/// Validated index values of an int64 tensor, each < `bound`.
pub(crate) fn index_values(idx: &Tensor, op: &'static str, bound: usize) -> Result<Vec<usize>> {
    if idx.dtype() != DType::I64 {
        return Err(Error::DType { op, got: idx.dtype(), expected: "int64 indices" });
    }
    idx.to_vec::<i64>()?
        .into_iter()
        .map(|i| {
            if i >= 0 && (i as usize) < bound {
                Ok(i as usize)
            } else {
                Err(Error::invalid(op, format!("index {i} out of range for size {bound}")))
            }
        })
        .collect()
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for i in (0..shape.len()).rev() {
        c[i] = flat % shape[i].max(1);
        flat /= shape[i].max(1);
    }
    c
}

/// For each element of idx (row-major): (offset into a contiguous tensor of `shape` with the
/// coordinate along `dim` replaced by the index value, flat position in idx).
pub(crate) fn scatter_offsets(shape: &[usize], idx: &Tensor, dim: usize, op: &'static str) -> Result<Vec<(usize, usize)>> {
    if idx.ndim() != shape.len() {
        return Err(Error::mismatch(op, shape, idx.shape()));
    }
    for (i, (&a, &b)) in shape.iter().zip(idx.shape()).enumerate() {
        if i != dim && b > a {
            return Err(Error::mismatch(op, shape, idx.shape()));
        }
    }
    let vals = index_values(idx, op, shape[dim])?;
    let strides = contiguous_strides(shape);
    Ok(vals
        .iter()
        .enumerate()
        .map(|(p, &v)| {
            let mut c = unravel(p, idx.shape());
            c[dim] = v;
            (c.iter().zip(&strides).map(|(a, b)| a * b).sum(), p)
        })
        .collect())
}
