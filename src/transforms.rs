//! Image transforms with torchvision's semantics, on (C, H, W) f32 tensors in [0, 1]
//! (torchvision.transforms.v2 on float tensors). Random transforms draw from a
//! `&mut Generator`, so a pipeline is deterministic under a seed.
//!
//! Matched against torchvision 0.29 by tools/gen_transform_fixtures.py (tests/transforms.rs).
//! Resize is bilinear without antialiasing (torchvision's `antialias=False`).

use crate::core::{Error, Generator, PadMode, Result, Tensor};

/// One step of a pipeline.
pub trait Transform: Send + Sync {
    /// img: (C, H, W) f32 → (C', H', W') f32.
    fn apply(&self, img: &Tensor, g: &mut Generator) -> Result<Tensor>;
}

fn chw(img: &Tensor, op: &'static str) -> Result<(usize, usize, usize)> {
    if img.ndim() != 3 {
        return Err(Error::bad_shape(op, img.shape(), "expects a (C, H, W) image"));
    }
    Ok((img.shape()[0], img.shape()[1], img.shape()[2]))
}

/// Python's round (half to even), which torchvision's center_crop uses.
fn round_half_even(v: f64) -> i64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - v.signum()) as i64
    } else {
        r as i64
    }
}

/// `F.resize(img, [h, w], antialias=False)`: bilinear, align_corners=False.
pub fn resize(img: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    chw(img, "resize")?;
    img.upsample_bilinear2d(h, w, false)
}

/// `F.crop(img, top, left, h, w)`; areas outside the image are zero (as torchvision pads).
pub fn crop(img: &Tensor, top: isize, left: isize, h: usize, w: usize) -> Result<Tensor> {
    let (_, ih, iw) = chw(img, "crop")?;
    let (b, r) = (top + h as isize - ih as isize, left + w as isize - iw as isize);
    img.pad2d([-left, r, -top, b], PadMode::Constant, 0.0)
}

/// `F.center_crop(img, [h, w])`.
pub fn center_crop(img: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, ih, iw) = chw(img, "center_crop")?;
    if h > ih || w > iw {
        // torchvision pads first ((d)/2 before, (d+1)/2 after), then crops the centre.
        let (dh, dw) = (h.saturating_sub(ih) as isize, w.saturating_sub(iw) as isize);
        let padded = img.pad2d([dw / 2, (dw + 1) / 2, dh / 2, (dh + 1) / 2], PadMode::Constant, 0.0)?;
        return center_crop(&padded, h, w);
    }
    let top = round_half_even((ih as f64 - h as f64) / 2.0) as isize;
    let left = round_half_even((iw as f64 - w as f64) / 2.0) as isize;
    crop(img, top, left, h, w)
}

/// `F.hflip` / `F.vflip`.
pub fn flip(img: &Tensor, horizontal: bool) -> Result<Tensor> {
    let (_, h, w) = chw(img, "flip")?;
    let n = if horizontal { w } else { h };
    let idx = Tensor::from_vec((0..n as i64).rev().collect::<Vec<_>>(), &[n])?;
    img.index_select(if horizontal { 2 } else { 1 }, &idx)
}

/// `F.rgb_to_grayscale(img, num_output_channels)`: 0.2989 R + 0.587 G + 0.114 B.
pub fn grayscale(img: &Tensor, out_channels: usize) -> Result<Tensor> {
    let (c, h, w) = chw(img, "grayscale")?;
    if c == 1 {
        return img.expand(&[out_channels, h, w])?.contiguous();
    }
    if c != 3 {
        return Err(Error::bad_shape("grayscale", img.shape(), "needs 1 or 3 channels"));
    }
    let wts = Tensor::from_vec(vec![0.2989f32, 0.587, 0.114], &[3, 1, 1])?;
    let g = img.mul(&wts)?.sum(&[0], true)?;
    g.expand(&[out_channels, h, w])?.contiguous()
}

