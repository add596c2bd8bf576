//! Every zoo model described as a graph (`Module::to_graph`, what ONNX export and the
//! inference planner consume) computes what its eval-mode forward computes.

mod common;
use cnnkit_nn::graph::{module_to_graph, GraphOp};
use cnnkit_nn::ModuleExt;
use common::rel_err;

fn check(name: &str) {
    cnnkit_core::manual_seed(3);
    let side = if name.starts_with("vgg") || name == "alexnet" {
        224
    } else if name.ends_with("cifar") {
        32
    } else {
        64
    };
    let (c, classes) = if name == "simple-cnn" || name == "lenet5" { (1, 10) } else { (3, 10) };
    let side = if name == "simple-cnn" || name == "lenet5" { 28 } else { side };
    let model = cnnkit_models::build(name, c, side, side, classes).unwrap();
    model.eval();
    let x = cnnkit_core::Tensor::randn(&[2, c, side, side], cnnkit_core::DType::F32);
    let want = cnnkit_core::with_no_grad(|| model.forward(&x)).unwrap();
    let graph = module_to_graph(model.as_ref(), &[None, Some(c), Some(side), Some(side)]).unwrap();
    // Every parameter and buffer the graph uses is an initializer under its state_dict key.
    let sd = model.state_dict();
    for k in graph.initializers.keys().filter(|k| k.contains('.') && !k.starts_with("const")) {
        assert!(sd.contains_key(k), "{name}: initializer {k} is not a state_dict key");
    }
    let got = graph.run(&[("input", x.clone())]).unwrap().remove(0);
    let err = rel_err(&got, &want);
    assert!(err <= 1e-5, "{name}: graph differs from forward by {err:.2e}");
    // The inference plan folds every BatchNorm that follows a conv and computes the same.
    let planned = cnnkit_nn::graph::optimize_for_inference(&graph).unwrap();
    let bn_after_conv = planned
        .nodes
        .windows(2)
        .filter(|w| matches!(w[0].op, GraphOp::Conv { .. }) && matches!(w[1].op, GraphOp::BatchNormalization { .. }))
        .count();
    assert_eq!(bn_after_conv, 0, "{name}: a Conv → BatchNormalization pair was not folded");
    let got = planned.run(&[("input", x.clone())]).unwrap().remove(0);
    let err = rel_err(&got, &want);
    assert!(err <= 1e-5, "{name}: planned graph differs from forward by {err:.2e}");
    // Recycled activation buffers: a run on a NaN input leaves NaN in every buffer it frees;
    // the next run in the same scope reuses them, so any op that does not overwrite its whole
    // output would leak NaN into the result.
    let _scope = cnnkit_core::recycle_buffers();
    let nan = cnnkit_core::Tensor::full(&[2, c, side, side], f64::NAN, cnnkit_core::DType::F32);
    drop(planned.run(&[("input", nan)]).unwrap());
    let (hits, misses) = cnnkit_core::recycle_stats();
    let got = planned.run(&[("input", x)]).unwrap().remove(0);
    let (hits2, misses2) = cnnkit_core::recycle_stats();
    assert!(hits2 > hits, "{name}: the second run reused no buffer");
    assert_eq!(misses2, misses, "{name}: the second run allocated {} output buffers", misses2 - misses);
    let err = rel_err(&got, &want);
    assert!(err <= 1e-5, "{name}: planned graph on recycled buffers differs from forward by {err:.2e}");
}

