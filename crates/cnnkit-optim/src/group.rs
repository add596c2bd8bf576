//! Parameter groups: PyTorch's `optimizer.param_groups`, lists of parameters that share a
//! learning rate, a weight decay and the optimizer's other hyper-parameters.
//!
//! <https://pytorch.org/docs/stable/optim.html#per-parameter-options>

use crate::state::{scalar, sd_err, DictReader};
use cnnkit_core::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, HashSet};

/// `torch.optim.SGD`'s hyper-parameters other than lr and weight_decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdOptions {
    /// Momentum factor (PyTorch default 0).
    pub momentum: f64,
    /// Dampening for momentum (default 0).
    pub dampening: f64,
    /// Nesterov momentum (default false; needs momentum > 0 and dampening = 0).
    pub nesterov: bool,
    /// Maximise the objective instead of minimising (default false).
    pub maximize: bool,
}

/// `torch.optim.Adam` / `AdamW`'s hyper-parameters other than lr and weight_decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamOptions {
    /// Coefficients of the running averages of the gradient and its square (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability (default 1e-8).
    pub eps: f64,
    /// The AMSGrad variant (default false).
    pub amsgrad: bool,
    /// Maximise the objective instead of minimising (default false).
    pub maximize: bool,
}

/// `torch.optim.RMSprop`'s hyper-parameters other than lr and weight_decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsPropOptions {
    /// Smoothing constant (default 0.99).
    pub alpha: f64,
    /// Added to the denominator for numerical stability (default 1e-8).
    pub eps: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Normalise by an estimate of the gradient's variance (default false).
    pub centered: bool,
    /// Maximise the objective instead of minimising (default false).
    pub maximize: bool,
}

/// `torch.optim.Adagrad`'s hyper-parameters other than lr and weight_decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradOptions {
    /// Learning-rate decay (default 0).
    pub lr_decay: f64,
    /// Added to the denominator for numerical stability (default 1e-10).
    pub eps: f64,
    /// Starting value of the squared-gradient sum (default 0).
    pub initial_accumulator_value: f64,
    /// Maximise the objective instead of minimising (default false).
    pub maximize: bool,
}

/// A group's optimizer-specific hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GroupOptions {
    /// Take the optimizer's defaults (only meaningful when building a group; an optimizer
    /// replaces it with its own variant at construction).
    Inherit,
    /// SGD's options.
    Sgd(SgdOptions),
    /// Adam's and AdamW's options.
    Adam(AdamOptions),
    /// RMSprop's options.
    RmsProp(RmsPropOptions),
    /// Adagrad's options.
    Adagrad(AdagradOptions),
}

/// One parameter group (PyTorch's `optimizer.param_groups[i]`).
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// The parameters: leaf tensors (f32 or f64) that require grad.
    pub params: Vec<Tensor>,
    /// This group's learning rate (what schedulers change).
    pub lr: f64,
    /// This group's weight decay (L2 penalty; decoupled for AdamW).
    pub weight_decay: f64,
    /// The lr schedulers scale from (PyTorch's `group["initial_lr"]`), set by the first
    /// scheduler attached to the optimizer.
    pub initial_lr: Option<f64>,
    /// The optimizer's other hyper-parameters for this group.
    pub options: GroupOptions,
}

