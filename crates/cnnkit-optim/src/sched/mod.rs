//! Learning-rate schedulers: `torch.optim.lr_scheduler` driving any `&mut dyn Optimizer`.
//!
//! <https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate>
//!
//! As in PyTorch, constructing a scheduler performs its "step 0" (it writes the epoch-0
//! learning rates into the optimizer), and `step` is called once per epoch (or per batch for
//! [`OneCycleLr`]) *after* `optimizer.step()`. The first scheduler attached to an optimizer
//! records each group's `initial_lr` (PyTorch's `group.setdefault("initial_lr", lr)`) and every
//! scheduler scales from it.
//!
//! PyTorch computes most schedules recursively from the optimizer's current lr (its
//! "chainable" form); cnnkit uses the closed forms PyTorch documents (`_get_closed_form_lr`),
//! which agree with the recursive values to rounding (checked against torch over the tested
//! horizons in `tests/`). The difference shows only if something else edits the lr between
//! steps: PyTorch's recursive schedules build on the edited value, cnnkit's do not.
//!
//! To resume from a checkpoint: build the optimizer and the scheduler as before (the
//! constructor writes the epoch-0 lrs), then load the optimizer's state dict (which restores
//! the saved lrs) and the scheduler's [`LrScheduler::state`].

mod closed;
mod onecycle;
mod plateau;
mod restarts;
mod sequential;

pub use closed::{CosineAnnealingLr, ExponentialLr, LinearLr, MultiStepLr, StepLr};
pub use onecycle::{AnnealStrategy, OneCycleConfig, OneCycleLr};
pub use plateau::{PlateauConfig, PlateauMode, ReduceLrOnPlateau, ThresholdMode};
pub use restarts::CosineAnnealingWarmRestarts;
pub use sequential::SequentialLr;

use crate::Optimizer;
use cnnkit_core::{Error, Result};

/// What every scheduler offers.
pub trait LrScheduler: Send {
    /// Advances one step (PyTorch's `scheduler.step()`) and writes each group's new lr into `opt`.
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()>;
    /// Jumps to `epoch` and writes that epoch's lrs (PyTorch's closed-form `_update_lr(epoch)`;
    /// [`SequentialLr`] calls it with 0 when it hands over to the next scheduler).
    fn step_to(&mut self, opt: &mut dyn Optimizer, epoch: i64) -> Result<()>;
    /// A step driven by a metric ([`ReduceLrOnPlateau`]); other schedulers ignore the metric.
    fn step_with_metric(&mut self, opt: &mut dyn Optimizer, metric: f64) -> Result<()> {
        let _ = metric;
        self.step(opt)
    }
    /// True for schedulers that need [`LrScheduler::step_with_metric`].
    fn needs_metric(&self) -> bool {
        false
    }
    /// The lrs this scheduler last wrote, one per group (`get_last_lr()`).
    fn last_lr(&self) -> Vec<f64>;
    /// The index of the last step taken (0 right after construction).
    fn last_epoch(&self) -> i64;
    /// The scheduler's mutable state as a flat vector (its configuration is not included:
    /// rebuild the scheduler with the same arguments, then [`LrScheduler::load_state`]).
    fn state(&self) -> Vec<f64>;
    /// Restores [`LrScheduler::state`]; refuses a vector of the wrong shape.
    fn load_state(&mut self, state: &[f64]) -> Result<()>;
}

/// What the closed-form schedulers share: each group's base lr, the epoch, the last lrs.
#[derive(Clone, Debug)]
pub(crate) struct Core {
    pub(crate) base_lrs: Vec<f64>,
    pub(crate) last_epoch: i64,
    pub(crate) last_lr: Vec<f64>,
}

impl Core {
    /// Attaches to `opt`: records each group's `initial_lr` (set from its lr when unset).
    pub(crate) fn attach(opt: &mut dyn Optimizer) -> Core {
        let base_lrs = opt
            .param_groups_mut()
            .iter_mut()
            .map(|g| {
                let v = g.initial_lr.unwrap_or(g.lr);
                g.initial_lr = Some(v);
                v
            })
            .collect();
        Core { base_lrs, last_epoch: -1, last_lr: Vec::new() }
    }
    /// Writes `lrs` into the optimizer's groups.
    pub(crate) fn apply(&mut self, opt: &mut dyn Optimizer, lrs: Vec<f64>) -> Result<()> {
        check_groups(opt, lrs.len())?;
        for (g, &lr) in opt.param_groups_mut().iter_mut().zip(&lrs) {
            g.lr = lr;
        }
        self.last_lr = lrs;
        Ok(())
    }
    /// `[last_epoch, n, base_lrs.., last_lr..]`.
    pub(crate) fn state(&self) -> Vec<f64> {
        let mut v = vec![self.last_epoch as f64, self.base_lrs.len() as f64];
        v.extend(&self.base_lrs);
        v.extend(&self.last_lr);
        v
    }
    /// Reads [`Core::state`] from the front of `s`, returning the rest.
    pub(crate) fn load<'a>(&mut self, s: &'a [f64], op: &'static str) -> Result<&'a [f64]> {
        let n = self.base_lrs.len();
        if s.len() < 2 + 2 * n || s[1] != n as f64 || self.last_lr.len() != n {
            return Err(Error::invalid(op, format!("scheduler state does not fit this scheduler ({} values, {n} param groups)", s.len())));
        }
        self.last_epoch = s[0] as i64;
        self.base_lrs = s[2..2 + n].to_vec();
        self.last_lr = s[2 + n..2 + 2 * n].to_vec();
        Ok(&s[2 + 2 * n..])
    }
}

/// Refuses an optimizer whose number of groups changed since the scheduler was attached.
pub(crate) fn check_groups(opt: &dyn Optimizer, n: usize) -> Result<()> {
    let have = opt.param_groups().len();
    if have != n {
        return Err(Error::invalid("lr_scheduler", format!("the scheduler was built for {n} param groups, the optimizer has {have}")));
    }
    Ok(())
}

/// The current lr of every group.
pub(crate) fn current_lrs(opt: &dyn Optimizer) -> Vec<f64> {
    opt.param_groups().iter().map(|g| g.lr).collect()
}

/// `values` given as one value for every group or one per group (PyTorch's `_format_param`).
pub(crate) fn per_group(values: &[f64], groups: usize, what: &str, op: &'static str) -> Result<Vec<f64>> {
    match values.len() {
        1 => Ok(vec![values[0]; groups]),
        n if n == groups => Ok(values.to_vec()),
        n => Err(Error::invalid(op, format!("expected 1 or {groups} values for {what}, got {n}"))),
    }
}
