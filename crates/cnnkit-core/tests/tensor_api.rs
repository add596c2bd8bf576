//! Values of the Tensor API on small hand-checked examples (PyTorch's documented results).

use cnnkit_core::*;

fn t(v: &[f32], s: &[usize]) -> Tensor {
    Tensor::from_slice(v, s).unwrap()
}
fn v(x: &Tensor) -> Vec<f32> {
    x.to_vec::<f32>().unwrap()
}

#[test]
fn views_share_storage_and_never_copy() {
    let x = Tensor::arange(0.0, 24.0, 1.0, DType::F32).unwrap().reshape(&[2, 3, 4]).unwrap();
    let p = x.permute(&[2, 0, 1]).unwrap();
    assert!(p.same_storage(&x) && !p.is_contiguous());
    assert_eq!(p.shape(), &[4, 2, 3]);
    assert_eq!(v(&p.narrow(0, 1, 1).unwrap().flatten(0, -1).unwrap()), vec![1.0, 5.0, 9.0, 13.0, 17.0, 21.0]);
    let e = x.narrow(1, 0, 1).unwrap().expand(&[2, 5, 4]).unwrap();
    assert!(e.same_storage(&x));
    assert_eq!(e.strides()[1], 0);
    assert!(x.transpose(0, 2).unwrap().same_storage(&x));
    assert!(x.unsqueeze(1).unwrap().squeeze(1).unwrap().same_storage(&x));
    assert_eq!(x.view(&[-1, 4]).unwrap().shape(), &[6, 4]);
    assert!(x.view(&[-1, 5]).is_err());
    // Writing through one view is seen by the others (in-place update of shared storage).
    x.update_data(|d: &mut [f32]| d[1] = 100.0).unwrap();
    assert_eq!(v(&p.narrow(0, 1, 1).unwrap().flatten(0, -1).unwrap())[0], 100.0);
}

#[test]
fn joining_and_splitting() {
    let a = t(&[1., 2., 3., 4.], &[2, 2]);
    let b = t(&[5., 6.], &[1, 2]);
    assert_eq!(v(&Tensor::cat(&[a.clone(), b.clone()], 0).unwrap()), vec![1., 2., 3., 4., 5., 6.]);
    assert_eq!(Tensor::stack(&[a.clone(), a.clone()], 1).unwrap().shape(), &[2, 2, 2]);
    let x = Tensor::arange(0.0, 10.0, 1.0, DType::F32).unwrap();
    let parts: Vec<usize> = x.split(4, 0).unwrap().iter().map(|p| p.numel()).collect();
    assert_eq!(parts, vec![4, 4, 2]);
    let chunks: Vec<usize> = x.chunk(3, 0).unwrap().iter().map(|p| p.numel()).collect();
    assert_eq!(chunks, vec![4, 4, 2]);
}

#[test]
fn indexing_ops() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let idx = Tensor::from_vec(vec![2i64, 0], &[2]).unwrap();
    assert_eq!(v(&x.index_select(1, &idx).unwrap()), vec![3., 1., 6., 4.]);
    let gi = Tensor::from_vec(vec![0i64, 0, 1, 0], &[2, 2]).unwrap();
    // torch.gather(t, 1, [[0,0],[1,0]]) on [[1,2,3],[4,5,6]] = [[1,1],[5,4]]
    assert_eq!(v(&x.gather(1, &gi).unwrap()), vec![1., 1., 5., 4.]);
    let z = Tensor::zeros(&[2, 3], DType::F32);
    let s = z.scatter_add(1, &gi, &t(&[1., 2., 3., 4.], &[2, 2])).unwrap();
    assert_eq!(v(&s), vec![3., 0., 0., 4., 3., 0.]);
    let m = x.gt_scalar(3.5).unwrap();
    assert_eq!(m.to_vec::<u8>().unwrap(), vec![0, 0, 0, 1, 1, 1]);
    assert_eq!(v(&x.masked_fill(&m, -1.0).unwrap()), vec![1., 2., 3., -1., -1., -1.]);
    assert_eq!(v(&Tensor::where_cond(&m, &x, &x.neg().unwrap()).unwrap()), vec![-1., -2., -3., 4., 5., 6.]);
    assert_eq!(v(&x.clamp(Some(2.0), Some(5.0)).unwrap()), vec![2., 2., 3., 4., 5., 5.]);
}