/// `F.normalize(img, mean, std)`.
pub fn normalize(img: &Tensor, mean: &[f32], std: &[f32]) -> Result<Tensor> {
    let (c, _, _) = chw(img, "normalize")?;
    if mean.len() != c || std.len() != c || std.contains(&0.0) {
        return Err(Error::invalid("normalize", format!("{c} channels need {c} means and {c} non-zero stds")));
    }
    img.sub(&Tensor::from_slice(mean, &[c, 1, 1])?)?.div(&Tensor::from_slice(std, &[c, 1, 1])?)
}

/// Mean/std presets of `Normalize`.
pub const MNIST_MEAN_STD: ([f32; 1], [f32; 1]) = ([0.1307], [0.3081]);
pub const CIFAR10_MEAN_STD: ([f32; 3], [f32; 3]) = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]);
pub const IMAGENET_MEAN_STD: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

/// torchvision's `_blend`: clamp(f·a + (1 − f)·b, 0, 1).
fn blend(a: &Tensor, b: &Tensor, f: f64) -> Result<Tensor> {
    a.mul_scalar(f)?.add(&b.mul_scalar(1.0 - f)?)?.clamp(Some(0.0), Some(1.0))
}

pub fn adjust_brightness(img: &Tensor, f: f64) -> Result<Tensor> {
    blend(img, &img.zeros_like(), f)
}
pub fn adjust_contrast(img: &Tensor, f: f64) -> Result<Tensor> {
    let (c, _, _) = chw(img, "adjust_contrast")?;
    let mean = if c == 3 { grayscale(img, 1)?.mean_all()? } else { img.mean_all()? };
    blend(img, &mean, f)
}
pub fn adjust_saturation(img: &Tensor, f: f64) -> Result<Tensor> {
    if chw(img, "adjust_saturation")?.0 == 1 {
        return Ok(img.clone());
    }
    blend(img, &grayscale(img, 1)?, f)
}

