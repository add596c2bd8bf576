//! The neural-network ops of torch.nn.functional: matmul, convolution, pooling, batch norm,
//! softmax, interpolation. Shapes follow PyTorch (NCHW).

use crate::dtype::{Elem, FloatElem};
use crate::layout::Layout;
use crate::op::Op;
use crate::shape::PadMode;
use crate::{float_dispatch, DType, Error, Result, Storage, Tensor};
use cnnkit_kernels::conv::{self, ConvGeom};
use cnnkit_kernels::matmul::{gemm, MatRef};
use cnnkit_kernels::pool::{self, PoolGeom};
use num_traits::Zero as _;
use rayon::prelude::*;
use std::sync::Arc;

/// Convolution hyper-parameters, as nn.Conv2d's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dArgs {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dArgs {
    fn default() -> Self {
        Conv2dArgs { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

/// Pooling hyper-parameters, as nn.MaxPool2d's / nn.AvgPool2d's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dArgs {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub ceil_mode: bool,
}

impl Pool2dArgs {
    /// kernel k, stride defaulting to the kernel (PyTorch's default), no padding.
    pub fn new(k: usize) -> Self {
        Pool2dArgs { kernel: (k, k), stride: (k, k), padding: (0, 0), dilation: (1, 1), ceil_mode: false }
    }
}

/// (batch-like tensor as 4-d, whether a batch dim was added).
fn as_4d(x: &Tensor, op: &'static str) -> Result<(Tensor, bool)> {
    match x.ndim() {
        4 => Ok((x.clone(), false)),
        3 => Ok((x.unsqueeze(0)?, true)),
        _ => Err(Error::bad_shape(op, x.shape(), "expects (N, C, H, W) or (C, H, W)")),
    }
}

fn unbatch(y: Tensor, added: bool) -> Result<Tensor> {
    if added {
        y.squeeze(0)
    } else {
        Ok(y)
    }
}

fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::invalid(op, format!("dtypes differ: {} vs {}", a.dtype().name(), b.dtype().name())));
    }
    Ok(())
}

