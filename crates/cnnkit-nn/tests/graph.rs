//! The graph IR: every layer's to_graph, executed, equals its eval-mode forward; shape
//! inference equals the shapes an actual run produces; errors name the node.

use cnnkit_core::{manual_seed, DType, PadMode, Result, Tensor};
use cnnkit_nn::graph::{module_to_graph, Graph, GraphBuilder, GraphOp, Node, ValueInfo};
use cnnkit_nn::*;
use std::collections::BTreeMap;

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, |m: f64, d: f64| if d.is_nan() { f64::INFINITY } else { m.max(d) })
}

/// Runs every node output as a graph output and returns their shapes.
fn run_all_shapes(g: &Graph, x: &Tensor) -> BTreeMap<String, Vec<usize>> {
    let mut all = g.clone();
    all.outputs = g.nodes.iter().flat_map(|n| n.outputs.clone()).filter(|o| !o.is_empty()).collect();
    let ys = all.run(&[("input", x.clone())]).unwrap();
    all.outputs.iter().cloned().zip(ys.iter().map(|t| t.shape().to_vec())).collect()
}

/// module.forward (eval) == graph.run, and infer_shapes == the run's shapes.
fn check(m: &dyn Module, shape: &[usize]) -> Graph {
    m.eval();
    let x = Tensor::randn(shape, DType::F32);
    let want = m.forward(&x).unwrap();
    let mut dyn_shape: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
    dyn_shape[0] = None;
    let g = module_to_graph(m, &dyn_shape).unwrap_or_else(|e| panic!("{}: {e}", m.describe()));
    g.validate().unwrap();
    let got = g.run(&[("input", x.clone())]).unwrap_or_else(|e| panic!("{}: {e}", m.describe()));
    let d = max_rel_diff(&got[0], &want);
    assert!(d <= 1e-6, "{}: max diff {d}", m.describe());
    let inferred = g.infer_shapes(&[("input", shape.to_vec())]).unwrap_or_else(|e| panic!("{}: {e}", m.describe()));
    assert_eq!(inferred["output"], want.shape(), "{}", m.describe());
    for (k, s) in run_all_shapes(&g, &x) {
        assert_eq!(inferred[&k], s, "{}: value {k}", m.describe());
    }
    // A second batch size works through the dynamic batch dim.
    let mut s2 = shape.to_vec();
    s2[0] = 3;
    let x2 = Tensor::randn(&s2, DType::F32);
    let d2 = max_rel_diff(&g.run(&[("input", x2.clone())]).unwrap()[0], &m.forward(&x2).unwrap());
    assert!(d2 <= 1e-6, "{} (batch 3): max diff {d2}", m.describe());
    g
}

/// Gives BatchNorm non-trivial running statistics.
fn trained_bn(bn: BatchNorm, shape: &[usize]) -> BatchNorm {
    for _ in 0..3 {
        bn.forward(&Tensor::randn(shape, DType::F32).mul_scalar(2.0).unwrap().add_scalar(0.5).unwrap()).unwrap();
    }
    bn
}

#[test]
fn convolutions() {
    manual_seed(1);
    let x = [2, 4, 9, 10];
    check(&Conv2d::new(Conv2dConfig::new(4, 6, 3)).unwrap(), &x);
    check(&Conv2d::new(Conv2dConfig::new(4, 8, 3).stride(2).padding(1).groups(2).bias(false)).unwrap(), &x);
    check(&Conv2d::new(Conv2dConfig::new(4, 4, 3).dilation(2).padding_hw(2, 1).groups(4)).unwrap(), &x);
    check(&Conv2d::new(Conv2dConfig::new(4, 5, 4).padding_same()).unwrap(), &x);
    check(&Conv2d::new(Conv2dConfig::new(4, 5, 3).padding(1).padding_mode(PadMode::Reflect)).unwrap(), &x);
    check(&Conv2d::new(Conv2dConfig::new(4, 5, 3).kernel_hw(3, 1).padding_hw(2, 1).padding_mode(PadMode::Replicate)).unwrap(), &x);
    check(&Conv1d::with_config(Conv2dConfig::new(4, 6, 3).stride(2).padding(1)).unwrap(), &[2, 4, 11]);
    check(&ConvTranspose2d::new(ConvTranspose2dConfig::new(4, 6, 3).stride(2).padding(1).output_padding(1)).unwrap(), &x);
    check(&ConvTranspose2d::new(ConvTranspose2dConfig::new(4, 6, 2).stride(2).groups(2).bias(false)).unwrap(), &x);
}

