//! Adagrad.
//!
//! <https://pytorch.org/docs/stable/generated/torch.optim.Adagrad.html>, following
//! `_single_tensor_adagrad` (torch/optim/adagrad.py):
//!
//! ```text
//! t ← t + 1
//! g ← −g                           if maximize
//! g ← g + λ·p                      if λ ≠ 0
//! clr ← lr / (1 + (t − 1)·η)       (η = lr_decay)
//! s ← s + g·g
//! p ← p − clr·g / (√s + ε)
//! ```
//!
//! Unlike the other optimizers, Adagrad creates its state (`step` = 0 and `sum` filled with
//! `initial_accumulator_value`) at construction, for every parameter, as PyTorch does.

use crate::chunks::for_chunks;
use crate::group::{load_groups, non_negative, resolve_groups, save_groups, AdagradOptions, GroupOptions, ParamGroup};
use crate::state::{flat_params, scalar, with_param_grad, Buf, DictReader, Real};
use crate::Optimizer;
use cnnkit_core::{float_dispatch, Error, Result, Tensor};
use std::collections::BTreeMap;

/// `torch.optim.Adagrad`'s arguments with its defaults (lr 1e-2, lr_decay 0, weight_decay 0,
/// initial_accumulator_value 0, eps 1e-10).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate.
    pub lr: f64,
    /// Learning-rate decay: step t uses lr / (1 + (t − 1)·lr_decay).
    pub lr_decay: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Starting value of the squared-gradient sum.
    pub initial_accumulator_value: f64,
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// Maximise the objective instead of minimising.
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig { lr: 1e-2, lr_decay: 0.0, weight_decay: 0.0, initial_accumulator_value: 0.0, eps: 1e-10, maximize: false }
    }
}

impl AdagradConfig {
    /// The per-group options part of this config.
    pub fn options(&self) -> AdagradOptions {
        AdagradOptions {
            lr_decay: self.lr_decay,
            eps: self.eps,
            initial_accumulator_value: self.initial_accumulator_value,
            maximize: self.maximize,
        }
    }
}

/// One parameter's state (PyTorch's names).
#[derive(Clone, Debug)]
struct AdagradState {
    step: f64,
    sum: Buf,
}

/// `torch.optim.Adagrad`. State per parameter: `step`, `sum`.
#[derive(Debug)]
pub struct Adagrad {
    groups: Vec<ParamGroup>,
    state: Vec<Option<AdagradState>>,
}

fn check(g: &ParamGroup) -> Result<()> {
    let GroupOptions::Adagrad(o) = g.options else { return Err(Error::invalid("Adagrad", "not Adagrad options")) };
    for (name, v) in [("lr_decay", o.lr_decay), ("initial_accumulator_value", o.initial_accumulator_value), ("epsilon", o.eps)] {
        if !non_negative(v) {
            return Err(Error::invalid("Adagrad", format!("invalid {name} value: {v}")));
        }
    }
    Ok(())
}

/// A fresh state for `p` in group `g`.
fn fresh(p: &Tensor, g: &ParamGroup) -> Result<AdagradState> {
    let init = match g.options {
        GroupOptions::Adagrad(o) => o.initial_accumulator_value,
        _ => 0.0,
    };
    Ok(AdagradState { step: 0.0, sum: Buf::full(p.dtype(), p.numel(), init)? })
}

impl Adagrad {
    /// One group of `params` with `cfg`'s hyper-parameters.
    pub fn new(params: Vec<Tensor>, cfg: AdagradConfig) -> Result<Self> {
        Self::with_groups(vec![ParamGroup::new(params, cfg.lr, cfg.weight_decay)], cfg)
    }
    /// Several groups, each with its own lr and weight decay; groups whose options are
    /// [`GroupOptions::Inherit`] take `defaults`' lr_decay, eps, initial_accumulator_value and
    /// maximize.
    pub fn with_groups(groups: Vec<ParamGroup>, defaults: AdagradConfig) -> Result<Self> {
        let groups = resolve_groups("Adagrad", groups, GroupOptions::Adagrad(defaults.options()), check)?;
        let mut state = Vec::new();
        for g in &groups {
            for p in &g.params {
                state.push(Some(fresh(p, g)?));
            }
        }
        Ok(Adagrad { groups, state })
    }
}

