//! Pooling layers: MaxPool2d, MaxUnpool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d.

use crate::graph::{GraphBuilder, GraphOp};
use crate::module::Module;
use cnnkit_core::{Error, Pool2dArgs, Result, Tensor};

/// Max pooling. x: (N, C, H, W) → (N, C, OH, OW). Defaults: stride = kernel, padding 0,
/// dilation 1, ceil_mode false. `forward_with_indices` is `return_indices=True`.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    pub args: Pool2dArgs,
}

impl MaxPool2d {
    pub fn new(kernel_size: usize) -> Self {
        MaxPool2d { args: Pool2dArgs::new(kernel_size) }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.args.stride = (s, s);
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.args.padding = (p, p);
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.args.dilation = (d, d);
        self
    }
    pub fn ceil_mode(mut self, c: bool) -> Self {
        self.args.ceil_mode = c;
        self
    }
    /// (values, indices into each input plane) for MaxUnpool2d.
    pub fn forward_with_indices(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        x.max_pool2d_with_indices(self.args)
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.max_pool2d(self.args)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let a = &self.args;
        let op = GraphOp::MaxPool {
            kernel_shape: [a.kernel.0, a.kernel.1],
            strides: [a.stride.0, a.stride.1],
            pads: [a.padding.0, a.padding.1, a.padding.0, a.padding.1],
            dilations: [a.dilation.0, a.dilation.1],
            ceil_mode: a.ceil_mode,
        };
        g.node(op, &[x])
    }
    fn describe(&self) -> String {
        let a = &self.args;
        format!(
            "MaxPool2d(kernel_size={:?}, stride={:?}, padding={:?}, dilation={:?}, ceil_mode={})",
            a.kernel, a.stride, a.padding, a.dilation, a.ceil_mode
        )
    }
}

/// Inverse of MaxPool2d: puts values back at their indices, zeros elsewhere.
/// x, indices: (N, C, H, W) → (N, C, OH, OW) with OH = (H−1)·stride − 2·padding + kernel
/// unless an explicit output size is given.
#[derive(Clone, Copy, Debug)]
pub struct MaxUnpool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl MaxUnpool2d {
    pub fn new(kernel: usize) -> Self {
        MaxUnpool2d { kernel, stride: kernel, padding: 0 }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    /// `output_size` overrides the default (OH, OW).
    pub fn forward_with(&self, x: &Tensor, indices: &Tensor, output_size: Option<(usize, usize)>) -> Result<Tensor> {
        let nd = x.ndim();
        if nd < 3 {
            return Err(Error::bad_shape("MaxUnpool2d", x.shape(), "expects (N, C, H, W)"));
        }
        let def = |n: usize| ((n - 1) * self.stride + self.kernel).checked_sub(2 * self.padding);
        let out = match output_size {
            Some(o) => o,
            None => match (def(x.shape()[nd - 2]), def(x.shape()[nd - 1])) {
                (Some(h), Some(w)) => (h, w),
                _ => return Err(Error::invalid("MaxUnpool2d", "padding too large")),
            },
        };
        x.max_unpool2d(indices, out)
    }
}

/// Average pooling. x: (N, C, H, W) → (N, C, OH, OW). Defaults: stride = kernel, padding 0,
/// ceil_mode false, count_include_pad true.
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d {
    pub args: Pool2dArgs,
    pub count_include_pad: bool,
}

impl AvgPool2d {
    pub fn new(kernel_size: usize) -> Self {
        AvgPool2d { args: Pool2dArgs::new(kernel_size), count_include_pad: true }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.args.stride = (s, s);
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.args.padding = (p, p);
        self
    }
    pub fn ceil_mode(mut self, c: bool) -> Self {
        self.args.ceil_mode = c;
        self
    }
    pub fn count_include_pad(mut self, c: bool) -> Self {
        self.count_include_pad = c;
        self
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.avg_pool2d(self.args, self.count_include_pad)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let a = &self.args;
        let op = GraphOp::AveragePool {
            kernel_shape: [a.kernel.0, a.kernel.1],
            strides: [a.stride.0, a.stride.1],
            pads: [a.padding.0, a.padding.1, a.padding.0, a.padding.1],
            ceil_mode: a.ceil_mode,
            count_include_pad: self.count_include_pad,
        };
        g.node(op, &[x])
    }
    fn describe(&self) -> String {
        format!("AvgPool2d(kernel_size={:?}, stride={:?}, padding={:?})", self.args.kernel, self.args.stride, self.args.padding)
    }
}

/// Adaptive pooling as ONNX can say it: a 1×1 output is the global pool; an output size that
/// divides the (static) input size gives equal windows, i.e. a plain pool with kernel = stride
/// = input/output; anything else has overlapping, uneven windows and is an error.
fn adaptive_graph(g: &mut GraphBuilder, x: &str, out: (usize, usize), max: bool) -> Result<String> {
    let what = if max { "AdaptiveMaxPool2d" } else { "AdaptiveAvgPool2d" };
    if out == (1, 1) {
        return g.node(if max { GraphOp::GlobalMaxPool } else { GraphOp::GlobalAveragePool }, &[x]);
    }
    let s = g.shape_of(x).unwrap_or_default();
    let (h, w) = match s.as_slice() {
        [_, _, Some(h), Some(w)] => (*h, *w),
        _ => return Err(Error::invalid("to_graph", format!("{what}: needs a 4-D input with static H and W, got {s:?}"))),
    };
    if out.0 == 0 || out.1 == 0 || h % out.0 != 0 || w % out.1 != 0 {
        return Err(Error::invalid(
            "to_graph",
            format!("{what}: output {out:?} does not divide the input ({h}, {w}); ONNX has no adaptive pooling"),
        ));
    }
    let (kh, kw) = (h / out.0, w / out.1);
    let op = if max {
        GraphOp::MaxPool { kernel_shape: [kh, kw], strides: [kh, kw], pads: [0; 4], dilations: [1, 1], ceil_mode: false }
    } else {
        GraphOp::AveragePool { kernel_shape: [kh, kw], strides: [kh, kw], pads: [0; 4], ceil_mode: false, count_include_pad: false }
    };
    g.node(op, &[x])
}

/// x: (N, C, H, W) → (N, C, OH, OW), windows chosen adaptively.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveAvgPool2d {
    pub output_size: (usize, usize),
}

impl AdaptiveAvgPool2d {
    pub fn new(output_size: (usize, usize)) -> Self {
        AdaptiveAvgPool2d { output_size }
    }
}

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.adaptive_avg_pool2d(self.output_size)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        adaptive_graph(g, x, self.output_size, false)
    }
    fn describe(&self) -> String {
        format!("AdaptiveAvgPool2d(output_size={:?})", self.output_size)
    }
}

/// x: (N, C, H, W) → (N, C, OH, OW), the maximum of each adaptive window.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveMaxPool2d {
    pub output_size: (usize, usize),
}

impl AdaptiveMaxPool2d {
    pub fn new(output_size: (usize, usize)) -> Self {
        AdaptiveMaxPool2d { output_size }
    }
    pub fn forward_with_indices(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        x.adaptive_max_pool2d_with_indices(self.output_size)
    }
}

impl Module for AdaptiveMaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_indices(x)?.0)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        adaptive_graph(g, x, self.output_size, true)
    }
    fn describe(&self) -> String {
        format!("AdaptiveMaxPool2d(output_size={:?})", self.output_size)
    }
}