#[test]
fn padding_modes_match_pytorch() {
    let x = t(&[1., 2., 3.], &[1, 1, 1, 3]);
    // F.pad(x, (2, 2), mode) on [1, 2, 3]
    let row = |m| v(&x.pad2d([2, 2, 0, 0], m, 0.0).unwrap());
    assert_eq!(row(PadMode::Constant), vec![0., 0., 1., 2., 3., 0., 0.]);
    assert_eq!(row(PadMode::Reflect), vec![3., 2., 1., 2., 3., 2., 1.]);
    assert_eq!(row(PadMode::Replicate), vec![1., 1., 1., 2., 3., 3., 3.]);
    assert_eq!(row(PadMode::Circular), vec![2., 3., 1., 2., 3., 1., 2.]);
    assert_eq!(v(&x.pad2d([-1, 0, 0, 0], PadMode::Constant, 0.0).unwrap()), vec![2., 3.]);
    assert!(x.pad2d([3, 0, 0, 0], PadMode::Reflect, 0.0).is_err());
}

#[test]
fn reductions_with_keepdim() {
    let x = t(&[1., 5., 3., 4., 2., 6.], &[2, 3]);
    assert_eq!(x.sum(&[1], true).unwrap().shape(), &[2, 1]);
    assert_eq!(v(&x.sum(&[0], false).unwrap()), vec![5., 7., 9.]);
    assert_eq!(v(&x.mean_all().unwrap()), vec![3.5]);
    let (m, i) = x.max_dim(1, false).unwrap();
    assert_eq!((v(&m), i.to_vec::<i64>().unwrap()), (vec![5., 6.], vec![1, 2]));
    assert_eq!(x.argmin(1, false).unwrap().to_vec::<i64>().unwrap(), vec![0, 1]);
    assert!((x.var(&[1], 1, false).unwrap().to_vec::<f32>().unwrap()[0] - 4.0).abs() < 1e-6);
    assert!((x.std(&[], 0, false).unwrap().item().unwrap() - (17.5f64 / 6.0).sqrt()).abs() < 1e-6);
    let l = x.logsumexp(1, false).unwrap().to_vec::<f32>().unwrap();
    assert!((l[0] as f64 - (1f64.exp() + 5f64.exp() + 3f64.exp()).ln()).abs() < 1e-5);
    let big = t(&[1000., 1000.], &[2]);
    assert!((big.logsumexp(0, false).unwrap().item().unwrap() - (1000.0 + 2f64.ln())).abs() < 1e-3);
}

#[test]
fn dtypes_and_printing() {
    let x = t(&[1.5, -2.25, 3.0], &[3]);
    for d in [DType::F16, DType::BF16, DType::F64, DType::I64, DType::U8, DType::F32] {
        let y = x.to_dtype(d).unwrap();
        assert_eq!(y.dtype(), d);
    }
    assert_eq!(x.to_dtype(DType::F16).unwrap().to_f32_vec().unwrap(), vec![1.5, -2.25, 3.0]);
    assert_eq!(x.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(), vec![1, -2, 3]);
    assert!(x.to_dtype(DType::F16).unwrap().exp().is_err(), "half types are storage-only");
    assert_eq!(format!("{}", t(&[1., 2., 3., 4.], &[2, 2])), "tensor([[1.0000, 2.0000],\n        [3.0000, 4.0000]])");
    assert_eq!(format!("{:?}", x), "Tensor(shape=[3], dtype=float32)");
    assert!(format!("{}", Tensor::zeros(&[100], DType::F32)).contains("..."));
}

#[test]
fn seeded_random_is_reproducible() {
    manual_seed(42);
    let a = Tensor::randn(&[5], DType::F32).to_vec::<f32>().unwrap();
    manual_seed(42);
    let b = Tensor::randn(&[5], DType::F32).to_vec::<f32>().unwrap();
    assert_eq!(a, b);
    let p = Tensor::full(&[1000], 0.3, DType::F32).bernoulli().unwrap().to_vec::<f32>().unwrap();
    let rate = p.iter().sum::<f32>() / 1000.0;
    assert!((rate - 0.3).abs() < 0.06);
    let r = Tensor::randint(3, 7, &[100]).unwrap().to_vec::<i64>().unwrap();
    assert!(r.iter().all(|&k| (3..7).contains(&k)));
    let u = Tensor::uniform(&[100], -2.0, -1.0, DType::F64).to_vec::<f64>().unwrap();
    assert!(u.iter().all(|&k| (-2.0..-1.0).contains(&k)));
}

