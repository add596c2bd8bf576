//! Naive twins of the fast kernels: the obvious loops, used only to test the fast paths.

use crate::conv::ConvGeom;
use crate::Float;

/// Largest |a − b| over paired elements, a NaN difference counting as infinite (`f64::max`
/// would skip it and let a NaN result pass). For comparing fast kernels with their twins.
pub fn max_abs_diff<A: Copy + Into<f64>>(a: &[A], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, y)| (x.into() - y).abs()).fold(0.0, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) })
}

/// c (m, n) += a (m, k) @ b (k, n), all row-major.
pub fn matmul_naive<T: Float>(a: &[T], b: &[T], c: &mut [T], m: usize, k: usize, n: usize) {
    for i in 0..m {
        for j in 0..n {
            let mut s = T::zero();
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] += s;
        }
    }
}

/// The input pixel tapped by output (oy, ox) and kernel (ki, kj), or None inside padding.
fn tap(g: &ConvGeom, oy: usize, ox: usize, ki: usize, kj: usize) -> Option<(usize, usize)> {
    let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.padding.0 as isize;
    let ix = (ox * g.stride.1 + kj * g.dilation.1) as isize - g.padding.1 as isize;
    (iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w).then_some((iy as usize, ix as usize))
}

/// Direct convolution. Shapes as in [`crate::conv::conv2d_forward`].
pub fn conv2d_naive<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
    let (oh, ow) = g.out_hw().unwrap();
    let (cpg, cog) = (g.c_in / g.groups, g.c_out / g.groups);
    let mut y = vec![T::zero(); g.n * g.c_out * oh * ow];
    for n in 0..g.n {
        for co in 0..g.c_out {
            let grp = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b.map_or(T::zero(), |b| b[co]);
                    for ci in 0..cpg {
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                if let Some((iy, ix)) = tap(g, oy, ox, ki, kj) {
                                    let xv = x[((n * g.c_in + grp * cpg + ci) * g.h + iy) * g.w + ix];
                                    s += xv * w[((co * cpg + ci) * g.kh + ki) * g.kw + kj];
                                }
                            }
                        }
                    }
                    y[((n * g.c_out + co) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    y
}

/// Direct backward: returns (gx, gw).
pub fn conv2d_backward_naive<T: Float>(g: &ConvGeom, x: &[T], w: &[T], gy: &[T]) -> (Vec<T>, Vec<T>) {
    let (oh, ow) = g.out_hw().unwrap();
    let (cpg, cog) = (g.c_in / g.groups, g.c_out / g.groups);
    let mut gx = vec![T::zero(); x.len()];
    let mut gw = vec![T::zero(); w.len()];
    for n in 0..g.n {
        for co in 0..g.c_out {
            let grp = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let go = gy[((n * g.c_out + co) * oh + oy) * ow + ox];
                    for ci in 0..cpg {
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                if let Some((iy, ix)) = tap(g, oy, ox, ki, kj) {
                                    let xi = ((n * g.c_in + grp * cpg + ci) * g.h + iy) * g.w + ix;
                                    let wi = ((co * cpg + ci) * g.kh + ki) * g.kw + kj;
                                    gx[xi] += go * w[wi];
                                    gw[wi] += go * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (gx, gw)
}

/// Direct max pooling over every tap with bounds checks: (values, indices) per plane.
pub fn max_pool2d_naive<T: Float>(g: &crate::pool::PoolGeom, x: &[T], planes: usize) -> (Vec<T>, Vec<i64>) {
    let (oh, ow) = g.out_hw().unwrap();
    let mut y = Vec::new();
    let mut idx = Vec::new();
    for p in 0..planes {
        let xp = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = T::neg_infinity();
                let mut bi: i64 = -1;
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.padding.0 as isize;
                        let ix = (ox * g.stride.1 + kj * g.dilation.1) as isize - g.padding.1 as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let at = iy as usize * g.w + ix as usize;
                        if bi < 0 || xp[at] > best || xp[at].is_nan() {
                            best = xp[at];
                            bi = at as i64;
                        }
                    }
                }
                y.push(best);
                idx.push(bi);
            }
        }
    }
    (y, idx)
}

/// `n` pseudo-random values in [−0.5, 0.5) from a 64-bit LCG advanced in `seed`: the test
/// inputs of the kernel modules (deterministic, so a failing case replays).
pub fn rand_vec(n: usize, seed: &mut u64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        })
        .collect()
}
