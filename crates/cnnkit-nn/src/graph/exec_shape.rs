//! Executor arms for the data-movement, shape and integer ops (Reshape, Slice, Gather, …),
//! following the ONNX operator specs.

use super::exec::{axis, fail, ints, pad, resize, E, R};
use super::GraphOp;
use cnnkit_core::elementwise::broadcast_shape;
use cnnkit_core::{DType, Tensor};

fn req<'a>(args: &'a [Option<Tensor>], i: usize, what: &str) -> R<&'a Tensor> {
    match args.get(i) {
        Some(Some(t)) => Ok(t),
        _ => fail(format!("missing required input {i} ({what})")),
    }
}

fn opt(args: &[Option<Tensor>], i: usize) -> Option<&Tensor> {
    args.get(i).and_then(|a| a.as_ref())
}

/// Reshape's output shape: 0 copies the input dim (unless allowzero), one −1 is inferred.
pub(crate) fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
    if spec.iter().any(|&s| s > MAX_ELEMS as i64) {
        return fail(format!("invalid shape {spec:?}"));
    }
    let numel: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| E(format!("shape {spec:?}: 0 at {i} has no input dim to copy")))?),
            s if s >= 0 => out.push(s as usize),
            _ => return fail(format!("invalid shape {spec:?}")),
        }
    }
    if let Some(i) = infer {
        let known = checked_numel(&out)?;
        if known == 0 || !numel.is_multiple_of(known) {
            return fail(format!("cannot reshape {input:?} to {spec:?}"));
        }
        out[i] = numel / known;
    }
    if checked_numel(&out)? != numel {
        return fail(format!("cannot reshape {input:?} to {spec:?}"));
    }
    Ok(out)
}

/// The most elements a tensor built from graph-supplied sizes may have (2³¹): a malformed
/// model must fail, not exhaust memory or overflow.
pub(crate) const MAX_ELEMS: usize = 1 << 31;

/// The element count of `shape`, or an error when it exceeds [`MAX_ELEMS`].
pub(crate) fn checked_numel(shape: &[usize]) -> R<usize> {
    shape
        .iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d).filter(|&n| n <= MAX_ELEMS))
        .ok_or_else(|| E(format!("shape {shape:?} is too large")))
}

/// Sizes from an int64 shape input: negative entries are errors.
fn sizes(v: Vec<i64>) -> R<Vec<usize>> {
    let s: Vec<usize> = v.iter().map(|&d| usize::try_from(d).map_err(|_| E(format!("negative size in {v:?}")))).collect::<R<_>>()?;
    checked_numel(&s)?;
    Ok(s)
}