/// `F.adjust_hue(img, hue_factor)`, hue_factor in [−0.5, 0.5], via torchvision's RGB↔HSV.
pub fn adjust_hue(img: &Tensor, hue: f64) -> Result<Tensor> {
    let (c, h, w) = chw(img, "adjust_hue")?;
    if !(-0.5..=0.5).contains(&hue) {
        return Err(Error::invalid("adjust_hue", format!("hue_factor {hue} is not in [-0.5, 0.5]")));
    }
    if c == 1 {
        return Ok(img.clone());
    }
    let v = img.to_vec::<f32>()?;
    let n = h * w;
    let mut out = vec![0f32; 3 * n];
    for i in 0..n {
        let (r, g, b) = (v[i], v[n + i], v[2 * n + i]);
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let eqc = maxc == minc;
        let cr = maxc - minc;
        let s = cr / if eqc { 1.0 } else { maxc };
        let crd = if eqc { 1.0 } else { cr };
        let (rc, gc, bc) = ((maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd);
        let hr = if maxc == r { bc - gc } else { 0.0 };
        let hg = if maxc == g && maxc != r { 2.0 + rc - bc } else { 0.0 };
        let hb = if maxc != g && maxc != r { 4.0 + gc - rc } else { 0.0 };
        let hh = ((hr + hg + hb) / 6.0 + 1.0).rem_euclid(1.0);
        let hh = (hh + hue as f32).rem_euclid(1.0);
        let (p6, val) = (hh * 6.0, maxc);
        let fi = p6.floor();
        let f = p6 - fi;
        let k = (fi as i64).rem_euclid(6) as usize;
        let p = (val * (1.0 - s)).clamp(0.0, 1.0);
        let q = (val * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (val * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        let (ro, go, bo) = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][k];
        out[i] = ro;
        out[n + i] = go;
        out[2 * n + i] = bo;
    }
    Tensor::from_vec(out, &[3, h, w])
}

/// Applies transforms in order (`Compose`).
pub struct Compose(pub Vec<Box<dyn Transform>>);

impl Transform for Compose {
    fn apply(&self, img: &Tensor, g: &mut Generator) -> Result<Tensor> {
        let mut x = img.clone();
        for t in &self.0 {
            x = t.apply(&x, g)?;
        }
        Ok(x)
    }
}

/// `Resize((h, w))`.
pub struct Resize(pub usize, pub usize);
impl Transform for Resize {
    fn apply(&self, img: &Tensor, _: &mut Generator) -> Result<Tensor> {
        resize(img, self.0, self.1)
    }
}

/// `CenterCrop((h, w))`.
pub struct CenterCrop(pub usize, pub usize);
impl Transform for CenterCrop {
    fn apply(&self, img: &Tensor, _: &mut Generator) -> Result<Tensor> {
        center_crop(img, self.0, self.1)
    }
}

/// `RandomCrop((h, w), padding)`: zero-pad every side, then crop at a uniform position.
pub struct RandomCrop {
    pub size: (usize, usize),
    pub padding: usize,
}
impl Transform for RandomCrop {
    fn apply(&self, img: &Tensor, g: &mut Generator) -> Result<Tensor> {
        let (_, h, w) = chw(img, "RandomCrop")?;
        let (ph, pw) = (h + 2 * self.padding, w + 2 * self.padding);
        if self.size.0 > ph || self.size.1 > pw {
            return Err(Error::bad_shape("RandomCrop", img.shape(), format!("crop {:?} larger than the padded image", self.size)));
        }
        let top = g.below((ph - self.size.0 + 1) as u64) as isize - self.padding as isize;
        let left = g.below((pw - self.size.1 + 1) as u64) as isize - self.padding as isize;
        crop(img, top, left, self.size.0, self.size.1)
    }
}

/// `RandomHorizontalFlip(p)` (horizontal = true) or `RandomVerticalFlip(p)`.
pub struct RandomFlip {
    pub p: f64,
    pub horizontal: bool,
}
impl Transform for RandomFlip {
    fn apply(&self, img: &Tensor, g: &mut Generator) -> Result<Tensor> {
        if g.uniform() < self.p {
            flip(img, self.horizontal)
        } else {
            Ok(img.clone())
        }
    }
}

/// `Grayscale(num_output_channels)`.
pub struct Grayscale(pub usize);
impl Transform for Grayscale {
    fn apply(&self, img: &Tensor, _: &mut Generator) -> Result<Tensor> {
        grayscale(img, self.0)
    }
}

/// `Normalize(mean, std)`.
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}
impl Transform for Normalize {
    fn apply(&self, img: &Tensor, _: &mut Generator) -> Result<Tensor> {
        normalize(img, &self.mean, &self.std)
    }
}

/// `ColorJitter(brightness, contrast, saturation, hue)`: each factor drawn uniformly from
/// [max(0, 1 − v), 1 + v] (hue from [−v, v]), applied in a random order, as torchvision.
pub struct ColorJitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
}
impl Transform for ColorJitter {
    fn apply(&self, img: &Tensor, g: &mut Generator) -> Result<Tensor> {
        let mut order = [0usize, 1, 2, 3];
        for i in (1..4).rev() {
            order.swap(i, g.below(i as u64 + 1) as usize);
        }
        let mut x = img.clone();
        let factor = |v: f64, g: &mut Generator| (1.0 - v).max(0.0) + ((1.0 + v) - (1.0 - v).max(0.0)) * g.uniform();
        for k in order {
            x = match k {
                0 if self.brightness > 0.0 => adjust_brightness(&x, factor(self.brightness, g))?,
                1 if self.contrast > 0.0 => adjust_contrast(&x, factor(self.contrast, g))?,
                2 if self.saturation > 0.0 => adjust_saturation(&x, factor(self.saturation, g))?,
                3 if self.hue > 0.0 => adjust_hue(&x, -self.hue + 2.0 * self.hue * g.uniform())?,
                _ => x,
            };
        }
        Ok(x)
    }
}

/// `ToTensor`: an 8-bit (H, W, C) image → (C, H, W) f32 / 255.
pub fn to_tensor(hwc: &[u8], h: usize, w: usize, c: usize) -> Result<Tensor> {
    if hwc.len() != h * w * c {
        return Err(Error::bad_shape("to_tensor", &[h, w, c], format!("{} bytes given", hwc.len())));
    }
    let mut out = vec![0f32; hwc.len()];
    for (i, px) in hwc.chunks(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * h * w + i] = v as f32 / 255.0;
        }
    }
    Tensor::from_vec(out, &[c, h, w])
}

