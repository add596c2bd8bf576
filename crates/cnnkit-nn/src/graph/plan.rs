//! Inference planning: rewrites a graph into a cheaper one that computes the same outputs in
//! eval mode. Today: every BatchNormalization that directly follows a Conv (whose output
//! nothing else reads) is folded into the Conv's weight and bias, removing a full pass over
//! the activation per conv (tract and ONNX Runtime do the same). Used by `cnnkit infer` and
//! `cnnkit bench infer` for zoo models, checkpoints and imported ONNX graphs alike.

use super::{Graph, GraphOp, Node};
use cnnkit_core::{Result, Tensor};
use std::collections::HashMap;

/// A copy of `g` with Conv → BatchNormalization pairs folded into single Convs.
pub fn optimize_for_inference(g: &Graph) -> Result<Graph> {
    let mut out = g.clone();
    fold_batchnorm(&mut out)?;
    out.validate()?;
    Ok(out)
}

/// w' = w·s, b' = (b − mean)·s + beta with s = scale/√(var + eps), per output channel
/// (computed in f64, stored in the weight's dtype).
/// w: (M, C/group, KH, KW); b, scale, beta, mean, var: (M).
fn fold(w: &Tensor, b: Option<&Tensor>, bn: [&Tensor; 4], eps: f64) -> Result<Option<(Tensor, Tensor)>> {
    let m = w.shape()[0];
    if bn.iter().any(|t| t.shape() != [m]) || b.is_some_and(|b| b.shape() != [m]) {
        return Ok(None);
    }
    let [scale, beta, mean, var] = bn.map(|t| t.to_f64_vec());
    let (scale, beta, mean, var) = (scale?, beta?, mean?, var?);
    let s: Vec<f64> = scale.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
    let per = w.numel() / m.max(1);
    let wv = w.to_f64_vec()?;
    let w2: Vec<f64> = wv.iter().enumerate().map(|(i, v)| v * s[i / per]).collect();
    let b0 = match b {
        Some(b) => b.to_f64_vec()?,
        None => vec![0.0; m],
    };
    let b2: Vec<f64> = (0..m).map(|c| (b0[c] - mean[c]) * s[c] + beta[c]).collect();
    let w2 = Tensor::from_vec(w2, w.shape())?.to_dtype(w.dtype())?;
    let b2 = Tensor::from_vec(b2, &[m])?.to_dtype(w.dtype())?;
    Ok(Some((w2, b2)))
}

fn fold_batchnorm(g: &mut Graph) -> Result<()> {
    // Owned: the loop below rewrites g's nodes.
    let n_readers: HashMap<String, usize> = g.reader_counts().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let producer: HashMap<String, usize> =
        g.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.clone(), i))).collect();
    let mut drop = vec![false; g.nodes.len()];
    for bi in 0..g.nodes.len() {
        let GraphOp::BatchNormalization { epsilon } = g.nodes[bi].op else { continue };
        let bn: &Node = &g.nodes[bi];
        if bn.inputs.len() < 5 || bn.outputs.len() != 1 {
            continue;
        }
        let Some(&ci) = producer.get(&bn.inputs[0]) else { continue };
        let conv = &g.nodes[ci];
        if !matches!(conv.op, GraphOp::Conv { .. }) || drop[ci] || n_readers.get(&bn.inputs[0]) != Some(&1) {
            continue;
        }
        let init = |name: &str| g.initializers.get(name);
        let (Some(w), Some(scale), Some(beta), Some(mean), Some(var)) =
            (init(&conv.inputs[1]), init(&bn.inputs[1]), init(&bn.inputs[2]), init(&bn.inputs[3]), init(&bn.inputs[4]))
        else {
            continue;
        };
        let b = match conv.inputs.get(2).filter(|b| !b.is_empty()) {
            Some(name) => match init(name) {
                Some(t) => Some(t),
                None => continue,
            },
            None => None,
        };
        let Some((w2, b2)) = fold(w, b, [scale, beta, mean, var], epsilon)? else { continue };
        // New names: the original initializers may be shared with other nodes.
        let (wn, bname) = (format!("{}.folded_weight", conv.name), format!("{}.folded_bias", conv.name));
        let out = bn.outputs[0].clone();
        g.initializers.insert(wn.clone(), w2);
        g.initializers.insert(bname.clone(), b2);
        let conv = &mut g.nodes[ci];
        conv.inputs = vec![conv.inputs[0].clone(), wn, bname];
        conv.outputs = vec![out];
        drop[bi] = true;
    }
    let mut i = 0;
    g.nodes.retain(|_| {
        i += 1;
        !drop[i - 1]
    });
    // Initializers nothing reads any more (the unfolded weights and BN statistics).
    let used: std::collections::HashSet<String> =
        g.nodes.iter().flat_map(|n| n.inputs.iter().cloned()).chain(g.outputs.iter().cloned()).collect();
    g.initializers.retain(|k, _| used.contains(k));
    Ok(())
}
