//! Importing torch.onnx exports (opsets 11–18) and matching torch's outputs; clear errors on
//! unsupported ops and damaged files, never a panic.

mod common;
use common::*;

use cnnkit_core::{DType, Tensor};
use cnnkit_onnx::proto::*;
use cnnkit_onnx::{load_onnx, read_onnx};
use proptest::prelude::*;
use prost::Message;

const MODELS: [&str; 3] = ["mobilenetish", "resnetish", "misc"];
const OPSETS: [i64; 4] = [11, 13, 17, 18];

#[test]
fn torch_exports_match_torch() {
    for m in MODELS {
        let (x, want) = (expected(&format!("{m}.input")), expected(&format!("{m}.output")));
        for op in OPSETS {
            let path = fixtures().join(format!("{m}_op{op}.onnx"));
            let g = load_onnx(&path).unwrap_or_else(|e| panic!("{m} opset {op}: {e}"));
            let y = g.run(&[("input", x.clone())]).unwrap_or_else(|e| panic!("{m} opset {op}: {e}"));
            let err = rel_err(&y[0], &want);
            assert!(err <= 1e-4, "{m} opset {op}: relative error {err}");
            // Shape inference agrees with the run, for this and for another batch size.
            let shapes = g.infer_shapes(&[("input", x.shape().to_vec())]).unwrap_or_else(|e| panic!("{m} opset {op}: {e}"));
            assert_eq!(shapes[&g.outputs[0]], want.shape(), "{m} opset {op}");
            let x1 = x.narrow(0, 1, 1).unwrap().contiguous().unwrap();
            let y1 = g.run(&[("input", x1)]).unwrap();
            let err1 = rel_err(&y1[0], &want.narrow(0, 1, 1).unwrap().contiguous().unwrap());
            assert!(err1 <= 1e-4, "{m} opset {op} (batch 1): relative error {err1}");
        }
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.into()),
        op_type: Some(op.into()),
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, opset: i64) -> Vec<u8> {
    let vi = |n: &str| ValueInfoProto {
        name: Some(n.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim: vec![Dimension { dim_value: Some(2), ..Default::default() }] }),
            }),
            denotation: None,
        }),
        doc_string: None,
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
        graph: Some(GraphProto { node: nodes, input: vec![vi("x")], output: vec![vi("z")], ..Default::default() }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn unsupported_op_names_the_first_one() {
    let bytes = model(
        vec![node("Relu", "r", &["x"], &["a"]), node("FancyOp", "fancy", &["a"], &["b"]), node("OtherOp", "other", &["b"], &["z"])],
        17,
    );
    let e = read_onnx(&bytes, "hand.onnx").unwrap_err();
    match &e {
        cnnkit_core::Error::File { path, msg } => {
            assert_eq!(path, "hand.onnx");
            assert_eq!(msg, "unsupported ONNX op 'FancyOp' at node 'fancy' (opset 17)");
        }
        other => panic!("{other}"),
    }
    // Opsets outside 11–18 and dangling values are clear errors too.
    let e = read_onnx(&model(vec![node("Relu", "r", &["x"], &["z"])], 9), "m").unwrap_err().to_string();
    assert!(e.contains("opset 9 is not supported"), "{e}");
    let e = read_onnx(&model(vec![node("Add", "add", &["x", "ghost"], &["z"])], 13), "m").unwrap_err().to_string();
    assert!(e.contains("'ghost'"), "{e}");
    let e = read_onnx(&model(vec![node("Relu", "r", &["x"], &["a"])], 13), "m").unwrap_err().to_string();
    assert!(e.contains("graph output 'z'"), "{e}");
    // A tiny valid hand-built model runs.
    let g = read_onnx(&model(vec![node("Relu", "r", &["x"], &["a"]), node("Neg", "n", &["a"], &["z"])], 13), "m").unwrap();
    let y = g.run(&[("x", Tensor::from_vec(vec![-1.0f32, 2.0], &[2]).unwrap())]).unwrap();
    assert_eq!(y[0].to_f32_vec().unwrap(), vec![0.0, -2.0]);
}

#[test]
fn external_data_is_a_clear_error() {
    let mut m = ModelProto::decode(&*model(vec![node("Add", "add", &["x", "w"], &["z"])], 13)).unwrap();
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(TensorProto {
        name: Some("w".into()),
        dims: vec![2],
        data_type: Some(1),
        data_location: Some(1),
        external_data: vec![StringStringEntryProto { key: Some("location".into()), value: Some("w.bin".into()) }],
        ..Default::default()
    });
    let e = read_onnx(&m.encode_to_vec(), "m").unwrap_err().to_string();
    assert!(e.contains("external file"), "{e}");
}

#[test]
fn typed_initializer_fields_are_read() {
    let mut m = ModelProto::decode(&*model(vec![node("Add", "add", &["x", "w"], &["z"])], 13)).unwrap();
    m.graph.as_mut().unwrap().initializer.push(TensorProto {
        name: Some("w".into()),
        dims: vec![2],
        data_type: Some(1),
        float_data: vec![0.5, 1.5],
        ..Default::default()
    });
    let g = read_onnx(&m.encode_to_vec(), "m").unwrap();
    let y = g.run(&[("x", Tensor::ones(&[2], DType::F32))]).unwrap();
    assert_eq!(y[0].to_f32_vec().unwrap(), vec![1.5, 2.5]);
}

#[test]
fn truncated_and_garbled_files_are_errors_not_panics() {
    let bytes = std::fs::read(fixtures().join("resnetish_op17.onnx")).unwrap();
    for cut in (0..bytes.len()).step_by(7) {
        let _ = read_onnx(&bytes[..cut], "cut");
    }
    assert!(read_onnx(&bytes[..bytes.len() / 2], "half").is_err());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state as usize) % b.len();
            b[i] = (state >> 32) as u8;
        }
        // Whatever decodes must also run or fail cleanly.
        if let Ok(g) = read_onnx(&b, "garbled") {
            let _ = g.run(&[("input", expected("resnetish.input"))]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_onnx(&b, "random");
    }
}
