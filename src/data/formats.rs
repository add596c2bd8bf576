//! Readers for the article's dataset files: MNIST-family IDX (raw or gzip) and the CIFAR-10 /
//! CIFAR-100 binary batches. Every problem is a typed error naming the file; nothing panics.

use super::ImageSet;
use crate::core::{Error, Result, Tensor};
use std::io::Read;
use std::path::{Path, PathBuf};

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::File { path: path.display().to_string(), msg: msg.into() }
}

/// Reads a file, gunzipping it when it ends in `.gz`.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| bad(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes: (dims, data). `want_dims` is 3 for images, 1 for labels.
pub fn parse_idx(path: &Path, bytes: &[u8], want_dims: u8) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 {
        return Err(bad(path, "truncated: no IDX header"));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad(
            path,
            format!(
                "wrong magic number {:02x}{:02x}{:02x}{:02x} (expected 000008{want_dims:02x}: unsigned-byte IDX)",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[3] != want_dims {
        return Err(bad(path, format!("IDX file has {} dimensions, expected {want_dims}", bytes[3])));
    }
    let nd = want_dims as usize;
    let head = 4 + 4 * nd;
    if bytes.len() < head {
        return Err(bad(path, "truncated IDX header"));
    }
    let dims: Vec<usize> =
        (0..nd).map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize).collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(path, "IDX dimensions overflow"))?;
    if bytes.len() - head != n {
        return Err(bad(
            path,
            format!("expected {n} data bytes for dimensions {dims:?}, found {} (truncated or corrupt)", bytes.len() - head),
        ));
    }
    Ok((dims, bytes[head..].to_vec()))
}

/// The first of `names` (with or without `.gz`) that exists in `dir`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for cand in [format!("{name}.gz"), name.to_string()] {
        let p = dir.join(&cand);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(bad(&dir.join(name), "missing dataset file (expected it raw or .gz)"))
}

fn idx_split(dir: &Path, images: &str, labels: &str, classes: &[String]) -> Result<ImageSet> {
    let (ip, lp) = (find(dir, images)?, find(dir, labels)?);
    let (idims, ibytes) = parse_idx(&ip, &read_maybe_gz(&ip)?, 3)?;
    let (ldims, lbytes) = parse_idx(&lp, &read_maybe_gz(&lp)?, 1)?;
    if idims[0] != ldims[0] {
        return Err(bad(&lp, format!("{} labels for {} images in {}", ldims[0], idims[0], ip.display())));
    }
    if let Some(&l) = lbytes.iter().find(|&&l| l as usize >= classes.len()) {
        return Err(bad(&lp, format!("label {l} out of range for {} classes", classes.len())));
    }
    let images = Tensor::from_vec(ibytes.iter().map(|&b| b as f32 / 255.0).collect::<Vec<_>>(), &[idims[0], 1, idims[1], idims[2]])?;
    let labels = Tensor::from_vec(lbytes.iter().map(|&b| b as i64).collect::<Vec<_>>(), &[ldims[0]])?;
    Ok(ImageSet { images, labels, classes: classes.to_vec() })
}

/// MNIST, Fashion-MNIST or KMNIST from `dir`: (train, test) with the authors' splits.
pub fn load_idx_dataset(dir: &Path, classes: &[String]) -> Result<(ImageSet, ImageSet)> {
    Ok((
        idx_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", classes)?,
        idx_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", classes)?,
    ))
}

/// Reads CIFAR binary batches: records of `label_bytes` label bytes (the last is used) and
/// 3·32·32 image bytes.
fn cifar_files(files: &[PathBuf], label_bytes: usize, classes: &[String]) -> Result<ImageSet> {
    let rec = label_bytes + 3072;
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    for f in files {
        let b = std::fs::read(f).map_err(|e| bad(f, format!("cannot read: {e}")))?;
        if b.is_empty() || b.len() % rec != 0 {
            return Err(bad(f, format!("size {} is not a whole number of {rec}-byte CIFAR records (truncated or not CIFAR)", b.len())));
        }
        for r in b.chunks_exact(rec) {
            let l = r[label_bytes - 1] as usize;
            if l >= classes.len() {
                return Err(bad(f, format!("label {l} out of range for {} classes", classes.len())));
            }
            lab.push(l as i64);
            img.extend(r[label_bytes..].iter().map(|&v| v as f32 / 255.0));
        }
    }
    let n = lab.len();
    Ok(ImageSet { images: Tensor::from_vec(img, &[n, 3, 32, 32])?, labels: Tensor::from_vec(lab, &[n])?, classes: classes.to_vec() })
}

