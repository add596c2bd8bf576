//! cnnkit-optim: `torch.optim` for cnnkit tensors.
//!
//! - optimizers ([`Sgd`], [`Adam`], [`AdamW`], [`RmsProp`], [`Adagrad`]) behind one
//!   [`Optimizer`] trait, with PyTorch's defaults, per-group hyper-parameters ([`ParamGroup`])
//!   and a `state_dict` of named tensors that fits in a safetensors checkpoint;
//! - gradient clipping ([`clip_grad_norm_`], [`clip_grad_value_`]);
//! - learning-rate schedulers ([`sched`]) that drive any `&mut dyn Optimizer`.
//!
//! Every update follows PyTorch 2.x's single-tensor reference implementation
//! (`torch/optim/*.py`, `_single_tensor_*`, i.e. `foreach=False`), computed in the parameter's
//! dtype, in one fused pass over each parameter's storage ([`cnnkit_core::Tensor::update_data`]).
//! Parameters whose `grad()` is `None` are skipped, as in PyTorch.
//!
//! ```no_run
//! use cnnkit_core::{DType, Tensor};
//! use cnnkit_optim::{sched::{CosineAnnealingLr, LrScheduler}, Optimizer, Sgd, SgdConfig};
//! # fn main() -> cnnkit_core::Result<()> {
//! let w = Tensor::zeros(&[4], DType::F32).requires_grad_()?;
//! let mut opt = Sgd::new(vec![w.clone()], SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })?;
//! let mut sched = CosineAnnealingLr::new(&mut opt, 100, 0.0)?;
//! for _ in 0..100 {
//!     opt.zero_grad();
//!     let loss = w.mul(&w)?.sum_all()?;
//!     loss.backward()?;
//!     opt.step()?;
//!     sched.step(&mut opt)?;
//! }
//! # Ok(()) }
//! ```

pub mod adagrad;
pub mod adam;
mod chunks;
pub mod clip;
pub mod group;
pub mod rmsprop;
pub mod sched;
pub mod sgd;
mod state;

pub use adagrad::{Adagrad, AdagradConfig};
pub use adam::{Adam, AdamConfig, AdamW, AdamWConfig};
pub use clip::{clip_grad_norm_, clip_grad_value_};
pub use group::{AdagradOptions, AdamOptions, GroupOptions, ParamGroup, RmsPropOptions, SgdOptions};
pub use rmsprop::{RmsProp, RmsPropConfig};
pub use sgd::{Sgd, SgdConfig};

use cnnkit_core::{Error, Result, Tensor};
use std::collections::BTreeMap;

/// What every optimizer offers (PyTorch's `torch.optim.Optimizer`).
///
/// State dict layout (all values are tensors, so a checkpoint is one safetensors file):
/// `state.{i}.{name}` for parameter `i` (numbered across groups in order; names as PyTorch's:
/// `step`, `momentum_buffer`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `square_avg`,
/// `grad_avg`, `sum`) and `param_groups.{g}.{name}` for group `g`'s hyper-parameters
/// (`lr`, `weight_decay`, `initial_lr`, `momentum`, `betas`, ..., and `params`: the indices).
///
/// `Send`, so that a training step can run on a kernel-pool worker (`cnnkit_core::on_worker`).
pub trait Optimizer: Send {
    /// Performs one update of every parameter that has a gradient.
    fn step(&mut self) -> Result<()>;
    /// The parameter groups.
    fn param_groups(&self) -> &[ParamGroup];
    /// The parameter groups, mutably (to change hyper-parameters, as PyTorch users edit
    /// `optimizer.param_groups[i]["lr"]`). Replacing a group's parameters drops nothing, but
    /// state stays attached to parameter positions.
    fn param_groups_mut(&mut self) -> &mut [ParamGroup];
    /// The optimizer's state: per-parameter buffers and step counts, and group hyper-parameters.
    fn state_dict(&self) -> Result<BTreeMap<String, Tensor>>;
    /// Restores a [`Optimizer::state_dict`]. Shapes, group sizes and key names are checked
    /// first; on error nothing has changed.
    fn load_state_dict(&mut self, sd: &BTreeMap<String, Tensor>) -> Result<()>;

    /// Clears every parameter's gradient (`zero_grad(set_to_none=True)`, PyTorch's default).
    fn zero_grad(&self) {
        for g in self.param_groups() {
            for p in &g.params {
                p.zero_grad();
            }
        }
    }
    /// The learning rate of group 0.
    fn lr(&self) -> f64 {
        self.param_groups().first().map_or(0.0, |g| g.lr)
    }
    /// Sets the learning rate of one group.
    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        group_mut(self.param_groups_mut(), group, "set_lr")?.lr = lr;
        Ok(())
    }
}

/// Group `i`, or a typed error naming `op`.
pub(crate) fn group_mut<'a>(groups: &'a mut [ParamGroup], i: usize, op: &'static str) -> Result<&'a mut ParamGroup> {
    let n = groups.len();
    groups.get_mut(i).ok_or_else(|| Error::invalid(op, format!("param group {i} out of range (the optimizer has {n})")))
}
