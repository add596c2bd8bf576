//! cnnkit-train: the pieces of a training run — metrics, checkpoints, plots.

pub mod checkpoint;
pub mod metrics;
pub mod plot;
pub mod trainer;

pub use checkpoint::Checkpoint;
pub use metrics::ClassificationMetrics;
pub use trainer::{evaluate, fit, BatchSource, TrainConfig, TrainReport};
