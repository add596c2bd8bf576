//! .pth / .pt reading against the fixtures written by tools/gen_pth_fixtures.py.

mod common;

use cnnkit_core::{DType, Tensor};
use cnnkit_io::{convert_to_safetensors, load_pth, load_pth_state_dict, load_state_dict_file, read_pth, PyValue};
use cnnkit_nn::serialize::{load_safetensors, tensor_bytes};
use common::{fixture, temp_dir};
use std::collections::BTreeMap;

const STEMS: &[&str] =
    &["cnn_zip", "cnn_legacy", "checkpoint", "dataparallel", "dtypes", "views", "views_legacy", "params", "proto2", "proto4", "proto5"];
const MARKER: &str = "/tmp/cnnkit_io_pwned_marker";
const CNN_KEYS: &[&str] = &[
    "bn.bias",
    "bn.num_batches_tracked",
    "bn.running_mean",
    "bn.running_var",
    "bn.weight",
    "conv.bias",
    "conv.weight",
    "fc.bias",
    "fc.weight",
];

/// Every tensor inside `v`, keyed like the generator's `record`: dotted dict keys / list indices.
fn flatten(v: &PyValue, prefix: &str, out: &mut BTreeMap<String, Tensor>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        PyValue::Tensor(t) => {
            out.insert(prefix.to_string(), t.clone());
        }
        PyValue::Dict(items) => {
            for (k, v) in items {
                let k = match k {
                    PyValue::Str(s) => s.clone(),
                    PyValue::Int(i) => i.to_string(),
                    other => panic!("unexpected key {other:?}"),
                };
                flatten(v, &join(&k), out);
            }
        }
        PyValue::List(items) | PyValue::Tuple(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, &join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_eq!(tensor_bytes(got).unwrap(), tensor_bytes(want).unwrap(), "{name}: values");
}

#[test]
fn every_fixture_matches_torch_exactly() {
    let expected = load_safetensors(fixture("expected.safetensors")).unwrap();
    let mut covered = 0;
    for stem in STEMS {
        let v = load_pth(&fixture(&format!("{stem}.pth"))).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let mut got = BTreeMap::new();
        flatten(&v, "", &mut got);
        let want: BTreeMap<&str, &Tensor> =
            expected.iter().filter_map(|(k, t)| Some((k.strip_prefix(stem)?.strip_prefix('/')?, t))).collect();
        assert_eq!(got.keys().map(String::as_str).collect::<Vec<_>>(), want.keys().copied().collect::<Vec<_>>(), "{stem}: tensor keys");
        for (k, t) in &got {
            assert_same(&format!("{stem}/{k}"), t, want[k.as_str()]);
        }
        covered += got.len();
    }
    assert_eq!(covered, expected.len(), "every expected tensor is checked");
}

#[test]
fn dtypes_map_to_cnnkit_dtypes() {
    let v = load_pth(&fixture("dtypes.pth")).unwrap();
    let dt = |k: &str| v.get(k).and_then(PyValue::as_tensor).unwrap().dtype();
    for (k, d) in [
        ("f16", DType::F16),
        ("bf16", DType::BF16),
        ("f64", DType::F64),
        ("i64", DType::I64),
        ("i32", DType::I64),
        ("i16", DType::I64),
        ("i8", DType::I64),
        ("u8", DType::U8),
        ("bool", DType::U8),
    ] {
        assert_eq!(dt(k), d, "{k}");
    }
    let i32s = v.get("i32").and_then(PyValue::as_tensor).unwrap();
    assert_eq!(i32s.to_vec::<i64>().unwrap(), vec![-5, 1 << 30, 3, 0]);
    assert_eq!(v.get("i8").and_then(PyValue::as_tensor).unwrap().to_vec::<i64>().unwrap(), vec![-128, 127]);
    assert_eq!(v.get("bool").and_then(PyValue::as_tensor).unwrap().to_vec::<u8>().unwrap(), vec![1, 0, 1]);
    assert_eq!(v.get("scalar").and_then(PyValue::as_tensor).unwrap().shape(), &[] as &[usize]);
    assert_eq!(v.get("empty").and_then(PyValue::as_tensor).unwrap().shape(), &[0, 3]);
}

#[test]
fn views_honor_offsets_and_strides() {
    for stem in ["views", "views_legacy"] {
        let v = load_pth(&fixture(&format!("{stem}.pth"))).unwrap();
        let t = |k: &str| v.get(k).and_then(PyValue::as_tensor).unwrap().clone();
        assert_eq!(t("transposed").shape(), &[3, 2]);
        assert_eq!(t("transposed").to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(t("a").to_vec::<f32>().unwrap(), vec![1., 2., 3., 4.]);
        assert_eq!(t("b").to_vec::<f32>().unwrap(), vec![4., 5., 6., 7., 8., 9.]);
        assert_eq!(t("every_other").to_vec::<f32>().unwrap(), vec![0., 2., 4., 6., 8., 10.]);
    }
}

#[test]
fn plain_values_of_every_protocol() {
    for stem in ["proto2", "proto4", "proto5"] {
        let v = load_pth(&fixture(&format!("{stem}.pth"))).unwrap();
        assert_eq!(v.get("n").and_then(PyValue::as_int), Some(1), "{stem}");
        assert_eq!(v.get("pi").and_then(PyValue::as_float), Some(3.25));
        assert_eq!(v.get("s").and_then(PyValue::as_str), Some("hello"));
        assert_eq!(v.get("ok").and_then(PyValue::as_bool), Some(true));
        assert!(matches!(v.get("none"), Some(PyValue::None)));
        let list = v.get("list").and_then(PyValue::as_seq).unwrap();
        assert!(matches!(list, [PyValue::Int(1), PyValue::Float(f), PyValue::Str(s)] if *f == 2.0 && s == "three"));
        let tup = v.get("tup").unwrap();
        assert!(matches!(tup, PyValue::Tuple(t) if matches!(t.as_slice(), [PyValue::Int(1), PyValue::Tuple(inner)] if inner.len() == 2)));
    }
}

#[test]
fn checkpoint_metadata_and_optimizer_state() {
    let v = load_pth(&fixture("checkpoint.pth")).unwrap();
    assert_eq!(v.get("epoch").and_then(PyValue::as_int), Some(3));
    assert_eq!(v.get("best_acc").and_then(PyValue::as_float), Some(0.875));
    assert_eq!(v.get("note").and_then(PyValue::as_str), Some("ckpt"));
    let opt = v.get("optimizer").unwrap();
    let group = &opt.get("param_groups").and_then(PyValue::as_seq).unwrap()[0];
    assert_eq!(group.get("lr").and_then(PyValue::as_float), Some(0.1));
    assert_eq!(group.get("momentum").and_then(PyValue::as_float), Some(0.9));
    assert_eq!(group.get("nesterov").and_then(PyValue::as_bool), Some(false));
    let params: Vec<i64> = group.get("params").and_then(PyValue::as_seq).unwrap().iter().filter_map(PyValue::as_int).collect();
    assert_eq!(params, (0..6).collect::<Vec<_>>());
    // Optimizer state is keyed by parameter index (int keys).
    let state = opt.get("state").and_then(PyValue::as_dict).unwrap();
    assert_eq!(state.len(), 6);
    assert!(state.iter().all(|(k, v)| k.as_int().is_some() && v.get("momentum_buffer").and_then(PyValue::as_tensor).is_some()));
}

#[test]
fn state_dicts_from_plain_checkpoint_and_dataparallel_files_agree() {
    let reference = load_pth_state_dict(&fixture("cnn_zip.pth")).unwrap();
    assert_eq!(reference.keys().map(String::as_str).collect::<Vec<_>>(), CNN_KEYS);
    let nbt = &reference["bn.num_batches_tracked"];
    assert_eq!((nbt.dtype(), nbt.shape(), nbt.to_vec::<i64>().unwrap()), (DType::I64, &[] as &[usize], vec![1]));
    for stem in ["cnn_legacy", "checkpoint", "dataparallel"] {
        let sd = load_pth_state_dict(&fixture(&format!("{stem}.pth"))).unwrap();
        assert_eq!(sd.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>(), "{stem}");
        for (k, t) in &sd {
            assert_same(&format!("{stem}/{k}"), t, &reference[k]);
        }
    }
}

#[test]
fn state_dict_errors_name_the_keys_seen() {
    let e = load_pth_state_dict(&fixture("proto2.pth")).unwrap_err().to_string();
    assert!(e.contains("proto2.pth") && e.contains("no dict of tensors") && e.contains("\"pi\" (float)"), "{e}");
}

#[test]
fn load_state_dict_file_dispatches_on_content() {
    let dir = temp_dir("dispatch");
    // Extensions are deliberately misleading: the content decides.
    let pth = dir.join("weights.bin");
    std::fs::copy(fixture("cnn_legacy.pth"), &pth).unwrap();
    assert_eq!(load_state_dict_file(&pth).unwrap().len(), 9);
    let st = dir.join("weights.pth");
    std::fs::copy(fixture("expected.safetensors"), &st).unwrap();
    assert!(load_state_dict_file(&st).unwrap().contains_key("cnn_zip/conv.weight"));
    let e = load_state_dict_file(&fixture("f32.npy")).unwrap_err().to_string();
    assert!(e.contains("f32.npy") && e.contains("numpy"), "{e}");
    let e = load_state_dict_file(&dir.join("missing.pth")).unwrap_err().to_string();
    assert!(e.contains("missing.pth") && e.contains("cannot read"), "{e}");
}

#[test]
fn convert_to_safetensors_round_trips() {
    let dir = temp_dir("convert");
    for stem in ["cnn_zip", "checkpoint", "dataparallel", "cnn_legacy"] {
        let out = dir.join(format!("{stem}.safetensors"));
        let n = convert_to_safetensors(&fixture(&format!("{stem}.pth")), &out).unwrap();
        assert_eq!(n, 9);
        let back = load_safetensors(&out).unwrap();
        let want = load_pth_state_dict(&fixture(&format!("{stem}.pth"))).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (k, t) in &back {
            assert_same(k, t, &want[k]);
        }
    }
    // The atomic write leaves no temporary file behind.
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n.ends_with(".safetensors") && !n.starts_with('.')), "{names:?}");
}

