//! Elementwise ops: unary math and activations, broadcasting binary arithmetic, comparisons,
//! clamp, where, dtype casts.

use crate::dtype::{Elem, FloatElem};
use crate::op::{BinaryOp, Op, UnaryOp};
use crate::{float_dispatch, DType, Error, Result, Tensor};

/// out[i] = f(x[i]): parallel chunks, vectorised for the CPU at hand (cnnkit-kernels::simd),
/// into a recycled buffer inside a recycling scope (see [`crate::recycle`]), else a new one.
pub(crate) fn map_vec<T: Copy + Send + Sync, U: Elem>(x: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    match crate::recycle::take::<U>(x.len()) {
        Some(mut out) => {
            cnnkit_kernels::simd::map_into(x, &mut out, f);
            out
        }
        None => cnnkit_kernels::simd::map(x, f),
    }
}

/// out[i] = f(a[i], b[i]), as [`map_vec`].
pub(crate) fn zip_vec<T: Copy + Send + Sync, U: Elem>(a: &[T], b: &[T], f: impl Fn(T, T) -> U + Sync + Send) -> Vec<U> {
    match crate::recycle::take::<U>(a.len().min(b.len())) {
        Some(mut out) => {
            cnnkit_kernels::simd::zip_into(a, b, &mut out, f);
            out
        }
        None => cnnkit_kernels::simd::zip(a, b, f),
    }
}

fn c<T: FloatElem>(v: f64) -> T {
    T::of_f64(v)
}

fn std_normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// y = f(x) over a slice. The hottest ops get loops of their own so they vectorise; the
/// rest go through [`UnaryOp::apply`], whose `match` is too large to inline per element.
pub(crate) fn unary_kernel<T: FloatElem>(op: UnaryOp, d: &[T]) -> Vec<T> {
    let zero = T::zero();
    match op {
        UnaryOp::Relu => map_vec(d, move |v| if v > zero || v.is_nan() { v } else { zero }),
        UnaryOp::AddScalar(c) => {
            let c = T::of_f64(c);
            map_vec(d, move |v| v + c)
        }
        UnaryOp::MulScalar(c) => {
            let c = T::of_f64(c);
            map_vec(d, move |v| v * c)
        }
        UnaryOp::Neg => map_vec(d, |v| -v),
        // MobileNet's activations: the same branches as `apply`, in loops of their own so
        // they compile to vector selects (through `apply` they were 40% of an inference).
        UnaryOp::Hardtanh(lo, hi) => {
            let (lo, hi) = (T::of_f64(lo), T::of_f64(hi));
            map_vec(d, move |v| {
                if v < lo {
                    lo
                } else if v > hi {
                    hi
                } else {
                    v
                }
            })
        }
        UnaryOp::Hardswish => {
            let (three, six) = (T::of_f64(3.0), T::of_f64(6.0));
            map_vec(d, move |v| {
                if v <= -three {
                    zero
                } else if v >= three {
                    v
                } else {
                    v * (v + three) / six
                }
            })
        }
        UnaryOp::Hardsigmoid => {
            let (three, six, half, one) = (T::of_f64(3.0), T::of_f64(6.0), T::of_f64(0.5), T::one());
            map_vec(d, move |v| {
                if v <= -three {
                    zero
                } else if v >= three {
                    one
                } else {
                    v / six + half
                }
            })
        }
        _ => map_vec(d, |v| op.apply(v)),
    }
}

