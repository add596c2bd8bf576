//! Seeded random numbers: a reproducible generator (xoshiro256++, seeded through SplitMix64),
//! a process-wide default one (`manual_seed`), and the random tensor constructors.

use crate::dtype::Elem;
use crate::{any_dispatch, DType, Error, Result, Tensor};
use std::sync::Mutex;

/// A small, fast, reproducible generator whose whole state can be saved in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generator {
    s: [u64; 4],
    /// The second Box–Muller value, kept so normals come in a reproducible stream.
    spare: Option<u64>,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Generator { s: [next(), next(), next(), next()], spare: None }
    }
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        if let Some(bits) = self.spare.take() {
            return f64::from_bits(bits);
        }
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some((r * s).to_bits());
        r * c
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the bias is below 2^-64·n, irrelevant here.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// The full state, for checkpoints (4 words + the spare normal, or u64::MAX·2 when none).
    pub fn state(&self) -> Vec<u64> {
        let mut v = self.s.to_vec();
        match self.spare {
            Some(b) => v.extend([1, b]),
            None => v.extend([0, 0]),
        }
        v
    }
    pub fn from_state(v: &[u64]) -> Result<Self> {
        if v.len() != 6 {
            return Err(Error::invalid("Generator::from_state", format!("expected 6 words, got {}", v.len())));
        }
        Ok(Generator { s: [v[0], v[1], v[2], v[3]], spare: (v[4] == 1).then_some(v[5]) })
    }
}

static DEFAULT: Mutex<Option<Generator>> = Mutex::new(None);

/// Seeds the default generator (`torch.manual_seed`).
pub fn manual_seed(seed: u64) {
    if let Ok(mut g) = DEFAULT.lock() {
        *g = Some(Generator::new(seed));
    }
}

/// Runs `f` with the default generator (seeded with 0 on first use).
pub fn with_default_generator<R>(f: impl FnOnce(&mut Generator) -> R) -> R {
    let mut guard = DEFAULT.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(|| Generator::new(0)))
}

fn build(shape: &[usize], dtype: DType, mut f: impl FnMut() -> f64) -> Tensor {
    let n: usize = shape.iter().product();
    let vals: Vec<f64> = (0..n).map(|_| f()).collect();
    let s = any_dispatch!(dtype, T => T::into_storage(vals.iter().map(|&v| T::of_f64(v)).collect()));
    Tensor::from_storage(s, shape)
}

impl Tensor {
    /// Uniform [0, 1) (`torch.rand`) from generator `g`.
    pub fn rand_with(shape: &[usize], dtype: DType, g: &mut Generator) -> Tensor {
        build(shape, dtype, || g.uniform())
    }
    /// Standard normal (`torch.randn`) from generator `g`.
    pub fn randn_with(shape: &[usize], dtype: DType, g: &mut Generator) -> Tensor {
        build(shape, dtype, || g.normal())
    }
    /// Uniform [lo, hi) from generator `g`.
    pub fn uniform_with(shape: &[usize], lo: f64, hi: f64, dtype: DType, g: &mut Generator) -> Tensor {
        build(shape, dtype, || lo + (hi - lo) * g.uniform())
    }
    /// Normal(mean, std) from generator `g`.
    pub fn normal_with(shape: &[usize], mean: f64, std: f64, dtype: DType, g: &mut Generator) -> Tensor {
        build(shape, dtype, || mean + std * g.normal())
    }
    pub fn rand(shape: &[usize], dtype: DType) -> Tensor {
        with_default_generator(|g| Tensor::rand_with(shape, dtype, g))
    }
    pub fn randn(shape: &[usize], dtype: DType) -> Tensor {
        with_default_generator(|g| Tensor::randn_with(shape, dtype, g))
    }
    pub fn normal(shape: &[usize], mean: f64, std: f64, dtype: DType) -> Tensor {
        with_default_generator(|g| Tensor::normal_with(shape, mean, std, dtype, g))
    }
    pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType) -> Tensor {
        with_default_generator(|g| Tensor::uniform_with(shape, lo, hi, dtype, g))
    }
    /// Integers uniform in [lo, hi) as int64 (`torch.randint`).
    pub fn randint(lo: i64, hi: i64, shape: &[usize]) -> Result<Tensor> {
        if hi <= lo {
            return Err(Error::invalid("randint", format!("empty range {lo}..{hi}")));
        }
        let n: usize = shape.iter().product();
        let v: Vec<i64> = with_default_generator(|g| (0..n).map(|_| lo + g.below((hi - lo) as u64) as i64).collect());
        Tensor::from_vec(v, shape)
    }
    /// A random permutation of 0..n as int64 (`torch.randperm`), Fisher–Yates.
    pub fn randperm_with(n: usize, g: &mut Generator) -> Tensor {
        let mut v: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            v.swap(i, g.below(i as u64 + 1) as usize);
        }
        Tensor::from_storage(crate::Storage::I64(v), &[n])
    }
    pub fn randperm(n: usize) -> Tensor {
        with_default_generator(|g| Tensor::randperm_with(n, g))
    }
    /// Samples 0/1 with probability `self` per element (`torch.bernoulli`), same dtype.
    pub fn bernoulli_with(&self, g: &mut Generator) -> Result<Tensor> {
        let p = self.to_f64_vec()?;
        if p.iter().any(|&v| !(0.0..=1.0).contains(&v)) {
            return Err(Error::invalid("bernoulli", "probabilities must lie in [0, 1]"));
        }
        let mut it = p.into_iter();
        Ok(build(self.shape(), self.dtype(), || if g.uniform() < it.next().unwrap_or(0.0) { 1.0 } else { 0.0 }))
    }
    pub fn bernoulli(&self) -> Result<Tensor> {
        with_default_generator(|g| self.bernoulli_with(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_plausible() {
        let mut a = Generator::new(7);
        let mut b = Generator::new(7);
        let xs: Vec<f64> = (0..10000).map(|_| a.normal()).collect();
        let ys: Vec<f64> = (0..10000).map(|_| b.normal()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        let st = a.state();
        let mut c = Generator::from_state(&st).unwrap();
        assert_eq!(a.normal(), c.normal());
        let p = Tensor::randperm_with(50, &mut b).to_vec::<i64>().unwrap();
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }
}
