//! The graph executor: nodes run in order on cnnkit-core ops under no-grad, each value dropped
//! after its last use. Integer (int64) shape arithmetic is done here on small vectors.
//! Semantics follow the ONNX operator specs (https://onnx.ai/onnx/operators/).

use super::exec_shape::checked_numel;
use super::{CoordMode, Graph, GraphOp, NearestMode, Node, NodeTime, PadKind, ResizeMode};
use cnnkit_core::elementwise::broadcast_shape;
use cnnkit_core::{DType, Error, PadMode, Pool2dArgs, Result, Tensor, UnaryOp};
use cnnkit_kernels::conv::Epilogue;
// Planning is by value name (readers, last uses, fusions): with SipHash it took ~0.1 ms of
// MobileNetV2's ~4 ms batch-1 run, all of it before the first node started.
use rustc_hash::FxHashMap as HashMap;

/// A node-local failure message; the caller prefixes the node's name and op.
pub(crate) struct E(pub String);

impl From<Error> for E {
    fn from(e: Error) -> Self {
        E(e.to_string())
    }
}

pub(crate) type R<T> = std::result::Result<T, E>;

pub(crate) fn fail<T>(msg: impl Into<String>) -> R<T> {
    Err(E(msg.into()))
}

/// The error for `node`, naming it and its op.
pub(crate) fn node_error(node: &Node, e: E) -> Error {
    Error::invalid("graph", format!("node {} ({}): {}", node.name, node.op.name(), e.0))
}

/// A graph with its run plan worked out once: the node after which each value dies, the
/// activations that run in their producer's epilogue, the chains that run as fused blocks.
/// [`Graph::run`] plans on every call (MobileNetV2: ~0.06 ms, over 1% of a batch-1 run, all
/// before its first node); a caller running one graph many times (a serving loop,
/// `cnnkit bench infer`) plans once with [`Graph::planned`]. The plan borrows the graph, so
/// the graph cannot change under it.
pub struct Planned<'g> {
    graph: &'g Graph,
    /// Index of the last node reading each value, so activations are freed as soon as possible.
    last_use: HashMap<&'g str, usize>,
    /// Per node, the activation fused into its epilogue (see `Graph::fusable_activations`).
    fused: Vec<Option<Epilogue>>,
    /// Per node, the fused block starting there (see `fuse::inverted_residual_blocks`).
    blocks: Vec<Option<super::fuse::BlockPlan>>,
    /// Per node, the convolution + max pool starting there (see `fuse::conv_max_pools`).
    conv_pools: Vec<Option<super::fuse::ConvPoolPlan>>,
    /// Per node, the convolution + residual Add starting there (see `fuse::residual_adds`).
    residual_adds: Vec<Option<super::fuse::ResidualAddPlan>>,
}

impl Graph {
    /// Works out the run plan once, for many runs ([`Planned::run`]).
    pub fn planned(&self) -> Planned<'_> {
        let mut last_use: HashMap<&str, usize> = HashMap::default();
        for (i, n) in self.nodes.iter().enumerate() {
            for v in &n.inputs {
                last_use.insert(v.as_str(), i);
            }
        }
        let readers = self.reader_counts();
        let fused = self.fusable_activations(&readers);
        let blocks = super::fuse::inverted_residual_blocks(self, &fused, &readers);
        let conv_pools = super::fuse::conv_max_pools(self, &fused, &readers);
        let residual_adds = super::fuse::residual_adds(self, &fused, &readers);
        Planned { graph: self, last_use, fused, blocks, conv_pools, residual_adds }
    }

    /// Runs the graph on `inputs` (by graph input name) and returns the graph outputs in order.
    /// Static dims of the declared input shapes are checked.
    /// Runs on a worker of the kernels' thread pool, the other workers spinning for work until
    /// it returns ([`cnnkit_core::with_busy_workers`]).
    /// Plans on every call: see [`Graph::planned`] for repeated runs.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>> {
        self.planned().run(inputs)
    }

    /// [`Graph::run`], also returning the wall time of each node in execution order (an
    /// activation fused into its producer is timed with it, under the producer's name).
    pub fn run_profiled(&self, inputs: &[(&str, Tensor)]) -> Result<(Vec<Tensor>, Vec<NodeTime>)> {
        self.planned().run_profiled(inputs)
    }
}