/// g·f'(x) over slices (x: input, y: output, g: output gradient), with the same fast paths.
pub(crate) fn unary_grad_kernel<T: FloatElem>(op: UnaryOp, x: &[T], y: &[T], g: &[T]) -> Vec<T> {
    let zero = T::zero();
    match op {
        UnaryOp::Relu => zip_vec(x, g, move |a, gg| if a > zero { gg } else { zero }),
        UnaryOp::AddScalar(_) => g.to_vec(),
        UnaryOp::MulScalar(c) => {
            let c = T::of_f64(c);
            map_vec(g, move |gg| gg * c)
        }
        UnaryOp::Neg => map_vec(g, |gg| -gg),
        UnaryOp::Tanh => zip_vec(y, g, |b, gg| gg * (T::one() - b * b)),
        UnaryOp::Sigmoid => zip_vec(y, g, |b, gg| gg * b * (T::one() - b)),
        UnaryOp::Hardtanh(lo, hi) => {
            let (lo, hi) = (T::of_f64(lo), T::of_f64(hi));
            zip_vec(x, g, move |a, gg| if a > lo && a < hi { gg } else { zero })
        }
        UnaryOp::Hardswish => {
            let (three, half) = (T::of_f64(3.0), T::of_f64(0.5));
            zip_vec(x, g, move |a, gg| {
                if a <= -three {
                    zero
                } else if a < three {
                    gg * (a / three + half)
                } else {
                    gg
                }
            })
        }
        _ => x.iter().zip(y).zip(g).map(|((&a, &b), &gg)| gg * op.derivative(a, b)).collect(),
    }
}

impl UnaryOp {
    /// y = f(x).
    pub fn apply<T: FloatElem>(self, x: T) -> T {
        let one = T::one();
        let zero = T::zero();
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => one / (one + (-x).exp()),
            UnaryOp::Recip => one / x,
            // NaN propagates, as in PyTorch.
            UnaryOp::Relu => {
                if x > zero || x.is_nan() {
                    x
                } else {
                    zero
                }
            }
            UnaryOp::LeakyRelu(s) => {
                if x > zero {
                    x
                } else {
                    x * c(s)
                }
            }
            UnaryOp::Elu { alpha, scale, input_scale } => {
                if x > zero {
                    x * c(scale)
                } else {
                    c::<T>(scale * alpha) * ((x * c(input_scale)).exp() - one)
                }
            }
            UnaryOp::Gelu => c(x.as_f64() * std_normal_cdf(x.as_f64())),
            UnaryOp::GeluTanh => {
                let xf = x.as_f64();
                c(0.5 * xf * (1.0 + (SQRT_2_OVER_PI * (xf + 0.044715 * xf * xf * xf)).tanh()))
            }
            UnaryOp::Silu => x / (one + (-x).exp()),
            UnaryOp::Mish => x * softplus(x, one, c(20.0)).tanh(),
            UnaryOp::Hardswish => {
                if x <= c(-3.0) {
                    zero
                } else if x >= c(3.0) {
                    x
                } else {
                    x * (x + c(3.0)) / c(6.0)
                }
            }
            UnaryOp::Hardsigmoid => {
                if x <= c(-3.0) {
                    zero
                } else if x >= c(3.0) {
                    one
                } else {
                    x / c(6.0) + c(0.5)
                }
            }
            UnaryOp::Hardtanh(lo, hi) => {
                if x < c(lo) {
                    c(lo)
                } else if x > c(hi) {
                    c(hi)
                } else {
                    x
                }
            }
            UnaryOp::Softplus { beta, threshold } => softplus(x, c(beta), c(threshold)),
            UnaryOp::AddScalar(s) => x + c(s),
            UnaryOp::MulScalar(s) => x * c(s),
            UnaryOp::PowScalar(p) => {
                if p == 2.0 {
                    x * x
                } else {
                    x.powf(c(p))
                }
            }
        }
    }

    /// dy/dx at x, given y = f(x) too (cheaper for exp, tanh, sigmoid, sqrt).
    pub fn derivative<T: FloatElem>(self, x: T, y: T) -> T {
        let one = T::one();
        let zero = T::zero();
        match self {
            UnaryOp::Neg => -one,
            UnaryOp::Exp => y,
            UnaryOp::Log => one / x,
            UnaryOp::Sqrt => c::<T>(0.5) / y,
            UnaryOp::Abs => {
                if x > zero {
                    one
                } else if x < zero {
                    -one
                } else {
                    zero
                }
            }
            UnaryOp::Sin => x.cos(),
            UnaryOp::Cos => -x.sin(),
            UnaryOp::Tanh => one - y * y,
            UnaryOp::Sigmoid => y * (one - y),
            UnaryOp::Recip => -y * y,
            UnaryOp::Relu => {
                if x > zero {
                    one
                } else {
                    zero
                }
            }
            UnaryOp::LeakyRelu(s) => {
                if x > zero {
                    one
                } else {
                    c(s)
                }
            }
            UnaryOp::Elu { alpha, scale, input_scale } => {
                if x > zero {
                    c(scale)
                } else {
                    c::<T>(scale * alpha * input_scale) * (x * c(input_scale)).exp()
                }
            }
            UnaryOp::Gelu => {
                let xf = x.as_f64();
                let pdf = (-0.5 * xf * xf).exp() / (2.0 * std::f64::consts::PI).sqrt();
                c(std_normal_cdf(xf) + xf * pdf)
            }
            UnaryOp::GeluTanh => {
                let xf = x.as_f64();
                let inner = SQRT_2_OVER_PI * (xf + 0.044715 * xf * xf * xf);
                let t = inner.tanh();
                c(0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * xf * xf))
            }
            UnaryOp::Silu => {
                let s = one / (one + (-x).exp());
                s * (one + x * (one - s))
            }
            UnaryOp::Mish => {
                let t = softplus(x, one, c(20.0)).tanh();
                let s = one / (one + (-x).exp());
                t + x * s * (one - t * t)
            }
            // At the kinks PyTorch takes 0 at x = −3 and 1 at x = 3 (the outer branches).
            UnaryOp::Hardswish => {
                if x <= c(-3.0) {
                    zero
                } else if x < c(3.0) {
                    x / c(3.0) + c(0.5)
                } else {
                    one
                }
            }
            UnaryOp::Hardsigmoid => {
                if x > c(-3.0) && x < c(3.0) {
                    one / c(6.0)
                } else {
                    zero
                }
            }
            UnaryOp::Hardtanh(lo, hi) => {
                if x > c(lo) && x < c(hi) {
                    one
                } else {
                    zero
                }
            }
            UnaryOp::Softplus { beta, threshold } => {
                let bx = x * c(beta);
                if bx > c(threshold) {
                    one
                } else {
                    one / (one + (-bx).exp())
                }
            }
            UnaryOp::AddScalar(_) => one,
            UnaryOp::MulScalar(s) => c(s),
            UnaryOp::PowScalar(p) => {
                if p == 0.0 {
                    zero
                } else {
                    c::<T>(p) * x.powf(c(p - 1.0))
                }
            }
        }
    }
}

