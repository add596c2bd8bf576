//! PyTorch `.pth` / `.pt` files (`torch.save`), read like `torch.load(weights_only=True)`:
//! the zip layout of torch >= 1.6 and the older "legacy" stream layout, without Python and
//! without executing anything from the file (see `pickle.rs`).

use crate::pickle::{unpickle, Obj, Pickled, StorageDType, TensorRef};
use crate::value::PyValue;
use cnnkit_core::{DType, Error, Result, Tensor};
use cnnkit_nn::serialize::{parse_safetensors, save_safetensors, tensor_from_bytes};
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;

/// `pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)`: the first bytes of a legacy torch.save.
const LEGACY_MAGIC: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;
/// Largest `data.pkl` accepted; real ones are kilobytes even for big models.
const MAX_PICKLE_BYTES: u64 = 1 << 30;
/// A tensor may view fewer stored elements than it has (stride 0, from `expand`), but not
/// arbitrarily many more: this many elements at most beyond its storage.
const MAX_EXPANDED_ELEMENTS: u64 = 1 << 24;
/// Keys under which training scripts commonly nest the model's state_dict, in search order.
const STATE_DICT_KEYS: [&str; 5] = ["state_dict", "model_state_dict", "model", "net", "state_dict_ema"];

fn file_err(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::File { path: name.to_string(), msg: msg.to_string() }
}

/// Reads a `.pth` / `.pt` file into Python-like values. Refuses any pickle global other than the
/// few that rebuild tensors and dicts; nothing from the file is executed.
pub fn load_pth(path: &Path) -> Result<PyValue> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| file_err(&name, format!("cannot read: {e}")))?;
    read_pth(&bytes, &name)
}

/// [`load_pth`] on bytes already in memory; `name` is used in error messages.
pub fn read_pth(bytes: &[u8], name: &str) -> Result<PyValue> {
    if bytes.starts_with(b"PK") {
        read_zip(bytes, name)
    } else if bytes.starts_with(&LEGACY_MAGIC) {
        read_legacy(bytes, name)
    } else {
        Err(file_err(name, format!("not a PyTorch file: {}", describe_start(bytes))))
    }
}

/// What the first bytes look like, to make "wrong file" errors actionable.
fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "the file is empty".into();
    }
    if bytes.starts_with(b"\x93NUMPY") {
        return "it is a numpy .npy file".into();
    }
    if is_safetensors(bytes) {
        return "it is a safetensors file".into();
    }
    if bytes[0] == 0x80 {
        return "a bare pickle without torch.save's header (only torch.save files are read)".into();
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("expected a zip archive (\"PK\") or a legacy torch.save header, found bytes {}", head.join(" "))
}

fn is_safetensors(bytes: &[u8]) -> bool {
    match bytes.get(..8) {
        Some(h) => {
            let n = u64::from_le_bytes(h.try_into().unwrap_or([0; 8]));
            bytes.get(8) == Some(&b'{') && n >= 2 && n <= (bytes.len() as u64).saturating_sub(8)
        }
        None => false,
    }
}

fn read_entry(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, entry: &str, name: &str, expect: Option<u64>) -> Result<Vec<u8>> {
    let f = zip.by_name(entry).map_err(|e| file_err(name, format!("zip entry {entry}: {e}")))?;
    let size = f.size();
    if let Some(want) = expect {
        if size != want {
            return Err(file_err(name, format!("zip entry {entry} holds {size} bytes, the pickle says {want}")));
        }
    } else if size > MAX_PICKLE_BYTES {
        return Err(file_err(name, format!("zip entry {entry} is {size} bytes, too large")));
    }
    // Capacity is capped: the declared size is untrusted until the bytes are actually there.
    let mut out = Vec::with_capacity(size.min(1 << 26) as usize);
    f.take(size).read_to_end(&mut out).map_err(|e| file_err(name, format!("zip entry {entry}: {e}")))?;
    if out.len() as u64 != size {
        return Err(file_err(name, format!("zip entry {entry} is truncated: {} of {size} bytes", out.len())));
    }
    Ok(out)
}

