//! safetensors read/write for named tensors (state_dicts, checkpoints, test fixtures).
//! Writes go to a temporary file that is renamed into place, so a crash never leaves a
//! half-written file.

use cnnkit_core::{DType, Error, Result, Tensor};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use std::collections::BTreeMap;
use std::path::Path;

fn file_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::File { path: path.display().to_string(), msg: msg.to_string() }
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::I64 => StDtype::I64,
        DType::U8 => StDtype::U8,
    }
}

/// Little-endian bytes of a tensor's elements in row-major order.
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::F32 => t.to_vec::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => t.to_vec::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => t.to_vec::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U8 => t.to_vec::<u8>()?,
    })
}

/// Builds a tensor from little-endian bytes.
pub fn tensor_from_bytes(dtype: DType, shape: &[usize], b: &[u8]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if b.len() != n * dtype.size_in_bytes() {
        return Err(Error::bad_shape("tensor_from_bytes", shape, format!("{} bytes for {n} {} elements", b.len(), dtype.name())));
    }
    match dtype {
        DType::F32 => Tensor::from_vec(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(), shape),
        DType::F64 => {
            Tensor::from_vec(b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect::<Vec<_>>(), shape)
        }
        DType::F16 => Tensor::from_vec(b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(), shape),
        DType::BF16 => Tensor::from_vec(b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(), shape),
        DType::I64 => {
            Tensor::from_vec(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect::<Vec<_>>(), shape)
        }
        DType::U8 => Tensor::from_vec(b.to_vec(), shape),
    }
}

/// Reads every tensor of a safetensors file.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let (tensors, _) = parse_safetensors(&bytes).map_err(|e| file_err(path, e))?;
    Ok(tensors)
}

/// Named tensors and string metadata, as stored in a safetensors file.
pub type TensorsAndMetadata = (BTreeMap<String, Tensor>, BTreeMap<String, String>);

/// Parses safetensors bytes: (tensors, metadata).
pub fn parse_safetensors(bytes: &[u8]) -> std::result::Result<TensorsAndMetadata, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F64 => DType::F64,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::I64 => DType::I64,
            StDtype::U8 | StDtype::BOOL => DType::U8,
            other => return Err(format!("tensor {name}: unsupported dtype {other:?}")),
        };
        let t = tensor_from_bytes(dtype, view.shape(), view.data()).map_err(|e| format!("tensor {name}: {e}"))?;
        out.insert(name, t);
    }
    let meta = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| e.to_string())?
        .1
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok((out, meta))
}

/// Writes named tensors (plus string metadata) atomically: temp file, then rename.
pub fn save_safetensors(path: impl AsRef<Path>, tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> Result<()> {
    let path = path.as_ref();
    let bytes: Vec<(String, Vec<u8>, DType, Vec<usize>)> =
        tensors.iter().map(|(k, t)| Ok((k.clone(), tensor_bytes(t)?, t.dtype(), t.shape().to_vec()))).collect::<Result<_>>()?;
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, b, d, s)| TensorView::new(st_dtype(*d), s.clone(), b).map(|v| (k.clone(), v)).map_err(|e| file_err(path, e)))
        .collect::<Result<_>>()?;
    let meta: std::collections::HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let data = safetensors::serialize(views, &Some(meta)).map_err(|e| file_err(path, e))?;
    write_atomic(path, &data)
}

/// Writes `data` to `path` through a temporary sibling file and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| file_err(path, "not a file path"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, data).map_err(|e| file_err(path, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(path, format!("cannot rename into place: {e}"))
    })
}