macro_rules! graph_tests {
    ($($t:ident => $n:expr),* $(,)?) => { $( #[test] fn $t() { check($n); } )* };
}

graph_tests!(
    simple_cnn => "simple-cnn", cifar_cnn => "cifar-cnn", lenet5 => "lenet5", alexnet => "alexnet", vgg11_bn => "vgg11_bn",
    resnet18 => "resnet18", resnet50 => "resnet50", resnet18_cifar => "resnet18_cifar", mobilenet_v2 => "mobilenet_v2",
    mobilenet_v3_small => "mobilenet_v3_small", mobilenet_v3_large => "mobilenet_v3_large",
    shufflenet_v2_x0_5 => "shufflenet_v2_x0_5", squeezenet1_1 => "squeezenet1_1", efficientnet_b0 => "efficientnet_b0",
    densenet121 => "densenet121",
);

/// MobileNetV2's and ShuffleNetV2's blocks run as one fused kernel in the planned graph
/// (`cnnkit_kernels::fused`) where their planes allow, and compute what the unfused graph
/// computes. At 128×128 input the blocks whose output plane has over 196 pixels fuse split by
/// rows (MobileNetV2's first with the stem convolution before it; ShuffleNetV2's stage-2
/// branches, pw → dw → pw and the downsampling unit's dw → pw), and the blocks with an
/// expansion on smaller planes split by expanded channels: all 17 of MobileNetV2's; 17 of
/// ShuffleNetV2's branches (the later downsampling units' dw → pw branches, without an
/// expansion on 8×8 and 4×4 planes, run node by node). At batch 2 a ShuffleNetV2 branch's
/// input is a channel half of a two-image tensor, not contiguous: its first 1×1 runs alone, and
/// the rest fuses only where a block without expansion may (by rows): 7.
#[test]
fn inverted_residual_blocks_run_fused() {
    for (name, fused) in [("mobilenet_v2", [17, 17]), ("shufflenet_v2_x0_5", [17, 7])] {
        cnnkit_core::manual_seed(4);
        let model = cnnkit_models::build(name, 3, 128, 128, 10).unwrap();
        model.eval();
        let graph = module_to_graph(model.as_ref(), &[None, Some(3), Some(128), Some(128)]).unwrap();
        let planned = cnnkit_nn::graph::optimize_for_inference(&graph).unwrap();
        for n in [1, 2] {
            let x = cnnkit_core::Tensor::randn(&[n, 3, 128, 128], cnnkit_core::DType::F32);
            let want = graph.run(&[("input", x.clone())]).unwrap().remove(0);
            let (got, times) = planned.run_profiled(&[("input", x)]).unwrap();
            let err = rel_err(&got[0], &want);
            assert!(err <= 1e-5, "{name} (batch {n}): fused blocks differ by {err:.2e}");
            let blocks = times.iter().filter(|t| t.op == "InvertedResidual").count();
            if cnnkit_kernels::fused::available() {
                assert_eq!(blocks, fused[n - 1], "{name} (batch {n}): fused blocks: {times:?}");
                // MobileNetV2's stem runs inside its first block (no Conv 3→32 of its own).
                let stem = times.iter().filter(|t| t.detail.starts_with("3→32 3×3 s2 + 32→32→16 s1")).count();
                assert_eq!(stem, usize::from(name == "mobilenet_v2"), "{name}: {times:?}");
            }
        }
    }
}

/// ResNet's stem (conv 7×7 s2 + ReLU + max pool 3×3 s2) runs as one kernel in the planned
/// graph (`cnnkit_kernels::direct::forward_max_pooled`) and computes what the eval-mode
/// forward computes, at batch 1 and 2 and on an odd plane (the pool's last window clipped).
#[test]
fn resnet_stem_runs_conv_and_pool_fused() {
    for (name, side) in [("resnet18", 64), ("resnet50", 57)] {
        cnnkit_core::manual_seed(5);
        let model = cnnkit_models::build(name, 3, side, side, 10).unwrap();
        model.eval();
        let graph = module_to_graph(model.as_ref(), &[None, Some(3), Some(side), Some(side)]).unwrap();
        let planned = cnnkit_nn::graph::optimize_for_inference(&graph).unwrap();
        for n in [1, 2] {
            let x = cnnkit_core::Tensor::randn(&[n, 3, side, side], cnnkit_core::DType::F32);
            let want = cnnkit_core::with_no_grad(|| model.forward(&x)).unwrap();
            let (got, times) = planned.run_profiled(&[("input", x)]).unwrap();
            let err = rel_err(&got[0], &want);
            assert!(err <= 1e-5, "{name} (batch {n}, {side}²): differs from forward by {err:.2e}");
            if cnnkit_kernels::fused::available() {
                let fused: Vec<_> = times.iter().filter(|t| t.op == "ConvMaxPool").collect();
                assert_eq!(fused.len(), 1, "{name}: {times:?}");
                assert_eq!(fused[0].detail, "3→64 7×7 s2 + max pool 3×3 s2");
                assert!(!times.iter().any(|t| t.op == "MaxPool"), "{name}: a MaxPool ran on its own");
            }
        }
    }
}

/// ResNet's residual Adds (and the ReLU after each) run in place on the output of the
/// convolution feeding them (`fuse::residual_adds`: the block's second or third convolution,
/// or the downsampling one where it comes last), so no Add node runs on its own, and the
/// result is the eval-mode forward's.
#[test]
fn resnet_residual_adds_run_in_place() {
    for (name, blocks) in [("resnet18", 8), ("resnet50", 16)] {
        cnnkit_core::manual_seed(6);
        let model = cnnkit_models::build(name, 3, 64, 64, 10).unwrap();
        model.eval();
        let graph = module_to_graph(model.as_ref(), &[None, Some(3), Some(64), Some(64)]).unwrap();
        let planned = cnnkit_nn::graph::optimize_for_inference(&graph).unwrap();
        for n in [1, 2] {
            let x = cnnkit_core::Tensor::randn(&[n, 3, 64, 64], cnnkit_core::DType::F32);
            let want = cnnkit_core::with_no_grad(|| model.forward(&x)).unwrap();
            let (got, times) = planned.run_profiled(&[("input", x)]).unwrap();
            let err = rel_err(&got[0], &want);
            assert!(err <= 1e-5, "{name} (batch {n}): differs from forward by {err:.2e}");
            assert!(!times.iter().any(|t| t.op == "Add"), "{name}: an Add ran on its own: {times:?}");
            let fused = times.iter().filter(|t| t.op == "Conv" && t.fused == Some("Add+Relu")).count();
            assert_eq!(fused, blocks, "{name}: convolutions with their residual Add: {times:?}");
        }
    }
}