impl Planned<'_> {
    /// [`Graph::run`] on the planned graph.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>> {
        cnnkit_core::with_busy_workers(|| self.run_here(inputs, None))
    }

    /// [`Graph::run_profiled`] on the planned graph.
    pub fn run_profiled(&self, inputs: &[(&str, Tensor)]) -> Result<(Vec<Tensor>, Vec<NodeTime>)> {
        cnnkit_core::with_busy_workers(|| {
            let mut times = Vec::with_capacity(self.graph.nodes.len());
            let outs = self.run_here(inputs, Some(&mut times))?;
            Ok((outs, times))
        })
    }

    /// The planned graph.
    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// One run on the calling thread, timing each node into `profile` when given.
    fn run_here(&self, inputs: &[(&str, Tensor)], mut profile: Option<&mut Vec<NodeTime>>) -> Result<Vec<Tensor>> {
        let g = self.graph;
        let _guard = cnnkit_core::no_grad();
        // Activations freed below are reused for later nodes' outputs (and, when the caller
        // holds its own scope across runs, for the next run's): see cnnkit_core::recycle.
        let _recycle = cnnkit_core::recycle_buffers();
        let mut env: HashMap<&str, Tensor> = HashMap::default();
        for (name, _) in inputs {
            if !g.inputs.iter().any(|v| v.name == *name) {
                return Err(super::graph_err(format!("'{name}' is not an input of the graph")));
            }
        }
        for vi in &g.inputs {
            let t = inputs
                .iter()
                .find(|(n, _)| *n == vi.name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| super::graph_err(format!("missing graph input '{}'", vi.name)))?;
            let ok = t.ndim() == vi.shape.len() && t.shape().iter().zip(&vi.shape).all(|(&a, b)| b.is_none_or(|b| a == b));
            if !ok {
                return Err(super::graph_err(format!(
                    "input '{}' has shape {:?} but the graph expects {:?}",
                    vi.name,
                    t.shape(),
                    vi.shape
                )));
            }
            env.insert(vi.name.as_str(), t);
        }
        let (last_use, fused, blocks, conv_pools) = (&self.last_use, &self.fused, &self.blocks, &self.conv_pools);
        let residual_adds = &self.residual_adds;
        // Nodes before `next` were run with an earlier one (a fused activation or block).
        let mut next = 0;
        for (i, node) in g.nodes.iter().enumerate() {
            if i < next {
                continue;
            }
            let started = profile.is_some().then(std::time::Instant::now);
            let value = |v: &str| env.get(v).or_else(|| g.initializers.get(v));
            let node_args = || -> Result<Vec<Option<Tensor>>> {
                let mut args = Vec::with_capacity(node.inputs.len());
                for v in &node.inputs {
                    if v.is_empty() {
                        args.push(None);
                        continue;
                    }
                    let t = value(v).ok_or_else(|| node_error(node, E(format!("input '{v}' is not defined before this node"))))?;
                    args.push(Some(t.clone()));
                }
                Ok(args)
            };
            // A fused chain (block, convolution + pool, convolution + residual Add) that ran:
            // its output, detail, op name and the nodes it covered after the first for the
            // profile, and the node after it.
            let mut chain = None;
            if let Some(b) = &blocks[i] {
                if let Some((y, detail)) = g.run_block(b, &value, profile.is_some()).map_err(|e| node_error(node, e))? {
                    chain = Some((y, detail, "InvertedResidual", None, b.output.as_str(), b.end));
                }
            } else if let Some(cp) = &conv_pools[i] {
                if let Some((y, detail)) = g.run_conv_pool(cp, &value, profile.is_some()).map_err(|e| node_error(node, e))? {
                    chain = Some((y, detail, "ConvMaxPool", None, cp.output.as_str(), cp.end));
                }
            } else if let Some((ra, Some(r))) = residual_adds[i].as_ref().map(|ra| (ra, value(&ra.residual))) {
                // A convolution whose output only feeds a residual Add: the Add (and its
                // activation) run in place on the fresh output (fuse::residual_adds), or as
                // `add_act` where that declines (other dtypes or shapes).
                let args = node_args()?;
                let y = conv(&node.op, &args, Epilogue::None).map_err(|e| node_error(node, e))?;
                let add_error = |e: cnnkit_core::Error| node_error(&g.nodes[i + 1], e.into());
                let y = if y.add_act_(r, ra.act).map_err(add_error)? { y } else { y.add_act(r, ra.act).map_err(add_error)? };
                chain = Some((y, conv_detail(node, &args), node.op.name(), Some(ra.covers()), ra.output.as_str(), ra.end));
            }
            if let Some((y, detail, op, fused, output, end)) = chain {
                if let (Some(p), Some(t0)) = (profile.as_deref_mut(), started) {
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    p.push(NodeTime { name: node.name.clone(), op, detail, fused, ms });
                }
                env.insert(output, y);
                for v in g.nodes[i..end].iter().flat_map(|n| &n.inputs) {
                    if last_use.get(v.as_str()).is_some_and(|&u| u < end) && !g.outputs.contains(v) {
                        env.remove(v.as_str());
                    }
                }
                next = end;
                continue;
            }
            let args = node_args()?;
            let mut skip = false;
            // A fused activation (see fusable_activations) names its output after the next
            // node, which is then skipped. Conv runs it in the convolution's epilogue, a float
            // Add in its single pass; other producers apply it in place on their fresh output.
            let ep = fused[i];
            let fused_out = match (ep, &node.op, args.first(), args.get(1)) {
                (Some(ep), GraphOp::Conv { .. }, _, _) => Some(conv(&node.op, &args, ep).map_err(|e| node_error(node, e))?),
                (Some(ep), GraphOp::Add, Some(Some(a)), Some(Some(b))) if a.dtype() == DType::F32 && b.dtype() == DType::F32 => {
                    Some(a.add_act(b, ep).map_err(|e| node_error(node, e.into()))?)
                }
                _ => None,
            };
            let outs = match fused_out {
                Some(y) => {
                    skip = true;
                    vec![y]
                }
                None => {
                    let outs = eval(&node.op, &args, node.outputs.len()).map_err(|e| node_error(node, e))?;
                    if let Some(ep) = ep {
                        skip = apply_in_place(ep, &outs[0])?;
                    }
                    outs
                }
            };
            if let (Some(p), Some(t0)) = (profile.as_deref_mut(), started) {
                let fused = skip.then(|| g.nodes[i + 1].op.name());
                let detail = conv_detail(node, &args);
                p.push(NodeTime { name: node.name.clone(), op: node.op.name(), detail, fused, ms: t0.elapsed().as_secs_f64() * 1e3 });
            }
            next = i + 1 + usize::from(skip);
            let names = if skip { &g.nodes[i + 1].outputs } else { &node.outputs };
            for (name, t) in names.iter().zip(outs) {
                if !name.is_empty() {
                    env.insert(name.as_str(), t);
                }
            }
            for v in &node.inputs {
                if last_use.get(v.as_str()) == Some(&i) && !g.outputs.contains(v) {
                    env.remove(v.as_str());
                }
            }
        }
        g.outputs
            .iter()
            .map(|o| {
                env.get(o.as_str())
                    .or_else(|| g.initializers.get(o))
                    .cloned()
                    .ok_or_else(|| super::graph_err(format!("graph output '{o}' was not computed")))
            })
            .collect()
    }
}

