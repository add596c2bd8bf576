//! Linear, Flatten, Identity.

use crate::init::default_weight_and_bias;
use crate::module::Module;
use cnnkit_core::random::with_default_generator;
use cnnkit_core::{DType, Generator, Result, Tensor};

/// Fully connected layer: y = x Wᵀ + b. x: (…, in_features) → (…, out_features).
/// weight: (out_features, in_features); bias: (out_features).
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize) -> Result<Self> {
        with_default_generator(|g| Self::new_with(in_features, out_features, true, g))
    }
    pub fn new_no_bias(in_features: usize, out_features: usize) -> Result<Self> {
        with_default_generator(|g| Self::new_with(in_features, out_features, false, g))
    }
    pub fn new_with(in_features: usize, out_features: usize, bias: bool, g: &mut Generator) -> Result<Self> {
        let weight = Tensor::zeros(&[out_features, in_features], DType::F32);
        let bias = bias.then(|| Tensor::zeros(&[out_features], DType::F32));
        default_weight_and_bias(&weight, bias.as_ref(), g)?;
        weight.set_requires_grad(true)?;
        if let Some(b) = &bias {
            b.set_requires_grad(true)?;
        }
        Ok(Linear { in_features, out_features, weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[("weight", Some(&self.weight)), ("bias", self.bias.as_ref())])
    }
    fn describe(&self) -> String {
        format!(
            "Linear(in_features={}, out_features={}, bias={})",
            self.in_features,
            self.out_features,
            if self.bias.is_some() { "True" } else { "False" }
        )
    }
}

/// Flattens dims start_dim..=end_dim (defaults 1 and −1): (N, C, H, W) → (N, C·H·W).
#[derive(Clone, Copy, Debug)]
pub struct Flatten {
    pub start_dim: isize,
    pub end_dim: isize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { start_dim: 1, end_dim: -1 }
    }
}

impl Flatten {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten(self.start_dim, self.end_dim)
    }
    fn describe(&self) -> String {
        format!("Flatten(start_dim={}, end_dim={})", self.start_dim, self.end_dim)
    }
}

/// Returns its input (placeholder layer, e.g. a removed maxpool or head).
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity {
    // Not zero-sized, so hooks can tell two Identity fields of one struct apart.
    _id: u8,
}

impl Identity {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Module for Identity {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
}
