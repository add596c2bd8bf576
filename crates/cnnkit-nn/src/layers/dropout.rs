//! Dropout (Srivastava et al. 2014) and Dropout2d (whole channels), active in train mode only.
//! Kept elements are scaled by 1/(1−p) so eval needs no rescaling (PyTorch's inverted dropout).

use crate::graph::GraphBuilder;
use crate::module::Module;
use cnnkit_core::{Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

fn check_p(p: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid("Dropout", format!("dropout probability has to be between 0 and 1, but got {p}")));
    }
    Ok(p)
}

/// Zeroes each element with probability p (default 0.5). x: any shape.
pub struct Dropout {
    pub p: f64,
    training: AtomicBool,
}

impl Dropout {
    pub fn new(p: f64) -> Result<Self> {
        Ok(Dropout { p: check_p(p)?, training: AtomicBool::new(true) })
    }
}

/// x·mask/(1−p) with mask of `mask_shape` broadcast over x.
fn drop(x: &Tensor, p: f64, mask_shape: &[usize]) -> Result<Tensor> {
    if p == 1.0 {
        return x.mul_scalar(0.0);
    }
    let keep = Tensor::full(mask_shape, 1.0 - p, x.dtype()).bernoulli()?.mul_scalar(1.0 / (1.0 - p))?;
    x.mul(&keep)
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training.load(Ordering::Relaxed) || self.p == 0.0 {
            return Ok(x.clone());
        }
        drop(x, self.p, x.shape())
    }
    fn set_own_training(&self, t: bool) {
        self.training.store(t, Ordering::Relaxed);
    }
    /// Eval-mode dropout is the identity: no node.
    fn to_graph(&self, _g: &mut GraphBuilder, x: &str) -> Result<String> {
        Ok(x.to_string())
    }
    fn describe(&self) -> String {
        format!("Dropout(p={})", self.p)
    }
}

/// Zeroes whole channels with probability p. x: (N, C, H, W) or (C, H, W).
pub struct Dropout2d {
    pub p: f64,
    training: AtomicBool,
}

impl Dropout2d {
    pub fn new(p: f64) -> Result<Self> {
        Ok(Dropout2d { p: check_p(p)?, training: AtomicBool::new(true) })
    }
}

impl Module for Dropout2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training.load(Ordering::Relaxed) || self.p == 0.0 {
            return Ok(x.clone());
        }
        if x.ndim() < 3 {
            return Err(Error::bad_shape("Dropout2d", x.shape(), "expects (N, C, H, W) or (C, H, W)"));
        }
        let nd = x.ndim();
        let mut s = x.shape().to_vec();
        s[nd - 2] = 1;
        s[nd - 1] = 1;
        drop(x, self.p, &s)
    }
    fn set_own_training(&self, t: bool) {
        self.training.store(t, Ordering::Relaxed);
    }
    fn to_graph(&self, _g: &mut GraphBuilder, x: &str) -> Result<String> {
        Ok(x.to_string())
    }
    fn describe(&self) -> String {
        format!("Dropout2d(p={})", self.p)
    }
}
