//! Checkpointing: an optimizer's state dict (through safetensors bytes) loaded into a fresh
//! optimizer continues exactly like the uninterrupted run; schedulers likewise; bad state
//! dicts and bad arguments are typed errors, never panics, and leave the optimizer unchanged.

mod common;

use cnnkit_core::{DType, Error, Tensor};
use cnnkit_optim::sched::*;
use cnnkit_optim::*;
use common::*;
use std::collections::BTreeMap;

type MakeOpt = fn(Vec<Tensor>) -> Box<dyn Optimizer>;

fn makers() -> Vec<(&'static str, MakeOpt)> {
    vec![
        ("sgd", |p| {
            Box::new(Sgd::new(p, SgdConfig { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.01, ..Default::default() }).unwrap())
        }),
        ("adam", |p| Box::new(Adam::new(p, AdamConfig { lr: 0.05, amsgrad: true, weight_decay: 0.1, ..Default::default() }).unwrap())),
        ("adamw", |p| Box::new(AdamW::new(p, AdamWConfig { lr: 0.05, ..Default::default() }).unwrap())),
        ("rmsprop", |p| {
            Box::new(RmsProp::new(p, RmsPropConfig { lr: 0.01, momentum: 0.5, centered: true, ..Default::default() }).unwrap())
        }),
        ("adagrad", |p| Box::new(Adagrad::new(p, AdagradConfig { lr: 0.1, lr_decay: 0.01, ..Default::default() }).unwrap())),
    ]
}

/// A fresh problem (from the adam fixture's inputs: w, b and the never-used u), in `dtype`.
fn problem(dtype: DType) -> Problem {
    Problem::new(&Fixture::load("adam"), &["w", "b", "u"], dtype)
}

#[test]
fn optimizer_state_round_trip_continues_identically() {
    for dtype in [DType::F64, DType::F32] {
        for (name, make) in makers() {
            // Uninterrupted: 20 steps.
            let pb = problem(dtype);
            let mut opt = make(pb.params.clone());
            let mut mid = None;
            for step in 0..STEPS {
                opt.zero_grad();
                pb.backward();
                opt.step().unwrap();
                if step == 6 {
                    mid = Some((pb.snapshot(), through_safetensors(&opt.state_dict().unwrap())));
                }
            }
            let want = pb.snapshot();
            // Interrupted after 7 steps: fresh parameters and optimizer, load, 13 more steps.
            let (params_mid, sd) = mid.unwrap();
            let pb2 = problem(dtype);
            for (p, v) in pb2.params.iter().zip(&params_mid) {
                p.copy_(&Tensor::from_vec(v.clone(), p.shape()).unwrap()).unwrap();
            }
            let mut opt2 = make(pb2.params.clone());
            opt2.load_state_dict(&sd).unwrap();
            assert_eq!(opt2.state_dict().unwrap().keys().collect::<Vec<_>>(), sd.keys().collect::<Vec<_>>(), "{name}: keys");
            for _ in 7..STEPS {
                opt2.zero_grad();
                pb2.backward();
                opt2.step().unwrap();
            }
            assert_eq!(pb2.snapshot(), want, "{name} {dtype:?}: resumed run differs from the uninterrupted one");
        }
    }
}

#[test]
fn state_dict_keys_follow_pytorch() {
    let pb = problem(DType::F64);
    let mut opt = Adam::new(pb.params.clone(), AdamConfig { amsgrad: true, ..Default::default() }).unwrap();
    opt.zero_grad();
    pb.backward();
    opt.step().unwrap();
    let sd = opt.state_dict().unwrap();
    for k in
        ["state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq", "state.0.max_exp_avg_sq", "param_groups.0.lr", "param_groups.0.betas"]
    {
        assert!(sd.contains_key(k), "missing {k}");
    }
    // u (index 2) had no grad: no state, as in PyTorch.
    assert!(!sd.keys().any(|k| k.starts_with("state.2.")));
    assert_eq!(sd["state.0.exp_avg"].shape(), &[3, 4]);
    assert_eq!(sd["param_groups.0.params"].to_f64_vec().unwrap(), vec![0.0, 1.0, 2.0]);
    assert_eq!(sd["state.1.step"].item().unwrap(), 1.0);
}

