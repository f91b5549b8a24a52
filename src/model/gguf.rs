//! A GGUF (v2/v3) reader over a memory map, and exact dequantization of the tensor types
//! ponder imports. Every count, length and offset in the file is checked against the file's
//! size before it is used, so a corrupt or hostile file yields an error, never a panic or a
//! huge allocation.
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

mod quant;
pub use quant::{dequantize_bytes, GgmlType};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Nested arrays are legal but never used; the limit keeps a crafted file from exhausting
/// the stack.
const MAX_ARRAY_DEPTH: u32 = 4;
/// The most metadata array elements a file may hold, all arrays together. The largest real
/// ones are tokenizer vocabularies and merges (a few hundred thousand entries each); a value
/// takes ~32 bytes in memory against 1 in the file, so the file's size alone would let a
/// corrupt count ask for 32 times the file's size.
const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;
/// The most tensors a file may list: real checkpoints have a few thousand.
const MAX_TENSORS: u64 = 1 << 20;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "uint8",
            GgufValue::I8(_) => "int8",
            GgufValue::U16(_) => "uint16",
            GgufValue::I16(_) => "int16",
            GgufValue::U32(_) => "uint32",
            GgufValue::I32(_) => "int32",
            GgufValue::U64(_) => "uint64",
            GgufValue::I64(_) => "int64",
            GgufValue::F32(_) => "float32",
            GgufValue::F64(_) => "float64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

/// One tensor's description. `dims` are in ggml order, fastest-varying first.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Relative to the start of the data section.
    pub offset: usize,
    pub n_elements: usize,
    pub n_bytes: usize,
}

impl GgufTensorInfo {
    /// The row-major shape (slowest-varying first), as HF and safetensors write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// Index into `tensors` by name: a lookup per expected tensor must not scan them all
    /// (a file of many thousands would make an import quadratic).
    by_name: HashMap<String, usize>,
    pub alignment: usize,
    /// Absolute file offset of the data section.
    pub data_start: usize,
    map: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        Self::open_inner(path).with_context(|| format!("bad GGUF file {}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<GgufFile> {
        // Checked before opening: opening a pipe would wait for a writer, and a GGUF file is
        // mapped, so it must be a file.
        let meta = std::fs::metadata(path).context("cannot open it")?;
        if meta.is_dir() {
            bail!("it is a directory, not a GGUF file");
        }
        if !meta.is_file() {
            bail!("it is not a regular file (a pipe or a device), not a GGUF file");
        }
        let file = std::fs::File::open(path).context("cannot open it")?;
        let len = meta.len();
        // Mapping an empty file fails on some systems with an unhelpful error.
        if len < 8 {
            bail!("truncated: only {len} bytes, too short for a GGUF header");
        }
        // SAFETY: the file is opened read-only and ponder never writes GGUF files; another
        // process truncating it while mapped is outside what we can defend against.
        let map = unsafe { Mmap::map(&file) }.context("cannot map it")?;
        let mut r = Reader {
            buf: &map,
            pos: 0,
            array_budget: MAX_ARRAY_ELEMENTS,
        };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            bail!(
                "not a GGUF file: bad magic \"{}\" (expected \"GGUF\")",
                magic.escape_ascii()
            );
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            bail!("unsupported GGUF version {version} (ponder reads versions 2 and 3)");
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("type of metadata {key:?}"))?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                bail!("metadata key {key:?} appears twice");
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => bail!("general.alignment {v:?} is not a power of two uint32"),
        };
        // The smallest tensor info (empty name, no dims) is 24 bytes: bounds the allocation.
        let max_infos = (r.remaining() / 24) as u64;
        if n_tensors > max_infos {
            bail!("truncated: the header claims {n_tensors} tensors, the file has room for at most {max_infos}");
        }
        if n_tensors > MAX_TENSORS {
            bail!("corrupt: the header claims {n_tensors} tensors, more than the {MAX_TENSORS} any checkpoint has");
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            infos.push(r.tensor_info(i)?);
        }
        let data_start =
            align_up(r.pos as u64, alignment).context("data section offset overflows")?;
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = HashMap::with_capacity(infos.len());
        for (name, dims, ggml_type, offset) in infos {
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                bail!("tensor {name:?} appears twice");
            }
            let t = check_tensor(
                name, dims, ggml_type, offset, alignment, data_start, file_len,
            )?;
            tensors.push(t);
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            by_name,
            alignment: alignment as usize,
            data_start: data_start as usize,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's raw bytes. Checked again here because `t` may not come from this file.
    pub fn tensor_bytes(&self, t: &GgufTensorInfo) -> Result<&[u8]> {
        self.data_start
            .checked_add(t.offset)
            .and_then(|s| Some(s..s.checked_add(t.n_bytes)?))
            .and_then(|r| self.map.get(r))
            .with_context(|| {
                format!(
                    "truncated: tensor {:?} lies past the end of {}",
                    t.name,
                    self.path.display()
                )
            })
    }

