//! cnnkit-nn: torch.nn for cnnkit — the Module trait, layers, losses, initialisers, forward
//! hooks, safetensors serialisation of state_dicts, and the graph IR (graph/) that ONNX
//! import/export and inference planning share.

pub mod graph;
pub mod hooks;
pub mod init;
pub mod layers;
pub mod loss;
pub mod module;
pub mod serialize;

pub use hooks::{register_forward_hook, register_forward_hook_at, HookHandle};
pub use layers::*;
pub use module::{LoadReport, Module, ModuleExt};