impl ParamGroup {
    /// A group with its own lr and weight decay; its other hyper-parameters come from the
    /// optimizer's config unless [`ParamGroup::with_options`] sets them.
    pub fn new(params: Vec<Tensor>, lr: f64, weight_decay: f64) -> Self {
        ParamGroup { params, lr, weight_decay, initial_lr: None, options: GroupOptions::Inherit }
    }
    /// Overrides the optimizer-specific hyper-parameters for this group.
    pub fn with_options(mut self, options: GroupOptions) -> Self {
        self.options = options;
        self
    }
    /// The momentum a scheduler may cycle: SGD's and RMSprop's `momentum`, Adam's `beta1`;
    /// `None` for optimizers without one (Adagrad).
    pub fn momentum(&self) -> Option<f64> {
        match &self.options {
            GroupOptions::Sgd(o) => Some(o.momentum),
            GroupOptions::Adam(o) => Some(o.betas.0),
            GroupOptions::RmsProp(o) => Some(o.momentum),
            GroupOptions::Adagrad(_) | GroupOptions::Inherit => None,
        }
    }
    /// Sets [`ParamGroup::momentum`]; false when this optimizer has none.
    pub fn set_momentum(&mut self, m: f64) -> bool {
        match &mut self.options {
            GroupOptions::Sgd(o) => o.momentum = m,
            GroupOptions::Adam(o) => o.betas.0 = m,
            GroupOptions::RmsProp(o) => o.momentum = m,
            GroupOptions::Adagrad(_) | GroupOptions::Inherit => return false,
        }
        true
    }
}

/// `v ≥ 0` (false for NaN): how hyper-parameters are validated.
pub(crate) fn non_negative(v: f64) -> bool {
    v >= 0.0
}