/// CIFAR-10 (`data_batch_1..5.bin`, `test_batch.bin`) or CIFAR-100 (`train.bin`, `test.bin`,
/// fine labels) from `dir` (or its `cifar-10-batches-bin` / `cifar-100-binary` sub-folder).
pub fn load_cifar(dir: &Path, hundred: bool, classes: &[String]) -> Result<(ImageSet, ImageSet)> {
    let sub = dir.join(if hundred { "cifar-100-binary" } else { "cifar-10-batches-bin" });
    let dir = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let need = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(bad(&p, "missing dataset file"))
        }
    };
    if hundred {
        // The archive ships the fine class names; use them when present.
        let names: Vec<String> = std::fs::read_to_string(dir.join("fine_label_names.txt"))
            .map(|t| t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
            .unwrap_or_default();
        let classes = if names.len() == 100 { &names[..] } else { classes };
        Ok((cifar_files(&[need("train.bin")?], 2, classes)?, cifar_files(&[need("test.bin")?], 2, classes)?))
    } else {
        let train: Vec<PathBuf> = (1..=5).map(|i| need(&format!("data_batch_{i}.bin"))).collect::<Result<_>>()?;
        Ok((cifar_files(&train, 1, classes)?, cifar_files(&[need("test_batch.bin")?], 1, classes)?))
    }
}

/// Class names of the built-in file datasets.
pub fn class_names(dataset: &str) -> Vec<String> {
    let v: Vec<&str> = match dataset {
        "mnist" => vec!["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        "fashion-mnist" => vec!["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        "kmnist" => vec!["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
        "cifar10" => vec!["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        _ => return (0..100).map(|i| format!("class_{i}")).collect(),
    };
    v.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8], nd: u8) -> Vec<u8> {
        let mut v = vec![0, 0, 8, nd];
        dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
        v.extend_from_slice(data);
        v
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cnnkit-fmt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn idx_gzip_and_raw_and_errors() {
        let d = tmp("idx");
        let imgs: Vec<u8> = (0..2 * 4 * 4).map(|i| i as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&idx(&[2, 4, 4], &imgs, 3)).unwrap();
        std::fs::write(d.join("train-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(d.join("train-labels-idx1-ubyte"), idx(&[2], &[3, 9], 1)).unwrap();
        std::fs::write(d.join("t10k-images-idx3-ubyte"), idx(&[1, 4, 4], &imgs[..16], 3)).unwrap();
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx(&[1], &[0], 1)).unwrap();
        let names = class_names("mnist");
        let (tr, te) = load_idx_dataset(&d, &names).unwrap();
        assert_eq!(tr.images.shape(), &[2, 1, 4, 4]);
        assert_eq!(tr.labels.to_vec::<i64>().unwrap(), vec![3, 9]);
        assert_eq!(te.len(), 1);
        assert!((tr.images.to_vec::<f32>().unwrap()[31] - 31.0 / 255.0).abs() < 1e-7);
        // Label out of range, wrong magic, truncated data, corrupt gzip: typed errors naming the file.
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx(&[1], &[10], 1)).unwrap();
        let e = load_idx_dataset(&d, &names).unwrap_err().to_string();
        assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("out of range"), "{e}");
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), [0u8, 0, 9, 1, 0, 0, 0, 1, 0]).unwrap();
        assert!(load_idx_dataset(&d, &names).unwrap_err().to_string().contains("magic"));
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx(&[5], &[0, 1], 1)).unwrap();
        assert!(load_idx_dataset(&d, &names).unwrap_err().to_string().contains("truncated"));
        std::fs::write(d.join("train-images-idx3-ubyte.gz"), b"\x1f\x8bnot really").unwrap();
        assert!(load_idx_dataset(&d, &names).unwrap_err().to_string().contains("gzip"));
        std::fs::remove_file(d.join("train-images-idx3-ubyte.gz")).unwrap();
        assert!(load_idx_dataset(&d, &names).unwrap_err().to_string().contains("missing"));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn cifar_records_and_errors() {
        let d = tmp("cifar");
        let rec = |label: u8| -> Vec<u8> { std::iter::once(label).chain((0..3072).map(|i| (i % 251) as u8)).collect() };
        for i in 1..=5 {
            std::fs::write(d.join(format!("data_batch_{i}.bin")), [rec(i as u8), rec(0)].concat()).unwrap();
        }
        std::fs::write(d.join("test_batch.bin"), rec(7)).unwrap();
        let names = class_names("cifar10");
        let (tr, te) = load_cifar(&d, false, &names).unwrap();
        assert_eq!(tr.images.shape(), &[10, 3, 32, 32]);
        assert_eq!(te.labels.to_vec::<i64>().unwrap(), vec![7]);
        std::fs::write(d.join("test_batch.bin"), &rec(7)[..100]).unwrap();
        let e = load_cifar(&d, false, &names).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin") && e.contains("truncated"), "{e}");
        std::fs::write(d.join("test_batch.bin"), rec(12)).unwrap();
        assert!(load_cifar(&d, false, &names).unwrap_err().to_string().contains("out of range"));
        // CIFAR-100: two label bytes, the fine label second.
        let rec100: Vec<u8> = [3u8, 42].into_iter().chain(std::iter::repeat_n(9, 3072)).collect();
        std::fs::write(d.join("train.bin"), &rec100).unwrap();
        std::fs::write(d.join("test.bin"), &rec100).unwrap();
        let (tr, _) = load_cifar(&d, true, &class_names("cifar100")).unwrap();
        assert_eq!(tr.labels.to_vec::<i64>().unwrap(), vec![42]);
        assert_eq!(tr.classes[42], "class_42");
        let names: String = (0..100).map(|i| format!("fine{i}\n")).collect();
        std::fs::write(d.join("fine_label_names.txt"), names).unwrap();
        assert_eq!(load_cifar(&d, true, &class_names("cifar100")).unwrap().0.classes[42], "fine42");
        std::fs::remove_dir_all(&d).ok();
    }
}