#[test]
fn scheduler_state_round_trip() {
    type MakeSched = fn(&mut dyn Optimizer) -> Box<dyn LrScheduler>;
    let makers: Vec<(&str, MakeSched)> = vec![
        ("step", |o| Box::new(StepLr::new(o, 3, 0.5).unwrap())),
        ("warm_restarts", |o| Box::new(CosineAnnealingWarmRestarts::new(o, 2, 2, 0.001).unwrap())),
        ("onecycle", |o| Box::new(OneCycleLr::new(o, OneCycleConfig::new(0.3, STEPS)).unwrap())),
        ("sequential", |o| {
            let a: Box<dyn LrScheduler> = Box::new(LinearLr::new(o, 0.2, 1.0, 4).unwrap());
            let b: Box<dyn LrScheduler> = Box::new(CosineAnnealingLr::new(o, 12, 0.0).unwrap());
            Box::new(SequentialLr::new(o, vec![a, b], &[4]).unwrap())
        }),
        ("plateau", |o| Box::new(ReduceLrOnPlateau::new(o, PlateauConfig { patience: 1, factor: 0.5, ..Default::default() }).unwrap())),
    ];
    let metric = |step: usize| 1.0 / (1.0 + (step % 4) as f64);
    for (name, make) in makers {
        let run = |resume_at: Option<usize>| -> Vec<f64> {
            let pb = problem(DType::F64);
            let mut opt = Sgd::new(pb.params.clone(), SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }).unwrap();
            let mut sched = make(&mut opt);
            let mut lrs = Vec::new();
            for step in 0..STEPS {
                if resume_at == Some(step) {
                    // Checkpoint, then rebuild both from scratch (constructor first, as PyTorch advises).
                    let (sd, st) = (opt.state_dict().unwrap(), sched.state());
                    opt = Sgd::new(pb.params.clone(), SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }).unwrap();
                    sched = make(&mut opt);
                    opt.load_state_dict(&sd).unwrap();
                    sched.load_state(&st).unwrap();
                }
                opt.zero_grad();
                pb.backward();
                opt.step().unwrap();
                sched.step_with_metric(&mut opt, metric(step)).unwrap();
                lrs.push(opt.lr());
                lrs.extend(pb.snapshot().concat());
            }
            lrs
        };
        assert_eq!(run(Some(9)), run(None), "{name}: resumed schedule differs");
    }
}

fn stepped_sgd() -> (Problem, Sgd) {
    let pb = problem(DType::F64);
    let mut opt = Sgd::new(pb.params.clone(), SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }).unwrap();
    opt.zero_grad();
    pb.backward();
    opt.step().unwrap();
    (pb, opt)
}

