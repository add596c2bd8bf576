//! cnnkit: convolutional neural networks in pure Rust — what PyTorch + torchvision give a
//! Python user: tensors with autograd, torch.nn's layers, losses and initialisers,
//! optimizers and LR schedulers, fast multi-threaded CPU kernels.
//!
//! ```
//! use cnnkit::prelude::*;
//! let conv = Conv2d::new(Conv2dConfig::new(1, 8, 3).padding(1)).unwrap();
//! let x = Tensor::randn(&[2, 1, 28, 28], DType::F32);
//! let y = conv.forward(&x).unwrap();
//! assert_eq!(y.shape(), &[2, 8, 28, 28]);
//! ```

pub use cnnkit_core as core;
pub use cnnkit_io as io;
pub use cnnkit_kernels as kernels;
pub use cnnkit_nn as nn;
pub use cnnkit_onnx as onnx;
pub use cnnkit_optim as optim;
pub use cnnkit_train as train;

pub mod data;
pub mod models;
pub mod synthetic;
pub mod transfer;
pub mod transforms;

/// Everything a training script needs in scope.
pub mod prelude {
    pub use cnnkit_core::{manual_seed, no_grad, with_no_grad, Conv2dArgs, DType, Error, Generator, PadMode, Pool2dArgs, Result, Tensor};
    pub use cnnkit_nn::loss::{self, cross_entropy, CrossEntropyLoss, CrossEntropyOptions, Reduction};
    pub use cnnkit_nn::*;
    pub use cnnkit_optim::*;
}
