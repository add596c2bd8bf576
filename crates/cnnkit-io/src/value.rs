//! `PyValue`: the Python objects a checkpoint may hold, after loading.

use cnnkit_core::Tensor;

/// A Python value read from a pickle: basic values, containers and tensors.
///
/// Dicts keep insertion order (Python dicts and `OrderedDict` both do). Tensors are plain data:
/// `requires_grad` and backward hooks stored in the file are ignored.
#[derive(Debug, Clone)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
    Tensor(Tensor),
    /// An allowed non-data global used as a value, e.g. `torch.float32`, by its dotted name.
    Global(String),
}

impl PyValue {
    /// The Python type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "None",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Bytes(_) => "bytes",
            PyValue::List(_) => "list",
            PyValue::Tuple(_) => "tuple",
            PyValue::Dict(_) => "dict",
            PyValue::Tensor(_) => "tensor",
            PyValue::Global(_) => "global",
        }
    }
    /// `self[key]` for a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        self.as_dict()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }
    pub fn as_dict(&self) -> Option<&[(PyValue, PyValue)]> {
        match self {
            PyValue::Dict(d) => Some(d),
            _ => None,
        }
    }
    /// The items of a list or tuple.
    pub fn as_seq(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(v) | PyValue::Tuple(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            PyValue::Int(v) => Some(*v),
            _ => None,
        }
    }
    /// A float, or an int widened to float (Python code mixes them freely).
    pub fn as_float(&self) -> Option<f64> {
        match self {
            PyValue::Float(v) => Some(*v),
            PyValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            PyValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            PyValue::Tensor(t) => Some(t),
            _ => None,
        }
    }
}
