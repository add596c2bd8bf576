//! Gradient clipping: `torch.nn.utils.clip_grad_norm_` and `clip_grad_value_`.
//!
//! <https://pytorch.org/docs/stable/generated/torch.nn.utils.clip_grad_norm_.html>: the total
//! norm is the `norm_type`-norm of the per-gradient norms (as if all gradients were one
//! vector); every gradient is then multiplied by `min(1, max_norm / (total + 1e-6))`.

use cnnkit_core::{float_dispatch, Elem, Error, Result, Tensor};

/// The gradients of `params` that exist, each made contiguous so it can be edited in place.
fn grads(params: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    for p in params {
        let Some(g) = p.grad() else { continue };
        let g = if g.is_contiguous() {
            g
        } else {
            let c = g.contiguous()?;
            p.set_grad(Some(c.clone()));
            c
        };
        out.push(g);
    }
    Ok(out)
}

/// `torch.linalg.vector_norm(x, ord)` of one gradient, accumulated in f64.
fn vector_norm(g: &Tensor, ord: f64) -> Result<f64> {
    let v = float_dispatch!("clip_grad_norm_", g.dtype(), T => g.with_data(|d: &[T]| norm_of(d.iter().map(|&x| x.as_f64()), ord))?);
    Ok(v)
}

/// The `ord`-norm of a sequence: max/min |x| for ±inf, the count of non-zeros for 0,
/// `(Σ|x|^ord)^(1/ord)` otherwise (with the usual fast paths for 1 and 2).
fn norm_of(xs: impl Iterator<Item = f64>, ord: f64) -> f64 {
    if ord == f64::INFINITY {
        xs.map(f64::abs).fold(0.0, |m, x| if x > m || x.is_nan() { x } else { m })
    } else if ord == f64::NEG_INFINITY {
        xs.map(f64::abs).fold(f64::INFINITY, |m, x| if x < m || x.is_nan() { x } else { m })
    } else if ord == 0.0 {
        xs.filter(|&x| x != 0.0).count() as f64
    } else if ord == 1.0 {
        xs.map(f64::abs).sum()
    } else if ord == 2.0 {
        xs.map(|x| x * x).sum::<f64>().sqrt()
    } else {
        xs.map(|x| x.abs().powf(ord)).sum::<f64>().powf(1.0 / ord)
    }
}

/// Scales the gradients of `params` in place so that their total `norm_type`-norm is at most
/// `max_norm`, and returns the total norm before clipping (PyTorch's `clip_grad_norm_`).
///
/// `norm_type` may be any real, `f64::INFINITY` included. Parameters without a gradient are
/// ignored; with none at all the result is 0. A non-finite total norm is returned as is and
/// (as in PyTorch with `error_if_nonfinite=False`) turns the gradients into NaN.
pub fn clip_grad_norm_(params: &[Tensor], max_norm: f64, norm_type: f64) -> Result<f64> {
    if norm_type.is_nan() {
        return Err(Error::invalid("clip_grad_norm_", "norm_type is NaN"));
    }
    let grads = grads(params)?;
    if grads.is_empty() {
        return Ok(0.0);
    }
    let norms = grads.iter().map(|g| vector_norm(g, norm_type)).collect::<Result<Vec<f64>>>()?;
    let total = norm_of(norms.into_iter(), norm_type);
    // clip_coef = max_norm / (total + 1e-6), clamped to at most 1 (NaN stays NaN, as torch.clamp).
    let coef = max_norm / (total + 1e-6);
    let coef = if coef.is_nan() { coef } else { coef.min(1.0) };
    if coef != 1.0 {
        for g in &grads {
            float_dispatch!("clip_grad_norm_", g.dtype(), T => {
                let c = T::of_f64(coef);
                g.update_data(|d: &mut [T]| d.iter_mut().for_each(|x| *x *= c))?
            });
        }
    }
    Ok(total)
}

/// Clamps every gradient of `params` in place to `[-clip_value, clip_value]` (PyTorch's
/// `clip_grad_value_`; NaN gradients stay NaN).
pub fn clip_grad_value_(params: &[Tensor], clip_value: f64) -> Result<()> {
    if clip_value.is_nan() || clip_value < 0.0 {
        return Err(Error::invalid("clip_grad_value_", format!("clip_value must be non-negative, got {clip_value}")));
    }
    for g in grads(params)? {
        float_dispatch!("clip_grad_value_", g.dtype(), T => {
            let (lo, hi) = (T::of_f64(-clip_value), T::of_f64(clip_value));
            g.update_data(|d: &mut [T]| {
                for x in d.iter_mut() {
                    if *x < lo {
                        *x = lo;
                    } else if *x > hi {
                        *x = hi;
                    }
                }
            })?
        });
    }
    Ok(())
}
