//! Every layer and loss against PyTorch: forward, input gradient, parameter gradients and
//! updated buffers, from the fixtures written by tools/gen_layer_fixtures.py.

use cnnkit_core::{DType, PadMode, Result, Tensor};
use cnnkit_nn::loss::{self, CrossEntropyOptions, Reduction};
use cnnkit_nn::serialize::parse_safetensors;
use cnnkit_nn::*;
use serde_json::Value;
use std::collections::BTreeMap;

type Fixtures = (BTreeMap<String, Tensor>, BTreeMap<String, String>);

fn load(name: &str) -> Fixtures {
    let path = format!("{}/../../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    parse_safetensors(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// allclose with rtol 1e-5 and a small atol scaled to the tensor (f32 sums cancel near zero).
fn assert_close(case: &str, what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{case}: {what} shape");
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let atol = 1e-6 * scale.max(1.0);
    let (mut worst, mut at) = (0.0, 0);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let excess = (a - b).abs() - (1e-5 * b.abs() + atol);
        if excess > worst {
            (worst, at) = (excess, i);
        }
    }
    assert!(worst <= 0.0, "{case}: {what} differs from PyTorch at {at}: {} vs {} (scale {scale})", g[at], w[at]);
}

fn u(v: &Value, k: &str) -> usize {
    v[k].as_u64().unwrap_or_else(|| panic!("config field {k}")) as usize
}

fn build(c: &Value) -> Result<Box<dyn Module>> {
    let kind = c["kind"].as_str().unwrap();
    let pad_mode = |m: &str| match m {
        "reflect" => PadMode::Reflect,
        "replicate" => PadMode::Replicate,
        "circular" => PadMode::Circular,
        _ => PadMode::Constant,
    };
    Ok(match kind {
        "conv2d" | "conv1d" => {
            let mut cfg = Conv2dConfig::new(u(c, "cin"), u(c, "cout"), u(c, "k"))
                .stride(u(c, "stride"))
                .dilation(u(c, "dilation"))
                .groups(u(c, "groups"))
                .bias(c["bias"].as_bool().unwrap());
            cfg = if c["padding"].is_string() { cfg.padding_same() } else { cfg.padding(u(c, "padding")) };
            cfg = cfg.padding_mode(pad_mode(c["mode"].as_str().unwrap_or("zeros")));
            if kind == "conv1d" {
                Box::new(Conv1d::with_config(cfg)?)
            } else {
                Box::new(Conv2d::new(cfg)?)
            }
        }
        "convtranspose2d" => Box::new(ConvTranspose2d::new(
            ConvTranspose2dConfig::new(u(c, "cin"), u(c, "cout"), u(c, "k"))
                .stride(u(c, "stride"))
                .padding(u(c, "padding"))
                .output_padding(u(c, "output_padding"))
                .groups(u(c, "groups"))
                .dilation(u(c, "dilation"))
                .bias(c["bias"].as_bool().unwrap()),
        )?),
        "maxpool2d" => Box::new(
            MaxPool2d::new(u(c, "k"))
                .stride(u(c, "stride"))
                .padding(u(c, "padding"))
                .dilation(u(c, "dilation"))
                .ceil_mode(c["ceil"].as_bool().unwrap()),
        ),
        "avgpool2d" => Box::new(
            AvgPool2d::new(u(c, "k"))
                .stride(u(c, "stride"))
                .padding(u(c, "padding"))
                .ceil_mode(c["ceil"].as_bool().unwrap())
                .count_include_pad(c["count_include_pad"].as_bool().unwrap()),
        ),
        "adaptiveavgpool2d" => {
            Box::new(AdaptiveAvgPool2d::new((c["out"][0].as_u64().unwrap() as usize, c["out"][1].as_u64().unwrap() as usize)))
        }
        "adaptivemaxpool2d" => {
            Box::new(AdaptiveMaxPool2d::new((c["out"][0].as_u64().unwrap() as usize, c["out"][1].as_u64().unwrap() as usize)))
        }
        "linear" => {
            if c["bias"].as_bool().unwrap() {
                Box::new(Linear::new(u(c, "fin"), u(c, "fout"))?)
            } else {
                Box::new(Linear::new_no_bias(u(c, "fin"), u(c, "fout"))?)
            }
        }
        "batchnorm2d" | "batchnorm1d" => {
            let cfg = BatchNormConfig {
                eps: c["eps"].as_f64().unwrap(),
                momentum: c["momentum"].as_f64(),
                affine: c["affine"].as_bool().unwrap(),
                track_running_stats: true,
            };
            if kind == "batchnorm2d" {
                Box::new(BatchNorm::new_2d_with(u(c, "c"), cfg)?)
            } else {
                Box::new(BatchNorm::new_1d_with(u(c, "c"), cfg)?)
            }
        }
        "groupnorm" => Box::new(GroupNorm::with(u(c, "groups"), u(c, "c"), c["eps"].as_f64().unwrap(), c["affine"].as_bool().unwrap())?),
        "layernorm" => {
            let shape: Vec<usize> = c["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            Box::new(LayerNorm::with(&shape, c["eps"].as_f64().unwrap(), c["affine"].as_bool().unwrap())?)
        }
        "instancenorm2d" => {
            Box::new(InstanceNorm2d::with(u(c, "c"), 1e-5, 0.1, c["affine"].as_bool().unwrap(), c["track"].as_bool().unwrap())?)
        }
        "relu" => Box::new(ReLU::default()),
        "relu6" => Box::new(ReLU6::default()),
        "leakyrelu" => Box::new(LeakyReLU::new(0.2)),
        "elu" => Box::new(ELU::new(0.7)),
        "selu" => Box::new(SELU::default()),
        "gelu" => Box::new(GELU::default()),
        "gelu_tanh" => Box::new(GELU::new(true)),
        "silu" => Box::new(SiLU::default()),
        "mish" => Box::new(Mish::default()),
        "hardswish" => Box::new(Hardswish::default()),
        "hardsigmoid" => Box::new(Hardsigmoid::default()),
        "sigmoid" => Box::new(Sigmoid::default()),
        "tanh" => Box::new(Tanh::default()),
        "softmax" => Box::new(Softmax::new(1)),
        "logsoftmax" => Box::new(LogSoftmax::new(-1)),
        "flatten" => Box::new(Flatten::new()),
        "prelu" => Box::new(PReLU::new(u(c, "n"), 0.25)?),
        "upsample" => {
            let mode = if c["mode"] == "bilinear" { UpsampleMode::Bilinear } else { UpsampleMode::Nearest };
            Box::new(
                Upsample::size(c["size"][0].as_u64().unwrap() as usize, c["size"][1].as_u64().unwrap() as usize, mode)
                    .align_corners(c["align_corners"].as_bool().unwrap()),
            )
        }
        "pixelshuffle" => Box::new(PixelShuffle::new(u(c, "r"))),
        "channelshuffle" => Box::new(ChannelShuffle::new(u(c, "groups"))),
        "zeropad2d" => {
            let p: Vec<isize> = c["pad"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as isize).collect();
            Box::new(ZeroPad2d::ltrb(p[0], p[1], p[2], p[3]))
        }
        other => panic!("fixture kind {other} has no builder"),
    })
}

#[test]
fn layers_match_pytorch() {
    let (t, meta) = load("layers.safetensors");
    let mut checked = 0;
    for (case, cfg) in &meta {
        let c: Value = serde_json::from_str(cfg).unwrap();
        let m = build(&c).unwrap_or_else(|e| panic!("{case}: {e}"));
        let prefix = format!("{case}.");
        let sd: BTreeMap<String, Tensor> = t
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&prefix)?;
                rest.strip_prefix("param.").or_else(|| rest.strip_prefix("buffer.")).map(|n| (n.to_string(), v.clone()))
            })
            .collect();
        m.load_state_dict(&sd, true).unwrap_or_else(|e| panic!("{case}: {e}"));
        m.train(c["train"].as_bool().unwrap());
        let x = t[&format!("{case}.x")].detach().requires_grad_().unwrap();
        let y = m.forward(&x).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_close(case, "output", &y, &t[&format!("{case}.y")]);
        y.backward_with(&t[&format!("{case}.gy")]).unwrap();
        assert_close(case, "input gradient", &x.grad().unwrap(), &t[&format!("{case}.gx")]);
        for (name, p) in m.named_parameters() {
            let want = &t[&format!("{case}.grad.{name}")];
            assert_close(case, &format!("grad of {name}"), &p.grad().unwrap_or_else(|| panic!("{case}: no grad for {name}")), want);
        }
        for (name, b) in m.named_buffers() {
            if let Some(want) = t.get(&format!("{case}.after.{name}")) {
                assert_close(case, &format!("buffer {name} after forward"), &b, want);
            }
        }
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} layer cases checked");
}

