//! The Module abstraction (torch.nn.Module): a forward function plus named parameters,
//! buffers and children whose dotted names are PyTorch state_dict keys
//! (`layer1.0.conv1.weight`), train/eval mode, freezing, strict state_dict loading and
//! forward hooks.

use crate::graph::GraphBuilder;
use cnnkit_core::{Epilogue, Error, Result, Tensor};
use std::collections::BTreeMap;

/// A network layer or a composition of layers.
///
/// Implementors provide `forward` and describe what they own; everything else (recursive
/// naming, state_dict, train/eval, hooks) comes from [`ModuleExt`]. Composite modules call
/// their children with [`ModuleExt::call`] so forward hooks on them fire.
pub trait Module: Send + Sync {
    /// x: the layer's input, shape documented per layer.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Direct children, with their attribute names ("0", "conv1", "features").
    fn children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }
    /// Parameters owned directly (not by children), with local names ("weight", "bias").
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Buffers owned directly ("running_mean", "running_var", "num_batches_tracked").
    fn own_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Switches this module's own train/eval behaviour (Dropout, BatchNorm); children are
    /// handled by [`ModuleExt::train`].
    fn set_own_training(&self, _training: bool) {}
    /// A one-line description in PyTorch's repr style, e.g. `Conv2d(1, 32, kernel_size=(3, 3))`.
    fn describe(&self) -> String {
        let full = std::any::type_name_of_val(self);
        full.rsplit("::").next().unwrap_or(full).to_string()
    }
    /// Describes this module's eval-mode forward, applied to graph value `x`, as nodes of `g`
    /// (ONNX semantics; see [`crate::graph`]) and returns the output value. Parameters go in
    /// with [`GraphBuilder::param`] so initializers carry state_dict keys; children are
    /// described with [`GraphBuilder::module`].
    fn to_graph(&self, _g: &mut GraphBuilder, _x: &str) -> Result<String> {
        Err(Error::invalid("to_graph", format!("{}: cannot be described as a graph (no to_graph)", self.describe())))
    }
    /// The activation this layer is, when a preceding convolution or batch norm can apply it
    /// in its own pass (ReLU, ReLU6): [`crate::Sequential`] then runs the pair as one op.
    fn fusable_activation(&self) -> Option<Epilogue> {
        None
    }
    /// `act(self.forward(x))` as one op, for layers that can fuse an activation (Conv2d,
    /// BatchNorm; same values and gradients as the two ops); None where this layer cannot.
    fn forward_act(&self, _x: &Tensor, _act: Epilogue) -> Option<Result<Tensor>> {
        None
    }
}

/// The (name, tensor) list of a layer's own parameters or buffers, skipping absent ones:
/// `named(&[("weight", Some(&self.weight)), ("bias", self.bias.as_ref())])`.
pub fn named(items: &[(&str, Option<&Tensor>)]) -> Vec<(String, Tensor)> {
    items.iter().filter_map(|(n, t)| t.map(|t| (n.to_string(), t.clone()))).collect()
}

/// What `load_state_dict` found, as PyTorch's `_IncompatibleKeys` plus shape mismatches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub missing_keys: Vec<String>,
    pub unexpected_keys: Vec<String>,
    /// (key, expected shape, found shape).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing_keys.is_empty() && self.unexpected_keys.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    /// PyTorch's wording; long lists stop after 16 keys with a count of the rest, so a
    /// wrong architecture still reads as one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 16;
        let list = |keys: &[String]| {
            let mut s = keys.iter().take(SHOWN).map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ");
            if keys.len() > SHOWN {
                s += &format!(", … ({} more)", keys.len() - SHOWN);
            }
            s
        };
        let mut parts = Vec::new();
        if !self.missing_keys.is_empty() {
            parts.push(format!("Missing key(s) in state_dict: {}.", list(&self.missing_keys)));
        }
        if !self.unexpected_keys.is_empty() {
            parts.push(format!("Unexpected key(s) in state_dict: {}.", list(&self.unexpected_keys)));
        }
        for (k, want, got) in self.mismatched.iter().take(SHOWN) {
            parts.push(format!(
                "size mismatch for {k}: copying a param with shape {got:?} from checkpoint, the shape in current model is {want:?}."
            ));
        }
        write!(f, "{}", parts.join(" "))
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Everything derived from [`Module`]'s few methods. Implemented for every module.
pub trait ModuleExt: Module {
    /// Runs forward, then any forward hooks registered on this module.
    fn call(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward(x)?;
        crate::hooks::run(hook_key(self), x, y)
    }

