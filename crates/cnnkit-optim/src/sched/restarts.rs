//! `CosineAnnealingWarmRestarts` (SGDR, Loshchilov & Hutter 2017,
//! <https://arxiv.org/abs/1608.03983>):
//! `lr = η_min + (base_lr − η_min)·(1 + cos(π·T_cur/T_i))/2`, where `T_cur` counts epochs
//! since the last restart and the period `T_i` starts at `T_0` and grows by `T_mult` at every
//! restart. Follows `CosineAnnealingWarmRestarts.step` in torch/optim/lr_scheduler.py.

use super::{Core, LrScheduler};
use crate::Optimizer;
use cnnkit_core::{Error, Result};

/// `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`.
#[derive(Clone, Debug)]
pub struct CosineAnnealingWarmRestarts {
    core: Core,
    t_0: usize,
    t_mult: usize,
    eta_min: f64,
    /// The current period.
    t_i: f64,
    /// Epochs since the last restart (fractional only after `step_to` with `T_mult` > 1,
    /// as in PyTorch).
    t_cur: f64,
}

impl CosineAnnealingWarmRestarts {
    /// PyTorch's defaults are `t_mult` 1 and `eta_min` 0.
    pub fn new(opt: &mut dyn Optimizer, t_0: usize, t_mult: usize, eta_min: f64) -> Result<Self> {
        if t_0 == 0 {
            return Err(Error::invalid("CosineAnnealingWarmRestarts", format!("Expected positive integer T_0, but got {t_0}")));
        }
        if t_mult == 0 {
            return Err(Error::invalid("CosineAnnealingWarmRestarts", format!("Expected integer T_mult >= 1, but got {t_mult}")));
        }
        let mut s = CosineAnnealingWarmRestarts { core: Core::attach(opt), t_0, t_mult, eta_min, t_i: t_0 as f64, t_cur: -1.0 };
        s.step_to(opt, 0)?;
        Ok(s)
    }

    fn write(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let c = (1.0 + (std::f64::consts::PI * self.t_cur / self.t_i).cos()) / 2.0;
        let lrs = self.core.base_lrs.iter().map(|&b| self.eta_min + (b - self.eta_min) * c).collect();
        self.core.apply(opt, lrs)
    }
}

impl LrScheduler for CosineAnnealingWarmRestarts {
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        if self.core.last_epoch < 0 {
            return self.step_to(opt, 0);
        }
        self.core.last_epoch += 1;
        self.t_cur += 1.0;
        if self.t_cur >= self.t_i {
            self.t_cur %= self.t_i;
            self.t_i *= self.t_mult as f64;
        }
        self.write(opt)
    }
    fn step_to(&mut self, opt: &mut dyn Optimizer, epoch: i64) -> Result<()> {
        if epoch < 0 {
            return Err(Error::invalid("CosineAnnealingWarmRestarts", format!("Expected non-negative epoch, but got {epoch}")));
        }
        let (e, t0, tm) = (epoch as f64, self.t_0 as f64, self.t_mult as f64);
        if epoch as usize >= self.t_0 {
            if self.t_mult == 1 {
                self.t_cur = e % t0;
            } else {
                // n = int(log(epoch/T_0·(T_mult − 1) + 1, T_mult)): the number of finished periods.
                let n = ((e / t0 * (tm - 1.0) + 1.0).ln() / tm.ln()).trunc();
                self.t_cur = e - t0 * (tm.powf(n) - 1.0) / (tm - 1.0);
                self.t_i = t0 * tm.powf(n);
            }
        } else {
            self.t_i = t0;
            self.t_cur = e;
        }
        self.core.last_epoch = epoch;
        self.write(opt)
    }
    fn last_lr(&self) -> Vec<f64> {
        self.core.last_lr.clone()
    }
    fn last_epoch(&self) -> i64 {
        self.core.last_epoch
    }
    /// `[core.., T_i, T_cur]`.
    fn state(&self) -> Vec<f64> {
        let mut v = self.core.state();
        v.extend([self.t_i, self.t_cur]);
        v
    }
    fn load_state(&mut self, state: &[f64]) -> Result<()> {
        let mut core = self.core.clone();
        let rest = core.load(state, "CosineAnnealingWarmRestarts")?;
        let [t_i, t_cur] = rest[..] else {
            return Err(Error::invalid("CosineAnnealingWarmRestarts", format!("expected 2 trailing state values, got {}", rest.len())));
        };
        (self.core, self.t_i, self.t_cur) = (core, t_i, t_cur);
        Ok(())
    }
}
