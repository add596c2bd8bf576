//! Reverse-mode autodiff: a topological sort of the recorded graph, then one backward rule
//! per [`Op`] variant (no wildcard arm: a new op without a rule does not compile).
//! Backward runs with grad recording off (no higher-order gradients).

use crate::dtype::{Elem, FloatElem};
use crate::op::{BinaryOp, Op};
use crate::tensor::TensorId;
use crate::{float_dispatch, grad_mode, Error, Result, Tensor};
use cnnkit_kernels::{conv, pool};
use num_traits::Zero as _;
use std::collections::{HashMap, HashSet};

impl Tensor {
    /// Backpropagates from a one-element tensor (`loss.backward()`).
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Backward(format!("grad can be implicitly created only for scalar outputs (shape {:?})", self.shape())));
        }
        self.backward_with(&self.ones_like())
    }

    /// Backpropagates `grad` (shape of self), accumulating into leaves' `.grad()`.
    pub fn backward_with(&self, grad: &Tensor) -> Result<()> {
        if !self.requires_grad() {
            return Err(Error::Backward("the tensor does not require grad and has no grad_fn".into()));
        }
        if grad.shape() != self.shape() {
            return Err(Error::mismatch("backward (grad shape)", grad.shape(), self.shape()));
        }
        let order = topo_order(self);
        let _guard = grad_mode::no_grad();
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        grads.insert(self.id(), grad.clone());
        for node in order {
            let Some(g) = grads.remove(&node.id()) else { continue };
            let Some(op) = node.op() else {
                if node.requires_grad() {
                    node.accumulate_grad(&g)?;
                }
                continue;
            };
            if node.retains_grad() {
                node.accumulate_grad(&g)?;
            }
            for (input, gi) in input_grads(op, &node, &g)? {
                if !input.requires_grad() {
                    continue;
                }
                if gi.shape() != input.shape() {
                    return Err(Error::Backward(format!("internal: gradient shape {:?} for input {:?}", gi.shape(), input.shape())));
                }
                let merged = match grads.remove(&input.id()) {
                    Some(prev) => prev.add(&gi)?,
                    None => gi,
                };
                grads.insert(input.id(), merged);
            }
        }
        Ok(())
    }
}

/// Nodes reachable from `root` that require grad, outputs before inputs.
fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut post = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: deep networks would overflow a recursive one.
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            post.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(op) = t.op() {
            for i in op.inputs() {
                if i.requires_grad() && !seen.contains(&i.id()) {
                    stack.push((i.clone(), false));
                }
            }
        }
    }
    post.reverse();
    post
}

fn vec_t<T: Elem>(v: Vec<T>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, shape)
}

/// g ⊙ act'(·) from the activation's output y: 1 where y > 0 (ReLU) or lo < y < hi (clamp),
/// else 0 — strictly inside the epilogue's bounds. In parallel chunks, vectorised.
fn activation_grad<T: FloatElem>(act: conv::Epilogue, y: &[T], g: &[T]) -> Vec<T> {
    use rayon::prelude::*;
    let (lo, hi) = act.bounds::<T>();
    let mut out: Vec<T> = crate::recycle::output_vec(g.len());
    const CHUNK: usize = cnnkit_kernels::simd::CHUNK;
    out.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(|((o, yc), gc)| {
        cnnkit_kernels::simd::with_best_isa(|| {
            o.iter_mut().zip(yc).zip(gc).for_each(|((o, &v), &gg)| *o = if v > lo && v < hi { gg } else { T::zero() })
        })
    });
    out
}