impl Tensor {
    /// Matrix product with PyTorch's `matmul` rules: 1-d operands are promoted, batch dims broadcast.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        same_dtype("matmul", self, other)?;
        match (self.ndim(), other.ndim()) {
            (0, _) | (_, 0) => Err(Error::mismatch("matmul (0-d operand)", self.shape(), other.shape())),
            (1, 1) => self.unsqueeze(0)?.matmul(&other.unsqueeze(1)?)?.reshape(&[]),
            (1, _) => self.unsqueeze(0)?.matmul(other)?.squeeze(-2),
            (_, 1) => self.matmul(&other.unsqueeze(1)?)?.squeeze(-1),
            _ => self.matmul_nd(other),
        }
    }
    /// Batched matrix product of (B, m, k) and (B, k, n).
    pub fn bmm(&self, other: &Tensor) -> Result<Tensor> {
        if self.ndim() != 3 || other.ndim() != 3 || self.shape()[0] != other.shape()[0] {
            return Err(Error::mismatch("bmm", self.shape(), other.shape()));
        }
        self.matmul_nd(other)
    }

    fn matmul_nd(&self, other: &Tensor) -> Result<Tensor> {
        let (a, b) = (self, other);
        let (na, nb) = (a.ndim(), b.ndim());
        let (m, k, k2, n) = (a.shape()[na - 2], a.shape()[na - 1], b.shape()[nb - 2], b.shape()[nb - 1]);
        if k != k2 {
            return Err(Error::mismatch("matmul", a.shape(), b.shape()));
        }
        let batch = crate::elementwise::broadcast_shape(&a.shape()[..na - 2], &b.shape()[..nb - 2])
            .ok_or_else(|| Error::mismatch("matmul (batch)", a.shape(), b.shape()))?;
        let nbatch: usize = batch.iter().product();
        let mut ashape = batch.clone();
        ashape.extend([m, k]);
        let mut bshape = batch.clone();
        bshape.extend([k, n]);
        let (ae, be) = (a.detach().broadcast_to(&ashape)?, b.detach().broadcast_to(&bshape)?);
        let mut oshape = batch.clone();
        oshape.extend([m, n]);
        let offsets = |l: &Layout| -> Vec<usize> {
            let bl = Layout { shape: batch.clone(), strides: l.strides[..batch.len()].to_vec(), offset: l.offset };
            let mut v = Vec::with_capacity(nbatch);
            if batch.is_empty() {
                v.push(l.offset);
            } else {
                bl.for_each_offset(|o| v.push(o));
            }
            v
        };
        let (aoffs, boffs) = (offsets(ae.layout()), offsets(be.layout()));
        let (al, bl) = (ae.layout().clone(), be.layout().clone());
        let s = float_dispatch!("matmul", a.dtype(), T => {
            let sa = ae.read_storage()?;
            let sb = be.read_storage()?;
            let (da, db) = (T::slice(&sa).unwrap_or(&[]), T::slice(&sb).unwrap_or(&[]));
            let mut out: Vec<T> = crate::recycle::output_vec(nbatch * m * n);
            fn view<'a, T>(d: &'a [T], off: usize, l: &Layout, r: usize, c: usize) -> MatRef<'a, T> {
                let nd = l.shape.len();
                MatRef { data: &d[off.min(d.len())..], rows: r, cols: c, rs: l.strides[nd - 2] as isize, cs: l.strides[nd - 1] as isize }
            }
            let (lda, ldb) = (al.strides[na - 2], bl.strides[nb - 1]);
            if nbatch == 1 && m <= 4 && al.strides[na - 1] == 1 && bl.strides[nb - 2] == 1 && lda >= k && ldb >= k {
                // A few rows times a transposed weight (`linear` at batch 1–4: x · Wᵀ): rows of
                // x against rows of W, which both lie contiguous; `gemm_nt` splits W's rows
                // over the threads, where the gemm crate ran this memory-bound product on one.
                let (da, db) = (&da[aoffs[0].min(da.len())..], &db[boffs[0].min(db.len())..]);
                cnnkit_kernels::dot::gemm_nt(m, n, k, da, lda, db, ldb, &mut out, n, false, true);
            } else if nbatch == 1 || m * n * k < 32 * 32 * 32 {
                for (i, o) in out.chunks_mut(m * n).enumerate() {
                    gemm(view(da, aoffs[i], &al, m, k), view(db, boffs[i], &bl, k, n), o, false, nbatch == 1);
                }
            } else {
                out.par_chunks_mut(m * n).enumerate().for_each(|(i, o)| {
                    gemm(view(da, aoffs[i], &al, m, k), view(db, boffs[i], &bl, k, n), o, false, false);
                });
            }
            T::into_storage(out)
        });
        Ok(Tensor::from_op(s, &oshape, Op::MatMul { a: a.clone(), b: b.clone() }))
    }

    /// `F.linear`: x (…, in) @ wᵀ (in, out) + b (out).
    pub fn linear(&self, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = self.matmul(&w.t()?)?;
        match b {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// `F.conv2d`. self: (N, C_in, H, W) or (C_in, H, W); w: (C_out, C_in/G, KH, KW); b: (C_out).
    pub fn conv2d(&self, w: &Tensor, b: Option<&Tensor>, args: Conv2dArgs) -> Result<Tensor> {
        self.conv2d_act(w, b, args, conv::Epilogue::None)
    }

    /// `act(F.conv2d(...))` (ReLU, or a clamp such as ReLU6) with the activation fused into the
    /// convolution's epilogue, applied to each output block while it is in cache: one pass
    /// over the output instead of two, and in training one tensor kept for the backward
    /// instead of two. The gradient equals that of conv2d followed by `relu` / `clamp`: their
    /// derivatives (x > 0; lo < x < hi, strict as PyTorch's) are read off the output, which
    /// is positive (inside the bounds) exactly where the convolution's result was.
    pub fn conv2d_act(&self, w: &Tensor, b: Option<&Tensor>, args: Conv2dArgs, act: conv::Epilogue) -> Result<Tensor> {
        let (x, added, geom, s) = self.conv2d_storage(w, b, args, act)?;
        let (oh, ow) = geom.out_hw().unwrap_or((0, 0));
        let y = Tensor::from_op(s, &[geom.n, geom.c_out, oh, ow], Op::Conv2d { x: x.clone(), w: w.clone(), b: b.cloned(), geom, act });
        unbatch(y, added)
    }

    /// What [`Tensor::conv2d`] and [`Tensor::conv2d_act`] share: the checks and the output data
    /// of `act(conv2d(...))`. Returns the input as 4-D, whether a batch dim was added, the
    /// geometry, and the (N, C_out, OH, OW) storage.
    fn conv2d_storage(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        args: Conv2dArgs,
        act: conv::Epilogue,
    ) -> Result<(Tensor, bool, ConvGeom, Storage)> {
        let (x, added) = as_4d(self, "conv2d")?;
        same_dtype("conv2d", &x, w)?;
        let geom = conv_geom(&x, w, args)?;
        if let Some(b) = b {
            if b.shape() != [geom.c_out] {
                return Err(Error::mismatch("conv2d (bias)", b.shape(), &[geom.c_out]));
            }
        }
        let (oh, ow) = geom
            .out_hw()
            .ok_or_else(|| Error::bad_shape("conv2d", x.shape(), format!("kernel {:?} larger than the padded input", w.shape())))?;
        let recording =
            crate::grad_mode::is_grad_enabled() && (x.requires_grad() || w.requires_grad() || b.is_some_and(|b| b.requires_grad()));
        let winograd = cnnkit_kernels::winograd::applies_with_kept_u(&geom);
        let packed = !winograd && conv::wants_packed_weights(&geom);
        if !recording && x.dtype() == DType::F32 && w.is_contiguous() && (packed || winograd) {
            // Inference: the weights prepared once (packed, or Winograd-transformed) and kept
            // while they are unchanged (crate::prepared).
            let mut y: Vec<f32> = crate::recycle::output_vec(geom.n * geom.c_out * oh * ow);
            let bv = b.map(|b| b.to_vec::<f32>()).transpose()?;
            let ws = w.read_storage()?;
            let all = f32::slice(&ws).ok_or(Error::DType { op: "conv2d", got: w.dtype(), expected: "f32" })?;
            let off = w.layout().offset;
            let wd = &all[off..off + w.numel()];
            if packed {
                let pw = crate::prepared::packed_weights(&w.0.storage, off, wd, geom.c_out, geom.col_rows());
                x.with_data(|xd: &[f32]| conv::conv2d_forward_packed(&geom, xd, wd, &pw, bv.as_deref(), act, &mut y))?;
            } else {
                let u = crate::prepared::winograd_u(&w.0.storage, off, wd, &geom);
                x.with_data(|xd: &[f32]| cnnkit_kernels::winograd::forward_kept(&geom, xd, &u, bv.as_deref(), act, &mut y))?;
            }
            return Ok((x, added, geom, f32::into_storage(y)));
        }
        let s = float_dispatch!("conv2d", x.dtype(), T => {
            let mut y: Vec<T> = crate::recycle::output_vec(geom.n * geom.c_out * oh * ow);
            x.with_data(|xd: &[T]| w.with_data(|wd: &[T]| -> Result<()> {
                let bv = b.map(|b| b.to_vec::<T>()).transpose()?;
                conv::conv2d_forward_ep(&geom, xd, wd, bv.as_deref(), act, &mut y);
                Ok(())
            }))???;
            T::into_storage(y)
        });
        Ok((x, added, geom, s))
    }

    /// `act(self)` as its own op (relu, clamp): what [`Tensor::conv2d_act`] and
    /// [`Tensor::batch_norm_act`] fuse, and the unfused form of [`Tensor::add_act`].
    pub fn activation(self, act: conv::Epilogue) -> Result<Tensor> {
        match act {
            conv::Epilogue::None => Ok(self),
            conv::Epilogue::Relu => self.relu(),
            conv::Epilogue::Clamp(lo, hi) => self.clamp(Some(lo), Some(hi)),
        }
    }

    /// `act(self + other)` in one pass over same-shape float tensors (inference's residual
    /// Add → ReLU), instead of an add pass and an activation pass. Broadcasting shapes, mixed
    /// dtypes and results autograd would record take `add` followed by the activation op.
    pub fn add_act(&self, other: &Tensor, act: conv::Epilogue) -> Result<Tensor> {
        let recording = crate::grad_mode::is_grad_enabled() && (self.requires_grad() || other.requires_grad());
        if recording
            || act == conv::Epilogue::None
            || self.shape() != other.shape()
            || self.dtype() != other.dtype()
            || !self.dtype().is_float()
        {
            return self.add(other)?.activation(act);
        }
        let s = float_dispatch!("add", self.dtype(), T => {
            let mut y: Vec<T> = crate::recycle::output_vec(self.numel());
            self.with_data(|a: &[T]| other.with_data(|b: &[T]| {
                const CHUNK: usize = cnnkit_kernels::simd::CHUNK;
                y.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((yo, ai), bi)| {
                    cnnkit_kernels::simd::with_best_isa(|| {
                        yo.iter_mut().zip(ai).zip(bi).for_each(|((o, &p), &q)| *o = p + q);
                        act.apply(yo);
                    })
                });
            }))??;
            T::into_storage(y)
        });
        Ok(Tensor::from_storage(s, self.shape()))
    }

    /// `self = act(self + other)` in place, in one pass: the inference executor's residual Add
    /// on a convolution's fresh output (ResNet's blocks), which then needs no third tensor.
    /// Returns `Ok(false)` and leaves `self` alone where it does not apply: autograd recording,
    /// other shapes or dtypes, a non-float or non-contiguous `self`, or `other` sharing its
    /// storage. Any other tensor viewing `self`'s storage sees the change (the caller owns it).
    pub fn add_act_(&self, other: &Tensor, act: conv::Epilogue) -> Result<bool> {
        let recording = crate::grad_mode::is_grad_enabled() && (self.requires_grad() || other.requires_grad());
        if recording
            || self.shape() != other.shape()
            || self.dtype() != other.dtype()
            || !self.dtype().is_float()
            || !self.is_contiguous()
            || std::sync::Arc::ptr_eq(&self.0.storage, &other.0.storage)
        {
            return Ok(false);
        }
        float_dispatch!("add_act_", self.dtype(), T => {
            other.with_data(|b: &[T]| {
                self.update_data(|a: &mut [T]| {
                    const CHUNK: usize = cnnkit_kernels::simd::CHUNK;
                    a.par_chunks_mut(CHUNK).zip(b.par_chunks(CHUNK)).for_each(|(ao, bi)| {
                        cnnkit_kernels::simd::with_best_isa(|| {
                            ao.iter_mut().zip(bi).for_each(|(o, &q)| *o += q);
                            act.apply(ao);
                        })
                    });
                })
            })??
        });
        Ok(true)
    }

    /// `F.conv2d` with nn.Conv2d's `padding_mode` (reflect/replicate/circular pad first).
    pub fn conv2d_padded(&self, w: &Tensor, b: Option<&Tensor>, args: Conv2dArgs, mode: PadMode) -> Result<Tensor> {
        if mode == PadMode::Constant || args.padding == (0, 0) {
            return self.conv2d(w, b, args);
        }
        let (ph, pw) = (args.padding.0 as isize, args.padding.1 as isize);
        let xp = self.pad2d([pw, pw, ph, ph], mode, 0.0)?;
        xp.conv2d(w, b, Conv2dArgs { padding: (0, 0), ..args })
    }

    /// `F.conv_transpose2d`. self: (N, C_in, H, W); w: (C_in, C_out/G, KH, KW); b: (C_out).
    pub fn conv_transpose2d(&self, w: &Tensor, b: Option<&Tensor>, args: Conv2dArgs, output_padding: (usize, usize)) -> Result<Tensor> {
        let (x, added) = as_4d(self, "conv_transpose2d")?;
        same_dtype("conv_transpose2d", &x, w)?;
        let (n, c_in, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        if w.ndim() != 4 || w.shape()[0] != c_in || args.groups == 0 || c_in % args.groups != 0 {
            return Err(Error::mismatch("conv_transpose2d (weight)", w.shape(), x.shape()));
        }
        let (kh, kw) = (w.shape()[2], w.shape()[3]);
        let c_out = w.shape()[1] * args.groups;
        let (s, p, d) = (args.stride, args.padding, args.dilation);
        if output_padding.0 >= s.0.max(d.0) || output_padding.1 >= s.1.max(d.1) {
            return Err(Error::invalid("conv_transpose2d", "output_padding must be smaller than stride or dilation"));
        }
        let oh = ((h - 1) * s.0 + d.0 * (kh - 1) + output_padding.0 + 1).checked_sub(2 * p.0);
        let ow = ((wd - 1) * s.1 + d.1 * (kw - 1) + output_padding.1 + 1).checked_sub(2 * p.1);
        let (oh, ow) = match (oh, ow) {
            (Some(a), Some(b)) if a > 0 && b > 0 => (a, b),
            _ => return Err(Error::bad_shape("conv_transpose2d", x.shape(), "padding leaves an empty output")),
        };
        // The convolution whose input-gradient this op computes: input (N, C_out, OH, OW).
        let geom = ConvGeom { n, c_in: c_out, h: oh, w: ow, c_out: c_in, kh, kw, stride: s, padding: p, dilation: d, groups: args.groups };
        match geom.out_hw() {
            Some(hw) if hw == (h, wd) => {}
            // output_padding ≥ stride (allowed while < dilation): that convolution sees more rows
            // or columns than x has. Zero rows/columns there add nothing, as in PyTorch, so pad x
            // with them; the output padding left over is then below the stride.
            Some((gh, gw)) if gh >= h && gw >= wd => {
                let left = |g: usize, s: usize, p: usize, d: usize, k: usize, o: usize| o + 2 * p - ((g - 1) * s + d * (k - 1) + 1);
                let op2 = (left(gh, s.0, p.0, d.0, kh, oh), left(gw, s.1, p.1, d.1, kw, ow));
                let xp = x.pad2d([0, (gw - wd) as isize, 0, (gh - h) as isize], PadMode::Constant, 0.0)?;
                return unbatch(xp.conv_transpose2d(w, b, args, op2)?, added);
            }
            _ => return Err(Error::bad_shape("conv_transpose2d", x.shape(), "inconsistent geometry")),
        }
        let st = float_dispatch!("conv_transpose2d", x.dtype(), T => {
            let mut y = vec![T::zero(); n * c_out * oh * ow];
            x.with_data(|xd: &[T]| w.with_data(|wv: &[T]| conv::conv2d_backward_input(&geom, xd, wv, &mut y)))??;
            if let Some(b) = b {
                let bv = b.to_vec::<T>()?;
                for (i, plane) in y.chunks_mut(oh * ow).enumerate() {
                    plane.iter_mut().for_each(|v| *v += bv[i % c_out]);
                }
            }
            T::into_storage(y)
        });
        let y = Tensor::from_op(st, &[n, c_out, oh, ow], Op::ConvTranspose2d { x: x.clone(), w: w.clone(), b: b.cloned(), geom });
        unbatch(y, added)
    }

    /// Max pooling; also returns the winners' indices for backward (shared, not copied).
    fn max_pool2d_impl(&self, a: Pool2dArgs) -> Result<(Tensor, Arc<Vec<i64>>, bool)> {
        let (x, added) = as_4d(self, "max_pool2d")?;
        let g = pool_geom(&x, a, "max_pool2d")?;
        let (oh, ow) = g
            .out_hw()
            .ok_or_else(|| Error::bad_shape("max_pool2d", x.shape(), format!("kernel {:?} larger than the padded input", a.kernel)))?;
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let mut idx = vec![0i64; n * c * oh * ow];
        let s = float_dispatch!("max_pool2d", x.dtype(), T => {
            let mut y: Vec<T> = crate::recycle::output_vec(idx.len());
            x.with_data(|xd: &[T]| pool::max_pool2d(&g, xd, &mut y, &mut idx))?;
            T::into_storage(y)
        });
        let idx = Arc::new(idx);
        let y = Tensor::from_op(s, &[n, c, oh, ow], Op::MaxPool { x: x.clone(), idx: idx.clone() });
        Ok((y, idx, added))
    }
    /// `F.max_pool2d(..., return_indices=True)`: (values, flat indices within each plane).
    pub fn max_pool2d_with_indices(&self, a: Pool2dArgs) -> Result<(Tensor, Tensor)> {
        let (y, idx, added) = self.max_pool2d_impl(a)?;
        let it = Tensor::from_vec(idx.to_vec(), y.shape())?;
        Ok((unbatch(y, added)?, unbatch(it, added)?))
    }
    /// `F.max_pool2d`. x: (N, C, H, W) or (C, H, W).
    pub fn max_pool2d(&self, a: Pool2dArgs) -> Result<Tensor> {
        if crate::grad_mode::is_grad_enabled() && self.requires_grad() {
            let (y, _, added) = self.max_pool2d_impl(a)?;
            return unbatch(y, added);
        }
        // No gradient will flow: skip recording the argmax indices.
        let (x, added) = as_4d(self, "max_pool2d")?;
        let g = pool_geom(&x, a, "max_pool2d")?;
        let (oh, ow) = g
            .out_hw()
            .ok_or_else(|| Error::bad_shape("max_pool2d", x.shape(), format!("kernel {:?} larger than the padded input", a.kernel)))?;
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let s = float_dispatch!("max_pool2d", x.dtype(), T => {
            let mut y: Vec<T> = crate::recycle::output_vec(n * c * oh * ow);
            x.with_data(|xd: &[T]| pool::max_pool2d_values(&g, xd, &mut y))?;
            T::into_storage(y)
        });
        unbatch(Tensor::from_op(s, &[n, c, oh, ow], Op::MaxPool { x: x.clone(), idx: Arc::new(Vec::new()) }), added)
    }

    /// `F.max_unpool2d`: places each value at its recorded index in an (OH, OW) plane of zeros.
    pub fn max_unpool2d(&self, indices: &Tensor, out_hw: (usize, usize)) -> Result<Tensor> {
        let (x, added) = as_4d(self, "max_unpool2d")?;
        let (idx, _) = as_4d(indices, "max_unpool2d")?;
        if idx.shape() != x.shape() {
            return Err(Error::mismatch("max_unpool2d (indices)", idx.shape(), x.shape()));
        }
        let plane_out = out_hw.0 * out_hw.1;
        let iv = crate::shape::index_values(&idx, "max_unpool2d", plane_out)?;
        let iv: Vec<i64> = iv.into_iter().map(|v| v as i64).collect();
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let s = float_dispatch!("max_unpool2d", x.dtype(), T => {
            let mut y = vec![T::zero(); n * c * plane_out];
            // Assign, as PyTorch: overlapping pooling windows repeat an index with the same value,
            // which must land once, not be summed (backward gathers, so each copy gets the gradient).
            x.with_data(|xd: &[T]| {
                for (p, (xp, ip)) in xd.chunks(h * w).zip(iv.chunks(h * w)).enumerate() {
                    let yp = &mut y[p * plane_out..(p + 1) * plane_out];
                    xp.iter().zip(ip).for_each(|(&v, &i)| yp[i as usize] = v);
                }
            })?;
            T::into_storage(y)
        });
        let y = Tensor::from_op(s, &[n, c, out_hw.0, out_hw.1], Op::MaxUnpool { x: x.clone(), idx: idx.contiguous()? });
        unbatch(y, added)
    }

    /// `F.avg_pool2d` (dilation must be 1).
    pub fn avg_pool2d(&self, a: Pool2dArgs, count_include_pad: bool) -> Result<Tensor> {
        let (x, added) = as_4d(self, "avg_pool2d")?;
        let g = pool_geom(&x, a, "avg_pool2d")?;
        let (oh, ow) = g.out_hw().ok_or_else(|| Error::bad_shape("avg_pool2d", x.shape(), "kernel larger than the padded input"))?;
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let s = float_dispatch!("avg_pool2d", x.dtype(), T => {
            let mut y: Vec<T> = crate::recycle::output_vec(n * c * oh * ow);
            x.with_data(|xd: &[T]| pool::avg_pool2d(&g, count_include_pad, xd, &mut y))?;
            T::into_storage(y)
        });
        let y = Tensor::from_op(s, &[n, c, oh, ow], Op::AvgPool2d { x: x.clone(), geom: g, count_include_pad });
        unbatch(y, added)
    }

    /// `F.adaptive_avg_pool2d` to (OH, OW).
    pub fn adaptive_avg_pool2d(&self, out: (usize, usize)) -> Result<Tensor> {
        let (x, added) = as_4d(self, "adaptive_avg_pool2d")?;
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        if out.0 == 0 || out.1 == 0 || h == 0 || w == 0 {
            return Err(Error::bad_shape("adaptive_avg_pool2d", x.shape(), format!("output size {out:?} or input is empty")));
        }
        let s = float_dispatch!("adaptive_avg_pool2d", x.dtype(), T => {
            let mut y: Vec<T> = crate::recycle::output_vec(n * c * out.0 * out.1);
            x.with_data(|xd: &[T]| pool::adaptive_avg_pool2d(h, w, out.0, out.1, xd, &mut y))?;
            T::into_storage(y)
        });
        let y = Tensor::from_op(s, &[n, c, out.0, out.1], Op::AdaptiveAvgPool2d { x: x.clone() });
        unbatch(y, added)
    }

    /// `F.adaptive_max_pool2d(..., return_indices=True)`.
    pub fn adaptive_max_pool2d_with_indices(&self, out: (usize, usize)) -> Result<(Tensor, Tensor)> {
        let (x, added) = as_4d(self, "adaptive_max_pool2d")?;
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        if out.0 == 0 || out.1 == 0 || h == 0 || w == 0 {
            return Err(Error::bad_shape("adaptive_max_pool2d", x.shape(), format!("output size {out:?} or input is empty")));
        }
        let mut idx = vec![0i64; n * c * out.0 * out.1];
        let s = float_dispatch!("adaptive_max_pool2d", x.dtype(), T => {
            let mut y = vec![T::zero(); idx.len()];
            x.with_data(|xd: &[T]| pool::adaptive_max_pool2d(h, w, out.0, out.1, xd, &mut y, &mut idx))?;
            T::into_storage(y)
        });
        let shape = [n, c, out.0, out.1];
        let it = Tensor::from_vec(idx.clone(), &shape)?;
        let y = Tensor::from_op(s, &shape, Op::MaxPool { x: x.clone(), idx: Arc::new(idx) });
        Ok((unbatch(y, added)?, unbatch(it, added)?))
    }

    /// `F.batch_norm` over (N, C, *). In training, normalises with batch statistics and updates
    /// the running ones in place (unbiased variance, as PyTorch); in eval, uses the running ones.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        training: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        self.batch_norm_act(running_mean, running_var, weight, bias, training, momentum, eps, conv::Epilogue::None)
    }

    /// `act(F.batch_norm(...))` (ReLU, or a clamp such as ReLU6) with the activation applied in
    /// the normalising pass: the Conv → BN → ReLU pattern's activation costs no pass of its
    /// own over the tensor, and training keeps one tensor instead of two. The gradient equals
    /// that of batch_norm followed by `relu` / `clamp` (the derivative read off the output, as
    /// [`Tensor::conv2d_act`]).
    #[allow(clippy::too_many_arguments)] // F.batch_norm's arguments and the activation
    pub fn batch_norm_act(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        training: bool,
        momentum: f64,
        eps: f64,
        act: conv::Epilogue,
    ) -> Result<Tensor> {
        if self.ndim() < 2 {
            return Err(Error::bad_shape("batch_norm", self.shape(), "expects (N, C, ...)"));
        }
        let (n, c) = (self.shape()[0], self.shape()[1]);
        let sp: usize = self.shape()[2..].iter().product();
        for t in [running_mean, running_var, weight, bias].into_iter().flatten() {
            if t.shape() != [c] {
                return Err(Error::mismatch("batch_norm (per-channel tensor)", t.shape(), &[c]));
            }
        }
        let m = n * sp;
        let (mean, invstd, s) = float_dispatch!("batch_norm", self.dtype(), T => {
            // Borrowed, not copied (a copy of the input was ~8% of a MobileNet training step).
            self.with_data(|x: &[T]| -> Result<(Vec<f64>, Vec<f64>, Storage)> {
            let (mean, var): (Vec<f64>, Vec<f64>) = if training {
                if m <= 1 {
                    return Err(Error::bad_shape("batch_norm", self.shape(), "training needs more than one value per channel"));
                }
                let stats: Vec<(f64, f64)> = (0..c).into_par_iter().map(|ch| {
                    let plane = |i: usize| &x[(i * c + ch) * sp..(i * c + ch + 1) * sp];
                    // Vectorised f64 sums (cnnkit_kernels::simd): a serial f64 sum was ~10% of a MobileNet step.
                    let s: f64 = (0..n).map(|i| cnnkit_kernels::simd::sum_sq_dev_f64(plane(i), 0.0).0).sum();
                    let mu = s / m as f64;
                    let q: f64 = (0..n).map(|i| cnnkit_kernels::simd::sum_sq_dev_f64(plane(i), mu).1).sum();
                    (mu, q / m as f64)
                }).collect();
                let (mean, var): (Vec<f64>, Vec<f64>) = stats.into_iter().unzip();
                if let (Some(rm), Some(rv)) = (running_mean, running_var) {
                    rm.update_data(|d: &mut [T]| d.iter_mut().zip(&mean).for_each(|(r, &v)| *r = T::of_f64((1.0 - momentum) * r.as_f64() + momentum * v)))?;
                    let unbias = m as f64 / (m as f64 - 1.0);
                    rv.update_data(|d: &mut [T]| d.iter_mut().zip(&var).for_each(|(r, &v)| *r = T::of_f64((1.0 - momentum) * r.as_f64() + momentum * v * unbias)))?;
                }
                (mean, var)
            } else {
                match (running_mean, running_var) {
                    (Some(rm), Some(rv)) => (rm.to_f64_vec()?, rv.to_f64_vec()?),
                    _ => return Err(Error::invalid("batch_norm", "eval mode needs running statistics")),
                }
            };
            let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            let wv = weight.map(|w| w.to_f64_vec()).transpose()?;
            let bv = bias.map(|b| b.to_f64_vec()).transpose()?;
            let mut y: Vec<T> = crate::recycle::output_vec(x.len());
            y.par_chunks_mut(sp.max(1)).zip(x.par_chunks(sp.max(1))).enumerate().for_each(|(p, (yo, xi))| {
                let ch = p % c;
                let scale = invstd[ch] * wv.as_ref().map_or(1.0, |w| w[ch]);
                let shift = bv.as_ref().map_or(0.0, |b| b[ch]) - mean[ch] * scale;
                let (sc, sh) = (T::of_f64(scale), T::of_f64(shift));
                cnnkit_kernels::simd::with_best_isa(|| {
                    yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = v * sc + sh);
                    act.apply(yo);
                });
            });
            Ok((mean, invstd, T::into_storage(y)))
            })??
        });
        Ok(Tensor::from_op(
            s,
            self.shape(),
            Op::BatchNorm {
                x: self.clone(),
                w: weight.cloned(),
                b: bias.cloned(),
                mean: Arc::new(mean),
                invstd: Arc::new(invstd),
                training,
                act,
            },
        ))
    }

    fn softmax_impl(&self, dim: isize, log: bool) -> Result<Tensor> {
        let d = self.norm_dim(dim, "softmax")?;
        let (outer, len, inner) = split_at_dim(self.shape(), d);
        let s = float_dispatch!("softmax", self.dtype(), T => {
            let x = self.to_vec::<T>()?;
            let mut y = vec![T::zero(); x.len()];
            softmax_rows::<T>(&x, &mut y, outer, len, inner, log);
            T::into_storage(y)
        });
        Ok(Tensor::from_op(s, self.shape(), Op::Softmax { x: self.clone(), dim: d, log }))
    }
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    /// `F.interpolate(mode="nearest", size=(OH, OW))` on the last two dims.
    pub fn upsample_nearest2d(&self, oh: usize, ow: usize) -> Result<Tensor> {
        self.upsample_nearest2d_scaled(oh, ow, None)
    }

    /// `F.interpolate(mode="nearest", scale_factor=(sh, sw))` resizing to (OH, OW) = ⌊(H·sh, W·sw)⌋:
    /// with `scales` the source index is ⌊o / s⌋ rather than ⌊o · in/out⌋ (PyTorch's default
    /// recompute_scale_factor=None), which differs when in·s is not an integer.
    pub fn upsample_nearest2d_scaled(&self, oh: usize, ow: usize, scales: Option<(f64, f64)>) -> Result<Tensor> {
        let nd = self.ndim();
        if nd < 3 || oh == 0 || ow == 0 {
            return Err(Error::bad_shape("upsample_nearest2d", self.shape(), "expects (N, C, H, W) and a non-empty size"));
        }
        let (h, w) = (self.shape()[nd - 2], self.shape()[nd - 1]);
        let (iy, ix) = (nearest_taps(h, oh, scales.map(|s| s.0)), nearest_taps(w, ow, scales.map(|s| s.1)));
        let map = iy.iter().flat_map(|&y| ix.iter().map(move |&x| (y * w + x) as i64)).collect();
        self.plane_map(Arc::new(map), oh, ow, 0.0)
    }

    /// `F.interpolate(mode="bilinear", size=(OH, OW), align_corners=…)` on the last two dims.
    pub fn upsample_bilinear2d(&self, oh: usize, ow: usize, align_corners: bool) -> Result<Tensor> {
        self.upsample_bilinear2d_scaled(oh, ow, align_corners, None)
    }

    /// `F.interpolate(mode="bilinear", scale_factor=(sh, sw), align_corners=…)` resizing to
    /// (OH, OW): with `scales` (and align_corners false) source coordinates use 1/s rather than
    /// in/out, as PyTorch does by default (recompute_scale_factor=None).
    pub fn upsample_bilinear2d_scaled(&self, oh: usize, ow: usize, align_corners: bool, scales: Option<(f64, f64)>) -> Result<Tensor> {
        let (x, added) = as_4d(self, "upsample_bilinear2d")?;
        if oh == 0 || ow == 0 {
            return Err(Error::bad_shape("upsample_bilinear2d", x.shape(), "empty output size"));
        }
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (sh, sw) = (scales.map(|s| s.0), scales.map(|s| s.1));
        let (ty, tx) = (bilinear_taps(h, oh, align_corners, sh), bilinear_taps(w, ow, align_corners, sw));
        let s = float_dispatch!("upsample_bilinear2d", x.dtype(), T => {
            let xv = x.to_vec::<T>()?;
            let mut y = vec![T::zero(); n * c * oh * ow];
            y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, yp)| {
                let xp = &xv[p * h * w..(p + 1) * h * w];
                for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
                    for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                        let v = (1.0 - ly) * ((1.0 - lx) * xp[y0 * w + x0].as_f64() + lx * xp[y0 * w + x1].as_f64())
                            + ly * ((1.0 - lx) * xp[y1 * w + x0].as_f64() + lx * xp[y1 * w + x1].as_f64());
                        yp[oy * ow + ox] = T::of_f64(v);
                    }
                }
            });
            T::into_storage(y)
        });
        let y = Tensor::from_op(s, &[n, c, oh, ow], Op::Bilinear { x: x.clone(), align_corners, scales });
        unbatch(y, added)
    }
}

