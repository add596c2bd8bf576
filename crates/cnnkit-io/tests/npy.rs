//! .npy against files written by numpy.

mod common;

use cnnkit_core::{DType, Tensor};
use cnnkit_io::{parse_npy, read_npy, write_npy};
use common::{fixture, read_fixture, temp_dir};

/// What tools/gen_pth_fixtures.py saved: np.arange(24, dtype=float32).reshape(2, 3, 4) / 7.
fn reference() -> Vec<f32> {
    (0..24).map(|i| i as f32 / 7.0).collect()
}

#[test]
fn reads_numpy_float32_in_every_header_version() {
    for name in ["f32.npy", "f32_v2.npy", "f32_v3.npy"] {
        let t = read_npy(&fixture(name)).unwrap();
        assert_eq!((t.dtype(), t.shape()), (DType::F32, &[2, 3, 4][..]), "{name}");
        assert_eq!(t.to_vec::<f32>().unwrap(), reference(), "{name}");
    }
    let s = read_npy(&fixture("scalar.npy")).unwrap();
    assert_eq!((s.shape(), s.to_vec::<f32>().unwrap()), (&[] as &[usize], vec![1.5]));
}

#[test]
fn wrong_files_give_clear_errors() {
    let err = |name: &str| read_npy(&fixture(name)).unwrap_err().to_string();
    let e = err("f64.npy");
    assert!(e.contains("f64.npy") && e.contains("expected dtype <f4 (float32), found <f8; convert with x.astype(np.float32)"), "{e}");
    assert!(err("i64.npy").contains("found <i8"));
    assert!(err("big_endian.npy").contains("found >f4"));
    let e = err("fortran.npy");
    assert!(e.contains("Fortran order") && e.contains("np.ascontiguousarray"), "{e}");
    let e = err("cnn_zip.pth");
    assert!(e.contains("not a .npy file") && e.contains("50 4b"), "{e}");
    let e = read_npy(&fixture("missing.npy")).unwrap_err().to_string();
    assert!(e.contains("missing.npy") && e.contains("cannot read"), "{e}");

    let good = read_fixture("f32.npy");
    let e = parse_npy(&good[..good.len() - 3], "t.npy").unwrap_err().to_string();
    assert!(e.contains("truncated data") && e.contains("needs 96 bytes, 93 present"), "{e}");
    let mut extra = good.clone();
    extra.extend_from_slice(&[0; 4]);
    assert!(parse_npy(&extra, "t.npy").unwrap_err().to_string().contains("4 bytes after the data"));
    let mut v9 = good.clone();
    v9[6] = 9;
    assert!(parse_npy(&v9, "t.npy").unwrap_err().to_string().contains("version 9.0"));
    let e = parse_npy(&good[..20], "t.npy").unwrap_err().to_string();
    assert!(e.contains("truncated .npy header"), "{e}");
    for bad in
        ["{'descr': '<f4', 'shape': (2,), }", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,x), }", "[1, 2]", "{'descr': '<f4'"]
    {
        let e = parse_npy(&with_header(bad, &[0; 8]), "t.npy").unwrap_err().to_string();
        assert!(e.contains("bad .npy header"), "{bad}: {e}");
    }
    // Found by the fuzzer: no elements, but strides that overflow.
    let e = parse_npy(&with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3, 7777777777777777774), }", &[]), "t.npy")
        .unwrap_err()
        .to_string();
    assert!(e.contains("too large"), "{e}");
    let e = parse_npy(&with_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", &[0; 4]), "t.npy")
        .unwrap_err()
        .to_string();
    assert!(e.contains("found a structured dtype"), "{e}");
}

fn with_header(h: &str, data: &[u8]) -> Vec<u8> {
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn writes_byte_identical_to_numpy_and_round_trips() {
    let dir = temp_dir("npy");
    let t = Tensor::from_vec(reference(), &[2, 3, 4]).unwrap();
    let out = dir.join("out.npy");
    write_npy(&out, &t).unwrap();
    // numpy's np.save of the same array produces exactly the same bytes.
    assert_eq!(std::fs::read(&out).unwrap(), read_fixture("f32.npy"));
    write_npy(&dir.join("s.npy"), &Tensor::scalar(1.5f32)).unwrap();
    assert_eq!(std::fs::read(dir.join("s.npy")).unwrap(), read_fixture("scalar.npy"));
    for shape in [vec![5], vec![0, 3], vec![1, 1, 1, 2]] {
        let n: usize = shape.iter().product();
        let t = Tensor::from_vec((0..n).map(|i| i as f32 - 0.5).collect::<Vec<_>>(), &shape).unwrap();
        let p = dir.join("r.npy");
        write_npy(&p, &t).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - n * 4) % 64, 0, "header padded to 64 bytes");
        let back = read_npy(&p).unwrap();
        assert_eq!((back.shape(), back.to_vec::<f32>().unwrap()), (&shape[..], t.to_vec::<f32>().unwrap()));
    }
    // A non-contiguous view is written in logical (C) order.
    let tr = Tensor::from_vec((0..6).map(|i| i as f32).collect::<Vec<_>>(), &[2, 3]).unwrap().transpose(0, 1).unwrap();
    write_npy(&dir.join("t.npy"), &tr).unwrap();
    assert_eq!(read_npy(&dir.join("t.npy")).unwrap().to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
    let e = write_npy(&dir.join("d.npy"), &Tensor::from_vec(vec![1.0f64], &[1]).unwrap()).unwrap_err().to_string();
    assert!(e.contains("float32 only") && e.contains("float64"), "{e}");
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "temporary files left: {names:?}");
}