/// Checks the groups handed to an optimizer and fills `Inherit` options with `defaults`
/// (PyTorch's `add_param_group` + `setdefault`). `check` validates one group's options.
pub(crate) fn resolve_groups(
    op: &'static str,
    groups: Vec<ParamGroup>,
    defaults: GroupOptions,
    check: impl Fn(&ParamGroup) -> Result<()>,
) -> Result<Vec<ParamGroup>> {
    if groups.is_empty() || groups.iter().all(|g| g.params.is_empty()) {
        return Err(Error::invalid(op, "optimizer got an empty parameter list"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for mut g in groups {
        if g.options == GroupOptions::Inherit {
            g.options = defaults;
        }
        if std::mem::discriminant(&g.options) != std::mem::discriminant(&defaults) {
            return Err(Error::invalid(op, format!("a param group carries options for another optimizer: {:?}", g.options)));
        }
        if !non_negative(g.lr) || !g.lr.is_finite() {
            return Err(Error::invalid(op, format!("invalid learning rate: {}", g.lr)));
        }
        if !non_negative(g.weight_decay) {
            return Err(Error::invalid(op, format!("invalid weight_decay value: {}", g.weight_decay)));
        }
        for p in &g.params {
            if !p.is_leaf() {
                return Err(Error::invalid(op, "can't optimize a non-leaf Tensor"));
            }
            if !matches!(p.dtype(), DType::F32 | DType::F64) {
                return Err(Error::DType { op, got: p.dtype(), expected: "float32 or float64 parameters" });
            }
            if !seen.insert(p.id()) {
                return Err(Error::invalid(op, "some parameters appear in more than one parameter group"));
            }
        }
        check(&g)?;
        out.push(g);
    }
    Ok(out)
}

/// Writes every group's hyper-parameters as `param_groups.{g}.{name}` 0-d f64 tensors, plus
/// `param_groups.{g}.params` (the group's parameter indices, as in PyTorch's state_dict).
pub(crate) fn save_groups(groups: &[ParamGroup], sd: &mut BTreeMap<String, Tensor>) -> Result<()> {
    let mut next = 0i64;
    for (gi, g) in groups.iter().enumerate() {
        let key = |name: &str| format!("param_groups.{gi}.{name}");
        let idx: Vec<i64> = (next..next + g.params.len() as i64).collect();
        next += g.params.len() as i64;
        sd.insert(key("params"), Tensor::from_vec(idx, &[g.params.len()])?);
        sd.insert(key("lr"), scalar(g.lr));
        sd.insert(key("weight_decay"), scalar(g.weight_decay));
        if let Some(v) = g.initial_lr {
            sd.insert(key("initial_lr"), scalar(v));
        }
        let flag = |b: bool| scalar(if b { 1.0 } else { 0.0 });
        match &g.options {
            GroupOptions::Inherit => {}
            GroupOptions::Sgd(o) => {
                sd.insert(key("momentum"), scalar(o.momentum));
                sd.insert(key("dampening"), scalar(o.dampening));
                sd.insert(key("nesterov"), flag(o.nesterov));
                sd.insert(key("maximize"), flag(o.maximize));
            }
            GroupOptions::Adam(o) => {
                sd.insert(key("betas"), Tensor::from_vec(vec![o.betas.0, o.betas.1], &[2])?);
                sd.insert(key("eps"), scalar(o.eps));
                sd.insert(key("amsgrad"), flag(o.amsgrad));
                sd.insert(key("maximize"), flag(o.maximize));
            }
            GroupOptions::RmsProp(o) => {
                sd.insert(key("alpha"), scalar(o.alpha));
                sd.insert(key("eps"), scalar(o.eps));
                sd.insert(key("momentum"), scalar(o.momentum));
                sd.insert(key("centered"), flag(o.centered));
                sd.insert(key("maximize"), flag(o.maximize));
            }
            GroupOptions::Adagrad(o) => {
                sd.insert(key("lr_decay"), scalar(o.lr_decay));
                sd.insert(key("eps"), scalar(o.eps));
                sd.insert(key("initial_accumulator_value"), scalar(o.initial_accumulator_value));
                sd.insert(key("maximize"), flag(o.maximize));
            }
        }
    }
    Ok(())
}

/// Reads the groups' hyper-parameters back (the parameters themselves stay the optimizer's
/// own). The saved groups must match the current ones in number and size.
pub(crate) fn load_groups(current: &[ParamGroup], r: &mut DictReader) -> Result<Vec<ParamGroup>> {
    if r.has(&format!("param_groups.{}.lr", current.len())) {
        return Err(sd_err(format!("loaded state dict has more parameter groups than the optimizer's {}", current.len())));
    }
    let mut out = Vec::with_capacity(current.len());
    let mut next = 0usize;
    for (gi, cur) in current.iter().enumerate() {
        let key = |name: &str| format!("param_groups.{gi}.{name}");
        let idx = r.vector(&key("params"))?;
        let expected: Vec<f64> = (next..next + cur.params.len()).map(|i| i as f64).collect();
        next += cur.params.len();
        if idx != expected {
            return Err(sd_err(format!(
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group {gi} ({} saved vs {} params)",
                idx.len(),
                cur.params.len()
            )));
        }
        let mut g = cur.clone();
        g.lr = r.scalar(&key("lr"))?;
        g.weight_decay = r.scalar(&key("weight_decay"))?;
        g.initial_lr = r.scalar_opt(&key("initial_lr"))?;
        match &mut g.options {
            GroupOptions::Inherit => {}
            GroupOptions::Sgd(o) => {
                o.momentum = r.scalar(&key("momentum"))?;
                o.dampening = r.scalar(&key("dampening"))?;
                o.nesterov = r.flag(&key("nesterov"))?;
                o.maximize = r.flag(&key("maximize"))?;
            }
            GroupOptions::Adam(o) => {
                let b = r.vector(&key("betas"))?;
                let [b1, b2] = b[..] else { return Err(sd_err(format!("{}: expected 2 values, got {}", key("betas"), b.len()))) };
                o.betas = (b1, b2);
                o.eps = r.scalar(&key("eps"))?;
                o.amsgrad = r.flag(&key("amsgrad"))?;
                o.maximize = r.flag(&key("maximize"))?;
            }
            GroupOptions::RmsProp(o) => {
                o.alpha = r.scalar(&key("alpha"))?;
                o.eps = r.scalar(&key("eps"))?;
                o.momentum = r.scalar(&key("momentum"))?;
                o.centered = r.flag(&key("centered"))?;
                o.maximize = r.flag(&key("maximize"))?;
            }
            GroupOptions::Adagrad(o) => {
                o.lr_decay = r.scalar(&key("lr_decay"))?;
                o.eps = r.scalar(&key("eps"))?;
                o.initial_accumulator_value = r.scalar(&key("initial_accumulator_value"))?;
                o.maximize = r.flag(&key("maximize"))?;
            }
        }
        out.push(g);
    }
    Ok(out)
}