/// `F.resized_crop(img, top, left, h, w, size, antialias=False)`.
pub fn resized_crop(img: &Tensor, top: isize, left: isize, h: usize, w: usize, out: (usize, usize)) -> Result<Tensor> {
    resize(&crop(img, top, left, h, w)?, out.0, out.1)
}

/// `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`: a random area fraction and
/// aspect ratio (10 attempts, then torchvision's centre fallback), resized to `size`.
pub struct RandomResizedCrop {
    pub size: (usize, usize),
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
}

impl RandomResizedCrop {
    pub fn new(h: usize, w: usize) -> Self {
        RandomResizedCrop { size: (h, w), scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }
    }
    /// torchvision's `get_params`: (top, left, h, w).
    pub fn params(&self, height: usize, width: usize, g: &mut Generator) -> (usize, usize, usize, usize) {
        let area = (height * width) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * (self.scale.0 + (self.scale.1 - self.scale.0) * g.uniform());
            let ar = (lr0 + (lr1 - lr0) * g.uniform()).exp();
            let w = (target * ar).sqrt().round() as usize;
            let h = (target / ar).sqrt().round() as usize;
            if 0 < w && w <= width && 0 < h && h <= height {
                let i = g.below((height - h + 1) as u64) as usize;
                let j = g.below((width - w + 1) as u64) as usize;
                return (i, j, h, w);
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < self.ratio.0 {
            (width, ((width as f64) / self.ratio.0).round() as usize)
        } else if in_ratio > self.ratio.1 {
            (((height as f64) * self.ratio.1).round() as usize, height)
        } else {
            (width, height)
        };
        ((height - h) / 2, (width - w) / 2, h, w)
    }
}

impl Transform for RandomResizedCrop {
    fn apply(&self, img: &Tensor, g: &mut Generator) -> Result<Tensor> {
        let (_, h, w) = chw(img, "RandomResizedCrop")?;
        let (i, j, ch, cw) = self.params(h, w, g);
        resized_crop(img, i as isize, j as isize, ch, cw, self.size)
    }
}

/// `F.rotate(img, angle)` (degrees, counter-clockwise, about the centre, nearest neighbour,
/// same size, fill 0), following torchvision's inverse-affine grid (computed in f32 as torch).
pub fn rotate(img: &Tensor, angle: f64) -> Result<Tensor> {
    let (c, h, w) = chw(img, "rotate")?;
    let r = (-angle).to_radians();
    let (cs, sn) = (r.cos() as f32, r.sin() as f32);
    let v = img.to_vec::<f32>()?;
    let mut out = vec![0f32; v.len()];
    let round_even = |x: f32| -> f32 {
        let f = x.floor();
        let d = x - f;
        if d > 0.5 || (d == 0.5 && (f as i64) % 2 != 0) {
            f + 1.0
        } else {
            f
        }
    };
    for oy in 0..h {
        let yb = oy as f32 - h as f32 * 0.5 + 0.5;
        for ox in 0..w {
            let xb = ox as f32 - w as f32 * 0.5 + 0.5;
            // grid_sample(align_corners=False): pixel = ((g + 1)·size − 1)/2.
            let gx = (cs * xb + sn * yb) / (0.5 * w as f32);
            let gy = (-sn * xb + cs * yb) / (0.5 * h as f32);
            let ix = round_even(((gx + 1.0) * w as f32 - 1.0) / 2.0);
            let iy = round_even(((gy + 1.0) * h as f32 - 1.0) / 2.0);
            if ix >= 0.0 && iy >= 0.0 && (ix as usize) < w && (iy as usize) < h {
                for ch in 0..c {
                    out[(ch * h + oy) * w + ox] = v[(ch * h + iy as usize) * w + ix as usize];
                }
            }
        }
    }
    Tensor::from_vec(out, &[c, h, w])
}

/// `RandomRotation(degrees)`: an angle uniform in [−degrees, degrees].
pub struct RandomRotation(pub f64);
impl Transform for RandomRotation {
    fn apply(&self, img: &Tensor, g: &mut Generator) -> Result<Tensor> {
        rotate(img, -self.0 + 2.0 * self.0 * g.uniform())
    }
}