fn softplus<T: FloatElem>(x: T, beta: T, threshold: T) -> T {
    let bx = x * beta;
    if bx > threshold {
        x
    } else {
        bx.exp().ln_1p() / beta
    }
}

impl BinaryOp {
    pub fn apply<T: FloatElem>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Pow => a.powf(b),
            BinaryOp::Maximum => {
                if a.is_nan() || a > b {
                    a
                } else if b.is_nan() || b > a {
                    b
                } else {
                    a
                }
            }
            BinaryOp::Minimum => {
                if a.is_nan() || a < b {
                    a
                } else if b.is_nan() || b < a {
                    b
                } else {
                    a
                }
            }
        }
    }
    /// (∂y/∂a, ∂y/∂b) at (a, b), given y. Ties in max/min split the gradient like PyTorch.
    pub fn partials<T: FloatElem>(self, a: T, b: T, y: T) -> (T, T) {
        let one = T::one();
        let zero = T::zero();
        let half = c::<T>(0.5);
        match self {
            BinaryOp::Add => (one, one),
            BinaryOp::Sub => (one, -one),
            BinaryOp::Mul => (b, a),
            BinaryOp::Div => (one / b, -a / (b * b)),
            BinaryOp::Pow => (b * a.powf(b - one), if a > zero { y * a.ln() } else { zero }),
            BinaryOp::Maximum => {
                if a > b {
                    (one, zero)
                } else if a < b {
                    (zero, one)
                } else {
                    (half, half)
                }
            }
            BinaryOp::Minimum => {
                if a < b {
                    (one, zero)
                } else if a > b {
                    (zero, one)
                } else {
                    (half, half)
                }
            }
        }
    }
}

