//! Chains of nodes the inference executor runs as one fused kernel: a stride-2 convolution
//! (+act) followed by a 3×3 stride-2 max pool (ResNet's stem, [`conv_max_pools`]), and MobileNetV2's
//! inverted residual block — Conv 1×1 (+act) → depthwise Conv 3×3 (+act) → Conv 1×1 (+act)
//! [→ Add of the block's input (+act)], or without the 1×1 expansion, then optionally after
//! the stride-2 Conv (+act) that makes its input (a network's stem) — as
//! `cnnkit_core::fused::inverted_residual`, which
//! keeps the expanded activations in cache instead of writing them to memory and reading them
//! back (see `cnnkit_kernels::fused`). The match is by structure, so torchvision's ONNX export
//! and cnnkit's zoo model fuse alike; shapes and dtypes are checked when the block runs, and
//! a block the kernel does not take runs node by node. Also: a convolution's residual Add
//! (+act) run in place on its output ([`residual_adds`]).

use super::{Graph, GraphOp};
use cnnkit_kernels::conv::Epilogue;
use rustc_hash::FxHashMap as HashMap;

/// One convolution of a matched block: its node and the activation fused after it.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvUnit {
    pub node: usize,
    pub ep: Epilogue,
}

/// A matched block: nodes `start .. end` (activations included).
#[derive(Clone, Debug)]
pub(super) struct BlockPlan {
    pub end: usize,
    /// A stride-2 convolution making the block's input, and its padding (rows, columns).
    pub stem: Option<(ConvUnit, (usize, usize))>,
    pub expand: Option<ConvUnit>,
    pub dw: ConvUnit,
    pub stride: usize,
    pub project: ConvUnit,
    /// The Add node, which of its inputs is the residual, and the activation after it.
    pub add: Option<(usize, usize, Epilogue)>,
    /// The value the block defines (the last node's output).
    pub output: String,
}

/// For each node, the block starting there (None for most). `fused[i]` is the activation
/// that follows node i and runs in its epilogue (`Graph::fusable_activations`); `readers` is
/// `Graph::reader_counts`.
pub(super) fn inverted_residual_blocks(g: &Graph, fused: &[Option<Epilogue>], readers: &HashMap<&str, usize>) -> Vec<Option<BlockPlan>> {
    let only_reader = |v: &str| readers.get(v) == Some(&1);
    // Node i with its fused activation: (the unit, the next node, the value it defines).
    let unit = |i: usize| -> Option<(ConvUnit, usize, &str)> {
        let n = g.nodes.get(i)?;
        let ep = fused.get(i).copied().flatten();
        let out = if ep.is_some() { g.nodes.get(i + 1)?.outputs.first()? } else { n.outputs.first()? };
        Some((ConvUnit { node: i, ep: ep.unwrap_or(Epilogue::None) }, i + 1 + usize::from(ep.is_some()), out.as_str()))
    };
    let conv = |i: usize| match g.nodes.get(i).map(|n| &n.op) {
        Some(GraphOp::Conv { kernel_shape, strides, pads, dilations, group }) => Some((*kernel_shape, *strides, *pads, *dilations, *group)),
        _ => None,
    };
    let pointwise =
        |i: usize| conv(i).is_some_and(|(k, s, p, d, grp)| k == [1, 1] && s == [1, 1] && p == [0; 4] && d == [1, 1] && grp == 1);
    // Depthwise 3×3 pad 1, stride 1 or 2 (group = channels is checked on the weights later).
    let depthwise = |i: usize| match conv(i) {
        Some((k, [s, t], p, d, grp)) if k == [3, 3] && s == t && (s == 1 || s == 2) && p == [1; 4] && d == [1, 1] && grp > 1 => Some(s),
        _ => None,
    };
    // A stride-2 convolution of one group with symmetric padding, kernels at most 8 wide (the
    // stem kernel's limits on K are checked on the weights later).
    let stem = |i: usize| match conv(i) {
        Some((k, [2, 2], [t, l, b, r], [1, 1], 1)) if t == b && l == r && k[1] <= 8 => Some((t, l)),
        _ => None,
    };
    let reads = |i: usize, v: &str| g.nodes[i].inputs.first().is_some_and(|x| x == v);
    (0..g.nodes.len())
        .map(|i| {
            let (stem, expand, mut at, mut x_out) = if pointwise(i) {
                let (u, next, out) = unit(i)?;
                (None, Some(u), next, Some(out))
            } else if let Some(pads) = stem(i) {
                let (u, next, out) = unit(i)?;
                (Some((u, pads)), None, next, Some(out))
            } else {
                (None, None, i, None)
            };
            let stride = depthwise(at)?;
            if x_out.is_some_and(|v| !only_reader(v) || !reads(at, v)) {
                return None;
            }
            let (dw, next, dw_out) = unit(at)?;
            if !pointwise(next) || !only_reader(dw_out) || !reads(next, dw_out) {
                return None;
            }
            let (project, next, p_out) = unit(next)?;
            (at, x_out) = (next, Some(p_out));
            // An Add of the projection and another value (the block's input) joins the block.
            let add = g.nodes.get(at).filter(|n| n.op == GraphOp::Add && n.inputs.len() == 2 && only_reader(p_out)).and_then(|n| {
                let which = n.inputs.iter().position(|v| v == p_out)?;
                Some((at, 1 - which))
            });
            let (end, add) = match add {
                Some((a, r)) => {
                    let ep = fused.get(a).copied().flatten();
                    let (_, next, out) = unit(a)?;
                    x_out = Some(out);
                    (next, Some((a, r, ep.unwrap_or(Epilogue::None))))
                }
                None => (at, None),
            };
            Some(BlockPlan { end, stem, expand, dw, stride, project, add, output: x_out?.to_string() })
        })
        .collect()
}

