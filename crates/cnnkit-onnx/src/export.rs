//! Graph → ONNX (opset 17, IR version 8): initializers as raw data, input/output value_info
//! with shapes (a dynamic dim 0 is named "N"), attributes in opset-17 form.

use crate::proto::{
    attr_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use crate::tensor::{onnx_type, to_proto};
use cnnkit_core::{DType, Error, Result, Tensor};
use cnnkit_nn::graph::{CoordMode, Graph, GraphOp, NearestMode, PadKind, ResizeMode};
use prost::Message;
use std::path::Path;

pub(crate) const EXPORT_OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attr_type::INT), i: Some(v), ..Default::default() }
}
fn float(name: &str, v: f64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attr_type::FLOAT), f: Some(v as f32), ..Default::default() }
}
fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INTS),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}
fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attr_type::STRING), s: Some(v.as_bytes().to_vec()), ..Default::default() }
}

/// The opset-17 attributes of `op`; `inputs` may be rewritten (ReduceMean's axes become an
/// attribute until opset 18).
fn attributes(op: &GraphOp, g: &Graph, inputs: &mut Vec<String>) -> std::result::Result<Vec<AttributeProto>, String> {
    use GraphOp::*;
    Ok(match op {
        Conv { kernel_shape, strides, pads, dilations, group } => {
            vec![
                ints("kernel_shape", kernel_shape),
                ints("strides", strides),
                ints("pads", pads),
                ints("dilations", dilations),
                int("group", *group as i64),
            ]
        }
        ConvTranspose { kernel_shape, strides, pads, dilations, group, output_padding } => vec![
            ints("kernel_shape", kernel_shape),
            ints("strides", strides),
            ints("pads", pads),
            ints("dilations", dilations),
            int("group", *group as i64),
            ints("output_padding", output_padding),
        ],
        BatchNormalization { epsilon } => vec![float("epsilon", *epsilon)],
        Gemm { alpha, beta, trans_a, trans_b } => {
            vec![float("alpha", *alpha), float("beta", *beta), int("transA", *trans_a as i64), int("transB", *trans_b as i64)]
        }
        LeakyRelu { alpha } | Elu { alpha } => vec![float("alpha", *alpha)],
        HardSigmoid { alpha, beta } => vec![float("alpha", *alpha), float("beta", *beta)],
        Selu { alpha, gamma } => vec![float("alpha", *alpha), float("gamma", *gamma)],
        Gelu { .. } => return Err("Gelu needs opset 20; describe it with Erf/Tanh (as the GELU layer does)".into()),
        MaxPool { kernel_shape, strides, pads, dilations, ceil_mode } => vec![
            ints("kernel_shape", kernel_shape),
            ints("strides", strides),
            ints("pads", pads),
            ints("dilations", dilations),
            int("ceil_mode", *ceil_mode as i64),
        ],
        AveragePool { kernel_shape, strides, pads, ceil_mode, count_include_pad } => vec![
            ints("kernel_shape", kernel_shape),
            ints("strides", strides),
            ints("pads", pads),
            int("ceil_mode", *ceil_mode as i64),
            int("count_include_pad", *count_include_pad as i64),
        ],
        Flatten { axis } | Concat { axis } | Gather { axis } | Softmax { axis } | LogSoftmax { axis } => vec![int("axis", *axis)],
        Reshape { allowzero } => vec![int("allowzero", *allowzero as i64)],
        Transpose { perm } if perm.is_empty() => vec![],
        Transpose { perm } => vec![ints("perm", perm)],
        // Opset 17 Split splits equally into the node's outputs when no sizes are given.
        Split { axis, .. } => vec![int("axis", *axis)],
        Shape { start, end } => {
            let mut a = vec![int("start", *start)];
            a.extend(end.map(|e| int("end", e)));
            a
        }
        ReduceMean { keepdims, noop_with_empty_axes } => {
            if *noop_with_empty_axes {
                return Err("ReduceMean noop_with_empty_axes needs opset 18".into());
            }
            let mut a = vec![int("keepdims", *keepdims as i64)];
            if let Some(ax) = inputs.get(1).filter(|s| !s.is_empty()) {
                let t = g.initializers.get(ax).ok_or("ReduceMean axes must be a constant to be written at opset 17")?;
                let v: Vec<i64> = t.to_vec::<i64>().map_err(|e| e.to_string())?;
                a.push(AttributeProto { name: Some("axes".into()), r#type: Some(attr_type::INTS), ints: v, ..Default::default() });
                inputs.truncate(1);
            }
            a
        }
        ReduceSum { keepdims, noop_with_empty_axes } => {
            vec![int("keepdims", *keepdims as i64), int("noop_with_empty_axes", *noop_with_empty_axes as i64)]
        }
        Pad { mode } => vec![string(
            "mode",
            match mode {
                PadKind::Constant => "constant",
                PadKind::Reflect => "reflect",
                PadKind::Edge => "edge",
            },
        )],
        Resize { mode, coordinate_transformation_mode, nearest_mode } => vec![
            string("mode", if *mode == ResizeMode::Nearest { "nearest" } else { "linear" }),
            string(
                "coordinate_transformation_mode",
                match coordinate_transformation_mode {
                    CoordMode::HalfPixel => "half_pixel",
                    CoordMode::PytorchHalfPixel => "pytorch_half_pixel",
                    CoordMode::AlignCorners => "align_corners",
                    CoordMode::Asymmetric => "asymmetric",
                },
            ),
            string(
                "nearest_mode",
                match nearest_mode {
                    NearestMode::RoundPreferFloor => "round_prefer_floor",
                    NearestMode::RoundPreferCeil => "round_prefer_ceil",
                    NearestMode::Floor => "floor",
                    NearestMode::Ceil => "ceil",
                },
            ),
        ],
        DepthToSpace { blocksize, crd } => vec![int("blocksize", *blocksize as i64), string("mode", if *crd { "CRD" } else { "DCR" })],
        Cast { to } => vec![int("to", onnx_type(*to) as i64)],
        ConstantOfShape { value, dtype } => {
            let t = to_proto("value", &Tensor::full(&[1], *value, *dtype), *dtype == DType::U8)?;
            vec![AttributeProto { name: Some("value".into()), r#type: Some(attr_type::TENSOR), t: Some(t), ..Default::default() }]
        }
        _ => vec![],
    })
}

fn value_info(name: &str, shape: &[Option<usize>], elem: i32) -> ValueInfoProto {
    let dim = shape
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(d) => Dimension { dim_value: Some(*d as i64), ..Default::default() },
            None if i == 0 => Dimension { dim_param: Some("N".into()), ..Default::default() },
            None => Dimension::default(),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: Some(elem), shape: Some(TensorShapeProto { dim }) }),
            denotation: None,
        }),
        doc_string: None,
    }
}

