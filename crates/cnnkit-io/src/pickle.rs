//! A restricted pickle reader for the pickles `torch.save` writes (protocols 2–5).
//!
//! Nothing in a pickle is ever called. GLOBAL / STACK_GLOBAL are resolved against a short
//! allow-list ([`resolve_global`]); REDUCE, NEWOBJ and BUILD are interpreted only for those
//! entries, by Rust code that rebuilds dicts and tensor descriptions. Any other global is refused
//! by name, which is what stops the classic `os.system` + REDUCE payload.
//!
//! Objects live in an arena (`nodes`) and the stack/memo hold small handles (`Obj`), so a memo
//! reference is cheap to copy, a container filled after it was memoized is seen filled by every
//! reference (as in Python), and self-referencing containers cannot leak memory; they are
//! rejected later by the depth limit of the conversion to `PyValue`.

use crate::value::PyValue;
use cnnkit_core::{Error, Result};
use std::collections::HashMap;

/// Bounds that keep a hostile pickle from exhausting memory or the native stack.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;
const MAX_NODES: usize = 1 << 24;
/// Nesting depth of the converted value; deeper (or cyclic) structures are refused.
const MAX_DEPTH: usize = 256;
/// Total values produced by a conversion, so shared sub-objects cannot blow up exponentially.
const MAX_VALUES: usize = 1 << 24;
const MAX_DIMS: usize = 64;

/// Element types of torch storages (`torch.FloatStorage`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageDType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDType {
    pub(crate) fn size(self) -> usize {
        match self {
            StorageDType::F64 | StorageDType::I64 => 8,
            StorageDType::F32 | StorageDType::I32 => 4,
            StorageDType::F16 | StorageDType::BF16 | StorageDType::I16 => 2,
            StorageDType::I8 | StorageDType::U8 | StorageDType::Bool => 1,
        }
    }
}

/// The globals a torch checkpoint may name. Everything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    Storage(StorageDType),
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`: the type argument of `_rebuild_from_type_v2`.
    TensorClass,
    Size,
    Device,
    /// `_codecs.encode`: how protocol 2 pickles `bytes` objects.
    CodecsEncode,
    /// A dtype object such as `torch.float32`, kept as its dotted name.
    TorchDType(&'static str),
}

const TORCH_DTYPES: &[&str] = &[
    "float32",
    "float",
    "float64",
    "double",
    "float16",
    "half",
    "bfloat16",
    "int64",
    "long",
    "int32",
    "int",
    "int16",
    "short",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
];

/// The allow-list: (module, name) → what the reader knows how to rebuild.
pub(crate) fn resolve_global(module: &str, name: &str) -> Option<Global> {
    let storage = |d| Some(Global::Storage(d));
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        ("torch._tensor", "_rebuild_from_type_v2") => Some(Global::RebuildFromTypeV2),
        ("torch", "FloatStorage") => storage(StorageDType::F32),
        ("torch", "DoubleStorage") => storage(StorageDType::F64),
        ("torch", "HalfStorage") => storage(StorageDType::F16),
        ("torch", "BFloat16Storage") => storage(StorageDType::BF16),
        ("torch", "LongStorage") => storage(StorageDType::I64),
        ("torch", "IntStorage") => storage(StorageDType::I32),
        ("torch", "ShortStorage") => storage(StorageDType::I16),
        ("torch", "CharStorage") => storage(StorageDType::I8),
        ("torch", "ByteStorage") | ("torch", "UntypedStorage") => storage(StorageDType::U8),
        ("torch", "BoolStorage") => storage(StorageDType::Bool),
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Some(Global::TensorClass),
        ("torch", "Size") => Some(Global::Size),
        ("torch", "device") => Some(Global::Device),
        ("_codecs", "encode") => Some(Global::CodecsEncode),
        ("torch", d) => TORCH_DTYPES.iter().find(|&&n| n == d).map(|&n| Global::TorchDType(n)),
        _ => None,
    }
}

/// A persistent id `('storage', type, key, location, numel)`.
#[derive(Clone, Debug)]
pub(crate) struct StorageRef {
    pub key: String,
    pub dtype: StorageDType,
    pub numel: u64,
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`, before the storage bytes are read.
#[derive(Clone, Debug)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A handle on the stack or in the memo: scalars inline, everything else an arena index.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ref(usize),
}

