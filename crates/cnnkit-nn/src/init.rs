//! Weight initialisation (torch.nn.init), in place, from a seeded generator.
//! Each function has a twin without the generator argument that uses the default one.

use cnnkit_core::random::with_default_generator;
use cnnkit_core::{DType, Error, Generator, Result, Tensor};

/// Nonlinearities known to `calculate_gain`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nonlinearity {
    Linear,
    Sigmoid,
    Tanh,
    Relu,
    LeakyRelu(f64),
    Selu,
}

/// `torch.nn.init.calculate_gain`.
pub fn calculate_gain(n: Nonlinearity) -> f64 {
    match n {
        Nonlinearity::Linear | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => 2f64.sqrt(),
        Nonlinearity::LeakyRelu(a) => (2.0 / (1.0 + a * a)).sqrt(),
        Nonlinearity::Selu => 0.75,
    }
}

/// (fan_in, fan_out) as `_calculate_fan_in_and_fan_out`: dims 1 and 0 times the receptive field.
pub fn fan_in_fan_out(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::bad_shape("init", shape, "fan in and fan out need at least 2 dims"));
    }
    let rf: usize = shape[2..].iter().product();
    Ok((shape[1] * rf, shape[0] * rf))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    FanIn,
    FanOut,
}

fn fill(t: &Tensor, mut f: impl FnMut() -> f64) -> Result<()> {
    match t.dtype() {
        DType::F32 => t.update_data(|d: &mut [f32]| d.iter_mut().for_each(|v| *v = f() as f32)),
        DType::F64 => t.update_data(|d: &mut [f64]| d.iter_mut().for_each(|v| *v = f())),
        other => Err(Error::DType { op: "init", got: other, expected: "float32 or float64" }),
    }
}

pub fn uniform_with(t: &Tensor, lo: f64, hi: f64, g: &mut Generator) -> Result<()> {
    fill(t, || lo + (hi - lo) * g.uniform())
}
pub fn normal_with(t: &Tensor, mean: f64, std: f64, g: &mut Generator) -> Result<()> {
    fill(t, || mean + std * g.normal())
}
pub fn constant_(t: &Tensor, v: f64) -> Result<()> {
    fill(t, || v)
}
pub fn zeros_(t: &Tensor) -> Result<()> {
    constant_(t, 0.0)
}
pub fn ones_(t: &Tensor) -> Result<()> {
    constant_(t, 1.0)
}

/// He et al. 2015: std = gain / √fan, with PyTorch's rule that `a` is the negative slope of a
/// leaky ReLU (as `kaiming_*_(tensor, a, mode, nonlinearity)`).
fn kaiming_std(t: &Tensor, a: f64, mode: FanMode, nl: Nonlinearity) -> Result<f64> {
    let (fi, fo) = fan_in_fan_out(t.shape())?;
    let fan = if mode == FanMode::FanIn { fi } else { fo };
    let gain = match nl {
        Nonlinearity::LeakyRelu(_) => calculate_gain(Nonlinearity::LeakyRelu(a)),
        other => calculate_gain(other),
    };
    Ok(gain / (fan as f64).sqrt())
}
/// He et al. 2015, uniform: bound = √3 · gain / √fan.
pub fn kaiming_uniform_with(t: &Tensor, a: f64, mode: FanMode, nl: Nonlinearity, g: &mut Generator) -> Result<()> {
    let bound = 3f64.sqrt() * kaiming_std(t, a, mode, nl)?;
    uniform_with(t, -bound, bound, g)
}
/// He et al. 2015, normal: std = gain / √fan.
pub fn kaiming_normal_with(t: &Tensor, a: f64, mode: FanMode, nl: Nonlinearity, g: &mut Generator) -> Result<()> {
    normal_with(t, 0.0, kaiming_std(t, a, mode, nl)?, g)
}
/// Glorot & Bengio 2010, uniform: bound = gain·√(6 / (fan_in + fan_out)).
pub fn xavier_uniform_with(t: &Tensor, gain: f64, g: &mut Generator) -> Result<()> {
    let (fi, fo) = fan_in_fan_out(t.shape())?;
    let b = gain * (6.0 / (fi + fo) as f64).sqrt();
    uniform_with(t, -b, b, g)
}
pub fn xavier_normal_with(t: &Tensor, gain: f64, g: &mut Generator) -> Result<()> {
    let (fi, fo) = fan_in_fan_out(t.shape())?;
    normal_with(t, 0.0, gain * (2.0 / (fi + fo) as f64).sqrt(), g)
}
/// Normal(mean, std) truncated to [a, b], by rejection (the exact truncated distribution).
pub fn trunc_normal_with(t: &Tensor, mean: f64, std: f64, a: f64, b: f64, g: &mut Generator) -> Result<()> {
    if a >= b || a.is_nan() || b.is_nan() || std <= 0.0 || (a - mean) / std > 5.0 || (b - mean) / std < -5.0 {
        return Err(Error::invalid("trunc_normal_", format!("interval [{a}, {b}] too far from mean {mean} (std {std})")));
    }
    fill(t, || loop {
        let v = mean + std * g.normal();
        if (a..=b).contains(&v) {
            break v;
        }
    })
}
/// Saxe et al. 2013: a (semi-)orthogonal matrix from the QR of a Gaussian one, times `gain`.
pub fn orthogonal_with(t: &Tensor, gain: f64, g: &mut Generator) -> Result<()> {
    if t.ndim() < 2 {
        return Err(Error::bad_shape("orthogonal_", t.shape(), "needs at least 2 dims"));
    }
    let rows = t.shape()[0];
    let cols = t.numel() / rows.max(1);
    // Work on the tall orientation (m ≥ n), then transpose back.
    let (m, n) = if rows < cols { (cols, rows) } else { (rows, cols) };
    let mut a: Vec<f64> = (0..m * n).map(|_| g.normal()).collect(); // (m, n) row-major
                                                                    // Modified Gram–Schmidt on the columns; sign-fix like torch (q *= sign(diag(r))).
    for j in 0..n {
        for k in 0..j {
            let dot: f64 = (0..m).map(|i| a[i * n + j] * a[i * n + k]).sum();
            (0..m).for_each(|i| a[i * n + j] -= dot * a[i * n + k]);
        }
        let norm = (0..m).map(|i| a[i * n + j].powi(2)).sum::<f64>().sqrt().max(1e-300);
        (0..m).for_each(|i| a[i * n + j] /= norm);
    }
    let q: Vec<f64> = if rows < cols { (0..rows * cols).map(|p| a[(p % cols) * n + p / cols]).collect() } else { a };
    let mut it = q.into_iter();
    fill(t, || gain * it.next().unwrap_or(0.0))
}

