//! Adam and AdamW.
//!
//! <https://pytorch.org/docs/stable/generated/torch.optim.Adam.html> and
//! <https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>, following
//! `_single_tensor_adam` (torch/optim/adam.py; AdamW is Adam with `decoupled_weight_decay`):
//!
//! ```text
//! t ← t + 1
//! g ← −g                                   if maximize
//! p ← p·(1 − lr·λ)                          AdamW (decoupled weight decay)
//! g ← g + λ·p                               Adam with λ ≠ 0 (L2 penalty)
//! m ← lerp(m, g, 1 − β1)
//! v ← β2·v + (1 − β2)·g·g
//! v̂ ← max(v̂, v) and use v̂ for v            if amsgrad
//! p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
//! ```

use crate::chunks::for_chunks;
use crate::group::{load_groups, non_negative, resolve_groups, save_groups, AdamOptions, GroupOptions, ParamGroup};
use crate::state::{flat_params, lerp, maximum, scalar, with_param_grad, Buf, DictReader, Real};
use crate::Optimizer;
use cnnkit_core::{float_dispatch, Error, Result, Tensor};
use std::collections::BTreeMap;

/// `torch.optim.Adam`'s arguments with its defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8,
/// weight_decay 0 — an L2 penalty added to the gradient).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Running-average coefficients of the gradient and its square.
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Use the AMSGrad variant (the maximum of past second moments).
    pub amsgrad: bool,
    /// Maximise the objective instead of minimising.
    pub maximize: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, amsgrad: false, maximize: false }
    }
}

/// `torch.optim.AdamW`'s arguments with its defaults: as Adam's, but weight_decay 1e-2 and
/// decoupled from the gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Running-average coefficients of the gradient and its square.
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay: p ← p·(1 − lr·weight_decay).
    pub weight_decay: f64,
    /// Use the AMSGrad variant (the maximum of past second moments).
    pub amsgrad: bool,
    /// Maximise the objective instead of minimising.
    pub maximize: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2, amsgrad: false, maximize: false }
    }
}

impl AdamConfig {
    /// The per-group options part of this config.
    pub fn options(&self) -> AdamOptions {
        AdamOptions { betas: self.betas, eps: self.eps, amsgrad: self.amsgrad, maximize: self.maximize }
    }
}

impl AdamWConfig {
    /// The per-group options part of this config.
    pub fn options(&self) -> AdamOptions {
        AdamOptions { betas: self.betas, eps: self.eps, amsgrad: self.amsgrad, maximize: self.maximize }
    }
}

/// One parameter's state (PyTorch's names).
#[derive(Clone, Debug)]
struct AdamState {
    step: f64,
    exp_avg: Buf,
    exp_avg_sq: Buf,
    max_exp_avg_sq: Option<Buf>,
}

/// The shared implementation of Adam and AdamW.
#[derive(Debug)]
struct AdamImpl {
    name: &'static str,
    decoupled: bool,
    groups: Vec<ParamGroup>,
    state: Vec<Option<AdamState>>,
}

fn check(name: &'static str) -> impl Fn(&ParamGroup) -> Result<()> {
    move |g| {
        let GroupOptions::Adam(o) = g.options else { return Err(Error::invalid(name, "not Adam options")) };
        if !non_negative(o.eps) {
            return Err(Error::invalid(name, format!("invalid epsilon value: {}", o.eps)));
        }
        for (i, b) in [o.betas.0, o.betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(name, format!("invalid beta parameter at index {i}: {b}")));
            }
        }
        Ok(())
    }
}

impl AdamImpl {
    fn new(name: &'static str, decoupled: bool, groups: Vec<ParamGroup>, defaults: AdamOptions) -> Result<Self> {
        let groups = resolve_groups(name, groups, GroupOptions::Adam(defaults), check(name))?;
        let n = groups.iter().map(|g| g.params.len()).sum();
        Ok(AdamImpl { name, decoupled, groups, state: vec![None; n] })
    }

