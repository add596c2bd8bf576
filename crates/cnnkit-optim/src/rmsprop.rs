//! RMSprop (optionally centered, with momentum).
//!
//! <https://pytorch.org/docs/stable/generated/torch.optim.RMSprop.html>, following
//! `_single_tensor_rmsprop` (torch/optim/rmsprop.py):
//!
//! ```text
//! g ← −g                            if maximize
//! g ← g + λ·p                       if λ ≠ 0
//! v ← α·v + (1 − α)·g·g
//! ḡ ← lerp(ḡ, g, 1 − α);  d ← √(v − ḡ·ḡ) + ε      if centered
//! d ← √v + ε                                        otherwise
//! b ← μ·b + g/d;  p ← p − lr·b      if μ > 0
//! p ← p − lr·g/d                    otherwise
//! ```

use crate::chunks::for_chunks;
use crate::group::{load_groups, non_negative, resolve_groups, save_groups, GroupOptions, ParamGroup, RmsPropOptions};
use crate::state::{flat_params, lerp, scalar, with_param_grad, Buf, DictReader, Real};
use crate::Optimizer;
use cnnkit_core::{float_dispatch, Error, Result, Tensor};
use std::collections::BTreeMap;

/// `torch.optim.RMSprop`'s arguments with its defaults (lr 1e-2, alpha 0.99, eps 1e-8,
/// weight_decay 0, momentum 0, not centered).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsPropConfig {
    /// Learning rate.
    pub lr: f64,
    /// Smoothing constant of the squared-gradient average.
    pub alpha: f64,
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Momentum factor.
    pub momentum: f64,
    /// Normalise by an estimate of the gradient variance.
    pub centered: bool,
    /// Maximise the objective instead of minimising.
    pub maximize: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig { lr: 1e-2, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.0, centered: false, maximize: false }
    }
}

impl RmsPropConfig {
    /// The per-group options part of this config.
    pub fn options(&self) -> RmsPropOptions {
        RmsPropOptions { alpha: self.alpha, eps: self.eps, momentum: self.momentum, centered: self.centered, maximize: self.maximize }
    }
}

/// One parameter's state (PyTorch's names).
#[derive(Clone, Debug)]
struct RmsState {
    step: f64,
    square_avg: Buf,
    momentum_buffer: Option<Buf>,
    grad_avg: Option<Buf>,
}

/// `torch.optim.RMSprop`. State per parameter: `step`, `square_avg`, `momentum_buffer`
/// (momentum > 0), `grad_avg` (centered).
#[derive(Debug)]
pub struct RmsProp {
    groups: Vec<ParamGroup>,
    state: Vec<Option<RmsState>>,
}

fn check(g: &ParamGroup) -> Result<()> {
    let GroupOptions::RmsProp(o) = g.options else { return Err(Error::invalid("RMSprop", "not RMSprop options")) };
    for (name, v) in [("epsilon", o.eps), ("momentum", o.momentum), ("alpha", o.alpha)] {
        if !non_negative(v) {
            return Err(Error::invalid("RMSprop", format!("invalid {name} value: {v}")));
        }
    }
    Ok(())
}

impl RmsProp {
    /// One group of `params` with `cfg`'s hyper-parameters.
    pub fn new(params: Vec<Tensor>, cfg: RmsPropConfig) -> Result<Self> {
        Self::with_groups(vec![ParamGroup::new(params, cfg.lr, cfg.weight_decay)], cfg)
    }
    /// Several groups, each with its own lr and weight decay; groups whose options are
    /// [`GroupOptions::Inherit`] take `defaults`' alpha, eps, momentum, centered and maximize.
    pub fn with_groups(groups: Vec<ParamGroup>, defaults: RmsPropConfig) -> Result<Self> {
        let groups = resolve_groups("RMSprop", groups, GroupOptions::RmsProp(defaults.options()), check)?;
        let n = groups.iter().map(|g| g.params.len()).sum();
        Ok(RmsProp { groups, state: vec![None; n] })
    }
}

struct Hyper {
    lr: f64,
    weight_decay: f64,
    o: RmsPropOptions,
}

/// The scalars of one update, in the parameter's dtype.
struct Scalars<T> {
    neg_lr: T,
    wd: T,
    alpha: T,
    one_minus_alpha: T,
    eps: T,
    mom: T,
    one: T,
    half: T,
    maximize: bool,
    decay: bool,
}

