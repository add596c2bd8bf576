//! TensorProto ↔ Tensor. Every ONNX integer type is read as int64 and bool/uint8 as u8 (the
//! dtypes cnnkit has); values come from raw_data (little-endian) or the typed fields.

use crate::proto::{data_type as dt, TensorProto};
use cnnkit_core::{DType, Tensor};
use half::{bf16, f16};

/// The cnnkit dtype holding ONNX element type `t`.
pub(crate) fn dtype_of(t: i32) -> Result<DType, String> {
    Ok(match t {
        dt::FLOAT => DType::F32,
        dt::DOUBLE => DType::F64,
        dt::FLOAT16 => DType::F16,
        dt::BFLOAT16 => DType::BF16,
        dt::INT8 | dt::INT16 | dt::INT32 | dt::INT64 | dt::UINT16 | dt::UINT32 | dt::UINT64 => DType::I64,
        dt::UINT8 | dt::BOOL => DType::U8,
        other => return Err(format!("unsupported tensor element type {other}")),
    })
}

fn chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// Decodes one initializer or attribute tensor. `what` names it in errors.
pub(crate) fn from_proto(t: &TensorProto, what: &str) -> Result<Tensor, String> {
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(format!("tensor '{what}' stores its data in an external file, which is not supported"));
    }
    let ty = t.data_type.unwrap_or(0);
    if ty == dt::STRING {
        return Err(format!("tensor '{what}' holds strings, which are not supported"));
    }
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut n: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| format!("tensor '{what}' has a negative dim {d}"))?;
        n = n.checked_mul(d).ok_or_else(|| format!("tensor '{what}' is too large"))?;
        shape.push(d);
    }
    let bad = |got: usize| format!("tensor '{what}' of shape {shape:?} has {got} values, expected {n}");
    let width = match ty {
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::DOUBLE | dt::INT64 | dt::UINT64 => 8,
        dt::FLOAT16 | dt::BFLOAT16 | dt::INT16 | dt::UINT16 => 2,
        dt::INT8 | dt::UINT8 | dt::BOOL => 1,
        _ => return Err(format!("tensor '{what}': {}", dtype_of(ty).err().unwrap_or_default())),
    };
    let r = match &t.raw_data {
        Some(raw) if !raw.is_empty() || n == 0 => {
            if raw.len() != n.checked_mul(width).ok_or_else(|| bad(0))? {
                return Err(bad(raw.len() / width));
            }
            match ty {
                dt::FLOAT => Tensor::from_vec(chunks::<4>(raw).map(f32::from_le_bytes).collect::<Vec<_>>(), &shape),
                dt::DOUBLE => Tensor::from_vec(chunks::<8>(raw).map(f64::from_le_bytes).collect::<Vec<_>>(), &shape),
                dt::FLOAT16 => Tensor::from_vec(chunks::<2>(raw).map(f16::from_le_bytes).collect::<Vec<_>>(), &shape),
                dt::BFLOAT16 => Tensor::from_vec(chunks::<2>(raw).map(bf16::from_le_bytes).collect::<Vec<_>>(), &shape),
                dt::INT64 => Tensor::from_vec(chunks::<8>(raw).map(i64::from_le_bytes).collect::<Vec<_>>(), &shape),
                dt::UINT64 => Tensor::from_vec(chunks::<8>(raw).map(|b| u64::from_le_bytes(b) as i64).collect::<Vec<_>>(), &shape),
                dt::INT32 => Tensor::from_vec(chunks::<4>(raw).map(|b| i32::from_le_bytes(b) as i64).collect::<Vec<_>>(), &shape),
                dt::UINT32 => Tensor::from_vec(chunks::<4>(raw).map(|b| u32::from_le_bytes(b) as i64).collect::<Vec<_>>(), &shape),
                dt::INT16 => Tensor::from_vec(chunks::<2>(raw).map(|b| i16::from_le_bytes(b) as i64).collect::<Vec<_>>(), &shape),
                dt::UINT16 => Tensor::from_vec(chunks::<2>(raw).map(|b| u16::from_le_bytes(b) as i64).collect::<Vec<_>>(), &shape),
                dt::INT8 => Tensor::from_vec(raw.iter().map(|&b| b as i8 as i64).collect::<Vec<_>>(), &shape),
                dt::BOOL => Tensor::from_vec(raw.iter().map(|&b| (b != 0) as u8).collect::<Vec<_>>(), &shape),
                _ => Tensor::from_vec(raw.clone(), &shape),
            }
        }
        _ => {
            let len = match ty {
                dt::FLOAT => t.float_data.len(),
                dt::DOUBLE => t.double_data.len(),
                dt::INT64 => t.int64_data.len(),
                dt::UINT32 | dt::UINT64 => t.uint64_data.len(),
                _ => t.int32_data.len(),
            };
            if len != n {
                return Err(bad(len));
            }
            let i32s = || t.int32_data.iter().map(|&v| v as i64).collect::<Vec<_>>();
            match ty {
                dt::FLOAT => Tensor::from_vec(t.float_data.clone(), &shape),
                dt::DOUBLE => Tensor::from_vec(t.double_data.clone(), &shape),
                dt::INT64 => Tensor::from_vec(t.int64_data.clone(), &shape),
                dt::UINT32 | dt::UINT64 => Tensor::from_vec(t.uint64_data.iter().map(|&v| v as i64).collect::<Vec<_>>(), &shape),
                // float16/bfloat16 values are stored as their bit patterns in int32_data.
                dt::FLOAT16 => Tensor::from_vec(t.int32_data.iter().map(|&v| f16::from_bits(v as u16)).collect::<Vec<_>>(), &shape),
                dt::BFLOAT16 => Tensor::from_vec(t.int32_data.iter().map(|&v| bf16::from_bits(v as u16)).collect::<Vec<_>>(), &shape),
                dt::UINT8 | dt::BOOL => Tensor::from_vec(t.int32_data.iter().map(|&v| v as u8).collect::<Vec<_>>(), &shape),
                _ => Tensor::from_vec(i32s(), &shape),
            }
        }
    };
    r.map_err(|e| format!("tensor '{what}': {e}"))
}

/// Encodes a tensor as raw little-endian data (u8 as UINT8, or BOOL when `as_bool`).
pub(crate) fn to_proto(name: &str, t: &Tensor, as_bool: bool) -> Result<TensorProto, String> {
    let e = |e: cnnkit_core::Error| format!("tensor '{name}': {e}");
    let (ty, raw): (i32, Vec<u8>) = match t.dtype() {
        DType::F32 => (dt::FLOAT, t.to_vec::<f32>().map_err(e)?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::F64 => (dt::DOUBLE, t.to_vec::<f64>().map_err(e)?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::F16 => (dt::FLOAT16, t.to_vec::<f16>().map_err(e)?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::BF16 => (dt::BFLOAT16, t.to_vec::<bf16>().map_err(e)?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::I64 => (dt::INT64, t.to_vec::<i64>().map_err(e)?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::U8 => (if as_bool { dt::BOOL } else { dt::UINT8 }, t.to_vec::<u8>().map_err(e)?),
    };
    Ok(TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(ty),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..Default::default()
    })
}

/// The ONNX element type of a cnnkit dtype.
pub(crate) fn onnx_type(d: DType) -> i32 {
    match d {
        DType::F32 => dt::FLOAT,
        DType::F64 => dt::DOUBLE,
        DType::F16 => dt::FLOAT16,
        DType::BF16 => dt::BFLOAT16,
        DType::I64 => dt::INT64,
        DType::U8 => dt::BOOL,
    }
}
