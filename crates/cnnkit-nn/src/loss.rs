//! Loss functions (torch.nn.functional), composed from differentiable ops so their
//! gradients come from autograd. Semantics and defaults follow PyTorch exactly, including
//! the weight-normalised mean of cross_entropy/nll_loss and the log clamp of BCE.

use cnnkit_core::{CustomOp, DType, Error, Result, Tensor};
use std::sync::Arc;

/// How per-element losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    None,
    #[default]
    Mean,
    Sum,
    /// kl_div only: sum divided by the batch size (the mathematically correct KL mean).
    BatchMean,
}

fn reduce(per: Tensor, r: Reduction, op: &'static str) -> Result<Tensor> {
    match r {
        Reduction::None => Ok(per),
        Reduction::Mean => per.mean_all(),
        Reduction::Sum => per.sum_all(),
        Reduction::BatchMean => {
            if op != "kl_div" {
                return Err(Error::invalid(op, "reduction 'batchmean' is only for kl_div"));
            }
            let n = per.shape().first().copied().unwrap_or(1).max(1);
            per.sum_all()?.div_scalar(n as f64)
        }
    }
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::mismatch(op, a.shape(), b.shape()));
    }
    Ok(())
}

/// Options of cross_entropy / nll_loss (PyTorch defaults: no weight, ignore_index −100,
/// mean reduction, no label smoothing).
#[derive(Clone, Debug)]
pub struct CrossEntropyOptions {
    /// Per-class weights: (C).
    pub weight: Option<Tensor>,
    pub ignore_index: i64,
    pub reduction: Reduction,
    pub label_smoothing: f64,
}

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        CrossEntropyOptions { weight: None, ignore_index: -100, reduction: Reduction::Mean, label_smoothing: 0.0 }
    }
}

/// (N, C, d…) → (N·d…, C): the class dim last, one row per prediction.
fn rows(x: &Tensor) -> Result<Tensor> {
    if x.ndim() == 2 {
        return Ok(x.clone());
    }
    let mut perm: Vec<usize> = vec![0];
    perm.extend(2..x.ndim());
    perm.push(1);
    let c = x.shape()[1];
    x.permute(&perm)?.reshape(&[x.numel() / c.max(1), c])
}

/// The (N, d…) shape of per-prediction losses.
fn per_shape(input: &Tensor) -> Vec<usize> {
    let mut s = vec![input.shape()[0]];
    s.extend_from_slice(&input.shape()[2..]);
    s
}

/// `F.nll_loss`. logp: (N, C) or (N, C, d…) log-probabilities; target: (N) or (N, d…) int64.
pub fn nll_loss(logp: &Tensor, target: &Tensor, o: &CrossEntropyOptions) -> Result<Tensor> {
    let (per, wsum) = nll_parts(logp, target, o)?;
    match o.reduction {
        Reduction::Mean => per.sum_all()?.div(&wsum),
        r => reduce(per, r, "nll_loss"),
    }
}

/// Per-prediction weighted NLL (shape (N, d…)) and the total weight of non-ignored targets.
fn nll_parts(logp: &Tensor, target: &Tensor, o: &CrossEntropyOptions) -> Result<(Tensor, Tensor)> {
    if logp.ndim() < 2 {
        return Err(Error::bad_shape("nll_loss", logp.shape(), "input must be (N, C) or (N, C, d...)"));
    }
    if target.dtype() != DType::I64 {
        return Err(Error::DType { op: "nll_loss", got: target.dtype(), expected: "int64 class indices" });
    }
    if target.shape() != per_shape(logp) {
        return Err(Error::mismatch("nll_loss (target)", target.shape(), &per_shape(logp)));
    }
    let c = logp.shape()[1];
    let t = target.to_vec::<i64>()?;
    if let Some(bad) = t.iter().find(|&&v| v != o.ignore_index && (v < 0 || v as usize >= c)) {
        return Err(Error::invalid("nll_loss", format!("target {bad} is out of bounds for {c} classes")));
    }
    let valid: Vec<f64> = t.iter().map(|&v| (v != o.ignore_index) as u8 as f64).collect();
    let safe: Vec<i64> = t.iter().map(|&v| if v == o.ignore_index { 0 } else { v }).collect();
    let m = t.len();
    let idx = Tensor::from_vec(safe.clone(), &[m, 1])?;
    let picked = rows(logp)?.gather(1, &idx)?.reshape(&[m])?;
    let w: Vec<f64> = match &o.weight {
        Some(w) => {
            if w.shape() != [c] {
                return Err(Error::mismatch("nll_loss (weight)", w.shape(), &[c]));
            }
            let wv = w.to_f64_vec()?;
            safe.iter().zip(&valid).map(|(&i, &v)| wv[i as usize] * v).collect()
        }
        None => valid,
    };
    let wsum: f64 = w.iter().sum();
    let wt = Tensor::from_vec(w, &[m])?.to_dtype(logp.dtype())?;
    let per = picked.mul(&wt)?.neg()?.reshape(&per_shape(logp))?;
    Ok((per, Tensor::full(&[], wsum, logp.dtype())))
}