#[test]
fn linear_flatten_identity_dropout() {
    manual_seed(2);
    check(&Linear::new(7, 5).unwrap(), &[3, 7]);
    check(&Linear::new_no_bias(7, 5).unwrap(), &[3, 4, 7]);
    check(&Flatten::new(), &[2, 3, 4, 5]);
    check(&Flatten { start_dim: 2, end_dim: 3 }, &[2, 3, 4, 5]);
    check(&Flatten { start_dim: 1, end_dim: 2 }, &[2, 3, 4, 5]);
    check(&Identity::new(), &[2, 3]);
    check(&Dropout::new(0.5).unwrap(), &[2, 3]);
    check(&Dropout2d::new(0.5).unwrap(), &[2, 3, 4, 4]);
}

#[test]
fn batch_norm() {
    manual_seed(3);
    check(&trained_bn(BatchNorm::new_2d(4).unwrap(), &[3, 4, 5, 5]), &[2, 4, 5, 5]);
    check(&trained_bn(BatchNorm::new_1d(6).unwrap(), &[8, 6]), &[2, 6]);
    let cfg = BatchNormConfig { affine: false, ..Default::default() };
    check(&trained_bn(BatchNorm::new_1d_with(6, cfg).unwrap(), &[8, 6, 3]), &[2, 6, 3]);
}

#[test]
fn activations() {
    manual_seed(4);
    let s = [2, 3, 4, 5];
    let layers: Vec<Box<dyn Module>> = vec![
        Box::new(ReLU::default()),
        Box::new(ReLU6::default()),
        Box::new(LeakyReLU::new(0.2)),
        Box::new(ELU::new(0.7)),
        Box::new(SELU::default()),
        Box::new(GELU::new(false)),
        Box::new(GELU::new(true)),
        Box::new(SiLU::default()),
        Box::new(Mish::default()),
        Box::new(Hardswish::default()),
        Box::new(Hardsigmoid::default()),
        Box::new(Sigmoid::default()),
        Box::new(Tanh::default()),
        Box::new(Softmax::new(1)),
        Box::new(LogSoftmax::new(-1)),
        Box::new(PReLU::new(3, 0.1).unwrap()),
        Box::new(PReLU::default()),
    ];
    for l in &layers {
        let x = Tensor::randn(&s, DType::F32).mul_scalar(4.0).unwrap();
        l.eval();
        let g = module_to_graph(l.as_ref(), &[None, Some(3), Some(4), Some(5)]).unwrap();
        let d = max_rel_diff(&g.run(&[("input", x.clone())]).unwrap()[0], &l.forward(&x).unwrap());
        assert!(d <= 1e-6, "{}: {d}", l.describe());
        check(l.as_ref(), &s);
    }
}

#[test]
fn pooling() {
    manual_seed(5);
    let x = [2, 3, 11, 9];
    check(&MaxPool2d::new(2), &x);
    check(&MaxPool2d::new(3).stride(2).padding(1).ceil_mode(true), &x);
    check(&MaxPool2d::new(2).dilation(2), &x);
    check(&AvgPool2d::new(3).stride(2).padding(1).count_include_pad(false), &x);
    check(&AvgPool2d::new(2).ceil_mode(true), &x);
    check(&AdaptiveAvgPool2d::new((1, 1)), &x);
    check(&AdaptiveMaxPool2d::new((1, 1)), &x);
    check(&AdaptiveAvgPool2d::new((2, 3)), &[2, 3, 8, 9]);
    check(&AdaptiveMaxPool2d::new((4, 3)), &[2, 3, 8, 9]);
    let e = module_to_graph(&AdaptiveAvgPool2d::new((3, 3)), &[None, Some(3), Some(8), Some(8)]).unwrap_err().to_string();
    assert!(e.contains("does not divide"), "{e}");
}

