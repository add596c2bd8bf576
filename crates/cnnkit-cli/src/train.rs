//! `cnnkit train`, `cnnkit eval`, `cnnkit predict`: the seed's image-classification workflow.

use clap::Args;
use cnnkit::core::{manual_seed, set_num_threads, Error, Result, Tensor};
use cnnkit::data::{self, Batches, Dataset, ImageSet};
use cnnkit::nn::{Module, ModuleExt};
use cnnkit::optim::sched::{CosineAnnealingLr, LrScheduler, OneCycleConfig, OneCycleLr, StepLr};
use cnnkit::optim::{Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, ParamGroup, RmsProp, RmsPropConfig, Sgd, SgdConfig};
use cnnkit::train::{evaluate, fit, Checkpoint, TrainConfig};
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// simple-cnn (the seed's §1.2 model), cifar-cnn (§3.1), lenet5, or a zoo architecture
    /// (resnet18, resnet18_cifar, mobilenet_v2, shufflenet_v2_x1_0, … see `cnnkit models`).
    #[arg(long, default_value = "simple-cnn")]
    model: String,
    /// shapes (built-in, default), digits (built-in), mnist, fashion-mnist, kmnist, cifar10, cifar100, folder.
    #[arg(long, default_value = "shapes")]
    dataset: String,
    /// Folder with the dataset's files (not needed for built-in datasets).
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate (default 3e-3: the one-conv default model converges in 6 epochs).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// sgd, adam, adamw, rmsprop.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// none, step, cosine, onecycle.
    #[arg(long, default_value = "none")]
    scheduler: String,
    /// Random horizontal flips and ±2-pixel shifts of the training images.
    #[arg(long)]
    augment: bool,
    /// Hold out this fraction of the training images for per-epoch validation.
    #[arg(long)]
    val_split: Option<f64>,
    /// clip_grad_norm_ max norm.
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Stop after this many epochs without a better validation accuracy.
    #[arg(long)]
    early_stopping: Option<usize>,
    #[arg(long)]
    threads: Option<usize>,
    /// Background threads that prepare batches ahead of the training step (0: on the
    /// training thread). The batches are the same for any number.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Drop the last, smaller training batch of each epoch.
    #[arg(long)]
    drop_last: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder for checkpoints, the metrics log and plots (default runs/DATASET-MODEL).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from this checkpoint (same flags as the interrupted run).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Training images for built-in datasets.
    #[arg(long, default_value_t = 20000)]
    train_size: usize,
    /// Test images for built-in datasets.
    #[arg(long, default_value_t = 1000)]
    test_size: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn threads(n: Option<usize>) -> Result<()> {
    match n {
        Some(0) => Err(Error::invalid("--threads", "must be at least 1")),
        n => set_num_threads(n),
    }
}

/// The optimizer `--optimizer` names, over parameter groups (one group for plain training;
/// head and backbone for fine-tuning).
fn make_optimizer(a: &TrainArgs, params: Vec<ParamGroup>) -> Result<Box<dyn Optimizer>> {
    Ok(match a.optimizer.as_str() {
        "sgd" => Box::new(Sgd::with_groups(
            params,
            SgdConfig { lr: a.lr, momentum: a.momentum, weight_decay: a.weight_decay, ..Default::default() },
        )?),
        "adam" => Box::new(Adam::with_groups(params, AdamConfig { lr: a.lr, weight_decay: a.weight_decay, ..Default::default() })?),
        "adamw" => Box::new(AdamW::with_groups(
            params,
            AdamWConfig { lr: a.lr, weight_decay: if a.weight_decay > 0.0 { a.weight_decay } else { 1e-2 }, ..Default::default() },
        )?),
        "rmsprop" => Box::new(RmsProp::with_groups(
            params,
            RmsPropConfig {
                lr: a.lr,
                momentum: if a.optimizer == "rmsprop" { 0.0 } else { a.momentum },
                weight_decay: a.weight_decay,
                ..Default::default()
            },
        )?),
        other => return Err(Error::invalid("--optimizer", format!("unknown optimizer '{other}' (sgd, adam, adamw, rmsprop)"))),
    })
}

