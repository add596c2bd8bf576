//! Checkpoints: one safetensors file holding the model's state_dict (PyTorch keys under
//! `model.`), the optimizer's state (`optim.`), the scheduler's (`sched.`), the RNG state and
//! epoch (`train.`), plus JSON metadata describing how to rebuild the model. Written to a
//! temporary file and renamed, so a crash never leaves a half-written checkpoint.

use cnnkit_core::{Error, Result, Tensor};
use cnnkit_nn::serialize::{load_safetensors, parse_safetensors, save_safetensors};
use std::collections::BTreeMap;
use std::path::Path;

/// Everything needed to resume training exactly or to rebuild the model for inference.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// The model's state_dict (PyTorch keys).
    pub model: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
    pub scheduler: Vec<f64>,
    /// Epochs completed.
    pub epoch: usize,
    /// The data-order and augmentation generator's state.
    pub rng_state: Vec<u64>,
    /// How to rebuild the model (architecture name, input shape, classes, normalisation…).
    pub config: serde_json::Value,
    /// Per-epoch history (the metrics log), so curves survive a resume.
    pub history: serde_json::Value,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
        for (k, v) in &self.model {
            t.insert(format!("model.{k}"), v.clone());
        }
        for (k, v) in &self.optimizer {
            t.insert(format!("optim.{k}"), v.clone());
        }
        t.insert("sched.state".into(), Tensor::from_vec(self.scheduler.clone(), &[self.scheduler.len()])?);
        let rng: Vec<i64> = self.rng_state.iter().map(|&v| v as i64).collect();
        t.insert("train.rng".into(), Tensor::from_vec(rng.clone(), &[rng.len()])?);
        t.insert("train.epoch".into(), Tensor::from_vec(vec![self.epoch as i64], &[1])?);
        let meta = BTreeMap::from([
            ("format".to_string(), "cnnkit-checkpoint-1".to_string()),
            ("config".to_string(), self.config.to_string()),
            ("history".to_string(), self.history.to_string()),
        ]);
        save_safetensors(path, &t, &meta)
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bad = |msg: &str| Error::File { path: path.display().to_string(), msg: msg.to_string() };
        let bytes = std::fs::read(path).map_err(|e| bad(&format!("cannot read checkpoint: {e}")))?;
        let (tensors, meta) = parse_safetensors(&bytes).map_err(|e| bad(&e))?;
        if meta.get("format").map(String::as_str) != Some("cnnkit-checkpoint-1") {
            return Err(bad("not a cnnkit checkpoint (missing format metadata)"));
        }
        let json = |k: &str| -> Result<serde_json::Value> {
            serde_json::from_str(meta.get(k).map(String::as_str).unwrap_or("null")).map_err(|e| bad(&format!("bad {k} metadata: {e}")))
        };
        let mut ck = Checkpoint { config: json("config")?, history: json("history")?, ..Default::default() };
        for (k, v) in tensors {
            if let Some(n) = k.strip_prefix("model.") {
                ck.model.insert(n.to_string(), v);
            } else if let Some(n) = k.strip_prefix("optim.") {
                ck.optimizer.insert(n.to_string(), v);
            } else if k == "sched.state" {
                ck.scheduler = v.to_f64_vec()?;
            } else if k == "train.rng" {
                ck.rng_state = v.to_vec::<i64>().map_err(|_| bad("train.rng must be int64"))?.into_iter().map(|x| x as u64).collect();
            } else if k == "train.epoch" {
                ck.epoch = v.to_vec::<i64>().map_err(|_| bad("train.epoch must be int64"))?.first().copied().unwrap_or(0).max(0) as usize;
            }
        }
        if ck.model.is_empty() {
            return Err(bad("checkpoint holds no model weights"));
        }
        Ok(ck)
    }
}

/// Reads a bare state_dict (safetensors) for weight-only loading.
pub fn load_weights(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let all = load_safetensors(path)?;
    // A cnnkit checkpoint: take its model part; a plain state_dict: use as is.
    let model: BTreeMap<String, Tensor> =
        all.iter().filter_map(|(k, v)| k.strip_prefix("model.").map(|n| (n.to_string(), v.clone()))).collect();
    Ok(if model.is_empty() { all } else { model })
}
