//! Training steps inside a recycling scope (as the trainer runs them) compute exactly what they
//! compute without one, although their outputs and gradients live in buffers with stale
//! contents from the previous step.

use cnnkit_core::{recycle_buffers, recycle_stats, Conv2dArgs, DType, Generator, Pool2dArgs, Result, Tensor};

/// conv → batch norm → ReLU → max pool → conv → mean of squares; returns every gradient.
fn step(x: &Tensor, params: &[Tensor]) -> Result<Vec<Vec<f32>>> {
    for p in params {
        p.zero_grad();
    }
    let pad = Conv2dArgs { padding: (1, 1), ..Default::default() };
    let h = x.conv2d(&params[0], Some(&params[1]), pad)?;
    let h = h.batch_norm(None, None, Some(&params[2]), Some(&params[3]), true, 0.1, 1e-5)?.relu()?;
    let h = h.max_pool2d(Pool2dArgs::new(2))?.conv2d(&params[4], None, pad)?;
    h.square()?.mean_all()?.backward()?;
    params.iter().map(|p| p.grad().expect("gradient").to_vec::<f32>()).collect()
}

#[test]
fn recycled_steps_match_fresh_ones() -> Result<()> {
    let mut g = Generator::new(7);
    let x = Tensor::randn_with(&[4, 3, 32, 32], DType::F32, &mut g);
    let params: Vec<Tensor> = [&[16usize, 3, 3, 3][..], &[16], &[16], &[16], &[8, 16, 3, 3]]
        .iter()
        .map(|s| Tensor::randn_with(s, DType::F32, &mut g).requires_grad_())
        .collect::<Result<_>>()?;
    let want = step(&x, &params)?;
    let _scope = recycle_buffers();
    let (hits0, _) = recycle_stats();
    for _ in 0..3 {
        // Poison whatever the previous step left: a buffer reused without being overwritten shows.
        let junk = Tensor::full(&[4, 16, 32, 32], f64::NAN, DType::F32);
        drop(junk.relu()?);
        assert_eq!(step(&x, &params)?, want);
    }
    assert!(recycle_stats().0 > hits0, "later steps reuse earlier steps' buffers");
    Ok(())
}

/// Once warm, a training step with a fused convolution + ReLU asks the allocator for no output
/// buffer: every one, the backward's masked gradient included, comes back from the pool (the
/// masked gradient, a plain Vec, had been freed to the allocator and zero-filled afresh each
/// step).
#[test]
fn warm_fused_steps_allocate_no_output_buffers() -> Result<()> {
    use cnnkit_kernels::conv::Epilogue;
    let mut g = Generator::new(9);
    let x = Tensor::randn_with(&[4, 3, 32, 32], DType::F32, &mut g);
    let w1 = Tensor::randn_with(&[16, 3, 3, 3], DType::F32, &mut g).requires_grad_()?;
    let w2 = Tensor::randn_with(&[8, 16, 3, 3], DType::F32, &mut g).requires_grad_()?;
    let pad = Conv2dArgs { padding: (1, 1), ..Default::default() };
    let step = || -> Result<()> {
        w1.zero_grad();
        w2.zero_grad();
        let h = x.conv2d_act(&w1, None, pad, Epilogue::Relu)?.conv2d(&w2, None, pad)?;
        h.square()?.mean_all()?.backward()
    };
    let _scope = recycle_buffers();
    step()?;
    step()?;
    let (_, misses) = recycle_stats();
    step()?;
    assert_eq!(recycle_stats().1, misses, "a warm step allocated output buffers");
    Ok(())
}
