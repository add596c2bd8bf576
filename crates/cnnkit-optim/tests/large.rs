//! Large parameters are updated in parallel, vectorised chunks; the result must be bitwise
//! the one of the same elements updated as many small parameters (one chunk each).

use cnnkit_core::{DType, Tensor};
use cnnkit_optim::*;

const N: usize = 100_003; // several chunks, uneven halves
const PIECE: usize = 1_000;

type Make = fn(Vec<Tensor>) -> Box<dyn Optimizer>;

fn makers() -> Vec<(&'static str, Make)> {
    vec![
        ("sgd", |p| Box::new(Sgd::new(p, SgdConfig { lr: 0.05, ..Default::default() }).unwrap())),
        ("sgd_nesterov", |p| {
            Box::new(
                Sgd::new(
                    p,
                    SgdConfig { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.01, maximize: true, ..Default::default() },
                )
                .unwrap(),
            )
        }),
        ("adam_amsgrad", |p| {
            Box::new(Adam::new(p, AdamConfig { lr: 0.05, amsgrad: true, weight_decay: 0.1, ..Default::default() }).unwrap())
        }),
        ("adamw", |p| Box::new(AdamW::new(p, AdamWConfig { lr: 0.05, ..Default::default() }).unwrap())),
        ("rmsprop", |p| Box::new(RmsProp::new(p, RmsPropConfig { lr: 0.01, ..Default::default() }).unwrap())),
        ("rmsprop_centered_momentum", |p| {
            Box::new(RmsProp::new(p, RmsPropConfig { lr: 0.01, momentum: 0.5, centered: true, ..Default::default() }).unwrap())
        }),
        ("adagrad", |p| Box::new(Adagrad::new(p, AdagradConfig { lr: 0.1, weight_decay: 0.01, ..Default::default() }).unwrap())),
    ]
}

fn data(step: usize) -> (Vec<f64>, Vec<f64>) {
    let p = (0..N).map(|i| (i as f64 * 0.37).cos()).collect();
    let g = (0..N).map(|i| ((i + 7 * step) as f64 * 0.11).sin() * 0.1).collect();
    (p, g)
}

fn run(make: Make, dtype: DType, pieces: bool) -> Vec<f64> {
    let (p0, _) = data(0);
    let params: Vec<Tensor> = if pieces {
        p0.chunks(PIECE).map(|c| Tensor::from_slice(c, &[c.len()]).unwrap().to_dtype(dtype).unwrap().requires_grad_().unwrap()).collect()
    } else {
        vec![Tensor::from_vec(p0, &[N]).unwrap().to_dtype(dtype).unwrap().requires_grad_().unwrap()]
    };
    let mut opt = make(params.clone());
    for step in 0..3 {
        let (_, g) = data(step);
        let mut at = 0;
        for p in &params {
            let n = p.numel();
            p.set_grad(Some(Tensor::from_slice(&g[at..at + n], &[n]).unwrap().to_dtype(dtype).unwrap()));
            at += n;
        }
        opt.step().unwrap();
    }
    params.iter().flat_map(|p| p.to_f64_vec().unwrap()).collect()
}

#[test]
fn chunked_parallel_updates_equal_small_ones() {
    for dtype in [DType::F64, DType::F32] {
        for (name, make) in makers() {
            let big = run(make, dtype, false);
            let small = run(make, dtype, true);
            assert!(big.iter().zip(&small).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} {dtype:?}: chunked update differs");
        }
    }
}
