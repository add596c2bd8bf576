//! Element types and the storage that holds them.
//!
//! f32 is the default; f64 exists for gradchecks; f16/bf16 are storage types for mixed precision
//! (compute casts to f32); i64 holds indices and u8 holds images and boolean masks.

use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    U8,
}

impl DType {
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }
    /// PyTorch's name, e.g. "float32".
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::U8 => "uint8",
        }
    }
}

/// The flat buffer behind one or more tensors (views share it).
#[derive(Clone, Debug)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::I64(_) => DType::I64,
            Storage::U8(_) => DType::U8,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::I64(v) => v.len(),
            Storage::U8(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn zeros(dtype: DType, n: usize) -> Storage {
        match dtype {
            DType::F32 => Storage::F32(vec![0.0; n]),
            DType::F64 => Storage::F64(vec![0.0; n]),
            DType::F16 => Storage::F16(vec![f16::ZERO; n]),
            DType::BF16 => Storage::BF16(vec![bf16::ZERO; n]),
            DType::I64 => Storage::I64(vec![0; n]),
            DType::U8 => Storage::U8(vec![0; n]),
        }
    }
}

/// A Rust type that can live in a [`Storage`].
pub trait Elem: Copy + Send + Sync + Default + PartialOrd + std::fmt::Debug + 'static {
    const DTYPE: DType;
    fn slice(s: &Storage) -> Option<&[Self]>;
    fn slice_mut(s: &mut Storage) -> Option<&mut Vec<Self>>;
    fn into_storage(v: Vec<Self>) -> Storage;
    fn as_f64(self) -> f64;
    fn of_f64(v: f64) -> Self;
}

macro_rules! elem {
    ($t:ty, $var:ident, $to:expr, $from:expr) => {
        impl Elem for $t {
            const DTYPE: DType = DType::$var;
            fn slice(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::$var(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut Storage) -> Option<&mut Vec<Self>> {
                match s {
                    Storage::$var(v) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(v: Vec<Self>) -> Storage {
                Storage::$var(v)
            }
            #[allow(clippy::redundant_closure_call)]
            fn as_f64(self) -> f64 {
                ($to)(self)
            }
            #[allow(clippy::redundant_closure_call)]
            fn of_f64(v: f64) -> Self {
                ($from)(v)
            }
        }
    };
}
elem!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
elem!(f64, F64, |x: f64| x, |v: f64| v);
elem!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
elem!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);
elem!(i64, I64, |x: i64| x as f64, |v: f64| v as i64);
elem!(u8, U8, |x: u8| x as f64, |v: f64| v as u8);

/// The types compute kernels run on (f32, f64).
pub trait FloatElem: Elem + cnnkit_kernels::Float {}
impl FloatElem for f32 {}
impl FloatElem for f64 {}

/// Runs `$body` with `$T` bound to the Rust type of a float compute dtype (f32 or f64);
/// returns a dtype error for anything else.
#[macro_export]
macro_rules! float_dispatch {
    ($op:expr, $dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            d => return Err($crate::Error::DType { op: $op, got: d, expected: "float32 or float64 (cast half types with to_dtype)" }),
        }
    };
}

/// Like [`float_dispatch`] but over every dtype.
#[macro_export]
macro_rules! any_dispatch {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
        }
    };
}
