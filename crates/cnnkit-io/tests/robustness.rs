//! Damaged and hostile inputs: every one must give an error, never a panic or a hang.

mod common;

use cnnkit_io::{parse_npy, read_pth, PyValue};
use common::{read_fixture, Rng};
use std::io::{Cursor, Read, Write};

const PTH: &[&str] = &[
    "cnn_zip.pth",
    "cnn_legacy.pth",
    "checkpoint.pth",
    "dataparallel.pth",
    "dtypes.pth",
    "views.pth",
    "views_legacy.pth",
    "params.pth",
    "proto2.pth",
    "proto4.pth",
    "proto5.pth",
    "malicious_zip.pth",
    "malicious_stack_global.pth",
    "malicious_legacy.pth",
];
const NPY: &[&str] = &["f32.npy", "f32_v2.npy", "f32_v3.npy", "f64.npy", "fortran.npy", "i64.npy", "big_endian.npy", "scalar.npy"];

#[test]
fn every_truncation_is_an_error() {
    for name in PTH {
        let bytes = read_fixture(name);
        for cut in 0..bytes.len() {
            let r = read_pth(&bytes[..cut], name);
            assert!(r.is_err(), "{name} cut at {cut} loaded");
        }
    }
    for name in NPY {
        let bytes = read_fixture(name);
        for cut in 0..bytes.len() {
            assert!(parse_npy(&bytes[..cut], name).is_err(), "{name} cut at {cut} loaded");
        }
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for name in PTH.iter().chain(NPY) {
        let orig = read_fixture(name);
        for _ in 0..400 {
            let mut b = orig.clone();
            for _ in 0..=rng.below(4) {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            let _ = read_pth(&b, name);
            let _ = parse_npy(&b, name);
        }
    }
}

/// The entries of a zip fixture, to rebuild it with a modified data.pkl (a flipped byte in the
/// original archive is mostly caught by the CRC check before the unpickler sees it).
fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            (f.name().unwrap().to_string(), v)
        })
        .collect()
}

