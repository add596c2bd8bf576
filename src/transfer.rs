//! Transfer learning (the seed's §4.1): load pretrained weights into a model whose classifier
//! head has a different number of classes, freeze the backbone (or everything before a
//! given layer), keep frozen BatchNorm layers' running statistics, and give the backbone its
//! own (lower) learning rate.
//!
//! ```no_run
//! use cnnkit::prelude::*;
//! use cnnkit::transfer::{self, Freeze};
//! let model = cnnkit::models::build("resnet18", 3, 224, 224, 5).unwrap();
//! let sd = cnnkit::nn::serialize::load_safetensors("resnet18.safetensors").unwrap();
//! transfer::load_pretrained(model.as_ref(), sd, "fc").unwrap();
//! let frozen = transfer::freeze(model.as_ref(), "fc", &Freeze::Backbone).unwrap();
//! let groups = transfer::param_groups(model.as_ref(), "fc", 1e-3, 1e-4, 0.0);
//! # let _ = (frozen, groups);
//! ```

use cnnkit_core::{Error, Result, Tensor};
use cnnkit_nn::{LoadReport, Module, ModuleExt};
use cnnkit_optim::ParamGroup;
use std::collections::BTreeMap;

/// What to freeze.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freeze {
    /// Train everything.
    None,
    /// Train only the classifier head.
    Backbone,
    /// Freeze every parameter registered before the submodule named here ("layer3"); that
    /// submodule and everything after it train.
    Until(String),
}

impl std::str::FromStr for Freeze {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Freeze::None),
            "backbone" => Ok(Freeze::Backbone),
            _ => match s.strip_prefix("until:") {
                Some(l) if !l.is_empty() => Ok(Freeze::Until(l.to_string())),
                _ => Err(Error::invalid("--freeze", format!("'{s}' is not backbone, none or until:LAYER"))),
            },
        }
    }
}

fn under(name: &str, prefix: &str) -> bool {
    name == prefix || name.starts_with(&format!("{prefix}."))
}

/// Loads `sd` (e.g. torchvision's ImageNet weights) into `model`, leaving the head
/// (parameters under `head`) as initialised when its shapes differ — the new classifier.
/// A 3-channel stem loads into a 1-channel model by summing its kernels over the input
/// channels (a grey image replicated to RGB gives the same response). Any other missing,
/// unexpected or mis-shaped key is an error listing them all, as PyTorch's strict loading.
pub fn load_pretrained(model: &dyn Module, mut sd: BTreeMap<String, Tensor>, head: &str) -> Result<LoadReport> {
    let own: BTreeMap<String, Tensor> = model.state_dict();
    for (k, t) in &own {
        let Some(src) = sd.get(k) else { continue };
        if src.shape() == t.shape() {
            continue;
        }
        if under(k, head) {
            sd.remove(k);
        } else if t.ndim() == 4
            && src.ndim() == 4
            && t.shape()[1] == 1
            && src.shape()[0] == t.shape()[0]
            && src.shape()[2..] == t.shape()[2..]
        {
            let summed = src.sum(&[1], true)?;
            sd.insert(k.clone(), summed);
        }
    }
    let report = model.load_state_dict(&sd, false)?;
    let missing_outside_head: Vec<&String> = report.missing_keys.iter().filter(|k| !under(k, head)).collect();
    if !missing_outside_head.is_empty() || !report.unexpected_keys.is_empty() || !report.mismatched.is_empty() {
        let bad = LoadReport {
            missing_keys: missing_outside_head.into_iter().cloned().collect(),
            unexpected_keys: report.unexpected_keys.clone(),
            mismatched: report.mismatched.clone(),
        };
        return Err(Error::StateDict(format!("Error(s) in loading pretrained weights: {bad}")));
    }
    Ok(report)
}

/// What [`freeze`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frozen {
    /// Parameter names with requires_grad now false.
    pub frozen: Vec<String>,
    /// Parameter names still trained.
    pub trainable: Vec<String>,
    /// Normalisation layers whose parameters are all frozen: train them in eval mode
    /// (pass to `TrainConfig::eval_modules`) so their running statistics stay as loaded.
    pub eval_modules: Vec<String>,
}