#[test]
fn load_state_dict_rejects_bad_input_and_changes_nothing() {
    let (_pb, mut opt) = stepped_sgd();
    let good = opt.state_dict().unwrap();
    let mutate = |f: &dyn Fn(&mut BTreeMap<String, Tensor>)| {
        let mut sd = good.clone();
        f(&mut sd);
        sd
    };
    let bad: Vec<(&str, BTreeMap<String, Tensor>)> = vec![
        ("wrong buffer shape", mutate(&|sd| drop(sd.insert("state.0.momentum_buffer".into(), Tensor::zeros(&[4, 3], DType::F64))))),
        ("wrong buffer rank", mutate(&|sd| drop(sd.insert("state.1.momentum_buffer".into(), Tensor::zeros(&[1, 4], DType::F64))))),
        ("integer buffer", mutate(&|sd| drop(sd.insert("state.1.momentum_buffer".into(), Tensor::zeros(&[4], DType::I64))))),
        ("missing lr", mutate(&|sd| drop(sd.remove("param_groups.0.lr")))),
        ("non-scalar lr", mutate(&|sd| drop(sd.insert("param_groups.0.lr".into(), Tensor::zeros(&[2], DType::F64))))),
        ("group size", mutate(&|sd| drop(sd.insert("param_groups.0.params".into(), Tensor::from_vec(vec![0i64, 1], &[2]).unwrap())))),
        ("extra group", mutate(&|sd| drop(sd.insert("param_groups.1.lr".into(), Tensor::scalar(0.1f64))))),
        ("unknown key", mutate(&|sd| drop(sd.insert("state.0.exp_avg".into(), Tensor::zeros(&[3, 4], DType::F64))))),
        ("state for a missing param", mutate(&|sd| drop(sd.insert("state.7.momentum_buffer".into(), Tensor::zeros(&[3], DType::F64))))),
    ];
    let before = opt.state_dict().unwrap();
    for (what, sd) in bad {
        let err = opt.load_state_dict(&sd).expect_err(what);
        assert!(matches!(err, Error::StateDict(_) | Error::DType { .. }), "{what}: {err}");
        let after = opt.state_dict().unwrap();
        assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "{what}: state changed");
        for (k, t) in &after {
            assert_eq!(t.to_f64_vec().unwrap(), before[k].to_f64_vec().unwrap(), "{what}: {k} changed");
        }
    }
    // An Adam checkpoint is not an SGD one.
    let pb = problem(DType::F64);
    let mut adam = Adam::new(pb.params.clone(), AdamConfig::default()).unwrap();
    pb.backward();
    adam.step().unwrap();
    assert!(opt.load_state_dict(&adam.state_dict().unwrap()).is_err());
    // Adam: wrong number of betas.
    let mut sd = adam.state_dict().unwrap();
    sd.insert("param_groups.0.betas".into(), Tensor::from_vec(vec![0.9f64], &[1]).unwrap());
    assert!(adam.load_state_dict(&sd).is_err());
    // Adam: an exp_avg of the wrong shape.
    let mut sd = adam.state_dict().unwrap();
    sd.insert("state.0.exp_avg".into(), Tensor::zeros(&[12], DType::F64));
    assert!(matches!(adam.load_state_dict(&sd), Err(Error::StateDict(_))));
    // Keys outside state.* / param_groups.* (a model's, in the same checkpoint) are ignored.
    let mut sd = opt.state_dict().unwrap();
    sd.insert("model.fc.weight".into(), Tensor::zeros(&[2], DType::F64));
    opt.load_state_dict(&sd).unwrap();
}

#[test]
fn f32_state_loads_into_f64_params_cast_like_pytorch() {
    let (_pb, mut opt) = stepped_sgd();
    let mut sd = opt.state_dict().unwrap();
    let buf = sd["state.1.momentum_buffer"].to_dtype(DType::F32).unwrap();
    sd.insert("state.1.momentum_buffer".into(), buf);
    opt.load_state_dict(&sd).unwrap();
    assert_eq!(opt.state_dict().unwrap()["state.1.momentum_buffer"].dtype(), DType::F64);
}

#[test]
fn scheduler_load_state_rejects_wrong_shapes() {
    let pb = problem(DType::F64);
    let mut opt = Sgd::new(pb.params.clone(), SgdConfig::default()).unwrap();
    let mut s = StepLr::new(&mut opt, 2, 0.5).unwrap();
    let good = s.state();
    assert!(s.load_state(&good[..good.len() - 1]).is_err());
    assert!(s.load_state(&[good.clone(), vec![1.0]].concat()).is_err());
    assert!(s.load_state(&[]).is_err());
    assert_eq!(s.state(), good);
    let mut w = CosineAnnealingWarmRestarts::new(&mut opt, 2, 2, 0.0).unwrap();
    assert!(w.load_state(&good).is_err());
    let a: Box<dyn LrScheduler> = Box::new(LinearLr::new(&mut opt, 0.5, 1.0, 2).unwrap());
    let mut q = SequentialLr::new(&mut opt, vec![a], &[]).unwrap();
    assert!(q.load_state(&[0.0, 5.0]).is_err());
    assert!(q.load_state(&[f64::NAN; 3]).is_err());
    let mut p = ReduceLrOnPlateau::new(&mut opt, PlateauConfig::default()).unwrap();
    assert!(p.load_state(&[0.0; 3]).is_err());
    let mut o = OneCycleLr::new(&mut opt, OneCycleConfig::new(0.1, 5)).unwrap();
    assert!(o.load_state(&[0.0]).is_err());
}