fn read_zip(bytes: &[u8], name: &str) -> Result<PyValue> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| file_err(name, format!("not a readable zip archive: {e}")))?;
    let entries: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    // torch.save writes `<prefix>/data.pkl`; the prefix is any single directory name.
    let pkls: Vec<&String> = entries.iter().filter(|e| e.ends_with("/data.pkl") && e.matches('/').count() == 1).collect();
    let pkl = match pkls.as_slice() {
        [one] => one.as_str(),
        [] if entries.iter().any(|e| e.contains("/code/") || e.ends_with("/constants.pkl")) => {
            return Err(file_err(name, "a TorchScript archive (torch.jit.save); save the model's state_dict with torch.save instead"))
        }
        [] => return Err(file_err(name, "zip archive without <dir>/data.pkl: not written by torch.save")),
        _ => return Err(file_err(name, format!("zip archive with {} data.pkl entries", pkls.len()))),
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let byteorder = format!("{prefix}byteorder");
    if entries.contains(&byteorder) {
        let order = read_entry(&mut zip, &byteorder, name, None)?;
        if order.trim_ascii() != b"little" {
            return Err(file_err(
                name,
                format!("byteorder is {:?}; only little-endian files are supported", String::from_utf8_lossy(&order)),
            ));
        }
    }
    let data = read_entry(&mut zip, pkl, name, None)?;
    let (pickled, _) = unpickle(&data, 0, name, pkl)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensor = |t: &TensorRef| -> std::result::Result<Tensor, String> {
        let s = &t.storage;
        if !storages.contains_key(&s.key) {
            let nbytes = s.numel.checked_mul(s.dtype.size() as u64).ok_or("storage size overflows")?;
            let b = read_entry(&mut zip, &format!("{prefix}data/{}", s.key), name, Some(nbytes)).map_err(|e| strip_path(e, name))?;
            storages.insert(s.key.clone(), b);
        }
        let b = storages.get(&s.key).ok_or("storage vanished")?;
        materialize(t, b)
    };
    to_value(&pickled, pickled.root, &mut tensor, name)
}

/// The message of a File error for `name`, so closures can return plain strings.
fn strip_path(e: Error, name: &str) -> String {
    match e {
        Error::File { path, msg } if path == name => msg,
        other => other.to_string(),
    }
}

fn to_value(
    p: &Pickled,
    root: Obj,
    tensor: &mut dyn FnMut(&TensorRef) -> std::result::Result<Tensor, String>,
    name: &str,
) -> Result<PyValue> {
    p.to_value(root, tensor).map_err(|m| file_err(name, m))
}

