//! A run interrupted and resumed ends with exactly the weights of an uninterrupted one.

use cnnkit_core::{manual_seed, DType, Generator, Result, Tensor};
use cnnkit_nn::{Conv2d, Conv2dConfig, Dropout, Flatten, Linear, MaxPool2d, ModuleExt, ReLU, Sequential};
use cnnkit_optim::sched::{LrScheduler, StepLr};
use cnnkit_optim::{Adam, AdamConfig};
use cnnkit_train::{fit, BatchSource, Checkpoint, TrainConfig};

/// In-memory data whose batch order depends only on (seed, epoch).
struct Mem {
    x: Tensor,
    y: Tensor,
    batch: usize,
    seed: u64,
}

impl BatchSource for Mem {
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + '_> {
        let n = self.y.numel();
        let perm = Tensor::randperm_with(n, &mut Generator::new(self.seed ^ ((epoch as u64 + 1) * 0x9E37)));
        Box::new((0..n).step_by(self.batch).map(move |s| {
            let idx = perm.narrow(0, s, self.batch.min(n - s))?;
            Ok((self.x.index_select(0, &idx)?, self.y.index_select(0, &idx)?))
        }))
    }
    fn num_batches(&self) -> usize {
        self.y.numel().div_ceil(self.batch)
    }
    fn num_images(&self) -> usize {
        self.y.numel()
    }
}

fn model() -> Sequential {
    Sequential::new()
        .add(Conv2d::new(Conv2dConfig::new(1, 4, 3).padding(1)).unwrap())
        .add(ReLU::default())
        .add(MaxPool2d::new(2))
        .add(Flatten::new())
        .add(Dropout::new(0.3).unwrap())
        .add(Linear::new(4 * 4 * 4, 3).unwrap())
}

fn data() -> (Mem, Mem) {
    let mut g = Generator::new(9);
    let x = Tensor::randn_with(&[60, 1, 8, 8], DType::F32, &mut g);
    let y = Tensor::from_vec((0..60).map(|i| (i % 3) as i64).collect::<Vec<_>>(), &[60]).unwrap();
    // Make the classes separable: shift each class's mean.
    let shift = Tensor::from_vec((0..60).map(|i| (i % 3) as f32).collect::<Vec<_>>(), &[60, 1, 1, 1]).unwrap();
    let x = x.add(&shift).unwrap();
    (Mem { x: x.clone(), y: y.clone(), batch: 16, seed: 1 }, Mem { x, y, batch: 32, seed: 2 })
}

fn run(epochs: usize, out: &std::path::Path, resume: Option<Checkpoint>) -> Vec<f32> {
    manual_seed(0);
    let m = model();
    let mut opt = Adam::new(m.parameters(), AdamConfig { lr: 1e-2, ..Default::default() }).unwrap();
    let mut sched = StepLr::new(&mut opt, 1, 0.5).unwrap();
    let (train, test) = data();
    let cfg = TrainConfig {
        epochs,
        grad_clip: Some(5.0),
        early_stopping: None,
        scheduler_per_batch: false,
        out_dir: out.to_path_buf(),
        class_names: vec!["a".into(), "b".into(), "c".into()],
        model_config: serde_json::json!({"model": "test"}),
        show_progress: false,
        eval_modules: Vec::new(),
    };
    let sched_ref: &mut dyn LrScheduler = &mut sched;
    let rep = fit(&m, &mut opt, Some(sched_ref), &train, &test, &cfg, resume).unwrap();
    assert!(rep.last_checkpoint.exists() && rep.best_checkpoint.exists() && rep.curves_png.exists() && rep.confusion_png.exists());
    m.parameters().iter().flat_map(|p| p.to_vec::<f32>().unwrap()).collect()
}

#[test]
fn resume_equals_uninterrupted() {
    let base = std::env::temp_dir().join(format!("cnnkit-resume-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    let straight = run(3, &a, None);
    run(2, &b, None);
    let ck = Checkpoint::load(&b.join("last.safetensors")).unwrap();
    assert_eq!(ck.epoch, 2);
    let resumed = run(3, &b, Some(ck));
    assert_eq!(straight, resumed, "resumed weights differ from the uninterrupted run");
    // The log holds all three epochs, once each.
    let log = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let epochs: Vec<i64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_i64().unwrap()).collect();
    assert_eq!(epochs, vec![1, 2, 3]);
    // Truncated checkpoints are refused with an error naming the file.
    let bad = base.join("bad.safetensors");
    let bytes = std::fs::read(b.join("last.safetensors")).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let e = Checkpoint::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.safetensors"), "{e}");
    std::fs::remove_dir_all(&base).ok();
}
