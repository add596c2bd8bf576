//! Static shape inference. Each value gets a shape whose dims may be unknown (a dynamic batch);
//! small constant subgraphs (Shape → Gather → Concat → Reshape chains) are folded by running
//! the executor on them, and the int64 vectors that `Shape` produces are tracked dim by dim so a
//! dynamic batch survives `Reshape(x, Shape(y))`. Convolutions are never run.

use super::exec::{axis, eval, fail, ints, node_error, E, R};
use super::exec_shape::{reshape_target, shape_range, slice_plan, split_sizes, unsqueeze_shape};
use super::{Graph, GraphOp};
use cnnkit_core::{Result, Tensor};
use std::collections::{BTreeMap, HashMap};

/// What is known about a value: its shape (None = dynamic dim), its contents when constant,
/// and, for 1-D int64 vectors built from shapes, the entries that are known.
#[derive(Clone, Debug)]
pub(crate) struct Sym {
    pub shape: Vec<Option<usize>>,
    pub value: Option<Tensor>,
    pub dims: Option<Vec<Option<i64>>>,
}

impl Sym {
    pub fn of_shape(shape: Vec<Option<usize>>) -> Sym {
        Sym { shape, value: None, dims: None }
    }
    pub fn constant(t: &Tensor) -> Sym {
        let dims = (t.ndim() == 1 && t.numel() <= 64 && t.dtype() == cnnkit_core::DType::I64)
            .then(|| ints(t).ok())
            .flatten()
            .map(|v| v.into_iter().map(Some).collect());
        Sym { shape: t.shape().iter().map(|&d| Some(d)).collect(), value: Some(t.clone()), dims }
    }
    /// Known entries of a 1-D int64 vector (constant or from Shape).
    fn entries(&self) -> Option<Vec<Option<i64>>> {
        self.dims.clone()
    }
}

/// Constant folding is limited to small tensors: it exists for shape arithmetic.
const FOLD_LIMIT: usize = 1 << 16;

fn known(s: &[Option<usize>]) -> Option<Vec<usize>> {
    s.iter().copied().collect()
}

/// numpy broadcasting of partially known shapes.
fn broadcast(a: &[Option<usize>], b: &[Option<usize>]) -> R<Vec<Option<usize>>> {
    let n = a.len().max(b.len());
    let get = |s: &[Option<usize>], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { Some(1) };
    (0..n)
        .map(|i| match (get(a, i), get(b, i)) {
            (Some(1), d) | (d, Some(1)) => Ok(d),
            (Some(x), Some(y)) if x == y => Ok(Some(x)),
            (Some(x), Some(y)) => fail(format!("cannot broadcast {a:?} with {b:?} (dims {x} and {y})")),
            (None, d) | (d, None) => Ok(d),
        })
        .collect()
}

/// Output length of a sliding window (convolution or pooling) over `n` (PyTorch's ceil_mode
/// rule: the last window must start inside the input or its left padding).
fn window(n: Option<usize>, k: usize, s: usize, pb: usize, pe: usize, d: usize, ceil: bool) -> R<Option<usize>> {
    let Some(n) = n else { return Ok(None) };
    let span = d.saturating_mul(k.max(1) - 1).saturating_add(1);
    let total = n.saturating_add(pb).saturating_add(pe);
    if total < span || s == 0 {
        return fail(format!("kernel {k} (dilation {d}) larger than the padded input {total}"));
    }
    let mut o = if ceil { (total - span).div_ceil(s) + 1 } else { (total - span) / s + 1 };
    if ceil && (o - 1) * s >= n + pb {
        o -= 1;
    }
    Ok(Some(o))
}

fn rank(s: &Sym, want: usize, op: &GraphOp) -> R<()> {
    if s.shape.len() != want {
        let shown: Vec<String> = s.shape.iter().map(|d| d.map_or("?".into(), |d| d.to_string())).collect();
        return fail(format!("input has shape [{}] but {} needs {want}-D", shown.join(", "), op.name()));
    }
    Ok(())
}

/// The known int64 entries of input `i` (a constant or a tracked shape vector).
fn entries_of(ins: &[Option<&Sym>], i: usize) -> Option<Vec<Option<i64>>> {
    ins.get(i).copied().flatten().and_then(|s| s.entries())
}

fn const_ints(ins: &[Option<&Sym>], i: usize) -> R<Option<Vec<i64>>> {
    match ins.get(i).copied().flatten() {
        None => Ok(None),
        Some(s) => match &s.value {
            Some(v) => Ok(Some(ints(v)?)),
            None => fail(format!("input {i} must be a constant for shape inference")),
        },
    }
}

