//! `cnnkit bench suite`: every workload of the performance table (issue 5), each run as its own
//! `cnnkit bench …` process so peak memory is per workload, then one table (and with --json
//! one JSON object). `bench/suite.sh` adds PyTorch's and ONNX Runtime's figures and ratios.

use clap::Args;
use cnnkit::core::{Error, Result};
use serde_json::{json, Value};
use std::process::Command;

#[derive(Args)]
pub struct SuiteArgs {
    /// Threads for every workload.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Fewer iterations (a smoke run; figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// (key, description, unit, args, JSON field of the result).
type Workload = (&'static str, &'static str, &'static str, Vec<&'static str>, &'static str);

fn workloads(quick: bool) -> Vec<Workload> {
    let it = |full: &'static str, q: &'static str| if quick { q } else { full };
    vec![
        ("conv_fwd", "Conv2d 64→64 3×3, 8×64×56×56, forward", "GFLOP/s", vec!["conv2d", "--iters", it("10", "2")], "gflops"),
        ("conv_fwd_bwd", "same, forward + backward", "GFLOP/s", vec!["conv2d", "--backward", "--iters", it("5", "1")], "gflops"),
        (
            "cifar_step",
            "cifar-cnn training step, batch 64",
            "ms/step",
            vec!["train-step", "--model", "cifar-cnn", "--batch-size", "64", "--iters", it("20", "2")],
            "median_ms",
        ),
        (
            "mnist_epoch",
            "simple-cnn MNIST-shaped epoch, batch 64, Adam",
            "s/epoch",
            vec!["epoch", "--model", "simple-cnn", "--train-size", it("60000", "2000"), "--iters", it("3", "1")],
            "seconds",
        ),
        (
            "resnet18_cifar_step",
            "resnet18 CIFAR stem, 32×32, batch 32, SGD step",
            "ms/step",
            vec!["train-step", "--model", "resnet18_cifar", "--batch-size", "32", "--iters", it("5", "1")],
            "median_ms",
        ),
        (
            "mobilenet_v2_step",
            "mobilenet_v2 96×96, batch 16, SGD step",
            "ms/step",
            vec!["train-step", "--model", "mobilenet_v2", "--input-size", "96", "--batch-size", "16", "--iters", it("5", "1")],
            "median_ms",
        ),
        (
            "resnet18_infer_b1",
            "resnet18 224×224, batch 1, inference",
            "ms",
            vec!["infer", "--model", "resnet18", "--input-shape", "1x3x224x224", "--iters", it("10", "2")],
            "median_ms",
        ),
        (
            "mobilenet_v2_infer_b1",
            "mobilenet_v2 224×224, batch 1, inference",
            "ms",
            vec!["infer", "--model", "mobilenet_v2", "--input-shape", "1x3x224x224", "--iters", it("10", "2")],
            "median_ms",
        ),
        (
            "resnet18_infer_b8",
            "resnet18 224×224, batch 8, inference",
            "images/s",
            vec!["infer", "--model", "resnet18", "--input-shape", "8x3x224x224", "--iters", it("5", "1")],
            "images_per_second",
        ),
    ]
}

fn run_one(args: &[&str], threads: usize) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let t = threads.to_string();
    let out = Command::new(exe).arg("bench").args(args).args(["--threads", &t, "--json"]).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::invalid("bench suite", format!("`cnnkit bench {}` failed: {}", args.join(" "), err.trim())));
    }
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| Error::invalid("bench suite", format!("`cnnkit bench {}` printed no JSON: {e}", args.join(" "))))
}

pub fn run(a: SuiteArgs) -> Result<()> {
    let mut results = serde_json::Map::new();
    eprintln!("| workload | unit | cnnkit |\n|---|---|---|");
    for (key, what, unit, args, field) in workloads(a.quick) {
        let r = run_one(&args, a.threads)?;
        let v = r[field].as_f64().unwrap_or(f64::NAN);
        eprintln!("| {what} | {unit} | {v:.2} |");
        results.insert(key.into(), json!({"value": v, "unit": unit, "workload": what, "peak_rss_mb": r["peak_rss_mb"]}));
    }
    if let Some(rss) = results.get("resnet18_cifar_step").and_then(|r| r["peak_rss_mb"].as_f64()) {
        eprintln!("| resnet18 CIFAR training, batch 32 | peak RSS MiB | {rss:.0} |");
    }
    if a.json {
        println!("{}", json!({"bench": "suite", "threads": a.threads, "quick": a.quick, "results": results}));
    }
    Ok(())
}
