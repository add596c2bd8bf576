//! ONNX → Graph. Opsets 11–18 of the default domain are accepted; attribute forms that later
//! opsets turned into inputs (Squeeze/Unsqueeze/ReduceSum axes before 13, ReduceMean axes
//! before 18, Split sizes before 13, Clip bounds before 11, Pad pads before 11) become constant
//! inputs, Constant nodes become initializers, and Upsample becomes Resize, so the Graph only
//! ever holds the newest form of each op.

use crate::proto::{AttributeProto, ModelProto, NodeProto, ValueInfoProto};
use crate::tensor::{dtype_of, from_proto};
use cnnkit_core::{DType, Tensor};
use cnnkit_nn::graph::{CoordMode, GraphOp, NearestMode, Node, PadKind, ResizeMode, ValueInfo};
use prost::Message;
use std::collections::{BTreeMap, HashSet};

pub(crate) const MIN_OPSET: i64 = 11;
pub(crate) const MAX_OPSET: i64 = 18;

/// A node's attributes by name.
struct Attrs<'a>(&'a [AttributeProto]);

impl Attrs<'_> {
    fn get(&self, n: &str) -> Option<&AttributeProto> {
        self.0.iter().find(|a| a.name.as_deref() == Some(n))
    }
    fn i(&self, n: &str, d: i64) -> i64 {
        self.get(n).and_then(|a| a.i).unwrap_or(d)
    }
    fn f(&self, n: &str, d: f64) -> f64 {
        self.get(n).and_then(|a| a.f).map_or(d, |v| v as f64)
    }
    fn ints(&self, n: &str) -> Option<Vec<i64>> {
        self.get(n).map(|a| a.ints.clone())
    }
    fn s(&self, n: &str, d: &str) -> String {
        self.get(n).and_then(|a| a.s.as_ref()).map_or(d.to_string(), |s| String::from_utf8_lossy(s).into_owned())
    }
}

/// Builds the graph, holding the state that normalisation needs.
struct Importer {
    opset: i64,
    initializers: BTreeMap<String, Tensor>,
    nodes: Vec<Node>,
    taken: HashSet<String>,
}

type R<T> = std::result::Result<T, String>;

/// Kernel sizes, strides, pads and dilations beyond this are rejected as malformed.
const MAX_SPATIAL: i64 = 1 << 20;

fn pair(v: Option<Vec<i64>>, default: usize, what: &str) -> R<[usize; 2]> {
    match v {
        None => Ok([default; 2]),
        Some(v) if v.len() == 2 && v.iter().all(|&x| (0..=MAX_SPATIAL).contains(&x)) => Ok([v[0] as usize, v[1] as usize]),
        Some(v) => Err(format!("{what} {v:?}: only 2-D spatial ops are supported")),
    }
}

fn quad(v: Option<Vec<i64>>) -> R<[usize; 4]> {
    match v {
        None => Ok([0; 4]),
        Some(v) if v.len() == 4 && v.iter().all(|&x| (0..=MAX_SPATIAL).contains(&x)) => {
            Ok([v[0] as usize, v[1] as usize, v[2] as usize, v[3] as usize])
        }
        Some(v) => Err(format!("pads {v:?}: only 2-D spatial ops are supported")),
    }
}

impl Importer {
    fn unique(&mut self, base: &str) -> String {
        let mut n = base.to_string();
        let mut i = 1;
        while !self.taken.insert(n.clone()) {
            n = format!("{base}_{i}");
            i += 1;
        }
        n
    }
    fn constant(&mut self, base: &str, t: Tensor) -> String {
        let n = self.unique(base);
        self.initializers.insert(n.clone(), t);
        n
    }
    fn ints_const(&mut self, base: &str, v: &[i64]) -> R<String> {
        let t = Tensor::from_vec(v.to_vec(), &[v.len()]).map_err(|e| e.to_string())?;
        Ok(self.constant(base, t))
    }
    fn push(&mut self, name: &str, op: GraphOp, inputs: Vec<String>, outputs: Vec<String>) {
        self.nodes.push(Node { name: name.to_string(), op, inputs, outputs });
    }

    /// Kernel shape from the attribute, or from the weight initializer when omitted.
    fn kernel(&self, a: &Attrs, w: Option<&String>) -> R<[usize; 2]> {
        if let Some(k) = a.ints("kernel_shape") {
            return pair(Some(k), 1, "kernel_shape");
        }
        match w.and_then(|w| self.initializers.get(w)) {
            Some(t) if t.ndim() == 4 => Ok([t.shape()[2], t.shape()[3]]),
            _ => Err("kernel_shape is missing and the weight is not a 4-D initializer".into()),
        }
    }