/// Infers one node's outputs from what is known about its inputs.
pub(crate) fn infer_node(op: &GraphOp, ins: &[Option<&Sym>], n_out: usize) -> R<Vec<Sym>> {
    let mut outs = infer_node_inner(op, ins, n_out)?;
    // A shape vector whose entries are all known is a constant, so later ops can be folded.
    for s in &mut outs {
        if s.value.is_none() {
            if let Some(v) = s.dims.as_ref().and_then(|d| d.iter().copied().collect::<Option<Vec<i64>>>()) {
                let shape = if s.shape.is_empty() { vec![] } else { vec![v.len()] };
                if shape.iter().product::<usize>() == v.len() {
                    s.value = Some(Tensor::from_vec(v, &shape)?);
                }
            }
        }
    }
    Ok(outs)
}

fn infer_node_inner(op: &GraphOp, ins: &[Option<&Sym>], n_out: usize) -> R<Vec<Sym>> {
    use GraphOp::*;
    let present: Vec<&Sym> = ins.iter().flatten().copied().collect();
    if !present.is_empty() && present.iter().all(|s| s.value.as_ref().is_some_and(|v| v.numel() <= FOLD_LIMIT)) {
        let args: Vec<Option<Tensor>> = ins.iter().map(|s| s.and_then(|s| s.value.clone())).collect();
        return Ok(eval(op, &args, n_out)?.iter().map(Sym::constant).collect());
    }
    let x = ins.first().copied().flatten().ok_or_else(|| E("missing input 0".into()))?;
    let xs = &x.shape;
    let inp = |i: usize| ins.get(i).copied().flatten().ok_or_else(|| E(format!("missing required input {i}")));
    let same = || Ok(vec![Sym::of_shape(xs.clone())]);
    let one = |s: Vec<Option<usize>>| Ok(vec![Sym::of_shape(s)]);
    match op {
        Conv { kernel_shape: k, strides: s, pads: p, dilations: d, .. } => {
            rank(x, 4, op)?;
            let w = inp(1)?;
            rank(w, 4, op)?;
            let oh = window(xs[2], k[0], s[0], p[0], p[2], d[0], false)?;
            let ow = window(xs[3], k[1], s[1], p[1], p[3], d[1], false)?;
            one(vec![xs[0], w.shape[0], oh, ow])
        }
        ConvTranspose { kernel_shape: k, strides: s, pads: p, dilations: d, group, output_padding: op2 } => {
            rank(x, 4, op)?;
            let w = inp(1)?;
            rank(w, 4, op)?;
            let f = |n: Option<usize>, i: usize| -> R<Option<usize>> {
                let Some(n) = n else { return Ok(None) };
                let full = (n.max(1) - 1) * s[i] + d[i] * (k[i].max(1) - 1) + op2[i] + 1;
                full.checked_sub(p[i] + p[i + 2]).filter(|&o| o > 0).map(Some).ok_or_else(|| E("padding leaves an empty output".into()))
            };
            one(vec![xs[0], w.shape[1].map(|c| c * group), f(xs[2], 0)?, f(xs[3], 1)?])
        }
        Gemm { trans_a, trans_b, .. } => {
            let (a, b) = (x, inp(1)?);
            rank(a, 2, op)?;
            rank(b, 2, op)?;
            let m = if *trans_a { a.shape[1] } else { a.shape[0] };
            let n = if *trans_b { b.shape[0] } else { b.shape[1] };
            one(vec![m, n])
        }
        MatMul => {
            let b = &inp(1)?.shape;
            if xs.is_empty() || b.is_empty() {
                return fail("MatMul of a 0-d tensor");
            }
            let a2 = if xs.len() == 1 { vec![Some(1), xs[0]] } else { xs.clone() };
            let b2 = if b.len() == 1 { vec![b[0], Some(1)] } else { b.clone() };
            let mut out = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
            if xs.len() > 1 {
                out.push(a2[a2.len() - 2]);
            }
            if b.len() > 1 {
                out.push(b2[b2.len() - 1]);
            }
            one(out)
        }
        Relu
        | LeakyRelu { .. }
        | PRelu
        | Sigmoid
        | Tanh
        | HardSigmoid { .. }
        | HardSwish
        | Elu { .. }
        | Selu { .. }
        | Softplus
        | Gelu { .. }
        | Clip
        | Neg
        | Sqrt
        | Exp
        | Log
        | Abs
        | Reciprocal
        | Erf
        | BatchNormalization { .. }
        | Softmax { .. }
        | LogSoftmax { .. }
        | Identity => same(),
        Cast { .. } => Ok(vec![Sym { shape: xs.clone(), value: None, dims: x.dims.clone() }]),
        Dropout => Ok((0..n_out).map(|_| Sym::of_shape(xs.clone())).collect()),
        Add | Sub | Mul | Div | Pow | Max | Min | Equal | Where => {
            let mut s = xs.clone();
            for o in &present[1..] {
                s = broadcast(&s, &o.shape)?;
            }
            one(s)
        }
        MaxPool { kernel_shape: k, strides: s, pads: p, dilations: d, ceil_mode } => {
            rank(x, 4, op)?;
            one(vec![
                xs[0],
                xs[1],
                window(xs[2], k[0], s[0], p[0], p[2], d[0], *ceil_mode)?,
                window(xs[3], k[1], s[1], p[1], p[3], d[1], *ceil_mode)?,
            ])
        }
        AveragePool { kernel_shape: k, strides: s, pads: p, ceil_mode, .. } => {
            rank(x, 4, op)?;
            one(vec![
                xs[0],
                xs[1],
                window(xs[2], k[0], s[0], p[0], p[2], 1, *ceil_mode)?,
                window(xs[3], k[1], s[1], p[1], p[3], 1, *ceil_mode)?,
            ])
        }
        GlobalAveragePool | GlobalMaxPool => {
            if xs.len() < 3 {
                return fail(format!("{} needs (N, C, …)", op.name()));
            }
            let mut s = xs[..2].to_vec();
            s.extend(std::iter::repeat_n(Some(1), xs.len() - 2));
            one(s)
        }
        Flatten { axis: a } => {
            let k = if *a == xs.len() as i64 { xs.len() } else { axis(*a, xs.len())? };
            let prod = |d: &[Option<usize>]| d.iter().try_fold(1usize, |p, &v| v.map(|v| p * v));
            one(vec![prod(&xs[..k]), prod(&xs[k..])])
        }
        Reshape { allowzero } => {
            let spec = entries_of(ins, 1).ok_or_else(|| E("the target shape must be a constant or come from Shape".into()))?;
            if let (Some(s), Some(k)) = (spec.iter().copied().collect::<Option<Vec<i64>>>(), known(xs)) {
                return one(reshape_target(&k, &s, *allowzero)?.into_iter().map(Some).collect());
            }
            // Partially known: copy 0s, keep positive entries, and infer −1 when the rest is known.
            let mut out: Vec<Option<usize>> = spec
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Some(0) if !allowzero => xs.get(i).copied().flatten(),
                    Some(v) if *v > 0 => Some(*v as usize),
                    _ => None,
                })
                .collect();
            if let (Some(total), Some(i)) = (known(xs).map(|k| k.iter().product::<usize>()), spec.iter().position(|s| *s == Some(-1))) {
                let rest: Option<usize> = out.iter().enumerate().filter(|(j, _)| *j != i).try_fold(1usize, |p, (_, v)| v.map(|v| p * v));
                out[i] = rest.filter(|&r| r > 0).map(|r| total / r);
            }
            one(out)
        }
        Transpose { perm } => {
            let p: Vec<usize> = if perm.is_empty() { (0..xs.len()).rev().collect() } else { perm.clone() };
            if p.len() != xs.len() || p.iter().any(|&i| i >= xs.len()) {
                return fail(format!("perm {p:?} does not fit rank {}", xs.len()));
            }
            one(p.iter().map(|&i| xs[i]).collect())
        }
        Concat { axis: a } => {
            let d = axis(*a, xs.len())?;
            let mut s = xs.clone();
            for o in &present[1..] {
                if o.shape.len() != xs.len() {
                    return fail("Concat inputs differ in rank");
                }
                s[d] = s[d].zip(o.shape[d]).map(|(p, q)| p + q);
            }
            // Concatenated shape vectors keep their known entries.
            let dims =
                if xs.len() == 1 { present.iter().map(|p| p.entries()).collect::<Option<Vec<_>>>().map(|v| v.concat()) } else { None };
            Ok(vec![Sym { shape: s, value: None, dims }])
        }
        Split { axis: a, num_outputs } => {
            let d = axis(*a, xs.len())?;
            let len = xs[d].ok_or_else(|| E("cannot split a dynamic axis".into()))?;
            let sizes = split_sizes(len, const_ints(ins, 1)?, num_outputs.unwrap_or(n_out))?;
            Ok(sizes
                .into_iter()
                .map(|n| {
                    let mut s = xs.clone();
                    s[d] = Some(n);
                    Sym::of_shape(s)
                })
                .collect())
        }
        Slice => {
            let (st, en) = (const_ints(ins, 1)?.unwrap_or_default(), const_ints(ins, 2)?.unwrap_or_default());
            let (axes, steps) = (const_ints(ins, 3)?, const_ints(ins, 4)?);
            // Unknown dims: slicing the whole axis keeps it unknown; anything else needs the size.
            let probe: Vec<usize> = xs.iter().map(|d| d.unwrap_or(usize::MAX / 4)).collect();
            let mut s = xs.clone();
            let plan = slice_plan(&probe, &st, &en, axes.as_deref(), steps.as_deref())?;
            for &(a, _, _, n) in &plan {
                s[a] = xs[a].map(|_| n);
            }
            let dims = match (x.entries(), plan.as_slice()) {
                (Some(e), [(0, start, step, n)]) => Some((0..*n as i64).map(|i| e[(start + i * step) as usize]).collect()),
                _ => None,
            };
            Ok(vec![Sym { shape: s, value: None, dims }])
        }
        Squeeze => {
            let axes = const_ints(ins, 1)?;
            let out = match axes {
                Some(a) => {
                    let a: Vec<usize> = a.iter().map(|&a| axis(a, xs.len())).collect::<R<_>>()?;
                    xs.iter().enumerate().filter(|(i, _)| !a.contains(i)).map(|(_, &d)| d).collect()
                }
                None if xs.iter().any(|d| d.is_none()) => return fail("Squeeze without axes on a dynamic shape"),
                None => xs.iter().copied().filter(|&d| d != Some(1)).collect(),
            };
            one(out)
        }
        Unsqueeze => {
            let s = unsqueeze_shape(xs, &const_ints(ins, 1)?.ok_or_else(|| E("missing axes".into()))?, Some(1))?;
            // A scalar taken from a shape vector stays tracked as a 1-element vector.
            let dims = if s.len() == 1 { x.dims.clone() } else { None };
            Ok(vec![Sym { shape: s, value: None, dims }])
        }
        Shape { start, end } => {
            let (s, e) = shape_range(xs.len(), *start, *end);
            let dims: Vec<Option<i64>> = xs[s..e].iter().map(|d| d.map(|d| d as i64)).collect();
            Ok(vec![Sym { shape: vec![Some(e - s)], value: None, dims: Some(dims) }])
        }
        Gather { axis: a } => {
            let d = axis(*a, xs.len())?;
            let idx = inp(1)?;
            let mut s = xs[..d].to_vec();
            s.extend_from_slice(&idx.shape);
            s.extend_from_slice(&xs[d + 1..]);
            let dims = match (x.entries(), const_ints(ins, 1).ok().flatten()) {
                (Some(e), Some(i)) if xs.len() == 1 && idx.shape.len() <= 1 => {
                    let at = |i: i64| e.get((if i < 0 { i + e.len() as i64 } else { i }) as usize).copied().flatten();
                    Some(i.iter().map(|&i| at(i)).collect())
                }
                _ => None,
            };
            Ok(vec![Sym { shape: s, value: None, dims }])
        }
        ReduceMean { keepdims, noop_with_empty_axes } | ReduceSum { keepdims, noop_with_empty_axes } => {
            let axes: Vec<usize> = match const_ints(ins, 1)?.filter(|a| !a.is_empty()) {
                Some(a) => a.iter().map(|&a| axis(a, xs.len())).collect::<R<_>>()?,
                None if *noop_with_empty_axes => return same(),
                None => (0..xs.len()).collect(),
            };
            let out =
                xs.iter().enumerate().filter_map(|(i, &d)| if axes.contains(&i) { keepdims.then_some(Some(1)) } else { Some(d) }).collect();
            one(out)
        }
        Pad { .. } => {
            let pads = const_ints(ins, 1)?.ok_or_else(|| E("missing pads".into()))?;
            let r = xs.len();
            let axes: Vec<usize> = match const_ints(ins, 3)? {
                Some(a) => a.iter().map(|&a| axis(a, r)).collect::<R<_>>()?,
                None => (0..r).collect(),
            };
            if pads.len() != 2 * axes.len() {
                return fail(format!("pads has {} values for {} axes", pads.len(), axes.len()));
            }
            let mut s = xs.clone();
            for (i, &a) in axes.iter().enumerate() {
                s[a] = s[a].map(|d| (d as i64 + pads[i] + pads[i + axes.len()]).max(0) as usize);
            }
            one(s)
        }
        Resize { .. } => {
            rank(x, 4, op)?;
            let scales = ins.get(2).copied().flatten().filter(|s| s.shape != [Some(0)]);
            let sizes = ins.get(3).copied().flatten().filter(|s| s.shape != [Some(0)]);
            match (scales, sizes) {
                (Some(sc), None) => {
                    let v = sc.value.as_ref().ok_or_else(|| E("scales must be a constant".into()))?.to_f64_vec()?;
                    if v.len() != 4 {
                        return fail("scales must have 4 entries");
                    }
                    let f = |d: Option<usize>, s: f64| d.map(|d| (d as f64 * s).floor() as usize);
                    one(vec![f(xs[0], v[0]), f(xs[1], v[1]), f(xs[2], v[2]), f(xs[3], v[3])])
                }
                (None, Some(z)) => {
                    let e = z.entries().ok_or_else(|| E("sizes must be a constant or come from Shape".into()))?;
                    if e.len() != 4 {
                        return fail("sizes must have 4 entries");
                    }
                    one(e.iter().zip(xs).map(|(v, d)| v.map(|v| v as usize).or(*d)).collect())
                }
                _ => fail("exactly one of scales and sizes must be given"),
            }
        }
        DepthToSpace { blocksize: b, .. } => {
            rank(x, 4, op)?;
            one(vec![xs[0], xs[1].map(|c| c / (b * b)), xs[2].map(|h| h * b), xs[3].map(|w| w * b)])
        }
        ConstantOfShape { .. } => {
            let e = x.entries().ok_or_else(|| E("the shape must be a constant or come from Shape".into()))?;
            one(e.into_iter().map(|v| v.map(|v| v.max(0) as usize)).collect())
        }
        Expand => {
            let e = entries_of(ins, 1).ok_or_else(|| E("the shape must be a constant or come from Shape".into()))?;
            let target: Vec<Option<usize>> = e.into_iter().map(|v| v.map(|v| v.max(0) as usize)).collect();
            one(broadcast(xs, &target)?)
        }
        Range => fail("Range needs constant start, limit and delta"),
    }
}