/// One fused pass over a chunk; `ga` is `grad_avg` when `CENTERED`, `b` the momentum buffer
/// when `MOMENTUM`.
fn kernel<T: Real, const CENTERED: bool, const MOMENTUM: bool>(
    ps: &mut [T],
    gs: &[T],
    sq: &mut [T],
    ga: &mut [T],
    b: &mut [T],
    s: &Scalars<T>,
) {
    let n = ps.len();
    let (gs, sq) = (&gs[..n], &mut sq[..n]);
    let ga = if CENTERED { &mut ga[..n] } else { ga };
    let b = if MOMENTUM { &mut b[..n] } else { b };
    for i in 0..n {
        let mut g = if s.maximize { -gs[i] } else { gs[i] };
        if s.decay {
            g = g + s.wd * ps[i];
        }
        sq[i] = sq[i] * s.alpha + s.one_minus_alpha * g * g;
        let avg = if CENTERED {
            ga[i] = lerp(ga[i], g, s.one_minus_alpha, s.one, s.half);
            // square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
            (sq[i] + (-s.one) * ga[i] * ga[i]).sqrt()
        } else {
            sq[i].sqrt()
        } + s.eps;
        if MOMENTUM {
            b[i] = b[i] * s.mom + s.one * g / avg;
            ps[i] = ps[i] + s.neg_lr * b[i];
        } else {
            ps[i] = ps[i] + s.neg_lr * g / avg;
        }
    }
}

fn update<T: Real>(p: &Tensor, g: &Tensor, st: &mut RmsState, h: &Hyper) -> Result<()> {
    const OP: &str = "RMSprop.step";
    let n = p.numel();
    let s = Scalars {
        neg_lr: T::of_f64(-h.lr),
        wd: T::of_f64(h.weight_decay),
        alpha: T::of_f64(h.o.alpha),
        one_minus_alpha: T::of_f64(1.0 - h.o.alpha),
        eps: T::of_f64(h.o.eps),
        mom: T::of_f64(h.o.momentum),
        one: T::of_f64(1.0),
        half: T::of_f64(0.5),
        maximize: h.o.maximize,
        decay: h.weight_decay != 0.0,
    };
    let (centered, momentum) = (h.o.centered, h.o.momentum > 0.0);
    let sq = st.square_avg.get::<T>(n, OP)?;
    let ga: &mut [T] = match st.grad_avg.as_mut() {
        Some(b) if centered => b.get::<T>(n, OP)?,
        _ => &mut [],
    };
    let buf: &mut [T] = match st.momentum_buffer.as_mut() {
        Some(b) if momentum => b.get::<T>(n, OP)?,
        _ => &mut [],
    };
    with_param_grad(p, g, OP, |ps: &mut [T], gs: &[T]| {
        for_chunks(OP, ps, gs, [sq, ga, buf], |ps, gs, [sq, ga, b]| match (centered, momentum) {
            (false, false) => kernel::<T, false, false>(ps, gs, sq, ga, b, &s),
            (false, true) => kernel::<T, false, true>(ps, gs, sq, ga, b, &s),
            (true, false) => kernel::<T, true, false>(ps, gs, sq, ga, b, &s),
            (true, true) => kernel::<T, true, true>(ps, gs, sq, ga, b, &s),
        })
    })
}

impl Optimizer for RmsProp {
    fn step(&mut self) -> Result<()> {
        let n: usize = self.groups.iter().map(|g| g.params.len()).sum();
        self.state.resize_with(n, || None);
        let mut idx = 0;
        for group in &self.groups {
            let GroupOptions::RmsProp(o) = group.options else {
                return Err(Error::invalid("RMSprop.step", "param group lost its RMSprop options"));
            };
            for p in &group.params {
                let slot = &mut self.state[idx];
                idx += 1;
                let Some(g) = p.grad() else { continue };
                let (dt, numel) = (p.dtype(), p.numel());
                if slot.is_none() {
                    *slot = Some(RmsState { step: 0.0, square_avg: Buf::full(dt, numel, 0.0)?, momentum_buffer: None, grad_avg: None });
                }
                let Some(st) = slot.as_mut() else { continue };
                if o.momentum > 0.0 && st.momentum_buffer.is_none() {
                    st.momentum_buffer = Some(Buf::full(dt, numel, 0.0)?);
                }
                if o.centered && st.grad_avg.is_none() {
                    st.grad_avg = Some(Buf::full(dt, numel, 0.0)?);
                }
                st.step += 1.0;
                let h = Hyper { lr: group.lr, weight_decay: group.weight_decay, o };
                float_dispatch!("RMSprop.step", dt, T => update::<T>(p, &g, st, &h))?;
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
            sd.insert(format!("state.{i}.square_avg"), s.square_avg.to_tensor(p.shape())?);
            if let Some(b) = &s.momentum_buffer {
                sd.insert(format!("state.{i}.momentum_buffer"), b.to_tensor(p.shape())?);
            }
            if let Some(b) = &s.grad_avg {
                sd.insert(format!("state.{i}.grad_avg"), b.to_tensor(p.shape())?);
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
                Some(step) => Some(RmsState {
                    step,
                    square_avg: r.buf(&key("square_avg"), p)?,
                    momentum_buffer: r.buf_opt(&key("momentum_buffer"), p)?,
                    grad_avg: r.buf_opt(&key("grad_avg"), p)?,
                }),
            };
            state.push(s);
        }
        r.finish()?;
        self.groups = groups;
        self.state = state;
        Ok(())
    }
}