fn make_scheduler(a: &TrainArgs, opt: &mut dyn Optimizer, steps_per_epoch: usize) -> Result<(Option<Box<dyn LrScheduler>>, bool)> {
    Ok(match a.scheduler.as_str() {
        "none" => (None, false),
        "step" => (Some(Box::new(StepLr::new(opt, (a.epochs / 3).max(1), 0.1)?)), false),
        "cosine" => (Some(Box::new(CosineAnnealingLr::new(opt, a.epochs.max(1), 0.0)?)), false),
        "onecycle" => (Some(Box::new(OneCycleLr::new(opt, OneCycleConfig::new(a.lr * 10.0, (steps_per_epoch * a.epochs).max(2)))?)), true),
        other => return Err(Error::invalid("--scheduler", format!("unknown scheduler '{other}' (none, step, cosine, onecycle)"))),
    })
}

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Pretrained weights: a PyTorch state_dict (.pth/.pt) or safetensors file.
    #[arg(long)]
    weights: PathBuf,
    /// Classes of the new head (must match the dataset; defaults to the dataset's).
    #[arg(long)]
    num_classes: Option<usize>,
    /// backbone (train only the new head), none (train everything), or until:LAYER (freeze
    /// everything registered before LAYER, e.g. until:layer4). Frozen BatchNorm layers keep
    /// their running statistics.
    #[arg(long, default_value = "backbone")]
    freeze: String,
    /// Learning rate of the unfrozen backbone layers (default: --lr / 10).
    #[arg(long)]
    backbone_lr: Option<f64>,
}

pub fn train(a: TrainArgs) -> Result<()> {
    run(&a, None)
}

/// `cnnkit finetune`: train's workflow starting from pretrained weights with a new head.
pub fn finetune(f: FinetuneArgs) -> Result<()> {
    run(&f.train, Some(&f))
}

/// Loads pretrained weights into `model`, replaces its head, freezes as asked. Returns the
/// optimizer's parameter groups, the modules to keep in eval mode, and a JSON summary.
fn prepare_finetune(
    a: &TrainArgs,
    f: &FinetuneArgs,
    model: &dyn Module,
    classes: usize,
) -> Result<(Vec<ParamGroup>, Vec<String>, serde_json::Value)> {
    if let Some(n) = f.num_classes.filter(|&n| n != classes) {
        return Err(Error::invalid("--num-classes", format!("{n} given but the dataset {} has {classes} classes", a.dataset)));
    }
    let head = cnnkit::models::head_name(&a.model)?;
    let path = f.weights.display().to_string();
    // Freezing first checks --freeze before the (slower) weight loading; loading copies values
    // and keeps requires_grad, so what was frozen stays frozen.
    let how: cnnkit::transfer::Freeze = f.freeze.parse()?;
    let frozen = cnnkit::transfer::freeze(model, head, &how)?;
    let sd = cnnkit::io::load_state_dict_file(&f.weights)?;
    cnnkit::transfer::load_pretrained(model, sd, head).map_err(|e| Error::File { path: path.clone(), msg: e.to_string() })?;
    eprintln!(
        "fine-tuning {} from {path}: new head '{head}' ({classes} classes), {} parameter tensors frozen, {} trained, {} BatchNorm layers keep their statistics",
        a.model,
        frozen.frozen.len(),
        frozen.trainable.len(),
        frozen.eval_modules.len()
    );
    let groups = cnnkit::transfer::param_groups(model, head, a.lr, f.backbone_lr.unwrap_or(a.lr / 10.0), a.weight_decay);
    let info = json!({"weights": path, "head": head, "freeze": f.freeze, "frozen_tensors": frozen.frozen.len(), "trained_tensors": frozen.trainable.len()});
    Ok((groups, frozen.eval_modules, info))
}