impl Graph {
    /// What static inference knows from the declared input shapes alone (None = dynamic dim),
    /// for every value: exporters use it to write output shapes.
    pub fn infer_partial_shapes(&self) -> Result<BTreeMap<String, Vec<Option<usize>>>> {
        let syms = self.propagate(self.inputs.iter().map(|v| (v.name.as_str(), v.shape.clone())).collect())?;
        Ok(syms.into_iter().map(|(k, s)| (k.to_string(), s.shape)).collect())
    }

    fn propagate<'a>(&'a self, inputs: Vec<(&'a str, Vec<Option<usize>>)>) -> Result<HashMap<&'a str, Sym>> {
        let mut syms: HashMap<&str, Sym> = inputs.into_iter().map(|(n, s)| (n, Sym::of_shape(s))).collect();
        for (k, t) in &self.initializers {
            syms.insert(k.as_str(), Sym::constant(t));
        }
        for node in &self.nodes {
            let mut ins = Vec::with_capacity(node.inputs.len());
            for v in &node.inputs {
                if v.is_empty() {
                    ins.push(None);
                    continue;
                }
                let s = syms.get(v.as_str()).ok_or_else(|| node_error(node, E(format!("input '{v}' is not defined before this node"))))?;
                ins.push(Some(s));
            }
            let outs = infer_node(&node.op, &ins, node.outputs.len()).map_err(|e| node_error(node, e))?;
            for (name, s) in node.outputs.iter().zip(outs) {
                syms.insert(name.as_str(), s);
            }
        }
        Ok(syms)
    }

    /// The shape of every value (inputs, initializers, node outputs) for concrete input shapes,
    /// without running the convolutions.
    pub fn infer_shapes(&self, input_shapes: &[(&str, Vec<usize>)]) -> Result<BTreeMap<String, Vec<usize>>> {
        let mut given = Vec::with_capacity(self.inputs.len());
        for vi in &self.inputs {
            let s = input_shapes
                .iter()
                .find(|(n, _)| *n == vi.name)
                .ok_or_else(|| super::graph_err(format!("missing shape for graph input '{}'", vi.name)))?;
            given.push((vi.name.as_str(), s.1.iter().map(|&d| Some(d)).collect()));
        }
        let syms = self.propagate(given)?;
        let mut out = BTreeMap::new();
        for (k, s) in &syms {
            let shape =
                known(&s.shape).ok_or_else(|| super::graph_err(format!("the shape of '{k}' could not be inferred ({:?})", s.shape)))?;
            out.insert(k.to_string(), shape);
        }
        Ok(out)
    }
}
