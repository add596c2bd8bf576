//! The weight formula shared with tools/gen_zoo_fixtures.py: every state_dict entry is a
//! function of its key and element index, so full-size weights need not be committed.

#![allow(dead_code)]

use cnnkit_core::{DType, Tensor};
use std::collections::BTreeMap;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/zoo");

fn fnv1a(s: &str) -> u64 {
    let mut h: u32 = 0x811C9DC5;
    for b in s.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x01000193);
    }
    h as u64
}

/// u_i = ((i·2654435761 + fnv1a(name)) mod 2^32) / 2^32.
pub fn uniform01(name: &str, n: usize) -> Vec<f64> {
    let h = fnv1a(name);
    (0..n as u64).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(h)) & 0xFFFF_FFFF) as f64 / 4294967296.0).collect()
}

/// The value of state_dict entry `name` with `shape` (the generator's `formula`).
pub fn formula(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let u = uniform01(name, n);
    if name.ends_with("num_batches_tracked") {
        return Tensor::zeros(shape, DType::I64);
    }
    let v: Vec<f32> = if name.ends_with("running_var") {
        u.iter().map(|u| (u + 0.5) as f32).collect()
    } else if name.ends_with("running_mean") {
        u.iter().map(|u| ((u - 0.5) * 0.2) as f32).collect()
    } else if shape.len() == 1 && name.ends_with("weight") {
        u.iter().map(|u| (u * 0.5 + 0.5) as f32).collect()
    } else if shape.len() <= 1 {
        u.iter().map(|u| ((u - 0.5) * 0.2) as f32).collect()
    } else {
        let scale = 2.0 * (3.0 / (n / shape[0]) as f64).sqrt();
        u.iter().map(|u| ((u - 0.5) * scale) as f32).collect()
    };
    Tensor::from_vec(v, shape).expect("formula tensor")
}

/// The formula input in [-1, 1).
pub fn input(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = uniform01("input", n).iter().map(|u| ((u - 0.5) * 2.0) as f32).collect();
    Tensor::from_vec(v, shape).expect("input tensor")
}

pub struct Case {
    pub input: Vec<usize>,
    pub keys: Vec<(String, Vec<usize>)>,
    pub output: Tensor,
}

/// Reads tests/fixtures/zoo/outputs.safetensors: per model, input shape, torchvision's
/// state_dict keys and shapes, and the float64 reference output (stored as f32).
pub fn cases() -> BTreeMap<String, Case> {
    let bytes = std::fs::read(format!("{FIXTURES}/outputs.safetensors")).expect("zoo fixtures (run tools/gen_zoo_fixtures.py)");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let models: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().expect("metadata")["models"]).expect("json");
    let mut out = BTreeMap::new();
    for (name, m) in models.as_object().expect("object") {
        let input = m["input"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let keys = m["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (kv[0].as_str().unwrap().to_string(), kv[1].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect())
            })
            .collect();
        let t = st.tensor(&format!("{name}.output")).unwrap();
        let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name.clone(), Case { input, keys, output: Tensor::from_vec(v, t.shape()).unwrap() });
    }
    out
}

/// max |a − b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    // A NaN difference counts as infinite (f64::max would silently skip it).
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).map(|d| if d.is_nan() { f64::INFINITY } else { d }).fold(0f64, f64::max) / scale
}

/// One #[test] per torchvision architecture with a fixture, each calling `$check(name)`.
#[macro_export]
macro_rules! zoo_tests {
    ($check:ident) => {
        $crate::zoo_tests!(@each $check; alexnet, vgg11, vgg11_bn, vgg16, vgg16_bn, resnet18, resnet34, resnet50, resnet101,
            resnet18_cifar, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large, shufflenet_v2_x0_5, shufflenet_v2_x1_0,
            squeezenet1_1, efficientnet_b0, densenet121);
    };
    (@each $check:ident; $($t:ident),*) => { $( #[test] fn $t() { $check(stringify!($t)); } )* };
}
