//! numpy `.npy` files (format versions 1.0, 2.0 and 3.0), float32 only.
//!
//! The header is a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`; it is parsed by a small
//! literal reader, never evaluated.

use cnnkit_core::{DType, Error, Result, Tensor};
use cnnkit_nn::serialize::write_atomic;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy refuses headers above this size by default too; it keeps a bad length from allocating.
const MAX_HEADER: usize = 1 << 20;

fn file_err(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::File { path: name.to_string(), msg: msg.to_string() }
}

/// Reads a `.npy` file holding little-endian float32 ('<f4') data in C order.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| file_err(&name, format!("cannot read: {e}")))?;
    parse_npy(&bytes, &name)
}

/// [`read_npy`] on bytes in memory; `name` is used in error messages.
pub fn parse_npy(bytes: &[u8], name: &str) -> Result<Tensor> {
    if !bytes.starts_with(MAGIC) {
        let head: Vec<String> = bytes.iter().take(6).map(|b| format!("{b:02x}")).collect();
        return Err(file_err(name, format!("not a .npy file: expected magic \\x93NUMPY, found bytes [{}]", head.join(" "))));
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(&[a, b]) => (a, b),
        _ => return Err(file_err(name, "truncated .npy header (no version)")),
    };
    let (len_bytes, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        _ => return Err(file_err(name, format!(".npy format version {major}.{minor} is not supported (1.0, 2.0, 3.0 are)"))),
    };
    let len_field = bytes.get(8..8 + len_bytes).ok_or_else(|| file_err(name, "truncated .npy header (no length)"))?;
    let header_len = len_field.iter().rev().fold(0usize, |n, &b| (n << 8) | usize::from(b));
    if header_len > MAX_HEADER {
        return Err(file_err(name, format!(".npy header length {header_len} is implausible")));
    }
    let start = 8 + len_bytes;
    let header = bytes.get(start..start + header_len).ok_or_else(|| {
        file_err(name, format!("truncated .npy header: {header_len} bytes announced, {} present", bytes.len().saturating_sub(start)))
    })?;
    // Versions 1 and 2 are latin-1, version 3 UTF-8; the keys and values read here are ASCII.
    let header: String = if utf8 {
        std::str::from_utf8(header).map_err(|_| file_err(name, ".npy header is not UTF-8"))?.to_string()
    } else {
        header.iter().map(|&b| char::from(b)).collect()
    };
    let h = parse_header(&header).map_err(|m| file_err(name, format!("bad .npy header {:?}: {m}", header.trim_end())))?;
    if h.descr != "<f4" {
        let fix = if h.descr.starts_with('[') { "a structured dtype" } else { h.descr.as_str() };
        return Err(file_err(name, format!("expected dtype <f4 (float32), found {fix}; convert with x.astype(np.float32)")));
    }
    if h.fortran_order {
        return Err(file_err(name, "array is in Fortran order; save a C-order copy with np.ascontiguousarray(x)"));
    }
    if !crate::shape_fits(&h.shape) {
        return Err(file_err(name, format!("shape {:?} is too large", h.shape)));
    }
    let numel: usize = h.shape.iter().product();
    let data = &bytes[start + header_len..];
    let want = numel.checked_mul(4).ok_or_else(|| file_err(name, "shape overflows"))?;
    if data.len() < want {
        return Err(file_err(name, format!("truncated data: shape {:?} needs {want} bytes, {} present", h.shape, data.len())));
    }
    if data.len() > want {
        return Err(file_err(
            name,
            format!("{} bytes after the data of shape {:?} (several arrays in one file?)", data.len() - want, h.shape),
        ));
    }
    let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Tensor::from_vec(v, &h.shape)
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// The three values of a header dict literal.
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    Ints(Vec<usize>),
    Other(String),
}

fn parse_header(h: &str) -> std::result::Result<Header, String> {
    let mut p = Lexer { s: h.trim().as_bytes(), i: 0 };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.skip_ws();
        p.expect(b':')?;
        let v = p.value()?;
        match (key.as_str(), v) {
            ("descr", Lit::Str(s)) => descr = Some(s),
            ("descr", Lit::Other(s)) => descr = Some(s),
            ("fortran_order", Lit::Bool(b)) => fortran = Some(b),
            ("shape", Lit::Ints(v)) => shape = Some(v),
            (k, v) => return Err(format!("unexpected entry {k:?}: {v:?}")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
    }
    Ok(Header { descr: descr.ok_or("no 'descr'")?, fortran_order: fortran.ok_or("no 'fortran_order'")?, shape: shape.ok_or("no 'shape'")? })
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&c);
        if hit {
            self.i += 1;
        }
        hit
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        self.skip_ws();
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at column {}", char::from(c), self.i))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        self.skip_ws();
        let q = match self.s.get(self.i) {
            Some(&q) if q == b'\'' || q == b'"' => q,
            _ => return Err(format!("expected a string at column {}", self.i)),
        };
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|&c| c == q).ok_or("unterminated string")?;
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }
    fn value(&mut self) -> std::result::Result<Lit, String> {
        self.skip_ws();
        match self.s.get(self.i) {
            Some(b'\'') | Some(b'"') => self.string().map(Lit::Str),
            Some(b'(') => {
                self.i += 1;
                let mut v = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(b')') {
                        return Ok(Lit::Ints(v));
                    }
                    let start = self.i;
                    while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                        self.i += 1;
                    }
                    let digits = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                    v.push(digits.parse::<usize>().map_err(|_| format!("bad dimension at column {start}"))?);
                    self.skip_ws();
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        return Ok(Lit::Ints(v));
                    }
                }
            }
            _ => {
                // Anything else (True/False, or a structured dtype list) up to the next
                // top-level ',' or '}'.
                let start = self.i;
                let mut depth = 0i32;
                while let Some(&c) = self.s.get(self.i) {
                    match c {
                        b'[' | b'(' => depth += 1,
                        b']' | b')' => depth -= 1,
                        b',' | b'}' if depth <= 0 => break,
                        _ => {}
                    }
                    self.i += 1;
                }
                let word = String::from_utf8_lossy(&self.s[start..self.i]).trim().to_string();
                Ok(match word.as_str() {
                    "True" => Lit::Bool(true),
                    "False" => Lit::Bool(false),
                    _ => Lit::Other(word),
                })
            }
        }
    }
}

/// Writes a float32 tensor as a version 1.0, C-order, little-endian `.npy` file, atomically.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let name = path.display().to_string();
    if t.dtype() != DType::F32 {
        return Err(file_err(
            &name,
            format!("write_npy writes float32 only; this tensor is {} (convert with .to_dtype(DType::F32))", t.dtype().name()),
        ));
    }
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    // A one-element tuple needs its trailing comma in Python syntax.
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // numpy pads magic + version + length + header + '\n' to a multiple of 64 bytes so the data
    // is aligned for memory mapping.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let len = u16::try_from(header.len()).map_err(|_| file_err(&name, "shape too long for a version 1.0 header"))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + t.numel() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in t.to_vec::<f32>()? {
        out.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &out)
}
