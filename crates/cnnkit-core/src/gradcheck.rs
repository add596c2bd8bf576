//! f64 finite-difference gradient checking (`torch.autograd.gradcheck`).

use crate::{DType, Error, Result, Tensor};

/// Checks the analytic gradients of `f` (summed against a fixed random cotangent) at `inputs`
/// (f64 leaves) against central differences with step `eps`. Returns the worst relative error.
pub fn gradcheck(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], eps: f64, tol: f64) -> Result<f64> {
    for x in inputs {
        if x.dtype() != DType::F64 {
            return Err(Error::invalid("gradcheck", "inputs must be float64"));
        }
    }
    let leaves: Vec<Tensor> = inputs.iter().map(|x| x.detach().contiguous_copy()?.requires_grad_()).collect::<Result<_>>()?;
    let y0 = f(&leaves)?;
    let mut g = crate::random::Generator::new(1234);
    let cot = Tensor::uniform_with(y0.shape(), 0.5, 1.5, DType::F64, &mut g);
    let loss = |xs: &[Tensor]| -> Result<f64> { f(xs)?.mul(&cot)?.sum_all()?.item() };
    y0.mul(&cot)?.sum_all()?.backward()?;
    let mut worst: f64 = 0.0;
    for (i, leaf) in leaves.iter().enumerate() {
        let analytic = match leaf.grad() {
            Some(g) => g.to_vec::<f64>()?,
            None => vec![0.0; leaf.numel()],
        };
        let base = leaf.to_vec::<f64>()?;
        for j in 0..base.len() {
            let eval = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += d;
                let mut xs: Vec<Tensor> = leaves.iter().map(|l| l.detach()).collect();
                xs[i] = Tensor::from_vec(v, leaf.shape())?;
                crate::grad_mode::with_no_grad(|| loss(&xs))
            };
            let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            let err = (numeric - analytic[j]).abs() / (1.0 + numeric.abs());
            if err > tol {
                return Err(Error::Backward(format!("gradcheck: input {i} element {j}: analytic {} vs numeric {numeric}", analytic[j])));
            }
            worst = worst.max(err);
        }
    }
    Ok(worst)
}