/// The ModelProto for `g`.
pub fn to_model(g: &Graph, producer: &str) -> Result<ModelProto> {
    g.validate()?;
    let err = |m: String| Error::invalid("save_onnx", m);
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let mut inputs = n.inputs.clone();
        let attribute = attributes(&n.op, g, &mut inputs).map_err(|m| err(format!("node {} ({}): {m}", n.name, n.op.name())))?;
        // Inputs ending in absent optionals are simply shorter in ONNX.
        while inputs.last().is_some_and(|s| s.is_empty()) {
            inputs.pop();
        }
        nodes.push(NodeProto {
            input: inputs,
            output: n.outputs.clone(),
            name: Some(n.name.clone()),
            op_type: Some(n.op.name().to_string()),
            attribute,
            ..Default::default()
        });
    }
    let mut initializer = Vec::with_capacity(g.initializers.len());
    for (k, t) in &g.initializers {
        initializer.push(to_proto(k, t, false).map_err(err)?);
    }
    let shapes = g.infer_partial_shapes().unwrap_or_default();
    let input = g.inputs.iter().map(|v| value_info(&v.name, &v.shape, onnx_type(DType::F32))).collect();
    let output = g
        .outputs
        .iter()
        .map(|o| {
            let s = shapes.get(o).cloned().unwrap_or_default();
            let mut v = value_info(o, &s, onnx_type(DType::F32));
            if !shapes.contains_key(o) {
                // Unknown rank: a tensor type without a shape.
                if let Some(t) = v.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
                    t.shape = None;
                }
            }
            v
        })
        .collect();
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(EXPORT_OPSET) }],
        producer_name: Some(producer.to_string()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        graph: Some(GraphProto { node: nodes, name: Some("cnnkit".into()), initializer, input, output, ..Default::default() }),
        ..Default::default()
    })
}

/// Writes `g` as an ONNX model (opset 17) to `path`, atomically (temporary sibling + rename).
pub fn save_onnx(g: &Graph, path: &Path, producer: &str) -> Result<()> {
    let bytes = to_model(g, producer)?.encode_to_vec();
    let file_err = |e: std::io::Error| Error::File { path: path.display().to_string(), msg: e.to_string() };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".into());
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(file_err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(e)
    })
}