#[test]
fn resampling() {
    manual_seed(6);
    let x = [2, 8, 5, 6];
    check(&Upsample::scale(2.0, UpsampleMode::Nearest), &x);
    check(&Upsample::scale(1.5, UpsampleMode::Nearest), &x);
    check(&Upsample::scale(2.0, UpsampleMode::Bilinear), &x);
    check(&Upsample::scale(2.0, UpsampleMode::Bilinear).align_corners(true), &x);
    check(&Upsample::size(7, 13, UpsampleMode::Bilinear), &x);
    check(&Upsample::size(10, 12, UpsampleMode::Nearest), &x);
    check(&ChannelShuffle::new(4), &x);
    check(&PixelShuffle::new(2), &x);
    check(&ZeroPad2d::new(2), &x);
    check(&ZeroPad2d::ltrb(1, -1, 0, 2), &x);
}

/// A residual block written by a user: forward and to_graph side by side.
struct Residual {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    relu: ReLU,
    conv2: Conv2d,
}

impl Module for Residual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.relu.call(&self.bn1.call(&self.conv1.call(x)?)?)?;
        self.relu.call(&self.conv2.call(&h)?.add(x)?)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv1".into(), &self.conv1), ("bn1".into(), &self.bn1), ("relu".into(), &self.relu), ("conv2".into(), &self.conv2)]
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let h = g.module("conv1", &self.conv1, x)?;
        let h = g.module("bn1", &self.bn1, &h)?;
        let h = g.module("relu", &self.relu, &h)?;
        let h = g.module("conv2", &self.conv2, &h)?;
        let s = g.node(GraphOp::Add, &[&h, x])?;
        g.module("relu", &self.relu, &s)
    }
}

fn cnn() -> Sequential {
    Sequential::new()
        .add(Conv2d::new(Conv2dConfig::new(3, 8, 3).padding(1)).unwrap())
        .add(trained_bn(BatchNorm::new_2d(8).unwrap(), &[4, 8, 6, 6]))
        .add(ReLU::default())
        .add(MaxPool2d::new(2))
        .add(Residual {
            conv1: Conv2d::new(Conv2dConfig::new(8, 8, 3).padding(1).bias(false)).unwrap(),
            bn1: trained_bn(BatchNorm::new_2d(8).unwrap(), &[4, 8, 6, 6]),
            relu: ReLU::default(),
            conv2: Conv2d::new(Conv2dConfig::new(8, 8, 3).padding(1)).unwrap(),
        })
        .add(Conv2d::new(Conv2dConfig::new(8, 8, 3).padding(1).groups(8)).unwrap())
        .add(Hardswish::default())
        .add(AdaptiveAvgPool2d::new((1, 1)))
        .add(Flatten::new())
        .add(Dropout::new(0.3).unwrap())
        .add(Linear::new(8, 10).unwrap())
        .add(Softmax::new(-1))
}

#[test]
fn sequential_cnn_with_state_dict_names() {
    manual_seed(7);
    let m = cnn();
    let g = check(&m, &[2, 3, 16, 16]);
    let sd = m.state_dict();
    // Every initializer that is a parameter or buffer carries its state_dict key and value.
    for k in ["0.weight", "1.running_var", "4.conv1.weight", "4.bn1.bias", "10.bias"] {
        let t = &g.initializers[k];
        assert_eq!(t.to_f32_vec().unwrap(), sd[k].to_f32_vec().unwrap(), "{k}");
    }
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert!(names.contains(&"/4/conv1/Conv"), "{names:?}");
    assert!(names.contains(&"/4/relu/Relu_1"), "{names:?}");
}

