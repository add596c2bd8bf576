//! f64 finite-difference gradchecks for every differentiable op.
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in these tables

use cnnkit_core::*;

fn r(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with(shape, DType::F64, &mut Generator::new(seed))
}
/// Values kept away from the kinks of relu/abs/max so central differences are valid.
fn r_away(shape: &[usize], seed: u64) -> Tensor {
    let t = r(shape, seed).to_vec::<f64>().unwrap();
    Tensor::from_vec(t.into_iter().map(|v| if v.abs() < 0.1 { v + 0.3f64.copysign(v) } else { v }).collect(), shape).unwrap()
}
fn pos(shape: &[usize], seed: u64) -> Tensor {
    Tensor::uniform_with(shape, 0.5, 2.0, DType::F64, &mut Generator::new(seed))
}
fn check(name: &str, f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    match gradcheck(f, inputs, 1e-6, 1e-6) {
        Ok(_) => {}
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn unary_ops() {
    let x = r_away(&[3, 4], 1);
    let ops: Vec<(&str, UnaryOp)> = vec![
        ("neg", UnaryOp::Neg),
        ("exp", UnaryOp::Exp),
        ("abs", UnaryOp::Abs),
        ("sin", UnaryOp::Sin),
        ("cos", UnaryOp::Cos),
        ("tanh", UnaryOp::Tanh),
        ("sigmoid", UnaryOp::Sigmoid),
        ("relu", UnaryOp::Relu),
        ("leaky", UnaryOp::LeakyRelu(0.1)),
        ("elu", UnaryOp::Elu { alpha: 1.3, scale: 1.05, input_scale: 1.0 }),
        ("gelu", UnaryOp::Gelu),
        ("gelu_tanh", UnaryOp::GeluTanh),
        ("silu", UnaryOp::Silu),
        ("mish", UnaryOp::Mish),
        ("softplus", UnaryOp::Softplus { beta: 2.0, threshold: 20.0 }),
        ("add_scalar", UnaryOp::AddScalar(1.5)),
        ("mul_scalar", UnaryOp::MulScalar(-2.5)),
        ("pow_scalar", UnaryOp::PowScalar(3.0)),
    ];
    for (name, op) in ops {
        check(name, |xs| xs[0].unary(op), &[x.clone()]);
    }
    let p = pos(&[3, 4], 2);
    for (name, op) in [("log", UnaryOp::Log), ("sqrt", UnaryOp::Sqrt), ("recip", UnaryOp::Recip), ("pow_frac", UnaryOp::PowScalar(1.7))] {
        check(name, |xs| xs[0].unary(op), &[p.clone()]);
    }
    // Keep hardswish/hardsigmoid/hardtanh inputs off their breakpoints (±3, and 0/6 for relu6).
    let h = Tensor::from_vec(vec![-4.0, -2.5, -1.0, 0.5, 1.0, 2.9, 3.5, 7.0], &[8]).unwrap();
    for (name, op) in [("hardswish", UnaryOp::Hardswish), ("hardsigmoid", UnaryOp::Hardsigmoid), ("relu6", UnaryOp::Hardtanh(0.0, 6.0))] {
        check(name, |xs| xs[0].unary(op), &[h.clone()]);
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    let a = r_away(&[2, 3, 4], 3);
    let b = r_away(&[3, 1], 4);
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Maximum, BinaryOp::Minimum] {
        check(&format!("{op:?}"), |xs| xs[0].binary(&xs[1], op), &[a.clone(), b.clone()]);
    }
    check("div", |xs| xs[0].div(&xs[1]), &[a.clone(), pos(&[4], 5)]);
    check("pow", |xs| xs[0].pow(&xs[1]), &[pos(&[2, 3], 6), r(&[3], 7)]);
    check("clamp", |xs| xs[0].clamp(Some(-0.5), Some(0.6)), &[Tensor::from_vec(vec![-1.0, -0.2, 0.3, 0.9], &[4]).unwrap()]);
    let mask = a.gt_scalar(0.0).unwrap();
    check("where", |xs| Tensor::where_cond(&mask, &xs[0], &xs[1]), &[a.clone(), b.clone()]);
}

#[test]
fn reductions() {
    let x = r(&[2, 3, 4], 8);
    check("sum_dims", |xs| xs[0].sum(&[0, 2], false), &[x.clone()]);
    check("sum_keep", |xs| xs[0].sum(&[1], true), &[x.clone()]);
    check("mean", |xs| xs[0].mean(&[-1], false), &[x.clone()]);
    check("var", |xs| xs[0].var(&[1], 1, true), &[x.clone()]);
    check("std", |xs| xs[0].std(&[2], 0, false), &[x.clone()]);
    check("max_dim", |xs| Ok(xs[0].max_dim(1, false)?.0), &[x.clone()]);
    check("min_dim", |xs| Ok(xs[0].min_dim(-1, true)?.0), &[x.clone()]);
    check("logsumexp", |xs| xs[0].logsumexp(2, false), &[x.clone()]);
    check("softmax", |xs| xs[0].softmax(1), &[x.clone()]);
    check("log_softmax", |xs| xs[0].log_softmax(-1), &[x.clone()]);
}

#[test]
fn views_and_indexing() {
    let x = r(&[2, 3, 4], 9);
    check("reshape", |xs| xs[0].reshape(&[6, 4])?.mul_scalar(2.0), &[x.clone()]);
    check("permute", |xs| xs[0].permute(&[2, 0, 1])?.contiguous(), &[x.clone()]);
    check("transpose+mul", |xs| xs[0].transpose(0, 2)?.mul(&xs[0].transpose(0, 2)?), &[x.clone()]);
    check("narrow", |xs| xs[0].narrow(2, 1, 2), &[x.clone()]);
    check("expand", |xs| xs[0].narrow(0, 0, 1)?.expand(&[5, 3, 4]), &[x.clone()]);
    check("squeeze/unsqueeze", |xs| xs[0].unsqueeze(1)?.squeeze(1)?.flatten(1, 2), &[x.clone()]);
    check("cat", |xs| Tensor::cat(&[xs[0].clone(), xs[1].clone()], 1), &[x.clone(), r(&[2, 2, 4], 10)]);
    check("stack", |xs| Tensor::stack(&[xs[0].clone(), xs[0].mul_scalar(3.0)?], 0), &[x.clone()]);
    check("split", |xs| Ok(xs[0].split(3, 2)?[1].clone()), &[x.clone()]);
    let idx = Tensor::from_vec(vec![2i64, 0, 2], &[3]).unwrap();
    check("index_select", |xs| xs[0].index_select(2, &idx), &[x.clone()]);
    let gi = Tensor::from_vec(vec![0i64, 2, 1, 1, 0, 0], &[2, 3, 1]).unwrap();
    check("gather", |xs| xs[0].gather(1, &gi), &[x.clone()]);
    let si = Tensor::from_vec(vec![1i64, 3, 0, 2], &[2, 2]).unwrap();
    check("scatter", |xs| xs[0].scatter(1, &si, &xs[1]), &[r(&[2, 4], 11), r(&[2, 2], 12)]);
    check("scatter_add", |xs| xs[0].scatter_add(1, &si, &xs[1]), &[r(&[2, 4], 13), r(&[2, 2], 14)]);
    for mode in [PadMode::Constant, PadMode::Reflect, PadMode::Replicate, PadMode::Circular] {
        check(&format!("pad {mode:?}"), |xs| xs[0].pad2d([2, 1, 1, 2], mode, 0.5), &[r(&[1, 2, 3, 4], 15)]);
    }
    // A float cast passes the gradient through, converted back to the input's dtype.
    let leaf = x.detach().requires_grad_().unwrap();
    leaf.to_dtype(DType::F32).unwrap().mul_scalar(2.0).unwrap().sum_all().unwrap().backward().unwrap();
    let g = leaf.grad().unwrap();
    assert_eq!(g.dtype(), DType::F64);
    assert!(g.to_vec::<f64>().unwrap().iter().all(|&v| v == 2.0));
}

#[test]
fn matmul_and_linear() {
    check("matmul 2d", |xs| xs[0].matmul(&xs[1]), &[r(&[3, 4], 16), r(&[4, 5], 17)]);
    check("matmul batched broadcast", |xs| xs[0].matmul(&xs[1]), &[r(&[2, 3, 4], 18), r(&[4, 2], 19)]);
    check("matmul 1d", |xs| xs[0].matmul(&xs[1]), &[r(&[4], 20), r(&[2, 4, 3], 21)]);
    check("bmm", |xs| xs[0].bmm(&xs[1]), &[r(&[2, 3, 4], 22), r(&[2, 4, 2], 23)]);
    check("linear", |xs| xs[0].linear(&xs[1], Some(&xs[2])), &[r(&[5, 4], 24), r(&[3, 4], 25), r(&[3], 26)]);
}

#[test]
fn convolutions() {
    let cases = [
        (Conv2dArgs::default(), (2, 3, 6, 5), (4, 3, 3, 3)),
        (Conv2dArgs { stride: (2, 1), padding: (1, 2), dilation: (1, 2), groups: 1 }, (1, 2, 7, 6), (3, 2, 3, 2)),
        (Conv2dArgs { stride: (1, 1), padding: (1, 1), dilation: (1, 1), groups: 2 }, (2, 4, 5, 5), (6, 2, 3, 3)),
        (Conv2dArgs { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }, (2, 3, 4, 4), (2, 3, 1, 1)),
        (Conv2dArgs { stride: (2, 2), padding: (1, 1), dilation: (1, 1), groups: 3 }, (1, 3, 6, 6), (3, 1, 3, 3)),
    ];
    for (i, (a, xs, ws)) in cases.iter().enumerate() {
        let x = r(&[xs.0, xs.1, xs.2, xs.3], 30 + i as u64);
        let w = r(&[ws.0, ws.1, ws.2, ws.3], 40 + i as u64);
        let b = r(&[ws.0], 50 + i as u64);
        check(&format!("conv2d case {i}"), |t| t[0].conv2d(&t[1], Some(&t[2]), *a), &[x, w, b]);
    }
    // The activation fused into the convolution (its derivative read off the output), with
    // inputs whose pre-activations keep clear of the kinks so that central differences hold.
    for (i, act) in [Epilogue::Relu, Epilogue::Clamp(-0.5, 0.8)].into_iter().enumerate() {
        let a = Conv2dArgs { padding: (1, 1), ..Default::default() };
        let (x, w, b) = (r(&[2, 3, 5, 6], 70 + i as u64), r(&[4, 3, 3, 3], 72 + i as u64), r(&[4], 74 + i as u64));
        let z = x.conv2d(&w, Some(&b), a).unwrap().to_vec::<f64>().unwrap();
        assert!(z.iter().all(|v| [0.0, -0.5, 0.8].iter().all(|k| (v - k).abs() > 1e-4)), "a pre-activation on a kink");
        assert!(z.iter().any(|&v| v < 0.0) && z.iter().any(|&v| v > 0.8), "both sides of the activation exercised");
        check(&format!("conv2d_act {act:?}"), |t| t[0].conv2d_act(&t[1], Some(&t[2]), a, act), &[x, w, b]);
    }
    for mode in [PadMode::Reflect, PadMode::Replicate, PadMode::Circular] {
        let a = Conv2dArgs { padding: (1, 1), ..Default::default() };
        check("conv2d padding_mode", |t| t[0].conv2d_padded(&t[1], None, a, mode), &[r(&[1, 2, 4, 5], 60), r(&[3, 2, 3, 3], 61)]);
    }
    let a = Conv2dArgs { stride: (2, 2), padding: (1, 0), dilation: (1, 1), groups: 2 };
    check(
        "conv_transpose2d",
        |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), a, (1, 0)),
        &[r(&[2, 4, 3, 3], 62), r(&[4, 3, 3, 2], 63), r(&[6], 64)],
    );
    let a = Conv2dArgs { stride: (1, 2), padding: (0, 1), dilation: (2, 1), groups: 1 };
    check("conv_transpose2d dilated", |t| t[0].conv_transpose2d(&t[1], None, a, (0, 1)), &[r(&[1, 2, 4, 3], 65), r(&[2, 3, 2, 3], 66)]);
}

