//! Every LR scheduler against PyTorch: SGD (or Adam) driven for 20 steps, the lr of every
//! group after construction and after each `scheduler.step()` within 1e-12 relative, and the
//! parameters within 1e-10. PyTorch computes most schedules recursively; cnnkit uses the
//! closed forms, so these runs also check that the two agree over the horizon.

mod common;

use cnnkit_core::{DType, Tensor};
use cnnkit_optim::sched::*;
use cnnkit_optim::*;
use common::*;

fn sgd(pb: &Problem) -> Sgd {
    Sgd::new(pb.params.clone(), SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }).unwrap()
}

/// SGD with w in a group of lr 0.1 and b in one of lr 0.05 (momentum 0.9).
fn sgd_two_groups(pb: &Problem) -> Sgd {
    let groups = vec![ParamGroup::new(vec![pb.param("w")], 0.1, 0.0), ParamGroup::new(vec![pb.param("b")], 0.05, 0.0)];
    Sgd::with_groups(groups, SgdConfig { momentum: 0.9, ..Default::default() }).unwrap()
}

/// Runs the fixture with `make_opt` and a scheduler from `make_sched`, stepping it each step.
fn check<O: Optimizer + 'static>(
    name: &str,
    make_opt: impl FnOnce(&Problem) -> O,
    make_sched: impl FnOnce(&mut dyn Optimizer) -> Box<dyn LrScheduler>,
) {
    let fx = Fixture::load(name);
    let pb = Problem::new(&fx, &["w", "b"], DType::F64);
    let mut opt = make_opt(&pb);
    let mut sched = make_sched(&mut opt);
    let metrics = fx.has("metrics").then(|| fx.values("metrics").to_vec());
    check_trajectory(&fx, &pb, &mut opt, DType::F64, |opt, step| match &metrics {
        Some(m) => sched.step_with_metric(opt, m[step]).unwrap(),
        None => sched.step(opt).unwrap(),
    });
    let last = fx.row("lr", STEPS);
    assert_close(&sched.last_lr(), last, 1e-12, 1e-15, &format!("{name} last_lr"));
}

#[test]
fn step_lr_two_groups() {
    check("sched_step", sgd_two_groups, |o| Box::new(StepLr::new(o, 4, 0.5).unwrap()));
}

#[test]
fn multistep_lr_repeated_milestone() {
    check("sched_multistep", sgd, |o| Box::new(MultiStepLr::new(o, &[3, 7, 7, 12], 0.3).unwrap()));
}

#[test]
fn exponential_lr() {
    check("sched_exponential", sgd, |o| Box::new(ExponentialLr::new(o, 0.9).unwrap()));
}

#[test]
fn cosine_annealing_past_t_max() {
    // T_max 8 over 20 steps: down to eta_min, back up, and down again.
    check("sched_cosine", sgd, |o| Box::new(CosineAnnealingLr::new(o, 8, 0.001).unwrap()));
}

#[test]
fn cosine_annealing_to_zero_two_groups() {
    check("sched_cosine_zero", sgd_two_groups, |o| Box::new(CosineAnnealingLr::new(o, 20, 0.0).unwrap()));
}

#[test]
fn linear_lr_defaults() {
    check("sched_linear", sgd, |o| Box::new(LinearLr::with_defaults(o).unwrap()));
}

#[test]
fn cosine_warm_restarts_t_mult_2() {
    check("sched_warm_restarts", sgd, |o| Box::new(CosineAnnealingWarmRestarts::new(o, 3, 2, 0.01).unwrap()));
}

#[test]
fn cosine_warm_restarts_t_mult_1() {
    check("sched_warm_restarts_mult1", sgd_two_groups, |o| Box::new(CosineAnnealingWarmRestarts::new(o, 5, 1, 0.0).unwrap()));
}

#[test]
fn one_cycle_sgd_cycles_momentum() {
    check("sched_onecycle_sgd", sgd_two_groups, |o| {
        let cfg = OneCycleConfig { max_lr: vec![0.5, 0.2], ..OneCycleConfig::new(0.0, STEPS) };
        Box::new(OneCycleLr::new(o, cfg).unwrap())
    });
}

