//! Deployment and transfer-learning commands: finetune, convert (and, with ONNX, infer and
//! export). JSON on the last stdout line, one-line errors, exit 2.

use cnnkit::nn::ModuleExt;
use std::path::PathBuf;
use std::process::Command;

fn cnnkit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnkit")).args(args).output().expect("run cnnkit");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("some stdout")).expect("last line is JSON")
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cnnkit-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(rel: &str) -> String {
    format!("{}/../../tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn finetune_freezes_the_backbone_and_trains_the_head() {
    let dir = tmpdir("finetune");
    // "Pretrained" ImageNet-shaped weights: a 1000-class resnet18's state_dict.
    cnnkit::core::manual_seed(7);
    let pre = cnnkit::models::build("resnet18", 3, 224, 224, 1000).unwrap();
    let pre_sd = pre.state_dict();
    let weights = dir.join("resnet18.safetensors");
    cnnkit::nn::serialize::save_safetensors(&weights, &pre_sd, &Default::default()).unwrap();
    let out = dir.join("run");
    let (code, stdout, err) = cnnkit(&[
        "finetune",
        "--model",
        "resnet18",
        "--weights",
        weights.to_str().unwrap(),
        "--num-classes",
        "6",
        "--freeze",
        "backbone",
        "--dataset",
        "shapes",
        "--epochs",
        "2",
        "--train-size",
        "1200",
        "--test-size",
        "300",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j = last_json(&stdout);
    assert_eq!(j["finetune"]["head"], "fc");
    assert_eq!(j["finetune"]["trained_tensors"], 2);
    // The head learned from frozen (random) features: the training loss fell and the test
    // accuracy is above chance (1/6).
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> =
        log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap()).collect();
    assert!(losses[1] < losses[0], "{losses:?}");
    assert!(j["test_accuracy"].as_f64().unwrap() > 0.22, "{j}");
    let ck = cnnkit::train::Checkpoint::load(&out.join("last.safetensors")).unwrap();
    let mut changed_head = false;
    for (k, t) in &ck.model {
        if k.starts_with("fc.") {
            assert_eq!(t.shape()[0], 6);
            changed_head = true;
            continue;
        }
        // Frozen parameters and the frozen BatchNorm statistics are bit-identical.
        let before = &pre_sd[k];
        assert_eq!(t.to_f64_vec().unwrap(), before.to_f64_vec().unwrap(), "{k} changed");
    }
    assert!(changed_head);
    // The checkpoint is an ordinary one: eval rebuilds resnet18 with 6 classes.
    let (code, stdout, err) =
        cnnkit(&["eval", "--checkpoint", out.join("last.safetensors").to_str().unwrap(), "--test-size", "100", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(last_json(&stdout)["test_accuracy"].as_f64().unwrap() > 0.2);
}

#[test]
fn finetune_errors_are_one_line() {
    let dir = tmpdir("finetune-bad");
    let wrong = dir.join("cifar.safetensors");
    let m = cnnkit::models::build("cifar-cnn", 3, 32, 32, 10).unwrap();
    cnnkit::nn::serialize::save_safetensors(&wrong, &m.state_dict(), &Default::default()).unwrap();
    for (args, needle) in [
        (vec!["--weights", wrong.to_str().unwrap()], "Missing key(s)"),
        (vec!["--weights", "/nonexistent/w.pth"], "/nonexistent/w.pth"),
        (vec!["--weights", wrong.to_str().unwrap(), "--freeze", "until:layer9"], "layer9"),
        (vec!["--weights", wrong.to_str().unwrap(), "--num-classes", "3"], "--num-classes"),
    ] {
        let mut a =
            vec!["finetune", "--model", "resnet18", "--dataset", "shapes", "--train-size", "10", "--test-size", "10", "--epochs", "1"];
        a.extend(args);
        let (code, _, err) = cnnkit(&a);
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn convert_pth_to_safetensors() {
    let dir = tmpdir("convert");
    for f in ["pth/cnn_zip.pth", "pth/cnn_legacy.pth"] {
        let out = dir.join("w.safetensors");
        let (code, _, err) = cnnkit(&["convert", &fixture(f), out.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let sd = cnnkit::nn::serialize::load_safetensors(&out).unwrap();
        let direct = cnnkit::io::load_state_dict_file(std::path::Path::new(&fixture(f))).unwrap();
        assert_eq!(sd.keys().collect::<Vec<_>>(), direct.keys().collect::<Vec<_>>());
        for (k, t) in &sd {
            assert_eq!(t.to_f64_vec().unwrap(), direct[k].to_f64_vec().unwrap());
        }
    }
    let (code, _, err) = cnnkit(&["convert", &fixture("pth/malicious_zip.pth"), dir.join("m.safetensors").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("forbidden") && err.trim().lines().count() == 1, "{err}");
    assert!(!dir.join("m.safetensors").exists());
}

/// Saves a zoo model's random-initialised weights; returns (model, weights path).
fn zoo_weights(dir: &std::path::Path, name: &str, classes: usize) -> (Box<dyn cnnkit::nn::Module>, PathBuf) {
    cnnkit::core::manual_seed(5);
    let m = cnnkit::models::build(name, 3, 64, 64, classes).unwrap();
    m.eval();
    let p = dir.join(format!("{name}.safetensors"));
    cnnkit::nn::serialize::save_safetensors(&p, &m.state_dict(), &Default::default()).unwrap();
    (m, p)
}

fn max_rel(a: &cnnkit::core::Tensor, b: &cnnkit::core::Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, |m: f64, d: f64| if d.is_nan() { f64::INFINITY } else { m.max(d) }) / scale
}

#[test]
fn infer_and_export_round_trip_through_onnx_and_onnx_runtime() {
    let dir = tmpdir("export");
    let ort = std::env::var("CNNKIT_ORT_PYTHON").ok();
    if ort.is_none() {
        println!("ONNX Runtime part skipped: set CNNKIT_ORT_PYTHON (.ci/run does)");
    }
    let x = cnnkit::core::Tensor::randn(&[2, 3, 64, 64], cnnkit::core::DType::F32);
    let xin = dir.join("x.npy");
    cnnkit::io::write_npy(&xin, &x).unwrap();
    for name in ["resnet18", "mobilenet_v2", "shufflenet_v2_x1_0"] {
        let (m, w) = zoo_weights(&dir, name, 7);
        let want = cnnkit::core::with_no_grad(|| m.forward(&x)).unwrap();
        // infer --model --weights (the head size is read from the weights).
        let y1 = dir.join(format!("{name}-y1.npy"));
        let (code, out, err) = cnnkit(&[
            "infer",
            "--model",
            name,
            "--weights",
            w.to_str().unwrap(),
            "--input",
            xin.to_str().unwrap(),
            "--output",
            y1.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(last_json(&out)["output_shape"], serde_json::json!([2, 7]));
        // The CLI folds BatchNorm into the conv weights and keeps Winograd U (so Winograd
        // takes layers from 16 tiles): f32 rounding differs from the module's (~1e-6 measured).
        assert!(max_rel(&cnnkit::io::read_npy(&y1).unwrap(), &want) < 1e-5);
        // export → infer --onnx.
        let onnx = dir.join(format!("{name}.onnx"));
        let (code, _, err) = cnnkit(&[
            "export",
            "--model",
            name,
            "--weights",
            w.to_str().unwrap(),
            "--onnx",
            onnx.to_str().unwrap(),
            "--input-shape",
            "1x3x64x64",
        ]);
        assert_eq!(code, 0, "{err}");
        let y2 = dir.join(format!("{name}-y2.npy"));
        let (code, _, err) =
            cnnkit(&["infer", "--onnx", onnx.to_str().unwrap(), "--input", xin.to_str().unwrap(), "--output", y2.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(max_rel(&cnnkit::io::read_npy(&y2).unwrap(), &want) < 1e-5, "{name}: onnx re-import");
        // ONNX Runtime runs the export with the same outputs.
        if let Some(py) = &ort {
            let y3 = dir.join(format!("{name}-ort.npy"));
            let script = format!("{}/../../tools/ort_run.py", env!("CARGO_MANIFEST_DIR"));
            let st =
                Command::new(py).args([&script, onnx.to_str().unwrap(), xin.to_str().unwrap(), y3.to_str().unwrap()]).status().unwrap();
            assert!(st.success(), "onnxruntime failed on {name}");
            let err = max_rel(&cnnkit::io::read_npy(&y3).unwrap(), &want);
            assert!(err < 1e-4, "{name}: ONNX Runtime differs by {err:.2e}");
        }
    }
    // bench infer prints median_ms on its last line, for a zoo model and for an ONNX file;
    // with --profile, each node's time (a table on stderr, an array in the JSON).
    let (code, out, err) =
        cnnkit(&["bench", "infer", "--model", "mobilenet_v2", "--input-shape", "1x3x64x64", "--iters", "2", "--json", "--profile"]);
    assert_eq!(code, 0, "{err}");
    let j = last_json(&out);
    assert!(j["median_ms"].as_f64().unwrap() > 0.0);
    let prof = j["profile"].as_array().unwrap();
    // Every block runs fused: the first with the stem that makes its input, those on planes of
    // 16×16 and up by output rows, those on smaller planes (8×8 to 4×4) by expanded channels.
    let block = prof.iter().filter(|n| n["op"] == "InvertedResidual" && n["detail"] == "3→32 3×3 s2 + 32→32→16 s1").count();
    assert_eq!(block, 1, "MobileNetV2's stem and first block, fused: {prof:?}");
    let split = prof.iter().filter(|n| n["op"] == "InvertedResidual" && n["detail"] == "64→384→64 s1").count();
    assert_eq!(split, 3, "MobileNetV2's three 64→384→64 blocks at 4×4, fused: {prof:?}");
    assert!(!prof.iter().any(|n| n["detail"].as_str().is_some_and(|d| d.contains(" g384"))), "no depthwise layer left alone: {prof:?}");
    assert!(prof.iter().all(|n| n["ms"].as_f64().is_some_and(|v| v >= 0.0)));
    assert!(err.contains("InvertedResidual") && err.contains("slowest nodes"), "{err}");
    let onnx = dir.join("resnet18.onnx");
    let (code, out, err) =
        cnnkit(&["bench", "infer", "--onnx", onnx.to_str().unwrap(), "--input-shape", "2x3x64x64", "--iters", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(last_json(&out)["median_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn export_a_checkpoint_and_a_sequential_cnn() {
    let dir = tmpdir("export-ck");
    let out = dir.join("run");
    let (code, _, err) = cnnkit(&[
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--train-size",
        "300",
        "--test-size",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let onnx = dir.join("lenet5.onnx");
    let ck = out.join("last.safetensors");
    let (code, stdout, err) = cnnkit(&["export", "--checkpoint", ck.to_str().unwrap(), "--onnx", onnx.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_json(&stdout)["input_shape"], serde_json::json!([1, 1, 28, 28]));
    let x = cnnkit::core::Tensor::randn(&[3, 1, 28, 28], cnnkit::core::DType::F32);
    let xin = dir.join("x.npy");
    cnnkit::io::write_npy(&xin, &x).unwrap();
    let (ya, yb) = (dir.join("a.npy"), dir.join("b.npy"));
    for (args, y) in [(vec!["--checkpoint", ck.to_str().unwrap()], &ya), (vec!["--onnx", onnx.to_str().unwrap()], &yb)] {
        let mut a = vec!["infer", "--input", xin.to_str().unwrap(), "--output", y.to_str().unwrap()];
        a.extend(args);
        let (code, _, err) = cnnkit(&a);
        assert_eq!(code, 0, "{err}");
    }
    let (a, b) = (cnnkit::io::read_npy(&ya).unwrap(), cnnkit::io::read_npy(&yb).unwrap());
    assert_eq!(a.shape(), &[3, 10]);
    assert!(max_rel(&a, &b) < 1e-5);
    if let Ok(py) = std::env::var("CNNKIT_ORT_PYTHON") {
        let y3 = dir.join("ort.npy");
        let script = format!("{}/../../tools/ort_run.py", env!("CARGO_MANIFEST_DIR"));
        assert!(Command::new(py)
            .args([&script, onnx.to_str().unwrap(), xin.to_str().unwrap(), y3.to_str().unwrap()])
            .status()
            .unwrap()
            .success());
        assert!(max_rel(&cnnkit::io::read_npy(&y3).unwrap(), &a) < 1e-4);
    }
}

#[test]
fn infer_rejects_bad_inputs_with_one_line() {
    let dir = tmpdir("infer-bad");
    let (_, w) = zoo_weights(&dir, "resnet18", 4);
    let f64_npy = fixture("pth/f64.npy");
    let good = dir.join("x.npy");
    cnnkit::io::write_npy(&good, &cnnkit::core::Tensor::randn(&[1, 3, 32, 32], cnnkit::core::DType::F32)).unwrap();
    let flat = dir.join("flat.npy");
    cnnkit::io::write_npy(&flat, &cnnkit::core::Tensor::randn(&[4, 5], cnnkit::core::DType::F32)).unwrap();
    let trunc = dir.join("trunc.onnx");
    std::fs::write(&trunc, b"\x08\x08\x12\x05hello\x3a\xff\xff").unwrap();
    let ws = w.to_str().unwrap();
    let y = dir.join("y.npy");
    let ys = y.to_str().unwrap();
    for (args, needle) in [
        (vec!["--model", "resnet18", "--weights", ws, "--input", f64_npy.as_str()], "<f4"),
        (vec!["--model", "resnet18", "--weights", ws, "--input", flat.to_str().unwrap()], "(N, C, H, W)"),
        (vec!["--model", "resnet34", "--weights", ws, "--input", good.to_str().unwrap()], "Missing key(s)"),
        (vec!["--model", "resnet18", "--weights", ws, "--num-classes", "9", "--input", good.to_str().unwrap()], "size mismatch"),
        (vec!["--onnx", trunc.to_str().unwrap(), "--input", good.to_str().unwrap()], "trunc.onnx"),
        (vec!["--model", "resnet18", "--weights", "/nope.pth", "--input", good.to_str().unwrap()], "/nope.pth"),
    ] {
        let mut a = vec!["infer", "--output", ys];
        a.extend(args);
        let (code, _, err) = cnnkit(&a);
        assert_eq!(code, 2, "{a:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!y.exists(), "no partial output");
    }
    // The ONNX model's declared input size is checked before running.
    let onnx = dir.join("r.onnx");
    let (code, _, err) =
        cnnkit(&["export", "--model", "resnet18", "--weights", ws, "--onnx", onnx.to_str().unwrap(), "--input-shape", "1x3x64x64"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cnnkit(&["infer", "--onnx", onnx.to_str().unwrap(), "--input", good.to_str().unwrap(), "--output", ys]);
    assert_eq!(code, 2);
    assert!(err.contains("expects"), "{err}");
}