/// torchvision's ImageFolder: `dir/CLASS/*.{png,jpg,jpeg,bmp,webp}`, classes in sorted order,
/// every image decoded and resized to size×size (bilinear), RGB (3 channels) or grey (1).
pub fn load_image_folder(dir: &Path, size: usize, channels: usize) -> Result<ImageSet> {
    let rd = std::fs::read_dir(dir).map_err(|e| bad(dir, format!("cannot read folder: {e}")))?;
    let mut classes: Vec<String> =
        rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    classes.sort();
    if classes.is_empty() {
        return Err(bad(dir, "no class sub-folders (expected DIR/CLASS/image files)"));
    }
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    for (ci, c) in classes.iter().enumerate() {
        let cdir = dir.join(c);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
            .map_err(|e| bad(&cdir, format!("cannot read folder: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| ["png", "jpg", "jpeg", "bmp", "webp"].contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        files.sort();
        for f in files {
            let t = decode_image(&f, channels, size, size)?;
            img.extend(t.to_vec::<f32>()?);
            lab.push(ci as i64);
        }
    }
    if lab.is_empty() {
        return Err(bad(dir, "no images found in the class folders"));
    }
    let n = lab.len();
    Ok(ImageSet { images: Tensor::from_vec(img, &[n, channels, size, size])?, labels: Tensor::from_vec(lab, &[n])?, classes })
}

/// Decodes an image file into (C, H, W) f32 in [0, 1], resized (bilinear) to H×W.
pub fn decode_image(path: &Path, c: usize, h: usize, w: usize) -> Result<Tensor> {
    let img = image::open(path).map_err(|e| bad(path, format!("cannot decode image: {e}")))?;
    let img = img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle);
    let v: Vec<f32> = if c == 1 {
        img.to_luma8().into_raw().into_iter().map(|p| p as f32 / 255.0).collect()
    } else {
        let rgb = img.to_rgb8();
        let mut out = vec![0f32; 3 * h * w];
        for (i, p) in rgb.pixels().enumerate() {
            for ch in 0..3 {
                out[ch * h * w + i] = p[ch] as f32 / 255.0;
            }
        }
        out
    };
    Tensor::from_vec(v, &[c, h, w])
}

#[cfg(test)]
mod folder_tests {
    use super::*;

    #[test]
    fn image_folder_with_mixed_formats() {
        let d = std::env::temp_dir().join(format!("cnnkit-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (c, fmt) in [("cat", "png"), ("dog", "jpg"), ("eel", "bmp")] {
            std::fs::create_dir_all(d.join(c)).unwrap();
            for i in 0..2u8 {
                let img = image::RgbImage::from_fn(10 + i as u32, 7, |x, _| image::Rgb([x as u8 * 20, 100, i * 50]));
                img.save(d.join(c).join(format!("{i}.{fmt}"))).unwrap();
            }
        }
        std::fs::write(d.join("cat").join("notes.txt"), "ignored").unwrap();
        let set = load_image_folder(&d, 8, 3).unwrap();
        assert_eq!(set.classes, vec!["cat", "dog", "eel"]);
        assert_eq!(set.images.shape(), &[6, 3, 8, 8]);
        assert_eq!(set.labels.to_vec::<i64>().unwrap(), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(load_image_folder(&d, 8, 1).unwrap().images.shape(), &[6, 1, 8, 8]);
        std::fs::write(d.join("dog").join("broken.png"), b"not an image").unwrap();
        let e = load_image_folder(&d, 8, 3).unwrap_err().to_string();
        assert!(e.contains("broken.png") && e.contains("decode"), "{e}");
        assert!(load_image_folder(&d.join("cat"), 8, 3).is_err(), "a folder without class sub-folders");
        std::fs::remove_dir_all(&d).ok();
    }
}
