//! cnnkit-kernels: the compute kernels. Slices in, slices out; no Tensor type lives here.
//!
//! Every optimised kernel has a naive twin in [`reference`], and a test holding the two
//! together on random shapes. Legend: N batch, C channels, H/W height/width, K kernel size,
//! OH/OW output height/width, G groups.

pub mod conv;
pub mod matmul;
pub mod pool;
pub mod reference;

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
}
impl Float for f32 {}
impl Float for f64 {}

/// Number of worker threads the kernels may use (rayon's current pool).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
