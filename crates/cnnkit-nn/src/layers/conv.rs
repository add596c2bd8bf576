//! Convolution layers: Conv1d, Conv2d, ConvTranspose2d (torch.nn semantics and defaults).

use crate::graph::{GraphBuilder, GraphOp, PadKind};
use crate::init::default_weight_and_bias;
use crate::module::Module;
use cnnkit_core::random::with_default_generator;
use cnnkit_core::{Conv2dArgs, DType, Epilogue, Error, Generator, PadMode, Result, Tensor};

/// Conv padding: explicit amounts, or PyTorch's strings "same" / "valid".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    Explicit(usize, usize),
    Same,
    Valid,
}

/// nn.Conv2d's arguments with its defaults (stride 1, padding 0, dilation 1, groups 1,
/// bias true, padding_mode "zeros").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv2dConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: (usize, usize),
    pub stride: (usize, usize),
    pub padding: Padding,
    pub dilation: (usize, usize),
    pub groups: usize,
    pub bias: bool,
    pub padding_mode: PadMode,
}

impl Conv2dConfig {
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel_size: (kernel_size, kernel_size),
            stride: (1, 1),
            padding: Padding::Explicit(0, 0),
            dilation: (1, 1),
            groups: 1,
            bias: true,
            padding_mode: PadMode::Constant,
        }
    }
    pub fn kernel_hw(mut self, kh: usize, kw: usize) -> Self {
        self.kernel_size = (kh, kw);
        self
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    pub fn stride_hw(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = Padding::Explicit(p, p);
        self
    }
    pub fn padding_hw(mut self, ph: usize, pw: usize) -> Self {
        self.padding = Padding::Explicit(ph, pw);
        self
    }
    pub fn padding_same(mut self) -> Self {
        self.padding = Padding::Same;
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    pub fn padding_mode(mut self, m: PadMode) -> Self {
        self.padding_mode = m;
        self
    }
    fn validate(&self, op: &'static str) -> Result<()> {
        let c = self;
        if c.groups == 0 || !c.in_channels.is_multiple_of(c.groups) || !c.out_channels.is_multiple_of(c.groups) {
            return Err(Error::invalid(
                op,
                format!("groups={} must divide in_channels={} and out_channels={}", c.groups, c.in_channels, c.out_channels),
            ));
        }
        if c.kernel_size.0 == 0 || c.kernel_size.1 == 0 || c.stride.0 == 0 || c.stride.1 == 0 || c.dilation.0 == 0 || c.dilation.1 == 0 {
            return Err(Error::invalid(op, "kernel_size, stride and dilation must be positive"));
        }
        if c.padding == Padding::Same && c.stride != (1, 1) {
            return Err(Error::invalid(op, "padding='same' is not supported for strided convolutions"));
        }
        Ok(())
    }
    /// (top, bottom, left, right) zero padding this config implies.
    fn pads(&self) -> (usize, usize, usize, usize) {
        match self.padding {
            Padding::Explicit(h, w) => (h, h, w, w),
            Padding::Valid => (0, 0, 0, 0),
            Padding::Same => {
                // PyTorch: total = d·(k−1), left = total/2, the extra one goes right/bottom.
                let th = self.dilation.0 * (self.kernel_size.0 - 1);
                let tw = self.dilation.1 * (self.kernel_size.1 - 1);
                (th / 2, th - th / 2, tw / 2, tw - tw / 2)
            }
        }
    }
}

/// 2-D convolution. x: (N, C_in, H, W) → (N, C_out, OH, OW).
/// weight: (C_out, C_in/groups, KH, KW); bias: (C_out).
pub struct Conv2d {
    pub config: Conv2dConfig,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Conv2d {
    /// Initialised like PyTorch (kaiming_uniform a=√5) from the default generator.
    pub fn new(config: Conv2dConfig) -> Result<Self> {
        with_default_generator(|g| Self::new_with(config, g))
    }
    pub fn new_with(c: Conv2dConfig, g: &mut Generator) -> Result<Self> {
        c.validate("Conv2d")?;
        let weight = Tensor::zeros(&[c.out_channels, c.in_channels / c.groups, c.kernel_size.0, c.kernel_size.1], DType::F32);
        let bias = c.bias.then(|| Tensor::zeros(&[c.out_channels], DType::F32));
        default_weight_and_bias(&weight, bias.as_ref(), g)?;
        weight.set_requires_grad(true)?;
        if let Some(b) = &bias {
            b.set_requires_grad(true)?;
        }
        Ok(Conv2d { config: c, weight, bias })
    }
    fn args(&self, padding: (usize, usize)) -> Conv2dArgs {
        Conv2dArgs { stride: self.config.stride, padding, dilation: self.config.dilation, groups: self.config.groups }
    }
}

/// Shared by Conv1d and Conv2d: pad explicitly when the mode or asymmetry requires it.
fn conv_forward(
    c: &Conv2dConfig,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    args: impl Fn((usize, usize)) -> Conv2dArgs,
) -> Result<Tensor> {
    let (t, bo, l, r) = c.pads();
    if t == bo && l == r && c.padding_mode == PadMode::Constant {
        return x.conv2d(w, b, args((t, l)));
    }
    let xp = x.pad2d([l as isize, r as isize, t as isize, bo as isize], c.padding_mode, 0.0)?;
    xp.conv2d(w, b, args((0, 0)))
}

/// Conv (after a Pad node for non-zero padding modes) with a 4-D weight value `w`.
fn conv_graph(c: &Conv2dConfig, g: &mut GraphBuilder, x: &str, w: &str, b: Option<&str>, what: &str) -> Result<String> {
    let (t, bo, l, r) = c.pads();
    let (x, pads) = match c.padding_mode {
        PadMode::Constant => (x.to_string(), [t, l, bo, r]),
        mode => {
            let kind = match mode {
                PadMode::Reflect => PadKind::Reflect,
                PadMode::Replicate => PadKind::Edge,
                // ONNX Pad's "wrap" mode needs opset 19.
                _ => return Err(Error::invalid("to_graph", format!("{what}: padding_mode circular has no ONNX (opset ≤ 18) form"))),
            };
            let rank = g.rank_of(x, what)?;
            let p = g.pads_last2(rank, [t as i64, l as i64, bo as i64, r as i64])?;
            (g.node(GraphOp::Pad { mode: kind }, &[x, &p])?, [0; 4])
        }
    };
    let mut ins = vec![x.as_str(), w];
    ins.extend(b);
    let op = GraphOp::Conv {
        kernel_shape: [c.kernel_size.0, c.kernel_size.1],
        strides: [c.stride.0, c.stride.1],
        pads,
        dilations: [c.dilation.0, c.dilation.1],
        group: c.groups,
    };
    g.node(op, &ins)
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv_forward(&self.config, x, &self.weight, self.bias.as_ref(), |p| self.args(p))
    }
    /// The activation in the convolution's epilogue ([`Tensor::conv2d_act`]); not with a
    /// padding that needs a pad op first.
    fn forward_act(&self, x: &Tensor, act: Epilogue) -> Option<Result<Tensor>> {
        let (t, bo, l, r) = self.config.pads();
        (t == bo && l == r && self.config.padding_mode == PadMode::Constant)
            .then(|| x.conv2d_act(&self.weight, self.bias.as_ref(), self.args((t, l)), act))
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let w = g.param("weight", &self.weight);
        let b = self.bias.as_ref().map(|b| g.param("bias", b));
        conv_graph(&self.config, g, x, &w, b.as_deref(), "Conv2d")
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[("weight", Some(&self.weight)), ("bias", self.bias.as_ref())])
    }
    fn describe(&self) -> String {
        let c = &self.config;
        let mut s = format!("Conv2d({}, {}, kernel_size={:?}, stride={:?}", c.in_channels, c.out_channels, c.kernel_size, c.stride);
        match c.padding {
            Padding::Explicit(0, 0) => {}
            Padding::Explicit(h, w) => s += &format!(", padding=({h}, {w})"),
            Padding::Same => s += ", padding=same",
            Padding::Valid => s += ", padding=valid",
        }
        if c.dilation != (1, 1) {
            s += &format!(", dilation={:?}", c.dilation);
        }
        if c.groups != 1 {
            s += &format!(", groups={}", c.groups);
        }
        if !c.bias {
            s += ", bias=False";
        }
        s + ")"
    }
}