fn read_legacy(bytes: &[u8], name: &str) -> Result<PyValue> {
    let (proto, pos) = unpickle(bytes, LEGACY_MAGIC.len(), name, "legacy header")?;
    let none = &mut |_: &TensorRef| Err::<Tensor, String>("tensor in the header".into());
    match to_value(&proto, proto.root, none, name)? {
        PyValue::Int(LEGACY_PROTOCOL_VERSION) => {}
        other => return Err(file_err(name, format!("legacy torch.save protocol version {other:?}, expected {LEGACY_PROTOCOL_VERSION}"))),
    }
    let (sys, pos) = unpickle(bytes, pos, name, "legacy sys_info")?;
    let sys = to_value(&sys, sys.root, none, name)?;
    if sys.get("little_endian").and_then(PyValue::as_bool) == Some(false) {
        return Err(file_err(name, "written on a big-endian machine; only little-endian files are supported"));
    }
    let (obj, pos) = unpickle(bytes, pos, name, "legacy object pickle")?;
    let (keys, mut pos) = unpickle(bytes, pos, name, "legacy storage key list")?;
    let keys = to_value(&keys, keys.root, none, name)?;
    let keys = keys.as_seq().ok_or_else(|| file_err(name, format!("legacy storage key list is a {}", keys.type_name())))?;
    let dtypes: HashMap<&str, (StorageDType, u64)> = obj.storages().map(|s| (s.key.as_str(), (s.dtype, s.numel))).collect();
    // Each storage follows in key order: u64 little-endian element count, then the raw bytes.
    let mut sections: HashMap<String, &[u8]> = HashMap::new();
    for k in keys {
        let k = k.as_str().ok_or_else(|| file_err(name, format!("legacy storage key is a {}", k.type_name())))?;
        let &(dtype, numel) = dtypes.get(k).ok_or_else(|| file_err(name, format!("storage {k} is listed but never used")))?;
        let head = bytes.get(pos..pos + 8).ok_or_else(|| file_err(name, format!("truncated at byte {pos}: storage {k} header")))?;
        let count = u64::from_le_bytes(head.try_into().unwrap_or([0; 8]));
        if count != numel {
            return Err(file_err(name, format!("byte {pos}: storage {k} holds {count} elements, the pickle says {numel}")));
        }
        let start = pos + 8;
        let len = count.checked_mul(dtype.size() as u64).and_then(|n| usize::try_from(n).ok());
        let data = len.and_then(|n| bytes.get(start..start.checked_add(n)?));
        let data = data.ok_or_else(|| file_err(name, format!("truncated at byte {start}: storage {k} needs {count} elements")))?;
        sections.insert(k.to_string(), data);
        pos = start + data.len();
    }
    let mut tensor = |t: &TensorRef| -> std::result::Result<Tensor, String> {
        let b = sections.get(&t.storage.key).ok_or_else(|| format!("storage {} is not in the file", t.storage.key))?;
        materialize(t, b)
    };
    to_value(&obj, obj.root, &mut tensor, name)
}

