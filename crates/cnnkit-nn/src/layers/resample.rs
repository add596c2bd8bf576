//! Upsample (nearest, bilinear), PixelShuffle, ChannelShuffle, ZeroPad2d.

use crate::graph::{CoordMode, GraphBuilder, GraphOp, NearestMode, PadKind, ResizeMode};
use crate::module::Module;
use cnnkit_core::{Error, PadMode, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsampleMode {
    Nearest,
    Bilinear,
}

/// `nn.Upsample` / `F.interpolate` on (N, C, H, W): to a fixed size or by a scale factor
/// (output = floor(input·scale); source coordinates use 1/scale, as PyTorch's default
/// recompute_scale_factor=None). Bilinear honours align_corners (default false).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Upsample {
    pub size: Option<(usize, usize)>,
    pub scale_factor: Option<(f64, f64)>,
    pub mode: UpsampleMode,
    pub align_corners: bool,
}

impl Upsample {
    pub fn scale(factor: f64, mode: UpsampleMode) -> Self {
        Upsample { size: None, scale_factor: Some((factor, factor)), mode, align_corners: false }
    }
    pub fn size(h: usize, w: usize, mode: UpsampleMode) -> Self {
        Upsample { size: Some((h, w)), scale_factor: None, mode, align_corners: false }
    }
    pub fn align_corners(mut self, a: bool) -> Self {
        self.align_corners = a;
        self
    }
}

/// `F.interpolate(x, size | scale_factor, mode, align_corners)`.
pub fn interpolate(
    x: &Tensor,
    size: Option<(usize, usize)>,
    scale_factor: Option<(f64, f64)>,
    mode: UpsampleMode,
    align_corners: bool,
) -> Result<Tensor> {
    if x.ndim() != 4 {
        return Err(Error::bad_shape("interpolate", x.shape(), "expects (N, C, H, W)"));
    }
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let (oh, ow) = match (size, scale_factor) {
        (Some(s), None) => s,
        (None, Some((sh, sw))) if sh > 0.0 && sw > 0.0 => ((h as f64 * sh).floor() as usize, (w as f64 * sw).floor() as usize),
        _ => return Err(Error::invalid("interpolate", "give exactly one of size and a positive scale_factor")),
    };
    // A given scale_factor also sets the source coordinates (1/s, not in/out), as PyTorch's
    // default recompute_scale_factor=None does.
    match mode {
        UpsampleMode::Nearest => x.upsample_nearest2d_scaled(oh, ow, scale_factor),
        UpsampleMode::Bilinear => x.upsample_bilinear2d_scaled(oh, ow, align_corners, scale_factor),
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)
    }
    /// Resize as torch.onnx exports F.interpolate: nearest = asymmetric + floor; bilinear =
    /// linear with align_corners or pytorch_half_pixel. A scale factor goes in `scales` (so
    /// the source coordinates use it, as PyTorch does); a size goes in `sizes` = (N, C, OH, OW)
    /// with N and C taken from the input's Shape.
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let (mode, cm) = match (self.mode, self.align_corners) {
            (UpsampleMode::Nearest, _) => (ResizeMode::Nearest, CoordMode::Asymmetric),
            (UpsampleMode::Bilinear, true) => (ResizeMode::Linear, CoordMode::AlignCorners),
            (UpsampleMode::Bilinear, false) => (ResizeMode::Linear, CoordMode::PytorchHalfPixel),
        };
        let op = GraphOp::Resize { mode, coordinate_transformation_mode: cm, nearest_mode: NearestMode::Floor };
        match (self.size, self.scale_factor) {
            (None, Some((sh, sw))) => {
                let s = g.constant(Tensor::from_vec(vec![1.0f32, 1.0, sh as f32, sw as f32], &[4])?);
                g.node(op, &[x, "", &s])
            }
            (Some((oh, ow)), None) => {
                let nc = g.node(GraphOp::Shape { start: 0, end: Some(2) }, &[x])?;
                let hw = g.const_i64(&[oh as i64, ow as i64])?;
                let sizes = g.node(GraphOp::Concat { axis: 0 }, &[&nc, &hw])?;
                g.node(op, &[x, "", "", &sizes])
            }
            _ => Err(Error::invalid("to_graph", "Upsample: give exactly one of size and scale_factor")),
        }
    }
    fn describe(&self) -> String {
        format!("Upsample(size={:?}, scale_factor={:?}, mode={:?})", self.size, self.scale_factor, self.mode)
    }
}