/// `F.cross_entropy`. input: (N, C) or (N, C, d…) logits; target: class indices (N) / (N, d…)
/// as int64, or class probabilities with input's shape (float).
pub fn cross_entropy(input: &Tensor, target: &Tensor, o: &CrossEntropyOptions) -> Result<Tensor> {
    if input.ndim() < 2 {
        return Err(Error::bad_shape("cross_entropy", input.shape(), "input must be (N, C) or (N, C, d...)"));
    }
    let c = input.shape()[1];
    let logp = input.log_softmax(1)?;
    let eps = o.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::invalid("cross_entropy", format!("label_smoothing must be in [0, 1], got {eps}")));
    }
    // Per-class weights broadcast along the class dim: (C, 1, …).
    let wb = match &o.weight {
        Some(w) => {
            if w.shape() != [c] {
                return Err(Error::mismatch("cross_entropy (weight)", w.shape(), &[c]));
            }
            let mut s = vec![c];
            s.extend(std::iter::repeat_n(1, input.ndim() - 2));
            Some(w.to_dtype(input.dtype())?.reshape(&s)?)
        }
        None => None,
    };
    if target.dtype().is_float() {
        // Probabilities: −Σ_c w_c·t'_c·log p_c with t' = (1−ε)t + ε/C; mean over predictions.
        same_shape("cross_entropy (probability target)", input, target)?;
        let t = if eps > 0.0 { target.mul_scalar(1.0 - eps)?.add_scalar(eps / c as f64)? } else { target.clone() };
        let mut prod = logp.mul(&t)?;
        if let Some(w) = &wb {
            prod = prod.mul(w)?;
        }
        let per = prod.sum(&[1], false)?.neg()?;
        return reduce(per, o.reduction, "cross_entropy");
    }
    let (nll, wsum) = nll_parts(&logp, target, o)?;
    if eps == 0.0 {
        return match o.reduction {
            Reduction::Mean => nll.sum_all()?.div(&wsum),
            r => reduce(nll, r, "cross_entropy"),
        };
    }
    // Label smoothing on indices, as ATen's cross_entropy_loss_label_smoothing.
    let weighted = match &wb {
        Some(w) => logp.mul(w)?,
        None => logp.clone(),
    };
    let valid = target.ne(&Tensor::full(&[], o.ignore_index as f64, DType::I64))?.to_dtype(input.dtype())?;
    let smooth = weighted.sum(&[1], false)?.neg()?.mul(&valid)?;
    let (nll_r, smooth_r) = match o.reduction {
        Reduction::Mean => {
            let denom = if wb.is_some() { wsum.clone() } else { valid.sum_all()? };
            (nll.sum_all()?.div(&wsum)?, smooth.sum_all()?.div(&denom)?)
        }
        Reduction::Sum => (nll.sum_all()?, smooth.sum_all()?),
        Reduction::None => (nll, smooth),
        Reduction::BatchMean => return Err(Error::invalid("cross_entropy", "reduction 'batchmean' is only for kl_div")),
    };
    nll_r.mul_scalar(1.0 - eps)?.add(&smooth_r.mul_scalar(eps / c as f64)?)
}

/// BCE's pointwise loss −(y·log p + (1 − y)·log(1 − p)), logs clamped at −100, with PyTorch's
/// backward: ∂/∂p = (p − y) / max(p(1 − p), 1e-12) and ∂/∂y = log(1 − p) − log(p). Composing it
/// from log and clamp instead gives 0·∞ = NaN at a saturated p = 0 or 1 (the clamped log passes
/// no gradient but 1/p is infinite), where PyTorch's fused gradient stays finite.
struct BinaryCrossEntropy;

impl CustomOp for BinaryCrossEntropy {
    fn name(&self) -> &str {
        "binary_cross_entropy"
    }
    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        let (p, y) = (&inputs[0], &inputs[1]);
        let lp = p.log()?.clamp(Some(-100.0), None)?;
        let l1p = p.neg()?.add_scalar(1.0)?.log()?.clamp(Some(-100.0), None)?;
        y.mul(&lp)?.add(&y.neg()?.add_scalar(1.0)?.mul(&l1p)?)?.neg()
    }
    fn backward(&self, inputs: &[Tensor], _output: &Tensor, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (p, y) = (&inputs[0], &inputs[1]);
        let one_minus_p = p.neg()?.add_scalar(1.0)?;
        let gp = p.requires_grad().then(|| g.mul(&p.sub(y)?)?.div(&p.mul(&one_minus_p)?.clamp(Some(1e-12), None)?)).transpose()?;
        let gy = y.requires_grad().then(|| g.mul(&one_minus_p.log()?.sub(&p.log()?)?)).transpose()?;
        Ok(vec![gp, gy])
    }
}