    /// `act(self.call(x))` for act = ReLU or a clamp (ReLU6), the activation fused into this
    /// layer's op where it can ([`Module::forward_act`]: one pass over the output, one tensor
    /// kept for the backward). Runs the two apart where a forward hook on this layer must see
    /// its own output, or the layer cannot fuse.
    fn call_act(&self, x: &Tensor, act: Epilogue) -> Result<Tensor> {
        if !crate::hooks::any(hook_key(self)) {
            if let Some(y) = self.forward_act(x, act) {
                return y;
            }
        }
        self.call(x)?.activation(act)
    }

    /// Every submodule (self first, as ""), depth-first, with dotted names.
    fn named_modules(&self) -> Vec<(String, &dyn Module)>
    where
        Self: Sized,
    {
        let mut out: Vec<(String, &dyn Module)> = vec![(String::new(), self as &dyn Module)];
        collect_modules(self, "", &mut out);
        out
    }

    /// All parameters with state_dict names, in registration order.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        visit(self, "", &mut Visit::Params(&mut out));
        out
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }
    /// Parameters that currently require grad (what an optimizer should update).
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.parameters().into_iter().filter(|t| t.requires_grad()).collect()
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        visit(self, "", &mut Visit::Buffers(&mut out));
        out
    }
    /// Number of scalar parameters.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|t| t.numel()).sum()
    }

    /// Parameters and buffers by state_dict key (the tensors themselves, detached).
    fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.named_parameters().into_iter().chain(self.named_buffers()).map(|(k, t)| (k, t.detach())).collect()
    }

    /// Copies values from `sd` into this module's parameters and buffers. With `strict`, any
    /// missing, unexpected or mis-shaped key is an error listing them all (as PyTorch); either
    /// way the report is returned and nothing is copied into a mis-shaped tensor.
    fn load_state_dict(&self, sd: &BTreeMap<String, Tensor>, strict: bool) -> Result<LoadReport> {
        let own: BTreeMap<String, Tensor> = self.named_parameters().into_iter().chain(self.named_buffers()).collect();
        let mut report = LoadReport::default();
        for (k, t) in &own {
            match sd.get(k) {
                None => report.missing_keys.push(k.clone()),
                Some(src) if src.shape() != t.shape() => report.mismatched.push((k.clone(), t.shape().to_vec(), src.shape().to_vec())),
                Some(_) => {}
            }
        }
        report.unexpected_keys = sd.keys().filter(|k| !own.contains_key(*k)).cloned().collect();
        if strict && !report.is_clean() {
            return Err(Error::StateDict(format!("Error(s) in loading state_dict: {report}")));
        }
        for (k, t) in &own {
            if let Some(src) = sd.get(k).filter(|s| s.shape() == t.shape()) {
                t.copy_(src)?;
            }
        }
        Ok(report)
    }

    /// Sets train (true) or eval (false) mode on this module and every descendant.
    fn train(&self, training: bool) {
        visit(self, "", &mut Visit::Train(training));
    }
    fn eval(&self) {
        self.train(false);
    }
    /// Sets train/eval mode on the submodule at a dotted `path` and its descendants only,
    /// e.g. to keep frozen BatchNorm layers in eval mode (running statistics untouched)
    /// while the rest of the model trains. Returns false when there is no such submodule.
    fn train_at(&self, path: &str, training: bool) -> bool {
        train_at(self, path, training)
    }

    /// Sets requires_grad on every parameter whose name starts with `prefix` ("" = all).
    /// Returns how many parameter tensors were changed.
    fn set_requires_grad(&self, prefix: &str, requires_grad: bool) -> Result<usize> {
        let mut n = 0;
        for (name, p) in self.named_parameters() {
            if prefix.is_empty() || name == prefix || name.starts_with(&format!("{prefix}.")) {
                p.set_requires_grad(requires_grad)?;
                n += 1;
            }
        }
        Ok(n)
    }
    /// Clears every parameter's gradient.
    fn zero_grad(&self) {
        self.parameters().iter().for_each(|p| p.zero_grad());
    }

    /// The submodule at a dotted path ("layer4", "features.3").
    fn get_submodule(&self, path: &str) -> Option<&dyn Module>
    where
        Self: Sized,
    {
        find(self, path)
    }

    /// A PyTorch-style printed tree of the module.
    fn summary(&self) -> String {
        let mut s = String::new();
        print_tree(self, &mut s, 0);
        s
    }
}