#[test]
fn errors_name_the_node_and_layer() {
    let gn = GroupNorm::new(2, 4).unwrap();
    let e = module_to_graph(&gn, &[None, Some(4), Some(3), Some(3)]).unwrap_err().to_string();
    assert!(e.contains("cannot be described as a graph"), "{e}");
    // Described on a 3-D input, the conv fails where it is added.
    let conv = Sequential::new().add(Conv2d::new(Conv2dConfig::new(3, 4, 3)).unwrap());
    let e = module_to_graph(&conv, &[Some(1), Some(3), Some(32)]).unwrap_err().to_string();
    assert!(e.contains("node /0/Conv (Conv): input has shape [1, 3, 32] but Conv needs 4-D"), "{e}");
    // At run time, the same message from the executor.
    let mut g = module_to_graph(&conv, &[Some(1), Some(3), Some(8), Some(8)]).unwrap();
    g.inputs[0].shape = vec![None, None, None];
    let e = g.run(&[("input", Tensor::zeros(&[1, 3, 32], DType::F32))]).unwrap_err().to_string();
    assert!(e.contains("node /0/Conv (Conv): input has shape [1, 3, 32] but Conv needs 4-D"), "{e}");
    // A dangling value is one clear error.
    let bad = Graph {
        inputs: vec![ValueInfo { name: "x".into(), shape: vec![None] }],
        outputs: vec!["y".into()],
        initializers: BTreeMap::new(),
        nodes: vec![Node { name: "add".into(), op: GraphOp::Add, inputs: vec!["x".into(), "nope".into()], outputs: vec!["y".into()] }],
    };
    assert!(bad.validate().unwrap_err().to_string().contains("'nope'"));
    assert!(bad.run(&[("x", Tensor::zeros(&[2], DType::F32))]).unwrap_err().to_string().contains("'nope'"));
}

#[test]
fn integer_shape_arithmetic_feeds_reshape() {
    // y = x.reshape(x.shape[0], -1) spelled as torch.onnx spells it: Shape → Gather → Unsqueeze
    // → Concat → Reshape.
    let mut b = GraphBuilder::new("input", &[None, Some(2), Some(3)]);
    let s = b.node(GraphOp::Shape { start: 0, end: None }, &["input"]).unwrap();
    let zero = b.constant(Tensor::scalar(0i64));
    let n = b.node(GraphOp::Gather { axis: 0 }, &[&s, &zero]).unwrap();
    let ax = b.const_i64(&[0]).unwrap();
    let n1 = b.node(GraphOp::Unsqueeze, &[&n, &ax]).unwrap();
    let m1 = b.const_i64(&[-1]).unwrap();
    let shape = b.node(GraphOp::Concat { axis: 0 }, &[&n1, &m1]).unwrap();
    let y = b.node(GraphOp::Reshape { allowzero: false }, &[&"input".to_string(), &shape].map(|s| s.as_str())).unwrap();
    // With a dynamic batch the −1 cannot be resolved statically (it depends on N); rank is known.
    assert_eq!(b.shape_of(&y).unwrap().len(), 2);
    let g = b.finish(&[&y]);
    let x = Tensor::randn(&[4, 2, 3], DType::F32);
    let out = g.run(&[("input", x.clone())]).unwrap();
    assert_eq!(out[0].shape(), &[4, 6]);
    assert_eq!(out[0].to_f32_vec().unwrap(), x.to_f32_vec().unwrap());
    assert_eq!(g.infer_shapes(&[("input", vec![4, 2, 3])]).unwrap()[&y], vec![4, 6]);
}

/// run_profiled returns the same outputs as run and one entry per executed node, in order:
/// an activation fused into its convolution (after optimize_for_inference) is timed with it,
/// as is a residual Add (and its activation) run in place on a convolution's output.
#[test]
fn profiled_run_times_every_node() {
    manual_seed(8);
    let m = cnn();
    m.eval();
    let g = module_to_graph(&m, &[None, Some(3), Some(16), Some(16)]).unwrap();
    let g = cnnkit_nn::graph::optimize_for_inference(&g).unwrap();
    let x = Tensor::randn(&[2, 3, 16, 16], DType::F32);
    let want = g.run(&[("input", x.clone())]).unwrap();
    let (got, times) = g.run_profiled(&[("input", x)]).unwrap();
    assert_eq!(got[0].to_f32_vec().unwrap(), want[0].to_f32_vec().unwrap());
    // An entry's `fused` names the nodes it also covers ("Relu"; "Add+Relu" for a residual Add).
    let covered: usize = times.iter().map(|t| 1 + t.fused.map_or(0, |f| f.split('+').count())).sum();
    assert_eq!(covered, g.nodes.len(), "one entry per node, fused chains once");
    let mut nodes = g.nodes.iter();
    for t in &times {
        assert!(nodes.any(|n| n.name == t.name), "{} out of order", t.name);
        assert!(t.ms >= 0.0 && t.ms.is_finite());
    }
    // The first conv (3 → 8, 3×3, BatchNorm folded in) carries its ReLU and its geometry.
    let conv = &times[0];
    assert_eq!((conv.op, conv.fused, conv.detail.as_str()), ("Conv", Some("Relu"), "3→8 3×3 s1 g1"));
    let dw = times.iter().find(|t| t.detail.ends_with("g8")).expect("the depthwise conv");
    assert_eq!(dw.detail, "8→8 3×3 s1 g8");
}