fn run(a: &TrainArgs, ft: Option<&FinetuneArgs>) -> Result<()> {
    threads(a.threads)?;
    if a.batch_size == 0 || a.epochs == 0 {
        return Err(Error::invalid("train", "--epochs and --batch-size must be at least 1"));
    }
    let (train_set, test_set) = data::load(&a.dataset, a.data.as_deref(), a.seed, a.train_size, a.test_size)?;
    let (train_set, val_set) = match a.val_split {
        Some(f) => {
            let (t, v) = train_set.split(f, a.seed)?;
            (t, Some(v))
        }
        None => (train_set, None),
    };
    let [c, h, w] = train_set.chw();
    let classes = train_set.classes.clone();
    manual_seed(a.seed);
    let model = cnnkit::models::build(&a.model, c, h, w, classes.len())?;
    let (groups, eval_modules, finetune_info) = match ft {
        Some(f) => prepare_finetune(a, f, model.as_ref(), classes.len())?,
        None => (vec![ParamGroup::new(model.parameters(), a.lr, a.weight_decay)], Vec::new(), serde_json::Value::Null),
    };
    let mut opt = make_optimizer(a, groups)?;
    let train_src = Batches {
        set: &train_set,
        batch_size: a.batch_size,
        shuffle: true,
        augment: a.augment,
        seed: a.seed,
        workers: a.workers,
        drop_last: a.drop_last,
    };
    let eval_set: &ImageSet = val_set.as_ref().unwrap_or(&test_set);
    let eval_src = Batches { set: eval_set, batch_size: 256, shuffle: false, augment: false, seed: 0, workers: 0, drop_last: false };
    let (mut sched, per_batch) = make_scheduler(a, opt.as_mut(), train_src.num_batches_pub())?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", a.dataset, a.model)));
    let resume = a.resume.as_ref().map(|p| Checkpoint::load(p)).transpose()?;
    let cfg = TrainConfig {
        epochs: a.epochs,
        grad_clip: a.grad_clip,
        early_stopping: a.early_stopping,
        scheduler_per_batch: per_batch,
        out_dir: out.clone(),
        class_names: classes.clone(),
        model_config: json!({"model": a.model, "dataset": a.dataset, "in_channels": c, "height": h, "width": w, "num_classes": classes.len(), "class_names": classes, "seed": a.seed}),
        show_progress: std::io::stderr().is_terminal() || std::env::var_os("CNNKIT_PROGRESS").is_some(),
        eval_modules,
    };
    let sched_ref: Option<&mut dyn LrScheduler> = match sched.as_mut() {
        Some(s) => Some(s.as_mut()),
        None => None,
    };
    let report = fit(model.as_ref(), opt.as_mut(), sched_ref, &train_src, &eval_src, &cfg, resume)?;
    // Final figures are on the test set (the validation split only steers training).
    let test = evaluate(
        model.as_ref(),
        &Batches { set: &test_set, batch_size: 256, shuffle: false, augment: false, seed: 0, workers: 0, drop_last: false },
        classes.len(),
    )?;
    eprintln!(
        "{} on {}: test accuracy {:.2}% (loss {:.4}) after {} epochs, {:.0} images/s\ncheckpoint {}\nbest       {}\nlog        {}\nplots      {} {}",
        a.model,
        a.dataset,
        100.0 * test.accuracy(),
        test.mean_loss(),
        report.epochs_run,
        report.images_per_second,
        report.last_checkpoint.display(),
        report.best_checkpoint.display(),
        report.log.display(),
        report.curves_png.display(),
        report.confusion_png.display()
    );
    if a.json {
        println!(
            "{}",
            json!({
                "model": a.model, "dataset": a.dataset, "epochs": report.epochs_run,
                "train_images": train_set.len(), "test_images": test_set.len(),
                "test_accuracy": test.accuracy(), "test_loss": test.mean_loss(), "top5_accuracy": test.top5_accuracy(),
                "epoch_seconds": report.epoch_seconds, "images_per_second": report.images_per_second,
                "checkpoint": report.last_checkpoint, "best_checkpoint": report.best_checkpoint,
                "log": report.log, "curves": report.curves_png, "confusion_matrix": report.confusion_png,
                "stopped_early": report.stopped_early, "finetune": finetune_info,
            })
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Defaults to the dataset the checkpoint was trained on.
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value_t = 1000)]
    test_size: usize,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// Rebuilds the model a checkpoint describes and loads its weights. Returns (model, config).
pub(crate) fn restore(path: &std::path::Path) -> Result<(Box<dyn Module>, serde_json::Value)> {
    let ck = Checkpoint::load(path)?;
    let c = &ck.config;
    let get = |k: &str| {
        c[k].as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::File { path: path.display().to_string(), msg: format!("checkpoint config lacks '{k}'") })
    };
    let name = c["model"]
        .as_str()
        .ok_or_else(|| Error::File { path: path.display().to_string(), msg: "checkpoint config lacks 'model'".into() })?;
    let model = cnnkit::models::build(name, get("in_channels")?, get("height")?, get("width")?, get("num_classes")?)?;
    model.load_state_dict(&ck.model, true).map_err(|e| Error::File { path: path.display().to_string(), msg: e.to_string() })?;
    model.eval();
    Ok((model, ck.config))
}

