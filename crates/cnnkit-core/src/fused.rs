//! Inference kernels that span several layers, on tensors: the checks and data plumbing around
//! `cnnkit_kernels::fused`. They never record autograd and return `Ok(None)` whenever the
//! fused kernel does not apply (other dtypes, shapes, a CPU without AVX-512), so the caller
//! runs the layers one by one instead.

use crate::{DType, Elem, Result, Tensor};
use cnnkit_kernels::conv::Epilogue;
use cnnkit_kernels::fused::{InvertedResidual, PackedWeights, Pointwise, Stem};

/// One convolution of the block: weight, optional bias, and the activation after it.
#[derive(Clone, Copy, Debug)]
pub struct FusedConv<'a> {
    pub w: &'a Tensor,
    pub b: Option<&'a Tensor>,
    pub ep: Epilogue,
}

/// A stride-2 convolution (one group) that makes the block's input from x: weight (C_in,
/// C_img, KH, KW), zero padding (rows, columns) on both sides.
#[derive(Clone, Copy, Debug)]
pub struct StemArgs<'a> {
    pub conv: FusedConv<'a>,
    pub padding: (usize, usize),
}

/// MobileNetV2's inverted residual block (inference): y = after(project(dw(expand(x))) +
/// residual). expand and project are 1×1 convolutions (weights (C_mid, C_in, 1, 1) and
/// (C_out, C_mid, 1, 1)); dw is a 3×3 depthwise convolution with padding 1 and stride 1 or 2
/// (weight (C_mid, 1, 3, 3)). x: (N, C_in, H, W); residual: (N, C_out, OH, OW). With a stem
/// (and no expansion), x is the image (N, C_img, H_img, W_img) and the block's input is
/// stem(x).
#[derive(Clone, Copy, Debug)]
pub struct InvertedResidualArgs<'a> {
    pub stem: Option<StemArgs<'a>>,
    pub expand: Option<FusedConv<'a>>,
    pub dw: FusedConv<'a>,
    pub stride: usize,
    pub project: FusedConv<'a>,
    pub residual: Option<&'a Tensor>,
    /// The activation after the residual add.
    pub after: Epilogue,
}

/// Runs the block as one kernel over strips of rows (see `cnnkit_kernels::fused`), or returns
/// `Ok(None)` when that kernel does not apply to these operands: f32 only, every weight with
/// the shape above, a residual of the output's shape, autograd not recording, and the
/// kernel's own conditions ([`InvertedResidual::applies`]).
pub fn inverted_residual(x: &Tensor, a: &InvertedResidualArgs) -> Result<Option<Tensor>> {
    let convs = a.stem.iter().map(|s| &s.conv).chain(&a.expand).chain([&a.dw, &a.project]);
    let tensors = || convs.clone().flat_map(|c| std::iter::once(c.w).chain(c.b)).chain(a.residual).chain([x]);
    if crate::is_grad_enabled() && tensors().any(|t| t.requires_grad()) {
        return Ok(None);
    }
    let (Ok([n, c_x, h_x, w_x]), Some(&c_mid), Some(&c_out)) =
        (<[usize; 4]>::try_from(x.shape()), a.dw.w.shape().first(), a.project.w.shape().first())
    else {
        return Ok(None);
    };
    // The block's input plane: x's, or the stem's output.
    let (stem, (c_in, h, w)) = match &a.stem {
        None => (None, (c_x, h_x, w_x)),
        Some(st) => {
            let Ok([c, c_img, kh, kw]) = <[usize; 4]>::try_from(st.conv.w.shape()) else { return Ok(None) };
            let (ph, pw) = st.padding;
            if c_img != c_x || h_x + 2 * ph < kh || w_x + 2 * pw < kw || st.conv.b.is_some_and(|b| b.shape() != [c]) {
                return Ok(None);
            }
            ((Some((st, c_img, kh, kw))), (c, (h_x + 2 * ph - kh) / 2 + 1, (w_x + 2 * pw - kw) / 2 + 1))
        }
    };
    let pointwise = |t: &Tensor, m: usize, k: usize| t.shape() == [m, k, 1, 1];
    let bias_ok = |c: &FusedConv, m: usize| c.b.is_none_or(|b| b.shape() == [m]);
    let ok = a.expand.as_ref().map_or(c_mid == c_in, |e| pointwise(e.w, c_mid, c_in) && bias_ok(e, c_mid))
        && a.dw.w.shape() == [c_mid, 1, 3, 3]
        && bias_ok(&a.dw, c_mid)
        && pointwise(a.project.w, c_out, c_mid)
        && bias_ok(&a.project, c_out);
    if !ok {
        return Ok(None);
    }
    // Every operand borrowed under its read lock (copying the weights on each call was 7% of
    // MobileNetV2 at batch 1); a non-f32 or non-contiguous one sends the block down the
    // unfused path.
    let (Some(xb), Some(dw), Some(pw)) = (Borrowed::new(x)?, Borrowed::new(a.dw.w)?, Borrowed::new(a.project.w)?) else {
        return Ok(None);
    };
    let opt = Borrowed::new_opt;
    let (Some(ew), Some(eb), Some(db), Some(pb), Some(rb)) =
        (opt(a.expand.map(|e| e.w))?, opt(a.expand.and_then(|e| e.b))?, opt(a.dw.b)?, opt(a.project.b)?, opt(a.residual)?)
    else {
        return Ok(None);
    };
    let (Some(sw), Some(sb)) = (opt(a.stem.map(|s| s.conv.w))?, opt(a.stem.and_then(|s| s.conv.b))?) else {
        return Ok(None);
    };
    let data = Borrowed::data_opt;
    // The packed 1×1 weights of a block split by channels (kept across runs by
    // crate::prepared, like a layer-wise convolution's).
    let kept;
    let mut blk = InvertedResidual {
        c_in,
        c_mid,
        c_out,
        h,
        w,
        expand: a.expand.as_ref().zip(data(&ew)).map(|(e, w)| Pointwise { w, b: data(&eb), ep: e.ep }),
        stem: stem.zip(data(&sw)).map(|((st, c_img, kh, kw), w)| Stem {
            c_img,
            h: h_x,
            w: w_x,
            kh,
            kw,
            padding: st.padding,
            conv: Pointwise { w, b: data(&sb), ep: st.conv.ep },
        }),
        dw_w: dw.data(),
        dw_b: data(&db),
        dw_ep: a.dw.ep,
        stride: a.stride,
        project: Pointwise { w: pw.data(), b: data(&pb), ep: a.project.ep },
        after: if a.residual.is_some() { a.after } else { Epilogue::None },
        packed: None,
    };
    if let (true, Some(e), Some(ewd)) = (blk.by_channels(), &a.expand, data(&ew)) {
        let pack = |t: &Tensor, wd: &[f32], m: usize, k: usize| crate::prepared::packed_weights(&t.0.storage, t.layout().offset, wd, m, k);
        kept = (pack(e.w, ewd, c_mid, c_in), pack(a.project.w, pw.data(), c_out, c_mid));
        blk.packed = Some(PackedWeights { expand: &kept.0, project: &kept.1 });
    }
    // The kernel's own conditions (stride, plane and channel bounds, AVX-512) before its
    // output plane is asked for.
    if !blk.applies() {
        return Ok(None);
    }
    let (oh, ow) = blk.out_hw();
    if a.residual.is_some_and(|r| r.shape() != [n, c_out, oh, ow]) {
        return Ok(None);
    }
    let mut y: Vec<f32> = crate::recycle::output_vec(n * c_out * oh * ow);
    cnnkit_kernels::fused::forward(&blk, n, xb.data(), data(&rb), &mut y);
    Ok(Some(Tensor::from_storage(f32::into_storage(y), &[n, c_out, oh, ow])))
}

