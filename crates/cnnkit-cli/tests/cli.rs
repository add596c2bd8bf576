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
