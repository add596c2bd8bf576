//! cnnkit-train: the pieces of a training run — metrics, checkpoints, plots.

pub mod checkpoint;
pub mod metrics;
pub mod plot;

pub use checkpoint::Checkpoint;
pub use metrics::ClassificationMetrics;
