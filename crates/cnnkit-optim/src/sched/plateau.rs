//! `ReduceLROnPlateau`: cut the lr by `factor` when a metric stops improving for more than
//! `patience` steps. Follows `ReduceLROnPlateau` in torch/optim/lr_scheduler.py
//! (<https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html>).

use super::{check_groups, current_lrs, per_group, LrScheduler};
use crate::Optimizer;
use cnnkit_core::{Error, Result};

/// Whether a smaller or a larger metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlateauMode {
    /// Lower is better (a loss; PyTorch's default).
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// How `threshold` defines a significant improvement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThresholdMode {
    /// Better than `best·(1 ∓ threshold)` (PyTorch's default).
    Rel,
    /// Better than `best ∓ threshold`.
    Abs,
}

/// `ReduceLROnPlateau`'s arguments; `Default` gives PyTorch's.
#[derive(Clone, Debug, PartialEq)]
pub struct PlateauConfig {
    /// Default [`PlateauMode::Min`].
    pub mode: PlateauMode,
    /// New lr = lr · factor (default 0.1; must be < 1).
    pub factor: f64,
    /// Bad steps tolerated before reducing (default 10).
    pub patience: usize,
    /// Minimum significant change (default 1e-4).
    pub threshold: f64,
    /// Default [`ThresholdMode::Rel`].
    pub threshold_mode: ThresholdMode,
    /// Steps to wait after a reduction before counting bad steps again (default 0).
    pub cooldown: usize,
    /// Lower bound on the lr: one value for every group, or one per group (default 0).
    pub min_lr: Vec<f64>,
    /// Reductions smaller than this are skipped (default 1e-8).
    pub eps: f64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        PlateauConfig {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: vec![0.0],
            eps: 1e-8,
        }
    }
}

/// `ReduceLROnPlateau`; drive it with [`LrScheduler::step_with_metric`] (or
/// [`ReduceLrOnPlateau::step_metric`]). Unlike the other schedulers its construction does
/// not touch the lr, and it works from each group's current lr.
#[derive(Clone, Debug)]
pub struct ReduceLrOnPlateau {
    cfg: PlateauConfig,
    min_lrs: Vec<f64>,
    best: f64,
    num_bad_epochs: usize,
    cooldown_counter: usize,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl ReduceLrOnPlateau {
    /// Attaches to `opt` (its lrs are left as they are).
    pub fn new(opt: &mut dyn Optimizer, cfg: PlateauConfig) -> Result<Self> {
        const OP: &str = "ReduceLROnPlateau";
        if cfg.factor.is_nan() || cfg.factor >= 1.0 {
            return Err(Error::invalid(OP, "Factor should be < 1.0."));
        }
        let min_lrs = per_group(&cfg.min_lr, opt.param_groups().len(), "min_lr", OP)?;
        let best = worst(cfg.mode);
        Ok(ReduceLrOnPlateau { cfg, min_lrs, best, num_bad_epochs: 0, cooldown_counter: 0, last_epoch: 0, last_lr: current_lrs(opt) })
    }

    fn is_better(&self, a: f64, best: f64) -> bool {
        let t = self.cfg.threshold;
        match (self.cfg.mode, self.cfg.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - t),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - t,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (t + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + t,
        }
    }

    /// Records `metric` for this step and reduces the lrs if it has not improved for more
    /// than `patience` steps.
    pub fn step_metric(&mut self, opt: &mut dyn Optimizer, metric: f64) -> Result<()> {
        check_groups(opt, self.min_lrs.len())?;
        self.last_epoch += 1;
        if self.is_better(metric, self.best) {
            self.best = metric;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0; // bad epochs in cooldown do not count
        }
        if self.num_bad_epochs > self.cfg.patience {
            for (g, &min_lr) in opt.param_groups_mut().iter_mut().zip(&self.min_lrs) {
                let new_lr = (g.lr * self.cfg.factor).max(min_lr);
                if g.lr - new_lr > self.cfg.eps {
                    g.lr = new_lr;
                }
            }
            self.cooldown_counter = self.cfg.cooldown;
            self.num_bad_epochs = 0;
        }
        self.last_lr = current_lrs(opt);
        Ok(())
    }

    /// The best metric seen so far.
    pub fn best(&self) -> f64 {
        self.best
    }
}

/// The starting `best`: the worst possible value for the mode.
fn worst(mode: PlateauMode) -> f64 {
    match mode {
        PlateauMode::Min => f64::INFINITY,
        PlateauMode::Max => f64::NEG_INFINITY,
    }
}

impl LrScheduler for ReduceLrOnPlateau {
    /// Refused: this scheduler needs a metric.
    fn step(&mut self, _opt: &mut dyn Optimizer) -> Result<()> {
        Err(Error::invalid("ReduceLROnPlateau", "step needs a metric: call step_with_metric"))
    }
    /// Refused: this scheduler has no closed form.
    fn step_to(&mut self, _opt: &mut dyn Optimizer, _epoch: i64) -> Result<()> {
        Err(Error::invalid("ReduceLROnPlateau", "has no closed form to jump to an epoch"))
    }
    fn step_with_metric(&mut self, opt: &mut dyn Optimizer, metric: f64) -> Result<()> {
        self.step_metric(opt, metric)
    }
    fn needs_metric(&self) -> bool {
        true
    }
    fn last_lr(&self) -> Vec<f64> {
        self.last_lr.clone()
    }
    fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
    /// `[last_epoch, best, num_bad_epochs, cooldown_counter, n, last_lr..]`.
    fn state(&self) -> Vec<f64> {
        let mut v =
            vec![self.last_epoch as f64, self.best, self.num_bad_epochs as f64, self.cooldown_counter as f64, self.last_lr.len() as f64];
        v.extend(&self.last_lr);
        v
    }
    fn load_state(&mut self, s: &[f64]) -> Result<()> {
        let n = self.min_lrs.len();
        if s.len() != 5 + n || s[4] != n as f64 || s[2] < 0.0 || s[3] < 0.0 {
            return Err(Error::invalid(
                "ReduceLROnPlateau",
                format!("scheduler state does not fit this scheduler ({} values, {n} param groups)", s.len()),
            ));
        }
        self.last_epoch = s[0] as i64;
        self.best = s[1];
        self.num_bad_epochs = s[2] as usize;
        self.cooldown_counter = s[3] as usize;
        self.last_lr = s[5..].to_vec();
        Ok(())
    }
}