#[test]
fn losses_match_pytorch() {
    let (t, meta) = load("losses.safetensors");
    let mut checked = 0;
    for (case, cfg) in &meta {
        let c: Value = serde_json::from_str(cfg).unwrap();
        let red = match c["reduction"].as_str().unwrap() {
            "sum" => Reduction::Sum,
            "none" => Reduction::None,
            "batchmean" => Reduction::BatchMean,
            _ => Reduction::Mean,
        };
        let get = |k: &str| t.get(&format!("{case}.{k}")).cloned();
        let x = get("x").unwrap().requires_grad_().unwrap();
        let target = get("target").unwrap();
        let weight = if c["weight"].as_bool() == Some(true) { get("weight") } else { None };
        let y = match c["kind"].as_str().unwrap() {
            "ce" | "nll" => {
                let o = CrossEntropyOptions {
                    weight,
                    reduction: red,
                    label_smoothing: c["label_smoothing"].as_f64().unwrap_or(0.0),
                    ..Default::default()
                };
                if c["kind"] == "ce" {
                    loss::cross_entropy(&x, &target, &o)
                } else {
                    loss::nll_loss(&x, &target, &o)
                }
            }
            "bce" => loss::binary_cross_entropy(&x, &target, weight.as_ref(), red),
            "bce_logits" => loss::binary_cross_entropy_with_logits(
                &x,
                &target,
                weight.as_ref(),
                if c["pos_weight"].as_bool() == Some(true) { get("pos_weight") } else { None }.as_ref(),
                red,
            ),
            "mse" => loss::mse_loss(&x, &target, red),
            "l1" => loss::l1_loss(&x, &target, red),
            "smooth_l1" => loss::smooth_l1_loss(&x, &target, c["beta"].as_f64().unwrap(), red),
            "huber" => loss::huber_loss(&x, &target, c["delta"].as_f64().unwrap(), red),
            "kl" => loss::kl_div(&x, &target, red, c["log_target"].as_bool().unwrap()),
            other => panic!("loss kind {other}"),
        }
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        let want_y = get("y").unwrap();
        let y_flat = if y.ndim() == 0 { y.reshape(&[1]).unwrap() } else { y.clone() };
        assert_close(case, "loss", &y_flat, &want_y);
        let gy = get("gy").unwrap();
        y.backward_with(&gy.reshape(y.shape()).unwrap()).unwrap();
        assert_close(case, "input gradient", &x.grad().unwrap(), &get("gx").unwrap());
        checked += 1;
    }
    assert!(checked >= 24, "only {checked} loss cases checked");
}

#[test]
fn fixtures_are_f32() {
    let (t, _) = load("layers.safetensors");
    assert!(t.values().all(|v| matches!(v.dtype(), DType::F32 | DType::I64)));
}
