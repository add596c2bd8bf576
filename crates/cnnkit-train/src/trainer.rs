//! The training loop (PyTorch Lightning's `fit`, Keras' `fit`): epochs of
//! zero_grad → forward → cross_entropy → backward → clip → step, evaluation after each epoch,
//! LR scheduling, early stopping, a checkpoint each epoch plus the best one, exact resume,
//! a progress bar on stderr, a JSON-lines metrics log and PNG plots.

use crate::checkpoint::Checkpoint;
use crate::metrics::ClassificationMetrics;
use crate::plot;
use cnnkit_core::random::with_default_generator;
use cnnkit_core::{Error, Generator, Result, Tensor};
use cnnkit_nn::loss::{cross_entropy, CrossEntropyOptions};
use cnnkit_nn::{Module, ModuleExt};
use cnnkit_optim::sched::LrScheduler;
use cnnkit_optim::{clip_grad_norm_, Optimizer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A stream of (images (N, C, H, W) f32, labels (N) i64) batches for one epoch.
pub trait BatchSource {
    /// The batches of `epoch`, in an order that depends only on the source's seed and `epoch`
    /// (that is what makes a resumed run identical to an uninterrupted one).
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + '_>;
    /// Batches per epoch (for the progress bar).
    fn num_batches(&self) -> usize;
    /// Images per epoch.
    fn num_images(&self) -> usize;
}

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    /// clip_grad_norm_ max norm.
    pub grad_clip: Option<f64>,
    /// Stop when test accuracy has not improved for this many epochs.
    pub early_stopping: Option<usize>,
    /// Step the scheduler after every batch (OneCycleLR) instead of every epoch.
    pub scheduler_per_batch: bool,
    /// Where checkpoints, the log and plots go.
    pub out_dir: PathBuf,
    pub class_names: Vec<String>,
    /// Stored in checkpoints: how to rebuild the model and its data pipeline.
    pub model_config: serde_json::Value,
    pub show_progress: bool,
    /// Submodules kept in eval mode while the rest trains (frozen BatchNorm layers keep
    /// their running statistics when fine-tuning).
    pub eval_modules: Vec<String>,
}

/// Results of [`fit`].
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub epochs_run: usize,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub top5_accuracy: f64,
    pub per_class_accuracy: Vec<f64>,
    /// Training time of each epoch run in this process (excluding evaluation).
    pub epoch_seconds: Vec<f64>,
    pub images_per_second: f64,
    pub last_checkpoint: PathBuf,
    pub best_checkpoint: PathBuf,
    pub log: PathBuf,
    pub curves_png: PathBuf,
    pub confusion_png: PathBuf,
    pub stopped_early: bool,
}

/// Evaluates `model` on `data`: loss, top-1/top-5, per-class accuracy, confusion matrix.
pub fn evaluate(model: &dyn Module, data: &dyn BatchSource, num_classes: usize) -> Result<ClassificationMetrics> {
    model.eval();
    let _g = cnnkit_core::no_grad();
    let mut m = ClassificationMetrics::new(num_classes);
    for b in data.batches(0) {
        let (x, y) = b?;
        let logits = model.forward(&x)?;
        let loss = cross_entropy(&logits, &y, &CrossEntropyOptions::default())?.item()?;
        m.update(&logits, &y, loss)?;
    }
    Ok(m)
}