/// 1-D convolution. x: (N, C_in, L) → (N, C_out, OL). weight: (C_out, C_in/groups, K).
/// Runs as a 2-D convolution over a height-1 image.
pub struct Conv1d {
    pub config: Conv2dConfig,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Conv1d {
    /// `nn.Conv1d(in, out, k)` with builder options on the returned config via [`Conv1d::with_config`].
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Result<Self> {
        Self::with_config(Conv2dConfig::new(in_channels, out_channels, kernel_size))
    }
    /// Uses the width fields of `c` (kernel_size.1, stride.1, padding.1, dilation.1).
    pub fn with_config(c: Conv2dConfig) -> Result<Self> {
        with_default_generator(|g| Self::new_with(c, g))
    }
    pub fn new_with(mut c: Conv2dConfig, g: &mut Generator) -> Result<Self> {
        // Only the width axis exists; make the height axis trivial.
        c.kernel_size.0 = 1;
        c.stride.0 = 1;
        c.dilation.0 = 1;
        if let Padding::Explicit(_, w) = c.padding {
            c.padding = Padding::Explicit(0, w);
        }
        c.validate("Conv1d")?;
        let weight = Tensor::zeros(&[c.out_channels, c.in_channels / c.groups, c.kernel_size.1], DType::F32);
        let bias = c.bias.then(|| Tensor::zeros(&[c.out_channels], DType::F32));
        default_weight_and_bias(&weight, bias.as_ref(), g)?;
        weight.set_requires_grad(true)?;
        if let Some(b) = &bias {
            b.set_requires_grad(true)?;
        }
        Ok(Conv1d { config: c, weight, bias })
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.ndim() != 3 && x.ndim() != 2 {
            return Err(Error::bad_shape("Conv1d", x.shape(), "expects (N, C, L) or (C, L)"));
        }
        let batched = x.ndim() == 3;
        let x4 = if batched { x.unsqueeze(2)? } else { x.unsqueeze(1)? };
        let w4 = self.weight.unsqueeze(2)?;
        let c = &self.config;
        let y = conv_forward(c, &x4, &w4, self.bias.as_ref(), |p| Conv2dArgs {
            stride: c.stride,
            padding: (0, p.1),
            dilation: c.dilation,
            groups: c.groups,
        })?;
        if batched {
            y.squeeze(2)
        } else {
            y.squeeze(1)
        }
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[("weight", Some(&self.weight)), ("bias", self.bias.as_ref())])
    }
    /// As a 2-D convolution over a height-1 image: Unsqueeze → Conv → Squeeze.
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        if g.rank_of(x, "Conv1d")? != 3 {
            return Err(Error::invalid("to_graph", "Conv1d: only (N, C, L) inputs can be described as a graph"));
        }
        let w = g.param("weight", &self.weight);
        let b = self.bias.as_ref().map(|b| g.param("bias", b));
        let axes = g.const_i64(&[2])?;
        let w4 = g.node(GraphOp::Unsqueeze, &[&w, &axes])?;
        let x4 = g.node(GraphOp::Unsqueeze, &[x, &axes])?;
        let y = conv_graph(&self.config, g, &x4, &w4, b.as_deref(), "Conv1d")?;
        g.node(GraphOp::Squeeze, &[&y, &axes])
    }
    fn describe(&self) -> String {
        let c = &self.config;
        format!("Conv1d({}, {}, kernel_size=({},), stride=({},))", c.in_channels, c.out_channels, c.kernel_size.1, c.stride.1)
    }
}

