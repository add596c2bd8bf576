//! Running user-defined differentiable functions ([`CustomOp`]).

use crate::op::{CustomOp, Op};
use crate::{grad_mode, Result, Tensor};
use std::sync::Arc;

impl Tensor {
    /// Applies `f` to `inputs`, recording it so backward calls `f.backward`.
    pub fn apply_custom(f: Arc<dyn CustomOp>, inputs: &[Tensor]) -> Result<Tensor> {
        let y = grad_mode::with_no_grad(|| f.forward(inputs))?;
        let storage = y.contiguous_copy()?.read_storage()?.clone();
        Ok(Tensor::from_op(storage, y.shape(), Op::Custom { f, inputs: inputs.to_vec() }))
    }
}
