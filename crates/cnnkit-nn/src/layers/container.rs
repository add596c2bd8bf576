//! Containers: Sequential (runs children in order) and ModuleList (holds them).

use crate::graph::GraphBuilder;
use crate::module::{Module, ModuleExt};
use cnnkit_core::{Result, Tensor};

/// Runs its children in order; children are named "0", "1", … as in PyTorch.
#[derive(Default)]
pub struct Sequential {
    pub layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    pub fn new() -> Self {
        Self::default()
    }
    /// Builder: appends a layer.
    #[allow(clippy::should_implement_trait)]
    pub fn add<M: Module + 'static>(mut self, m: M) -> Self {
        self.layers.push(Box::new(m));
        self
    }
    pub fn push(&mut self, m: Box<dyn Module>) {
        self.layers.push(m);
    }
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.as_ref().call(&h)?;
        }
        Ok(h)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let mut h = x.to_string();
        for (i, l) in self.layers.iter().enumerate() {
            h = g.module(&i.to_string(), l.as_ref(), &h)?;
        }
        Ok(h)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.iter().enumerate().map(|(i, l)| (i.to_string(), l.as_ref())).collect()
    }
}

/// Holds modules by index without a forward of its own (`nn.ModuleList`).
#[derive(Default)]
pub struct ModuleList {
    pub modules: Vec<Box<dyn Module>>,
}

impl ModuleList {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, m: Box<dyn Module>) {
        self.modules.push(m);
    }
    pub fn get(&self, i: usize) -> Option<&dyn Module> {
        self.modules.get(i).map(|m| m.as_ref())
    }
    pub fn len(&self) -> usize {
        self.modules.len()
    }
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

impl Module for ModuleList {
    /// A ModuleList has no forward (PyTorch raises NotImplementedError); this is an error.
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        Err(cnnkit_core::Error::invalid("ModuleList", "ModuleList has no forward; call its modules"))
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.modules.iter().enumerate().map(|(i, l)| (i.to_string(), l.as_ref())).collect()
    }
}
