//! Per-parameter optimizer state and the plumbing every optimizer shares: the float trait the
//! fused update kernels are generic over, the state buffers (`Buf`), borrowing a parameter and
//! its gradient as slices, and reading/writing a flat `state_dict` of named tensors.
//!
//! Legend: p = parameter, g = gradient, sd = state dict.

use crate::group::ParamGroup;
use cnnkit_core::{DType, Elem, Error, Result, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The element types the update kernels run on (f32, f64). Every scalar hyper-parameter is
/// cast to the parameter's dtype before use, as PyTorch does when it passes a Python float to
/// an in-place tensor op.
pub(crate) trait Real:
    Elem + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self>
{
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
    /// The buffer's storage when it holds this type.
    fn slot(b: &mut Buf) -> Option<&mut Vec<Self>>;
}

macro_rules! real {
    ($t:ty, $var:ident) => {
        impl Real for $t {
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn slot(b: &mut Buf) -> Option<&mut Vec<Self>> {
                match b {
                    Buf::$var(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
real!(f32, F32);
real!(f64, F64);

/// `torch.maximum`: the larger value, propagating NaN (unlike `f64::max`).
#[inline]
pub(crate) fn maximum<T: Real>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        if a.is_nan() {
            a
        } else {
            b
        }
    } else if a >= b {
        a
    } else {
        b
    }
}

/// `torch.lerp(start, end, w)` as ATen computes it (aten/src/ATen/native/Lerp.h): the form
/// chosen by the size of `w` keeps the result exact at both ends.
#[inline]
pub(crate) fn lerp<T: Real>(start: T, end: T, w: T, one: T, half: T) -> T {
    if w.abs() < half {
        start + w * (end - start)
    } else {
        end - (end - start) * (one - w)
    }
}

/// One state buffer (a momentum buffer, `exp_avg`, ...), kept in its parameter's dtype.
#[derive(Clone, Debug)]
pub(crate) enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Buf {
    /// A buffer of `n` copies of `v` in `dtype` (f32 or f64).
    pub(crate) fn full(dtype: DType, n: usize, v: f64) -> Result<Buf> {
        match dtype {
            DType::F32 => Ok(Buf::F32(vec![v as f32; n])),
            DType::F64 => Ok(Buf::F64(vec![v; n])),
            d => Err(Error::DType { op: "optimizer state", got: d, expected: "float32 or float64" }),
        }
    }
    pub(crate) fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::F64(v) => v.len(),
        }
    }
    /// The elements as a `T` slice of exactly `n` elements, or a typed error.
    pub(crate) fn get<T: Real>(&mut self, n: usize, op: &'static str) -> Result<&mut [T]> {
        let len = self.len();
        let got = match self {
            Buf::F32(_) => DType::F32,
            Buf::F64(_) => DType::F64,
        };
        let v = T::slot(self).ok_or(Error::DType { op, got, expected: T::DTYPE.name() })?;
        if len != n {
            return Err(Error::invalid(op, format!("state buffer has {len} elements but its parameter has {n}")));
        }
        Ok(v.as_mut_slice())
    }
    /// The buffer as a tensor of `shape` (for `state_dict`).
    pub(crate) fn to_tensor(&self, shape: &[usize]) -> Result<Tensor> {
        match self {
            Buf::F32(v) => Tensor::from_slice(v, shape),
            Buf::F64(v) => Tensor::from_slice(v, shape),
        }
    }
}

/// Borrows `p`'s storage mutably and `g`'s as a slice, both as `T`, and runs the fused update
/// `f` on them. The gradient must have the parameter's shape and dtype.
pub(crate) fn with_param_grad<T: Real, R>(
    p: &Tensor,
    g: &Tensor,
    op: &'static str,
    f: impl FnOnce(&mut [T], &[T]) -> Result<R>,
) -> Result<R> {
    if g.shape() != p.shape() {
        return Err(Error::mismatch(op, p.shape(), g.shape()));
    }
    if g.dtype() != p.dtype() {
        return Err(Error::DType { op, got: g.dtype(), expected: p.dtype().name() });
    }
    // A gradient that aliases its parameter's storage would deadlock the read lock under the
    // write lock; copy it first (never the case for gradients backward produces).
    let g = if g.same_storage(p) { Tensor::from_vec(g.to_vec::<T>()?, g.shape())? } else { g.clone() };
    g.with_data(|gs: &[T]| p.update_data(|ps: &mut [T]| f(ps, gs)))??
}

/// Every parameter of every group, in PyTorch's state_dict order (indices run on across groups).
pub(crate) fn flat_params(groups: &[ParamGroup]) -> Vec<Tensor> {
    groups.iter().flat_map(|g| g.params.iter().cloned()).collect()
}

/// A 0-d f64 tensor holding `v` (how scalar hyper-parameters and step counts are saved).
pub(crate) fn scalar(v: f64) -> Tensor {
    Tensor::scalar(v)
}

pub(crate) fn sd_err(msg: impl Into<String>) -> Error {
    Error::StateDict(msg.into())
}

/// Reads an optimizer's keys out of a state dict, remembering which it used so that `finish`
/// can refuse keys this optimizer does not know (a checkpoint from a different optimizer).
pub(crate) struct DictReader<'a> {
    sd: &'a BTreeMap<String, Tensor>,
    used: BTreeSet<&'a str>,
}

impl<'a> DictReader<'a> {
    pub(crate) fn new(sd: &'a BTreeMap<String, Tensor>) -> Self {
        DictReader { sd, used: BTreeSet::new() }
    }
    fn take(&mut self, key: &str) -> Option<&'a Tensor> {
        let (k, t) = self.sd.get_key_value(key)?;
        self.used.insert(k.as_str());
        Some(t)
    }
    /// True when the dict holds `key`.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.sd.contains_key(key)
    }
    /// A one-element tensor's value, if present.
    pub(crate) fn scalar_opt(&mut self, key: &str) -> Result<Option<f64>> {
        match self.take(key) {
            None => Ok(None),
            Some(t) if t.numel() == 1 => Ok(Some(t.item()?)),
            Some(t) => Err(sd_err(format!("{key}: expected one value, got shape {:?}", t.shape()))),
        }
    }
    /// A one-element tensor's value; missing is an error.
    pub(crate) fn scalar(&mut self, key: &str) -> Result<f64> {
        self.scalar_opt(key)?.ok_or_else(|| sd_err(format!("missing key {key}")))
    }
    /// A 0/1 flag.
    pub(crate) fn flag(&mut self, key: &str) -> Result<bool> {
        Ok(self.scalar(key)? != 0.0)
    }
    /// The values of a small 1-d tensor.
    pub(crate) fn vector(&mut self, key: &str) -> Result<Vec<f64>> {
        self.take(key).ok_or_else(|| sd_err(format!("missing key {key}")))?.to_f64_vec()
    }
    /// A state buffer for parameter `p`: must have `p`'s shape; is converted to `p`'s dtype
    /// (as PyTorch casts floating-point state to its parameter's dtype on load).
    pub(crate) fn buf_opt(&mut self, key: &str, p: &Tensor) -> Result<Option<Buf>> {
        let Some(t) = self.take(key) else { return Ok(None) };
        if t.shape() != p.shape() {
            return Err(Error::StateDict(format!("{key}: shape {:?} does not match its parameter's shape {:?}", t.shape(), p.shape())));
        }
        if !t.dtype().is_float() {
            return Err(Error::DType { op: "load_state_dict", got: t.dtype(), expected: "a float dtype" });
        }
        let v = t.to_f64_vec()?;
        Ok(Some(match p.dtype() {
            DType::F32 => Buf::F32(v.into_iter().map(|x| x as f32).collect()),
            DType::F64 => Buf::F64(v),
            d => return Err(Error::DType { op: "load_state_dict", got: d, expected: "float32 or float64" }),
        }))
    }
    /// Like [`DictReader::buf_opt`] but the key must be present.
    pub(crate) fn buf(&mut self, key: &str, p: &Tensor) -> Result<Buf> {
        self.buf_opt(key, p)?.ok_or_else(|| sd_err(format!("missing key {key}")))
    }
    /// Refuses `state.*` / `param_groups.*` keys nothing read (other keys, e.g. a model's, are
    /// left alone so one checkpoint can hold both).
    pub(crate) fn finish(self) -> Result<()> {
        let unknown: Vec<&str> = self
            .sd
            .keys()
            .map(|k| k.as_str())
            .filter(|k| (k.starts_with("state.") || k.starts_with("param_groups.")) && !self.used.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(sd_err(format!("unexpected keys for this optimizer: {}", unknown.join(", "))))
        }
    }
}