    fn step(&mut self) -> Result<()> {
        let n: usize = self.groups.iter().map(|g| g.params.len()).sum();
        self.state.resize_with(n, || None);
        let mut idx = 0;
        for group in &self.groups {
            let GroupOptions::Adam(o) = group.options else { return Err(Error::invalid("Adam.step", "param group lost its Adam options")) };
            for p in &group.params {
                let slot = &mut self.state[idx];
                idx += 1;
                let Some(g) = p.grad() else { continue };
                if slot.is_none() {
                    *slot = Some(AdamState {
                        step: 0.0,
                        exp_avg: Buf::full(p.dtype(), p.numel(), 0.0)?,
                        exp_avg_sq: Buf::full(p.dtype(), p.numel(), 0.0)?,
                        max_exp_avg_sq: None,
                    });
                }
                let Some(st) = slot.as_mut() else { continue };
                if o.amsgrad && st.max_exp_avg_sq.is_none() {
                    st.max_exp_avg_sq = Some(Buf::full(p.dtype(), p.numel(), 0.0)?);
                }
                st.step += 1.0;
                let h = Hyper { lr: group.lr, weight_decay: group.weight_decay, decoupled: self.decoupled, step: st.step, o };
                float_dispatch!("Adam.step", p.dtype(), T => update::<T>(p, &g, st, &h))?;
            }
        }
        Ok(())
    }

    fn state_dict(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut sd = BTreeMap::new();
        for (i, (p, s)) in flat_params(&self.groups).iter().zip(&self.state).enumerate() {
            let Some(s) = s else { continue };
            sd.insert(format!("state.{i}.step"), scalar(s.step));
            sd.insert(format!("state.{i}.exp_avg"), s.exp_avg.to_tensor(p.shape())?);
            sd.insert(format!("state.{i}.exp_avg_sq"), s.exp_avg_sq.to_tensor(p.shape())?);
            if let Some(m) = &s.max_exp_avg_sq {
                sd.insert(format!("state.{i}.max_exp_avg_sq"), m.to_tensor(p.shape())?);
            }
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
                Some(step) => Some(AdamState {
                    step,
                    exp_avg: r.buf(&key("exp_avg"), p)?,
                    exp_avg_sq: r.buf(&key("exp_avg_sq"), p)?,
                    max_exp_avg_sq: r.buf_opt(&key("max_exp_avg_sq"), p)?,
                }),
            };
            state.push(s);
        }
        r.finish().map_err(|e| Error::StateDict(format!("{}: {e}", self.name)))?;
        self.groups = groups;
        self.state = state;
        Ok(())
    }
}

struct Hyper {
    lr: f64,
    weight_decay: f64,
    decoupled: bool,
    step: f64,
    o: AdamOptions,
}

/// The scalars of one update, in the parameter's dtype.
struct Scalars<T> {
    neg_step_size: T,
    bc2_sqrt: T,
    w1: T,
    b2: T,
    one_minus_b2: T,
    eps: T,
    wd: T,
    /// AdamW's `1 − lr·λ`.
    keep: T,
    one: T,
    half: T,
    maximize: bool,
    /// Adam's L2 penalty.
    l2: bool,
    /// AdamW's decoupled decay.
    decoupled: bool,
}

/// One fused pass over a chunk; `vmax` is `max_exp_avg_sq` when `AMSGRAD`.
fn kernel<T: Real, const AMSGRAD: bool>(ps: &mut [T], gs: &[T], m: &mut [T], v: &mut [T], vmax: &mut [T], s: &Scalars<T>) {
    let n = ps.len();
    let (gs, m, v) = (&gs[..n], &mut m[..n], &mut v[..n]);
    let vmax = if AMSGRAD { &mut vmax[..n] } else { vmax };
    for i in 0..n {
        let mut g = if s.maximize { -gs[i] } else { gs[i] };
        let mut p = ps[i];
        if s.decoupled {
            p = p * s.keep;
        }
        if s.l2 {
            g = g + s.wd * p;
        }
        m[i] = lerp(m[i], g, s.w1, s.one, s.half);
        v[i] = v[i] * s.b2 + s.one_minus_b2 * g * g;
        let second = if AMSGRAD {
            vmax[i] = maximum(vmax[i], v[i]);
            vmax[i]
        } else {
            v[i]
        };
        let denom = second.sqrt() / s.bc2_sqrt + s.eps;
        ps[i] = p + s.neg_step_size * m[i] / denom;
    }
}

