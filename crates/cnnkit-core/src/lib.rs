//! cnnkit-core: the Tensor, its dtypes, one typed Error, and reverse-mode autograd.
//!
//! A newcomer's path: [`Tensor`] (tensor.rs) holds shared storage and a layout; every op
//! (elementwise.rs, shape.rs, reduce.rs, nn_ops.rs) computes with cnnkit-kernels and records
//! an [`Op`] (op.rs) when grad is needed; `backward` (backprop.rs) walks those records.

pub mod backprop;
pub mod custom;
pub mod dtype;
pub mod elementwise;
pub mod error;
pub mod fused;
pub mod grad_mode;
pub mod gradcheck;
pub mod layout;
pub mod nn_ops;
pub mod op;
pub mod prepared;
pub mod random;
pub mod recycle;
pub mod reduce;
pub mod shape;
pub mod tensor;

pub use cnnkit_kernels::conv::Epilogue;
pub use dtype::{DType, Elem, FloatElem, Storage};
pub use error::{Error, Result};
pub use grad_mode::{is_grad_enabled, no_grad, with_no_grad, NoGradGuard};
pub use gradcheck::gradcheck;
pub use nn_ops::{Conv2dArgs, Pool2dArgs};
pub use op::{BinaryOp, CustomOp, UnaryOp};
pub use random::{manual_seed, Generator};
pub use recycle::{recycle_buffers, recycle_stats, RecycleGuard};
pub use shape::PadMode;
pub use tensor::{Tensor, TensorId};

use std::sync::atomic::{AtomicBool, Ordering};

/// Sets the number of threads the kernels use (call once, before any compute; `None`: one per
/// CPU this process may run on, and no error when the pool already exists).
///
/// On Linux, when there are no more threads than such CPUs, worker i is pinned to the i-th of
/// them (`CNNKIT_PIN=0` turns this off). Unpinned, the scheduler placed both workers of a
/// fresh 2-thread process on one CPU and moved one away only after a while, or never: the
/// first 3–15 MobileNetV2 inferences ran at single-thread speed (8.3 ms, then 4.3), which a
/// 10-run benchmark's median reported.
pub fn set_num_threads(n: Option<usize>) -> Result<()> {
    let cpus = affinity::allowed_cpus();
    let explicit = n.is_some();
    let n = n.unwrap_or(cpus.len().max(1)).max(1);
    let pin = n <= cpus.len() && cpus.len() > 1 && std::env::var("CNNKIT_PIN").map_or(true, |v| v != "0");
    OVERSUBSCRIBED.store(n > cpus.len().max(1), Ordering::Relaxed);
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .start_handler(move |i| {
            if pin {
                affinity::pin_current_thread(cpus[i % cpus.len()]);
            }
        })
        .build_global();
    match built {
        Err(e) if explicit => Err(Error::invalid("set_num_threads", e.to_string())),
        _ => Ok(()),
    }
}

/// Thread-to-CPU affinity (Linux; elsewhere every call is a no-op).
mod affinity {
    /// The CPUs the calling thread may run on, in order (empty when unknown).
    pub fn allowed_cpus() -> Vec<usize> {
        #[cfg(target_os = "linux")]
        // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`,
        // and CPU_ISSET reads it within its bounds.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
                return (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
            }
        }
        Vec::new()
    }

    /// Restricts the calling thread to `cpu` (best effort: a refusal leaves it unpinned).
    pub fn pin_current_thread(cpu: usize) {
        #[cfg(target_os = "linux")]
        // SAFETY: CPU_SET writes within `set`; sched_setaffinity(0, …) affects only the
        // calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = cpu;
    }

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        /// A pinned thread may run on its CPU only; the process's CPUs are all listed.
        #[test]
        fn pins_a_thread_to_one_cpu() {
            let cpus = super::allowed_cpus();
            assert!(!cpus.is_empty());
            let last = *cpus.last().unwrap();
            let seen = std::thread::spawn(move || {
                super::pin_current_thread(last);
                super::allowed_cpus()
            })
            .join()
            .unwrap();
            assert_eq!(seen, vec![last]);
            assert_eq!(super::allowed_cpus(), cpus, "pinning a thread changed its creator");
        }
    }
}

/// Runs `f` on a worker thread of the kernels' thread pool (directly when the caller already is
/// one) and returns its result. Kernels called from a pool worker share their parallel work
/// with the other workers by work stealing; called from any other thread, each parallel kernel
/// must hand its work to the pool and put the caller to sleep until it is done, a wake-up and a
/// sleep per op, which dominates small ops (batch-1 inference). Wrap a whole forward pass or
/// training step in it, not code that waits for other threads (a data-loader channel): with
/// one pool thread that would deadlock.
///
/// The calling thread's buffer-recycling scope and free lists ([`recycle_buffers`]) move to the
/// worker for the duration of `f` and come back after it.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mine = recycle::swap_pool(Default::default());
    let (r, mine) = rayon::scope(|_| {
        let theirs = recycle::swap_pool(mine);
        let r = f();
        (r, recycle::swap_pool(theirs))
    });
    recycle::swap_pool(mine);
    r
}

