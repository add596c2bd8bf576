//! Every optimizer configuration against PyTorch's 20-step trajectory
//! (tests/fixtures/optim/*.safetensors, from tools/gen_optim_fixtures.py): parameters after
//! every step within 1e-10 relative (f64), and the final optimizer state, key for key.

mod common;

use cnnkit_core::DType;
use cnnkit_optim::*;
use common::*;

/// Builds the fixture's problem, the optimizer from `make`, runs and compares.
fn check(name: &str, keys: &[&str], dtype: DType, make: impl FnOnce(&Problem) -> Box<dyn Optimizer>) {
    let fx = Fixture::load(name);
    let pb = Problem::new(&fx, keys, dtype);
    let mut opt = make(&pb);
    check_trajectory(&fx, &pb, opt.as_mut(), dtype, |_, _| {});
    // The final state matches torch's optimizer.state_dict()["state"], key for key.
    let sd = opt.state_dict().unwrap();
    let ours: Vec<&String> = sd.keys().filter(|k| k.starts_with("state.")).collect();
    let mut theirs: Vec<String> = fx.keys().filter_map(|k| k.strip_prefix("final_").map(str::to_string)).collect();
    theirs.sort();
    assert_eq!(ours, theirs.iter().collect::<Vec<_>>(), "{name}: state keys");
    let (rel, floor) = tol(dtype);
    for k in &theirs {
        assert_close(&sd[k].to_f64_vec().unwrap(), fx.values(&format!("final_{k}")), rel * 10.0, floor, &format!("{name} {k}"));
    }
}

fn all(pb: &Problem) -> Vec<cnnkit_core::Tensor> {
    pb.params.clone()
}

const WB: &[&str] = &["w", "b"];

#[test]
fn sgd_plain() {
    check("sgd_plain", WB, DType::F64, |pb| Box::new(Sgd::new(all(pb), SgdConfig { lr: 0.1, ..Default::default() }).unwrap()));
}

#[test]
fn sgd_momentum() {
    check("sgd_momentum", WB, DType::F64, |pb| {
        Box::new(Sgd::new(all(pb), SgdConfig { lr: 0.05, momentum: 0.9, ..Default::default() }).unwrap())
    });
}

#[test]
fn sgd_nesterov_weight_decay() {
    check("sgd_nesterov_wd", WB, DType::F64, |pb| {
        Box::new(
            Sgd::new(all(pb), SgdConfig { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.01, ..Default::default() }).unwrap(),
        )
    });
}

#[test]
fn sgd_dampening() {
    check("sgd_dampening", WB, DType::F64, |pb| {
        Box::new(
            Sgd::new(all(pb), SgdConfig { lr: 0.05, momentum: 0.8, dampening: 0.3, weight_decay: 0.001, ..Default::default() }).unwrap(),
        )
    });
}

#[test]
fn sgd_maximize() {
    check("sgd_maximize", WB, DType::F64, |pb| {
        Box::new(Sgd::new(all(pb), SgdConfig { lr: 0.01, momentum: 0.5, maximize: true, ..Default::default() }).unwrap())
    });
}

#[test]
fn adam_skips_params_without_grad() {
    // "u" is never in the loss: torch leaves it unchanged and gives it no state.
    check("adam", &["w", "b", "u"], DType::F64, |pb| Box::new(Adam::new(all(pb), AdamConfig { lr: 0.05, ..Default::default() }).unwrap()));
}

#[test]
fn adam_amsgrad_weight_decay() {
    check("adam_amsgrad_wd", WB, DType::F64, |pb| {
        Box::new(
            Adam::new(all(pb), AdamConfig { lr: 0.05, betas: (0.8, 0.99), weight_decay: 0.1, amsgrad: true, ..Default::default() })
                .unwrap(),
        )
    });
}

#[test]
fn adamw_defaults() {
    // AdamW's default weight_decay is 1e-2.
    assert_eq!(AdamWConfig::default().weight_decay, 1e-2);
    check("adamw", WB, DType::F64, |pb| Box::new(AdamW::new(all(pb), AdamWConfig { lr: 0.05, ..Default::default() }).unwrap()));
}

#[test]
fn adamw_amsgrad() {
    check("adamw_amsgrad", WB, DType::F64, |pb| {
        Box::new(AdamW::new(all(pb), AdamWConfig { lr: 0.05, weight_decay: 0.1, amsgrad: true, eps: 1e-6, ..Default::default() }).unwrap())
    });
}

#[test]
fn rmsprop() {
    check("rmsprop", WB, DType::F64, |pb| Box::new(RmsProp::new(all(pb), RmsPropConfig { lr: 0.01, ..Default::default() }).unwrap()));
}