fn progress_bar(show: bool, len: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let pb =
        ProgressBar::with_draw_target(Some(len as u64), if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(format!("epoch {epoch}/{epochs}"));
    pb
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File { path: path.display().to_string(), msg: e.to_string() }
}

/// Trains `model` with `opt` (and optionally `sched`) on `train`, evaluating on `test` after
/// each epoch. With `resume`, continues from that checkpoint's epoch with its weights,
/// optimizer, scheduler and RNG state, and ends with the same weights as an uninterrupted run.
pub fn fit(
    model: &dyn Module,
    opt: &mut dyn Optimizer,
    mut sched: Option<&mut dyn LrScheduler>,
    train: &dyn BatchSource,
    test: &dyn BatchSource,
    cfg: &TrainConfig,
    resume: Option<Checkpoint>,
) -> Result<TrainReport> {
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| io_err(&cfg.out_dir, format!("cannot create output folder: {e}")))?;
    let num_classes = cfg.class_names.len();
    let last = cfg.out_dir.join("last.safetensors");
    let best = cfg.out_dir.join("best.safetensors");
    let log_path = cfg.out_dir.join("metrics.jsonl");
    let curves = cfg.out_dir.join("curves.png");
    let confusion = cfg.out_dir.join("confusion.png");

    let mut history: Vec<serde_json::Value> = Vec::new();
    let mut start_epoch = 0;
    if let Some(ck) = resume {
        model.load_state_dict(&ck.model, true)?;
        opt.load_state_dict(&ck.optimizer)?;
        if let Some(s) = sched.as_deref_mut() {
            s.load_state(&ck.scheduler)?;
        }
        if !ck.rng_state.is_empty() {
            let g = Generator::from_state(&ck.rng_state)?;
            with_default_generator(|d| *d = g);
        }
        start_epoch = ck.epoch;
        history = ck.history.as_array().cloned().unwrap_or_default();
    }
    // The log is rewritten from the history so a resumed run's log is complete and consistent.
    let mut log_text: String = history.iter().map(|h| format!("{h}\n")).collect();
    let mut best_acc = history.iter().filter_map(|h| h["test_accuracy"].as_f64()).fold(f64::NEG_INFINITY, f64::max);
    let mut since_best = 0;
    let mut epoch_seconds = Vec::new();
    let mut last_metrics = None;
    let mut stopped_early = false;

    // Steps repeat the same shapes: each step's outputs and gradients take the buffers the
    // previous step freed (no zero-fill, no fresh pages); see cnnkit_core::recycle.
    let _recycle = cnnkit_core::recycle_buffers();
    for epoch in start_epoch..cfg.epochs {
        model.train(true);
        for path in &cfg.eval_modules {
            model.train_at(path, false);
        }
        let pb = progress_bar(cfg.show_progress, train.num_batches(), epoch + 1, cfg.epochs);
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for batch in train.batches(epoch) {
            let (x, y) = batch?;
            // The step runs on a kernel-pool worker (see cnnkit_core::on_worker); the batch was
            // received out here because waiting on the loader inside would block a worker.
            let (l, hits) = cnnkit_core::on_worker(|| -> Result<(f64, usize)> {
                opt.zero_grad();
                let logits = model.forward(&x)?;
                let loss = cross_entropy(&logits, &y, &CrossEntropyOptions::default())?;
                loss.backward()?;
                if let Some(max) = cfg.grad_clip {
                    clip_grad_norm_(&model.trainable_parameters(), max, 2.0)?;
                }
                opt.step()?;
                if cfg.scheduler_per_batch {
                    if let Some(s) = sched.as_deref_mut() {
                        s.step(opt)?;
                    }
                }
                let hits = cnnkit_core::with_no_grad(|| logits.argmax(1, false)?.eq(&y)?.count_nonzero())?;
                Ok((loss.item()?, hits))
            })?;
            let n = y.numel();
            if !l.is_finite() {
                return Err(Error::invalid("train", format!("loss became {l} in epoch {} (try a lower --lr)", epoch + 1)));
            }
            loss_sum += l * n as f64;
            correct += hits;
            seen += n;
            pb.inc(1);
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!(
                "loss {:.4} acc {:.3} {:.0} img/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / secs
            ));
        }
        let secs = t0.elapsed().as_secs_f64();
        pb.finish_and_clear();
        epoch_seconds.push(secs);

        let m = evaluate(model, test, num_classes)?;
        if let Some(s) = sched.as_deref_mut() {
            if s.needs_metric() {
                s.step_with_metric(opt, m.mean_loss())?;
            } else if !cfg.scheduler_per_batch {
                s.step(opt)?;
            }
        }
        let record = json!({
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen.max(1) as f64,
            "train_accuracy": correct as f64 / seen.max(1) as f64,
            "test_loss": m.mean_loss(),
            "test_accuracy": m.accuracy(),
            "top5_accuracy": m.top5_accuracy(),
            "lr": opt.lr(),
            "epoch_seconds": secs,
            "images_per_second": seen as f64 / secs.max(1e-9),
        });
        if cfg.show_progress {
            eprintln!(
                "epoch {}/{}: train loss {:.4} acc {:.4} | test loss {:.4} acc {:.4} | {:.1}s, {:.0} img/s",
                epoch + 1,
                cfg.epochs,
                record["train_loss"].as_f64().unwrap_or(0.0),
                record["train_accuracy"].as_f64().unwrap_or(0.0),
                m.mean_loss(),
                m.accuracy(),
                secs,
                seen as f64 / secs.max(1e-9)
            );
        }
        log_text.push_str(&format!("{record}\n"));
        history.push(record);
        cnnkit_nn::serialize::write_atomic(&log_path, log_text.as_bytes())?;

        let ck = Checkpoint {
            model: model.state_dict(),
            optimizer: opt.state_dict()?,
            scheduler: sched.as_deref().map(|s| s.state()).unwrap_or_default(),
            epoch: epoch + 1,
            rng_state: with_default_generator(|g| g.state()),
            config: cfg.model_config.clone(),
            history: serde_json::Value::Array(history.clone()),
        };
        ck.save(&last)?;
        if m.accuracy() > best_acc {
            best_acc = m.accuracy();
            since_best = 0;
            ck.save(&best)?;
        } else {
            since_best += 1;
        }
        draw_plots(&history, &curves)?;
        plot::confusion_matrix(&confusion, &m.confusion, &cfg.class_names)?;
        last_metrics = Some(m);
        if cfg.early_stopping.is_some_and(|p| since_best >= p) {
            stopped_early = true;
            break;
        }
    }
    let m = match last_metrics {
        Some(m) => m,
        None => evaluate(model, test, num_classes)?,
    };
    if !best.exists() && last.exists() {
        std::fs::copy(&last, &best).map_err(|e| io_err(&best, e))?;
    }
    let train_secs: f64 = epoch_seconds.iter().sum();
    let _ = std::io::stderr().flush();
    Ok(TrainReport {
        epochs_run: epoch_seconds.len(),
        test_accuracy: m.accuracy(),
        test_loss: m.mean_loss(),
        top5_accuracy: m.top5_accuracy(),
        per_class_accuracy: m.per_class_accuracy(),
        images_per_second: if train_secs > 0.0 { (train.num_images() * epoch_seconds.len()) as f64 / train_secs } else { 0.0 },
        epoch_seconds,
        last_checkpoint: last,
        best_checkpoint: best,
        log: log_path,
        curves_png: curves,
        confusion_png: confusion,
        stopped_early,
    })
}

fn draw_plots(history: &[serde_json::Value], path: &Path) -> Result<()> {
    let series = |key: &str| -> Vec<(f64, f64)> { history.iter().filter_map(|h| Some((h["epoch"].as_f64()?, h[key].as_f64()?))).collect() };
    plot::training_curves(
        path,
        &[("train", series("train_loss")), ("test", series("test_loss"))],
        &[("train", series("train_accuracy")), ("test", series("test_accuracy"))],
    )
}
