//! `OneCycleLR` (Smith & Topin 2017, <https://arxiv.org/abs/1708.07120>), following
//! `OneCycleLR` in torch/optim/lr_scheduler.py.
//!
//! The lr rises from `max_lr/div_factor` to `max_lr` over the first `pct_start` of the steps,
//! then falls to `initial_lr/final_div_factor`; momentum (SGD's/RMSprop's `momentum`, Adam's
//! `beta1`) moves the opposite way between `max_momentum` and `base_momentum`. With
//! `three_phase` the lr goes back down to `initial_lr` symmetrically before the final fall.

use super::{check_groups, per_group, LrScheduler};
use crate::Optimizer;
use cnnkit_core::{Error, Result};

/// How OneCycleLR moves between two values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnealStrategy {
    /// `end + (start − end)/2 · (cos(π·pct) + 1)` (PyTorch's default).
    Cos,
    /// `(end − start)·pct + start`.
    Linear,
}

impl AnnealStrategy {
    fn anneal(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            AnnealStrategy::Cos => end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0),
            AnnealStrategy::Linear => (end - start) * pct + start,
        }
    }
}

/// `OneCycleLR`'s arguments; [`OneCycleConfig::new`] fills PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycleConfig {
    /// The peak lr: one value for every group, or one per group.
    pub max_lr: Vec<f64>,
    /// The number of steps in the cycle (`scheduler.step()` may be called this many times).
    pub total_steps: usize,
    /// Fraction of the cycle spent increasing the lr (default 0.3).
    pub pct_start: f64,
    /// Default cosine.
    pub anneal_strategy: AnnealStrategy,
    /// Cycle momentum / beta1 inversely to the lr (default true; the optimizer must have one).
    pub cycle_momentum: bool,
    /// Lowest momentum, reached at the peak lr (default 0.85).
    pub base_momentum: f64,
    /// Highest momentum, at the start and the end (default 0.95).
    pub max_momentum: f64,
    /// `initial_lr = max_lr / div_factor` (default 25).
    pub div_factor: f64,
    /// `min_lr = initial_lr / final_div_factor` (default 1e4).
    pub final_div_factor: f64,
    /// Use the three-phase schedule (default false).
    pub three_phase: bool,
}

