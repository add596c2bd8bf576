//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay.
//!
//! <https://pytorch.org/docs/stable/generated/torch.optim.SGD.html>, following
//! `_single_tensor_sgd` (torch/optim/sgd.py):
//!
//! ```text
//! g ← −g                              if maximize
//! g ← g + λ·p                         if λ ≠ 0 (weight_decay)
//! b ← g (first step), else μ·b + (1 − τ)·g     if μ ≠ 0 (momentum, dampening τ)
//! g ← g + μ·b (nesterov), else g ← b           if μ ≠ 0
//! p ← p − lr·g
//! ```

use crate::chunks::for_chunks;
use crate::group::{non_negative, resolve_groups, save_groups, GroupOptions, ParamGroup, SgdOptions};
use crate::state::{with_param_grad, Buf, DictReader, Real};
use crate::Optimizer;
use cnnkit_core::{float_dispatch, Error, Result, Tensor};
use std::collections::BTreeMap;

/// `torch.optim.SGD`'s arguments with its defaults (`lr` 1e-3, everything else 0/false).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor.
    pub momentum: f64,
    /// Dampening for momentum.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0).
    pub nesterov: bool,
    /// Maximise the objective instead of minimising.
    pub maximize: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false, maximize: false }
    }
}

impl SgdConfig {
    /// The per-group options part of this config.
    pub fn options(&self) -> SgdOptions {
        SgdOptions { momentum: self.momentum, dampening: self.dampening, nesterov: self.nesterov, maximize: self.maximize }
    }
}

/// `torch.optim.SGD`. State per parameter: `momentum_buffer` (once momentum is non-zero).
#[derive(Debug)]
pub struct Sgd {
    groups: Vec<ParamGroup>,
    /// Indexed by the parameter's position across all groups.
    momentum_buffers: Vec<Option<Buf>>,
}

fn check(g: &ParamGroup) -> Result<()> {
    let GroupOptions::Sgd(o) = g.options else { return Err(Error::invalid("SGD", "not SGD options")) };
    if !non_negative(o.momentum) {
        return Err(Error::invalid("SGD", format!("invalid momentum value: {}", o.momentum)));
    }
    if o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0) {
        return Err(Error::invalid("SGD", "Nesterov momentum requires a momentum and zero dampening"));
    }
    Ok(())
}

impl Sgd {
    /// One group of `params` with `cfg`'s hyper-parameters.
    pub fn new(params: Vec<Tensor>, cfg: SgdConfig) -> Result<Self> {
        Self::with_groups(vec![ParamGroup::new(params, cfg.lr, cfg.weight_decay)], cfg)
    }
    /// Several groups, each with its own lr and weight decay; groups whose options are
    /// [`GroupOptions::Inherit`] take `defaults`' momentum, dampening, nesterov and maximize.
    pub fn with_groups(groups: Vec<ParamGroup>, defaults: SgdConfig) -> Result<Self> {
        let groups = resolve_groups("SGD", groups, GroupOptions::Sgd(defaults.options()), check)?;
        let n = groups.iter().map(|g| g.params.len()).sum();
        Ok(Sgd { groups, momentum_buffers: vec![None; n] })
    }
}

/// Scalars of one group's update, as f64 (cast to the parameter's dtype in the kernel).
struct Hyper {
    lr: f64,
    weight_decay: f64,
    o: SgdOptions,
}

/// The scalars of one update, in the parameter's dtype.
struct Scalars<T> {
    neg_lr: T,
    wd: T,
    mom: T,
    one_minus_damp: T,
    maximize: bool,
    decay: bool,
    nesterov: bool,
    /// The momentum buffer is new: it starts as a copy of the (decayed) gradient.
    first: bool,
}

/// One fused pass over a chunk; `b` is the momentum buffer when `MOMENTUM`.
fn kernel<T: Real, const MOMENTUM: bool>(ps: &mut [T], gs: &[T], b: &mut [T], s: &Scalars<T>) {
    let n = ps.len();
    let gs = &gs[..n];
    let b = if MOMENTUM { &mut b[..n] } else { b };
    for i in 0..n {
        // Loop-invariant flags become selects, so the loop still vectorises.
        let g = if s.maximize { -gs[i] } else { gs[i] };
        let mut d = if s.decay { g + s.wd * ps[i] } else { g };
        if MOMENTUM {
            let v = if s.first { d } else { b[i] * s.mom + s.one_minus_damp * d };
            b[i] = v;
            d = if s.nesterov { d + s.mom * v } else { v };
        }
        ps[i] = ps[i] + s.neg_lr * d;
    }
}

fn update<T: Real>(p: &Tensor, g: &Tensor, slot: &mut Option<Buf>, h: &Hyper) -> Result<()> {
    const OP: &str = "SGD.step";
    let n = p.numel();
    let use_momentum = h.o.momentum != 0.0;
    let first = use_momentum && slot.is_none();
    if first {
        *slot = Some(Buf::full(p.dtype(), n, 0.0)?);
    }
    let buf: &mut [T] = match slot.as_mut() {
        Some(b) if use_momentum => b.get::<T>(n, OP)?,
        _ => &mut [],
    };
    let s = Scalars {
        neg_lr: T::of_f64(-h.lr),
        wd: T::of_f64(h.weight_decay),
        mom: T::of_f64(h.o.momentum),
        one_minus_damp: T::of_f64(1.0 - h.o.dampening),
        maximize: h.o.maximize,
        decay: h.weight_decay != 0.0,
        nesterov: h.o.nesterov,
        first,
    };
    with_param_grad(p, g, OP, |ps: &mut [T], gs: &[T]| {
        for_chunks(
            OP,
            ps,
            gs,
            [buf],
            |ps, gs, [b]| {
                if use_momentum {
                    kernel::<T, true>(ps, gs, b, &s)
                } else {
                    kernel::<T, false>(ps, gs, b, &s)
                }
            },
        )
    })
}

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        let n: usize = self.groups.iter().map(|g| g.params.len()).sum();
        self.momentum_buffers.resize_with(n, || None);
        let mut idx = 0;
        for group in &self.groups {
            let GroupOptions::Sgd(o) = group.options else { return Err(Error::invalid("SGD.step", "param group lost its SGD options")) };
            let h = Hyper { lr: group.lr, weight_decay: group.weight_decay, o };
            for p in &group.params {
                let slot = &mut self.momentum_buffers[idx];
                idx += 1;
                let Some(g) = p.grad() else { continue };
                float_dispatch!("SGD.step", p.dtype(), T => update::<T>(p, &g, slot, &h))?;
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
        let params = crate::state::flat_params(&self.groups);
        for (i, (p, b)) in params.iter().zip(&self.momentum_buffers).enumerate() {
            if let Some(b) = b {
                sd.insert(format!("state.{i}.momentum_buffer"), b.to_tensor(p.shape())?);
            }
        }
        save_groups(&self.groups, &mut sd)?;
        Ok(sd)
    }
    fn load_state_dict(&mut self, sd: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut r = DictReader::new(sd);
        let groups = crate::group::load_groups(&self.groups, &mut r)?;
        let params = crate::state::flat_params(&self.groups);
        let bufs =
            params.iter().enumerate().map(|(i, p)| r.buf_opt(&format!("state.{i}.momentum_buffer"), p)).collect::<Result<Vec<_>>>()?;
        r.finish()?;
        self.groups = groups;
        self.momentum_buffers = bufs;
        Ok(())
    }
}
