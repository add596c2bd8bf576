//! `with_busy_workers`: f runs on a pool worker with its result returned, parallel work inside
//! it is shared and completes, it nests, and a panic in f reaches the caller instead of
//! leaving the spinning workers waiting forever.

use cnnkit_core::{on_worker, with_busy_workers};
use rayon::prelude::*;

#[test]
fn runs_parallel_work_on_a_worker() {
    let (on_pool, sum) = with_busy_workers(|| {
        let sum: u64 = (0..100_000u64).into_par_iter().map(|i| i * i % 7).sum();
        (rayon::current_thread_index().is_some(), sum)
    });
    assert!(on_pool);
    assert_eq!(sum, (0..100_000u64).map(|i| i * i % 7).sum::<u64>());
    // Many short scopes in a row (the spinners of one are gone before the next starts).
    for k in 0..200u64 {
        let s: u64 = with_busy_workers(|| (0..64u64).into_par_iter().map(|i| i + k).sum());
        assert_eq!(s, (0..64).sum::<u64>() + 64 * k);
    }
}

#[test]
fn nests_inside_itself_and_on_worker() {
    let got = on_worker(|| {
        with_busy_workers(|| {
            let inner: Vec<u64> = (0..8u64).into_par_iter().map(|i| with_busy_workers(|| (0..i).into_par_iter().sum())).collect();
            inner
        })
    });
    assert_eq!(got, (0..8u64).map(|i| (0..i).sum()).collect::<Vec<_>>());
}

#[test]
fn a_panic_in_f_reaches_the_caller() {
    let r = std::panic::catch_unwind(|| {
        with_busy_workers(|| {
            let _: u64 = (0..1000u64).into_par_iter().sum();
            panic!("boom");
        })
    });
    let msg = r.expect_err("the panic propagates");
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"boom"));
    // The pool still works afterwards.
    assert_eq!(with_busy_workers(|| (0..10u64).into_par_iter().sum::<u64>()), 45);
}