/// `F.binary_cross_entropy`. p, y: same shape, p in [0, 1]; weight broadcasts.
/// Logs are clamped at −100 as PyTorch does, so p = 0 or 1 gives a finite loss (and gradient).
pub fn binary_cross_entropy(p: &Tensor, y: &Tensor, weight: Option<&Tensor>, reduction: Reduction) -> Result<Tensor> {
    same_shape("binary_cross_entropy", p, y)?;
    let mut per = Tensor::apply_custom(Arc::new(BinaryCrossEntropy), &[p.clone(), y.clone()])?;
    if let Some(w) = weight {
        per = per.mul(w)?;
    }
    reduce(per, reduction, "binary_cross_entropy")
}

/// `F.binary_cross_entropy_with_logits`: the numerically stable sigmoid + BCE.
/// x, y: same shape; weight and pos_weight (per class, last dim) broadcast.
pub fn binary_cross_entropy_with_logits(
    x: &Tensor,
    y: &Tensor,
    weight: Option<&Tensor>,
    pos_weight: Option<&Tensor>,
    reduction: Reduction,
) -> Result<Tensor> {
    same_shape("binary_cross_entropy_with_logits", x, y)?;
    // loss = (1 − y)·x + (1 + (pw − 1)·y)·softplus(−x)
    let sp = x.neg()?.softplus(1.0, 20.0)?;
    let lw = match pos_weight {
        Some(pw) => y.mul(&pw.add_scalar(-1.0)?)?.add_scalar(1.0)?,
        None => Tensor::full(&[], 1.0, x.dtype()),
    };
    let mut per = y.neg()?.add_scalar(1.0)?.mul(x)?.add(&lw.mul(&sp)?)?;
    if let Some(w) = weight {
        per = per.mul(w)?;
    }
    reduce(per, reduction, "binary_cross_entropy_with_logits")
}

/// `F.mse_loss`.
pub fn mse_loss(x: &Tensor, y: &Tensor, reduction: Reduction) -> Result<Tensor> {
    same_shape("mse_loss", x, y)?;
    reduce(x.sub(y)?.square()?, reduction, "mse_loss")
}

/// `F.l1_loss`.
pub fn l1_loss(x: &Tensor, y: &Tensor, reduction: Reduction) -> Result<Tensor> {
    same_shape("l1_loss", x, y)?;
    reduce(x.sub(y)?.abs()?, reduction, "l1_loss")
}

/// `F.smooth_l1_loss` (beta default 1): 0.5·d²/β where |d| < β, else |d| − 0.5·β.
pub fn smooth_l1_loss(x: &Tensor, y: &Tensor, beta: f64, reduction: Reduction) -> Result<Tensor> {
    same_shape("smooth_l1_loss", x, y)?;
    let d = x.sub(y)?;
    let a = d.abs()?;
    if beta == 0.0 {
        return reduce(a, reduction, "smooth_l1_loss");
    }
    let quad = d.square()?.mul_scalar(0.5 / beta)?;
    let lin = a.add_scalar(-0.5 * beta)?;
    reduce(Tensor::where_cond(&a.lt_scalar(beta)?, &quad, &lin)?, reduction, "smooth_l1_loss")
}

/// `F.huber_loss` (delta default 1): 0.5·d² where |d| ≤ δ, else δ·(|d| − 0.5·δ).
pub fn huber_loss(x: &Tensor, y: &Tensor, delta: f64, reduction: Reduction) -> Result<Tensor> {
    same_shape("huber_loss", x, y)?;
    let d = x.sub(y)?;
    let a = d.abs()?;
    let quad = d.square()?.mul_scalar(0.5)?;
    let lin = a.add_scalar(-0.5 * delta)?.mul_scalar(delta)?;
    reduce(Tensor::where_cond(&a.le_scalar(delta)?, &quad, &lin)?, reduction, "huber_loss")
}

/// `F.kl_div(input, target)`: input holds log-probabilities; target probabilities (or
/// log-probabilities with `log_target`). Pointwise t·(log t − input), 0 where t = 0.
pub fn kl_div(input: &Tensor, target: &Tensor, reduction: Reduction, log_target: bool) -> Result<Tensor> {
    same_shape("kl_div", input, target)?;
    let per = if log_target {
        target.exp()?.mul(&target.sub(input)?)?
    } else {
        let pos = target.gt_scalar(0.0)?;
        let safe_t = Tensor::where_cond(&pos, target, &target.ones_like())?;
        let xlogx = target.mul(&safe_t.log()?)?;
        xlogx.sub(&target.mul(input)?)?
    };
    reduce(per, reduction, "kl_div")
}

/// `nn.CrossEntropyLoss` as a value: `criterion.forward(&logits, &labels)`.
#[derive(Clone, Debug, Default)]
pub struct CrossEntropyLoss {
    pub options: CrossEntropyOptions,
}

impl CrossEntropyLoss {
    pub fn new() -> Self {
        Self::default()
    }
    /// logits: (N, C, …); target: (N, …) int64 or probabilities.
    pub fn forward(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        cross_entropy(logits, target, &self.options)
    }
}

/// `nn.MSELoss` as a value.
#[derive(Clone, Copy, Debug, Default)]
pub struct MSELoss {
    pub reduction: Reduction,
}

impl MSELoss {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn forward(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        mse_loss(x, y, self.reduction)
    }
}