impl Graph {
    /// A fused chain's input `k` of node `node`, None when absent or not yet defined.
    fn chain_input<'a>(&self, value: &impl Fn(&str) -> Option<&'a Tensor>, node: usize, k: usize) -> Option<&'a Tensor> {
        value(self.nodes[node].inputs.get(k).filter(|v| !v.is_empty())?)
    }

    /// A fused chain's convolution: its weight, its bias when the node names one, and its
    /// activation; None when an operand it names is missing.
    fn chain_conv<'a>(
        &self,
        value: &impl Fn(&str) -> Option<&'a Tensor>,
        u: super::fuse::ConvUnit,
    ) -> Option<cnnkit_core::fused::FusedConv<'a>> {
        let b = match self.nodes[u.node].inputs.get(2).filter(|v| !v.is_empty()) {
            Some(_) => Some(self.chain_input(value, u.node, 2)?),
            None => None,
        };
        Some(cnnkit_core::fused::FusedConv { w: self.chain_input(value, u.node, 1)?, b, ep: u.ep })
    }

    /// Runs a matched convolution + max pool as one kernel (`cnnkit_core::fused::conv_max_pool`):
    /// its output and, when `detail`, the profile's detail, or None when the kernel does not
    /// take these operands (the caller then runs the nodes one by one).
    fn run_conv_pool<'a>(
        &self,
        cp: &super::fuse::ConvPoolPlan,
        value: &impl Fn(&str) -> Option<&'a Tensor>,
        detail: bool,
    ) -> R<Option<(Tensor, String)>> {
        let (Some(x), Some(conv)) = (self.chain_input(value, cp.conv.node, 0), self.chain_conv(value, cp.conv)) else { return Ok(None) };
        let Some(y) = cnnkit_core::fused::conv_max_pool(x, &conv, cp.padding)? else { return Ok(None) };
        let detail = match conv.w.shape() {
            [m, c, kh, kw] if detail => format!("{c}→{m} {kh}×{kw} s2 + max pool 3×3 s2"),
            _ => String::new(),
        };
        Ok(Some((y, detail)))
    }

    /// Runs a matched inverted residual block as one kernel: its output and, when `detail`, the
    /// profile's detail (see `NodeTime::detail`; else empty), or None when the kernel does not
    /// take these operands (the caller then runs the nodes one by one).
    fn run_block<'a>(
        &self,
        b: &super::fuse::BlockPlan,
        value: &impl Fn(&str) -> Option<&'a Tensor>,
        detail: bool,
    ) -> R<Option<(Tensor, String)>> {
        use cnnkit_core::fused::{inverted_residual, InvertedResidualArgs, StemArgs};
        let input = |node: usize, k: usize| self.chain_input(value, node, k);
        let conv = |u: super::fuse::ConvUnit| self.chain_conv(value, u);
        let first = b.stem.map(|(u, _)| u).or(b.expand).map_or(b.dw.node, |u| u.node);
        let (Some(x), Some(dw), Some(project)) = (input(first, 0), conv(b.dw), conv(b.project)) else { return Ok(None) };
        // A depthwise layer: one group per channel (a malformed group count errs unfused).
        if !matches!(self.nodes[b.dw.node].op, GraphOp::Conv { group, .. } if dw.w.shape().first() == Some(&group)) {
            return Ok(None);
        }
        // Some(None): the block has no such part; None: a part whose operand is missing.
        let stem = b.stem.map_or(Some(None), |(u, padding)| conv(u).map(|conv| Some(StemArgs { conv, padding })));
        let expand = b.expand.map_or(Some(None), |u| conv(u).map(Some));
        let residual = b.add.map_or(Some(None), |(a, r, _)| input(a, r).map(Some));
        let (Some(stem), Some(expand), Some(residual)) = (stem, expand, residual) else { return Ok(None) };
        let after = b.add.map_or(Epilogue::None, |(_, _, ep)| ep);
        let args = InvertedResidualArgs { stem, expand, dw, stride: b.stride, project, residual, after };
        let Some(y) = inverted_residual(x, &args)? else { return Ok(None) };
        let (c_mid, c_out) = (dw.w.shape()[0], project.w.shape()[0]);
        // "C_in→C_mid→C_out sS", after "C_img→C_in KH×KW s2 + " with a stem (the kernel checked
        // that its weight is 4-D).
        let detail = match stem {
            _ if !detail => String::new(),
            Some(st) => {
                let s = st.conv.w.shape();
                format!("{}→{} {}×{} s2 + {c_mid}→{c_mid}→{c_out} s{}", s[1], s[0], s[2], s[3], b.stride)
            }
            None => format!("{}→{c_mid}→{c_out} s{}", x.shape()[1], b.stride),
        };
        Ok(Some((y, detail)))
    }
}

