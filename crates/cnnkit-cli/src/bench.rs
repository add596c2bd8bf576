//! `cnnkit bench`: medians of repeated runs, printed as text and (with --json) one JSON line.

use clap::{Args, Subcommand};
use cnnkit::core::{set_num_threads, Conv2dArgs, DType, Generator, Result, Tensor};
use cnnkit::kernels::conv::ConvGeom;
use serde_json::json;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// One Conv2d layer, forward (or forward + backward).
    Conv2d(ConvBench),
    /// One training step (zero_grad + forward + cross_entropy + backward + SGD step).
    TrainStep(TrainStepBench),
    /// The data pipeline alone: batches per second of `cnnkit train`'s loader.
    Loader(LoaderBench),
    /// Inference latency of a zoo model or an ONNX file (eval mode, no grad).
    Infer(InferBench),
    /// One training epoch (default: the seed's SimpleCNN on 60,000 MNIST-shaped images, Adam).
    Epoch(EpochBench),
    /// Every workload of the performance table, each in its own process (for peak memory).
    Suite(crate::suite::SuiteArgs),
}

#[derive(Args)]
pub struct InferBench {
    /// An ONNX model instead of a zoo architecture.
    #[arg(long, conflicts_with_all = ["model", "checkpoint"])]
    onnx: Option<std::path::PathBuf>,
    /// Zoo model (torchvision's initialisation unless --weights is given), --weights, --checkpoint.
    #[command(flatten)]
    source: crate::deploy::ModelSource,
    #[arg(long, default_value = "1x3x224x224")]
    input_shape: String,
    /// Also time every graph node (median over --iters more runs): a table by operator and
    /// the slowest nodes on stderr, and a "profile" array in the JSON.
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct LoaderBench {
    #[arg(long, default_value = "shapes")]
    dataset: String,
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Random flips and shifts, as `train --augment`.
    #[arg(long)]
    augment: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct Common {
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ConvBench {
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    in_channels: usize,
    #[arg(long, default_value_t = 64)]
    out_channels: usize,
    /// Input height and width.
    #[arg(long, default_value_t = 56)]
    size: usize,
    #[arg(long, default_value_t = 3)]
    kernel: usize,
    #[arg(long, default_value_t = 1)]
    stride: usize,
    #[arg(long, default_value_t = 1)]
    padding: usize,
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Time forward + backward (input and weight gradients).
    #[arg(long)]
    backward: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct TrainStepBench {
    /// Model: cifar-cnn (the seed's CIFAR SimpleCNN), simple-cnn (its MNIST one), or any zoo
    /// name (resnet18_cifar, mobilenet_v2, …; `cnnkit models`).
    #[arg(long, default_value = "cifar-cnn")]
    model: String,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Input height and width (default: 28 for simple-cnn/lenet5, 32 for cifar-cnn and the
    /// *_cifar ResNets, 224 otherwise).
    #[arg(long)]
    input_size: Option<usize>,
    #[command(flatten)]
    common: Common,
}

/// One training epoch of a model on built-in data (the MNIST-shaped `digits` by default).
#[derive(Args)]
pub struct EpochBench {
    #[arg(long, default_value = "simple-cnn")]
    model: String,
    #[arg(long, default_value = "digits")]
    dataset: String,
    #[arg(long, default_value_t = 60000)]
    train_size: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[command(flatten)]
    common: Common,
}

/// Peak resident memory of this process so far (Linux VmHWM), in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Conv2d(b) => conv2d(b),
        BenchCmd::TrainStep(b) => train_step(b),
        BenchCmd::Infer(b) => infer(b),
        BenchCmd::Epoch(b) => epoch(b),
        BenchCmd::Suite(a) => crate::suite::run(a),
        BenchCmd::Loader(b) => loader(b),
    }
}

fn setup_threads(c: &Common) -> Result<usize> {
    if c.threads == Some(0) {
        return Err(cnnkit::core::Error::invalid("bench", "--threads must be at least 1"));
    }
    set_num_threads(c.threads)?;
    Ok(rayon_threads())
}

fn rayon_threads() -> usize {
    cnnkit::kernels::num_threads()
}

/// Median of `iters` timings (ms) after `warm` untimed runs.
fn median_ms(warm: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, Vec<f64>)> {
    for _ in 0..warm {
        f()?;
    }
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut s = ts.clone();
    s.sort_by(|a, b| a.total_cmp(b));
    Ok((s[s.len() / 2], ts))
}

fn conv2d(b: ConvBench) -> Result<()> {
    let threads = setup_threads(&b.common)?;
    let mut g = Generator::new(0);
    let x = Tensor::randn_with(&[b.batch, b.in_channels, b.size, b.size], DType::F32, &mut g);
    let w = Tensor::randn_with(&[b.out_channels, b.in_channels / b.groups.max(1), b.kernel, b.kernel], DType::F32, &mut g);
    let args = Conv2dArgs { stride: (b.stride, b.stride), padding: (b.padding, b.padding), dilation: (1, 1), groups: b.groups };
    let geom = ConvGeom {
        n: b.batch,
        c_in: b.in_channels,
        h: b.size,
        w: b.size,
        c_out: b.out_channels,
        kh: b.kernel,
        kw: b.kernel,
        stride: args.stride,
        padding: args.padding,
        dilation: (1, 1),
        groups: b.groups,
    };
    let flops = geom.flops() * if b.backward { 3.0 } else { 1.0 };
    let (med, _) = if b.backward {
        let xg = x.detach().requires_grad_()?;
        let wg = w.detach().requires_grad_()?;
        median_ms(2, b.common.iters, || {
            xg.zero_grad();
            wg.zero_grad();
            let y = xg.conv2d(&wg, None, args)?;
            y.backward_with(&y.ones_like())
        })?
    } else {
        median_ms(3, b.common.iters, || x.conv2d(&w, None, args).map(|_| ()))?
    };
    let gflops = flops / (med / 1e3) / 1e9;
    eprintln!(
        "conv2d {}x{}x{}x{} -> {} k{} s{} p{} g{} {}: median {:.2} ms, {:.1} GFLOP/s ({} threads)",
        b.batch,
        b.in_channels,
        b.size,
        b.size,
        b.out_channels,
        b.kernel,
        b.stride,
        b.padding,
        b.groups,
        if b.backward { "fwd+bwd" } else { "fwd" },
        med,
        gflops,
        threads
    );
    if b.common.json {
        println!(
            "{}",
            json!({"bench": "conv2d", "backward": b.backward, "batch": b.batch, "in_channels": b.in_channels, "out_channels": b.out_channels, "size": b.size, "kernel": b.kernel, "stride": b.stride, "padding": b.padding, "groups": b.groups, "threads": threads, "iters": b.common.iters, "median_ms": med, "gflops": gflops})
        );
    }
    Ok(())
}

fn train_step(b: TrainStepBench) -> Result<()> {
    use cnnkit::nn::loss::{cross_entropy, CrossEntropyOptions};
    use cnnkit::nn::{Module, ModuleExt};
    let threads = setup_threads(&b.common)?;
    cnnkit::core::manual_seed(0);
    let name = cnnkit::models::canonical_name(&b.model)?;
    let (c, default_side) = match name.as_str() {
        "simple-cnn" | "lenet5" => (1, 28),
        n if n == "cifar-cnn" || n.ends_with("_cifar") => (3, 32),
        _ => (3, 224),
    };
    let side = b.input_size.unwrap_or(default_side);
    let model = cnnkit::models::build(&name, c, side, side, 10)?;
    let shape = [c, side, side];
    let mut g = Generator::new(1);
    let x = Tensor::randn_with(&[b.batch_size, shape[0], shape[1], shape[2]], DType::F32, &mut g);
    let y = Tensor::from_vec((0..b.batch_size as i64).map(|i| i % 10).collect::<Vec<_>>(), &[b.batch_size])?;
    let mut opt = cnnkit::optim::Sgd::new(model.parameters(), cnnkit::optim::SgdConfig { lr: 0.01, momentum: 0.9, ..Default::default() })?;
    let opts = CrossEntropyOptions::default();
    // As the trainer: dead activations and gradients are reused by the next step.
    let _recycle = cnnkit::core::recycle_buffers();
    let (med, _) = median_ms(2, b.common.iters, || {
        use cnnkit::optim::Optimizer;
        // As the trainer runs a step: on a kernel-pool worker.
        cnnkit::core::on_worker(|| {
            opt.zero_grad();
            let loss = cross_entropy(&model.forward(&x)?, &y, &opts)?;
            loss.backward()?;
            opt.step()
        })
    })?;
    eprintln!(
        "train-step {} batch {}: median {:.2} ms/step, {:.0} images/s ({} threads)",
        b.model,
        b.batch_size,
        med,
        b.batch_size as f64 / (med / 1e3),
        threads
    );
    if b.common.json {
        println!(
            "{}",
            json!({"bench": "train-step", "model": b.model, "batch_size": b.batch_size, "input_size": side, "threads": threads, "iters": b.common.iters, "median_ms": med, "images_per_second": b.batch_size as f64 / (med / 1e3), "peak_rss_mb": peak_rss_mb()})
        );
    }
    Ok(())
}

fn loader(b: LoaderBench) -> Result<()> {
    use cnnkit::data::Dataset;
    use cnnkit::train::BatchSource;
    let threads = setup_threads(&b.common)?;
    let (train, _) = cnnkit::data::load(&b.dataset, b.data.as_deref(), 0, 20000, 1)?;
    let src = cnnkit::data::Batches {
        set: &train,
        batch_size: b.batch_size.max(1),
        shuffle: true,
        augment: b.augment,
        seed: 0,
        workers: b.workers,
        drop_last: false,
    };
    let mut epoch = 0;
    let (med, _) = median_ms(1, b.common.iters.clamp(1, 5), || {
        epoch += 1;
        for batch in src.batches(epoch) {
            batch?;
        }
        Ok(())
    })?;
    let ips = train.len() as f64 / (med / 1e3);
    eprintln!("loader {} batch {} workers {}: {:.0} ms/epoch, {:.0} images/s", b.dataset, b.batch_size, b.workers, med, ips);
    if b.common.json {
        println!(
            "{}",
            json!({"bench": "loader", "dataset": b.dataset, "batch_size": b.batch_size, "workers": b.workers, "augment": b.augment, "threads": threads, "median_ms": med, "images_per_second": ips})
        );
    }
    Ok(())
}

fn infer(b: InferBench) -> Result<()> {
    let threads = setup_threads(&b.common)?;
    cnnkit::core::manual_seed(0);
    let shape = crate::deploy::parse_shape(&b.input_shape)?;
    let (med, label, nodes) = crate::deploy::bench_infer(b.onnx.as_deref(), &b.source, &shape, b.common.iters.max(1), b.profile)?;
    let ips = shape[0] as f64 / (med / 1e3);
    eprintln!("infer {label} {}: median {med:.2} ms, {ips:.1} images/s ({threads} threads)", b.input_shape);
    match (&nodes, b.profile) {
        (Some(nodes), _) => print_profile(nodes),
        (None, true) => eprintln!("(no per-node profile: this model runs as a module, not a graph)"),
        _ => {}
    }
    if b.common.json {
        let mut out = json!({"bench": "infer", "model": label, "input_shape": shape, "threads": threads, "iters": b.common.iters, "median_ms": med, "images_per_second": ips, "peak_rss_mb": peak_rss_mb()});
        if let Some(nodes) = &nodes {
            out["profile"] =
                nodes.iter().map(|n| json!({"name": n.name, "op": n.op, "detail": n.detail, "fused": n.fused, "ms": n.ms})).collect();
        }
        println!("{out}");
    }
    Ok(())
}

/// The per-node profile on stderr: time by operator class (convolutions split into
/// depthwise, 1×1 and the rest), then the ten slowest nodes.
fn print_profile(nodes: &[cnnkit::nn::graph::NodeTime]) {
    let total: f64 = nodes.iter().map(|n| n.ms).sum();
    let class = |n: &cnnkit::nn::graph::NodeTime| -> String {
        if n.op != "Conv" {
            return n.op.to_string();
        }
        // detail: "C_in→C_out KH×KW sS gG"; depthwise when G = C_in > 1.
        let c_in = n.detail.split('→').next();
        let groups = n.detail.split(' ').next_back().and_then(|g| g.strip_prefix('g'));
        if groups.is_some_and(|g| g != "1") && groups == c_in {
            "Conv (depthwise)".into()
        } else if n.detail.contains(" 1×1 ") {
            "Conv (1×1)".into()
        } else {
            "Conv (other)".into()
        }
    };
    let mut by: Vec<(String, f64, usize)> = Vec::new();
    for n in nodes {
        let c = class(n);
        match by.iter_mut().find(|(k, _, _)| *k == c) {
            Some(e) => {
                e.1 += n.ms;
                e.2 += 1;
            }
            None => by.push((c, n.ms, 1)),
        }
    }
    by.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("profile: {:.2} ms over {} nodes (sum of per-node medians)", total, nodes.len());
    for (c, ms, k) in &by {
        eprintln!("  {c:<18} {k:>4} nodes {ms:>8.3} ms {:>5.1}%", 100.0 * ms / total.max(1e-12));
    }
    let mut top: Vec<&cnnkit::nn::graph::NodeTime> = nodes.iter().collect();
    top.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    eprintln!("  slowest nodes:");
    for n in top.iter().take(10) {
        let fused = n.fused.map(|f| format!(" +{f}")).unwrap_or_default();
        eprintln!("    {:>8.3} ms  {} {}{fused}  {}", n.ms, n.op, n.detail, n.name);
    }
}

fn epoch(b: EpochBench) -> Result<()> {
    use cnnkit::data::Dataset;
    use cnnkit::nn::loss::{cross_entropy, CrossEntropyOptions};
    use cnnkit::nn::ModuleExt;
    use cnnkit::optim::Optimizer;
    use cnnkit::train::BatchSource;
    let threads = setup_threads(&b.common)?;
    let (train, _) = cnnkit::data::load(&b.dataset, None, 0, b.train_size, 1)?;
    let [c, h, w] = train.chw();
    cnnkit::core::manual_seed(0);
    let model = cnnkit::models::build(&b.model, c, h, w, train.classes.len())?;
    let mut opt = cnnkit::optim::Adam::new(model.parameters(), cnnkit::optim::AdamConfig { lr: b.lr, ..Default::default() })?;
    let src = cnnkit::data::Batches {
        set: &train,
        batch_size: b.batch_size.max(1),
        shuffle: true,
        augment: false,
        seed: 0,
        workers: 1,
        drop_last: false,
    };
    let opts = CrossEntropyOptions::default();
    let mut e = 0;
    model.train(true);
    let _recycle = cnnkit::core::recycle_buffers();
    let (med, _) = median_ms(0, b.common.iters.clamp(1, 3), || {
        e += 1;
        for batch in src.batches(e) {
            let (x, y) = batch?;
            cnnkit::core::on_worker(|| {
                opt.zero_grad();
                cross_entropy(&model.forward(&x)?, &y, &opts)?.backward()?;
                opt.step()
            })?;
        }
        Ok(())
    })?;
    let ips = train.len() as f64 / (med / 1e3);
    eprintln!("epoch {} on {} ({} images, batch {}): {:.2} s, {ips:.0} images/s", b.model, b.dataset, train.len(), b.batch_size, med / 1e3);
    if b.common.json {
        println!(
            "{}",
            json!({"bench": "epoch", "model": b.model, "dataset": b.dataset, "images": train.len(), "batch_size": b.batch_size, "threads": threads, "seconds": med / 1e3, "median_ms": med, "images_per_second": ips})
        );
    }
    Ok(())
}
