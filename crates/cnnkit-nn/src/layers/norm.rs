//! Normalisation layers: BatchNorm1d/2d, GroupNorm, LayerNorm, InstanceNorm2d.
//! Defaults are PyTorch's: eps 1e-5, momentum 0.1, affine true (InstanceNorm: false),
//! running variance stored unbiased.

use crate::graph::{GraphBuilder, GraphOp};
use crate::module::Module;
use cnnkit_core::{DType, Epilogue, Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Batch normalisation over (N, C, *), per channel C (Ioffe & Szegedy 2015).
/// BatchNorm1d takes (N, C) or (N, C, L); BatchNorm2d takes (N, C, H, W).
/// weight, bias, running_mean, running_var: (C); num_batches_tracked: () int64.
pub struct BatchNorm {
    pub num_features: usize,
    pub eps: f64,
    /// None = cumulative moving average (PyTorch's momentum=None).
    pub momentum: Option<f64>,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Option<Tensor>,
    pub running_var: Option<Tensor>,
    pub num_batches_tracked: Option<Tensor>,
    /// Allowed input ranks (2 and 3 for 1d, 4 for 2d).
    ranks: &'static [usize],
    name: &'static str,
    training: AtomicBool,
}

/// Options shared by the BatchNorm constructors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub eps: f64,
    pub momentum: Option<f64>,
    pub affine: bool,
    pub track_running_stats: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig { eps: 1e-5, momentum: Some(0.1), affine: true, track_running_stats: true }
    }
}

impl BatchNorm {
    fn build(c: usize, cfg: BatchNormConfig, ranks: &'static [usize], name: &'static str) -> Result<Self> {
        let param = |v: f64| -> Result<Option<Tensor>> {
            if !cfg.affine {
                return Ok(None);
            }
            let t = Tensor::full(&[c], v, DType::F32);
            t.set_requires_grad(true)?;
            Ok(Some(t))
        };
        let track = cfg.track_running_stats;
        Ok(BatchNorm {
            num_features: c,
            eps: cfg.eps,
            momentum: cfg.momentum,
            weight: param(1.0)?,
            bias: param(0.0)?,
            running_mean: track.then(|| Tensor::zeros(&[c], DType::F32)),
            running_var: track.then(|| Tensor::ones(&[c], DType::F32)),
            num_batches_tracked: track.then(|| Tensor::zeros(&[], DType::I64)),
            ranks,
            name,
            training: AtomicBool::new(true),
        })
    }
    /// `nn.BatchNorm1d(C)`: input (N, C) or (N, C, L).
    pub fn new_1d(num_features: usize) -> Result<Self> {
        Self::build(num_features, BatchNormConfig::default(), &[2, 3], "BatchNorm1d")
    }
    /// `nn.BatchNorm2d(C)`: input (N, C, H, W).
    pub fn new_2d(num_features: usize) -> Result<Self> {
        Self::build(num_features, BatchNormConfig::default(), &[4], "BatchNorm2d")
    }
    pub fn new_1d_with(num_features: usize, cfg: BatchNormConfig) -> Result<Self> {
        Self::build(num_features, cfg, &[2, 3], "BatchNorm1d")
    }
    pub fn new_2d_with(num_features: usize, cfg: BatchNormConfig) -> Result<Self> {
        Self::build(num_features, cfg, &[4], "BatchNorm2d")
    }
    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }
}

/// `nn.BatchNorm2d`.
pub type BatchNorm2d = BatchNorm;
/// `nn.BatchNorm1d`.
pub type BatchNorm1d = BatchNorm;