    fn auto_pad(a: &Attrs) -> R<()> {
        match a.s("auto_pad", "NOTSET").as_str() {
            "NOTSET" | "VALID" => Ok(()),
            p => Err(format!("auto_pad={p} is not supported (export with explicit pads)")),
        }
    }

    /// Converts one node; returns Ok(false) when the op is not supported.
    fn node(&mut self, n: &NodeProto, name: &str) -> R<bool> {
        let a = Attrs(&n.attribute);
        let op_type = n.op_type.as_deref().unwrap_or("");
        let mut ins = n.input.clone();
        let outs = n.output.clone();
        let opset = self.opset;
        use GraphOp as G;
        let op = match op_type {
            "Constant" => {
                let out = outs.first().ok_or("Constant without output")?;
                let t = if let Some(t) = a.get("value").and_then(|v| v.t.as_ref()) {
                    from_proto(t, out)?
                } else if let Some(v) = a.get("value_float").and_then(|v| v.f) {
                    Tensor::scalar(v)
                } else if let Some(v) = a.get("value_int").and_then(|v| v.i) {
                    Tensor::scalar(v)
                } else if let Some(v) = a.get("value_floats") {
                    Tensor::from_vec(v.floats.clone(), &[v.floats.len()]).map_err(|e| e.to_string())?
                } else if let Some(v) = a.get("value_ints") {
                    Tensor::from_vec(v.ints.clone(), &[v.ints.len()]).map_err(|e| e.to_string())?
                } else {
                    return Err("Constant without a supported value attribute".into());
                };
                if self.initializers.insert(out.clone(), t).is_some() {
                    return Err(format!("value '{out}' is defined twice"));
                }
                return Ok(true);
            }
            "Conv" => {
                Self::auto_pad(&a)?;
                G::Conv {
                    kernel_shape: self.kernel(&a, ins.get(1))?,
                    strides: pair(a.ints("strides"), 1, "strides")?,
                    pads: quad(a.ints("pads"))?,
                    dilations: pair(a.ints("dilations"), 1, "dilations")?,
                    group: a.i("group", 1).clamp(1, MAX_SPATIAL) as usize,
                }
            }
            "ConvTranspose" => {
                Self::auto_pad(&a)?;
                if a.get("output_shape").is_some() {
                    return Err("ConvTranspose output_shape is not supported (export with pads/output_padding)".into());
                }
                G::ConvTranspose {
                    kernel_shape: self.kernel(&a, ins.get(1))?,
                    strides: pair(a.ints("strides"), 1, "strides")?,
                    pads: quad(a.ints("pads"))?,
                    dilations: pair(a.ints("dilations"), 1, "dilations")?,
                    group: a.i("group", 1).clamp(1, MAX_SPATIAL) as usize,
                    output_padding: pair(a.ints("output_padding"), 0, "output_padding")?,
                }
            }
            "BatchNormalization" => {
                if a.i("training_mode", 0) != 0 || outs.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err("training-mode BatchNormalization is not supported".into());
                }
                G::BatchNormalization { epsilon: a.f("epsilon", 1e-5) }
            }
            "Gemm" => {
                G::Gemm { alpha: a.f("alpha", 1.0), beta: a.f("beta", 1.0), trans_a: a.i("transA", 0) != 0, trans_b: a.i("transB", 0) != 0 }
            }
            "MatMul" => G::MatMul,
            "Relu" => G::Relu,
            "LeakyRelu" => G::LeakyRelu { alpha: a.f("alpha", 0.01) },
            "PRelu" => G::PRelu,
            "Sigmoid" => G::Sigmoid,
            "Tanh" => G::Tanh,
            "HardSigmoid" => G::HardSigmoid { alpha: a.f("alpha", 0.2), beta: a.f("beta", 0.5) },
            "HardSwish" => G::HardSwish,
            "Elu" => G::Elu { alpha: a.f("alpha", 1.0) },
            "Selu" => G::Selu { alpha: a.f("alpha", 1.673_263_192_176_818_8), gamma: a.f("gamma", 1.050_701_022_148_132_3) },
            "Softplus" => G::Softplus,
            "Mish" => {
                // Mish (opset 18) = x·tanh(softplus(x)).
                let x = ins.first().cloned().unwrap_or_default();
                let sp = self.unique(&format!("{name}/softplus"));
                let th = self.unique(&format!("{name}/tanh"));
                self.push(&format!("{name}/Softplus"), G::Softplus, vec![x.clone()], vec![sp.clone()]);
                self.push(&format!("{name}/Tanh"), G::Tanh, vec![sp], vec![th.clone()]);
                self.push(name, G::Mul, vec![x, th], outs);
                return Ok(true);
            }
            "Clip" => {
                // Before opset 11 the bounds were attributes.
                if a.get("min").is_some() || a.get("max").is_some() {
                    let lo = a.get("min").map(|_| self.constant(&format!("{name}/min"), Tensor::scalar(a.f("min", 0.0) as f32)));
                    let hi = a.get("max").map(|_| self.constant(&format!("{name}/max"), Tensor::scalar(a.f("max", 0.0) as f32)));
                    ins.truncate(1);
                    ins.push(lo.unwrap_or_default());
                    ins.push(hi.unwrap_or_default());
                }
                G::Clip
            }
            "Add" => G::Add,
            "Sub" => G::Sub,
            "Mul" => G::Mul,
            "Div" => G::Div,
            "Pow" => G::Pow,
            "Neg" => G::Neg,
            "Sqrt" => G::Sqrt,
            "Exp" => G::Exp,
            "Log" => G::Log,
            "Abs" => G::Abs,
            "Reciprocal" => G::Reciprocal,
            "Max" => G::Max,
            "Min" => G::Min,
            "Erf" => G::Erf,
            "MaxPool" => {
                Self::auto_pad(&a)?;
                if outs.len() > 1 || a.i("storage_order", 0) != 0 {
                    return Err("MaxPool with an Indices output is not supported".into());
                }
                G::MaxPool {
                    kernel_shape: pair(a.ints("kernel_shape"), 1, "kernel_shape")?,
                    strides: pair(a.ints("strides"), 1, "strides")?,
                    pads: quad(a.ints("pads"))?,
                    dilations: pair(a.ints("dilations"), 1, "dilations")?,
                    ceil_mode: a.i("ceil_mode", 0) != 0,
                }
            }
            "AveragePool" => {
                Self::auto_pad(&a)?;
                if pair(a.ints("dilations"), 1, "dilations")? != [1, 1] {
                    return Err("dilated AveragePool is not supported".into());
                }
                G::AveragePool {
                    kernel_shape: pair(a.ints("kernel_shape"), 1, "kernel_shape")?,
                    strides: pair(a.ints("strides"), 1, "strides")?,
                    pads: quad(a.ints("pads"))?,
                    ceil_mode: a.i("ceil_mode", 0) != 0,
                    count_include_pad: a.i("count_include_pad", 0) != 0,
                }
            }
            "GlobalAveragePool" => G::GlobalAveragePool,
            "GlobalMaxPool" => G::GlobalMaxPool,
            "Flatten" => G::Flatten { axis: a.i("axis", 1) },
            "Reshape" => G::Reshape { allowzero: a.i("allowzero", 0) != 0 },
            "Transpose" => {
                let perm = a.ints("perm").unwrap_or_default();
                if perm.iter().any(|&p| p < 0) {
                    return Err(format!("invalid perm {perm:?}"));
                }
                G::Transpose { perm: perm.into_iter().map(|p| p as usize).collect() }
            }
            "Concat" => G::Concat { axis: a.get("axis").and_then(|v| v.i).ok_or("Concat without axis")? },
            "Split" => {
                if opset < 13 {
                    if let Some(s) = a.ints("split") {
                        let c = self.ints_const(&format!("{name}/split"), &s)?;
                        ins.truncate(1);
                        ins.push(c);
                    }
                }
                let num = a.get("num_outputs").and_then(|v| v.i).map(|v| v.max(0) as usize);
                G::Split { axis: a.i("axis", 0), num_outputs: num }
            }
            "Slice" => G::Slice,
            "Squeeze" | "Unsqueeze" | "ReduceSum" | "ReduceMean" => {
                // Axes moved from attribute to input at opset 13 (ReduceMean: 18).
                let moved = if op_type == "ReduceMean" { 18 } else { 13 };
                if opset < moved {
                    if let Some(ax) = a.ints("axes") {
                        let c = self.ints_const(&format!("{name}/axes"), &ax)?;
                        ins.truncate(1);
                        ins.push(c);
                    }
                }
                let (keepdims, noop) = (a.i("keepdims", 1) != 0, a.i("noop_with_empty_axes", 0) != 0);
                match op_type {
                    "Squeeze" => G::Squeeze,
                    "Unsqueeze" => G::Unsqueeze,
                    "ReduceSum" => G::ReduceSum { keepdims, noop_with_empty_axes: noop },
                    _ => G::ReduceMean { keepdims, noop_with_empty_axes: noop },
                }
            }
            "Shape" => G::Shape { start: a.i("start", 0), end: a.get("end").and_then(|v| v.i) },
            "Gather" => G::Gather { axis: a.i("axis", 0) },
            "Softmax" | "LogSoftmax" => {
                let log = op_type == "LogSoftmax";
                if opset >= 13 {
                    let axis = a.i("axis", -1);
                    if log {
                        G::LogSoftmax { axis }
                    } else {
                        G::Softmax { axis }
                    }
                } else {
                    // Before opset 13 the input is coerced to 2-D at `axis` (default 1): flatten,
                    // normalise the rows, restore the shape.
                    let axis = a.i("axis", 1);
                    let x = ins.first().cloned().unwrap_or_default();
                    let (shape, flat, y) =
                        (self.unique(&format!("{name}/shape")), self.unique(&format!("{name}/flat")), self.unique(&format!("{name}/rows")));
                    self.push(&format!("{name}/Shape"), G::Shape { start: 0, end: None }, vec![x.clone()], vec![shape.clone()]);
                    self.push(&format!("{name}/Flatten"), G::Flatten { axis }, vec![x], vec![flat.clone()]);
                    let op = if log { G::LogSoftmax { axis: 1 } } else { G::Softmax { axis: 1 } };
                    self.push(name, op, vec![flat], vec![y.clone()]);
                    self.push(&format!("{name}/Reshape"), G::Reshape { allowzero: false }, vec![y, shape], outs);
                    return Ok(true);
                }
            }
            "Pad" => {
                if opset < 11 {
                    let p = a.ints("pads").ok_or("Pad without pads")?;
                    let pc = self.ints_const(&format!("{name}/pads"), &p)?;
                    let vc = self.constant(&format!("{name}/value"), Tensor::scalar(a.f("value", 0.0) as f32));
                    ins.truncate(1);
                    ins.extend([pc, vc]);
                }
                let mode = match a.s("mode", "constant").as_str() {
                    "constant" => PadKind::Constant,
                    "reflect" => PadKind::Reflect,
                    "edge" => PadKind::Edge,
                    m => return Err(format!("Pad mode '{m}' is not supported")),
                };
                G::Pad { mode }
            }
            "Resize" | "Upsample" => {
                let mode = match a.s("mode", "nearest").as_str() {
                    "nearest" => ResizeMode::Nearest,
                    "linear" | "bilinear" => ResizeMode::Linear,
                    m => return Err(format!("{op_type} mode '{m}' is not supported")),
                };
                if op_type == "Upsample" {
                    // Upsample(X, scales) is Resize with asymmetric coordinates and floor rounding.
                    let x = ins.first().cloned().unwrap_or_default();
                    ins = vec![x, String::new(), ins.get(1).cloned().unwrap_or_default()];
                    G::Resize { mode, coordinate_transformation_mode: CoordMode::Asymmetric, nearest_mode: NearestMode::Floor }
                } else {
                    if a.i("antialias", 0) != 0 || a.get("axes").is_some() || a.s("keep_aspect_ratio_policy", "stretch") != "stretch" {
                        return Err("Resize with antialias, axes or keep_aspect_ratio_policy is not supported".into());
                    }
                    let cm = match a.s("coordinate_transformation_mode", "half_pixel").as_str() {
                        "half_pixel" => CoordMode::HalfPixel,
                        "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
                        "align_corners" => CoordMode::AlignCorners,
                        "asymmetric" => CoordMode::Asymmetric,
                        m => return Err(format!("Resize coordinate_transformation_mode '{m}' is not supported")),
                    };
                    let nm = match a.s("nearest_mode", "round_prefer_floor").as_str() {
                        "round_prefer_floor" => NearestMode::RoundPreferFloor,
                        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
                        "floor" => NearestMode::Floor,
                        "ceil" => NearestMode::Ceil,
                        m => return Err(format!("Resize nearest_mode '{m}' is not supported")),
                    };
                    G::Resize { mode, coordinate_transformation_mode: cm, nearest_mode: nm }
                }
            }
            "DepthToSpace" => {
                G::DepthToSpace { blocksize: a.i("blocksize", 0).clamp(0, MAX_SPATIAL) as usize, crd: a.s("mode", "DCR") == "CRD" }
            }
            "Dropout" => {
                // Inference: ratio and training_mode inputs are ignored.
                ins.truncate(1);
                G::Dropout
            }
            "Identity" => G::Identity,
            "Cast" => G::Cast { to: dtype_of(a.i("to", 0) as i32)? },
            "ConstantOfShape" => {
                let (value, dtype) = match a.get("value").and_then(|v| v.t.as_ref()) {
                    Some(t) => {
                        let t = from_proto(t, name)?;
                        let v = t.to_f64_vec().map_err(|e| e.to_string())?;
                        (v.first().copied().unwrap_or(0.0), t.dtype())
                    }
                    None => (0.0, DType::F32),
                };
                G::ConstantOfShape { value, dtype }
            }
            "Expand" => G::Expand,
            "Equal" => G::Equal,
            "Where" => G::Where,
            "Range" => G::Range,
            _ => return Ok(false),
        };
        self.push(name, op, ins, outs);
        Ok(true)
    }
}