impl Graph {
    /// For each node, the activation of the next node that can run in place on this node's
    /// output: the producer makes a fresh tensor (Conv, Gemm, Add, BatchNormalization), the
    /// activation is its only reader, and the value is not a graph output. This saves the
    /// activation's allocation and its output pass (the inference-time "fused epilogue").
    /// `readers` is [`Graph::reader_counts`].
    fn fusable_activations(&self, readers: &HashMap<&str, usize>) -> Vec<Option<Epilogue>> {
        let scalar = |name: Option<&String>, default: f64| -> Option<f64> {
            match name.filter(|n| !n.is_empty()) {
                None => Some(default),
                Some(n) => self.initializers.get(n).filter(|t| t.numel() == 1).and_then(|t| t.item().ok()),
            }
        };
        (0..self.nodes.len())
            .map(|i| {
                let (a, b) = (&self.nodes[i], self.nodes.get(i + 1)?);
                let fresh = matches!(a.op, GraphOp::Conv { .. } | GraphOp::Gemm { .. } | GraphOp::Add | GraphOp::BatchNormalization { .. });
                let out = a.outputs.first()?;
                if !fresh || a.outputs.len() != 1 || b.outputs.len() != 1 || b.inputs.first() != Some(out) {
                    return None;
                }
                // Read by b alone (a graph output counts as a reader).
                if readers.get(out.as_str()) != Some(&1) {
                    return None;
                }
                match b.op {
                    GraphOp::Relu => Some(Epilogue::Relu),
                    GraphOp::Clip => {
                        Some(Epilogue::Clamp(scalar(b.inputs.get(1), f64::NEG_INFINITY)?, scalar(b.inputs.get(2), f64::INFINITY)?))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

/// A Conv node's profile detail ("C_in→C_out KH×KW sS gG"); empty for other nodes.
fn conv_detail(node: &Node, args: &[Option<Tensor>]) -> String {
    match (&node.op, args.get(1)) {
        (GraphOp::Conv { kernel_shape: [kh, kw], strides: [s, _], group, .. }, Some(Some(w))) if w.ndim() == 4 => {
            format!("{}→{} {kh}×{kw} s{s} g{group}", w.shape()[1] * group, w.shape()[0])
        }
        _ => String::new(),
    }
}

/// Applies `ep` to `t` in place (NaN stays NaN, as in the unfused ops). Returns false (and
/// leaves `t` alone) for tensors it does not handle, which then run the activation node.
fn apply_in_place(ep: Epilogue, t: &Tensor) -> Result<bool> {
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        return Ok(false);
    }
    t.update_data(|d: &mut [f32]| ep.apply_par(d))?;
    Ok(true)
}

fn req<'a>(args: &'a [Option<Tensor>], i: usize, what: &str) -> R<&'a Tensor> {
    match args.get(i) {
        Some(Some(t)) => Ok(t),
        _ => fail(format!("missing required input {i} ({what})")),
    }
}

fn opt(args: &[Option<Tensor>], i: usize) -> Option<&Tensor> {
    args.get(i).and_then(|a| a.as_ref())
}

/// The values of an integer (or integral float) tensor.
pub(crate) fn ints(t: &Tensor) -> R<Vec<i64>> {
    Ok(t.to_f64_vec()?.into_iter().map(|v| v as i64).collect())
}

/// A rank-relative axis in [0, rank).
pub(crate) fn axis(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        return fail(format!("axis {a} out of range for rank {rank}"));
    }
    Ok(a.rem_euclid(r.max(1)) as usize)
}

fn float(t: &Tensor) -> R<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        fail(format!("expects a float tensor, got {}", t.dtype().name()))
    }
}