#[test]
fn one_cycle_adam_three_phase_linear_cycles_beta1() {
    check(
        "sched_onecycle_adam",
        |pb| Adam::new(pb.params.clone(), AdamConfig { lr: 0.01, ..Default::default() }).unwrap(),
        |o| {
            let cfg = OneCycleConfig {
                pct_start: 0.25,
                anneal_strategy: AnnealStrategy::Linear,
                three_phase: true,
                ..OneCycleConfig::new(0.05, STEPS)
            };
            Box::new(OneCycleLr::new(o, cfg).unwrap())
        },
    );
}

#[test]
fn sequential_linear_warmup_then_cosine() {
    check("sched_sequential", sgd, |o| {
        let warm: Box<dyn LrScheduler> = Box::new(LinearLr::new(o, 0.1, 1.0, 5).unwrap());
        let cos: Box<dyn LrScheduler> = Box::new(CosineAnnealingLr::new(o, 15, 0.001).unwrap());
        Box::new(SequentialLr::new(o, vec![warm, cos], &[5]).unwrap())
    });
}

#[test]
fn reduce_on_plateau_min_rel_cooldown() {
    check("sched_plateau", sgd, |o| {
        let cfg = PlateauConfig { factor: 0.5, patience: 2, threshold: 0.01, cooldown: 1, min_lr: vec![0.01], ..Default::default() };
        Box::new(ReduceLrOnPlateau::new(o, cfg).unwrap())
    });
}

#[test]
fn reduce_on_plateau_max_abs_per_group_min_lr() {
    check("sched_plateau_max_abs", sgd_two_groups, |o| {
        let cfg = PlateauConfig {
            mode: PlateauMode::Max,
            factor: 0.3,
            patience: 1,
            threshold: 0.05,
            threshold_mode: ThresholdMode::Abs,
            min_lr: vec![0.02, 0.001],
            ..Default::default()
        };
        Box::new(ReduceLrOnPlateau::new(o, cfg).unwrap())
    });
}

/// Builds a throwaway SGD on one parameter.
fn tiny_sgd(lr: f64, momentum: f64) -> Sgd {
    let p = Tensor::zeros(&[2], DType::F64).requires_grad_().unwrap();
    Sgd::new(vec![p], SgdConfig { lr, momentum, ..Default::default() }).unwrap()
}

#[test]
fn construction_performs_step_zero_and_records_initial_lr() {
    let mut opt = tiny_sgd(0.1, 0.0);
    let s = LinearLr::new(&mut opt, 0.5, 1.0, 4).unwrap();
    assert_eq!(opt.lr(), 0.05);
    assert_eq!(s.last_epoch(), 0);
    assert_eq!(opt.param_groups()[0].initial_lr, Some(0.1));
    // A second scheduler scales from initial_lr, not from the warm-up's 0.05.
    let c = CosineAnnealingLr::new(&mut opt, 10, 0.0).unwrap();
    assert_eq!(c.last_lr(), vec![0.1]);
}

#[test]
fn one_cycle_errors() {
    // Adagrad has no momentum to cycle.
    let p = Tensor::zeros(&[2], DType::F64).requires_grad_().unwrap();
    let mut ada = Adagrad::new(vec![p], AdagradConfig::default()).unwrap();
    assert!(OneCycleLr::new(&mut ada, OneCycleConfig::new(0.1, 10)).is_err());
    let no_cycle = OneCycleConfig { cycle_momentum: false, ..OneCycleConfig::new(0.1, 10) };
    assert!(OneCycleLr::new(&mut ada, no_cycle).is_ok());
    // Stepping past total_steps is refused, as in PyTorch.
    let mut opt = tiny_sgd(0.1, 0.9);
    let mut s = OneCycleLr::new(&mut opt, OneCycleConfig::new(0.1, 3)).unwrap();
    for _ in 0..3 {
        s.step(&mut opt).unwrap();
    }
    assert!(s.step(&mut opt).is_err());
    // Wrong number of max_lr values.
    let bad = OneCycleConfig { max_lr: vec![0.1, 0.2], ..OneCycleConfig::new(0.1, 10) };
    assert!(OneCycleLr::new(&mut opt, bad).is_err());
}