#[test]
fn rmsprop_centered_momentum() {
    check("rmsprop_centered_momentum", WB, DType::F64, |pb| {
        let cfg = RmsPropConfig { lr: 0.01, alpha: 0.9, momentum: 0.5, centered: true, weight_decay: 0.01, ..Default::default() };
        Box::new(RmsProp::new(all(pb), cfg).unwrap())
    });
}

#[test]
fn adagrad() {
    check("adagrad", WB, DType::F64, |pb| Box::new(Adagrad::new(all(pb), AdagradConfig { lr: 0.1, ..Default::default() }).unwrap()));
}

#[test]
fn adagrad_lr_decay() {
    check("adagrad_decay", WB, DType::F64, |pb| {
        let cfg =
            AdagradConfig { lr: 0.1, lr_decay: 0.05, weight_decay: 0.01, initial_accumulator_value: 0.1, eps: 1e-8, ..Default::default() };
        Box::new(Adagrad::new(all(pb), cfg).unwrap())
    });
}

#[test]
fn adam_maximize() {
    check("adam_maximize", WB, DType::F64, |pb| {
        Box::new(Adam::new(all(pb), AdamConfig { lr: 0.01, maximize: true, ..Default::default() }).unwrap())
    });
}

#[test]
fn rmsprop_momentum_maximize() {
    check("rmsprop_momentum_maximize", WB, DType::F64, |pb| {
        Box::new(RmsProp::new(all(pb), RmsPropConfig { lr: 0.005, momentum: 0.3, maximize: true, ..Default::default() }).unwrap())
    });
}

#[test]
fn rmsprop_centered() {
    check("rmsprop_centered", WB, DType::F64, |pb| {
        Box::new(RmsProp::new(all(pb), RmsPropConfig { lr: 0.01, centered: true, ..Default::default() }).unwrap())
    });
}

#[test]
fn adagrad_maximize() {
    check("adagrad_maximize", WB, DType::F64, |pb| {
        Box::new(Adagrad::new(all(pb), AdagradConfig { lr: 0.05, maximize: true, ..Default::default() }).unwrap())
    });
}

#[test]
fn sgd_param_groups() {
    check("sgd_groups", WB, DType::F64, |pb| {
        let groups = vec![ParamGroup::new(vec![pb.param("w")], 0.1, 0.01), ParamGroup::new(vec![pb.param("b")], 0.02, 0.0)];
        Box::new(Sgd::with_groups(groups, SgdConfig { lr: 0.5, momentum: 0.9, ..Default::default() }).unwrap())
    });
}

#[test]
fn adam_param_groups_with_own_betas() {
    check("adam_groups", WB, DType::F64, |pb| {
        let defaults = AdamConfig { lr: 0.5, ..Default::default() };
        let b_opts = AdamOptions { betas: (0.5, 0.9), ..defaults.options() };
        let groups = vec![
            ParamGroup::new(vec![pb.param("w")], 0.05, 0.1),
            ParamGroup::new(vec![pb.param("b")], 0.01, 0.0).with_options(GroupOptions::Adam(b_opts)),
        ];
        Box::new(Adam::with_groups(groups, defaults).unwrap())
    });
}

#[test]
fn adam_f32() {
    check("adam_f32", WB, DType::F32, |pb| {
        Box::new(Adam::new(all(pb), AdamConfig { lr: 0.05, amsgrad: true, ..Default::default() }).unwrap())
    });
}

#[test]
fn sgd_nesterov_f32() {
    check("sgd_momentum_f32", WB, DType::F32, |pb| {
        Box::new(Sgd::new(all(pb), SgdConfig { lr: 0.05, momentum: 0.9, nesterov: true, ..Default::default() }).unwrap())
    });
}

#[test]
fn defaults_match_pytorch() {
    let s = SgdConfig::default();
    assert_eq!((s.lr, s.momentum, s.dampening, s.weight_decay, s.nesterov, s.maximize), (1e-3, 0.0, 0.0, 0.0, false, false));
    let a = AdamConfig::default();
    assert_eq!((a.lr, a.betas, a.eps, a.weight_decay, a.amsgrad), (1e-3, (0.9, 0.999), 1e-8, 0.0, false));
    let w = AdamWConfig::default();
    assert_eq!((w.lr, w.betas, w.eps, w.weight_decay, w.amsgrad), (1e-3, (0.9, 0.999), 1e-8, 1e-2, false));
    let r = RmsPropConfig::default();
    assert_eq!((r.lr, r.alpha, r.eps, r.weight_decay, r.momentum, r.centered), (1e-2, 0.99, 1e-8, 0.0, 0.0, false));
    let g = AdagradConfig::default();
    assert_eq!((g.lr, g.lr_decay, g.weight_decay, g.initial_accumulator_value, g.eps), (1e-2, 0.0, 0.0, 0.0, 1e-10));
}
