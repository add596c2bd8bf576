//! Inference kernels that span several layers, on tensors: the checks and data plumbing around
//! `cnnkit_kernels::fused`. They never record autograd and return `Ok(None)` whenever the
//! fused kernel does not apply (other dtypes, shapes, a CPU without AVX-512), so the caller
//! runs the layers one by one instead.

use crate::{DType, Elem, Result, Tensor};
use cnnkit_kernels::conv::Epilogue;
use cnnkit_kernels::fused::{InvertedResidual, Pointwise};

/// One convolution of the block: weight, optional bias, and the activation after it.
#[derive(Clone, Copy, Debug)]
pub struct FusedConv<'a> {
    pub w: &'a Tensor,
    pub b: Option<&'a Tensor>,
    pub ep: Epilogue,
}

/// MobileNetV2's inverted residual block (inference): y = after(project(dw(expand(x))) +
/// residual). expand and project are 1×1 convolutions (weights (C_mid, C_in, 1, 1) and
/// (C_out, C_mid, 1, 1)); dw is a 3×3 depthwise convolution with padding 1 and stride 1 or 2
/// (weight (C_mid, 1, 3, 3)). x: (N, C_in, H, W); residual: (N, C_out, OH, OW).
#[derive(Clone, Copy, Debug)]
pub struct InvertedResidualArgs<'a> {
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
    let convs = a.expand.iter().chain([&a.dw, &a.project]);
    let tensors = || convs.clone().flat_map(|c| std::iter::once(c.w).chain(c.b)).chain(a.residual).chain([x]);
    let recording = crate::is_grad_enabled() && tensors().any(|t| t.requires_grad());
    if recording || tensors().any(|t| t.dtype() != DType::F32) || x.ndim() != 4 {
        return Ok(None);
    }
    let [n, c_in, h, w] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let c_mid = a.dw.w.shape()[0];
    let c_out = a.project.w.shape()[0];
    let pointwise = |t: &Tensor, m: usize, k: usize| t.shape() == [m, k, 1, 1];
    let bias_ok = |c: &FusedConv, m: usize| c.b.is_none_or(|b| b.shape() == [m]);
    let ok = a.expand.as_ref().map_or(c_mid == c_in, |e| pointwise(e.w, c_mid, c_in) && bias_ok(e, c_mid))
        && a.dw.w.shape() == [c_mid, 1, 3, 3]
        && bias_ok(&a.dw, c_mid)
        && pointwise(a.project.w, c_out, c_mid)
        && bias_ok(&a.project, c_out)
        && (a.stride == 1 || a.stride == 2)
        && h > 0
        && w > 0;
    if !ok {
        return Ok(None);
    }
    let (oh, ow) = ((h - 1) / a.stride + 1, (w - 1) / a.stride + 1);
    if a.residual.is_some_and(|r| r.shape() != [n, c_out, oh, ow]) {
        return Ok(None);
    }
    // Contiguous f32 copies of the small operands (weights and biases: kilobytes); the
    // activations are borrowed.
    let vec = |t: Option<&Tensor>| t.map(|t| t.to_vec::<f32>()).transpose();
    let (ew, eb) = (vec(a.expand.map(|e| e.w))?, vec(a.expand.and_then(|e| e.b))?);
    let (dw, db) = (a.dw.w.to_vec::<f32>()?, vec(a.dw.b)?);
    let (pw, pb) = (a.project.w.to_vec::<f32>()?, vec(a.project.b)?);
    let blk = InvertedResidual {
        c_in,
        c_mid,
        c_out,
        h,
        w,
        expand: a.expand.as_ref().zip(ew.as_deref()).map(|(e, w)| Pointwise { w, b: eb.as_deref(), ep: e.ep }),
        dw_w: &dw,
        dw_b: db.as_deref(),
        dw_ep: a.dw.ep,
        stride: a.stride,
        project: Pointwise { w: &pw, b: pb.as_deref(), ep: a.project.ep },
        after: if a.residual.is_some() { a.after } else { Epilogue::None },
    };
    if !blk.applies() {
        return Ok(None);
    }
    let mut y: Vec<f32> = crate::recycle::output_vec(n * c_out * oh * ow);
    let mut run = |xd: &[f32], rd: Option<&[f32]>| cnnkit_kernels::fused::forward(&blk, n, xd, rd, &mut y);
    match a.residual {
        Some(r) => x.with_data(|xd: &[f32]| r.with_data(|rd: &[f32]| run(xd, Some(rd))))??,
        None => x.with_data(|xd: &[f32]| run(xd, None))?,
    }
    Ok(Some(Tensor::from_storage(f32::into_storage(y), &[n, c_out, oh, ow])))
}