/// `max_pool2d(act(conv2d(x, w, b, stride 2, padding)), kernel 3, stride 2, padding 1)` as one
/// kernel (ResNet's stem: conv 7×7 s2, ReLU, max pool; see
/// `cnnkit_kernels::direct::forward_max_pooled`), with w, b and act from `conv`, or `Ok(None)`
/// when it does not apply: f32, one group, no dilation, autograd not recording, and the
/// kernel's conditions (`direct::applies_max_pooled`, which include a kernel that fits the
/// padded input). x: (N, C_in, H, W); w: (C_out, C_in, KH, KW); b: (C_out).
pub fn conv_max_pool(x: &Tensor, conv: &FusedConv, padding: (usize, usize)) -> Result<Option<Tensor>> {
    let (w, b) = (conv.w, conv.b);
    if crate::is_grad_enabled() && (x.requires_grad() || w.requires_grad() || b.is_some_and(|b| b.requires_grad())) {
        return Ok(None);
    }
    let (Ok([n, c_in, h, wd]), Ok([c_out, c_w, kh, kw])) = (<[usize; 4]>::try_from(x.shape()), <[usize; 4]>::try_from(w.shape())) else {
        return Ok(None);
    };
    if c_w != c_in || b.is_some_and(|b| b.shape() != [c_out]) {
        return Ok(None);
    }
    let g = cnnkit_kernels::conv::ConvGeom { n, c_in, h, w: wd, c_out, kh, kw, stride: (2, 2), padding, dilation: (1, 1), groups: 1 };
    let (true, Some((ph, pw))) = (cnnkit_kernels::direct::applies_max_pooled(&g), cnnkit_kernels::direct::max_pooled_hw(&g)) else {
        return Ok(None);
    };
    let (Some(xb), Some(wb), Some(bb)) = (Borrowed::new(x)?, Borrowed::new(w)?, Borrowed::new_opt(b)?) else {
        return Ok(None);
    };
    let mut y: Vec<f32> = crate::recycle::output_vec(n * c_out * ph * pw);
    cnnkit_kernels::direct::forward_max_pooled(&g, xb.data(), wb.data(), Borrowed::data_opt(&bb), conv.ep, &mut y);
    Ok(Some(Tensor::from_storage(f32::into_storage(y), &[n, c_out, ph, pw])))
}

/// A contiguous f32 tensor's elements, borrowed under its storage's read lock.
struct Borrowed<'a> {
    guard: std::sync::RwLockReadGuard<'a, crate::Storage>,
    range: std::ops::Range<usize>,
}

impl<'a> Borrowed<'a> {
    /// None for a non-contiguous or non-f32 tensor (the unfused path takes it).
    fn new(t: &'a Tensor) -> Result<Option<Self>> {
        if !t.is_contiguous() || t.dtype() != DType::F32 {
            return Ok(None);
        }
        let off = t.layout().offset;
        Ok(Some(Borrowed { guard: t.read_storage()?, range: off..off + t.numel() }))
    }
    /// Some(None) for an absent operand, None for one that cannot be borrowed.
    fn new_opt(t: Option<&'a Tensor>) -> Result<Option<Option<Self>>> {
        match t {
            None => Ok(Some(None)),
            Some(t) => Ok(Self::new(t)?.map(Some)),
        }
    }
    fn data_opt(b: &Option<Self>) -> Option<&[f32]> {
        b.as_ref().map(|b| b.data())
    }
    fn data(&self) -> &[f32] {
        f32::slice(&self.guard).and_then(|d| d.get(self.range.clone())).unwrap_or_default()
    }
}