/// The broadcast shape of two shapes (NumPy rules), or None.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

impl Tensor {
    /// Applies an elementwise function, recording it for backward.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let s = float_dispatch!("unary", self.dtype(), T => T::into_storage(self.with_data(|d: &[T]| unary_kernel(op, d))?));
        Ok(Tensor::from_op(s, self.shape(), Op::Unary { x: self.clone(), op }))
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    pub fn relu6(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Hardtanh(0.0, 6.0))
    }
    pub fn hardtanh(&self, min: f64, max: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Hardtanh(min, max))
    }
    pub fn leaky_relu(&self, negative_slope: f64) -> Result<Tensor> {
        self.unary(UnaryOp::LeakyRelu(negative_slope))
    }
    pub fn elu(&self, alpha: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Elu { alpha, scale: 1.0, input_scale: 1.0 })
    }
    /// SELU with the constants of Klambauer et al. 2017 (as torch.nn.SELU).
    pub fn selu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Elu { alpha: 1.673_263_242_354_377_3, scale: 1.050_700_987_355_480_5, input_scale: 1.0 })
    }
    /// GELU; `approximate` is PyTorch's "none" (false) or "tanh" (true).
    pub fn gelu(&self, approximate_tanh: bool) -> Result<Tensor> {
        self.unary(if approximate_tanh { UnaryOp::GeluTanh } else { UnaryOp::Gelu })
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    pub fn mish(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Mish)
    }
    pub fn hardswish(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Hardswish)
    }
    pub fn hardsigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Hardsigmoid)
    }
    pub fn softplus(&self, beta: f64, threshold: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Softplus { beta, threshold })
    }
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.unary(UnaryOp::AddScalar(v))
    }
    pub fn sub_scalar(&self, v: f64) -> Result<Tensor> {
        self.unary(UnaryOp::AddScalar(-v))
    }
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.unary(UnaryOp::MulScalar(v))
    }
    pub fn div_scalar(&self, v: f64) -> Result<Tensor> {
        self.unary(UnaryOp::MulScalar(1.0 / v))
    }
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary(UnaryOp::PowScalar(p))
    }
    pub fn square(&self) -> Result<Tensor> {
        self.unary(UnaryOp::PowScalar(2.0))
    }
    /// 1 / sqrt(x).
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.sqrt()?.recip()
    }

    /// Broadcasting binary op, recording it for backward.
    pub fn binary(&self, other: &Tensor, op: BinaryOp) -> Result<Tensor> {
        if self.dtype() != other.dtype() {
            return Err(Error::invalid("binary", format!("dtypes differ: {} vs {}", self.dtype().name(), other.dtype().name())));
        }
        let shape = broadcast_shape(self.shape(), other.shape())
            .ok_or_else(|| Error::mismatch("binary (broadcast)", self.shape(), other.shape()))?;
        let a = self.broadcast_to(&shape)?;
        let b = other.broadcast_to(&shape)?;
        let s = float_dispatch!("binary", self.dtype(), T => {
            let v = a.with_data(|x: &[T]| b.with_data(|y: &[T]| zip_vec(x, y, |p, q| op.apply(p, q))))??;
            T::into_storage(v)
        });
        Ok(Tensor::from_op(s, &shape, Op::Binary { a: self.clone(), b: other.clone(), op }))
    }
    pub fn add(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, BinaryOp::Add)
    }
    pub fn sub(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, BinaryOp::Sub)
    }
    pub fn mul(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, BinaryOp::Mul)
    }
    pub fn div(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, BinaryOp::Div)
    }
    pub fn pow(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, BinaryOp::Pow)
    }
    pub fn maximum(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, BinaryOp::Maximum)
    }
    pub fn minimum(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, BinaryOp::Minimum)
    }

    fn compare(&self, other: &Tensor, f: fn(f64, f64) -> bool) -> Result<Tensor> {
        let shape = broadcast_shape(self.shape(), other.shape()).ok_or_else(|| Error::mismatch("compare", self.shape(), other.shape()))?;
        let a = self.broadcast_to(&shape)?.to_f64_vec()?;
        let b = other.broadcast_to(&shape)?.to_f64_vec()?;
        Tensor::from_vec(zip_vec(&a, &b, |x, y| f(x, y) as u8), &shape)
    }
    fn compare_scalar(&self, v: f64, f: fn(f64, f64) -> bool) -> Result<Tensor> {
        Tensor::from_vec(map_vec(&self.to_f64_vec()?, |x| f(x, v) as u8), self.shape())
    }
    /// Elementwise comparisons return u8 masks (1 true, 0 false).
    pub fn eq(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, |a, b| a == b)
    }
    pub fn ne(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, |a, b| a != b)
    }
    pub fn lt(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, |a, b| a < b)
    }
    pub fn le(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, |a, b| a <= b)
    }
    pub fn gt(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, |a, b| a > b)
    }
    pub fn ge(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, |a, b| a >= b)
    }
    pub fn eq_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, |a, b| a == b)
    }
    pub fn lt_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, |a, b| a < b)
    }
    pub fn gt_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, |a, b| a > b)
    }
    pub fn ge_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, |a, b| a >= b)
    }
    pub fn le_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, |a, b| a <= b)
    }

    /// clamp(min, max); either bound may be absent.
    pub fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Result<Tensor> {
        let s = float_dispatch!("clamp", self.dtype(), T => {
            let (lo, hi) = (min.map(T::of_f64), max.map(T::of_f64));
            T::into_storage(self.with_data(|d: &[T]| map_vec(d, |mut v| {
                if let Some(l) = lo { if v < l { v = l; } }
                if let Some(h) = hi { if v > h { v = h; } }
                v
            }))?)
        });
        Ok(Tensor::from_op(s, self.shape(), Op::Clamp { x: self.clone(), min, max }))
    }

    /// where(cond, self, other): cond is a u8 mask; all three broadcast.
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if cond.dtype() != DType::U8 {
            return Err(Error::DType { op: "where", got: cond.dtype(), expected: "uint8 mask" });
        }
        if a.dtype() != b.dtype() {
            return Err(Error::invalid("where", "the two branches have different dtypes"));
        }
        let shape = broadcast_shape(a.shape(), b.shape()).and_then(|s| broadcast_shape(&s, cond.shape()));
        let shape = shape.ok_or_else(|| Error::mismatch("where", a.shape(), b.shape()))?;
        let m = cond.broadcast_to(&shape)?.to_vec::<u8>()?;
        let (ab, bb) = (a.broadcast_to(&shape)?, b.broadcast_to(&shape)?);
        let s = crate::any_dispatch!(a.dtype(), T => {
            let (x, y) = (ab.to_vec::<T>()?, bb.to_vec::<T>()?);
            T::into_storage(m.iter().zip(x.iter().zip(&y)).map(|(&k, (&p, &q))| if k != 0 { p } else { q }).collect())
        });
        Ok(Tensor::from_op(s, &shape, Op::Where { cond: cond.clone(), a: a.clone(), b: b.clone() }))
    }
    /// Fills positions where `mask` is set with `value` (`masked_fill`).
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        Tensor::where_cond(mask, &Tensor::full(&[], value, self.dtype()), self)
    }

    /// Converts to another dtype (`.to(dtype)`); float→float casts pass gradients through.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let vals = self.to_f64_vec()?;
        let s = crate::any_dispatch!(dtype, T => T::into_storage(map_vec(&vals, T::of_f64)));
        let t = Tensor::from_op(s, self.shape(), Op::Cast { x: self.clone() });
        if !dtype.is_float() && t.op().is_some() {
            return Ok(t.detach());
        }
        Ok(t)
    }
}
