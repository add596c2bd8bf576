//! `SequentialLR`: run one scheduler after another, switching at milestone steps (e.g. a
//! LinearLR warm-up, then CosineAnnealingLR). Follows `SequentialLR` in
//! torch/optim/lr_scheduler.py.

use super::LrScheduler;
use crate::Optimizer;
use cnnkit_core::{Error, Result};

/// `SequentialLR(schedulers, milestones)`: `schedulers[i]` runs from step `milestones[i-1]`
/// (it restarts from its own epoch 0 there) until `milestones[i]`.
pub struct SequentialLr {
    schedulers: Vec<Box<dyn LrScheduler>>,
    milestones: Vec<i64>,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl std::fmt::Debug for SequentialLr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequentialLr").field("milestones", &self.milestones).field("last_epoch", &self.last_epoch).finish()
    }
}

impl SequentialLr {
    /// Takes schedulers already built on `opt` (each construction wrote its own epoch-0 lrs);
    /// resets every group's lr to its `initial_lr` and restarts the first scheduler, as
    /// PyTorch's constructor does.
    pub fn new(opt: &mut dyn Optimizer, schedulers: Vec<Box<dyn LrScheduler>>, milestones: &[usize]) -> Result<Self> {
        const OP: &str = "SequentialLR";
        if schedulers.is_empty() {
            return Err(Error::invalid(OP, "SequentialLR expects at least one scheduler, but got no scheduler."));
        }
        if schedulers.iter().any(|s| s.needs_metric()) {
            return Err(Error::invalid(OP, "SequentialLR does not support ReduceLROnPlateau"));
        }
        if milestones.len() + 1 != schedulers.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "expects one more scheduler than milestones, got {} schedulers and {} milestones",
                    schedulers.len(),
                    milestones.len()
                ),
            ));
        }
        for g in opt.param_groups_mut() {
            let initial = g.initial_lr.unwrap_or(g.lr);
            g.initial_lr = Some(initial);
            g.lr = initial;
        }
        let milestones: Vec<i64> = milestones.iter().map(|&m| m as i64).collect();
        let mut s = SequentialLr { schedulers, milestones, last_epoch: 0, last_lr: Vec::new() };
        let idx = s.index(0);
        if let Some(first) = s.schedulers.get_mut(idx) {
            first.step_to(opt, 0)?;
            s.last_lr = first.last_lr();
        }
        Ok(s)
    }

    /// The scheduler in charge at `epoch` (`bisect_right(milestones, epoch)`).
    fn index(&self, epoch: i64) -> usize {
        self.milestones.partition_point(|&m| m <= epoch)
    }
}

impl LrScheduler for SequentialLr {
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        self.last_epoch += 1;
        let idx = self.index(self.last_epoch);
        let at_milestone = idx > 0 && self.milestones.get(idx - 1) == Some(&self.last_epoch);
        let s = self.schedulers.get_mut(idx).ok_or_else(|| Error::invalid("SequentialLR", "scheduler index out of range"))?;
        if at_milestone {
            s.step_to(opt, 0)?;
        } else {
            s.step(opt)?;
        }
        self.last_lr = s.last_lr();
        Ok(())
    }
    /// Jumps to `epoch`: the scheduler in charge then goes to `epoch − its milestone`.
    /// (PyTorch's SequentialLR has no closed form; this is cnnkit's extension, used when a
    /// SequentialLR is itself nested in another.)
    fn step_to(&mut self, opt: &mut dyn Optimizer, epoch: i64) -> Result<()> {
        let idx = self.index(epoch);
        let start = if idx == 0 { 0 } else { self.milestones[idx - 1] };
        let s = self.schedulers.get_mut(idx).ok_or_else(|| Error::invalid("SequentialLR", "scheduler index out of range"))?;
        s.step_to(opt, epoch - start)?;
        self.last_epoch = epoch;
        self.last_lr = s.last_lr();
        Ok(())
    }
    fn last_lr(&self) -> Vec<f64> {
        self.last_lr.clone()
    }
    fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
    /// `[last_epoch, n_lr, last_lr.., n_schedulers, (len_i, state_i..)..]`.
    fn state(&self) -> Vec<f64> {
        let mut v = vec![self.last_epoch as f64, self.last_lr.len() as f64];
        v.extend(&self.last_lr);
        v.push(self.schedulers.len() as f64);
        for s in &self.schedulers {
            let st = s.state();
            v.push(st.len() as f64);
            v.extend(st);
        }
        v
    }
    fn load_state(&mut self, s: &[f64]) -> Result<()> {
        let bad = || Error::invalid("SequentialLR", "scheduler state does not fit this scheduler");
        let take = |s: &[f64], at: usize| s.get(at).copied().filter(|v| *v >= 0.0 && v.fract() == 0.0).map(|v| v as usize).ok_or_else(bad);
        let n_lr = take(s, 1)?;
        let last_lr = s.get(2..2 + n_lr).ok_or_else(bad)?.to_vec();
        let mut at = 2 + n_lr;
        if take(s, at)? != self.schedulers.len() {
            return Err(bad());
        }
        at += 1;
        let mut parts = Vec::with_capacity(self.schedulers.len());
        for _ in 0..self.schedulers.len() {
            let len = take(s, at)?;
            parts.push(s.get(at + 1..at + 1 + len).ok_or_else(bad)?);
            at += 1 + len;
        }
        if at != s.len() {
            return Err(bad());
        }
        // Children first: if one refuses, the ones before it are restored.
        let saved: Vec<Vec<f64>> = self.schedulers.iter().map(|c| c.state()).collect();
        for (i, part) in parts.iter().enumerate() {
            if let Err(e) = self.schedulers[i].load_state(part) {
                for (c, old) in self.schedulers.iter_mut().zip(&saved).take(i) {
                    c.load_state(old)?;
                }
                return Err(e);
            }
        }
        self.last_epoch = s[0] as i64;
        self.last_lr = last_lr;
        Ok(())
    }
}