#[test]
fn pooling_and_resampling() {
    let x = r_away(&[2, 2, 7, 6], 70);
    let a = Pool2dArgs { kernel: (3, 2), stride: (2, 2), padding: (1, 1), dilation: (1, 1), ceil_mode: true };
    check("max_pool2d", |t| t[0].max_pool2d(a), &[x.clone()]);
    let ad = Pool2dArgs { kernel: (2, 2), stride: (1, 2), padding: (0, 0), dilation: (2, 1), ceil_mode: false };
    check("max_pool2d dilated", |t| t[0].max_pool2d(ad), &[x.clone()]);
    for cip in [true, false] {
        check("avg_pool2d", |t| t[0].avg_pool2d(a, cip), &[x.clone()]);
    }
    check("adaptive_avg", |t| t[0].adaptive_avg_pool2d((3, 4)), &[x.clone()]);
    check("adaptive_max", |t| Ok(t[0].adaptive_max_pool2d_with_indices((3, 2))?.0), &[x.clone()]);
    let p = Pool2dArgs::new(2);
    check(
        "max_unpool",
        |t| {
            let (y, i) = t[0].max_pool2d_with_indices(p)?;
            y.mul_scalar(2.0)?.max_unpool2d(&i, (7, 6))
        },
        &[x.clone()],
    );
    check("nearest", |t| t[0].upsample_nearest2d(11, 9), &[x.clone()]);
    for ac in [true, false] {
        check("bilinear", |t| t[0].upsample_bilinear2d(10, 13, ac), &[x.clone()]);
    }
}

