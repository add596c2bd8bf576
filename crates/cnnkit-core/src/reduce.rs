//! Reductions along dims with keepdim: sum, mean, max/min (with indices), argmax, var/std,
//! logsumexp. Sums accumulate in f64 so f32 results match PyTorch to rounding.

use crate::dtype::Elem;
use crate::op::Op;
use crate::{float_dispatch, Error, Result, Tensor};

impl Tensor {
    fn norm_dims(&self, dims: &[isize], op: &'static str) -> Result<Vec<usize>> {
        let mut v: Vec<usize> = dims.iter().map(|&d| self.norm_dim(d, op)).collect::<Result<_>>()?;
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    /// (view of self with reduced dims last, kept dims, product of reduced sizes).
    fn reduce_view(&self, dims: &[usize]) -> Result<(Tensor, usize)> {
        let kept: Vec<usize> = (0..self.ndim()).filter(|d| !dims.contains(d)).collect();
        let perm: Vec<usize> = kept.iter().chain(dims).copied().collect();
        let r: usize = dims.iter().map(|&d| self.shape()[d]).product();
        Ok((self.detach().permute(&perm)?, r))
    }

    fn keepdim_shape(&self, dims: &[usize]) -> Vec<usize> {
        self.shape().iter().enumerate().map(|(i, &s)| if dims.contains(&i) { 1 } else { s }).collect()
    }

    fn maybe_squeeze(t: Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        if keepdim {
            return Ok(t);
        }
        let s: Vec<usize> = t.shape().iter().enumerate().filter(|(i, _)| !dims.contains(i)).map(|(_, &d)| d).collect();
        t.reshape(&s)
    }

    /// Sum over `dims` (empty: all dims).
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let dims = if dims.is_empty() { (0..self.ndim()).collect() } else { self.norm_dims(dims, "sum")? };
        let (v, r) = self.reduce_view(&dims)?;
        let s = float_dispatch!("sum", self.dtype(), T => {
            let out: Vec<T> = v.with_data(|d: &[T]| {
                if r == 0 {
                    vec![T::of_f64(0.0); self.numel()]
                } else {
                    cnnkit_kernels::simd::row_sums(d, r).into_iter().map(T::of_f64).collect()
                }
            })?;
            T::into_storage(out)
        });
        let t = Tensor::from_op(s, &self.keepdim_shape(&dims), Op::Sum { x: self.clone(), dims: dims.clone() });
        Tensor::maybe_squeeze(t, &dims, keepdim)
    }
    /// Sum of every element, as a 0-d tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&[], false)
    }
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let dims_n = if dims.is_empty() { (0..self.ndim()).collect() } else { self.norm_dims(dims, "mean")? };
        let n: usize = dims_n.iter().map(|&d| self.shape()[d]).product();
        self.sum(dims, keepdim)?.mul_scalar(1.0 / n as f64)
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&[], false)
    }

    /// Variance with Bessel's `correction` (1 = unbiased, PyTorch's default; 0 = biased).
    pub fn var(&self, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        let dims_n = if dims.is_empty() { (0..self.ndim()).collect() } else { self.norm_dims(dims, "var")? };
        let n: usize = dims_n.iter().map(|&d| self.shape()[d]).product();
        let mu = self.mean(dims, true)?;
        let dev = self.sub(&mu)?.square()?;
        dev.sum(dims, keepdim)?.mul_scalar(1.0 / (n as f64 - correction as f64).max(0.0))
    }
    pub fn std(&self, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        self.var(dims, correction, keepdim)?.sqrt()
    }

    fn select_dim(&self, dim: isize, keepdim: bool, want_max: bool) -> Result<(Tensor, Tensor)> {
        let d = self.norm_dim(dim, if want_max { "max" } else { "min" })?;
        if self.shape().get(d).copied().unwrap_or(1) == 0 {
            return Err(Error::bad_shape("max/min", self.shape(), "cannot reduce an empty dim"));
        }
        let (v, r) = self.reduce_view(&[d])?;
        let (s, idx) = float_dispatch!("max/min", self.dtype(), T => {
            let (vals, idx): (Vec<T>, Vec<i64>) = v.with_data(|data: &[T]| {
                data.chunks(r.max(1)).map(|c| {
                    let mut bi = 0;
                    for (i, &x) in c.iter().enumerate() {
                        let better = if want_max { x > c[bi] } else { x < c[bi] };
                        if c[bi].as_f64().is_nan() { break; }
                        if better || x.as_f64().is_nan() { bi = i; }
                    }
                    (c[bi], bi as i64)
                }).unzip()
            })?;
            (T::into_storage(vals), idx)
        });
        let kshape = self.keepdim_shape(&[d]);
        let idx = Tensor::from_vec(idx, &kshape)?;
        let t = Tensor::from_op(s, &kshape, Op::SelectDim { x: self.clone(), dim: d, idx: idx.clone() });
        Ok((Tensor::maybe_squeeze(t, &[d], keepdim)?, Tensor::maybe_squeeze(idx, &[d], keepdim)?))
    }
    /// (values, indices) of the maximum along dim (`torch.max(x, dim)`).
    pub fn max_dim(&self, dim: isize, keepdim: bool) -> Result<(Tensor, Tensor)> {
        self.select_dim(dim, keepdim, true)
    }
    pub fn min_dim(&self, dim: isize, keepdim: bool) -> Result<(Tensor, Tensor)> {
        self.select_dim(dim, keepdim, false)
    }
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        Ok(self.max_dim(dim, keepdim)?.1)
    }
    pub fn argmin(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        Ok(self.min_dim(dim, keepdim)?.1)
    }
    /// Maximum of all elements (0-d). Its gradient is shared evenly among tied maxima, as
    /// PyTorch's `x.max()` (unlike `max_dim`, which picks the first).
    pub fn max_all(&self) -> Result<Tensor> {
        self.extreme_all(true)
    }
    /// Minimum of all elements (0-d); ties share the gradient as in [`Tensor::max_all`].
    pub fn min_all(&self) -> Result<Tensor> {
        self.extreme_all(false)
    }
    fn extreme_all(&self, want_max: bool) -> Result<Tensor> {
        let flat = self.flatten(0, -1)?;
        let m = if want_max { flat.max_dim(0, false)?.0 } else { flat.min_dim(0, false)?.0 };
        if !self.requires_grad() || !crate::grad_mode::is_grad_enabled() || !m.item()?.is_finite() {
            return Ok(m);
        }
        let tied = self.eq(&m.detach())?;
        let k = tied.count_nonzero()?;
        if k <= 1 {
            return Ok(m);
        }
        // The mean of the k tied elements carries the gradient (g/k each); adding it as
        // s − detach(s), an exact zero, keeps the value exactly m (s itself may round).
        let s = Tensor::where_cond(&tied, self, &self.zeros_like())?.sum_all()?.div_scalar(k as f64)?;
        m.detach().add(&s.sub(&s.detach())?)
    }

    /// log Σ exp along dim, computed stably around the maximum.
    pub fn logsumexp(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let m = self.max_dim(dim, true)?.0.detach();
        let m = Tensor::where_cond(&m.abs()?.eq_scalar(f64::INFINITY)?, &m.zeros_like(), &m)?;
        let s = self.sub(&m)?.exp()?.sum(&[dim], true)?.log()?.add(&m)?;
        if keepdim {
            Ok(s)
        } else {
            s.squeeze(dim)
        }
    }

    /// Sums a broadcast gradient back down to `shape` (the inverse of broadcasting).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let extra = self.ndim().checked_sub(shape.len()).ok_or_else(|| Error::mismatch("sum_to", self.shape(), shape))?;
        let mut dims: Vec<isize> = (0..extra as isize).collect();
        for (i, &s) in shape.iter().enumerate() {
            if s == 1 && self.shape()[extra + i] != 1 {
                dims.push((extra + i) as isize);
            }
        }
        let r = if dims.is_empty() { self.clone() } else { self.sum(&dims, true)? };
        r.reshape(shape)
    }

    /// Number of nonzero elements, for masks and accuracy counting.
    pub fn count_nonzero(&self) -> Result<usize> {
        Ok(self.to_f64_vec()?.iter().filter(|&&v| v != 0.0).count())
    }
}