/// Freezes parameters as `how` says; the head (parameters under `head`) always trains.
pub fn freeze(model: &dyn Module, head: &str, how: &Freeze) -> Result<Frozen> {
    let params = model.named_parameters();
    let cut = match how {
        Freeze::Until(layer) => {
            let pos = params.iter().position(|(n, _)| under(n, layer)).ok_or_else(|| {
                let tops: Vec<String> = model.children().into_iter().map(|(n, _)| n).collect();
                Error::invalid(
                    "--freeze",
                    format!("no layer '{layer}' with parameters in this model (top-level modules: {})", tops.join(", ")),
                )
            })?;
            Some(pos)
        }
        _ => None,
    };
    let mut out = Frozen::default();
    for (i, (name, p)) in params.iter().enumerate() {
        let freeze = !under(name, head)
            && match how {
                Freeze::None => false,
                Freeze::Backbone => true,
                Freeze::Until(_) => cut.is_some_and(|c| i < c),
            };
        p.set_requires_grad(!freeze)?;
        if freeze {
            out.frozen.push(name.clone())
        } else {
            out.trainable.push(name.clone())
        }
    }
    collect_frozen_norms(model, "", &mut out.eval_modules);
    Ok(out)
}

fn collect_frozen_norms(m: &dyn Module, path: &str, out: &mut Vec<String>) {
    let own = m.own_parameters();
    if !m.own_buffers().is_empty() && !own.is_empty() && own.iter().all(|(_, p)| !p.requires_grad()) {
        out.push(path.to_string());
    }
    for (n, c) in m.children() {
        let p = if path.is_empty() { n } else { format!("{path}.{n}") };
        collect_frozen_norms(c, &p, out);
    }
}

/// Two parameter groups of the trainable parameters: the head at `lr`, the rest of the
/// network at `backbone_lr`, both with `weight_decay` (empty groups are left out).
pub fn param_groups(model: &dyn Module, head: &str, lr: f64, backbone_lr: f64, weight_decay: f64) -> Vec<ParamGroup> {
    let (mut h, mut b) = (Vec::new(), Vec::new());
    for (n, p) in model.named_parameters() {
        if p.requires_grad() {
            if under(&n, head) {
                h.push(p)
            } else {
                b.push(p)
            }
        }
    }
    let mut groups = Vec::new();
    if !b.is_empty() {
        groups.push(ParamGroup::new(b, backbone_lr, weight_decay));
    }
    if !h.is_empty() {
        groups.push(ParamGroup::new(h, lr, weight_decay));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_parses() {
        assert_eq!("backbone".parse::<Freeze>().unwrap(), Freeze::Backbone);
        assert_eq!("until:layer3".parse::<Freeze>().unwrap(), Freeze::Until("layer3".into()));
        assert!("until:".parse::<Freeze>().is_err());
        assert!("all".parse::<Freeze>().is_err());
    }

    #[test]
    fn until_freezes_what_comes_before() {
        let m = cnnkit_models::build("resnet18", 3, 32, 32, 4).unwrap();
        let f = freeze(m.as_ref(), "fc", &Freeze::Until("layer3".into())).unwrap();
        assert!(f
            .frozen
            .iter()
            .all(|n| n.starts_with("conv1") || n.starts_with("bn1") || n.starts_with("layer1") || n.starts_with("layer2")));
        assert!(f.trainable.iter().any(|n| n.starts_with("layer3")) && f.trainable.contains(&"fc.weight".to_string()));
        assert!(f.eval_modules.contains(&"bn1".to_string()) && f.eval_modules.contains(&"layer2.1.bn2".to_string()));
        assert!(!f.eval_modules.iter().any(|n| n.starts_with("layer3")));
        assert!(freeze(m.as_ref(), "fc", &Freeze::Until("layer9".into())).is_err());
    }

    #[test]
    fn pretrained_loads_except_the_head_and_adapts_grey_stems() {
        let src = cnnkit_models::build("resnet18", 3, 32, 32, 1000).unwrap();
        let dst = cnnkit_models::build("resnet18", 1, 32, 32, 6).unwrap();
        let report = load_pretrained(dst.as_ref(), src.state_dict(), "fc").unwrap();
        assert_eq!(report.missing_keys, vec!["fc.bias".to_string(), "fc.weight".to_string()]);
        let w = dst.state_dict()["layer4.1.conv2.weight"].to_f32_vec().unwrap();
        assert_eq!(w, src.state_dict()["layer4.1.conv2.weight"].to_f32_vec().unwrap());
        let stem = dst.state_dict()["conv1.weight"].to_f32_vec().unwrap();
        let s = src.state_dict()["conv1.weight"].to_f32_vec().unwrap();
        assert!((stem[0] - (s[0] + s[49] + s[98])).abs() < 1e-6);
        // A wrong architecture is refused with PyTorch's strict message.
        let other = cnnkit_models::build("resnet34", 3, 32, 32, 6).unwrap();
        let e = load_pretrained(other.as_ref(), src.state_dict(), "fc").unwrap_err().to_string();
        assert!(e.contains("Missing key(s)") && e.contains("layer1.2.bn1.bias"), "{e}");
    }
}
