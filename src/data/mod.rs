//! Datasets and loading: the built-in synthetic sets, MNIST-family IDX, CIFAR binary batches,
//! ImageFolder trees (formats.rs), downloads with checksums and resume (download.rs), and
//! [`Batches`], the shuffling, augmenting, multi-threaded batch source the trainer reads.

pub mod download;
pub mod formats;

use crate::core::{Error, Generator, Result, Tensor};
use crate::train::BatchSource;

/// A labelled image dataset (`torch.utils.data.Dataset` for classification).
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `i`: image (C, H, W) f32 and its label.
    fn get(&self, i: usize) -> Result<(Tensor, i64)>;
    fn class_names(&self) -> &[String];
}

impl Dataset for ImageSet {
    fn len(&self) -> usize {
        self.labels.numel()
    }
    fn get(&self, i: usize) -> Result<(Tensor, i64)> {
        if i >= self.len() {
            return Err(Error::invalid("Dataset::get", format!("index {i} out of range for {} samples", self.len())));
        }
        let label = self.labels.narrow(0, i, 1)?.to_vec::<i64>()?[0];
        Ok((self.images.narrow(0, i, 1)?.squeeze(0)?.contiguous()?, label))
    }
    fn class_names(&self) -> &[String] {
        &self.classes
    }
}

/// A labelled image set in memory: images (N, C, H, W) f32 in [0, 1], labels (N) i64.
#[derive(Debug)]
pub struct ImageSet {
    pub images: Tensor,
    pub labels: Tensor,
    pub classes: Vec<String>,
}

impl ImageSet {
    /// (C, H, W).
    pub fn chw(&self) -> [usize; 3] {
        let s = self.images.shape();
        [s[1], s[2], s[3]]
    }
    /// Splits off the last `frac` of the samples (PyTorch's random_split, seeded).
    pub fn split(self, frac: f64, seed: u64) -> Result<(ImageSet, ImageSet)> {
        let n = self.len();
        let k = ((n as f64) * frac).round() as usize;
        if !(0.0..1.0).contains(&frac) || k == 0 || k >= n {
            return Err(Error::invalid("--val-split", format!("{frac} leaves no training or validation images from {n}")));
        }
        let perm = Tensor::randperm_with(n, &mut Generator::new(seed ^ 0x51));
        let (a, b) = (perm.narrow(0, 0, n - k)?, perm.narrow(0, n - k, k)?);
        let part = |idx: &Tensor| -> Result<ImageSet> {
            Ok(ImageSet {
                images: self.images.index_select(0, idx)?,
                labels: self.labels.index_select(0, idx)?,
                classes: self.classes.clone(),
            })
        };
        Ok((part(&a)?, part(&b)?))
    }
}

/// Names accepted by `--dataset`.
pub const DATASETS: &[&str] = &["shapes", "digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "folder"];

/// Loads (train, test) for `name`. Built-in synthetic sets need no files.
pub fn load(name: &str, data: Option<&str>, seed: u64, train_size: usize, test_size: usize) -> Result<(ImageSet, ImageSet)> {
    match name {
        "shapes" => {
            let classes: Vec<String> = crate::synthetic::SHAPE_CLASSES.iter().map(|s| s.to_string()).collect();
            let (x, y, _, _) = crate::synthetic::shapes(train_size, 32, 3, seed.wrapping_mul(2) + 1)?;
            let (tx, ty, _, _) = crate::synthetic::shapes(test_size, 32, 3, seed.wrapping_mul(2) + 2)?;
            Ok((ImageSet { images: x, labels: y, classes: classes.clone() }, ImageSet { images: tx, labels: ty, classes }))
        }
        "digits" => {
            let classes: Vec<String> = (0..10).map(|d| d.to_string()).collect();
            let (x, y) = crate::synthetic::digits28(train_size, seed.wrapping_mul(2) + 1)?;
            let (tx, ty) = crate::synthetic::digits28(test_size, seed.wrapping_mul(2) + 2)?;
            Ok((ImageSet { images: x, labels: y, classes: classes.clone() }, ImageSet { images: tx, labels: ty, classes }))
        }
        "mnist" | "fashion-mnist" | "kmnist" | "cifar10" | "cifar100" => {
            let dir = data.ok_or_else(|| Error::invalid("--data", format!("--dataset {name} needs --data DIR with its files")))?;
            let classes = formats::class_names(name);
            if name.starts_with("cifar") {
                formats::load_cifar(std::path::Path::new(dir), name == "cifar100", &classes)
            } else {
                formats::load_idx_dataset(std::path::Path::new(dir), &classes)
            }
        }
        "folder" => {
            // ImageFolder: DIR/train/CLASS/* and DIR/test/CLASS/* (or DIR/val), 32×32 RGB.
            let dir = std::path::Path::new(data.ok_or_else(|| Error::invalid("--data", "--dataset folder needs --data DIR"))?);
            let test_dir = if dir.join("test").is_dir() { dir.join("test") } else { dir.join("val") };
            let train = formats::load_image_folder(&dir.join("train"), 32, 3)?;
            let test = formats::load_image_folder(&test_dir, 32, 3)?;
            if test.classes != train.classes {
                return Err(Error::File {
                    path: test_dir.display().to_string(),
                    msg: format!("class folders {:?} differ from train's {:?}", test.classes, train.classes),
                });
            }
            Ok((train, test))
        }
        other => Err(Error::invalid("--dataset", format!("unknown dataset '{other}' (known: {})", DATASETS.join(", ")))),
    }
}

/// Batches of an [`ImageSet`], shuffled per epoch from (seed, epoch) so a resumed run sees the
/// same order; optional augmentation (random horizontal flip and ±2-pixel translation).
/// `workers` background threads gather and augment batches ahead of the training step (the
/// seed's "asynchronous computation"); batch k comes from worker k mod workers and gets its
/// own RNG from (seed, epoch, k), so the result does not depend on the number of workers.
pub struct Batches<'a> {
    pub set: &'a ImageSet,
    pub batch_size: usize,
    pub shuffle: bool,
    pub augment: bool,
    pub seed: u64,
    pub workers: usize,
    /// Drop the last batch when it is smaller than `batch_size` (DataLoader's drop_last).
    pub drop_last: bool,
}