    /// The tensor's values as f32, in ggml order (row-major with `dims[0]` fastest).
    pub fn dequantize(&self, t: &GgufTensorInfo) -> Result<Vec<f32>> {
        dequantize_bytes(t.ggml_type, self.tensor_bytes(t)?, t.n_elements).with_context(|| {
            format!(
                "cannot dequantize tensor {:?} of {}",
                t.name,
                self.path.display()
            )
        })
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? / a * a)
}

fn check_tensor(
    name: String,
    dims: Vec<usize>,
    ggml_type: GgmlType,
    offset: u64,
    alignment: u64,
    data_start: u64,
    file_len: u64,
) -> Result<GgufTensorInfo> {
    let Some((block, block_bytes)) = ggml_type.block_layout() else {
        bail!("tensor {name:?} has unknown tensor type {}", ggml_type.0);
    };
    let n_elements = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .with_context(|| format!("tensor {name:?} dims {dims:?} overflow"))?;
    let row = dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(block) {
        bail!(
            "tensor {name:?} of type {} has rows of {row} elements, not a multiple of its block size {block}",
            ggml_type.name()
        );
    }
    let n_bytes = (n_elements / block)
        .checked_mul(block_bytes)
        .with_context(|| format!("tensor {name:?} size overflows"))?;
    if !offset.is_multiple_of(alignment) {
        bail!("tensor {name:?} offset {offset} is not a multiple of the alignment {alignment}");
    }
    let end = data_start
        .checked_add(offset)
        .and_then(|s| s.checked_add(n_bytes as u64));
    match end {
        Some(e) if e <= file_len => {}
        _ => bail!(
            "truncated: tensor {name:?} data (offset {offset}, {n_bytes} bytes after the data section at {data_start}) runs past the end of the file ({file_len} bytes)"
        ),
    }
    let offset = usize::try_from(offset).context("tensor offset does not fit in memory")?;
    Ok(GgufTensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        n_elements,
        n_bytes,
    })
}

/// A cursor whose every read is bounds-checked and names what it was reading.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata array elements still allowed (MAX_ARRAY_ELEMENTS).
    array_budget: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {} bytes",
                self.pos,
                self.buf.len()
            );
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(&format!("length of {what}"))?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| anyhow::anyhow!("{what} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(key)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(key)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)? {
                [0] => GgufValue::Bool(false),
                [1] => GgufValue::Bool(true),
                [b] => bail!("metadata {key:?} is a bool with value {b}"),
            },
            8 => GgufValue::String(self.string(&format!("metadata {key:?}"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    bail!("metadata {key:?} nests arrays more than {MAX_ARRAY_DEPTH} deep");
                }
                let elem = self.u32(&format!("element type of {key:?}"))?;
                let n = self.u64(&format!("length of {key:?}"))?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => bail!("metadata {key:?} is an array of unknown type {elem}"),
                };
                if n > (self.remaining() / min) as u64 {
                    bail!(
                        "truncated: metadata {key:?} claims {n} elements, more than the {} bytes left in the file can hold",
                        self.remaining()
                    );
                }
                if n > self.array_budget {
                    bail!(
                        "corrupt: metadata {key:?} claims {n} elements, more than the {MAX_ARRAY_ELEMENTS} a GGUF file's arrays hold in all"
                    );
                }
                self.array_budget -= n;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(key)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            _ => bail!("metadata {key:?} has unknown value type {ty}"),
        })
    }

    fn tensor_info(&mut self, i: u64) -> Result<(String, Vec<usize>, GgmlType, u64)> {
        let name = self.string(&format!("name of tensor #{i}"))?;
        let n_dims = self.u32(&format!("dims of tensor {name:?}"))?;
        if n_dims > MAX_DIMS {
            bail!("tensor {name:?} has {n_dims} dims, ggml allows at most {MAX_DIMS}");
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = self.u64(&format!("dims of tensor {name:?}"))?;
            // ggml stores dims as int64; a "negative" one is corrupt.
            let d = usize::try_from(d)
                .ok()
                .filter(|&d| d as u64 <= i64::MAX as u64)
                .with_context(|| format!("tensor {name:?} has absurd dimension {d}"))?;
            dims.push(d);
        }
        let ty = GgmlType(self.u32(&format!("type of tensor {name:?}"))?);
        let offset = self.u64(&format!("offset of tensor {name:?}"))?;
        Ok((name, dims, ty, offset))
    }
}

#[cfg(test)]
mod tests;