pub fn eval(a: EvalArgs) -> Result<()> {
    threads(a.threads)?;
    let (model, cfg) = restore(&a.checkpoint)?;
    let dataset = a.dataset.clone().or_else(|| cfg["dataset"].as_str().map(String::from)).unwrap_or_else(|| "shapes".into());
    let seed = cfg["seed"].as_u64().unwrap_or(0);
    let (_, test_set) = data::load(&dataset, a.data.as_deref(), seed, 1, a.test_size)?;
    let m = evaluate(
        model.as_ref(),
        &Batches { set: &test_set, batch_size: 256, shuffle: false, augment: false, seed: 0, workers: 0, drop_last: false },
        test_set.classes.len(),
    )?;
    eprintln!(
        "{dataset}: test accuracy {:.2}%, top-5 {:.2}%, loss {:.4} on {} images",
        100.0 * m.accuracy(),
        100.0 * m.top5_accuracy(),
        m.mean_loss(),
        test_set.len()
    );
    for (name, acc) in test_set.classes.iter().zip(m.per_class_accuracy()) {
        eprintln!("  {name:<12} {:.2}%", 100.0 * acc);
    }
    if a.json {
        let per_class: serde_json::Map<String, serde_json::Value> =
            test_set.classes.iter().cloned().zip(m.per_class_accuracy().into_iter().map(|v| json!(v))).collect();
        println!(
            "{}",
            json!({"dataset": dataset, "test_images": test_set.len(), "test_accuracy": m.accuracy(), "test_loss": m.mean_loss(), "top5_accuracy": m.top5_accuracy(), "per_class_accuracy": per_class})
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Image files (PNG, JPEG, BMP, WebP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long, default_value_t = 3)]
    topk: usize,
    #[arg(long)]
    json: bool,
}

pub fn predict(a: PredictArgs) -> Result<()> {
    let (model, cfg) = restore(&a.checkpoint)?;
    let dims = |k: &str| cfg[k].as_u64().unwrap_or(0) as usize;
    let (c, h, w) = (dims("in_channels"), dims("height"), dims("width"));
    let names: Vec<String> =
        cfg["class_names"].as_array().map(|v| v.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default();
    let imgs: Vec<Tensor> = a.images.iter().map(|p| cnnkit::data::formats::decode_image(p, c, h, w)).collect::<Result<_>>()?;
    let batch = Tensor::stack(&imgs, 0)?;
    let probs = cnnkit::core::with_no_grad(|| model.forward(&batch)?.softmax(1))?;
    let k = a.topk.clamp(1, names.len().max(1));
    let p = probs.to_vec::<f32>()?;
    let ncls = probs.shape()[1];
    let mut results = Vec::new();
    for (i, path) in a.images.iter().enumerate() {
        let row = &p[i * ncls..(i + 1) * ncls];
        let mut order: Vec<usize> = (0..ncls).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        let top: Vec<serde_json::Value> = order[..k]
            .iter()
            .map(|&j| json!({"class": names.get(j).cloned().unwrap_or_else(|| j.to_string()), "index": j, "probability": row[j]}))
            .collect();
        eprintln!(
            "{}: {}",
            path.display(),
            order[..k]
                .iter()
                .map(|&j| format!("{} {:.1}%", names.get(j).map(String::as_str).unwrap_or("?"), 100.0 * row[j]))
                .collect::<Vec<_>>()
                .join(", ")
        );
        results.push(json!({"image": path, "top": top}));
    }
    if a.json {
        println!("{}", json!({"predictions": results}));
    }
    Ok(())
}
