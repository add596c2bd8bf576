//! The model zoo (crate `cnnkit-models`): torchvision's architectures and the seed
//! article's models, built by name with [`build`].

pub use cnnkit_models::*;
