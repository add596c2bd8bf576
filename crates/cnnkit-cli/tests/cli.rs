//! The `cnnkit` binary's contracts: JSON on the last stdout line, one-line errors, exit 2.

use std::process::Command;

fn cnnkit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnkit")).args(args).output().expect("run cnnkit");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("some stdout")).expect("last line is JSON")
}

#[test]
fn bench_conv2d_json() {
    let (code, out, _) =
        cnnkit(&["bench", "conv2d", "--batch", "2", "--in-channels", "8", "--out-channels", "8", "--size", "12", "--iters", "2", "--json"]);
    assert_eq!(code, 0);
    let j = last_json(&out);
    assert!(j["median_ms"].as_f64().unwrap() > 0.0);
    assert!(j["gflops"].as_f64().unwrap() > 0.0);
    let (code, out, _) = cnnkit(&[
        "bench",
        "conv2d",
        "--batch",
        "2",
        "--in-channels",
        "8",
        "--out-channels",
        "8",
        "--size",
        "12",
        "--iters",
        "2",
        "--backward",
        "--threads",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(last_json(&out)["backward"], true);
}

#[test]
fn bench_loader_json() {
    let (code, out, err) = cnnkit(&["bench", "loader", "--dataset", "digits", "--iters", "1", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(last_json(&out)["images_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_train_step_json() {
    for model in ["cifar-cnn", "simple-cnn"] {
        let (code, out, err) = cnnkit(&["bench", "train-step", "--model", model, "--batch-size", "4", "--iters", "2", "--json"]);
        assert_eq!(code, 0, "{err}");
        let j = last_json(&out);
        assert_eq!(j["model"], model);
        assert!(j["median_ms"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    for args in [
        vec!["bench", "conv2d", "--size", "4", "--kernel", "9", "--padding", "0", "--iters", "1"],
        vec!["bench", "conv2d", "--in-channels", "6", "--groups", "4", "--iters", "1"],
        vec!["bench", "train-step", "--model", "nope", "--iters", "1"],
        vec!["bench", "conv2d", "--threads", "0"],
        vec!["bench", "conv2d", "--batch", "x"],
        vec!["frobnicate"],
    ] {
        let (code, out, err) = cnnkit(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}");
        assert!(!err.contains("panicked"), "{args:?}");
    }
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cnnkit-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The README's quick start: `cnnkit train` with no flags reaches 95% on shapes.
#[test]
fn train_eval_predict_on_shapes() {
    let dir = tmpdir("train");
    let out = dir.join("run");
    let (code, stdout, err) = cnnkit(&["train", "--out", out.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let j = last_json(&stdout);
    for k in [
        "model",
        "dataset",
        "epochs",
        "train_images",
        "test_images",
        "test_accuracy",
        "test_loss",
        "epoch_seconds",
        "images_per_second",
        "checkpoint",
    ] {
        assert!(!j[k].is_null(), "missing {k} in {j}");
    }
    assert_eq!(j["model"], "simple-cnn");
    assert_eq!(j["dataset"], "shapes");
    assert!(j["test_accuracy"].as_f64().unwrap() >= 0.95, "accuracy floor: {j}");
    assert_eq!(j["epoch_seconds"].as_array().unwrap().len(), 6);
    for f in ["last.safetensors", "best.safetensors", "metrics.jsonl", "curves.png", "confusion.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let ck = out.join("best.safetensors");
    let (code, stdout, err) = cnnkit(&["eval", "--checkpoint", ck.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let e = last_json(&stdout);
    assert!(e["test_accuracy"].as_f64().unwrap() >= 0.95);
    assert!(e["top5_accuracy"].as_f64().unwrap() >= e["test_accuracy"].as_f64().unwrap());
    assert_eq!(e["per_class_accuracy"].as_object().unwrap().len(), 6);
    // Predict on a drawn image: a bright disc on a dark background is a circle.
    let png = dir.join("disc.png");
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        let (dx, dy) = (x as f32 - 15.5, y as f32 - 15.5);
        if dx * dx + dy * dy < 81.0 {
            image::Rgb([230, 200, 60])
        } else {
            image::Rgb([20, 20, 30])
        }
    });
    img.save(&png).unwrap();
    let (code, stdout, err) = cnnkit(&["predict", "--checkpoint", ck.to_str().unwrap(), png.to_str().unwrap(), "--topk", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let p = last_json(&stdout);
    let top = &p["predictions"][0]["top"];
    assert_eq!(top.as_array().unwrap().len(), 2);
    assert_eq!(top[0]["class"], "circle", "{p}");
    // Bad input: one line, exit 2.
    std::fs::write(dir.join("junk.png"), b"not a png").unwrap();
    for args in [
        vec!["predict", "--checkpoint", ck.to_str().unwrap(), dir.join("junk.png").to_str().unwrap()],
        vec!["eval", "--checkpoint", dir.join("missing.safetensors").to_str().unwrap()],
        vec!["eval", "--checkpoint", dir.join("junk.png").to_str().unwrap()],
        vec!["train", "--dataset", "imagenet", "--epochs", "1"],
        vec!["train", "--model", "resnet9000", "--epochs", "1", "--train-size", "64", "--test-size", "64"],
        vec!["train", "--optimizer", "lbfgs", "--epochs", "1", "--train-size", "64", "--test-size", "64"],
        vec!["train", "--epochs", "1", "--train-size", "64", "--test-size", "64", "--out", "/proc/cnnkit-no"],
    ] {
        let (code, _, err) = cnnkit(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// An interrupted run resumed from its checkpoint ends with the same weights.
#[test]
fn resume_from_the_cli() {
    let dir = tmpdir("resume");
    let common = ["--train-size", "512", "--test-size", "128", "--batch-size", "32", "--json"];
    let run = |epochs: &str, out: &std::path::Path, resume: Option<&std::path::Path>| {
        let mut args = vec!["train", "--epochs", epochs, "--out", out.to_str().unwrap()];
        args.extend(common);
        if let Some(r) = resume {
            args.extend(["--resume", r.to_str().unwrap()]);
        }
        let (code, _, err) = cnnkit(&args);
        assert_eq!(code, 0, "{err}");
        std::fs::read(out.join("last.safetensors")).unwrap()
    };
    let straight = run("3", &dir.join("a"), None);
    run("2", &dir.join("b"), None);
    let ck = dir.join("b").join("last.safetensors");
    let ck2 = dir.join("b2.safetensors");
    std::fs::copy(&ck, &ck2).unwrap();
    let resumed = run("3", &dir.join("b"), Some(&ck2));
    let weights = |bytes: &[u8]| {
        let (t, _) = cnnkit::nn::serialize::parse_safetensors(bytes).unwrap();
        t.into_iter().filter(|(k, _)| k.starts_with("model.")).map(|(k, v)| (k, v.to_vec::<f32>().unwrap_or_default())).collect::<Vec<_>>()
    };
    assert_eq!(weights(&straight), weights(&resumed));
    std::fs::remove_dir_all(&dir).ok();
}

/// MNIST-format (IDX, gzip) files written here train end to end; broken files fail cleanly.
#[test]
fn train_on_idx_files() {
    use std::io::Write;
    let dir = tmpdir("idx");
    let (x, y) = cnnkit::synthetic::digits28(1600, 3).unwrap();
    let px: Vec<u8> = x.to_vec::<f32>().unwrap().iter().map(|v| (v * 255.0) as u8).collect();
    let lab: Vec<u8> = y.to_vec::<i64>().unwrap().iter().map(|&v| v as u8).collect();
    let write = |name: &str, dims: &[u32], data: &[u8]| {
        let mut v = vec![0u8, 0, 8, dims.len() as u8];
        dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
        v.extend_from_slice(data);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&v).unwrap();
        std::fs::write(dir.join(name), gz.finish().unwrap()).unwrap();
    };
    write("train-images-idx3-ubyte.gz", &[1500, 28, 28], &px[..1500 * 784]);
    write("train-labels-idx1-ubyte.gz", &[1500], &lab[..1500]);
    write("t10k-images-idx3-ubyte.gz", &[100, 28, 28], &px[1500 * 784..]);
    write("t10k-labels-idx1-ubyte.gz", &[100], &lab[1500..]);
    let out = dir.join("run");
    let (code, stdout, err) = cnnkit(&[
        "train",
        "--dataset",
        "mnist",
        "--data",
        dir.to_str().unwrap(),
        "--epochs",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j = last_json(&stdout);
    assert_eq!((j["train_images"].as_u64(), j["test_images"].as_u64()), (Some(1500), Some(100)));
    assert!(j["test_accuracy"].as_f64().unwrap() > 0.8, "{j}");
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), b"garbage").unwrap();
    let (code, _, err) = cnnkit(&["train", "--dataset", "mnist", "--data", dir.to_str().unwrap(), "--epochs", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("t10k-labels-idx1-ubyte.gz") && err.trim().lines().count() == 1, "{err}");
    let (code, _, err) = cnnkit(&["train", "--dataset", "cifar10", "--data", dir.to_str().unwrap(), "--epochs", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("data_batch_1.bin"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn download_rejects_unknown_datasets() {
    let (code, out, err) = cnnkit(&["data", "download", "imagenet", "--dir", std::env::temp_dir().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty() && err.contains("imagenet") && err.trim().lines().count() == 1, "{err}");
}
