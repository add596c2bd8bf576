//! Upsample (nearest, bilinear), PixelShuffle, ChannelShuffle, ZeroPad2d.

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
    fn describe(&self) -> String {
        format!("ZeroPad2d({:?})", self.padding)
    }
}