#[derive(Debug)]
pub(crate) enum Node {
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Obj>),
    Tuple(Vec<Obj>),
    Dict(Vec<(Obj, Obj)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::List(_) => "list",
            Node::Tuple(_) => "tuple",
            Node::Dict(_) => "dict",
            Node::Global(_) => "global",
            Node::Storage(_) => "storage",
            Node::Tensor(_) => "tensor",
        }
    }
}

/// The result of one pickle: the arena and the root object.
pub(crate) struct Pickled {
    nodes: Vec<Node>,
    pub root: Obj,
}

/// Reads one pickle from `data[start..]`, returning it and the offset just past its STOP.
/// `file` and `what` name the file and the part of it (for example "archive/data.pkl") in errors.
pub(crate) fn unpickle(data: &[u8], start: usize, file: &str, what: &str) -> Result<(Pickled, usize)> {
    let mut u = Unpickler { data, pos: start, file, what, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), nodes: Vec::new() };
    let root = u.run()?;
    Ok((Pickled { nodes: u.nodes, root }, u.pos))
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a str,
    what: &'a str,
    stack: Vec<Obj>,
    marks: Vec<usize>,
    memo: HashMap<u32, Obj>,
    nodes: Vec<Node>,
}

impl<'a> Unpickler<'a> {
    fn err(&self, at: usize, msg: impl std::fmt::Display) -> Error {
        Error::File { path: self.file.to_string(), msg: format!("{} at byte {at}: {msg}", self.what) }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let at = self.pos;
        let left = self.data.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                self.pos += n;
                let data: &'a [u8] = self.data;
                Ok(&data[at..at + n])
            }
            _ => Err(self.err(at, format!("truncated: needs {n} more bytes, {left} left"))),
        }
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let at = self.pos;
        let s = self.take(N as u64)?;
        s.try_into().map_err(|_| self.err(at, "truncated"))
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.arr::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// A text line ending in '\n' (the arguments of GLOBAL), without the newline.
    fn line(&mut self) -> Result<String> {
        let at = self.pos;
        let rest = &self.data[self.pos..];
        let end = rest.iter().take(1024).position(|&b| b == b'\n').ok_or_else(|| self.err(at, "unterminated text argument"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn alloc(&mut self, at: usize, n: Node) -> Result<Obj> {
        if self.nodes.len() >= MAX_NODES {
            return Err(self.err(at, "too many objects"));
        }
        self.nodes.push(n);
        Ok(Obj::Ref(self.nodes.len() - 1))
    }
    fn push(&mut self, at: usize, o: Obj) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(at, "stack too deep"));
        }
        self.stack.push(o);
        Ok(())
    }
    fn push_node(&mut self, at: usize, n: Node) -> Result<()> {
        let o = self.alloc(at, n)?;
        self.push(at, o)
    }
    fn pop(&mut self, at: usize) -> Result<Obj> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(at, "stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err(at, "stack underflow"))
    }
    fn top(&self, at: usize) -> Result<Obj> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(&o) if self.stack.len() > floor => Ok(o),
            _ => Err(self.err(at, "stack underflow")),
        }
    }
    fn pop_mark(&mut self, at: usize) -> Result<Vec<Obj>> {
        let m = self.marks.pop().ok_or_else(|| self.err(at, "no MARK on the stack"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }
    fn node(&self, o: Obj) -> Option<&Node> {
        match o {
            Obj::Ref(i) => self.nodes.get(i),
            _ => None,
        }
    }
    fn kind(&self, o: Obj) -> &'static str {
        match o {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::Float(_) => "float",
            Obj::Ref(_) => self.node(o).map_or("?", Node::kind),
        }
    }
    fn str_of(&self, o: Obj) -> Option<&str> {
        match self.node(o) {
            Some(Node::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn seq_of(&self, o: Obj) -> Option<&[Obj]> {
        match self.node(o) {
            Some(Node::Tuple(v)) | Some(Node::List(v)) => Some(v),
            _ => None,
        }
    }
    fn ints_of(&self, at: usize, o: Obj, what: &str) -> Result<Vec<u64>> {
        let items = self.seq_of(o).ok_or_else(|| self.err(at, format!("tensor {what} is a {}, not a tuple", self.kind(o))))?;
        if items.len() > MAX_DIMS {
            return Err(self.err(at, format!("tensor with {} dimensions", items.len())));
        }
        items
            .iter()
            .map(|&i| match i {
                Obj::Int(v) if v >= 0 => Ok(v as u64),
                other => Err(self.err(at, format!("tensor {what} holds {} {other:?}, not a non-negative int", self.kind(other)))),
            })
            .collect()
    }
    fn str_node(&self, bytes: &[u8], at: usize) -> Result<Node> {
        std::str::from_utf8(bytes).map(|s| Node::Str(s.to_string())).map_err(|_| self.err(at, "string is not valid UTF-8"))
    }
    fn memo_put(&mut self, at: usize, idx: u32) -> Result<()> {
        let top = self.top(at)?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(self.err(at, "memo too large"));
        }
        self.memo.insert(idx, top);
        Ok(())
    }
    fn memo_get(&mut self, at: usize, idx: u32) -> Result<()> {
        let o = *self.memo.get(&idx).ok_or_else(|| self.err(at, format!("memo key {idx} was never stored")))?;
        self.push(at, o)
    }
    fn global(&mut self, at: usize, module: &str, name: &str) -> Result<()> {
        match resolve_global(module, name) {
            Some(g) => self.push_node(at, Node::Global(g)),
            None => {
                // Long or binary names are cut so the message stays readable.
                let full: String = format!("{module}.{name}").chars().take(200).collect();
                Err(Error::File {
                    path: self.file.to_string(),
                    msg: format!("pickle refers to forbidden global {full} (only tensors, dicts and basic values are allowed)"),
                })
            }
        }
    }
    fn with_node_mut<R>(&mut self, at: usize, o: Obj, f: impl FnOnce(&mut Node) -> Option<R>) -> Result<R> {
        let kind = self.kind(o);
        let r = match o {
            Obj::Ref(i) => self.nodes.get_mut(i).and_then(f),
            _ => None,
        };
        r.ok_or_else(|| self.err(at, format!("cannot add items to a {kind}")))
    }
    fn dict_extend(&mut self, at: usize, d: Obj, items: Vec<Obj>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err(at, "odd number of items for a dict"));
        }
        let pairs: Vec<(Obj, Obj)> = items.chunks_exact(2).map(|c| (c[0], c[1])).collect();
        self.with_node_mut(at, d, |n| match n {
            Node::Dict(v) => {
                v.extend(pairs);
                Some(())
            }
            _ => None,
        })
    }
    fn list_extend(&mut self, at: usize, l: Obj, items: Vec<Obj>) -> Result<()> {
        self.with_node_mut(at, l, |n| match n {
            Node::List(v) => {
                v.extend(items);
                Some(())
            }
            _ => None,
        })
    }

    fn run(&mut self) -> Result<Obj> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(at, format!("pickle protocol {p} is newer than 5")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only.
                }
                b'}' => self.push_node(at, Node::Dict(Vec::new()))?,
                b']' => self.push_node(at, Node::List(Vec::new()))?,
                b')' => self.push_node(at, Node::Tuple(Vec::new()))?,
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(self.err(at, "too many MARKs"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.push(at, Obj::Int(v.into()))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(at, Obj::Int(v.into()))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.push(at, Obj::Int(v.into()))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { u64::from(self.u8()?) } else { u64::from(self.u32()?) };
                    let b = self.take(n)?;
                    if b.len() > 8 {
                        return Err(self.err(at, format!("integer of {} bytes does not fit in 64 bits", b.len())));
                    }
                    // Two's complement little-endian, sign-extended from its top byte.
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 };
                    let mut w = [fill; 8];
                    w[..b.len()].copy_from_slice(b);
                    self.push(at, Obj::Int(i64::from_le_bytes(w)))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.push(at, Obj::Float(v))?
                }
                b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                    let n = match op {
                        0x8c | b'U' => u64::from(self.u8()?),
                        0x8d => self.u64()?,
                        _ => u64::from(self.u32()?),
                    };
                    let b = self.take(n)?;
                    // Python 2 strings (BINSTRING) are text when they decode, bytes otherwise.
                    let node = match std::str::from_utf8(b) {
                        Ok(s) => Node::Str(s.to_string()),
                        Err(_) if matches!(op, b'T' | b'U') => Node::Bytes(b.to_vec()),
                        Err(_) => self.str_node(b, at)?,
                    };
                    self.push_node(at, node)?
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => u64::from(self.u8()?),
                        b'B' => u64::from(self.u32()?),
                        _ => self.u64()?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push_node(at, Node::Bytes(b))?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    self.push_node(at, Node::Tuple(items))?
                }
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push_node(at, Node::Tuple(items))?
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    self.push_node(at, Node::List(items))?
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let d = self.alloc(at, Node::Dict(Vec::new()))?;
                    self.dict_extend(at, d, items)?;
                    self.push(at, d)?
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let d = self.top(at)?;
                    self.dict_extend(at, d, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let d = self.top(at)?;
                    self.dict_extend(at, d, items)?
                }
                b'a' => {
                    let v = self.pop(at)?;
                    let l = self.top(at)?;
                    self.list_extend(at, l, vec![v])?
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark(at)?;
                    let l = self.top(at)?;
                    self.list_extend(at, l, items)?
                }
                // Sets only appear in exotic checkpoints; they are read as lists.
                0x8f => self.push_node(at, Node::List(Vec::new()))?,
                0x91 => {
                    let items = self.pop_mark(at)?;
                    self.push_node(at, Node::List(items))?
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(at, i.into())?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(at, i)?
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err(at, "memo too large"))?;
                    self.memo_put(at, i)?
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(at, i.into())?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(at, i)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(at, &module, &name)?
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else {
                        return Err(self.err(at, "STACK_GLOBAL needs two strings"));
                    };
                    let (m, n) = (m.to_string(), n.to_string());
                    self.global(at, &m, &n)?
                }
                b'R' => {
                    let args = self.pop(at)?;
                    let f = self.pop(at)?;
                    let r = self.reduce(at, f, args, true)?;
                    self.push(at, r)?
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop(at)?; // NEWOBJ_EX keyword arguments: none of the allowed classes take any.
                    }
                    let _args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    match self.node(cls) {
                        Some(Node::Global(Global::OrderedDict)) => self.push_node(at, Node::Dict(Vec::new()))?,
                        _ => return Err(self.err(at, format!("NEWOBJ of a {} is not supported", self.kind(cls)))),
                    }
                }
                b'b' => {
                    // BUILD sets attributes (an OrderedDict's `_metadata`, a tensor subclass's
                    // __dict__); none of them matter for the data, so the state is dropped.
                    let _state = self.pop(at)?;
                    let o = self.top(at)?;
                    if !matches!(self.node(o), Some(Node::Dict(_)) | Some(Node::Tensor(_))) {
                        return Err(self.err(at, format!("BUILD on a {} is not supported", self.kind(o))));
                    }
                }
                b'Q' => {
                    let pid = self.pop(at)?;
                    let s = self.persistent(at, pid)?;
                    self.push_node(at, Node::Storage(s))?
                }
                b'N' => self.push(at, Obj::None)?,
                0x88 => self.push(at, Obj::Bool(true))?,
                0x89 => self.push(at, Obj::Bool(false))?,
                b'0' => {
                    self.pop(at)?;
                }
                b'1' => {
                    let o = self.top(at)?;
                    self.push(at, o)?
                }
                b'2' => {
                    self.pop_mark(at)?;
                }
                b'.' => return self.pop(at),
                _ => return Err(self.err(at, format!("unsupported pickle opcode 0x{op:02x}"))),
            }
        }
    }

    /// Interprets a persistent id `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn persistent(&self, at: usize, pid: Obj) -> Result<StorageRef> {
        let bad = |why: &str| self.err(at, format!("persistent id {why}"));
        let items = self.seq_of(pid).ok_or_else(|| bad("is not a tuple"))?;
        if !(5..=6).contains(&items.len()) || self.str_of(items[0]) != Some("storage") {
            return Err(bad("is not ('storage', type, key, location, numel)"));
        }
        let dtype = match self.node(items[1]) {
            Some(Node::Global(Global::Storage(d))) => *d,
            _ => return Err(bad("does not name a storage type")),
        };
        let key = match items[2] {
            Obj::Int(i) => i.to_string(),
            o => self.str_of(o).ok_or_else(|| bad("key is not a string"))?.to_string(),
        };
        let numel = match items[4] {
            Obj::Int(n) if n >= 0 => n as u64,
            _ => return Err(bad("element count is not a non-negative int")),
        };
        if items.len() == 6 && !matches!(items[5], Obj::None) {
            return Err(bad("describes a storage view (torch < 0.4 files are not supported)"));
        }
        Ok(StorageRef { key, dtype, numel })
    }

    /// Calls one allowed global on `args`; `outer` is false inside `_rebuild_from_type_v2`, which
    /// may not nest.
    fn reduce(&mut self, at: usize, f: Obj, args: Obj, outer: bool) -> Result<Obj> {
        let g = match self.node(f) {
            Some(Node::Global(g)) => *g,
            _ => return Err(self.err(at, format!("REDUCE calls a {}, not an allowed global", self.kind(f)))),
        };
        let a: Vec<Obj> = match self.node(args) {
            Some(Node::Tuple(v)) => v.clone(),
            _ => return Err(self.err(at, format!("REDUCE arguments are a {}, not a tuple", self.kind(args)))),
        };
        match g {
            Global::OrderedDict => {
                let d = self.alloc(at, Node::Dict(Vec::new()))?;
                if let Some(&items) = a.first() {
                    let pairs = self.seq_of(items).ok_or_else(|| self.err(at, "OrderedDict argument is not a list"))?.to_vec();
                    let mut flat = Vec::with_capacity(pairs.len() * 2);
                    for p in pairs {
                        match self.seq_of(p) {
                            Some(&[k, v]) => flat.extend([k, v]),
                            _ => return Err(self.err(at, "OrderedDict item is not a (key, value) pair")),
                        }
                    }
                    self.dict_extend(at, d, flat)?;
                }
                Ok(d)
            }
            Global::RebuildTensorV2 => {
                if a.len() < 4 {
                    return Err(self.err(at, format!("_rebuild_tensor_v2 with {} arguments", a.len())));
                }
                let storage = match self.node(a[0]) {
                    Some(Node::Storage(s)) => s.clone(),
                    _ => return Err(self.err(at, format!("_rebuild_tensor_v2 storage is a {}", self.kind(a[0])))),
                };
                let offset = match a[1] {
                    Obj::Int(o) if o >= 0 => o as u64,
                    _ => return Err(self.err(at, "_rebuild_tensor_v2 offset is not a non-negative int")),
                };
                let size = self.ints_of(at, a[2], "size")?;
                let stride = self.ints_of(at, a[3], "stride")?;
                if size.len() != stride.len() {
                    return Err(self.err(at, format!("tensor size has {} dims but stride {}", size.len(), stride.len())));
                }
                self.alloc(at, Node::Tensor(TensorRef { storage, offset, size, stride }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match a.first() {
                Some(&t) if matches!(self.node(t), Some(Node::Tensor(_))) => Ok(t),
                _ => Err(self.err(at, "_rebuild_parameter of something that is not a tensor")),
            },
            Global::RebuildFromTypeV2 if outer => {
                if a.len() < 3 || !matches!(self.node(a[1]), Some(Node::Global(Global::TensorClass))) {
                    return Err(self.err(at, "_rebuild_from_type_v2 needs (func, torch.Tensor or Parameter, args, state)"));
                }
                self.reduce(at, a[0], a[2], false)
            }
            Global::Size => a.first().copied().ok_or_else(|| self.err(at, "torch.Size without arguments")),
            Global::Device => {
                let name = a.first().and_then(|&o| self.str_of(o)).ok_or_else(|| self.err(at, "torch.device without a name"))?;
                let s = match a.get(1) {
                    Some(Obj::Int(i)) => format!("{name}:{i}"),
                    _ => name.to_string(),
                };
                self.alloc(at, Node::Str(s))
            }
            Global::CodecsEncode => {
                let text = a.first().and_then(|&o| self.str_of(o)).ok_or_else(|| self.err(at, "_codecs.encode of a non-string"))?;
                let enc = a.get(1).and_then(|&o| self.str_of(o)).unwrap_or("utf-8");
                let bytes = match enc {
                    "latin1" | "latin-1" | "iso-8859-1" => text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).map_err(|_| self.err(at, "latin1 text out of range")))
                        .collect::<Result<_>>()?,
                    "utf-8" | "utf8" => text.as_bytes().to_vec(),
                    other => return Err(self.err(at, format!("_codecs.encode with encoding {other}"))),
                };
                self.alloc(at, Node::Bytes(bytes))
            }
            other => Err(self.err(at, format!("{other:?} cannot be called here"))),
        }
    }
}