/// Batches each worker may run ahead of the consumer.
const PREFETCH: usize = 4;

/// Random flip and ±2-pixel shift of each image. x: (N, C, H, W).
fn augment(x: &Tensor, g: &mut Generator) -> Result<Tensor> {
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let src = x.to_vec::<f32>()?;
    let mut out = vec![0f32; src.len()];
    for i in 0..n {
        let flip = g.below(2) == 1;
        let (dy, dx) = (g.below(5) as isize - 2, g.below(5) as isize - 2);
        for ch in 0..c {
            let plane = (i * c + ch) * h * w;
            for y in 0..h {
                let sy = y as isize + dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                for xx in 0..w {
                    let sx = if flip { w - 1 - xx } else { xx } as isize + dx;
                    if sx >= 0 && sx < w as isize {
                        out[plane + y * w + xx] = src[plane + sy as usize * w + sx as usize];
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, x.shape())
}

/// Batch `k` of an epoch: the images at `order[k·bs ..]`, augmented when asked.
fn make_batch(images: &Tensor, labels: &Tensor, order: &Tensor, k: usize, bs: usize, aug: Option<u64>) -> Result<(Tensor, Tensor)> {
    let n = order.numel();
    let idx = order.narrow(0, k * bs, bs.min(n - k * bs))?;
    let x = images.index_select(0, &idx)?;
    let x = match aug {
        Some(seed) => augment(&x, &mut Generator::new(seed ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)))?,
        None => x,
    };
    Ok((x, labels.index_select(0, &idx)?))
}

impl Batches<'_> {
    /// Batches per epoch (also available through the trait).
    pub fn num_batches_pub(&self) -> usize {
        let bs = self.batch_size.max(1);
        if self.drop_last {
            self.set.len() / bs
        } else {
            self.set.len().div_ceil(bs)
        }
    }
}

impl BatchSource for Batches<'_> {
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + '_> {
        let n = self.set.len();
        let epoch_seed = self.seed ^ ((epoch as u64 + 1) * 0x9E37_79B9);
        let order = if self.shuffle {
            Tensor::randperm_with(n, &mut Generator::new(epoch_seed))
        } else {
            Tensor::arange(0.0, n as f64, 1.0, crate::core::DType::I64).unwrap_or_else(|_| Tensor::randperm_with(n, &mut Generator::new(0)))
        };
        let bs = self.batch_size.max(1);
        let nb = self.num_batches_pub();
        let aug = self.augment.then_some(epoch_seed);
        if self.workers == 0 {
            return Box::new((0..nb).map(move |k| make_batch(&self.set.images, &self.set.labels, &order, k, bs, aug)));
        }
        // Tensors are Arc-backed: the workers own cheap clones of the data.
        let w = self.workers;
        let receivers: Vec<std::sync::mpsc::Receiver<Result<(Tensor, Tensor)>>> = (0..w)
            .map(|wi| {
                let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH);
                let (images, labels, order) = (self.set.images.clone(), self.set.labels.clone(), order.clone());
                std::thread::spawn(move || {
                    for k in (wi..nb).step_by(w) {
                        // A closed channel means the consumer stopped: just end.
                        if tx.send(make_batch(&images, &labels, &order, k, bs, aug)).is_err() {
                            break;
                        }
                    }
                });
                rx
            })
            .collect();
        Box::new((0..nb).map(move |k| {
            receivers[k % w].recv().unwrap_or_else(|_| Err(Error::invalid("data loader", "a worker thread stopped unexpectedly")))
        }))
    }
    fn num_batches(&self) -> usize {
        self.num_batches_pub()
    }
    fn num_images(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_do_not_change_the_batches() {
        let (x, y, _, _) = crate::synthetic::shapes(70, 16, 3, 1).unwrap();
        let set = ImageSet { images: x, labels: y, classes: vec![] };
        let collect = |workers: usize| -> Vec<(Vec<f32>, Vec<i64>)> {
            let b = Batches { set: &set, batch_size: 16, shuffle: true, augment: true, seed: 3, workers, drop_last: false };
            b.batches(2).map(|r| r.unwrap()).map(|(x, y)| (x.to_vec::<f32>().unwrap(), y.to_vec::<i64>().unwrap())).collect()
        };
        let base = collect(0);
        assert_eq!(base.len(), 5);
        assert_eq!(base, collect(1));
        assert_eq!(base, collect(3));
        let b = Batches { set: &set, batch_size: 16, shuffle: false, augment: false, seed: 0, workers: 0, drop_last: true };
        assert_eq!(b.batches(0).count(), 4);
        assert_eq!(b.num_batches(), 4);
        let (img, label) = set.get(3).unwrap();
        assert_eq!(img.shape(), &[3, 16, 16]);
        assert_eq!(label, set.labels.to_vec::<i64>().unwrap()[3]);
        assert!(set.get(70).is_err());
        // Dropping the iterator early must not hang the workers.
        let b = Batches { set: &set, batch_size: 8, shuffle: true, augment: false, seed: 1, workers: 2, drop_last: false };
        assert!(b.batches(0).next().is_some());
    }
}
