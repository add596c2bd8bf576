//! clip_grad_norm_ / clip_grad_value_ against torch.nn.utils (tests/fixtures/optim/clip.safetensors).

mod common;

use cnnkit_core::{DType, Tensor};
use cnnkit_optim::{clip_grad_norm_, clip_grad_value_};
use common::*;

/// Three parameters whose grads are the fixture's g.0, g.1, g.2 (f64 or f32).
fn params_with_grads(fx: &Fixture, dtype: DType) -> Vec<Tensor> {
    (0..3)
        .map(|i| {
            let g = fx.tensor(&format!("g.{i}"), dtype);
            let p = g.zeros_like().requires_grad_().unwrap();
            p.set_grad(Some(g));
            p
        })
        .collect()
}

#[test]
fn clip_grad_norm_matches_torch() {
    let fx = Fixture::load("clip");
    for (name, p) in [("l2", 2.0), ("l1", 1.0), ("inf", f64::INFINITY), ("p3", 3.0), ("p05", 0.5)] {
        for max_norm in [1.0, 100.0] {
            let key = format!("norm.{name}.{}", max_norm as i64);
            let params = params_with_grads(&fx, DType::F64);
            let total = clip_grad_norm_(&params, max_norm, p).unwrap();
            assert_close(&[total], fx.values(&format!("{key}.total")), 1e-12, 1e-12, &format!("{key} total"));
            for (i, q) in params.iter().enumerate() {
                assert_close(
                    &q.grad().unwrap().to_f64_vec().unwrap(),
                    fx.values(&format!("{key}.g.{i}")),
                    1e-12,
                    1e-12,
                    &format!("{key} g.{i}"),
                );
            }
        }
    }
}

#[test]
fn clip_grad_norm_f32() {
    let fx = Fixture::load("clip");
    let params = params_with_grads(&fx, DType::F32);
    let total = clip_grad_norm_(&params, 1.0, 2.0).unwrap();
    assert_close(&[total], fx.values("norm.l2.1.total"), 1e-6, 1e-6, "f32 total");
    for (i, q) in params.iter().enumerate() {
        assert_eq!(q.grad().unwrap().dtype(), DType::F32);
        assert_close(&q.grad().unwrap().to_f64_vec().unwrap(), fx.values(&format!("norm.l2.1.g.{i}")), 1e-6, 1e-3, "f32 grads");
    }
}

#[test]
fn clip_grad_value_matches_torch() {
    let fx = Fixture::load("clip");
    let params = params_with_grads(&fx, DType::F64);
    clip_grad_value_(&params, 0.5).unwrap();
    for (i, q) in params.iter().enumerate() {
        assert_eq!(q.grad().unwrap().to_f64_vec().unwrap(), fx.values(&format!("value.g.{i}")), "g.{i}");
    }
}

#[test]
fn clipping_edge_cases() {
    // No grads at all: total norm 0, nothing to do.
    let p = Tensor::zeros(&[3], DType::F64).requires_grad_().unwrap();
    assert_eq!(clip_grad_norm_(std::slice::from_ref(&p), 1.0, 2.0).unwrap(), 0.0);
    clip_grad_value_(std::slice::from_ref(&p), 1.0).unwrap();
    assert!(p.grad().is_none());
    // NaN norm_type and negative clip values are refused.
    p.set_grad(Some(Tensor::from_vec(vec![3.0f64, 4.0, 0.0], &[3]).unwrap()));
    assert!(clip_grad_norm_(std::slice::from_ref(&p), 1.0, f64::NAN).is_err());
    assert!(clip_grad_value_(std::slice::from_ref(&p), -1.0).is_err());
    // A non-contiguous grad is replaced by a clipped contiguous copy.
    let q = Tensor::zeros(&[2, 2], DType::F64).requires_grad_().unwrap();
    q.set_grad(Some(Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[2, 2]).unwrap().t().unwrap()));
    clip_grad_value_(std::slice::from_ref(&q), 2.5).unwrap();
    assert_eq!(q.grad().unwrap().to_f64_vec().unwrap(), vec![1.0, 2.5, 2.0, 2.5]);
    // Norm 5 clipped to 1: coefficient 1/(5 + 1e-6).
    let total = clip_grad_norm_(std::slice::from_ref(&p), 1.0, 2.0).unwrap();
    assert_eq!(total, 5.0);
    let c = 1.0 / (5.0 + 1e-6);
    assert_eq!(p.grad().unwrap().to_f64_vec().unwrap(), vec![3.0 * c, 4.0 * c, 0.0]);
}
