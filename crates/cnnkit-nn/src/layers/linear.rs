//! Linear, Flatten, Identity.

use crate::graph::{GraphBuilder, GraphOp};
use crate::init::default_weight_and_bias;
use crate::module::Module;
use cnnkit_core::random::with_default_generator;
use cnnkit_core::{DType, Error, Generator, Result, Tensor};

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
    /// Gemm(transB=1) on 2-D inputs, as torch.onnx; MatMul with Wᵀ (+ Add) on other ranks.
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let w = g.param("weight", &self.weight);
        let b = self.bias.as_ref().map(|b| g.param("bias", b));
        if g.rank_of(x, "Linear")? == 2 {
            let mut ins = vec![x, w.as_str()];
            ins.extend(b.as_deref());
            return g.node(GraphOp::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }, &ins);
        }
        let wt = g.node(GraphOp::Transpose { perm: vec![1, 0] }, &[&w])?;
        let y = g.node(GraphOp::MatMul, &[x, &wt])?;
        match b {
            Some(b) => g.node(GraphOp::Add, &[&y, &b]),
            None => Ok(y),
        }
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
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let shape = g.shape_of(x).ok_or_else(|| Error::invalid("to_graph", format!("Flatten: unknown value '{x}'")))?;
        let r = shape.len() as isize;
        let norm = |d: isize| if d < 0 { d + r } else { d };
        let (a, b) = (norm(self.start_dim), norm(self.end_dim));
        if r == 0 || a < 0 || b >= r || a > b {
            return Err(Error::invalid("to_graph", format!("Flatten({}, {}) does not fit a rank-{r} input", self.start_dim, self.end_dim)));
        }
        if a == 1 && b == r - 1 {
            return g.node(GraphOp::Flatten { axis: 1 }, &[x]);
        }
        // Reshape: 0 copies a leading dim, −1 is the flattened run, trailing dims must be known
        // (a 0 there would copy the dim at the same index of the input, not the same dim).
        let mut spec: Vec<i64> = vec![0; a as usize];
        spec.push(-1);
        for d in &shape[b as usize + 1..] {
            spec.push(d.ok_or_else(|| Error::invalid("to_graph", "Flatten: a trailing dim after end_dim is dynamic"))? as i64);
        }
        let s = g.const_i64(&spec)?;
        g.node(GraphOp::Reshape { allowzero: false }, &[x, &s])
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
    fn to_graph(&self, _g: &mut GraphBuilder, x: &str) -> Result<String> {
        Ok(x.to_string())
    }
}
