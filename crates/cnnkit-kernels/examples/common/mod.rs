//! What the kernel timing examples share (`mod common;` in each).

/// The median of `v` (its upper middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `f` on a pool worker, as a network runs (`Graph::run`): a parallel section called from
/// outside the pool would pay for waking it and for putting the calling thread to sleep.
pub fn on_worker(f: impl FnOnce() + Send) {
    rayon::scope(|_| f());
}
