//! How long a parallel section waits for the pool's second worker, by how long the caller ran
//! alone before it: with rayon's own idling (the worker sleeps after ~20 µs without work) and
//! inside `with_busy_workers` (the worker spins). Each round: the caller works alone for GAP
//! µs, then `rayon::join`s a 20 µs task with one that records when it started.
//! Run: cargo run --release -p cnnkit-core --example steal_latency [rounds]
use std::time::Instant;

fn spin(us: f64) {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() * 1e6 < us {
        std::hint::spin_loop();
    }
}

/// (median, 90th percentile) of the second task's start after the join began, µs.
fn latencies(rounds: usize, gap: f64) -> (f64, f64) {
    let mut lat: Vec<f64> = (0..rounds)
        .map(|_| {
            spin(gap);
            let t0 = Instant::now();
            rayon::join(|| spin(20.0), || t0.elapsed().as_secs_f64() * 1e6).1
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    (lat[lat.len() / 2], lat[lat.len() * 9 / 10])
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000).max(1);
    if rayon::current_num_threads() < 2 {
        println!("one pool thread: nothing to measure (set RAYON_NUM_THREADS=2)");
        return;
    }
    for gap in [0.0, 10.0, 50.0, 200.0] {
        let idle = cnnkit_core::on_worker(|| latencies(rounds, gap));
        let busy = cnnkit_core::with_busy_workers(|| latencies(rounds, gap));
        println!(
            "caller alone {gap:>5} µs: second worker starts after {:>6.2} µs (p90 {:>6.2}) idling, {:>5.2} µs (p90 {:>5.2}) busy",
            idle.0, idle.1, busy.0, busy.1
        );
    }
}