#[test]
fn batch_norm_train_and_eval() {
    let x = r(&[4, 3, 2, 3], 80);
    let w = r(&[3], 81);
    let b = r(&[3], 82);
    check("bn train", |t| t[0].batch_norm(None, None, Some(&t[1]), Some(&t[2]), true, 0.1, 1e-5), &[x.clone(), w.clone(), b.clone()]);
    let rm = r(&[3], 83);
    let rv = pos(&[3], 84);
    check("bn eval", |t| t[0].batch_norm(Some(&rm), Some(&rv), Some(&t[1]), Some(&t[2]), false, 0.1, 1e-5), &[x.clone(), w, b]);
    check("bn 2d no affine", |t| t[0].batch_norm(None, None, None, None, true, 0.1, 1e-5), &[r(&[5, 4], 85)]);
    // The activation fused into the normalising pass, outputs kept clear of the kinks.
    for (i, act) in [Epilogue::Relu, Epilogue::Clamp(-0.5, 0.7)].into_iter().enumerate() {
        let (x, w, b) = (r(&[4, 3, 2, 3], 86 + i as u64), r(&[3], 88 + i as u64), r(&[3], 90 + i as u64));
        let z = x.batch_norm(None, None, Some(&w), Some(&b), true, 0.1, 1e-5).unwrap().to_vec::<f64>().unwrap();
        assert!(z.iter().all(|v| [0.0, -0.5, 0.7].iter().all(|k| (v - k).abs() > 1e-4)), "a pre-activation on a kink");
        assert!(z.iter().any(|&v| v < -0.5) && z.iter().any(|&v| v > 0.7), "both sides of the activation exercised");
        let f = |t: &[Tensor]| t[0].batch_norm_act(None, None, Some(&t[1]), Some(&t[2]), true, 0.1, 1e-5, act);
        check(&format!("bn train + {act:?}"), f, &[x, w, b]);
    }
}