/// The gradient of each input (those that may need one) given the output's gradient `g`.
fn input_grads(op: &Op, y: &Tensor, g: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
    let need = |t: &Tensor| t.requires_grad();
    let mut out = Vec::new();
    match op {
        Op::Unary { x, op } => {
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let v = x.with_data(|xv: &[T]| y.with_data(|yv: &[T]| g.with_data(|gv: &[T]| crate::elementwise::unary_grad_kernel(*op, xv, yv, gv))))???;
                vec_t(v, x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::Binary { a, b, op: op @ (BinaryOp::Add | BinaryOp::Sub) } => {
            // No partials needed: the gradient is g (or −g), summed over broadcast dims.
            if need(a) {
                out.push((a.clone(), g.sum_to(a.shape())?));
            }
            if need(b) {
                let gb = if *op == BinaryOp::Sub { g.neg()? } else { g.clone() };
                out.push((b.clone(), gb.sum_to(b.shape())?));
            }
        }
        Op::Binary { a, b, op } => {
            let shape = y.shape().to_vec();
            let (ae, be) = (a.detach().broadcast_to(&shape)?, b.detach().broadcast_to(&shape)?);
            float_dispatch!("backward", y.dtype(), T => {
                let (av, bv, yv, gv) = (ae.to_vec::<T>()?, be.to_vec::<T>()?, y.to_vec::<T>()?, g.to_vec::<T>()?);
                let parts: Vec<(T, T)> = (0..gv.len()).map(|i| op.partials(av[i], bv[i], yv[i])).collect();
                if need(a) {
                    out.push((a.clone(), vec_t(parts.iter().zip(&gv).map(|(p, &gg)| gg * p.0).collect(), &shape)?.sum_to(a.shape())?));
                }
                if need(b) {
                    out.push((b.clone(), vec_t(parts.iter().zip(&gv).map(|(p, &gg)| gg * p.1).collect(), &shape)?.sum_to(b.shape())?));
                }
            });
        }
        Op::Clamp { x, min, max } => {
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let (xv, gv) = (x.to_vec::<T>()?, g.to_vec::<T>()?);
                // Strictly inside the bounds, as PyTorch's clamp with scalar bounds: a value
                // sitting exactly on a bound gets no gradient.
                let pass = |v: f64| min.is_none_or(|m| v > m) && max.is_none_or(|m| v < m);
                vec_t(xv.iter().zip(&gv).map(|(&v, &gg)| if pass(v.as_f64()) { gg } else { T::zero() }).collect(), x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::Where { cond, a, b } => {
            let z = g.zeros_like();
            if need(a) {
                out.push((a.clone(), Tensor::where_cond(cond, g, &z)?.sum_to(a.shape())?));
            }
            if need(b) {
                out.push((b.clone(), Tensor::where_cond(cond, &z, g)?.sum_to(b.shape())?));
            }
        }
        Op::Cast { x } => out.push((x.clone(), g.to_dtype(x.dtype())?)),
        Op::Sum { x, .. } => out.push((x.clone(), g.broadcast_to(x.shape())?)),
        Op::SelectDim { x, dim, idx } => out.push((x.clone(), x.zeros_like().scatter_add(*dim as isize, idx, g)?)),
        Op::Reshape { x } => out.push((x.clone(), g.reshape(x.shape())?)),
        Op::Permute { x, perm } => {
            let mut inv = vec![0; perm.len()];
            perm.iter().enumerate().for_each(|(i, &p)| inv[p] = i);
            out.push((x.clone(), g.permute(&inv)?));
        }
        Op::Expand { x } => out.push((x.clone(), g.sum_to(x.shape())?)),
        Op::Narrow { x, dim, start } => {
            let mut parts = Vec::new();
            let mut s = x.shape().to_vec();
            if *start > 0 {
                s[*dim] = *start;
                parts.push(Tensor::zeros(&s, g.dtype()));
            }
            parts.push(g.clone());
            let rest = x.shape()[*dim] - start - g.shape()[*dim];
            if rest > 0 {
                s[*dim] = rest;
                parts.push(Tensor::zeros(&s, g.dtype()));
            }
            out.push((x.clone(), Tensor::cat(&parts, *dim as isize)?));
        }
        Op::Copy { x } => out.push((x.clone(), g.clone())),
        Op::Cat { xs, dim } => {
            let mut at = 0;
            for x in xs {
                let len = x.shape()[*dim];
                if need(x) {
                    out.push((x.clone(), g.narrow(*dim as isize, at, len)?));
                }
                at += len;
            }
        }
        Op::IndexSelect { x, dim, idx } => {
            let (outer, n, inner) = crate::nn_ops::split_at_dim(x.shape(), *dim);
            let iv = idx.to_vec::<i64>()?;
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let gv = g.to_vec::<T>()?;
                let mut gx = vec![T::zero(); x.numel()];
                for o in 0..outer {
                    for (j, &i) in iv.iter().enumerate() {
                        let (dst, src) = ((o * n + i as usize) * inner, (o * iv.len() + j) * inner);
                        for k in 0..inner { gx[dst + k] += gv[src + k]; }
                    }
                }
                vec_t(gx, x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::Gather { x, dim, idx } => out.push((x.clone(), x.zeros_like().scatter_add(*dim as isize, idx, g)?)),
        Op::Scatter { x, dim, idx, src, add } => {
            if need(x) {
                let gx = if *add { g.clone() } else { g.scatter(*dim as isize, idx, &Tensor::zeros(idx.shape(), g.dtype()))? };
                out.push((x.clone(), gx));
            }
            if need(src) {
                out.push((src.clone(), g.gather(*dim as isize, idx)?));
            }
        }
        Op::PlaneMap { x, map } => {
            let nd = x.ndim();
            let plane_in = x.shape()[nd - 2] * x.shape()[nd - 1];
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let gv = g.to_vec::<T>()?;
                let mut gx = vec![T::zero(); x.numel()];
                for (gp, xp) in gv.chunks(map.len().max(1)).zip(gx.chunks_mut(plane_in.max(1))) {
                    for (&m, &v) in map.iter().zip(gp) {
                        if m >= 0 { xp[m as usize] += v; }
                    }
                }
                vec_t(gx, x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::MatMul { a, b } => {
            if need(a) {
                out.push((a.clone(), g.matmul(&b.detach().transpose(-1, -2)?)?.sum_to(a.shape())?));
            }
            if need(b) {
                out.push((b.clone(), a.detach().transpose(-1, -2)?.matmul(g)?.sum_to(b.shape())?));
            }
        }
        Op::Conv2d { x, w, b, geom, act } => float_dispatch!("backward", x.dtype(), T => g.with_data(|gv: &[T]| -> Result<()> {
            // A fused activation first: the convolution's output gradient is g where the
            // activation passed its input through (read off the output y), zero elsewhere.
            let masked: Option<Vec<T>> = match act {
                conv::Epilogue::None => None,
                _ => Some(y.with_data(|yv: &[T]| activation_grad(*act, yv, gv))?),
            };
            let gv: &[T] = masked.as_deref().unwrap_or(gv);
            // Both kernels overwrite their output: recycled buffers need no zero-fill.
            if need(x) {
                let mut gx: Vec<T> = crate::recycle::output_vec(x.numel());
                w.with_data(|wd: &[T]| conv::conv2d_backward_input(geom, gv, wd, &mut gx))?;
                out.push((x.clone(), vec_t(gx, x.shape())?));
            }
            if need(w) {
                let mut gw: Vec<T> = crate::recycle::output_vec(w.numel());
                x.with_data(|xd: &[T]| conv::conv2d_backward_weight(geom, xd, gv, &mut gw))?;
                out.push((w.clone(), vec_t(gw, w.shape())?));
            }
            if let Some(b) = b.as_ref().filter(|b| need(b)) {
                let mut gb = vec![T::zero(); geom.c_out];
                conv::conv2d_backward_bias(geom, gv, &mut gb);
                out.push((b.clone(), vec_t(gb, b.shape())?));
            }
            // The masked gradient back to the recycling pool (a plain Vec is not returned by
            // a tensor's drop): without this every step allocated and zero-filled it afresh
            // (memset was 1.4% of a cifar-cnn training step).
            if let Some(m) = masked {
                crate::recycle::give(T::into_storage(m));
            }
            Ok(())
        })??),
        Op::ConvTranspose2d { x, w, b, geom } => float_dispatch!("backward", x.dtype(), T => {
            let gv = g.to_vec::<T>()?;
            if need(x) {
                let mut gx = vec![T::zero(); x.numel()];
                w.with_data(|wd: &[T]| conv::conv2d_forward(geom, &gv, wd, None, &mut gx))?;
                out.push((x.clone(), vec_t(gx, x.shape())?));
            }
            if need(w) {
                let mut gw = vec![T::zero(); w.numel()];
                x.with_data(|xd: &[T]| conv::conv2d_backward_weight(geom, &gv, xd, &mut gw))?;
                out.push((w.clone(), vec_t(gw, w.shape())?));
            }
            if let Some(b) = b.as_ref().filter(|b| need(b)) {
                let plane = geom.h * geom.w;
                let mut gb = vec![T::zero(); geom.c_in];
                for (i, p) in gv.chunks(plane).enumerate() {
                    gb[i % geom.c_in] += p.iter().copied().sum::<T>();
                }
                out.push((b.clone(), vec_t(gb, b.shape())?));
            }
        }),
        Op::MaxPool { x, idx } => {
            let (pin, pout) = (x.shape()[2] * x.shape()[3], y.shape()[2] * y.shape()[3]);
            let gx = float_dispatch!("backward", x.dtype(), T => {
                // The scatter zeroes each plane itself, while it is in cache.
                let mut gx: Vec<T> = crate::recycle::output_vec(x.numel());
                g.with_data(|gv: &[T]| pool::scatter_plane_indices(gv, idx, pin, pout, &mut gx))?;
                vec_t(gx, x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::MaxUnpool { x, idx } => {
            let (pin, pout) = (x.shape()[2] * x.shape()[3], y.shape()[2] * y.shape()[3]);
            let iv = idx.to_vec::<i64>()?;
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let mut gx = vec![T::zero(); x.numel()];
                pool::gather_plane_indices(&g.to_vec::<T>()?, &iv, pout, pin, &mut gx);
                vec_t(gx, x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::AvgPool2d { x, geom, count_include_pad } => {
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let mut gx = vec![T::zero(); x.numel()];
                pool::avg_pool2d_backward(geom, *count_include_pad, &g.to_vec::<T>()?, &mut gx);
                vec_t(gx, x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::AdaptiveAvgPool2d { x } => {
            let (h, w, oh, ow) = (x.shape()[2], x.shape()[3], y.shape()[2], y.shape()[3]);
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let mut gx = vec![T::zero(); x.numel()];
                pool::adaptive_avg_pool2d_backward(h, w, oh, ow, &g.to_vec::<T>()?, &mut gx);
                vec_t(gx, x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::BatchNorm { x, w, b, mean, invstd, training, act } => float_dispatch!("backward", x.dtype(), T => {
            // A fused activation: the normalised output's gradient is g masked by the output.
            let masked;
            let g = if *act == conv::Epilogue::None {
                g
            } else {
                let m = y.with_data(|yv: &[T]| g.with_data(|gv: &[T]| activation_grad(*act, yv, gv)))??;
                masked = vec_t(m, g.shape())?;
                &masked
            };
            batch_norm_backward::<T>(x, w.as_ref(), b.as_ref(), mean, invstd, *training, g, &mut out)?;
        }),
        Op::Softmax { x, dim, log } => {
            let (outer, len, inner) = crate::nn_ops::split_at_dim(x.shape(), *dim);
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let (yv, gv) = (y.to_vec::<T>()?, g.to_vec::<T>()?);
                let mut gx = vec![T::zero(); yv.len()];
                for o in 0..outer {
                    for i in 0..inner {
                        let at = |k: usize| (o * len + k) * inner + i;
                        if *log {
                            let s: f64 = (0..len).map(|k| gv[at(k)].as_f64()).sum();
                            for k in 0..len { gx[at(k)] = T::of_f64(gv[at(k)].as_f64() - yv[at(k)].as_f64().exp() * s); }
                        } else {
                            let s: f64 = (0..len).map(|k| gv[at(k)].as_f64() * yv[at(k)].as_f64()).sum();
                            for k in 0..len { gx[at(k)] = T::of_f64(yv[at(k)].as_f64() * (gv[at(k)].as_f64() - s)); }
                        }
                    }
                }
                vec_t(gx, x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::Bilinear { x, align_corners, scales } => {
            let (h, w, oh, ow) = (x.shape()[2], x.shape()[3], y.shape()[2], y.shape()[3]);
            let (sh, sw) = (scales.map(|s| s.0), scales.map(|s| s.1));
            let (ty, tx) =
                (crate::nn_ops::bilinear_taps(h, oh, *align_corners, sh), crate::nn_ops::bilinear_taps(w, ow, *align_corners, sw));
            let gx = float_dispatch!("backward", x.dtype(), T => {
                let gv = g.to_vec::<T>()?;
                let mut gx = vec![0.0f64; x.numel()];
                for (gp, xp) in gv.chunks(oh * ow).zip(gx.chunks_mut(h * w)) {
                    for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
                        for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                            let v = gp[oy * ow + ox].as_f64();
                            xp[y0 * w + x0] += (1.0 - ly) * (1.0 - lx) * v;
                            xp[y0 * w + x1] += (1.0 - ly) * lx * v;
                            xp[y1 * w + x0] += ly * (1.0 - lx) * v;
                            xp[y1 * w + x1] += ly * lx * v;
                        }
                    }
                }
                vec_t(gx.into_iter().map(T::of_f64).collect::<Vec<T>>(), x.shape())?
            });
            out.push((x.clone(), gx));
        }
        Op::Custom { f, inputs } => {
            let gs = f.backward(inputs, &y.detach(), g)?;
            if gs.len() != inputs.len() {
                return Err(Error::Backward(format!("custom op {} returned {} gradients for {} inputs", f.name(), gs.len(), inputs.len())));
            }
            for (x, gi) in inputs.iter().zip(gs) {
                if let Some(gi) = gi {
                    out.push((x.clone(), gi));
                }
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn batch_norm_backward<T: FloatElem>(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    mean: &[f64],
    invstd: &[f64],
    training: bool,
    g: &Tensor,
    out: &mut Vec<(Tensor, Tensor)>,
) -> Result<()> {
    use rayon::prelude::*;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let sp: usize = x.shape()[2..].iter().product();
    let m = (n * sp) as f64;
    // Contiguous copies only when needed; gradients stay keyed by the original `x`.
    let (xc, gc) = (x.contiguous()?, g.contiguous()?);
    let wv = w.map(|w| w.to_f64_vec()).transpose()?;
    xc.with_data(|xv: &[T]| {
        gc.with_data(|gv: &[T]| -> Result<()> {
            // Per channel, in parallel: Σg and Σg·x̂ with x̂ = (x − mean)·invstd, accumulated in f64.
            let sums: Vec<(f64, f64)> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                    for i in 0..n {
                        let r = (i * c + ch) * sp..(i * c + ch + 1) * sp;
                        let (a, b) = cnnkit_kernels::simd::sums_dev_f64(&gv[r.clone()], &xv[r], mean[ch]);
                        sg += a;
                        sgx += b;
                    }
                    (sg, sgx * invstd[ch])
                })
                .collect();
            if x.requires_grad() {
                // gx = k1·g + k2·x + k3 per channel: the training-mode formula
                // w·invstd·(g − Σg/m − x̂·Σg·x̂/m) with its per-channel constants folded in f64.
                let k: Vec<(T, T, T)> = (0..c)
                    .map(|ch| {
                        let wc = wv.as_ref().map_or(1.0, |w| w[ch]);
                        let (sg, sgx) = sums[ch];
                        let k1 = wc * invstd[ch];
                        if training {
                            let k2 = -k1 * invstd[ch] * sgx / m;
                            let k3 = -k1 * sg / m - k2 * mean[ch];
                            (T::of_f64(k1), T::of_f64(k2), T::of_f64(k3))
                        } else {
                            (T::of_f64(k1), T::zero(), T::zero())
                        }
                    })
                    .collect();
                let mut gx: Vec<T> = crate::recycle::output_vec(xv.len());
                gx.par_chunks_mut(sp.max(1)).enumerate().for_each(|(p, o)| {
                    let (k1, k2, k3) = k[p % c];
                    let r = p * sp..(p + 1) * sp;
                    cnnkit_kernels::simd::with_best_isa(|| {
                        o.iter_mut().zip(&gv[r.clone()]).zip(&xv[r]).for_each(|((o, &gg), &xx)| *o = k1 * gg + k2 * xx + k3)
                    });
                });
                out.push((x.clone(), vec_t(gx, x.shape())?));
            }
            let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
            if let Some(w) = w.filter(|w| w.requires_grad()) {
                out.push((w.clone(), vec_t(sum_gx.iter().map(|&v| T::of_f64(v)).collect::<Vec<T>>(), w.shape())?));
            }
            if let Some(b) = b.filter(|b| b.requires_grad()) {
                out.push((b.clone(), vec_t(sum_g.iter().map(|&v| T::of_f64(v)).collect::<Vec<T>>(), b.shape())?));
            }
            Ok(())
        })
    })???;
    Ok(())
}
