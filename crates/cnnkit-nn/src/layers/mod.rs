//! The layer zoo of torch.nn.

pub mod activation;
pub mod container;
pub mod conv;
pub mod dropout;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod resample;

pub use activation::*;
pub use container::*;
pub use conv::*;
pub use dropout::*;
pub use linear::*;
pub use norm::*;
pub use pool::*;
pub use resample::*;