macro_rules! default_gen {
    ($(#[$m:meta])* $name:ident => $with:ident ( $($arg:ident : $ty:ty),* )) => {
        $(#[$m])*
        pub fn $name(t: &Tensor, $($arg: $ty),*) -> Result<()> {
            with_default_generator(|g| $with(t, $($arg),*, g))
        }
    };
}
default_gen!(/// `nn.init.uniform_`
    uniform_ => uniform_with(lo: f64, hi: f64));
default_gen!(/// `nn.init.normal_`
    normal_ => normal_with(mean: f64, std: f64));
default_gen!(/// `nn.init.kaiming_uniform_`
    kaiming_uniform_ => kaiming_uniform_with(a: f64, mode: FanMode, nl: Nonlinearity));
default_gen!(/// `nn.init.kaiming_normal_`
    kaiming_normal_ => kaiming_normal_with(a: f64, mode: FanMode, nl: Nonlinearity));
default_gen!(/// `nn.init.xavier_uniform_`
    xavier_uniform_ => xavier_uniform_with(gain: f64));
default_gen!(/// `nn.init.xavier_normal_`
    xavier_normal_ => xavier_normal_with(gain: f64));
default_gen!(/// `nn.init.trunc_normal_`
    trunc_normal_ => trunc_normal_with(mean: f64, std: f64, a: f64, b: f64));
default_gen!(/// `nn.init.orthogonal_`
    orthogonal_ => orthogonal_with(gain: f64));

/// PyTorch's default for Conv*/Linear weights: kaiming_uniform(a=√5), i.e. U(±1/√fan_in),
/// and for their biases U(±1/√fan_in) (see `_ConvNd.reset_parameters`).
pub fn default_weight_and_bias(w: &Tensor, b: Option<&Tensor>, g: &mut Generator) -> Result<()> {
    kaiming_uniform_with(w, 5f64.sqrt(), FanMode::FanIn, Nonlinearity::LeakyRelu(5f64.sqrt()), g)?;
    if let Some(b) = b {
        let (fan_in, _) = fan_in_fan_out(w.shape())?;
        let bound = if fan_in > 0 { 1.0 / (fan_in as f64).sqrt() } else { 0.0 };
        uniform_with(b, -bound, bound, g)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(t: &Tensor) -> (f64, f64, f64) {
        let v = t.to_f64_vec().unwrap();
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
        (m, var.sqrt(), v.iter().fold(0.0f64, |a, x| a.max(x.abs())))
    }

    #[test]
    fn scales_follow_pytorch_formulas() {
        let mut g = Generator::new(3);
        let w = Tensor::zeros(&[64, 32, 3, 3], DType::F32);
        kaiming_uniform_with(&w, 5f64.sqrt(), FanMode::FanIn, Nonlinearity::LeakyRelu(0.0), &mut g).unwrap();
        let (_, _, mx) = stats(&w);
        assert!(mx <= 1.0 / (288f64).sqrt() + 1e-7 && mx > 0.9 / (288f64).sqrt());
        kaiming_normal_with(&w, 0.0, FanMode::FanOut, Nonlinearity::Relu, &mut g).unwrap();
        let (m, s, _) = stats(&w);
        assert!(m.abs() < 0.01 && (s - (2.0 / 576.0f64).sqrt()).abs() < 0.003, "{s}");
        xavier_uniform_with(&w, 1.0, &mut g).unwrap();
        let (_, _, mx) = stats(&w);
        assert!(mx <= (6.0 / 864.0f64).sqrt() + 1e-7);
        trunc_normal_with(&w, 0.0, 1.0, -2.0, 2.0, &mut g).unwrap();
        assert!(stats(&w).2 <= 2.0);
    }

    #[test]
    fn orthogonal_is_orthogonal() {
        for shape in [[6usize, 4], [4, 6]] {
            let w = Tensor::zeros(&shape, DType::F64);
            orthogonal_with(&w, 1.0, &mut Generator::new(1)).unwrap();
            let p = if shape[0] < shape[1] { w.matmul(&w.t().unwrap()).unwrap() } else { w.t().unwrap().matmul(&w).unwrap() };
            let n = p.shape()[0];
            let v = p.to_vec::<f64>().unwrap();
            for i in 0..n {
                for j in 0..n {
                    assert!((v[i * n + j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10);
                }
            }
        }
    }
}