/// Broadcasting integer arithmetic (shape computations).
fn int_binary(a: &Tensor, b: &Tensor, f: fn(i64, i64) -> Option<i64>) -> R<Tensor> {
    let shape = broadcast_shape(a.shape(), b.shape()).ok_or_else(|| E(format!("cannot broadcast {:?} with {:?}", a.shape(), b.shape())))?;
    let (x, y) = (a.broadcast_to(&shape)?.to_vec::<i64>()?, b.broadcast_to(&shape)?.to_vec::<i64>()?);
    let v: Option<Vec<i64>> = x.iter().zip(&y).map(|(&p, &q)| f(p, q)).collect();
    Ok(Tensor::from_vec(v.ok_or_else(|| E("integer overflow or division by zero".into()))?, &shape)?)
}

fn binary(op: &GraphOp, a: &Tensor, b: &Tensor) -> R<Tensor> {
    use GraphOp::*;
    if a.dtype() == DType::I64 && b.dtype() == DType::I64 {
        let f: fn(i64, i64) -> Option<i64> = match op {
            Add => i64::checked_add,
            Sub => i64::checked_sub,
            Mul => i64::checked_mul,
            Div => i64::checked_div,
            Max => |p, q| Some(p.max(q)),
            Min => |p, q| Some(p.min(q)),
            Pow => |p, q| u32::try_from(q).ok().and_then(|q| p.checked_pow(q)),
            _ => return fail("not a binary op"),
        };
        return int_binary(a, b, f);
    }
    float(a)?;
    // Pow may take an exponent of another type (opset 12+); the base's type wins.
    let b = if b.dtype() != a.dtype() { b.to_dtype(a.dtype())? } else { b.clone() };
    Ok(match op {
        Add => a.add(&b)?,
        Sub => a.sub(&b)?,
        Mul => a.mul(&b)?,
        Div => a.div(&b)?,
        Pow => a.pow(&b)?,
        Max => a.maximum(&b)?,
        Min => a.minimum(&b)?,
        _ => return fail("not a binary op"),
    })
}

