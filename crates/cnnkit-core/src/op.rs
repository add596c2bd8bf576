//! The Op enum: every differentiable primitive, with what its backward rule needs.
//! All backward rules live in `backprop.rs`, one match arm per variant and no wildcard,
//! so a new op without a gradient does not compile.

use crate::Tensor;
use cnnkit_kernels::conv::ConvGeom;
use cnnkit_kernels::pool::PoolGeom;
use std::sync::Arc;

/// Elementwise functions of one tensor (some with constant parameters).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Recip,
    Relu,
    LeakyRelu(f64),
    /// PyTorch's ELU family: scale·(x > 0 ? x : alpha·(exp(x·input_scale) − 1)); SELU is one.
    Elu {
        alpha: f64,
        scale: f64,
        input_scale: f64,
    },
    /// Exact GELU, x·Φ(x).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    Silu,
    Mish,
    Hardswish,
    Hardsigmoid,
    /// Clamp with the zero-gradient boundary of nn.Hardtanh / ReLU6.
    Hardtanh(f64, f64),
    Softplus {
        beta: f64,
        threshold: f64,
    },
    AddScalar(f64),
    MulScalar(f64),
    PowScalar(f64),
}

/// Elementwise functions of two tensors, with broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
}

/// A user-defined differentiable function (`torch.autograd.Function`).
/// Guided backprop uses one to replace ReLU's backward.
pub trait CustomOp: Send + Sync {
    fn name(&self) -> &str;
    /// Computes the output from the inputs (runs with grad recording off).
    fn forward(&self, inputs: &[Tensor]) -> crate::Result<Tensor>;
    /// Gradients for each input (None: no gradient), given the output and its gradient.
    fn backward(&self, inputs: &[Tensor], output: &Tensor, grad_output: &Tensor) -> crate::Result<Vec<Option<Tensor>>>;
}