#[test]
fn bad_construction_and_step_inputs_are_errors() {
    let p = || Tensor::zeros(&[2], DType::F64).requires_grad_().unwrap();
    assert!(Sgd::new(vec![], SgdConfig::default()).is_err(), "empty parameter list");
    assert!(Sgd::new(vec![p()], SgdConfig { lr: -1.0, ..Default::default() }).is_err());
    assert!(Sgd::new(vec![p()], SgdConfig { nesterov: true, ..Default::default() }).is_err(), "nesterov without momentum");
    assert!(Sgd::new(vec![p()], SgdConfig { nesterov: true, momentum: 0.9, dampening: 0.1, ..Default::default() }).is_err());
    assert!(Adam::new(vec![p()], AdamConfig { betas: (1.0, 0.999), ..Default::default() }).is_err());
    assert!(Adam::new(vec![p()], AdamConfig { eps: -1.0, ..Default::default() }).is_err());
    assert!(RmsProp::new(vec![p()], RmsPropConfig { alpha: -0.1, ..Default::default() }).is_err());
    assert!(Adagrad::new(vec![p()], AdagradConfig { lr_decay: -0.1, ..Default::default() }).is_err());
    let q = p();
    assert!(Sgd::new(vec![q.clone(), q.clone()], SgdConfig::default()).is_err(), "duplicate parameter");
    let non_leaf = q.mul_scalar(2.0).unwrap();
    assert!(Sgd::new(vec![non_leaf], SgdConfig::default()).is_err(), "non-leaf");
    assert!(Sgd::new(vec![Tensor::zeros(&[2], DType::I64)], SgdConfig::default()).is_err(), "integer parameter");
    // Options of another optimizer in a group.
    let g = ParamGroup::new(vec![p()], 0.1, 0.0).with_options(GroupOptions::Adam(AdamConfig::default().options()));
    assert!(Sgd::with_groups(vec![g], SgdConfig::default()).is_err());
    // A gradient of the wrong shape or dtype: step errs, the parameter is untouched.
    let w = p();
    let mut opt = Adam::new(vec![w.clone()], AdamConfig::default()).unwrap();
    w.set_grad(Some(Tensor::ones(&[3], DType::F64)));
    assert!(opt.step().is_err());
    w.set_grad(Some(Tensor::ones(&[2], DType::F32)));
    assert!(opt.step().is_err());
    assert_eq!(w.to_f64_vec().unwrap(), vec![0.0, 0.0]);
    assert!(opt.set_lr(3, 0.1).is_err());
}

#[test]
fn param_groups_are_editable_like_pytorch() {
    let pb = problem(DType::F64);
    let mut opt = Sgd::new(pb.params.clone(), SgdConfig { lr: 0.1, ..Default::default() }).unwrap();
    opt.set_lr(0, 0.02).unwrap();
    assert_eq!(opt.lr(), 0.02);
    opt.param_groups_mut()[0].set_momentum(0.9);
    pb.backward();
    opt.step().unwrap();
    // Momentum switched on after construction creates the buffer on the next step, as in PyTorch.
    assert!(opt.state_dict().unwrap().contains_key("state.0.momentum_buffer"));
    opt.zero_grad();
    assert!(pb.params.iter().all(|p| p.grad().is_none()));
}
