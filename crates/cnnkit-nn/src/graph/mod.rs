//! A dataflow-graph IR shaped like ONNX: named values, initializers (parameters and constants
//! keyed by their PyTorch state_dict names) and nodes in topological order whose ops carry
//! ONNX's semantics and attribute names. ONNX import/export (cnnkit-onnx) and module export
//! ([`module_to_graph`]) meet here; [`Graph::run`] executes it with cnnkit-core ops and
//! [`Graph::infer_shapes`] computes every value's static shape.

mod builder;
mod exec;
mod exec_shape;
mod fuse;
mod plan;
mod shape;

pub use builder::{module_to_graph, GraphBuilder};
pub use exec::Planned;
pub use plan::optimize_for_inference;

use cnnkit_core::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, HashSet};

/// A graph input: its name and shape (None = a dynamic dim, e.g. the batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueInfo {
    pub name: String,
    pub shape: Vec<Option<usize>>,
}

/// One op application. An empty input name is an absent optional input, as in ONNX.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: GraphOp,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// One node's share of a [`Graph::run_profiled`] run.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTime {
    /// The node's name (may be empty in imported graphs).
    pub name: String,
    /// Its operator, as ONNX names it ("Conv", "Relu", …), or "InvertedResidual" for a
    /// MobileNetV2 block (with the stem before it, when fused too) run as one fused kernel
    /// (named after its first node).
    pub op: &'static str,
    /// For convolutions, "C_in→C_out KH×KW sS gG"; for a fused block "C_in→C_mid→C_out sS",
    /// after "C_img→C_in KH×KW s2 + " when it runs the stem before it too; empty otherwise.
    pub detail: String,
    /// The nodes run with it after it, when fused: the activation's ("Relu", "Clip"), or a
    /// residual Add and its activation run in place on a convolution's output ("Add+Relu").
    pub fused: Option<&'static str>,
    /// Wall time, milliseconds.
    pub ms: f64,
}

/// A whole model: inputs, outputs, initializers by name, and nodes in topological order.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<String>,
    pub initializers: BTreeMap<String, Tensor>,
    pub nodes: Vec<Node>,
}

/// Resize's interpolation (ONNX `mode`; cubic is not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    Nearest,
    Linear,
}

/// ONNX Resize `coordinate_transformation_mode`: how an output coordinate maps to the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordMode {
    HalfPixel,
    /// half_pixel, except that a length-1 output reads coordinate 0 (PyTorch's bilinear).
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
}

/// ONNX Resize `nearest_mode`: how a fractional source coordinate rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// ONNX Pad `mode` (opset ≤ 18: no "wrap").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadKind {
    Constant,
    Reflect,
    Edge,
}