impl BatchNorm {
    /// act(batch_norm(x)) with this layer's statistics, parameters and mode.
    fn run(&self, x: &Tensor, act: Epilogue) -> Result<Tensor> {
        if !self.ranks.contains(&x.ndim()) || x.shape()[1] != self.num_features {
            return Err(Error::bad_shape(
                self.name,
                x.shape(),
                format!("expected {}-d input with {} channels", self.ranks[0], self.num_features),
            ));
        }
        let training = self.is_training();
        let mut momentum = self.momentum.unwrap_or(0.0);
        if training {
            if let Some(n) = &self.num_batches_tracked {
                let count = n.update_data(|d: &mut [i64]| {
                    d[0] += 1;
                    d[0]
                })?;
                if self.momentum.is_none() {
                    momentum = 1.0 / count as f64;
                }
            }
        }
        // Batch statistics in training, or whenever there are no running ones (PyTorch).
        let use_batch = training || self.running_mean.is_none();
        x.batch_norm_act(
            self.running_mean.as_ref(),
            self.running_var.as_ref(),
            self.weight.as_ref(),
            self.bias.as_ref(),
            use_batch,
            momentum,
            self.eps,
            act,
        )
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Epilogue::None)
    }
    /// The activation in the normalising pass ([`Tensor::batch_norm_act`]).
    fn forward_act(&self, x: &Tensor, act: Epilogue) -> Option<Result<Tensor>> {
        Some(self.run(x, act))
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[("weight", self.weight.as_ref()), ("bias", self.bias.as_ref())])
    }
    fn own_buffers(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[
            ("running_mean", self.running_mean.as_ref()),
            ("running_var", self.running_var.as_ref()),
            ("num_batches_tracked", self.num_batches_tracked.as_ref()),
        ])
    }
    fn set_own_training(&self, t: bool) {
        self.training.store(t, Ordering::Relaxed);
    }
    /// BatchNormalization (inference form) with the running statistics.
    fn to_graph(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let (Some(rm), Some(rv)) = (&self.running_mean, &self.running_var) else {
            return Err(Error::invalid(
                "to_graph",
                format!(
                    "{}: without running statistics eval mode uses batch statistics, which ONNX BatchNormalization cannot express",
                    self.describe()
                ),
            ));
        };
        let c = self.num_features;
        let w = match &self.weight {
            Some(w) => g.param("weight", w),
            None => g.constant(Tensor::ones(&[c], rm.dtype())),
        };
        let b = match &self.bias {
            Some(b) => g.param("bias", b),
            None => g.constant(Tensor::zeros(&[c], rm.dtype())),
        };
        let (m, v) = (g.param("running_mean", rm), g.param("running_var", rv));
        g.node(GraphOp::BatchNormalization { epsilon: self.eps }, &[x, &w, &b, &m, &v])
    }
    fn describe(&self) -> String {
        format!(
            "{}({}, eps={}, momentum={:?}, affine={}, track_running_stats={})",
            self.name,
            self.num_features,
            self.eps,
            self.momentum,
            self.weight.is_some(),
            self.running_mean.is_some()
        )
    }
}

/// (x − mean) / √(var + eps) over `dims` (biased variance), the core of every norm here.
fn normalize(x: &Tensor, dims: &[isize], eps: f64) -> Result<Tensor> {
    let mean = x.mean(dims, true)?;
    let xc = x.sub(&mean)?;
    let var = xc.square()?.mean(dims, true)?;
    xc.mul(&var.add_scalar(eps)?.rsqrt()?)
}

/// Per-channel (C) tensor reshaped to broadcast over (N, C, *): (C, 1, …, 1).
fn channel_view(t: &Tensor, ndim: usize) -> Result<Tensor> {
    let mut s = vec![t.numel()];
    s.extend(std::iter::repeat_n(1, ndim.saturating_sub(2)));
    t.reshape(&s)
}

