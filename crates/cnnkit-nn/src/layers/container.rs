//! Containers: Sequential (runs children in order) and ModuleList (holds them).

use crate::graph::GraphBuilder;
use crate::module::{hook_key, Module, ModuleExt};
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
    /// Runs the layers in order; a Conv2d or BatchNorm followed by ReLU or ReLU6 runs as one op
    /// (the activation in the layer's own pass: same values and gradients) unless a forward
    /// hook on either layer must see the intermediate output.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while let Some(l) = self.layers.get(i) {
            let l = l.as_ref();
            // Where `l` cannot fuse (a hook on it, or no `forward_act`), `call_act` runs it and
            // then the activation as an op of its own: what the activation layer would do.
            let fused = self
                .layers
                .get(i + 1)
                .map(|n| n.as_ref())
                .filter(|n| !crate::hooks::any(hook_key(*n)))
                .and_then(|n| n.fusable_activation());
            match fused {
                Some(act) => {
                    h = l.call_act(&h, act)?;
                    i += 2;
                }
                None => {
                    h = l.call(&h)?;
                    i += 1;
                }
            }
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