/// [`on_worker`], with the pool's other workers kept awake for the duration of `f`: each spins,
/// running any parallel work the caller shares as soon as it is offered, instead of going to
/// sleep when it finds none. A rayon worker sleeps after ~20 µs without work, and waking it
/// took ~26 µs on the 2-vCPU VM of BENCHMARKS.md (`cargo run --release -p cnnkit-core
/// --example steal_latency`), so a network at batch 1 lost that much at the start of most of
/// its parallel layers on the second thread, against under 1 µs with spinning workers. ONNX
/// Runtime's pool spins the same way. The cost: the other workers burn their cores while `f`
/// runs (its sequential parts too), so with more workers than CPUs ([`set_num_threads`]) this
/// is plain [`on_worker`]. For inference at small batch (cnnkit-nn's `Graph::run` uses it).
/// Not for training steps: there the spinning workers steal every half the caller would have
/// run on its own, and MobileNetV2's 96² batch-16 step went from 111 to 124 ms (6 rounds;
/// cifar-cnn's from 6.3 to 6.0 ms). One call spins at a time: a call made while another is
/// spinning (nested in it, or from another thread: concurrent requests, runs inside a
/// `par_iter`) is plain [`on_worker`], since its spin jobs could only run inside the other
/// call's work and hold it up.
pub fn with_busy_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    /// Sets the flag when dropped, so the spinners stop even when `f` panics (the scope waits
    /// for them before it unwinds).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    /// Clears [`SPINNING`] when dropped (after the scope: its spin jobs have returned).
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            SPINNING.store(false, Ordering::Release);
        }
    }
    on_worker(|| {
        if rayon::current_num_threads() < 2 || OVERSUBSCRIBED.load(Ordering::Relaxed) || SPINNING.swap(true, Ordering::AcqRel) {
            return f();
        }
        let _release = Release;
        let caller = rayon::current_thread_index();
        let done = AtomicBool::new(false);
        rayon::in_place_scope(|s| {
            // One spin job per worker, bound to it; the caller's own copy runs only when it
            // idles inside `f` or at the scope's end, and returns at once.
            s.spawn_broadcast(|_, ctx| {
                if Some(ctx.index()) != caller {
                    spin(&done)
                }
            });
            let _stop = Stop(&done);
            f()
        })
    })
}

/// Set while a [`with_busy_workers`] call has spin jobs out.
static SPINNING: AtomicBool = AtomicBool::new(false);

/// Set by [`set_num_threads`] when the pool has more workers than the process may use CPUs.
/// (Asked there, not later: a pinned worker's own CPU set is its one CPU.)
static OVERSUBSCRIBED: AtomicBool = AtomicBool::new(false);

/// How long a spin job waits without finding work before it gives up. A worker may pick its
/// spin job up while it waits inside other work (a job it stole from the caller, another
/// thread's parallel op, another `with_busy_workers` call), which goes on only once the spin
/// job returns; if `f` in turn waits for that work, only this bound ends the wait. (A spin job
/// without it hung one MNIST epoch bench: the worker spinning, the caller asleep in a join.)
/// Between a network's parallel layers the pool is idle for microseconds, far below it.
const SPIN_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(1);

/// A [`with_busy_workers`] spin job: runs pool work as it appears until `done`, or until it
/// has found none for [`SPIN_IDLE_LIMIT`].
fn spin(done: &AtomicBool) {
    let mut last_work = std::time::Instant::now();
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last_work = std::time::Instant::now();
            continue;
        }
        if last_work.elapsed() >= SPIN_IDLE_LIMIT {
            return;
        }
        // A short pause between looks: polling without one contended with the caller's own
        // deque (MobileNetV2's training step 115 → 132 ms).
        for _ in 0..16 {
            std::hint::spin_loop();
        }
    }
}

/// Asks the C allocator to keep freed memory in the process instead of returning it to the
/// kernel. Training allocates and frees the same activation sizes every step, and each fresh
/// page costs a page fault (measured: ~15% of a cifar-cnn training step). Programs (the CLI,
/// the examples) call this once at start; a library embedding cnnkit may choose not to.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc malloc parameters.
    unsafe {
        // 32 MiB is glibc's largest allowed mmap threshold on 64-bit (larger values are refused).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