fn unary(op: &GraphOp, x: &Tensor) -> R<Tensor> {
    use GraphOp::*;
    if x.dtype() == DType::I64 && matches!(op, Neg | Abs) {
        let f = if *op == Neg { |v: i64| v.wrapping_neg() } else { |v: i64| v.wrapping_abs() };
        return Ok(Tensor::from_vec(x.to_vec::<i64>()?.into_iter().map(f).collect(), x.shape())?);
    }
    float(x)?;
    let u = match op {
        Relu => UnaryOp::Relu,
        LeakyRelu { alpha } => UnaryOp::LeakyRelu(*alpha),
        Sigmoid => UnaryOp::Sigmoid,
        Tanh => UnaryOp::Tanh,
        HardSwish => UnaryOp::Hardswish,
        Elu { alpha } => UnaryOp::Elu { alpha: *alpha, scale: 1.0, input_scale: 1.0 },
        Selu { alpha, gamma } => UnaryOp::Elu { alpha: *alpha, scale: *gamma, input_scale: 1.0 },
        // ln(1 + eˣ); above 20 it equals x to within f64 rounding of the f32 result.
        Softplus => UnaryOp::Softplus { beta: 1.0, threshold: 20.0 },
        Gelu { approximate_tanh: true } => UnaryOp::GeluTanh,
        Gelu { approximate_tanh: false } => UnaryOp::Gelu,
        Neg => UnaryOp::Neg,
        Sqrt => UnaryOp::Sqrt,
        Exp => UnaryOp::Exp,
        Log => UnaryOp::Log,
        Abs => UnaryOp::Abs,
        Reciprocal => UnaryOp::Recip,
        HardSigmoid { alpha, beta } => {
            // PyTorch's hardsigmoid is relu6(x + 3)/6; use it when the attributes say so.
            if (alpha - 1.0 / 6.0).abs() < 1e-7 && *beta == 0.5 {
                UnaryOp::Hardsigmoid
            } else {
                return Ok(x.mul_scalar(*alpha)?.add_scalar(*beta)?.clamp(Some(0.0), Some(1.0))?);
            }
        }
        Erf => {
            let v: Vec<f64> = x.to_f64_vec()?.into_iter().map(libm::erf).collect();
            return Ok(Tensor::from_vec(v, x.shape())?.to_dtype(x.dtype())?);
        }
        _ => return fail("not a unary op"),
    };
    Ok(x.unary(u)?)
}

/// The scalar value of an optional scalar input (Clip bounds, Pad value).
fn scalar(t: Option<&Tensor>) -> R<Option<f64>> {
    match t {
        None => Ok(None),
        Some(t) if t.numel() == 1 => Ok(Some(t.to_f64_vec()?[0])),
        Some(t) => fail(format!("expected a scalar, got shape {:?}", t.shape())),
    }
}

fn need_4d(x: &Tensor, op: &str) -> R<()> {
    if x.ndim() != 4 {
        return fail(format!("input has shape {:?} but {op} needs 4-D", x.shape()));
    }
    Ok(())
}

/// Pads the last two dims when ONNX pads are asymmetric; returns the symmetric remainder.
fn split_pads(x: &Tensor, pads: [usize; 4], fill: f64) -> R<(Tensor, (usize, usize))> {
    let [t, l, b, r] = pads;
    if t == b && l == r {
        return Ok((x.clone(), (t, l)));
    }
    Ok((x.pad2d([l as isize, r as isize, t as isize, b as isize], PadMode::Constant, fill)?, (0, 0)))
}

/// A Conv node, with `ep` fused into the convolution's epilogue.
fn conv(op: &GraphOp, args: &[Option<Tensor>], ep: Epilogue) -> R<Tensor> {
    let GraphOp::Conv { strides, pads, dilations, group, .. } = op else {
        return fail("not a Conv node");
    };
    let (x, w) = (req(args, 0, "X")?, req(args, 1, "W")?);
    need_4d(x, "Conv")?;
    let (xp, padding) = split_pads(x, *pads, 0.0)?;
    let a = cnnkit_core::Conv2dArgs { stride: (strides[0], strides[1]), padding, dilation: (dilations[0], dilations[1]), groups: *group };
    Ok(xp.conv2d_act(w, opt(args, 2), a, ep)?)
}