#[test]
fn malicious_pickles_are_refused_and_nothing_runs() {
    let _ = std::fs::remove_file(MARKER);
    for (file, global) in
        [("malicious_zip.pth", "os.system"), ("malicious_stack_global.pth", "builtins.eval"), ("malicious_legacy.pth", "posix.system")]
    {
        let e = load_pth(&fixture(file)).unwrap_err().to_string();
        assert!(e.contains(file), "{e}");
        assert!(
            e.contains(&format!("pickle refers to forbidden global {global} (only tensors, dicts and basic values are allowed)")),
            "{e}"
        );
        assert!(load_pth_state_dict(&fixture(file)).is_err());
        assert!(load_state_dict_file(&fixture(file)).is_err());
    }
    assert!(!std::path::Path::new(MARKER).exists(), "a payload ran");
}

#[test]
fn not_a_torch_file() {
    for (bytes, want) in [
        (&b""[..], "empty"),
        (b"\x93NUMPY\x01\x00", "numpy"),
        (b"\x80\x02}q\x00.", "bare pickle"),
        (b"hello world", "found bytes 68 65"),
        (b"PK\x03\x04garbage", "zip"),
    ] {
        let e = read_pth(bytes, "x.pth").unwrap_err().to_string();
        assert!(e.starts_with("x.pth: ") && e.contains(want), "{e}");
    }
}