#[test]
fn bad_scheduler_arguments_are_errors() {
    let mut opt = tiny_sgd(0.1, 0.0);
    assert!(StepLr::new(&mut opt, 0, 0.1).is_err());
    assert!(CosineAnnealingLr::new(&mut opt, 0, 0.0).is_err());
    assert!(CosineAnnealingWarmRestarts::new(&mut opt, 0, 1, 0.0).is_err());
    assert!(LinearLr::new(&mut opt, 0.0, 1.0, 5).is_err());
    assert!(LinearLr::new(&mut opt, 0.5, 1.5, 5).is_err());
    assert!(ReduceLrOnPlateau::new(&mut opt, PlateauConfig { factor: 1.0, ..Default::default() }).is_err());
    let mut p = ReduceLrOnPlateau::new(&mut opt, PlateauConfig::default()).unwrap();
    assert!(p.step(&mut opt).is_err(), "ReduceLROnPlateau needs a metric");
    let plateau: Box<dyn LrScheduler> = Box::new(ReduceLrOnPlateau::new(&mut opt, PlateauConfig::default()).unwrap());
    assert!(SequentialLr::new(&mut opt, vec![plateau], &[]).is_err());
    let a: Box<dyn LrScheduler> = Box::new(StepLr::new(&mut opt, 2, 0.5).unwrap());
    assert!(SequentialLr::new(&mut opt, vec![a], &[3]).is_err(), "milestones must be one fewer than schedulers");
}

#[test]
fn warm_restarts_step_to_matches_stepping() {
    // PyTorch's step(epoch) closed form (with the log formula for T_mult > 1) lands where
    // stepping one at a time does.
    for t_mult in [1, 2, 3] {
        let mut a = tiny_sgd(0.1, 0.0);
        let mut b = tiny_sgd(0.1, 0.0);
        let mut sa = CosineAnnealingWarmRestarts::new(&mut a, 3, t_mult, 0.001).unwrap();
        let mut sb = CosineAnnealingWarmRestarts::new(&mut b, 3, t_mult, 0.001).unwrap();
        for e in 1..40 {
            sa.step(&mut a).unwrap();
            sb.step_to(&mut b, e).unwrap();
            assert!((a.lr() - b.lr()).abs() <= 1e-12 * a.lr(), "T_mult {t_mult} epoch {e}: {} vs {}", a.lr(), b.lr());
        }
    }
}

#[test]
fn cosine_closed_form_matches_torch_recursion_over_1000_steps() {
    // torch steps CosineAnnealingLR with a recursive formula; cnnkit uses the closed form.
    // Over 1000 steps (many cycles) they stay within 1e-6 relative (in practice ~1e-13),
    // except where the lr is exactly eta_min = 0, where both are 0 up to rounding.
    let fx = Fixture::load("sched_cosine_long");
    for (key, t_max, eta_min) in [("lr.t50_zero", 50, 0.0), ("lr.t7_min", 7, 0.01)] {
        let want = fx.values(key);
        let mut opt = tiny_sgd(0.1, 0.0);
        let mut s = CosineAnnealingLr::new(&mut opt, t_max, eta_min).unwrap();
        let mut worst = 0.0f64;
        for (e, &w) in want.iter().enumerate() {
            if e > 0 {
                s.step(&mut opt).unwrap();
            }
            let got = opt.lr();
            assert!((got - w).abs() <= 1e-6 * w.abs().max(1e-12), "{key} epoch {e}: {got} vs torch {w}");
            if w.abs() > 1e-12 {
                worst = worst.max((got - w).abs() / w.abs());
            }
        }
        eprintln!("{key}: worst relative difference from torch's recursion over {} steps: {worst:.2e}", want.len() - 1);
    }
}