/// Nearest source index per output index, as PyTorch's nearest_idx (legacy "nearest"): copies
/// when out = in, halves when out = 2·in, else ⌊o·scale⌋ in f32 with scale = 1/s when a
/// scale_factor s was given and in/out otherwise.
fn nearest_taps(inp: usize, out: usize, scale_factor: Option<f64>) -> Vec<usize> {
    let scale = scale_factor.map_or(inp as f32 / out as f32, |s| (1.0 / s) as f32);
    (0..out)
        .map(|o| {
            if out == inp {
                o
            } else if out == 2 * inp {
                o >> 1
            } else {
                ((o as f32 * scale).floor() as usize).min(inp - 1)
            }
        })
        .collect()
}

/// Source taps (i0, i1, λ1) per output index, as PyTorch's area_pixel_compute_source_index;
/// `scale_factor` (the user's s, used as 1/s) replaces in/out when align_corners is false.
pub(crate) fn bilinear_taps(inp: usize, out: usize, align_corners: bool, scale_factor: Option<f64>) -> Vec<(usize, usize, f64)> {
    (0..out)
        .map(|o| {
            let src = if align_corners {
                if out > 1 {
                    o as f64 * (inp as f64 - 1.0) / (out as f64 - 1.0)
                } else {
                    0.0
                }
            } else {
                let scale = scale_factor.map_or(inp as f64 / out as f64, |s| 1.0 / s);
                ((o as f64 + 0.5) * scale - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(inp - 1);
            let i1 = (i0 + 1).min(inp - 1);
            (i0, i1, src - i0 as f64)
        })
        .collect()
}

/// (outer, len, inner) sizes around dim d for a contiguous shape.
pub(crate) fn split_at_dim(shape: &[usize], d: usize) -> (usize, usize, usize) {
    (shape[..d].iter().product(), shape[d], shape[d + 1..].iter().product())
}

fn softmax_rows<T: FloatElem>(x: &[T], y: &mut [T], outer: usize, len: usize, inner: usize, log: bool) {
    y.par_chunks_mut(len * inner).zip(x.par_chunks(len * inner)).take(outer).for_each(|(yo, xo)| {
        for i in 0..inner {
            let mut mx = f64::NEG_INFINITY;
            for k in 0..len {
                mx = mx.max(xo[k * inner + i].as_f64());
            }
            let mut s = 0.0;
            for k in 0..len {
                s += (xo[k * inner + i].as_f64() - mx).exp();
            }
            let ls = s.ln();
            for k in 0..len {
                let z = xo[k * inner + i].as_f64() - mx;
                yo[k * inner + i] = T::of_f64(if log { z - ls } else { z.exp() / s });
            }
        }
    });
}

fn conv_geom(x: &Tensor, w: &Tensor, a: Conv2dArgs) -> Result<ConvGeom> {
    if w.ndim() != 4 {
        return Err(Error::bad_shape("conv2d", w.shape(), "weight must be (C_out, C_in/groups, KH, KW)"));
    }
    let (n, c_in, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (c_out, cpg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    if a.groups == 0 || c_in % a.groups != 0 || c_out % a.groups != 0 {
        return Err(Error::invalid("conv2d", format!("groups={} must divide in_channels={c_in} and out_channels={c_out}", a.groups)));
    }
    if cpg * a.groups != c_in {
        return Err(Error::mismatch("conv2d (input channels vs weight)", x.shape(), w.shape()));
    }
    if a.stride.0 == 0 || a.stride.1 == 0 || a.dilation.0 == 0 || a.dilation.1 == 0 || kh == 0 || kw == 0 {
        return Err(Error::invalid("conv2d", "stride, dilation and kernel size must be positive"));
    }
    Ok(ConvGeom { n, c_in, h, w: wd, c_out, kh, kw, stride: a.stride, padding: a.padding, dilation: a.dilation, groups: a.groups })
}

fn pool_geom(x: &Tensor, a: Pool2dArgs, op: &'static str) -> Result<PoolGeom> {
    let (kh, kw) = a.kernel;
    if kh == 0 || kw == 0 || a.stride.0 == 0 || a.stride.1 == 0 || a.dilation.0 == 0 || a.dilation.1 == 0 {
        return Err(Error::invalid(op, "kernel, stride and dilation must be positive"));
    }
    if a.padding.0 * 2 > kh || a.padding.1 * 2 > kw {
        return Err(Error::invalid(op, format!("padding {:?} should be at most half of the kernel {:?}", a.padding, a.kernel)));
    }
    Ok(PoolGeom {
        h: x.shape()[2],
        w: x.shape()[3],
        kh,
        kw,
        stride: a.stride,
        padding: a.padding,
        dilation: a.dilation,
        ceil_mode: a.ceil_mode,
    })
}
