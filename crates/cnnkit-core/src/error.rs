//! One typed error for the whole engine, with enough context to act on.

/// What went wrong, naming the op and the shapes (or the file and byte offset) involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {lhs:?} vs {rhs:?}")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },
    #[error("{op}: {msg} (shape {shape:?})")]
    BadShape { op: &'static str, shape: Vec<usize>, msg: String },
    #[error("{op}: dimension {dim} out of range for a {ndim}-d tensor")]
    DimOutOfRange { op: &'static str, dim: isize, ndim: usize },
    #[error("{op}: dtype {got:?} not supported here (expected {expected})")]
    DType { op: &'static str, got: crate::DType, expected: &'static str },
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    #[error("backward: {0}")]
    Backward(String),
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("state_dict: {0}")]
    StateDict(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, msg: msg.into() }
    }
    pub fn bad_shape(op: &'static str, shape: &[usize], msg: impl Into<String>) -> Self {
        Error::BadShape { op, shape: shape.to_vec(), msg: msg.into() }
    }
    pub fn mismatch(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Self {
        Error::ShapeMismatch { op, lhs: lhs.to_vec(), rhs: rhs.to_vec() }
    }
}