#[test]
fn matmul_shapes_follow_pytorch() {
    let a = Tensor::randn(&[2, 1, 3, 4], DType::F32);
    let b = Tensor::randn(&[5, 4, 6], DType::F32);
    assert_eq!(a.matmul(&b).unwrap().shape(), &[2, 5, 3, 6]);
    assert_eq!(Tensor::randn(&[4], DType::F32).matmul(&Tensor::randn(&[4], DType::F32)).unwrap().shape(), &[] as &[usize]);
    let i = Tensor::eye(3, DType::F32);
    let m = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    assert_eq!(v(&m.matmul(&i).unwrap()), v(&m));
    // A transposed (strided) operand needs no copy and gives the right answer.
    assert_eq!(v(&m.matmul(&m.t().unwrap()).unwrap()), vec![14., 32., 32., 77.]);
}

/// `linear` at batch 1–4 (x · Wᵀ with W's rows contiguous) runs on `dot::gemm_nt`, which
/// splits W's rows over the threads; it must agree with the gemm crate's product of the same
/// operands made contiguous, for strided rows of x, f32 and f64, and keep its gradient.
#[test]
fn small_batch_linear_matches_the_general_product() {
    for (dt, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-10)] {
        for (m, k, n) in [(1, 1280, 1000), (2, 300, 37), (4, 17, 1100), (3, 1, 5)] {
            // Rows of x are k + 3 apart (a narrowed view), W is (n, k).
            let x = Tensor::randn(&[m, k + 3], dt).narrow(1, 2, k).unwrap();
            let w = Tensor::randn(&[n, k], dt);
            let got = x.matmul(&w.t().unwrap()).unwrap();
            let want = x.contiguous().unwrap().matmul(&w.t().unwrap().contiguous().unwrap()).unwrap();
            assert_eq!(got.shape(), &[m, n]);
            let (g, e) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
            for (a, b) in g.iter().zip(&e) {
                assert!((a - b).abs() <= tol * (1.0 + b.abs()) * (k as f64).sqrt(), "{dt:?} ({m}, {k}, {n}): {a} vs {b}");
            }
        }
    }
    let x = Tensor::randn(&[1, 8], DType::F64).requires_grad_().unwrap();
    let w = Tensor::randn(&[3, 8], DType::F64);
    x.linear(&w, None).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = x.grad().unwrap().to_vec::<f64>().unwrap();
    let wv = w.to_vec::<f64>().unwrap();
    for (j, g) in gx.iter().enumerate() {
        assert!((g - (0..3).map(|i| wv[i * 8 + j]).sum::<f64>()).abs() < 1e-12);
    }
}

/// Training through the fused convolution + activation: output and the gradients of input,
/// weight and bias equal those of conv2d followed by relu / clamp, bit for bit (the same
/// kernels run; only where the activation and its mask are applied differs).
#[test]
fn fused_conv_activation_trains_like_the_separate_ops() {
    use cnnkit_kernels::conv::Epilogue;
    for act in [Epilogue::Relu, Epilogue::Clamp(-0.3, 0.6)] {
        for (shape, wshape, args) in [
            ([4, 16, 12, 12], [32, 16, 3, 3], Conv2dArgs { padding: (1, 1), ..Default::default() }),
            ([2, 3, 9, 11], [8, 3, 3, 3], Conv2dArgs { stride: (2, 2), padding: (1, 0), ..Default::default() }),
        ] {
            let leaf = |t: Tensor| t.requires_grad_().unwrap();
            let run = |fused: bool| {
                let mut g = Generator::new(7);
                let x = leaf(Tensor::randn_with(&shape, DType::F32, &mut g));
                let w = leaf(Tensor::randn_with(&wshape, DType::F32, &mut g).mul_scalar(0.2).unwrap());
                let b = leaf(Tensor::randn_with(&[wshape[0]], DType::F32, &mut g));
                let y = if fused {
                    x.conv2d_act(&w, Some(&b), args, act).unwrap()
                } else {
                    x.conv2d(&w, Some(&b), args).unwrap().activation(act).unwrap()
                };
                let cot = Tensor::randn_with(y.shape(), DType::F32, &mut g);
                y.mul(&cot).unwrap().sum_all().unwrap().backward().unwrap();
                [v(&y), v(&x.grad().unwrap()), v(&w.grad().unwrap()), v(&b.grad().unwrap())]
            };
            let (fused, separate) = (run(true), run(false));
            for (i, (f, s)) in fused.iter().zip(&separate).enumerate() {
                assert_eq!(f, s, "{act:?} {shape:?}: part {i} (output, dx, dw, db)");
            }
            assert!(fused[0].iter().any(|&v| v == 0.0 || v == -0.3) && fused[1].iter().any(|&v| v != 0.0), "activation both ways");
        }
    }
}