struct GuidedRelu;
impl CustomOp for GuidedRelu {
    fn name(&self) -> &str {
        "guided_relu"
    }
    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        inputs[0].relu()
    }
    fn backward(&self, inputs: &[Tensor], _y: &Tensor, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let pass = inputs[0].gt_scalar(0.0)?.to_dtype(g.dtype())?.mul(&g.clamp(Some(0.0), None)?)?;
        Ok(vec![Some(pass)])
    }
}

#[test]
fn autograd_semantics() {
    let x = Tensor::from_vec(vec![1.0f64, -2.0, 3.0], &[3]).unwrap().requires_grad_().unwrap();
    // Accumulation across backward calls, then zero_grad.
    x.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
    x.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![4.0, -8.0, 12.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
    // no_grad records nothing; detach cuts the graph.
    let y = with_no_grad(|| x.mul_scalar(2.0).unwrap());
    assert!(!y.requires_grad());
    assert!(!x.detach().requires_grad());
    // retain_grad on a non-leaf.
    let h = x.mul_scalar(3.0).unwrap();
    h.retain_grad();
    h.square().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(h.grad().unwrap().to_vec::<f64>().unwrap(), vec![6.0, -12.0, 18.0]);
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![18.0, -36.0, 54.0]);
    // Custom op: guided ReLU passes only positive gradients through positive inputs.
    let x2 = Tensor::from_vec(vec![1.0f64, -1.0, 2.0], &[3]).unwrap().requires_grad_().unwrap();
    let y = Tensor::apply_custom(std::sync::Arc::new(GuidedRelu), std::slice::from_ref(&x2)).unwrap();
    let cot = Tensor::from_vec(vec![-1.0f64, 5.0, 4.0], &[3]).unwrap();
    y.backward_with(&cot).unwrap();
    assert_eq!(x2.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 0.0, 4.0]);
    // backward on a non-scalar without a gradient is an error, not a panic.
    assert!(x.mul_scalar(1.0).unwrap().backward().is_err());
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = Tensor::zeros(&[1, 3, 4, 4], DType::F32);
    let w = Tensor::zeros(&[2, 3, 5, 5], DType::F32);
    assert!(matches!(x.conv2d(&w, None, Conv2dArgs::default()), Err(Error::BadShape { .. })));
    let w = Tensor::zeros(&[4, 2, 3, 3], DType::F32);
    assert!(x.conv2d(&w, None, Conv2dArgs { groups: 2, ..Default::default() }).is_err());
    assert!(x.reshape(&[5]).is_err());
    assert!(x.add(&Tensor::zeros(&[2], DType::F32)).is_err());
    assert!(x.matmul(&Tensor::zeros(&[3, 3], DType::F32)).is_err());
    assert!(x.sum(&[7], false).is_err());
    assert!(x.to_dtype(DType::I64).unwrap().exp().is_err());
    let idx = Tensor::from_vec(vec![9i64], &[1]).unwrap();
    assert!(x.index_select(1, &idx).is_err());
    assert!(x.max_pool2d(Pool2dArgs::new(5)).is_err());
}
