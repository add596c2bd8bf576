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