impl Pickled {
    /// Every storage the pickle references (the legacy format needs their dtypes to find the
    /// section boundaries).
    pub(crate) fn storages(&self) -> impl Iterator<Item = &StorageRef> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Storage(s) => Some(s),
            Node::Tensor(t) => Some(&t.storage),
            _ => None,
        })
    }

    /// Converts `o` to a `PyValue`, turning tensor descriptions into tensors through `tensor`.
    /// A tensor referenced several times is built once and shared.
    pub(crate) fn to_value(
        &self,
        o: Obj,
        tensor: &mut dyn FnMut(&TensorRef) -> std::result::Result<cnnkit_core::Tensor, String>,
    ) -> std::result::Result<PyValue, String> {
        let mut cx = Convert { p: self, tensor, cache: HashMap::new(), budget: MAX_VALUES };
        cx.value(o, 0)
    }
}

struct Convert<'a> {
    p: &'a Pickled,
    tensor: &'a mut dyn FnMut(&TensorRef) -> std::result::Result<cnnkit_core::Tensor, String>,
    cache: HashMap<usize, cnnkit_core::Tensor>,
    budget: usize,
}

impl Convert<'_> {
    fn value(&mut self, o: Obj, depth: usize) -> std::result::Result<PyValue, String> {
        if depth > MAX_DEPTH {
            return Err(format!("objects nested deeper than {MAX_DEPTH} levels (or a self-referencing container)"));
        }
        self.budget = self.budget.checked_sub(1).ok_or("too many objects")?;
        let i = match o {
            Obj::None => return Ok(PyValue::None),
            Obj::Bool(b) => return Ok(PyValue::Bool(b)),
            Obj::Int(v) => return Ok(PyValue::Int(v)),
            Obj::Float(v) => return Ok(PyValue::Float(v)),
            Obj::Ref(i) => i,
        };
        let node = self.p.nodes.get(i).ok_or("dangling object reference")?;
        Ok(match node {
            Node::Str(s) => PyValue::Str(s.clone()),
            Node::Bytes(b) => PyValue::Bytes(b.clone()),
            Node::List(v) => PyValue::List(v.iter().map(|&x| self.value(x, depth + 1)).collect::<std::result::Result<_, _>>()?),
            Node::Tuple(v) => PyValue::Tuple(v.iter().map(|&x| self.value(x, depth + 1)).collect::<std::result::Result<_, _>>()?),
            Node::Dict(pairs) => {
                // Python keeps the first position and the last value of a repeated key.
                let mut out: Vec<(PyValue, PyValue)> = Vec::with_capacity(pairs.len());
                let mut seen: HashMap<String, usize> = HashMap::new();
                for &(k, v) in pairs {
                    let (k, v) = (self.value(k, depth + 1)?, self.value(v, depth + 1)?);
                    let id = match &k {
                        PyValue::Str(s) => Some(format!("s{s}")),
                        PyValue::Int(n) => Some(format!("i{n}")),
                        _ => None,
                    };
                    match id.as_ref().and_then(|id| seen.get(id)) {
                        Some(&pos) => out[pos].1 = v,
                        None => {
                            if let Some(id) = id {
                                seen.insert(id, out.len());
                            }
                            out.push((k, v));
                        }
                    }
                }
                PyValue::Dict(out)
            }
            Node::Global(g) => PyValue::Global(global_name(*g)),
            Node::Storage(s) => return Err(format!("a bare storage (key {}) outside a tensor is not supported", s.key)),
            Node::Tensor(t) => {
                if let Some(t) = self.cache.get(&i) {
                    return Ok(PyValue::Tensor(t.clone()));
                }
                let made = (self.tensor)(t)?;
                self.cache.insert(i, made.clone());
                PyValue::Tensor(made)
            }
        })
    }
}

fn global_name(g: Global) -> String {
    match g {
        Global::TorchDType(n) => format!("torch.{n}"),
        other => format!("{other:?}"),
    }
}