impl OneCycleConfig {
    /// PyTorch's defaults for a peak lr and a cycle length.
    pub fn new(max_lr: f64, total_steps: usize) -> Self {
        OneCycleConfig {
            max_lr: vec![max_lr],
            total_steps,
            pct_start: 0.3,
            anneal_strategy: AnnealStrategy::Cos,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }
}

/// Which per-group value a phase starts or ends at.
#[derive(Clone, Copy, Debug)]
enum Anchor {
    Initial,
    Max,
    Min,
}

#[derive(Clone, Copy, Debug)]
struct Phase {
    end_step: f64,
    start_lr: Anchor,
    end_lr: Anchor,
    /// true: starts at max_momentum; false: at base_momentum.
    start_momentum_max: bool,
    end_momentum_max: bool,
}

/// Per-group anchors (PyTorch keeps them in the group dict).
#[derive(Clone, Copy, Debug)]
struct GroupLrs {
    initial: f64,
    max: f64,
    min: f64,
}

/// `OneCycleLR`; call `step` after every batch.
#[derive(Clone, Debug)]
pub struct OneCycleLr {
    cfg: OneCycleConfig,
    phases: Vec<Phase>,
    groups: Vec<GroupLrs>,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl OneCycleLr {
    /// Attaches to `opt`: sets every group's `initial_lr` to `max_lr/div_factor` (and its
    /// momentum to `max_momentum` when cycling), then performs step 0.
    pub fn new(opt: &mut dyn Optimizer, cfg: OneCycleConfig) -> Result<Self> {
        const OP: &str = "OneCycleLR";
        if cfg.total_steps == 0 {
            return Err(Error::invalid(OP, "Expected positive integer total_steps, but got 0"));
        }
        if !(0.0..=1.0).contains(&cfg.pct_start) {
            return Err(Error::invalid(OP, format!("Expected float between 0 and 1 pct_start, but got {}", cfg.pct_start)));
        }
        let total = cfg.total_steps as f64;
        let p = |end_step, start_lr, end_lr, start_momentum_max, end_momentum_max| Phase {
            end_step,
            start_lr,
            end_lr,
            start_momentum_max,
            end_momentum_max,
        };
        let phases = if cfg.three_phase {
            vec![
                p(cfg.pct_start * total - 1.0, Anchor::Initial, Anchor::Max, true, false),
                p(2.0 * cfg.pct_start * total - 2.0, Anchor::Max, Anchor::Initial, false, true),
                p(total - 1.0, Anchor::Initial, Anchor::Min, true, true),
            ]
        } else {
            vec![
                p(cfg.pct_start * total - 1.0, Anchor::Initial, Anchor::Max, true, false),
                p(total - 1.0, Anchor::Max, Anchor::Min, false, true),
            ]
        };
        let max_lrs = per_group(&cfg.max_lr, opt.param_groups().len(), "max_lr", OP)?;
        if cfg.cycle_momentum && opt.param_groups().iter().any(|g| g.momentum().is_none()) {
            return Err(Error::invalid(OP, "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"));
        }
        let mut groups = Vec::with_capacity(max_lrs.len());
        for (g, &max) in opt.param_groups_mut().iter_mut().zip(&max_lrs) {
            let initial = max / cfg.div_factor;
            g.initial_lr = Some(initial);
            groups.push(GroupLrs { initial, max, min: initial / cfg.final_div_factor });
            if cfg.cycle_momentum {
                g.set_momentum(cfg.max_momentum);
            }
        }
        let mut s = OneCycleLr { cfg, phases, groups, last_epoch: -1, last_lr: Vec::new() };
        s.step_to(opt, 0)?;
        Ok(s)
    }
}

impl LrScheduler for OneCycleLr {
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let e = self.last_epoch + 1;
        self.step_to(opt, e)
    }
    fn step_to(&mut self, opt: &mut dyn Optimizer, epoch: i64) -> Result<()> {
        const OP: &str = "OneCycleLR";
        if epoch > self.cfg.total_steps as i64 {
            return Err(Error::invalid(
                OP,
                format!("Tried to step {epoch} times. The specified number of total steps is {}", self.cfg.total_steps),
            ));
        }
        check_groups(opt, self.groups.len())?;
        let step = epoch as f64;
        let (strategy, base_m, max_m) = (self.cfg.anneal_strategy, self.cfg.base_momentum, self.cfg.max_momentum);
        let mut lrs = Vec::with_capacity(self.groups.len());
        for (gl, g) in self.groups.iter().zip(opt.param_groups_mut().iter_mut()) {
            let anchor = |a: Anchor| match a {
                Anchor::Initial => gl.initial,
                Anchor::Max => gl.max,
                Anchor::Min => gl.min,
            };
            let mut start_step = 0.0;
            for (i, ph) in self.phases.iter().enumerate() {
                if step <= ph.end_step || i == self.phases.len() - 1 {
                    if ph.end_step == start_step {
                        // PyTorch divides by zero here (ZeroDivisionError).
                        return Err(Error::invalid(OP, "a phase of zero steps: increase total_steps or change pct_start"));
                    }
                    let pct = (step - start_step) / (ph.end_step - start_step);
                    lrs.push(strategy.anneal(anchor(ph.start_lr), anchor(ph.end_lr), pct));
                    if self.cfg.cycle_momentum {
                        let m = |is_max: bool| if is_max { max_m } else { base_m };
                        g.set_momentum(strategy.anneal(m(ph.start_momentum_max), m(ph.end_momentum_max), pct));
                    }
                    break;
                }
                start_step = ph.end_step;
            }
        }
        for (g, &lr) in opt.param_groups_mut().iter_mut().zip(&lrs) {
            g.lr = lr;
        }
        self.last_epoch = epoch;
        self.last_lr = lrs;
        Ok(())
    }
    fn last_lr(&self) -> Vec<f64> {
        self.last_lr.clone()
    }
    fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
    /// `[last_epoch, n, last_lr..]` (the anchors follow from the configuration).
    fn state(&self) -> Vec<f64> {
        let mut v = vec![self.last_epoch as f64, self.last_lr.len() as f64];
        v.extend(&self.last_lr);
        v
    }
    fn load_state(&mut self, state: &[f64]) -> Result<()> {
        let n = self.groups.len();
        if state.len() != 2 + n || state[1] != n as f64 {
            return Err(Error::invalid(
                "OneCycleLR",
                format!("scheduler state does not fit this scheduler ({} values, {n} param groups)", state.len()),
            ));
        }
        self.last_epoch = state[0] as i64;
        self.last_lr = state[2..].to_vec();
        Ok(())
    }
}