fn make_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (n, d) in entries {
        w.start_file(n.as_str(), opts).unwrap();
        w.write_all(d).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn damaged_pickles_inside_valid_zips() {
    let mut rng = Rng(42);
    for name in ["cnn_zip.pth", "checkpoint.pth", "views.pth", "proto5.pth", "params.pth"] {
        let entries = zip_entries(&read_fixture(name));
        let pkl = entries.iter().position(|(n, _)| n.ends_with("/data.pkl")).unwrap();
        // The rebuilt archive itself loads.
        assert!(read_pth(&make_zip(&entries), name).is_ok(), "{name}");
        let orig = entries[pkl].1.clone();
        for cut in 0..orig.len() {
            let mut e = entries.clone();
            e[pkl].1.truncate(cut);
            let err = read_pth(&make_zip(&e), name).unwrap_err().to_string();
            assert!(err.contains("data.pkl at byte") || err.contains("stack underflow"), "{name} pickle cut at {cut}: {err}");
        }
        for _ in 0..2000 {
            let mut e = entries.clone();
            for _ in 0..=rng.below(3) {
                let i = rng.below(orig.len());
                e[pkl].1[i] = rng.next() as u8;
            }
            let _ = read_pth(&make_zip(&e), name);
        }
    }
}

#[test]
fn storage_size_mismatch_is_an_error() {
    let mut entries = zip_entries(&read_fixture("cnn_zip.pth"));
    let i = entries.iter().position(|(n, _)| n.ends_with("/data/0")).unwrap();
    entries[i].1.pop();
    let e = read_pth(&make_zip(&entries), "w.pth").unwrap_err().to_string();
    assert!(e.contains("data/0") && e.contains("bytes"), "{e}");
    let mut entries = zip_entries(&read_fixture("cnn_zip.pth"));
    let i = entries.iter().position(|(n, _)| n.ends_with("/byteorder")).unwrap();
    entries[i].1 = b"big".to_vec();
    let e = read_pth(&make_zip(&entries), "w.pth").unwrap_err().to_string();
    assert!(e.contains("little-endian"), "{e}");
}

/// Wraps an object pickle in the legacy torch.save layout (no storages).
fn legacy(obj: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
    f.extend_from_slice(b"\x80\x02M\xe9\x03."); // 1001
    f.extend_from_slice(b"\x80\x02}q\x00."); // sys_info: {}
    f.extend_from_slice(obj);
    f.extend_from_slice(b"\x80\x02]q\x00."); // storage keys: []
    f
}

fn err_of(obj: &[u8]) -> String {
    read_pth(&legacy(obj), "h.pth").unwrap_err().to_string()
}

#[test]
fn hand_made_pickles() {
    // A plain value through the legacy wrapper.
    let v = read_pth(&legacy(b"\x80\x02]q\x00(K\x01\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00e."), "h.pth");
    assert!(v.is_err(), "a 9-byte LONG1 does not fit i64");
    let v = read_pth(&legacy(b"\x80\x02]q\x00(K\x01\x8a\x02\xff\x7fJ\xff\xff\xff\xffe."), "h.pth").unwrap();
    assert!(matches!(v.as_seq(), Some([PyValue::Int(1), PyValue::Int(32767), PyValue::Int(-1)])), "{v:?}");
    // A container that contains itself.
    assert!(err_of(b"\x80\x02]q\x00h\x00a.").contains("self-referencing"));
    // Very deep nesting.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b'(', 100_000));
    deep.extend(std::iter::repeat_n(b"l", 100_000).flatten());
    deep.push(b'.');
    assert!(err_of(&deep).contains("nested deeper"));
    // Memo key never stored, stack underflow, unknown opcode: all name the byte offset.
    let e = err_of(b"\x80\x02h\x05.");
    assert!(e.contains("legacy object pickle at byte 29") && e.contains("memo key 5"), "{e}");
    assert!(err_of(b"\x80\x02a.").contains("stack underflow"));
    assert!(err_of(b"\x80\x02\xff.").contains("unsupported pickle opcode 0xff"));
    assert!(err_of(b"\x80\x06N.").contains("protocol 6"));
    // Forbidden globals in both spellings, and REDUCE of a non-callable.
    assert!(err_of(b"\x80\x02csubprocess\nPopen\n.").contains("forbidden global subprocess.Popen"));
    assert!(err_of(b"\x80\x04\x8c\x02os\x8c\x05popen\x93.").contains("forbidden global os.popen"));
    assert!(err_of(b"\x80\x02K\x01)R.").contains("REDUCE calls a int"));
    // A tensor whose view reaches past its storage.
    let pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQ";
    let mut t = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    t.extend_from_slice(pid);
    t.extend_from_slice(b"K\x01K\x02\x85K\x01\x85\x89}tR.");
    let mut f = legacy(&t);
    let n = f.len();
    f.truncate(n - 6);
    f.extend_from_slice(b"\x80\x02]X\x01\x00\x00\x000a."); // storage keys: ["0"]
    f.extend_from_slice(&2u64.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    let e = read_pth(&f, "h.pth").unwrap_err().to_string();
    assert!(e.contains("reads past its storage of 2 elements"), "{e}");
    // An empty tensor whose other dimensions overflow usize (found by the fuzzer in .npy).
    let big = b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40";
    let size = [&b"K\x00"[..], big, big, b"\x87"].concat();
    let mut t = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    t.extend_from_slice(pid);
    t.extend_from_slice(b"K\x00");
    t.extend_from_slice(&size);
    t.extend_from_slice(b"K\x01K\x01K\x01\x87\x89}tR.");
    let mut f = legacy(&t);
    let n = f.len();
    f.truncate(n - 6);
    f.extend_from_slice(b"\x80\x02]X\x01\x00\x00\x000a.");
    f.extend_from_slice(&2u64.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    let e = read_pth(&f, "h.pth").unwrap_err().to_string();
    assert!(e.contains("is too large"), "{e}");
}
