//! Activation layers. Each wraps the Tensor method of the same name; arguments and defaults
//! are PyTorch's.

use crate::graph::{GraphBuilder, GraphOp};
use crate::module::Module;
use cnnkit_core::{DType, Result, Tensor};

macro_rules! activation {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty = $def:expr),* } |$s:ident, $x:ident| $body:expr,
     |$gs:ident, $g:ident, $gx:ident| $graph:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub struct $name {
            $(pub $field: $ty,)*
            // Keeps the layer non-zero-sized so forward hooks can tell instances apart.
            _id: u8,
        }
        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $def,)* _id: 0 }
            }
        }
        impl $name {
            pub fn new($($field: $ty),*) -> Self {
                $name { $($field,)* _id: 0 }
            }
        }
        impl Module for $name {
            fn forward(&self, $x: &Tensor) -> Result<Tensor> {
                let $s = self;
                $body
            }
            fn fusable_activation(&self) -> Option<cnnkit_core::Epilogue> {
                fusable(stringify!($name))
            }
            fn to_graph(&self, $g: &mut GraphBuilder, $gx: &str) -> Result<String> {
                let $gs = self;
                $graph
            }
            fn describe(&self) -> String {
                let fields: Vec<String> = vec![$(format!("{}={:?}", stringify!($field), self.$field)),*];
                format!("{}({})", stringify!($name), fields.join(", "))
            }
        }
    };
}

/// The activations a preceding convolution or batch norm can apply in its own pass.
fn fusable(layer: &str) -> Option<cnnkit_core::Epilogue> {
    match layer {
        "ReLU" => Some(cnnkit_core::Epilogue::Relu),
        "ReLU6" => Some(cnnkit_core::Epilogue::Clamp(0.0, 6.0)),
        _ => None,
    }
}

activation!(/// max(0, x). x: any shape.
    ReLU {} |_s, x| x.relu(),
    |_s, g, x| g.node(GraphOp::Relu, &[x]));
activation!(/// min(max(0, x), 6).
ReLU6 {} |_s, x| x.relu6(),
|_s, g, x| {
    let (lo, hi) = (g.const_f32(0.0), g.const_f32(6.0));
    g.node(GraphOp::Clip, &[x, &lo, &hi])
});
activation!(/// x for x > 0, negative_slope·x otherwise (default slope 0.01).
    LeakyReLU { negative_slope: f64 = 0.01 } |s, x| x.leaky_relu(s.negative_slope),
    |s, g, x| g.node(GraphOp::LeakyRelu { alpha: s.negative_slope }, &[x]));
activation!(/// ELU with alpha (default 1.0).
    ELU { alpha: f64 = 1.0 } |s, x| x.elu(s.alpha),
    |s, g, x| g.node(GraphOp::Elu { alpha: s.alpha }, &[x]));
activation!(/// SELU (Klambauer et al. 2017).
    SELU {} |_s, x| x.selu(),
    |_s, g, x| g.node(GraphOp::Selu { alpha: 1.673_263_242_354_377_3, gamma: 1.050_700_987_355_480_5 }, &[x]));
activation!(/// GELU; approximate_tanh = PyTorch's approximate="tanh" (default "none").
    GELU { approximate_tanh: bool = false } |s, x| x.gelu(s.approximate_tanh),
    |s, g, x| gelu_graph(g, x, s.approximate_tanh));
activation!(/// x·σ(x) (a.k.a. swish).
SiLU {} |_s, x| x.silu(),
|_s, g, x| {
    let s = g.node(GraphOp::Sigmoid, &[x])?;
    g.node(GraphOp::Mul, &[x, &s])
});
activation!(/// x·tanh(softplus(x)).
Mish {} |_s, x| x.mish(),
|_s, g, x| {
    let sp = g.node(GraphOp::Softplus, &[x])?;
    let t = g.node(GraphOp::Tanh, &[&sp])?;
    g.node(GraphOp::Mul, &[x, &t])
});
activation!(/// x·relu6(x + 3)/6 (MobileNetV3).
    Hardswish {} |_s, x| x.hardswish(),
    |_s, g, x| g.node(GraphOp::HardSwish, &[x]));
activation!(/// relu6(x + 3)/6.
    Hardsigmoid {} |_s, x| x.hardsigmoid(),
    |_s, g, x| g.node(GraphOp::HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5 }, &[x]));