struct Hyper {
    clr: f64,
    weight_decay: f64,
    o: AdagradOptions,
}

/// The scalars of one update, in the parameter's dtype.
struct Scalars<T> {
    neg_clr: T,
    wd: T,
    eps: T,
    one: T,
    maximize: bool,
    decay: bool,
}

/// One fused pass over a chunk.
fn kernel<T: Real>(ps: &mut [T], gs: &[T], sum: &mut [T], s: &Scalars<T>) {
    let n = ps.len();
    let (gs, sum) = (&gs[..n], &mut sum[..n]);
    for i in 0..n {
        let mut g = if s.maximize { -gs[i] } else { gs[i] };
        if s.decay {
            g = g + s.wd * ps[i];
        }
        sum[i] = sum[i] + s.one * g * g;
        let std = sum[i].sqrt() + s.eps;
        ps[i] = ps[i] + s.neg_clr * g / std;
    }
}

fn update<T: Real>(p: &Tensor, g: &Tensor, st: &mut AdagradState, h: &Hyper) -> Result<()> {
    const OP: &str = "Adagrad.step";
    let n = p.numel();
    let s = Scalars {
        neg_clr: T::of_f64(-h.clr),
        wd: T::of_f64(h.weight_decay),
        eps: T::of_f64(h.o.eps),
        one: T::of_f64(1.0),
        maximize: h.o.maximize,
        decay: h.weight_decay != 0.0,
    };
    let sum = st.sum.get::<T>(n, OP)?;
    with_param_grad(p, g, OP, |ps: &mut [T], gs: &[T]| for_chunks(OP, ps, gs, [sum], |ps, gs, [sum]| kernel(ps, gs, sum, &s)))
}

impl Optimizer for Adagrad {
    fn step(&mut self) -> Result<()> {
        let mut idx = 0;
        for group in &self.groups {
            let GroupOptions::Adagrad(o) = group.options else {
                return Err(Error::invalid("Adagrad.step", "param group lost its Adagrad options"));
            };
            for p in &group.params {
                if idx >= self.state.len() {
                    self.state.resize_with(idx + 1, || None);
                }
                let slot = &mut self.state[idx];
                idx += 1;
                let Some(g) = p.grad() else { continue };
                if slot.is_none() {
                    *slot = Some(fresh(p, group)?);
                }
                let Some(st) = slot.as_mut() else { continue };
                st.step += 1.0;
                let h = Hyper { clr: group.lr / (1.0 + (st.step - 1.0) * o.lr_decay), weight_decay: group.weight_decay, o };
                float_dispatch!("Adagrad.step", p.dtype(), T => update::<T>(p, &g, st, &h))?;
            }
        }
        Ok(())
    }
    fn param_groups(&self) -> &[ParamGroup] {
        &self.groups
    }
    fn param_groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }
    fn state_dict(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut sd = BTreeMap::new();
        for (i, (p, s)) in flat_params(&self.groups).iter().zip(&self.state).enumerate() {
            let Some(s) = s else { continue };
            sd.insert(format!("state.{i}.step"), scalar(s.step));
            sd.insert(format!("state.{i}.sum"), s.sum.to_tensor(p.shape())?);
        }
        save_groups(&self.groups, &mut sd)?;
        Ok(sd)
    }
    fn load_state_dict(&mut self, sd: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut r = DictReader::new(sd);
        let groups = load_groups(&self.groups, &mut r)?;
        let mut state = Vec::new();
        for (i, p) in flat_params(&self.groups).iter().enumerate() {
            let key = |name: &str| format!("state.{i}.{name}");
            let s = match r.scalar_opt(&key("step"))? {
                None => None,
                Some(step) => Some(AdagradState { step, sum: r.buf(&key("sum"), p)? }),
            };
            state.push(s);
        }
        r.finish()?;
        self.groups = groups;
        self.state = state;
        Ok(())
    }
}