/// How a tensor was computed. Shapes are those of the op's inputs; the output is the node.
pub enum Op {
    Unary {
        x: Tensor,
        op: UnaryOp,
    },
    Binary {
        a: Tensor,
        b: Tensor,
        op: BinaryOp,
    },
    /// clamp(x, min, max); gradient passes where min ≤ x ≤ max.
    Clamp {
        x: Tensor,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// where(cond, a, b); cond is a u8 mask and gets no gradient.
    Where {
        cond: Tensor,
        a: Tensor,
        b: Tensor,
    },
    /// Float dtype conversion.
    Cast {
        x: Tensor,
    },
    /// Sum over `dims`, keeping them as size 1.
    Sum {
        x: Tensor,
        dims: Vec<usize>,
    },
    /// max/min along `dim` (kept as size 1); idx holds the winners, shape of the output.
    SelectDim {
        x: Tensor,
        dim: usize,
        idx: Tensor,
    },
    Reshape {
        x: Tensor,
    },
    Permute {
        x: Tensor,
        perm: Vec<usize>,
    },
    Expand {
        x: Tensor,
    },
    Narrow {
        x: Tensor,
        dim: usize,
        start: usize,
    },
    Copy {
        x: Tensor,
    },
    Cat {
        xs: Vec<Tensor>,
        dim: usize,
    },
    IndexSelect {
        x: Tensor,
        dim: usize,
        idx: Tensor,
    },
    Gather {
        x: Tensor,
        dim: usize,
        idx: Tensor,
    },
    /// scatter (add=false) or scatter_add (add=true) of src into x along dim.
    Scatter {
        x: Tensor,
        dim: usize,
        idx: Tensor,
        src: Tensor,
        add: bool,
    },
    /// Per (H, W) plane, output pixel j takes input pixel map[j] (−1: a constant).
    /// Padding in every mode and nearest upsampling are this op.
    PlaneMap {
        x: Tensor,
        map: Arc<Vec<i64>>,
    },
    /// a (…, m, k) @ b (…, k, n) with broadcast batch dims.
    MatMul {
        a: Tensor,
        b: Tensor,
    },
    /// act(conv(x, w) + b): `act` is the activation fused into the convolution's epilogue
    /// (`Tensor::conv2d_act`; `Epilogue::None` for a plain convolution). Its derivative is
    /// read off the output (ReLU: y > 0; clamp: lo < y < hi), so no pre-activation is kept.
    Conv2d {
        x: Tensor,
        w: Tensor,
        b: Option<Tensor>,
        geom: ConvGeom,
        act: cnnkit_kernels::conv::Epilogue,
    },
    /// Transposed convolution: the adjoint of the convolution described by `geom`,
    /// whose input is this op's output. x: (N, C_in, H, W); w: (C_in, C_out/G, KH, KW).
    ConvTranspose2d {
        x: Tensor,
        w: Tensor,
        b: Option<Tensor>,
        geom: ConvGeom,
    },
    /// Max pooling (plain or adaptive): output j of each plane came from input idx[j].
    MaxPool {
        x: Tensor,
        idx: Arc<Vec<i64>>,
    },
    /// MaxUnpool2d: input j of each plane goes to output idx[j].
    MaxUnpool {
        x: Tensor,
        idx: Tensor,
    },
    AvgPool2d {
        x: Tensor,
        geom: PoolGeom,
        count_include_pad: bool,
    },
    AdaptiveAvgPool2d {
        x: Tensor,
    },
    /// Batch normalisation over (N, C, *): per-channel mean and 1/std used, affine optional.
    /// act(batch_norm(x)): `act` fused into the normalising pass (`Tensor::batch_norm_act`;
    /// `Epilogue::None` for plain batch norm), its derivative read off the output.
    BatchNorm {
        x: Tensor,
        w: Option<Tensor>,
        b: Option<Tensor>,
        mean: Arc<Vec<f64>>,
        invstd: Arc<Vec<f64>>,
        training: bool,
        act: cnnkit_kernels::conv::Epilogue,
    },
    Softmax {
        x: Tensor,
        dim: usize,
        log: bool,
    },
    /// Bilinear resize of the last two dims; `scales` is F.interpolate's scale_factor, if given.
    Bilinear {
        x: Tensor,
        align_corners: bool,
        scales: Option<(f64, f64)>,
    },
    Custom {
        f: Arc<dyn CustomOp>,
        inputs: Vec<Tensor>,
    },
}

impl Op {
    /// The tensors this op read, in order (those that may receive gradients).
    pub fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Unary { x, .. }
            | Op::Clamp { x, .. }
            | Op::Cast { x }
            | Op::Sum { x, .. }
            | Op::SelectDim { x, .. }
            | Op::Reshape { x }
            | Op::Permute { x, .. }
            | Op::Expand { x }
            | Op::Narrow { x, .. }
            | Op::Copy { x }
            | Op::IndexSelect { x, .. }
            | Op::Gather { x, .. }
            | Op::PlaneMap { x, .. }
            | Op::MaxPool { x, .. }
            | Op::MaxUnpool { x, .. }
            | Op::AvgPool2d { x, .. }
            | Op::AdaptiveAvgPool2d { x }
            | Op::Softmax { x, .. }
            | Op::Bilinear { x, .. } => vec![x],
            Op::Binary { a, b, .. } | Op::MatMul { a, b } => vec![a, b],
            Op::Where { a, b, .. } => vec![a, b],
            Op::Scatter { x, src, .. } => vec![x, src],
            Op::Cat { xs, .. } => xs.iter().collect(),
            Op::Conv2d { x, w, b, .. } | Op::ConvTranspose2d { x, w, b, .. } => {
                let mut v = vec![x, w];
                v.extend(b.iter());
                v
            }
            Op::BatchNorm { x, w, b, .. } => {
                let mut v = vec![x];
                v.extend(w.iter());
                v.extend(b.iter());
                v
            }
            Op::Custom { inputs, .. } => inputs.iter().collect(),
        }
    }
}
