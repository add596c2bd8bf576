//! Shared test helpers: reading the PyTorch fixtures written by tools/gen_optim_fixtures.py,
//! rebuilding the same problem (parameters, loss) with cnnkit tensors, and comparing.
#![allow(dead_code)]

use cnnkit_core::{DType, Tensor};
use cnnkit_optim::Optimizer;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};

pub const STEPS: usize = 20;

/// One fixture file: every tensor as (shape, values as f64).
pub struct Fixture {
    pub name: String,
    map: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/optim").join(format!("{name}.safetensors"))
}

fn decode(dtype: Dtype, data: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::I64 => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = fixture_path(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run tools/gen_optim_fixtures.py)", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let map = st.tensors().into_iter().map(|(k, v)| (k, (v.shape().to_vec(), decode(v.dtype(), v.data())))).collect();
        Fixture { name: name.to_string(), map }
    }
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }
    pub fn get(&self, key: &str) -> &(Vec<usize>, Vec<f64>) {
        self.map.get(key).unwrap_or_else(|| panic!("{}: no key {key}", self.name))
    }
    pub fn values(&self, key: &str) -> &[f64] {
        &self.get(key).1
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }
    /// The tensor `key` in `dtype`.
    pub fn tensor(&self, key: &str, dtype: DType) -> Tensor {
        let (shape, v) = self.get(key);
        Tensor::from_vec(v.clone(), shape).unwrap().to_dtype(dtype).unwrap()
    }
    /// Row `i` of a (rows, ...) tensor.
    pub fn row(&self, key: &str, i: usize) -> &[f64] {
        let (shape, v) = self.get(key);
        let n: usize = shape[1..].iter().product();
        &v[i * n..(i + 1) * n]
    }
}

/// The fixture's problem: parameters named w, b (and u, never in the loss) with the loss
/// Σ 0.05·p⁴ + 0.5·a·p² + c·p.
pub struct Problem {
    pub keys: Vec<String>,
    pub params: Vec<Tensor>,
    a: Vec<Tensor>,
    c: Vec<Tensor>,
}

impl Problem {
    pub fn new(fx: &Fixture, keys: &[&str], dtype: DType) -> Problem {
        let t = |pre: &str, k: &str| fx.tensor(&format!("{pre}.{k}"), dtype);
        Problem {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            params: keys.iter().map(|k| t("init", k).requires_grad_().unwrap()).collect(),
            a: keys.iter().map(|k| t("a", k)).collect(),
            c: keys.iter().map(|k| t("c", k)).collect(),
        }
    }
    pub fn param(&self, key: &str) -> Tensor {
        self.params[self.keys.iter().position(|k| k == key).unwrap()].clone()
    }
    /// Computes the loss and back-propagates it (u is left out, so its grad stays None).
    pub fn backward(&self) {
        let mut total: Option<Tensor> = None;
        for (i, k) in self.keys.iter().enumerate() {
            if k == "u" {
                continue;
            }
            let (p, a, c) = (&self.params[i], &self.a[i], &self.c[i]);
            let p2 = p.mul(p).unwrap();
            let quartic = p2.mul(&p2).unwrap().mul_scalar(0.05).unwrap();
            let quad = a.mul_scalar(0.5).unwrap().mul(p).unwrap().mul(p).unwrap();
            let lin = c.mul(p).unwrap();
            let l = quartic.add(&quad).unwrap().add(&lin).unwrap().sum_all().unwrap();
            total = Some(match total {
                None => l,
                Some(t) => t.add(&l).unwrap(),
            });
        }
        total.unwrap().backward().unwrap();
    }
    /// A copy of the current parameter values.
    pub fn snapshot(&self) -> Vec<Vec<f64>> {
        self.params.iter().map(|p| p.to_f64_vec().unwrap()).collect()
    }
}

/// Asserts |got − want| ≤ rel·max(|want|, floor) element-wise; returns the largest
/// |got − want| / max(|want|, floor) seen.
pub fn assert_close(got: &[f64], want: &[f64], rel: f64, floor: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let scale = w.abs().max(floor);
        let tol = rel * scale;
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g:.17e}, torch {w:.17e} (diff {:.3e}, tol {tol:.1e})", (g - w).abs());
        worst = worst.max((g - w).abs() / scale);
    }
    worst
}