fn update<T: Real>(p: &Tensor, g: &Tensor, st: &mut AdamState, h: &Hyper) -> Result<()> {
    const OP: &str = "Adam.step";
    let n = p.numel();
    let (beta1, beta2) = h.o.betas;
    // Scalars computed in f64 like PyTorch's Python floats, then cast to the dtype.
    let bias_correction1 = 1.0 - beta1.powf(h.step);
    let bias_correction2 = 1.0 - beta2.powf(h.step);
    let decay = h.weight_decay != 0.0;
    let s = Scalars {
        neg_step_size: T::of_f64(-(h.lr / bias_correction1)),
        bc2_sqrt: T::of_f64(bias_correction2.sqrt()),
        w1: T::of_f64(1.0 - beta1),
        b2: T::of_f64(beta2),
        one_minus_b2: T::of_f64(1.0 - beta2),
        eps: T::of_f64(h.o.eps),
        wd: T::of_f64(h.weight_decay),
        keep: T::of_f64(1.0 - h.lr * h.weight_decay),
        one: T::of_f64(1.0),
        half: T::of_f64(0.5),
        maximize: h.o.maximize,
        l2: decay && !h.decoupled,
        decoupled: decay && h.decoupled,
    };
    let m = st.exp_avg.get::<T>(n, OP)?;
    let v = st.exp_avg_sq.get::<T>(n, OP)?;
    let amsgrad = h.o.amsgrad;
    let vmax: &mut [T] = match st.max_exp_avg_sq.as_mut() {
        Some(b) if amsgrad => b.get::<T>(n, OP)?,
        _ => &mut [],
    };
    with_param_grad(p, g, OP, |ps: &mut [T], gs: &[T]| {
        for_chunks(OP, ps, gs, [m, v, vmax], |ps, gs, [m, v, vmax]| {
            if amsgrad {
                kernel::<T, true>(ps, gs, m, v, vmax, &s)
            } else {
                kernel::<T, false>(ps, gs, m, v, vmax, &s)
            }
        })
    })
}

macro_rules! adam_optimizer {
    ($ty:ident, $cfg:ident, $name:literal, $decoupled:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug)]
        pub struct $ty(AdamImpl);

        impl $ty {
            /// One group of `params` with `cfg`'s hyper-parameters.
            pub fn new(params: Vec<Tensor>, cfg: $cfg) -> Result<Self> {
                Self::with_groups(vec![ParamGroup::new(params, cfg.lr, cfg.weight_decay)], cfg)
            }
            /// Several groups, each with its own lr and weight decay; groups whose options are
            /// [`GroupOptions::Inherit`] take `defaults`' betas, eps, amsgrad and maximize.
            pub fn with_groups(groups: Vec<ParamGroup>, defaults: $cfg) -> Result<Self> {
                Ok($ty(AdamImpl::new($name, $decoupled, groups, defaults.options())?))
            }
        }

        impl Optimizer for $ty {
            fn step(&mut self) -> Result<()> {
                self.0.step()
            }
            fn param_groups(&self) -> &[ParamGroup] {
                &self.0.groups
            }
            fn param_groups_mut(&mut self) -> &mut [ParamGroup] {
                &mut self.0.groups
            }
            fn state_dict(&self) -> Result<BTreeMap<String, Tensor>> {
                self.0.state_dict()
            }
            fn load_state_dict(&mut self, sd: &BTreeMap<String, Tensor>) -> Result<()> {
                self.0.load_state_dict(sd)
            }
        }
    };
}

adam_optimizer!(
    Adam,
    AdamConfig,
    "Adam",
    false,
    "`torch.optim.Adam` (weight decay is an L2 penalty added to the gradient). State per parameter: `step`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq` (amsgrad)."
);
adam_optimizer!(
    AdamW,
    AdamWConfig,
    "AdamW",
    true,
    "`torch.optim.AdamW` (decoupled weight decay: `p ← p·(1 − lr·λ)` before the Adam step). State as [`Adam`]'s."
);