impl<M: Module + ?Sized> ModuleExt for M {}

/// Identity of a module for hooks: its address and size (non-zero-sized layers at the same
/// address but of different sizes are different modules).
pub(crate) fn hook_key<M: Module + ?Sized>(m: &M) -> (usize, usize) {
    (m as *const M as *const () as usize, std::mem::size_of_val(m))
}

/// What a recursive walk does at each module.
enum Visit<'a> {
    Params(&'a mut Vec<(String, Tensor)>),
    Buffers(&'a mut Vec<(String, Tensor)>),
    Train(bool),
}

fn visit<M: Module + ?Sized>(m: &M, prefix: &str, v: &mut Visit) {
    match v {
        Visit::Params(out) => out.extend(m.own_parameters().into_iter().map(|(n, t)| (join(prefix, &n), t))),
        Visit::Buffers(out) => out.extend(m.own_buffers().into_iter().map(|(n, t)| (join(prefix, &n), t))),
        Visit::Train(t) => m.set_own_training(*t),
    }
    for (name, c) in m.children() {
        visit(c, &join(prefix, &name), v);
    }
}

fn train_at<M: Module + ?Sized>(m: &M, path: &str, training: bool) -> bool {
    if path.is_empty() {
        visit(m, "", &mut Visit::Train(training));
        return true;
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    match m.children().into_iter().find(|(n, _)| n == head) {
        Some((_, c)) => train_at(c, rest, training),
        None => false,
    }
}

/// A boxed module is a module, so `Box<dyn Module>` gets every [`ModuleExt`] method.
impl Module for Box<dyn Module> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).call(x)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        (**self).children()
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        (**self).own_parameters()
    }
    fn own_buffers(&self) -> Vec<(String, Tensor)> {
        (**self).own_buffers()
    }
    fn set_own_training(&self, t: bool) {
        (**self).set_own_training(t)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        (**self).to_graph(g, x)
    }
}

fn collect_modules<'a>(m: &'a dyn Module, prefix: &str, out: &mut Vec<(String, &'a dyn Module)>) {
    for (name, c) in m.children() {
        let p = join(prefix, &name);
        out.push((p.clone(), c));
        collect_modules(c, &p, out);
    }
}

fn find<'a>(m: &'a dyn Module, path: &str) -> Option<&'a dyn Module> {
    if path.is_empty() {
        return Some(m);
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let child = m.children().into_iter().find(|(n, _)| n == head)?.1;
    find(child, rest)
}

fn print_tree<M: Module + ?Sized>(m: &M, s: &mut String, depth: usize) {
    let kids = m.children();
    s.push_str(&m.describe());
    if kids.is_empty() {
        return;
    }
    s.push_str("(\n");
    for (name, c) in kids {
        s.push_str(&"  ".repeat(depth + 1));
        s.push_str(&format!("({name}): "));
        print_tree(c, s, depth + 1);
        s.push('\n');
    }
    s.push_str(&"  ".repeat(depth));
    s.push(')');
}