fn input_info(v: &ValueInfoProto) -> R<ValueInfo> {
    let name = v.name.clone().unwrap_or_default();
    let shape = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).and_then(|t| t.shape.as_ref());
    let shape = shape.ok_or_else(|| format!("graph input '{name}' has no tensor shape"))?;
    let dims = shape.dim.iter().map(|d| d.dim_value.filter(|&v| v > 0).map(|v| v as usize)).collect();
    Ok(ValueInfo { name, shape: dims })
}

/// Decodes an ONNX model from `bytes`; `name` (usually the path) labels errors.
pub fn read_onnx(bytes: &[u8], name: &str) -> cnnkit_core::Result<crate::Graph> {
    let err = |msg: String| cnnkit_core::Error::File { path: name.to_string(), msg };
    let model = ModelProto::decode(bytes).map_err(|e| err(format!("not a valid ONNX model (protobuf decode failed: {e})")))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| err("the model imports no ai.onnx opset".into()))?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(err(format!("opset {opset} is not supported (cnnkit reads opsets {MIN_OPSET}–{MAX_OPSET})")));
    }
    let g = model.graph.as_ref().ok_or_else(|| err("the model has no graph".into()))?;
    let mut imp = Importer { opset, initializers: BTreeMap::new(), nodes: Vec::new(), taken: HashSet::new() };
    for t in &g.initializer {
        let n = t.name.clone().unwrap_or_default();
        if n.is_empty() || !imp.taken.insert(n.clone()) {
            return Err(err(format!("initializer '{n}' is unnamed or defined twice")));
        }
        let v = from_proto(t, &n).map_err(err)?;
        imp.initializers.insert(n, v);
    }
    // Older exporters also list initializers as graph inputs; those are not runtime inputs.
    let mut inputs = Vec::new();
    for v in g.input.iter().filter(|v| !imp.initializers.contains_key(v.name.as_deref().unwrap_or(""))) {
        let vi = input_info(v).map_err(err)?;
        imp.taken.insert(vi.name.clone());
        inputs.push(vi);
    }
    for n in &g.node {
        for o in &n.output {
            imp.taken.insert(o.clone());
        }
    }
    for (i, n) in g.node.iter().enumerate() {
        let node_name =
            n.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| format!("{}_{i}", n.op_type.as_deref().unwrap_or("node")));
        let op_type = n.op_type.as_deref().unwrap_or("");
        let domain = n.domain.as_deref().unwrap_or("");
        let supported = if domain.is_empty() || domain == "ai.onnx" {
            imp.node(n, &node_name).map_err(|m| err(format!("node {node_name} ({op_type}): {m}")))?
        } else {
            false
        };
        if !supported {
            let shown = if domain.is_empty() { op_type.to_string() } else { format!("{domain}::{op_type}") };
            return Err(err(format!("unsupported ONNX op '{shown}' at node '{node_name}' (opset {opset})")));
        }
    }
    let graph = crate::Graph {
        inputs,
        outputs: g.output.iter().map(|o| o.name.clone().unwrap_or_default()).collect(),
        initializers: imp.initializers,
        nodes: imp.nodes,
    };
    graph.validate().map_err(|e| err(e.to_string()))?;
    Ok(graph)
}