/// Group normalisation (Wu & He 2018). x: (N, C, *); weight, bias: (C).
pub struct GroupNorm {
    pub num_groups: usize,
    pub num_channels: usize,
    pub eps: f64,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

impl GroupNorm {
    pub fn new(num_groups: usize, num_channels: usize) -> Result<Self> {
        Self::with(num_groups, num_channels, 1e-5, true)
    }
    pub fn with(num_groups: usize, num_channels: usize, eps: f64, affine: bool) -> Result<Self> {
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            return Err(Error::invalid("GroupNorm", format!("num_channels={num_channels} must be divisible by num_groups={num_groups}")));
        }
        let p = |v: f64| -> Result<Option<Tensor>> {
            if !affine {
                return Ok(None);
            }
            let t = Tensor::full(&[num_channels], v, DType::F32);
            t.set_requires_grad(true)?;
            Ok(Some(t))
        };
        Ok(GroupNorm { num_groups, num_channels, eps, weight: p(1.0)?, bias: p(0.0)? })
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.ndim() < 2 || x.shape()[1] != self.num_channels {
            return Err(Error::bad_shape("GroupNorm", x.shape(), format!("expected (N, {}, *)", self.num_channels)));
        }
        let n = x.shape()[0];
        let y =
            normalize(&x.reshape(&[n, self.num_groups, x.numel() / (n * self.num_groups).max(1)])?, &[-1], self.eps)?.reshape(x.shape())?;
        affine(y, self.weight.as_ref(), self.bias.as_ref(), x.ndim())
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[("weight", self.weight.as_ref()), ("bias", self.bias.as_ref())])
    }
    fn describe(&self) -> String {
        format!("GroupNorm({}, {}, eps={}, affine={})", self.num_groups, self.num_channels, self.eps, self.weight.is_some())
    }
}

fn affine(y: Tensor, w: Option<&Tensor>, b: Option<&Tensor>, ndim: usize) -> Result<Tensor> {
    let y = match w {
        Some(w) => y.mul(&channel_view(w, ndim)?)?,
        None => y,
    };
    match b {
        Some(b) => y.add(&channel_view(b, ndim)?),
        None => Ok(y),
    }
}

/// Layer normalisation over the trailing `normalized_shape` dims (Ba et al. 2016).
/// weight, bias: normalized_shape.
pub struct LayerNorm {
    pub normalized_shape: Vec<usize>,
    pub eps: f64,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

impl LayerNorm {
    pub fn new(normalized_shape: &[usize]) -> Result<Self> {
        Self::with(normalized_shape, 1e-5, true)
    }
    pub fn with(normalized_shape: &[usize], eps: f64, elementwise_affine: bool) -> Result<Self> {
        let p = |v: f64| -> Result<Option<Tensor>> {
            if !elementwise_affine {
                return Ok(None);
            }
            let t = Tensor::full(normalized_shape, v, DType::F32);
            t.set_requires_grad(true)?;
            Ok(Some(t))
        };
        Ok(LayerNorm { normalized_shape: normalized_shape.to_vec(), eps, weight: p(1.0)?, bias: p(0.0)? })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.normalized_shape.len();
        if x.ndim() < k || x.shape()[x.ndim() - k..] != self.normalized_shape[..] {
            return Err(Error::mismatch("LayerNorm", x.shape(), &self.normalized_shape));
        }
        let dims: Vec<isize> = (1..=k as isize).map(|d| -d).collect();
        let y = normalize(x, &dims, self.eps)?;
        let y = match &self.weight {
            Some(w) => y.mul(w)?,
            None => y,
        };
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[("weight", self.weight.as_ref()), ("bias", self.bias.as_ref())])
    }
    fn describe(&self) -> String {
        format!("LayerNorm({:?}, eps={}, elementwise_affine={})", self.normalized_shape, self.eps, self.weight.is_some())
    }
}

/// Instance normalisation (Ulyanov et al. 2016): each (n, c) plane normalised on its own.
/// x: (N, C, H, W) or (C, H, W). Defaults: affine false, track_running_stats false.
pub struct InstanceNorm2d {
    pub num_features: usize,
    pub eps: f64,
    pub momentum: f64,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Option<Tensor>,
    pub running_var: Option<Tensor>,
    /// Present (as in PyTorch's state_dict) when tracking, but never incremented: PyTorch's
    /// instance norm does not count batches.
    pub num_batches_tracked: Option<Tensor>,
    training: AtomicBool,
}