/// Runs one op on its inputs, producing `n_out` outputs.
pub(crate) fn eval(op: &GraphOp, args: &[Option<Tensor>], n_out: usize) -> R<Vec<Tensor>> {
    use GraphOp::*;
    let x = || req(args, 0, "X");
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Conv { .. } => one(conv(op, args, Epilogue::None)?),
        ConvTranspose { strides, pads, dilations, group, output_padding, .. } => {
            let (x, w) = (x()?, req(args, 1, "W")?);
            need_4d(x, "ConvTranspose")?;
            if pads[0] != pads[2] || pads[1] != pads[3] {
                return fail(format!("asymmetric pads {pads:?} are not supported"));
            }
            // Guard the output size of a malformed model before allocating it.
            let grow = |n: usize, i: usize| {
                n.saturating_mul(strides[i]).saturating_add(dilations[i].saturating_mul(w.shape().get(2 + i).copied().unwrap_or(1)))
            };
            checked_numel(&[
                x.shape()[0],
                w.shape().get(1).copied().unwrap_or(1).saturating_mul(*group),
                grow(x.shape()[2], 0),
                grow(x.shape()[3], 1),
            ])?;
            let a = cnnkit_core::Conv2dArgs {
                stride: (strides[0], strides[1]),
                padding: (pads[0], pads[1]),
                dilation: (dilations[0], dilations[1]),
                groups: *group,
            };
            one(x.conv_transpose2d(w, opt(args, 2), a, (output_padding[0], output_padding[1]))?)
        }
        BatchNormalization { epsilon } => {
            let (s, b, m, v) = (req(args, 1, "scale")?, req(args, 2, "B")?, req(args, 3, "mean")?, req(args, 4, "var")?);
            one(x()?.batch_norm(Some(m), Some(v), Some(s), Some(b), false, 0.0, *epsilon)?)
        }
        Gemm { alpha, beta, trans_a, trans_b } => {
            let (a, b) = (x()?, req(args, 1, "B")?);
            if a.ndim() != 2 || b.ndim() != 2 {
                return fail(format!("Gemm needs 2-D operands, got {:?} and {:?}", a.shape(), b.shape()));
            }
            let a = if *trans_a { a.t()? } else { a.clone() };
            let b = if *trans_b { b.t()? } else { b.clone() };
            let mut y = a.matmul(&b)?;
            if *alpha != 1.0 {
                y = y.mul_scalar(*alpha)?;
            }
            if let Some(c) = opt(args, 2) {
                let c = if *beta != 1.0 { c.mul_scalar(*beta)? } else { c.clone() };
                y = y.add(&c)?;
            }
            one(y)
        }
        MatMul => one(x()?.matmul(req(args, 1, "B")?)?),
        PRelu => {
            let (x, s) = (x()?, req(args, 1, "slope")?);
            let pos = x.relu()?;
            one(pos.add(&x.sub(&pos)?.mul(s)?)?)
        }
        Relu
        | LeakyRelu { .. }
        | Sigmoid
        | Tanh
        | HardSigmoid { .. }
        | HardSwish
        | Elu { .. }
        | Selu { .. }
        | Softplus
        | Gelu { .. }
        | Neg
        | Sqrt
        | Exp
        | Log
        | Abs
        | Reciprocal
        | Erf => one(unary(op, x()?)?),
        Clip => {
            let (lo, hi) = (scalar(opt(args, 1))?, scalar(opt(args, 2))?);
            one(x()?.clamp(lo, hi)?)
        }
        Add | Sub | Mul | Div | Pow => one(binary(op, x()?, req(args, 1, "B")?)?),
        Max | Min => {
            let mut acc = x()?.clone();
            for t in args[1..].iter().flatten() {
                acc = binary(op, &acc, t)?;
            }
            one(acc)
        }
        MaxPool { kernel_shape, strides, pads, dilations, ceil_mode } => {
            let x = x()?;
            need_4d(x, "MaxPool")?;
            if ceil_mode & (pads[0] != pads[2] || pads[1] != pads[3]) {
                return fail("asymmetric pads with ceil_mode are not supported");
            }
            let (xp, padding) = split_pads(x, *pads, f64::NEG_INFINITY)?;
            let a = Pool2dArgs {
                kernel: (kernel_shape[0], kernel_shape[1]),
                stride: (strides[0], strides[1]),
                padding,
                dilation: (dilations[0], dilations[1]),
                ceil_mode: *ceil_mode,
            };
            let y = xp.max_pool2d(a)?;
            if n_out > 1 {
                return fail("the Indices output of MaxPool is not supported");
            }
            one(y)
        }
        AveragePool { kernel_shape, strides, pads, ceil_mode, count_include_pad } => {
            let x = x()?;
            need_4d(x, "AveragePool")?;
            if pads[0] != pads[2] || pads[1] != pads[3] {
                return fail(format!("asymmetric pads {pads:?} are not supported"));
            }
            let a = Pool2dArgs {
                kernel: (kernel_shape[0], kernel_shape[1]),
                stride: (strides[0], strides[1]),
                padding: (pads[0], pads[1]),
                dilation: (1, 1),
                ceil_mode: *ceil_mode,
            };
            one(x.avg_pool2d(a, *count_include_pad)?)
        }
        GlobalAveragePool | GlobalMaxPool => {
            let x = x()?;
            if x.ndim() < 3 {
                return fail(format!("input has shape {:?} but {} needs (N, C, …)", x.shape(), op.name()));
            }
            let dims: Vec<isize> = (2..x.ndim() as isize).collect();
            if *op == GlobalAveragePool {
                if x.ndim() == 4 && x.shape()[2] * x.shape()[3] > 0 {
                    // The pooling kernel: one pass, no reduction view (3–4× faster at 1280×7×7).
                    return one(x.adaptive_avg_pool2d((1, 1))?);
                }
                return one(x.mean(&dims, true)?);
            }
            let mut y = x.clone();
            for d in dims {
                y = y.max_dim(d, true)?.0;
            }
            one(y)
        }
        _ => super::exec_shape::eval_shape_op(op, args, n_out),
    }
}