/// A graph planned once runs many times (different batches, values freed by the plan's last
/// uses) with the outputs of `Graph::run`, and checks its inputs on every run.
#[test]
fn planned_graph_runs_repeatedly() {
    manual_seed(9);
    let m = cnn();
    m.eval();
    let g = module_to_graph(&m, &[None, Some(3), Some(16), Some(16)]).unwrap();
    let g = cnnkit_nn::graph::optimize_for_inference(&g).unwrap();
    let planned = g.planned();
    assert!(std::ptr::eq(planned.graph(), &g));
    for n in [2, 1, 3, 2] {
        let x = Tensor::randn(&[n, 3, 16, 16], DType::F32);
        let want = g.run(&[("input", x.clone())]).unwrap();
        let got = planned.run(&[("input", x.clone())]).unwrap();
        assert_eq!(got[0].shape(), &[n, 10]);
        assert_eq!(got[0].to_f32_vec().unwrap(), want[0].to_f32_vec().unwrap(), "batch {n}");
        let (prof, times) = planned.run_profiled(&[("input", x)]).unwrap();
        assert_eq!(prof[0].to_f32_vec().unwrap(), want[0].to_f32_vec().unwrap(), "batch {n}, profiled");
        assert_eq!(times[0].detail, "3→8 3×3 s1 g1");
    }
    let e = planned.run(&[("input", Tensor::zeros(&[1, 4, 16, 16], DType::F32))]).unwrap_err().to_string();
    assert!(e.contains("input 'input' has shape [1, 4, 16, 16]"), "{e}");
}

/// A convolution feeding a residual Add runs the Add with it (one profile entry covering the
/// Conv, the Add and the ReLU) both where the Add can run in place (same shape) and where it
/// cannot (a broadcast residual, taken by `add_act`), and computes what the ops compute.
#[test]
fn residual_add_runs_with_its_convolution() {
    manual_seed(12);
    for residual_shape in [&[2usize, 4, 6, 6][..], &[4, 1, 1]] {
        let w = Tensor::randn(&[4, 3, 3, 3], DType::F32);
        let r = Tensor::randn(residual_shape, DType::F32);
        let mut b = GraphBuilder::new("input", &[Some(2), Some(3), Some(6), Some(6)]);
        let (wn, rn) = (b.constant(w.clone()), b.constant(r.clone()));
        let conv = GraphOp::Conv { kernel_shape: [3, 3], strides: [1, 1], pads: [1; 4], dilations: [1, 1], group: 1 };
        let y = b.node(conv, &["input", &wn]).unwrap();
        let s = b.node(GraphOp::Add, &[&rn, &y]).unwrap();
        let out = b.node(GraphOp::Relu, &[&s]).unwrap();
        let g = b.finish(&[&out]);
        let x = Tensor::randn(&[2, 3, 6, 6], DType::F32);
        let pad = cnnkit_core::Conv2dArgs { padding: (1, 1), ..Default::default() };
        let want = r.add(&x.conv2d(&w, None, pad).unwrap()).unwrap().relu().unwrap();
        let (got, times) = g.run_profiled(&[("input", x)]).unwrap();
        assert_eq!(got[0].to_f32_vec().unwrap(), want.to_f32_vec().unwrap(), "residual {residual_shape:?}");
        assert_eq!(times.len(), 1, "{times:?}");
        assert_eq!((times[0].op, times[0].fused), ("Conv", Some("Add+Relu")));
    }
}
