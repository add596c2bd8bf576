//! Export: module → ONNX → import round-trips exactly, and ONNX Runtime agrees with cnnkit.

mod common;
use common::*;

use cnnkit_core::{manual_seed, DType, Result, Tensor};
use cnnkit_nn::graph::{module_to_graph, GraphBuilder, GraphOp};
use cnnkit_nn::*;
use cnnkit_onnx::{export_module, load_onnx, save_onnx};

fn bn(c: usize) -> BatchNorm {
    let b = BatchNorm::new_2d(c).unwrap();
    for _ in 0..2 {
        b.forward(&Tensor::randn(&[4, c, 5, 5], DType::F32).add_scalar(0.3).unwrap()).unwrap();
    }
    b
}

fn seq_cnn() -> Sequential {
    Sequential::new()
        .add(Conv2d::new(Conv2dConfig::new(3, 8, 3).padding(1)).unwrap())
        .add(bn(8))
        .add(ReLU::default())
        .add(MaxPool2d::new(3).stride(2).padding(1).ceil_mode(true))
        .add(Conv2d::new(Conv2dConfig::new(8, 8, 3).padding(1).groups(4).bias(false)).unwrap())
        .add(Hardswish::default())
        .add(ChannelShuffle::new(2))
        .add(Upsample::scale(2.0, UpsampleMode::Bilinear))
        .add(AvgPool2d::new(2))
        .add(GELU::new(false))
        .add(AdaptiveAvgPool2d::new((1, 1)))
        .add(Flatten::new())
        .add(Dropout::new(0.5).unwrap())
        .add(Linear::new(8, 5).unwrap())
        .add(LogSoftmax::new(-1))
}

struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    act: SiLU,
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act.call(&self.bn1.call(&self.conv1.call(x)?)?)?;
        self.act.call(&self.conv2.call(&h)?.add(x)?)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv1".into(), &self.conv1), ("bn1".into(), &self.bn1), ("conv2".into(), &self.conv2), ("act".into(), &self.act)]
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("conv1", &self.conv1, x)?;
        let h = g.module("bn1", &self.bn1, &h)?;
        let h = g.module("act", &self.act, &h)?;
        let h = g.module("conv2", &self.conv2, &h)?;
        let s = g.node(GraphOp::Add, &[&h, x])?;
        g.module("act", &self.act, &s)
    }
}

fn residual() -> Sequential {
    let block = || Block {
        conv1: Conv2d::new(Conv2dConfig::new(6, 6, 3).padding(1).bias(false)).unwrap(),
        bn1: bn(6),
        conv2: Conv2d::new(Conv2dConfig::new(6, 6, 3).padding(1)).unwrap(),
        act: SiLU::default(),
    };
    Sequential::new()
        .add(Conv2d::new(Conv2dConfig::new(3, 6, 3).stride(2).padding(1)).unwrap())
        .add(block())
        .add(block())
        .add(PixelShuffle::new(1))
        .add(ZeroPad2d::ltrb(1, 2, 2, 1))
        .add(AdaptiveMaxPool2d::new((3, 3)))
        .add(Flatten::new())
        .add(Linear::new(54, 4).unwrap())
}

#[test]
fn export_reimport_round_trips_exactly() {
    manual_seed(11);
    for (name, m, shape) in [("seq", seq_cnn(), [2, 3, 16, 16]), ("res", residual(), [2, 3, 12, 12])] {
        let dir = temp_dir(&format!("roundtrip-{name}"));
        let path = dir.join("m.onnx");
        export_module(&m, &shape, &path).unwrap();
        let g0 = module_to_graph(&m, &[None, Some(shape[1]), Some(shape[2]), Some(shape[3])]).unwrap();
        let g1 = load_onnx(&path).unwrap();
        assert_eq!(g0.nodes, g1.nodes, "{name}");
        assert_eq!(g0.inputs, g1.inputs, "{name}");
        assert_eq!(g0.outputs, g1.outputs, "{name}");
        assert_eq!(g0.initializers.keys().collect::<Vec<_>>(), g1.initializers.keys().collect::<Vec<_>>());
        for (k, t) in &g0.initializers {
            let u = &g1.initializers[k];
            assert_eq!((t.dtype(), t.shape()), (u.dtype(), u.shape()), "{k}");
            assert_eq!(t.to_f64_vec().unwrap(), u.to_f64_vec().unwrap(), "{k}");
        }
        let x = Tensor::randn(&shape, DType::F32);
        let (y0, y1) = (g0.run(&[("input", x.clone())]).unwrap(), g1.run(&[("input", x.clone())]).unwrap());
        assert_eq!(y0[0].to_f32_vec().unwrap(), y1[0].to_f32_vec().unwrap(), "{name}");
        assert!(rel_err(&y1[0], &m.forward(&x).unwrap()) <= 1e-6, "{name}");
        // Saving the re-imported graph gives the same bytes.
        let p2 = dir.join("again.onnx");
        save_onnx(&g1, &p2, "cnnkit").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&p2).unwrap(), "{name}");
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn torch_imports_reexport_and_still_match() {
    for m in ["mobilenetish", "resnetish", "misc"] {
        let g = load_onnx(&fixtures().join(format!("{m}_op11.onnx"))).unwrap();
        let dir = temp_dir(&format!("reexport-{m}"));
        let p = dir.join("m.onnx");
        save_onnx(&g, &p, "cnnkit").unwrap();
        let g2 = load_onnx(&p).unwrap();
        let x = expected(&format!("{m}.input"));
        let y = g2.run(&[("input", x)]).unwrap();
        assert!(rel_err(&y[0], &expected(&format!("{m}.output"))) <= 1e-4, "{m}");
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn unexportable_module_is_an_error() {
    let m = Sequential::new().add(GroupNorm::new(2, 4).unwrap());
    let dir = temp_dir("unexportable");
    let e = export_module(&m, &[1, 4, 3, 3], &dir.join("m.onnx")).unwrap_err().to_string();
    assert!(e.contains("GroupNorm") && e.contains("cannot be described as a graph"), "{e}");
    assert!(!dir.join("m.onnx").exists());
    std::fs::remove_dir_all(dir).ok();
}

/// ONNX Runtime runs cnnkit's exports and agrees (set CNNKIT_ORT_PYTHON to a Python with
/// onnxruntime and numpy).
#[test]
fn onnx_runtime_agrees_with_exports() {
    let Ok(py) = std::env::var("CNNKIT_ORT_PYTHON") else {
        println!("skipped: set CNNKIT_ORT_PYTHON");
        return;
    };
    manual_seed(12);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/ort_run.py");
    for (name, m, shape) in [("seq", seq_cnn(), [2, 3, 16, 16]), ("res", residual(), [3, 3, 12, 12])] {
        let dir = temp_dir(&format!("ort-{name}"));
        let (mp, ip, op) = (dir.join("m.onnx"), dir.join("in.npy"), dir.join("out.npy"));
        export_module(&m, &shape, &mp).unwrap();
        let x = Tensor::randn(&shape, DType::F32);
        write_npy(&ip, &x);
        let st = std::process::Command::new(&py).arg(&script).arg(&mp).arg(&ip).arg(&op).status().unwrap();
        assert!(st.success(), "{name}: onnxruntime failed");
        let want = m.forward(&x).unwrap();
        let err = rel_err(&read_npy(&op), &want);
        assert!(err <= 1e-4, "{name}: onnxruntime differs by {err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