/// Resize of a 4-D tensor's last two dims (the modes PyTorch's exporter emits).
pub(crate) fn resize(x: &Tensor, scales: Option<&Tensor>, sizes: Option<&Tensor>, op: &GraphOp) -> R<Tensor> {
    let GraphOp::Resize { mode, coordinate_transformation_mode: cm, nearest_mode } = op else {
        return fail("not Resize");
    };
    need_4d(x, "Resize")?;
    let (h, w) = (x.shape()[2], x.shape()[3]);
    // An empty tensor stands for an absent input (opsets 11–12 require the slot).
    let scales = scales.filter(|t| t.numel() > 0);
    let sizes = sizes.filter(|t| t.numel() > 0);
    let (oh, ow, sc) = match (scales, sizes) {
        (Some(s), None) => {
            let s = s.to_f64_vec()?;
            if s.len() != 4 || s[0] != 1.0 || s[1] != 1.0 || s[2] <= 0.0 || s[3] <= 0.0 {
                return fail(format!("scales {s:?}: only the last two dims can be resized"));
            }
            // Output size is floor(input · scale) (ONNX Resize spec).
            ((h as f64 * s[2]).floor() as usize, (w as f64 * s[3]).floor() as usize, Some((s[2], s[3])))
        }
        (None, Some(z)) => {
            let z = ints(z)?;
            if z.len() != 4 || z[0] as usize != x.shape()[0] || z[1] as usize != x.shape()[1] || z[2] <= 0 || z[3] <= 0 {
                return fail(format!("sizes {z:?}: only the last two dims can be resized"));
            }
            (z[2] as usize, z[3] as usize, None)
        }
        _ => return fail("exactly one of scales and sizes must be given"),
    };
    checked_numel(&[x.shape()[0], x.shape()[1], oh, ow])?;
    match (mode, cm) {
        // asymmetric + floor is PyTorch's "nearest": source = floor(o / scale).
        (ResizeMode::Nearest, CoordMode::Asymmetric) if *nearest_mode == NearestMode::Floor => Ok(x.upsample_nearest2d_scaled(oh, ow, sc)?),
        (ResizeMode::Linear, CoordMode::AlignCorners) => Ok(x.upsample_bilinear2d(oh, ow, true)?),
        (ResizeMode::Linear, CoordMode::PytorchHalfPixel | CoordMode::HalfPixel) => Ok(x.upsample_bilinear2d_scaled(oh, ow, false, sc)?),
        _ => fail(format!("mode {mode:?} with coordinate_transformation_mode {cm:?} and nearest_mode {nearest_mode:?} is not supported")),
    }
}

/// ONNX Pad on the last two dims (other dims must have zero pads).
pub(crate) fn pad(x: &Tensor, pads: &[i64], value: f64, axes: Option<Vec<i64>>, mode: PadKind) -> R<Tensor> {
    let r = x.ndim();
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&a| axis(a, r)).collect::<R<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return fail(format!("pads has {} values for {} axes", pads.len(), axes.len()));
    }
    if pads.iter().any(|p| p.unsigned_abs() > super::exec_shape::MAX_ELEMS as u64) {
        return fail(format!("pads {pads:?} are out of range"));
    }
    let k = axes.len();
    let mut full = vec![0i64; 2 * r];
    for (i, &a) in axes.iter().enumerate() {
        full[a] = pads[i];
        full[r + a] = pads[k + i];
    }
    if r < 2 || (0..r - 2).any(|d| full[d] != 0 || full[r + d] != 0) {
        return fail(format!("pads {pads:?}: only the last two dims of a tensor can be padded"));
    }
    let (t, l, b, rr) = (full[r - 2], full[r - 1], full[2 * r - 2], full[2 * r - 1]);
    let grow = |d: usize, p: i64, q: i64| (d as i64).saturating_add(p).saturating_add(q).max(0) as usize;
    let mut out = x.shape().to_vec();
    out[r - 2] = grow(out[r - 2], t, b);
    out[r - 1] = grow(out[r - 1], l, rr);
    checked_numel(&out)?;
    let m = match mode {
        PadKind::Constant => PadMode::Constant,
        PadKind::Reflect => PadMode::Reflect,
        PadKind::Edge => PadMode::Replicate,
    };
    Ok(x.pad2d([l as isize, rr as isize, t as isize, b as isize], m, value)?)
}