/// Batch norm with the activation in its normalising pass trains like batch_norm followed by
/// relu / clamp: output and the gradients of input, weight and bias bit for bit.
#[test]
fn fused_batch_norm_activation_trains_like_the_separate_ops() {
    use cnnkit_kernels::conv::Epilogue;
    for act in [Epilogue::Relu, Epilogue::Clamp(-0.3, 0.6)] {
        let leaf = |t: Tensor| t.requires_grad_().unwrap();
        let run = |fused: bool| {
            let mut g = Generator::new(9);
            let x = leaf(Tensor::randn_with(&[4, 6, 10, 9], DType::F32, &mut g));
            let w = leaf(Tensor::randn_with(&[6], DType::F32, &mut g));
            let b = leaf(Tensor::randn_with(&[6], DType::F32, &mut g));
            let y = if fused {
                x.batch_norm_act(None, None, Some(&w), Some(&b), true, 0.1, 1e-5, act).unwrap()
            } else {
                x.batch_norm(None, None, Some(&w), Some(&b), true, 0.1, 1e-5).unwrap().activation(act).unwrap()
            };
            let cot = Tensor::randn_with(y.shape(), DType::F32, &mut g);
            y.mul(&cot).unwrap().sum_all().unwrap().backward().unwrap();
            [v(&y), v(&x.grad().unwrap()), v(&w.grad().unwrap()), v(&b.grad().unwrap())]
        };
        let (fused, separate) = (run(true), run(false));
        for (i, (f, s)) in fused.iter().zip(&separate).enumerate() {
            assert_eq!(f, s, "{act:?}: part {i} (output, dx, dw, db)");
        }
    }
}

#[test]
fn fused_add_activation_matches_the_separate_ops() {
    use cnnkit_kernels::conv::Epilogue;
    let _ng = no_grad();
    let a = Tensor::randn(&[2, 3, 70, 90], DType::F32).mul_scalar(3.0).unwrap();
    let mut bv = Tensor::randn(&[2, 3, 70, 90], DType::F32).to_vec::<f32>().unwrap();
    bv[7] = f32::NAN;
    let b = Tensor::from_vec(bv, &[2, 3, 70, 90]).unwrap();
    let sum = a.add(&b).unwrap();
    let same = |x: Vec<f32>, y: Vec<f32>| x.iter().zip(&y).all(|(p, q)| p == q || (p.is_nan() && q.is_nan()));
    assert!(same(v(&a.add_act(&b, Epilogue::Relu).unwrap()), v(&sum.relu().unwrap())));
    let clipped = sum.clamp(Some(-1.0), Some(6.0)).unwrap();
    assert!(same(v(&a.add_act(&b, Epilogue::Clamp(-1.0, 6.0)).unwrap()), v(&clipped)));
    // Broadcasting takes the unfused path and still agrees.
    let row = Tensor::randn(&[90], DType::F32);
    assert!(same(v(&a.add_act(&row, Epilogue::Relu).unwrap()), v(&a.add(&row).unwrap().relu().unwrap())));
}

/// `add_act_` (the executor's residual Add in place) writes `act(self + other)` into self, bit
/// for bit the separate ops, and declines what it does not handle, leaving self alone.
#[test]
fn in_place_add_activation_matches_the_separate_ops() {
    use cnnkit_kernels::conv::Epilogue;
    let a = Tensor::randn(&[2, 3, 70, 90], DType::F32).mul_scalar(3.0).unwrap();
    let b = Tensor::randn(&[2, 3, 70, 90], DType::F32);
    let want = v(&a.add(&b).unwrap().clamp(Some(-1.0), Some(6.0)).unwrap());
    let y = a.mul_scalar(1.0).unwrap();
    let _ng = no_grad();
    assert!(y.add_act_(&b, Epilogue::Clamp(-1.0, 6.0)).unwrap());
    assert_eq!(v(&y), want);
    // Declined: a broadcast, another dtype, a non-contiguous self, self's own storage.
    let before = v(&y);
    assert!(!y.add_act_(&Tensor::randn(&[90], DType::F32), Epilogue::Relu).unwrap());
    assert!(!y.add_act_(&b.to_dtype(DType::F64).unwrap(), Epilogue::Relu).unwrap());
    let t = Tensor::randn(&[90, 70], DType::F32).transpose(0, 1).unwrap();
    assert!(!t.add_act_(&Tensor::randn(&[70, 90], DType::F32), Epilogue::None).unwrap());
    assert!(!y.add_act_(&y, Epilogue::None).unwrap());
    assert_eq!(v(&y), before);
}
