//! Activation layers. Each wraps the Tensor method of the same name; arguments and defaults
//! are PyTorch's.

use crate::module::Module;
use cnnkit_core::{DType, Result, Tensor};

macro_rules! activation {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty = $def:expr),* } |$s:ident, $x:ident| $body:expr) => {
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
            fn describe(&self) -> String {
                let fields: Vec<String> = vec![$(format!("{}={:?}", stringify!($field), self.$field)),*];
                format!("{}({})", stringify!($name), fields.join(", "))
            }
        }
    };
}

activation!(/// max(0, x). x: any shape.
    ReLU {} |_s, x| x.relu());
activation!(/// min(max(0, x), 6).
    ReLU6 {} |_s, x| x.relu6());
activation!(/// x for x > 0, negative_slope·x otherwise (default slope 0.01).
    LeakyReLU { negative_slope: f64 = 0.01 } |s, x| x.leaky_relu(s.negative_slope));
activation!(/// ELU with alpha (default 1.0).
    ELU { alpha: f64 = 1.0 } |s, x| x.elu(s.alpha));
activation!(/// SELU (Klambauer et al. 2017).
    SELU {} |_s, x| x.selu());
activation!(/// GELU; approximate_tanh = PyTorch's approximate="tanh" (default "none").
    GELU { approximate_tanh: bool = false } |s, x| x.gelu(s.approximate_tanh));
activation!(/// x·σ(x) (a.k.a. swish).
    SiLU {} |_s, x| x.silu());
activation!(/// x·tanh(softplus(x)).
    Mish {} |_s, x| x.mish());
activation!(/// x·relu6(x + 3)/6 (MobileNetV3).
    Hardswish {} |_s, x| x.hardswish());
activation!(/// relu6(x + 3)/6.
    Hardsigmoid {} |_s, x| x.hardsigmoid());
activation!(/// 1 / (1 + e^−x).
    Sigmoid {} |_s, x| x.sigmoid());
activation!(/// tanh(x).
    Tanh {} |_s, x| x.tanh());
activation!(/// softmax along dim (PyTorch requires the dim; −1 is typical).
    Softmax { dim: isize = -1 } |s, x| x.softmax(s.dim));
activation!(/// log-softmax along dim.
    LogSoftmax { dim: isize = -1 } |s, x| x.log_softmax(s.dim));

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
    fn describe(&self) -> String {
        format!("PReLU(num_parameters={})", self.weight.numel())
    }
}