/// (N, C·r², H, W) → (N, C, H·r, W·r) (Shi et al. 2016).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelShuffle {
    pub upscale_factor: usize,
}

impl PixelShuffle {
    pub fn new(upscale_factor: usize) -> Self {
        PixelShuffle { upscale_factor }
    }
}

impl Module for PixelShuffle {
    /// x: (*, C·r², H, W) → (*, C, H·r, W·r); any number of leading dims, as PyTorch.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let r = self.upscale_factor;
        let nd = x.ndim();
        if nd < 3 || r == 0 || !x.shape()[nd - 3].is_multiple_of(r * r) {
            return Err(Error::bad_shape("PixelShuffle", x.shape(), format!("channels must be divisible by upscale_factor²={}", r * r)));
        }
        let lead = &x.shape()[..nd - 3];
        let n: usize = lead.iter().product();
        let (c, h, w) = (x.shape()[nd - 3] / (r * r), x.shape()[nd - 2], x.shape()[nd - 1]);
        let y = x.reshape(&[n, c, r, r, h, w])?.permute(&[0, 1, 4, 2, 5, 3])?;
        y.reshape(&[lead, &[c, h * r, w * r]].concat())
    }
    /// DepthToSpace in CRD order is exactly pixel_shuffle (ONNX DepthToSpace spec).
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        g.node(GraphOp::DepthToSpace { blocksize: self.upscale_factor, crd: true }, &[x])
    }
}

/// Interleaves channel groups (ShuffleNet, Zhang et al. 2018). x: (N, C, H, W).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelShuffle {
    pub groups: usize,
}

impl ChannelShuffle {
    pub fn new(groups: usize) -> Self {
        ChannelShuffle { groups }
    }
}

/// `channel_shuffle(x, groups)` as torchvision's ShuffleNetV2 does it. x: (N, C, *) with at
/// least one trailing dim, as F.channel_shuffle.
pub fn channel_shuffle(x: &Tensor, groups: usize) -> Result<Tensor> {
    if x.ndim() < 3 || groups == 0 || !x.shape()[1].is_multiple_of(groups) {
        return Err(Error::bad_shape("ChannelShuffle", x.shape(), format!("channels must be divisible by groups={groups}")));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let rest: usize = x.shape()[2..].iter().product();
    x.reshape(&[n, groups, c / groups, rest])?.transpose(1, 2)?.reshape(x.shape())
}

impl Module for ChannelShuffle {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        channel_shuffle(x, self.groups)
    }
    /// Reshape (N, g, C/g, rest) → Transpose(0, 2, 1, 3) → Reshape back to the input's shape.
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let s = g.shape_of(x).unwrap_or_default();
        let c = match s.get(1) {
            Some(Some(c)) if s.len() >= 3 && self.groups > 0 && c % self.groups == 0 => *c,
            _ => {
                return Err(Error::invalid(
                    "to_graph",
                    format!("ChannelShuffle: input {s:?} needs static channels divisible by {}", self.groups),
                ))
            }
        };
        let grouped = g.const_i64(&[0, self.groups as i64, (c / self.groups) as i64, -1])?;
        let t = g.node(GraphOp::Reshape { allowzero: false }, &[x, &grouped])?;
        let t = g.node(GraphOp::Transpose { perm: vec![0, 2, 1, 3] }, &[&t])?;
        let back = g.node(GraphOp::Shape { start: 0, end: None }, &[x])?;
        g.node(GraphOp::Reshape { allowzero: false }, &[&t, &back])
    }
}

/// Zero padding (left, right, top, bottom) of the last two dims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroPad2d {
    pub padding: [isize; 4],
}

impl ZeroPad2d {
    pub fn new(p: usize) -> Self {
        let p = p as isize;
        ZeroPad2d { padding: [p, p, p, p] }
    }
    pub fn ltrb(left: isize, right: isize, top: isize, bottom: isize) -> Self {
        ZeroPad2d { padding: [left, right, top, bottom] }
    }
}

impl Module for ZeroPad2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.pad2d(self.padding, PadMode::Constant, 0.0)
    }
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let [l, r, t, b] = self.padding;
        let rank = g.rank_of(x, "ZeroPad2d")?;
        let p = g.pads_last2(rank, [t as i64, l as i64, b as i64, r as i64])?;
        g.node(GraphOp::Pad { mode: PadKind::Constant }, &[x, &p])
    }
    fn describe(&self) -> String {
        format!("ZeroPad2d({:?})", self.padding)
    }
}