impl InstanceNorm2d {
    pub fn new(num_features: usize) -> Result<Self> {
        Self::with(num_features, 1e-5, 0.1, false, false)
    }
    pub fn with(num_features: usize, eps: f64, momentum: f64, affine: bool, track_running_stats: bool) -> Result<Self> {
        let p = |v: f64| -> Result<Option<Tensor>> {
            if !affine {
                return Ok(None);
            }
            let t = Tensor::full(&[num_features], v, DType::F32);
            t.set_requires_grad(true)?;
            Ok(Some(t))
        };
        Ok(InstanceNorm2d {
            num_features,
            eps,
            momentum,
            weight: p(1.0)?,
            bias: p(0.0)?,
            running_mean: track_running_stats.then(|| Tensor::zeros(&[num_features], DType::F32)),
            running_var: track_running_stats.then(|| Tensor::ones(&[num_features], DType::F32)),
            num_batches_tracked: track_running_stats.then(|| Tensor::zeros(&[], DType::I64)),
            training: AtomicBool::new(true),
        })
    }
}

impl Module for InstanceNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x4 = if x.ndim() == 3 { x.unsqueeze(0)? } else { x.clone() };
        if x4.ndim() != 4 || x4.shape()[1] != self.num_features {
            return Err(Error::bad_shape("InstanceNorm2d", x.shape(), format!("expected (N, {}, H, W)", self.num_features)));
        }
        let training = self.training.load(Ordering::Relaxed);
        let y = match (&self.running_mean, &self.running_var, training) {
            (Some(rm), Some(rv), false) => x4.batch_norm(Some(rm), Some(rv), None, None, false, 0.0, self.eps)?,
            _ => {
                if let (Some(rm), Some(rv)) = (&self.running_mean, &self.running_var) {
                    // PyTorch averages the per-instance statistics over the batch.
                    let hw = (x4.shape()[2] * x4.shape()[3]) as f64;
                    let d = x4.detach();
                    let m = d.mean(&[2, 3], false)?;
                    let v = d.var(&[2, 3], 0, false)?.mul_scalar(hw / (hw - 1.0).max(1.0))?;
                    let (m, v) = (m.mean(&[0], false)?.to_f64_vec()?, v.mean(&[0], false)?.to_f64_vec()?);
                    let mom = self.momentum;
                    rm.update_data(|r: &mut [f32]| {
                        r.iter_mut().zip(&m).for_each(|(a, &b)| *a = ((1.0 - mom) * *a as f64 + mom * b) as f32)
                    })?;
                    rv.update_data(|r: &mut [f32]| {
                        r.iter_mut().zip(&v).for_each(|(a, &b)| *a = ((1.0 - mom) * *a as f64 + mom * b) as f32)
                    })?;
                }
                normalize(&x4, &[2, 3], self.eps)?
            }
        };
        let y = affine(y, self.weight.as_ref(), self.bias.as_ref(), 4)?;
        if x.ndim() == 3 {
            y.squeeze(0)
        } else {
            Ok(y)
        }
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[("weight", self.weight.as_ref()), ("bias", self.bias.as_ref())])
    }
    fn own_buffers(&self) -> Vec<(String, Tensor)> {
        crate::module::named(&[
            ("running_mean", self.running_mean.as_ref()),
            ("running_var", self.running_var.as_ref()),
            ("num_batches_tracked", self.num_batches_tracked.as_ref()),
        ])
    }
    fn set_own_training(&self, t: bool) {
        self.training.store(t, Ordering::Relaxed);
    }
    fn describe(&self) -> String {
        format!("InstanceNorm2d({}, eps={}, affine={})", self.num_features, self.eps, self.weight.is_some())
    }
}