/// The operators of the IR, named and parameterised as their ONNX namesakes (opset 13+ forms:
/// axes, split sizes, pads and clip bounds are inputs, not attributes). 2-D spatial ops only;
/// `pads` are ONNX-ordered [top, left, bottom, right].
#[derive(Clone, Debug, PartialEq)]
pub enum GraphOp {
    /// Inputs X (N, C, H, W), W (M, C/group, kH, kW), optional B (M).
    Conv {
        kernel_shape: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        dilations: [usize; 2],
        group: usize,
    },
    /// Inputs X (N, C, H, W), W (C, M/group, kH, kW), optional B (M).
    ConvTranspose {
        kernel_shape: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        dilations: [usize; 2],
        group: usize,
        output_padding: [usize; 2],
    },
    /// Inference form. Inputs X (N, C, *), scale, B, mean, var (each (C)).
    BatchNormalization {
        epsilon: f64,
    },
    /// alpha·A'·B' + beta·C with A' = Aᵀ if trans_a (2-D operands).
    Gemm {
        alpha: f64,
        beta: f64,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Relu,
    LeakyRelu {
        alpha: f64,
    },
    /// Inputs X, slope (broadcast to X).
    PRelu,
    Sigmoid,
    Tanh,
    HardSigmoid {
        alpha: f64,
        beta: f64,
    },
    HardSwish,
    Elu {
        alpha: f64,
    },
    Selu {
        alpha: f64,
        gamma: f64,
    },
    Softplus,
    /// ONNX Gelu (opset 20); exporters decompose it for older opsets.
    Gelu {
        approximate_tanh: bool,
    },
    /// Inputs X, optional min, optional max (scalars).
    Clip,
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Neg,
    Sqrt,
    Exp,
    Log,
    Abs,
    Reciprocal,
    /// Elementwise maximum of all inputs (variadic).
    Max,
    Min,
    Erf,
    MaxPool {
        kernel_shape: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        dilations: [usize; 2],
        ceil_mode: bool,
    },
    AveragePool {
        kernel_shape: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        ceil_mode: bool,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    GlobalMaxPool,
    /// To 2-D: (prod(dims[..axis]), prod(dims[axis..])).
    Flatten {
        axis: i64,
    },
    /// Inputs data, shape (int64; 0 copies the input dim unless allowzero, −1 is inferred).
    Reshape {
        allowzero: bool,
    },
    /// An empty perm reverses the dims.
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: i64,
    },
    /// Inputs X, optional split sizes (int64); without sizes, equal parts (`num_outputs` or the
    /// node's output count).
    Split {
        axis: i64,
        num_outputs: Option<usize>,
    },
    /// Inputs data, starts, ends, optional axes, optional steps (int64).
    Slice,
    /// Inputs data, optional axes (int64; absent = every size-1 dim).
    Squeeze,
    /// Inputs data, axes (int64).
    Unsqueeze,
    /// The input's shape as int64, dims [start, end).
    Shape {
        start: i64,
        end: Option<i64>,
    },
    /// Inputs data, indices (int64, any rank).
    Gather {
        axis: i64,
    },
    Softmax {
        axis: i64,
    },
    LogSoftmax {
        axis: i64,
    },
    /// Inputs data, optional axes (int64).
    ReduceMean {
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    ReduceSum {
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    /// Inputs data, pads (int64, [begin…, end…]), optional constant value, optional axes.
    Pad {
        mode: PadKind,
    },
    /// Inputs X, optional roi, optional scales (float), optional sizes (int64); 4-D, resizing
    /// the last two dims.
    Resize {
        mode: ResizeMode,
        coordinate_transformation_mode: CoordMode,
        nearest_mode: NearestMode,
    },
    /// (N, C·b², H, W) → (N, C, H·b, W·b); `crd` = PyTorch's pixel_shuffle order, else DCR.
    DepthToSpace {
        blocksize: usize,
        crd: bool,
    },
    /// Inference: the identity (an optional second output is an all-true mask).
    Dropout,
    Identity,
    /// Booleans are u8 masks; every ONNX integer type is held as int64.
    Cast {
        to: DType,
    },
    /// Input shape (int64); fills with `value` of `dtype`.
    ConstantOfShape {
        value: f64,
        dtype: DType,
    },
    /// Inputs data, shape (int64), broadcast both ways.
    Expand,
    Equal,
    /// Inputs cond (bool), X, Y.
    Where,
    /// Inputs start, limit, delta (scalars).
    Range,
}

impl GraphOp {
    /// The ONNX op_type.
    pub fn name(&self) -> &'static str {
        use GraphOp::*;
        match self {
            Conv { .. } => "Conv",
            ConvTranspose { .. } => "ConvTranspose",
            BatchNormalization { .. } => "BatchNormalization",
            Gemm { .. } => "Gemm",
            MatMul => "MatMul",
            Relu => "Relu",
            LeakyRelu { .. } => "LeakyRelu",
            PRelu => "PRelu",
            Sigmoid => "Sigmoid",
            Tanh => "Tanh",
            HardSigmoid { .. } => "HardSigmoid",
            HardSwish => "HardSwish",
            Elu { .. } => "Elu",
            Selu { .. } => "Selu",
            Softplus => "Softplus",
            Gelu { .. } => "Gelu",
            Clip => "Clip",
            Add => "Add",
            Sub => "Sub",
            Mul => "Mul",
            Div => "Div",
            Pow => "Pow",
            Neg => "Neg",
            Sqrt => "Sqrt",
            Exp => "Exp",
            Log => "Log",
            Abs => "Abs",
            Reciprocal => "Reciprocal",
            Max => "Max",
            Min => "Min",
            Erf => "Erf",
            MaxPool { .. } => "MaxPool",
            AveragePool { .. } => "AveragePool",
            GlobalAveragePool => "GlobalAveragePool",
            GlobalMaxPool => "GlobalMaxPool",
            Flatten { .. } => "Flatten",
            Reshape { .. } => "Reshape",
            Transpose { .. } => "Transpose",
            Concat { .. } => "Concat",
            Split { .. } => "Split",
            Slice => "Slice",
            Squeeze => "Squeeze",
            Unsqueeze => "Unsqueeze",
            Shape { .. } => "Shape",
            Gather { .. } => "Gather",
            Softmax { .. } => "Softmax",
            LogSoftmax { .. } => "LogSoftmax",
            ReduceMean { .. } => "ReduceMean",
            ReduceSum { .. } => "ReduceSum",
            Pad { .. } => "Pad",
            Resize { .. } => "Resize",
            DepthToSpace { .. } => "DepthToSpace",
            Dropout => "Dropout",
            Identity => "Identity",
            Cast { .. } => "Cast",
            ConstantOfShape { .. } => "ConstantOfShape",
            Expand => "Expand",
            Equal => "Equal",
            Where => "Where",
            Range => "Range",
        }
    }
}

impl GraphOp {
    /// Rounds float attributes to f32, the precision ONNX stores them in, so that a graph
    /// written to ONNX and read back is identical. (The builder applies it to every node.)
    pub fn round_float_attributes(&mut self) {
        use GraphOp::*;
        let r = |v: &mut f64| *v = *v as f32 as f64;
        match self {
            BatchNormalization { epsilon } => r(epsilon),
            Gemm { alpha, beta, .. } => {
                r(alpha);
                r(beta)
            }
            LeakyRelu { alpha } | Elu { alpha } => r(alpha),
            HardSigmoid { alpha, beta } => {
                r(alpha);
                r(beta)
            }
            Selu { alpha, gamma } => {
                r(alpha);
                r(gamma)
            }
            _ => {}
        }
    }
}

/// An error about the graph as a whole (not one node).
pub(crate) fn graph_err(msg: impl Into<String>) -> Error {
    Error::invalid("graph", msg)
}

impl Graph {
    /// Checks that every node input is a graph input, an initializer or an earlier node's
    /// output, that no value is defined twice, and that every graph output is defined.
    pub fn validate(&self) -> Result<()> {
        let mut defined: HashSet<&str> = self.inputs.iter().map(|v| v.name.as_str()).collect();
        for k in self.initializers.keys() {
            if !defined.insert(k) {
                return Err(graph_err(format!("value '{k}' is both a graph input and an initializer")));
            }
        }
        for n in &self.nodes {
            if let Some(i) = n.inputs.iter().find(|i| !i.is_empty() && !defined.contains(i.as_str())) {
                return Err(graph_err(format!("node {} ({}): input '{i}' is not defined before it", n.name, n.op.name())));
            }
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                if !defined.insert(o) {
                    return Err(graph_err(format!("node {} ({}): output '{o}' is defined twice", n.name, n.op.name())));
                }
            }
        }
        if let Some(o) = self.outputs.iter().find(|o| !defined.contains(o.as_str())) {
            return Err(graph_err(format!("graph output '{o}' is not produced by any node")));
        }
        Ok(())
    }

    /// How many times each value is read: once per node input that names it, and once more
    /// when it is a graph output (so 1 means one node reads it and nothing else does).
    pub(crate) fn reader_counts(&self) -> rustc_hash::FxHashMap<&str, usize> {
        let mut n = rustc_hash::FxHashMap::<&str, usize>::default();
        let names = self.nodes.iter().flat_map(|node| &node.inputs).chain(&self.outputs);
        for v in names.filter(|v| !v.is_empty()) {
            *n.entry(v.as_str()).or_default() += 1;
        }
        n
    }

    /// Renames value `from` to `to` everywhere (node inputs/outputs, graph inputs/outputs,
    /// initializers).
    pub fn rename_value(&mut self, from: &str, to: &str) {
        let r = |s: &mut String| {
            if s == from {
                *s = to.to_string();
            }
        };
        self.inputs.iter_mut().for_each(|v| r(&mut v.name));
        self.outputs.iter_mut().for_each(r);
        for n in &mut self.nodes {
            n.inputs.iter_mut().chain(n.outputs.iter_mut()).for_each(r);
        }
        if let Some(t) = self.initializers.remove(from) {
            self.initializers.insert(to.to_string(), t);
        }
    }
}