/// nn.ConvTranspose2d's arguments (defaults: stride 1, padding 0, output_padding 0, groups 1,
/// bias true, dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub output_padding: (usize, usize),
    pub groups: usize,
    pub bias: bool,
    pub dilation: (usize, usize),
}

impl ConvTranspose2dConfig {
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        ConvTranspose2dConfig {
            in_channels,
            out_channels,
            kernel_size: (kernel_size, kernel_size),
            stride: (1, 1),
            padding: (0, 0),
            output_padding: (0, 0),
            groups: 1,
            bias: true,
            dilation: (1, 1),
        }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
    pub fn output_padding(mut self, p: usize) -> Self {
        self.output_padding = (p, p);
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

/// Transposed 2-D convolution (the adjoint of Conv2d).
/// x: (N, C_in, H, W) → (N, C_out, (H−1)·s − 2p + d·(k−1) + output_padding + 1, …).
/// weight: (C_in, C_out/groups, KH, KW); bias: (C_out).
pub struct ConvTranspose2d {
    pub config: ConvTranspose2dConfig,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl ConvTranspose2d {
    pub fn new(config: ConvTranspose2dConfig) -> Result<Self> {
        with_default_generator(|g| Self::new_with(config, g))
    }
    pub fn new_with(c: ConvTranspose2dConfig, g: &mut Generator) -> Result<Self> {
        if c.groups == 0 || !c.in_channels.is_multiple_of(c.groups) || !c.out_channels.is_multiple_of(c.groups) {
            return Err(Error::invalid(
                "ConvTranspose2d",
                format!("groups={} must divide in_channels={} and out_channels={}", c.groups, c.in_channels, c.out_channels),
            ));
        }
        let weight = Tensor::zeros(&[c.in_channels, c.out_channels / c.groups, c.kernel_size.0, c.kernel_size.1], DType::F32);
        let bias = c.bias.then(|| Tensor::zeros(&[c.out_channels], DType::F32));
        // Same rule as Conv: fan_in is computed from dim 1 of the weight (out/groups·k·k).
        default_weight_and_bias(&weight, bias.as_ref(), g)?;
        weight.set_requires_grad(true)?;
        if let Some(b) = &bias {
            b.set_requires_grad(true)?;
        }
        Ok(ConvTranspose2d { config: c, weight, bias })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        x.conv_transpose2d(
            &self.weight,
            self.bias.as_ref(),
            Conv2dArgs { stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.groups },
            c.output_padding,
        )
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let c = &self.config;
        let w = g.param("weight", &self.weight);
        let b = self.bias.as_ref().map(|b| g.param("bias", b));
        let mut ins = vec![x, w.as_str()];
        ins.extend(b.as_deref());
        let op = GraphOp::ConvTranspose {
            kernel_shape: [c.kernel_size.0, c.kernel_size.1],
            strides: [c.stride.0, c.stride.1],
            pads: [c.padding.0, c.padding.1, c.padding.0, c.padding.1],
            dilations: [c.dilation.0, c.dilation.1],
            group: c.groups,
            output_padding: [c.output_padding.0, c.output_padding.1],
        };
        g.node(op, &ins)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[("weight", Some(&self.weight)), ("bias", self.bias.as_ref())])
    }
    fn describe(&self) -> String {
        let c = &self.config;
        format!("ConvTranspose2d({}, {}, kernel_size={:?}, stride={:?})", c.in_channels, c.out_channels, c.kernel_size, c.stride)
    }
}