/// Tolerances (relative, with a floor on the scale): f64 ≤ 1e-10; f32 ≤ 1e-5 of
/// max(|value|, 0.1). In f32 the gradients themselves already differ by an ulp (torch's
/// autograd differentiates `p**4` with pow, cnnkit's a chain of products; torch's kernels use
/// FMA), and 20 steps carry that forward.
pub fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-10, 1e-12),
        _ => (1e-5, 0.1),
    }
}

/// Runs STEPS steps (zero_grad, loss, backward, `opt.step()`, then `after`, e.g. a scheduler
/// step) and compares every parameter, lr (and momentum, when recorded) with torch's.
pub fn check_trajectory(
    fx: &Fixture,
    pb: &Problem,
    opt: &mut dyn Optimizer,
    dtype: DType,
    mut after: impl FnMut(&mut dyn Optimizer, usize),
) {
    let (rel, floor) = tol(dtype);
    let lrs = |opt: &dyn Optimizer| opt.param_groups().iter().map(|g| g.lr).collect::<Vec<_>>();
    let moms = |opt: &dyn Optimizer| opt.param_groups().iter().map(|g| g.momentum().unwrap()).collect::<Vec<_>>();
    assert_close(&lrs(opt), fx.row("lr", 0), 1e-12, 1e-15, &format!("{} lr after construction", fx.name));
    if fx.has("momentum") {
        assert_close(&moms(opt), fx.row("momentum", 0), 1e-12, 1e-15, &format!("{} momentum after construction", fx.name));
    }
    let mut worst = 0.0f64;
    for step in 0..STEPS {
        opt.zero_grad();
        pb.backward();
        opt.step().unwrap();
        after(opt, step);
        for (k, p) in pb.keys.iter().zip(&pb.params) {
            let what = format!("{} {k} step {}", fx.name, step + 1);
            worst = worst.max(assert_close(&p.to_f64_vec().unwrap(), fx.row(&format!("traj.{k}"), step), rel, floor, &what));
        }
        assert_close(&lrs(opt), fx.row("lr", step + 1), 1e-12, 1e-15, &format!("{} lr step {}", fx.name, step + 1));
        if fx.has("momentum") {
            assert_close(&moms(opt), fx.row("momentum", step + 1), 1e-12, 1e-15, &format!("{} momentum step {}", fx.name, step + 1));
        }
    }
    eprintln!("{}: worst relative difference from torch over {STEPS} steps: {worst:.2e}", fx.name);
}

/// A state dict through safetensors bytes and back (what a checkpoint file does).
pub fn through_safetensors(sd: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = sd
        .iter()
        .map(|(k, t)| {
            let (d, b) = match t.dtype() {
                DType::F64 => (Dtype::F64, t.to_vec::<f64>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect()),
                DType::F32 => (Dtype::F32, t.to_vec::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect()),
                DType::I64 => (Dtype::I64, t.to_vec::<i64>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect()),
                d => panic!("unexpected dtype {d:?} in a state dict"),
            };
            (k.clone(), d, t.shape().to_vec(), b)
        })
        .collect();
    let views = bytes.iter().map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()));
    let file = safetensors::serialize(views, &None).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let t = match v.dtype() {
                Dtype::F64 => Tensor::from_vec(decode(Dtype::F64, v.data()), v.shape()).unwrap(),
                Dtype::F32 => Tensor::from_vec(decode(Dtype::F32, v.data()), v.shape()).unwrap().to_dtype(DType::F32).unwrap(),
                Dtype::I64 => {
                    Tensor::from_vec(decode(Dtype::I64, v.data()).iter().map(|&x| x as i64).collect::<Vec<_>>(), v.shape()).unwrap()
                }
                d => panic!("unexpected dtype {d:?}"),
            };
            (k, t)
        })
        .collect()
}
