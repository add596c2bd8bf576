//! GraphBuilder: how a module describes its (eval-mode) forward as graph nodes. Parameters
//! become initializers under their state_dict keys; node names follow PyTorch's exporter
//! ("/layer1/layer1.0/conv1/Conv"). Shapes are inferred as nodes are added, so a layer can ask
//! for its input's shape and a mis-shaped description fails at the node that causes it.

use super::exec::node_error;
use super::shape::{infer_node, Sym};
use super::{Graph, GraphOp, Node, ValueInfo};
use crate::module::Module;
use cnnkit_core::{Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Accumulates a graph while modules describe themselves (see [`Module::to_graph`]).
pub struct GraphBuilder {
    inputs: Vec<ValueInfo>,
    initializers: BTreeMap<String, Tensor>,
    nodes: Vec<Node>,
    /// Attribute names from the root to the module being described.
    prefix: Vec<String>,
    syms: HashMap<String, Sym>,
    /// Every value and node name handed out, so new ones are unique.
    taken: HashSet<String>,
    next_const: usize,
}

impl GraphBuilder {
    /// A builder whose graph has one input `input_name` of `input_shape` (None = dynamic).
    pub fn new(input_name: &str, input_shape: &[Option<usize>]) -> Self {
        let mut b = GraphBuilder {
            inputs: vec![ValueInfo { name: input_name.to_string(), shape: input_shape.to_vec() }],
            initializers: BTreeMap::new(),
            nodes: Vec::new(),
            prefix: Vec::new(),
            syms: HashMap::new(),
            taken: HashSet::new(),
            next_const: 0,
        };
        b.syms.insert(input_name.to_string(), Sym::of_shape(input_shape.to_vec()));
        b.taken.insert(input_name.to_string());
        b
    }

    /// Describes `m` applied to value `x` under the attribute name `child` (pushes "child." on
    /// the parameter-name prefix so initializers get state_dict keys like
    /// "layer1.0.conv1.weight"). Returns the output value.
    pub fn module(&mut self, child: &str, m: &dyn Module, x: &str) -> Result<String> {
        self.prefix.push(child.to_string());
        let r = m.to_graph(self, x);
        self.prefix.pop();
        r
    }

    /// Registers a parameter/buffer of the current module as an initializer named
    /// prefix+local ("weight") and returns that name.
    pub fn param(&mut self, local: &str, t: &Tensor) -> String {
        let mut name = if self.prefix.is_empty() { local.to_string() } else { format!("{}.{local}", self.prefix.join(".")) };
        match self.initializers.get(&name) {
            // A module used twice registers the same tensor twice: keep one initializer.
            Some(old) if old.same_storage(t) && old.shape() == t.shape() => return name,
            Some(_) => name = self.unique(&name),
            None => {
                self.taken.insert(name.clone());
            }
        }
        self.add_initializer(&name, t.detach());
        name
    }

    /// Registers an anonymous constant (e.g. a Reshape shape) and returns its unique name.
    pub fn constant(&mut self, t: Tensor) -> String {
        let name = loop {
            let n = format!("onnx::Constant_{}", self.next_const);
            self.next_const += 1;
            if self.taken.insert(n.clone()) {
                break n;
            }
        };
        self.add_initializer(&name, t);
        name
    }

    /// Appends a node with one output; returns the new output value's unique name.
    pub fn node(&mut self, op: GraphOp, inputs: &[&str]) -> Result<String> {
        let mut v = self.node_n(op, inputs, 1)?;
        v.pop().ok_or_else(|| Error::invalid("graph", "node produced no output"))
    }

    /// Appends a node with n outputs (Split).
    pub fn node_n(&mut self, mut op: GraphOp, inputs: &[&str], n: usize) -> Result<Vec<String>> {
        op.round_float_attributes();
        let path: String = self.prefix.iter().map(|p| format!("/{p}")).collect();
        let name = self.unique(&format!("{path}/{}", op.name()));
        let outputs: Vec<String> = (0..n).map(|i| self.unique(&format!("{name}_output_{i}"))).collect();
        let node = Node { name, op, inputs: inputs.iter().map(|s| s.to_string()).collect(), outputs };
        let mut ins = Vec::with_capacity(inputs.len());
        for v in inputs {
            if v.is_empty() {
                ins.push(None);
                continue;
            }
            let s = self.syms.get(*v).ok_or_else(|| node_error(&node, super::exec::E(format!("input '{v}' is not defined"))))?;
            ins.push(Some(s));
        }
        let outs = infer_node(&node.op, &ins, n).map_err(|e| node_error(&node, e))?;
        for (o, s) in node.outputs.iter().zip(outs) {
            self.syms.insert(o.clone(), s);
        }
        let out = node.outputs.clone();
        self.nodes.push(node);
        Ok(out)
    }

    /// The inferred shape of value `v` (None dims are dynamic), if `v` exists.
    pub fn shape_of(&self, v: &str) -> Option<Vec<Option<usize>>> {
        self.syms.get(v).map(|s| s.shape.clone())
    }

    /// The graph with `outputs` as its outputs.
    pub fn finish(self, outputs: &[&str]) -> Graph {
        Graph {
            inputs: self.inputs,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            initializers: self.initializers,
            nodes: self.nodes,
        }
    }

    fn add_initializer(&mut self, name: &str, t: Tensor) {
        self.syms.insert(name.to_string(), Sym::constant(&t));
        self.initializers.insert(name.to_string(), t);
    }

    fn unique(&mut self, base: &str) -> String {
        if self.taken.insert(base.to_string()) {
            return base.to_string();
        }
        let mut i = 1;
        loop {
            let n = format!("{base}_{i}");
            if self.taken.insert(n.clone()) {
                return n;
            }
            i += 1;
        }
    }
}

/// Describes a whole module (its eval-mode forward): input value "input", output "output".
pub fn module_to_graph(m: &dyn Module, input_shape: &[Option<usize>]) -> Result<Graph> {
    let mut b = GraphBuilder::new("input", input_shape);
    let mut y = m.to_graph(&mut b, "input")?;
    if !b.nodes.iter().any(|n| n.outputs.contains(&y)) {
        // The module is the identity (or returns a constant): the output still needs a node.
        y = b.node(GraphOp::Identity, &[&y])?;
    }
    let mut g = b.finish(&[&y]);
    g.rename_value(&y, "output");
    Ok(g)
}

impl GraphBuilder {
    /// A 1-D int64 constant (shapes, axes, pads).
    pub fn const_i64(&mut self, v: &[i64]) -> Result<String> {
        Ok(self.constant(Tensor::from_vec(v.to_vec(), &[v.len()])?))
    }
    /// A 0-d float32 constant (Clip bounds, scalar multipliers).
    pub fn const_f32(&mut self, v: f32) -> String {
        self.constant(Tensor::scalar(v))
    }
    /// The rank of value `v`, or an error naming what is being described.
    pub fn rank_of(&self, v: &str, what: &str) -> Result<usize> {
        self.shape_of(v).map(|s| s.len()).ok_or_else(|| Error::invalid("to_graph", format!("{what}: unknown value '{v}'")))
    }
    /// ONNX Pad `pads` for a rank-`rank` tensor padded on its last two dims by
    /// [top, left, bottom, right] ([x1_begin, x2_begin, …, x1_end, x2_end, …] order).
    pub fn pads_last2(&mut self, rank: usize, tlbr: [i64; 4]) -> Result<String> {
        if rank < 2 {
            return Err(Error::invalid("to_graph", format!("cannot pad the last two dims of a rank-{rank} value")));
        }
        let mut p = vec![0i64; 2 * rank];
        p[rank - 2] = tlbr[0];
        p[rank - 1] = tlbr[1];
        p[2 * rank - 2] = tlbr[2];
        p[2 * rank - 1] = tlbr[3];
        self.const_i64(&p)
    }
}
