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

/// A spinning worker may pick up its spin job while it waits inside work it stole from f
/// (nested parallelism): the spin must give way, or f waits on it forever. Many steps of
/// nested parallel work, as a training step's layers make.
#[test]
fn nested_parallel_work_does_not_wait_on_a_spinner() {
    for step in 0..300u64 {
        let s: u64 = with_busy_workers(|| {
            (0..8u64)
                .into_par_iter()
                .map(|i| {
                    let inner: u64 = (0..64u64).into_par_iter().map(|j| (i * j + step) % 11).sum();
                    // Let the other thread go idle between the nested sections.
                    std::thread::sleep(std::time::Duration::from_micros(30));
                    inner + (0..32u64).into_par_iter().sum::<u64>()
                })
                .sum()
        });
        let want: u64 = (0..8u64).map(|i| (0..64u64).map(|j| (i * j + step) % 11).sum::<u64>() + (0..32u64).sum::<u64>()).sum();
        assert_eq!(s, want, "step {step}");
    }
}

/// Another thread (a data loader) hands the pool parallel work of its own while steps run:
/// a worker may then pick up its spin job while it waits inside the loader's work, which
/// must not hold up the loader or the step.
#[test]
fn parallel_work_from_another_thread_alongside() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s: u64 = (0..16u64).into_par_iter().map(|i| (0..256u64).into_par_iter().map(|j| i ^ j).sum::<u64>()).sum();
                assert_eq!(s, (0..16u64).map(|i| (0..256u64).map(|j| i ^ j).sum::<u64>()).sum());
                rounds += 1;
            }
            rounds
        })
    };
    for step in 0..2000u64 {
        let s: u64 = with_busy_workers(|| {
            (0..8u64).into_par_iter().map(|i| (0..128u64).into_par_iter().map(|j| (i + j + step) % 5).sum::<u64>()).sum()
        });
        assert_eq!(s, (0..8u64).map(|i| (0..128u64).map(|j| (i + j + step) % 5).sum::<u64>()).sum(), "step {step}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(loader.join().unwrap() > 0);
}

/// Two threads calling it at once: each call's spin job may run inside the other call's work
/// (a wait that only the spin job's idle limit ends), and both must finish with the right sums.
#[test]
fn concurrent_calls_from_two_threads() {
    let run = |seed: u64| {
        move || {
            for step in 0..300u64 {
                let s: u64 = with_busy_workers(|| {
                    (0..8u64).into_par_iter().map(|i| (0..64u64).into_par_iter().map(|j| (i * j + step + seed) % 13).sum::<u64>()).sum()
                });
                assert_eq!(s, (0..8u64).map(|i| (0..64u64).map(|j| (i * j + step + seed) % 13).sum::<u64>()).sum());
            }
        }
    };
    let (a, b) = (std::thread::spawn(run(1)), std::thread::spawn(run(2)));
    a.join().unwrap();
    b.join().unwrap();
}