/// One sliced axis: (axis, first index, step, count), clamped as the ONNX Slice spec says.
pub(crate) fn slice_plan(
    dims: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> R<Vec<(usize, i64, i64, usize)>> {
    if starts.len() != ends.len() {
        return fail("starts and ends differ in length");
    }
    let mut plan = Vec::new();
    for i in 0..starts.len() {
        let a = axis(axes.map_or(i as i64, |a| a.get(i).copied().unwrap_or(i as i64)), dims.len())?;
        let d = dims[a] as i64;
        // Steps beyond the axis length behave like the axis length (and cannot overflow).
        let step = steps.and_then(|s| s.get(i).copied()).unwrap_or(1).clamp(-d - 1, d + 1);
        if step == 0 {
            return fail("slice step 0 (or an empty axis)");
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (s, e) = (norm(starts[i]), norm(ends[i]));
        let (s, e) = if step > 0 { (s.clamp(0, d), e.clamp(0, d)) } else { (s.clamp(0, d - 1), e.clamp(-1, d - 1)) };
        let n = if step > 0 { ((e - s).max(0) + step - 1) / step } else { ((s - e).max(0) - step - 1) / -step };
        plan.push((a, s, step, n.max(0) as usize));
    }
    Ok(plan)
}

/// Normalised, sorted axes of an axes input (for Squeeze/Unsqueeze/Reduce*).
fn axes_of(t: Option<&Tensor>, rank: usize) -> R<Option<Vec<usize>>> {
    let Some(t) = t else { return Ok(None) };
    let mut a: Vec<usize> = ints(t)?.into_iter().map(|a| axis(a, rank)).collect::<R<_>>()?;
    a.sort_unstable();
    a.dedup();
    Ok(Some(a))
}

pub(crate) fn squeeze_shape(shape: &[usize], axes: Option<&[usize]>) -> R<Vec<usize>> {
    match axes {
        None => Ok(shape.iter().copied().filter(|&d| d != 1).collect()),
        Some(a) => {
            if let Some(&bad) = a.iter().find(|&&a| shape[a] != 1) {
                return fail(format!("cannot squeeze axis {bad} of shape {shape:?}"));
            }
            Ok(shape.iter().enumerate().filter(|(i, _)| !a.contains(i)).map(|(_, &d)| d).collect())
        }
    }
}

pub(crate) fn unsqueeze_shape<D: Copy>(shape: &[D], axes: &[i64], one: D) -> R<Vec<D>> {
    let r = shape.len() + axes.len();
    let mut a: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<R<_>>()?;
    a.sort_unstable();
    let mut out = Vec::with_capacity(r);
    let mut it = shape.iter();
    for i in 0..r {
        if a.binary_search(&i).is_ok() {
            out.push(one);
        } else {
            out.push(*it.next().ok_or_else(|| E(format!("duplicate Unsqueeze axes {axes:?}")))?);
        }
    }
    Ok(out)
}

/// Split sizes along an axis of length `len`.
pub(crate) fn split_sizes(len: usize, sizes: Option<Vec<i64>>, parts: usize) -> R<Vec<usize>> {
    match sizes {
        Some(s) => {
            if s.iter().any(|&v| v < 0) || s.iter().map(|&v| v as i128).sum::<i128>() != len as i128 {
                return fail(format!("split sizes {s:?} do not sum to {len}"));
            }
            Ok(s.into_iter().map(|v| v as usize).collect())
        }
        None => {
            if parts == 0 {
                return fail("split into zero parts");
            }
            // Opset 18: the last chunk is smaller when the axis does not divide evenly.
            let c = len.div_ceil(parts);
            Ok((0..parts).map(|i| c.min(len.saturating_sub(i * c))).collect())
        }
    }
}

pub(crate) fn eval_shape_op(op: &GraphOp, args: &[Option<Tensor>], n_out: usize) -> R<Vec<Tensor>> {
    use GraphOp::*;
    let x = || req(args, 0, "data");
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Flatten { axis: a } => {
            let x = x()?;
            let k = if *a == x.ndim() as i64 { x.ndim() } else { axis(*a, x.ndim())? };
            let outer: usize = x.shape()[..k].iter().product();
            one(x.reshape(&[outer, x.numel() / outer.max(1)])?)
        }
        Reshape { allowzero } => {
            let x = x()?;
            one(x.reshape(&reshape_target(x.shape(), &ints(req(args, 1, "shape")?)?, *allowzero)?)?)
        }
        Transpose { perm } => {
            let x = x()?;
            let p: Vec<usize> = if perm.is_empty() { (0..x.ndim()).rev().collect() } else { perm.clone() };
            one(x.permute(&p)?)
        }
        Concat { axis: a } => {
            let xs: Vec<Tensor> = args.iter().flatten().cloned().collect();
            let first = xs.first().ok_or_else(|| E("no inputs".into()))?;
            let d = axis(*a, first.ndim())?;
            one(Tensor::cat(&xs, d as isize)?)
        }
        Split { axis: a, num_outputs } => {
            let x = x()?;
            let d = axis(*a, x.ndim())?;
            let sizes = split_sizes(x.shape()[d], opt(args, 1).map(ints).transpose()?, num_outputs.unwrap_or(n_out))?;
            if sizes.len() != n_out {
                return fail(format!("{} split sizes for {n_out} outputs", sizes.len()));
            }
            let mut start = 0;
            let mut out = Vec::new();
            for s in sizes {
                out.push(x.narrow(d as isize, start, s)?);
                start += s;
            }
            Ok(out)
        }
        Slice => {
            let x = x()?;
            let (st, en) = (ints(req(args, 1, "starts")?)?, ints(req(args, 2, "ends")?)?);
            let axes = opt(args, 3).map(ints).transpose()?;
            let steps = opt(args, 4).map(ints).transpose()?;
            let mut y = x.clone();
            for (a, s, step, n) in slice_plan(x.shape(), &st, &en, axes.as_deref(), steps.as_deref())? {
                y = if step == 1 {
                    y.narrow(a as isize, s as usize, n)?
                } else {
                    let idx: Vec<i64> = (0..n as i64).map(|i| s + i * step).collect();
                    y.index_select(a as isize, &Tensor::from_vec(idx, &[n])?)?
                };
            }
            one(y)
        }
        Squeeze => {
            let x = x()?;
            let a = axes_of(opt(args, 1), x.ndim())?;
            one(x.reshape(&squeeze_shape(x.shape(), a.as_deref())?)?)
        }
        Unsqueeze => {
            let x = x()?;
            one(x.reshape(&unsqueeze_shape(x.shape(), &ints(req(args, 1, "axes")?)?, 1)?)?)
        }
        Shape { start, end } => {
            let x = x()?;
            let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
            let (s, e) = shape_range(dims.len(), *start, *end);
            one(Tensor::from_vec(dims[s..e].to_vec(), &[e - s])?)
        }
        Gather { axis: a } => {
            let (x, idx) = (x()?, req(args, 1, "indices")?);
            let d = axis(*a, x.ndim())?;
            let n = x.shape()[d] as i64;
            let iv: Vec<i64> = ints(idx)?.into_iter().map(|i| if i < 0 { i + n } else { i }).collect();
            if let Some(bad) = iv.iter().find(|&&i| i < 0 || i >= n) {
                return fail(format!("index {bad} out of range for axis {d} of size {n}"));
            }
            let picked = x.index_select(d as isize, &Tensor::from_vec(iv.clone(), &[iv.len()])?)?;
            let mut shape = x.shape()[..d].to_vec();
            shape.extend_from_slice(idx.shape());
            shape.extend_from_slice(&x.shape()[d + 1..]);
            one(picked.reshape(&shape)?)
        }
        Softmax { axis: a } | LogSoftmax { axis: a } => {
            let x = x()?;
            let d = axis(*a, x.ndim())? as isize;
            one(if matches!(op, Softmax { .. }) { x.softmax(d)? } else { x.log_softmax(d)? })
        }
        ReduceMean { keepdims, noop_with_empty_axes } | ReduceSum { keepdims, noop_with_empty_axes } => {
            let x = x()?;
            let axes = axes_of(opt(args, 1).filter(|t| t.numel() > 0), x.ndim())?;
            let axes = match axes {
                Some(a) => a,
                None if *noop_with_empty_axes => return one(x.clone()),
                None => (0..x.ndim()).collect(),
            };
            let dims: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
            one(if matches!(op, ReduceMean { .. }) { x.mean(&dims, *keepdims)? } else { x.sum(&dims, *keepdims)? })
        }
        Pad { mode } => {
            let x = x()?;
            let pads = ints(req(args, 1, "pads")?)?;
            let value = match opt(args, 2) {
                Some(v) if v.numel() == 1 => v.to_f64_vec()?[0],
                Some(v) if v.numel() > 1 => return fail("constant_value must be a scalar"),
                _ => 0.0,
            };
            one(pad(x, &pads, value, opt(args, 3).map(ints).transpose()?, *mode)?)
        }
        Resize { .. } => one(resize(x()?, opt(args, 2), opt(args, 3), op)?),
        DepthToSpace { blocksize: b, crd } => {
            let x = x()?;
            if x.ndim() != 4 || *b == 0 || x.shape()[1] % (b * b) != 0 {
                return fail(format!("input has shape {:?} but DepthToSpace needs (N, C·{b}², H, W)", x.shape()));
            }
            let (n, c, h, w) = (x.shape()[0], x.shape()[1] / (b * b), x.shape()[2], x.shape()[3]);
            let y = if *crd {
                x.reshape(&[n, c, *b, *b, h, w])?.permute(&[0, 1, 4, 2, 5, 3])?
            } else {
                x.reshape(&[n, *b, *b, c, h, w])?.permute(&[0, 3, 4, 1, 5, 2])?
            };
            one(y.reshape(&[n, c, h * b, w * b])?)
        }
        Dropout | Identity => {
            let x = x()?.clone();
            let mut out = vec![x.clone()];
            if n_out > 1 {
                out.push(Tensor::ones(x.shape(), DType::U8));
            }
            Ok(out)
        }
        Cast { to } => {
            let x = x()?;
            if *to == DType::U8 && x.dtype() != DType::U8 {
                // Cast to bool: non-zero is true.
                return one(x.to_dtype(DType::F64)?.ne(&Tensor::zeros(&[], DType::F64))?);
            }
            one(x.to_dtype(*to)?)
        }
        ConstantOfShape { value, dtype } => {
            let s = sizes(ints(x()?)?)?;
            one(Tensor::full(&s, *value, *dtype))
        }
        Expand => {
            let x = x()?;
            let s = sizes(ints(req(args, 1, "shape")?)?)?;
            let target = broadcast_shape(x.shape(), &s).ok_or_else(|| E(format!("cannot expand {:?} to {s:?}", x.shape())))?;
            one(x.broadcast_to(&target)?)
        }
        Equal => one(x()?.eq(req(args, 1, "B")?)?),
        Where => {
            let (c, a, b) = (x()?, req(args, 1, "X")?, req(args, 2, "Y")?);
            let c = if c.dtype() == DType::U8 { c.clone() } else { c.to_dtype(DType::F64)?.ne(&Tensor::zeros(&[], DType::F64))? };
            one(Tensor::where_cond(&c, a, b)?)
        }
        Range => {
            let (s, l, d) = (x()?, req(args, 1, "limit")?, req(args, 2, "delta")?);
            let (s0, l0, d0) = (s.to_f64_vec()?, l.to_f64_vec()?, d.to_f64_vec()?);
            let (Some(&s0), Some(&l0), Some(&d0)) = (s0.first(), l0.first(), d0.first()) else {
                return fail("start, limit and delta must be scalars");
            };
            if d0 == 0.0 {
                return fail("delta is 0");
            }
            // ONNX: max(ceil((limit − start) / delta), 0) elements.
            let n = ((l0 - s0) / d0).ceil().max(0.0);
            if !n.is_finite() || n > MAX_ELEMS as f64 {
                return fail(format!("Range({s0}, {l0}, {d0}) is too long"));
            }
            let n = n as usize;
            let v: Vec<f64> = (0..n).map(|i| s0 + i as f64 * d0).collect();
            one(Tensor::from_vec(v, &[n])?.to_dtype(s.dtype())?)
        }
        _ => fail(format!("{} is not implemented by the executor", op.name())),
    }
}

/// Shape's [start, end) after ONNX's clamping of negative and out-of-range bounds.
pub(crate) fn shape_range(rank: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let r = rank as i64;
    let c = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (c(start), c(end.unwrap_or(r)));
    (s, e.max(s))
}
