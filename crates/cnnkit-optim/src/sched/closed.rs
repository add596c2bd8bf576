//! The schedules that are a closed-form function of the epoch and each group's base lr:
//! StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR (formulas from each class's
//! `_get_closed_form_lr` in torch/optim/lr_scheduler.py).

use super::{Core, LrScheduler};
use crate::Optimizer;
use cnnkit_core::{Error, Result};

/// Implements [`LrScheduler`] for a closed-form schedule with a `core: Core` field and an
/// `lr_at(&self, base_lr, epoch) -> f64` method, and gives it the `attach` constructor helper.
macro_rules! closed_form {
    ($ty:ident, $name:literal) => {
        impl $ty {
            /// Attaches to `opt` and performs PyTorch's step 0.
            fn start(mut self, opt: &mut dyn Optimizer) -> Result<Self> {
                self.step_to(opt, 0)?;
                Ok(self)
            }
        }

        impl LrScheduler for $ty {
            fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
                let e = self.core.last_epoch + 1;
                self.step_to(opt, e)
            }
            fn step_to(&mut self, opt: &mut dyn Optimizer, epoch: i64) -> Result<()> {
                self.core.last_epoch = epoch;
                let lrs = self.core.base_lrs.iter().map(|&b| self.lr_at(b, epoch)).collect();
                self.core.apply(opt, lrs)
            }
            fn last_lr(&self) -> Vec<f64> {
                self.core.last_lr.clone()
            }
            fn last_epoch(&self) -> i64 {
                self.core.last_epoch
            }
            fn state(&self) -> Vec<f64> {
                self.core.state()
            }
            fn load_state(&mut self, state: &[f64]) -> Result<()> {
                let mut core = self.core.clone();
                let rest = core.load(state, $name)?;
                if !rest.is_empty() {
                    return Err(Error::invalid($name, format!("{} unexpected trailing state values", rest.len())));
                }
                self.core = core;
                Ok(())
            }
        }
    };
}

/// `StepLR`: `lr = base_lr · γ^⌊epoch / step_size⌋`.
#[derive(Clone, Debug)]
pub struct StepLr {
    core: Core,
    step_size: usize,
    gamma: f64,
}

impl StepLr {
    /// Decays each group's lr by `gamma` every `step_size` epochs (PyTorch default gamma 0.1).
    pub fn new(opt: &mut dyn Optimizer, step_size: usize, gamma: f64) -> Result<Self> {
        if step_size == 0 {
            return Err(Error::invalid("StepLR", "step_size must be positive"));
        }
        StepLr { core: Core::attach(opt), step_size, gamma }.start(opt)
    }
    fn lr_at(&self, base: f64, epoch: i64) -> f64 {
        base * self.gamma.powf(epoch.div_euclid(self.step_size as i64) as f64)
    }
}
closed_form!(StepLr, "StepLR");

/// `MultiStepLR`: `lr = base_lr · γ^(number of milestones ≤ epoch)` (a milestone listed twice
/// counts twice, as PyTorch's `Counter`).
#[derive(Clone, Debug)]
pub struct MultiStepLr {
    core: Core,
    milestones: Vec<i64>,
    gamma: f64,
}

impl MultiStepLr {
    /// Decays each group's lr by `gamma` at each milestone epoch (PyTorch default gamma 0.1).
    pub fn new(opt: &mut dyn Optimizer, milestones: &[usize], gamma: f64) -> Result<Self> {
        let mut milestones: Vec<i64> = milestones.iter().map(|&m| m as i64).collect();
        milestones.sort_unstable();
        MultiStepLr { core: Core::attach(opt), milestones, gamma }.start(opt)
    }
    fn lr_at(&self, base: f64, epoch: i64) -> f64 {
        // bisect_right(milestones, epoch)
        let passed = self.milestones.partition_point(|&m| m <= epoch);
        base * self.gamma.powf(passed as f64)
    }
}
closed_form!(MultiStepLr, "MultiStepLR");

/// `ExponentialLR`: `lr = base_lr · γ^epoch`.
#[derive(Clone, Debug)]
pub struct ExponentialLr {
    core: Core,
    gamma: f64,
}

impl ExponentialLr {
    /// Decays each group's lr by `gamma` every epoch.
    pub fn new(opt: &mut dyn Optimizer, gamma: f64) -> Result<Self> {
        ExponentialLr { core: Core::attach(opt), gamma }.start(opt)
    }
    fn lr_at(&self, base: f64, epoch: i64) -> f64 {
        base * self.gamma.powf(epoch as f64)
    }
}
closed_form!(ExponentialLr, "ExponentialLR");

/// `CosineAnnealingLR` (SGDR without restarts):
/// `lr = η_min + (base_lr − η_min)·(1 + cos(π·epoch/T_max))/2`, the closed form PyTorch's
/// docs give. Past `T_max` it continues along the cosine (back up), as PyTorch's does.
#[derive(Clone, Debug)]
pub struct CosineAnnealingLr {
    core: Core,
    t_max: usize,
    eta_min: f64,
}

impl CosineAnnealingLr {
    /// Anneals each group's lr from its base lr to `eta_min` over `t_max` epochs
    /// (PyTorch default eta_min 0).
    pub fn new(opt: &mut dyn Optimizer, t_max: usize, eta_min: f64) -> Result<Self> {
        if t_max == 0 {
            return Err(Error::invalid("CosineAnnealingLR", "T_max must be positive"));
        }
        CosineAnnealingLr { core: Core::attach(opt), t_max, eta_min }.start(opt)
    }
    fn lr_at(&self, base: f64, epoch: i64) -> f64 {
        self.eta_min + (base - self.eta_min) * (1.0 + (std::f64::consts::PI * epoch as f64 / self.t_max as f64).cos()) / 2.0
    }
}
closed_form!(CosineAnnealingLr, "CosineAnnealingLR");

/// `LinearLR`: the factor goes linearly from `start_factor` to `end_factor` over
/// `total_iters` epochs, then stays: `lr = base_lr·(s + (e − s)·min(T, epoch)/T)`.
#[derive(Clone, Debug)]
pub struct LinearLr {
    core: Core,
    start_factor: f64,
    end_factor: f64,
    total_iters: usize,
}

impl LinearLr {
    /// PyTorch's defaults are `start_factor` 1/3, `end_factor` 1.0, `total_iters` 5.
    pub fn new(opt: &mut dyn Optimizer, start_factor: f64, end_factor: f64, total_iters: usize) -> Result<Self> {
        if !(start_factor > 0.0 && start_factor <= 1.0) {
            return Err(Error::invalid("LinearLR", "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."));
        }
        if !(0.0..=1.0).contains(&end_factor) {
            return Err(Error::invalid("LinearLR", "Ending multiplicative factor expected to be between 0 and 1."));
        }
        LinearLr { core: Core::attach(opt), start_factor, end_factor, total_iters }.start(opt)
    }
    /// `LinearLR` with PyTorch's defaults.
    pub fn with_defaults(opt: &mut dyn Optimizer) -> Result<Self> {
        Self::new(opt, 1.0 / 3.0, 1.0, 5)
    }
    fn lr_at(&self, base: f64, epoch: i64) -> f64 {
        if self.total_iters == 0 {
            // PyTorch's recursive form applies start_factor at epoch 0 and never changes it.
            return base * self.start_factor;
        }
        let t = self.total_iters as f64;
        base * (self.start_factor + (self.end_factor - self.start_factor) * (epoch.max(0) as f64).min(t) / t)
    }
}
closed_form!(LinearLr, "LinearLR");