/// Copies the elements a tensor views out of its storage into a contiguous cnnkit tensor,
/// converting dtypes cnnkit does not have (int32/16/8 → i64, bool → u8).
fn materialize(t: &TensorRef, storage: &[u8]) -> std::result::Result<Tensor, String> {
    let el = t.storage.dtype.size();
    let stored = (storage.len() / el) as u64;
    let numel = t.size.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).ok_or("tensor size overflows")?;
    if numel > 0 {
        let last = t.size.iter().zip(&t.stride).try_fold(t.offset, |acc, (&d, &s)| acc.checked_add((d - 1).checked_mul(s)?));
        match last {
            Some(l) if l < stored => {}
            _ => {
                return Err(format!(
                    "tensor of size {:?}, stride {:?}, offset {} reads past its storage of {stored} elements",
                    t.size, t.stride, t.offset
                ))
            }
        }
        if numel > stored.max(MAX_EXPANDED_ELEMENTS) {
            return Err(format!("tensor of {numel} elements views only {stored} stored elements"));
        }
    }
    let shape: Vec<usize> = t.size.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    if !crate::shape_fits(&shape) {
        return Err(format!("tensor size {:?} is too large", t.size));
    }
    let n = numel as usize;
    let mut out = Vec::with_capacity(n * el);
    let contiguous = {
        let mut expect = 1u64;
        t.size.iter().zip(&t.stride).rev().all(|(&d, &s)| {
            let ok = d <= 1 || s == expect;
            expect = expect.saturating_mul(d);
            ok
        })
    };
    if n == 0 {
    } else if contiguous {
        let start = t.offset as usize * el;
        out.extend_from_slice(&storage[start..start + n * el]);
    } else {
        // Odometer over the index space; every address was bounds-checked above.
        let mut idx = vec![0u64; shape.len()];
        for _ in 0..n {
            let off = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
            let b = off as usize * el;
            out.extend_from_slice(&storage[b..b + el]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    let widen = |bytes: &[u8], w: usize| -> Vec<u8> {
        bytes
            .chunks_exact(w)
            .flat_map(|c| {
                let mut v = [if c[w - 1] & 0x80 != 0 { 0xff } else { 0 }; 8];
                v[..w].copy_from_slice(c);
                v
            })
            .collect()
    };
    let made = match t.storage.dtype {
        StorageDType::F32 => tensor_from_bytes(DType::F32, &shape, &out),
        StorageDType::F64 => tensor_from_bytes(DType::F64, &shape, &out),
        StorageDType::F16 => tensor_from_bytes(DType::F16, &shape, &out),
        StorageDType::BF16 => tensor_from_bytes(DType::BF16, &shape, &out),
        StorageDType::I64 => tensor_from_bytes(DType::I64, &shape, &out),
        StorageDType::U8 => tensor_from_bytes(DType::U8, &shape, &out),
        StorageDType::I32 | StorageDType::I16 | StorageDType::I8 => tensor_from_bytes(DType::I64, &shape, &widen(&out, el)),
        StorageDType::Bool => tensor_from_bytes(DType::U8, &shape, &out.iter().map(|&b| u8::from(b != 0)).collect::<Vec<_>>()),
    };
    made.map_err(|e| e.to_string())
}

/// Reads a `.pth` file and returns its model weights: the file's top-level dict if all its values
/// are tensors, else the first of `state_dict`, `model_state_dict`, `model`, `net`,
/// `state_dict_ema` that is a dict of tensors. A `module.` prefix on every key (from
/// `nn.DataParallel`) is removed.
pub fn load_pth_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let name = path.display().to_string();
    let v = load_pth(path)?;
    state_dict_of(&v, &name)
}

fn tensor_dict(d: &[(PyValue, PyValue)]) -> Option<BTreeMap<String, Tensor>> {
    d.iter().map(|(k, v)| Some((k.as_str()?.to_string(), v.as_tensor()?.clone()))).collect()
}

fn state_dict_of(v: &PyValue, name: &str) -> Result<BTreeMap<String, Tensor>> {
    let top = v.as_dict().ok_or_else(|| file_err(name, format!("holds a {}, not a dict of tensors", v.type_name())))?;
    let found = tensor_dict(top).or_else(|| STATE_DICT_KEYS.iter().find_map(|k| tensor_dict(v.get(k)?.as_dict()?)));
    let Some(sd) = found else {
        let keys: Vec<String> = top
            .iter()
            .take(20)
            .map(|(k, v)| match k {
                PyValue::Str(s) => format!("{s:?} ({})", v.type_name()),
                other => format!("<{}>", other.type_name()),
            })
            .collect();
        return Err(file_err(
            name,
            format!("no dict of tensors found at the top level or under {STATE_DICT_KEYS:?}; top-level keys: [{}]", keys.join(", ")),
        ));
    };
    if !sd.is_empty() && sd.keys().all(|k| k.starts_with("module.")) {
        return Ok(sd.into_iter().map(|(k, t)| (k["module.".len()..].to_string(), t)).collect());
    }
    Ok(sd)
}

/// Reads model weights from a `.pth`/`.pt` (zip or legacy) or `.safetensors` file, chosen by
/// content rather than extension.
pub fn load_state_dict_file(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| file_err(&name, format!("cannot read: {e}")))?;
    if bytes.starts_with(b"PK") || bytes.starts_with(&LEGACY_MAGIC) {
        state_dict_of(&read_pth(&bytes, &name)?, &name)
    } else if is_safetensors(&bytes) {
        parse_safetensors(&bytes).map(|(t, _)| t).map_err(|m| file_err(&name, m))
    } else {
        Err(file_err(&name, format!("not a weights file (.pth, .pt or .safetensors): {}", describe_start(&bytes))))
    }
}

/// Converts the weights in `input` (any format [`load_state_dict_file`] reads) to a safetensors
/// file at `output`, written atomically. Returns the number of tensors written.
pub fn convert_to_safetensors(input: &Path, output: &Path) -> Result<usize> {
    let sd = load_state_dict_file(input)?;
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(output, &sd, &meta)?;
    Ok(sd.len())
}