activation!(/// 1 / (1 + e^−x).
    Sigmoid {} |_s, x| x.sigmoid(),
    |_s, g, x| g.node(GraphOp::Sigmoid, &[x]));
activation!(/// tanh(x).
    Tanh {} |_s, x| x.tanh(),
    |_s, g, x| g.node(GraphOp::Tanh, &[x]));
activation!(/// softmax along dim (PyTorch requires the dim; −1 is typical).
    Softmax { dim: isize = -1 } |s, x| x.softmax(s.dim),
    |s, g, x| g.node(GraphOp::Softmax { axis: s.dim as i64 }, &[x]));
activation!(/// log-softmax along dim.
    LogSoftmax { dim: isize = -1 } |s, x| x.log_softmax(s.dim),
    |s, g, x| g.node(GraphOp::LogSoftmax { axis: s.dim as i64 }, &[x]));

/// GELU as ONNX ops older than opset 20's Gelu: x·½·(1 + erf(x/√2)), or with tanh,
/// x·½·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
fn gelu_graph(g: &mut GraphBuilder, x: &str, approximate_tanh: bool) -> Result<String> {
    let one = g.const_f32(1.0);
    let half = g.const_f32(0.5);
    let inner = if approximate_tanh {
        let (three, k, c) = (g.const_f32(3.0), g.const_f32(0.044_715), g.const_f32((2.0 / std::f64::consts::PI).sqrt() as f32));
        let cube = g.node(GraphOp::Pow, &[x, &three])?;
        let t = g.node(GraphOp::Mul, &[&cube, &k])?;
        let t = g.node(GraphOp::Add, &[x, &t])?;
        let t = g.node(GraphOp::Mul, &[&t, &c])?;
        g.node(GraphOp::Tanh, &[&t])?
    } else {
        let r2 = g.const_f32(std::f64::consts::SQRT_2 as f32);
        let t = g.node(GraphOp::Div, &[x, &r2])?;
        g.node(GraphOp::Erf, &[&t])?
    };
    let t = g.node(GraphOp::Add, &[&inner, &one])?;
    let t = g.node(GraphOp::Mul, &[x, &t])?;
    g.node(GraphOp::Mul, &[&t, &half])
}

/// Parametric ReLU: max(0, x) + a·min(0, x) with learned a, one per channel (dim 1) or shared.
/// weight: (num_parameters), initialised to `init` (default 0.25).
pub struct PReLU {
    pub weight: Tensor,
}

impl PReLU {
    pub fn new(num_parameters: usize, init: f64) -> Result<Self> {
        let weight = Tensor::full(&[num_parameters.max(1)], init, DType::F32);
        weight.set_requires_grad(true)?;
        Ok(PReLU { weight })
    }
}

impl Default for PReLU {
    fn default() -> Self {
        let weight = Tensor::full(&[1], 0.25, DType::F32);
        let _ = weight.set_requires_grad(true);
        PReLU { weight }
    }
}

impl Module for PReLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.weight.numel();
        // Channel-wise weights broadcast along dim 1: (C) → (C, 1, …, 1).
        let w = if n > 1 && x.ndim() >= 2 {
            let mut s = vec![n];
            s.extend(std::iter::repeat_n(1, x.ndim() - 2));
            self.weight.reshape(&s)?
        } else {
            self.weight.clone()
        };
        let pos = x.relu()?;
        let neg = x.sub(&pos)?; // min(0, x)
        pos.add(&neg.mul(&w)?)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".into(), self.weight.clone())]
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let w = g.param("weight", &self.weight);
        let r = g.rank_of(x, "PReLU")?;
        // ONNX PRelu broadcasts the slope numpy-style, so per-channel slopes become (C, 1, …, 1).
        let slope = if self.weight.numel() > 1 && r > 2 {
            let axes: Vec<i64> = (1..(r - 1) as i64).collect();
            let a = g.const_i64(&axes)?;
            g.node(GraphOp::Unsqueeze, &[&w, &a])?
        } else {
            w
        };
        g.node(GraphOp::PRelu, &[x, &slope])
    }
    fn describe(&self) -> String {
        format!("PReLU(num_parameters={})", self.weight.numel())
    }
}
