//! cnnkit-kernels: the compute kernels. Slices in, slices out; no Tensor type lives here.
//!
//! Every optimised kernel has a naive twin in [`reference`], and a test holding the two
//! together on random shapes. Legend: N batch, C channels, H/W height/width, K kernel size,
//! OH/OW output height/width, G groups.

#[macro_use]
pub mod simd;
pub mod conv;
pub mod depthwise;
pub mod direct;
pub mod dot;
pub mod fused;
pub mod matmul;
pub mod packed;
pub mod pointwise;
pub mod pool;
pub mod reference;
pub mod winograd;

/// The float types the compute kernels run on: f32 (default) and f64 (gradchecks).
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + std::ops::AddAssign
    + std::ops::MulAssign
    + std::iter::Sum
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// Runs `f` on a per-thread scratch buffer of `len` elements (contents unspecified), so
    /// hot loops such as im2col do not allocate and fault in fresh pages on every call.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// As [`Float::with_scratch`], a second per-thread buffer: for a kernel that holds one
    /// buffer across a parallel section in which the calling thread may run tasks needing
    /// the first (the Winograd weight transform).
    fn with_aux_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

/// Runs `f` on `key`'s buffer grown to at least `len` elements.
pub(crate) fn with_buffer<T: Copy + Default + 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (rayon work stealing): use a private buffer.
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

macro_rules! scratch_impl {
    ($t:ty, $key:ident, $aux:ident) => {
        thread_local! {
            static $key: std::cell::RefCell<Vec<$t>> = const { std::cell::RefCell::new(Vec::new()) };
            static $aux: std::cell::RefCell<Vec<$t>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        impl Float for $t {
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                with_buffer(&$key, len, f)
            }
            fn with_aux_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                with_buffer(&$aux, len, f)
            }
        }
    };
}
scratch_impl!(f32, SCRATCH_F32, AUX_F32);
scratch_impl!(f64, SCRATCH_F64, AUX_F64);

/// Number of worker threads the kernels may use (rayon's current pool).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
