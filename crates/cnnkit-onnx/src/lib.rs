//! cnnkit-onnx: ONNX import (models from `torch.onnx.export`, opsets 11–18) and export (any
//! cnnkit [`Module`] with `to_graph`, opset 17) through cnnkit-nn's graph IR ([`Graph`]).
//!
//! ```no_run
//! # fn main() -> cnnkit_core::Result<()> {
//! use cnnkit_core::{DType, Tensor};
//! let g = cnnkit_onnx::load_onnx(std::path::Path::new("model.onnx"))?;
//! let y = g.run(&[("input", Tensor::zeros(&[1, 3, 32, 32], DType::F32))])?;
//! # Ok(()) }
//! ```

mod export;
mod import;
pub mod proto;
mod tensor;

pub use cnnkit_nn::graph::Graph;
pub use export::{save_onnx, to_model};
pub use import::read_onnx;

use cnnkit_core::{Error, Result};
use cnnkit_nn::graph::module_to_graph;
use cnnkit_nn::{Module, ModuleExt};
use std::path::Path;

/// Reads an ONNX model file into a [`Graph`].
pub fn load_onnx(path: &Path) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|e| Error::File { path: path.display().to_string(), msg: e.to_string() })?;
    read_onnx(&bytes, &path.display().to_string())
}

/// Exports `m` (switched to eval mode) for inputs of `input_shape`, the batch dim (dim 0)
/// exported as the dynamic "N". Input value "input", output "output".
pub fn export_module(m: &dyn Module, input_shape: &[usize], path: &Path) -> Result<()> {
    m.eval();
    let mut shape: Vec<Option<usize>> = input_shape.iter().map(|&d| Some(d)).collect();
    if let Some(d) = shape.first_mut() {
        *d = None;
    }
    save_onnx(&module_to_graph(m, &shape)?, path, "cnnkit")
}