/// A stride-2 convolution (+act) and the 3×3 stride-2 pad-1 max pool after it: nodes
/// `conv.node .. end` (the activation included).
#[derive(Clone, Debug)]
pub(super) struct ConvPoolPlan {
    pub conv: ConvUnit,
    pub end: usize,
    /// The convolution's zero padding (rows, columns).
    pub padding: (usize, usize),
    /// The pool's output.
    pub output: String,
}

/// For each node, the convolution + max pool starting there (None for most): a Conv of one
/// group, stride 2, no dilation and symmetric padding, its fused activation, then a MaxPool
/// 3×3, stride 2, padding 1, no dilation, floor mode, with one output, reading the
/// convolution's output as its only reader (`cnnkit_core::fused::conv_max_pool`).
pub(super) fn conv_max_pools(g: &Graph, fused: &[Option<Epilogue>], readers: &HashMap<&str, usize>) -> Vec<Option<ConvPoolPlan>> {
    (0..g.nodes.len())
        .map(|i| {
            let GraphOp::Conv { strides: [2, 2], pads: [t, l, b, r], dilations: [1, 1], group: 1, .. } = g.nodes[i].op else { return None };
            if t != b || l != r {
                return None;
            }
            let ep = fused.get(i).copied().flatten();
            let at = i + 1 + usize::from(ep.is_some());
            let out = g.nodes.get(at - 1)?.outputs.first()?;
            let pool = g.nodes.get(at)?;
            let GraphOp::MaxPool { kernel_shape: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1], dilations: [1, 1], ceil_mode: false } =
                pool.op
            else {
                return None;
            };
            if pool.inputs.first() != Some(out) || readers.get(out.as_str()) != Some(&1) || pool.outputs.len() != 1 {
                return None;
            }
            let conv = ConvUnit { node: i, ep: ep.unwrap_or(Epilogue::None) };
            Some(ConvPoolPlan { conv, end: at + 1, padding: (t, l), output: pool.outputs[0].clone() })
        })
        .collect()
}

/// A convolution whose output only feeds an Add (a residual connection: ResNet's second
/// convolution of a block, BN folded into it), with the activation after the Add.
#[derive(Clone, Debug)]
pub(super) struct ResidualAddPlan {
    /// The Add's other input: the residual.
    pub residual: String,
    /// The activation after the Add (None without one).
    pub act: Epilogue,
    /// Nodes start .. end run as one (the Conv, the Add and its activation).
    pub end: usize,
    /// The value the chain defines (the last node's output).
    pub output: String,
}

impl ResidualAddPlan {
    /// The nodes the chain covers after the Conv, for the profile: the Add, and the
    /// activation's node.
    pub fn covers(&self) -> &'static str {
        match self.act {
            Epilogue::None => "Add",
            Epilogue::Relu => "Add+Relu",
            Epilogue::Clamp(..) => "Add+Clip",
        }
    }
}

/// For each node, the residual Add that runs in place on its output (None for most): a Conv
/// without a fused activation whose single output is read only by the next node, an Add of
/// two inputs, the other of which is defined before the Conv (so it is ready when the
/// convolution is); the Add's fused activation, if any, comes with it. The Add then costs one
/// pass over the convolution's fresh output, instead of a third tensor and a node.
pub(super) fn residual_adds(g: &Graph, fused: &[Option<Epilogue>], readers: &HashMap<&str, usize>) -> Vec<Option<ResidualAddPlan>> {
    (0..g.nodes.len())
        .map(|i| {
            let (c, a) = (&g.nodes[i], g.nodes.get(i + 1)?);
            if !matches!(c.op, GraphOp::Conv { .. }) || fused[i].is_some() || !matches!(a.op, GraphOp::Add) {
                return None;
            }
            let [out] = c.outputs.as_slice() else { return None };
            let [p, q] = a.inputs.as_slice() else { return None };
            let residual = match (p == out, q == out) {
                (true, false) => q,
                (false, true) => p,
                _ => return None,
            };
            // Defined before the Conv: a graph input, an initializer, or an earlier node's output.
            let earlier = g.inputs.iter().any(|v| &v.name == residual)
                || g.initializers.contains_key(residual)
                || g.nodes[..i].iter().any(|n| n.outputs.contains(residual));
            if readers.get(out.as_str()) != Some(&1) || !earlier || a.outputs.len() != 1 {
                return None;
            }
            let act = fused[i + 1];
            let last = if act.is_some() { g.nodes.get(i + 2)? } else { a };
            Some(ResidualAddPlan {
                residual: residual.clone(),
                act: act.unwrap_or(Epilogue::None),
                end: i + 2 + usize::from(act.is_some()),
                output: last.outputs.first()?.clone(),
            })
        })
        .collect()
}
