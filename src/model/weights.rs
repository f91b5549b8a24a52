//! Safetensors loading: one file or shards listed in `model.safetensors.index.json`, memory
//! mapped. f32, bf16 and f16 tensors can stay in the map (zero-copy).
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            _ => 2,
        }
    }

    /// The safetensors dtype of the same values (its header names it "F32", "F16", "BF16"):
    /// the inverse of what `open_file` reads.
    pub fn safetensors(self) -> Dtype {
        match self {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::Bf16 => Dtype::BF16,
        }
    }
}

/// One tensor's place in a mapped file.
#[derive(Clone)]
pub struct TensorRef {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl TensorRef {
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32: borrowed from the map when stored as aligned f32, else converted.
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        let b = self.bytes();
        match self.dtype {
            DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(b) {
                Ok(s) if cfg!(target_endian = "little") => Cow::Borrowed(s),
                _ => Cow::Owned(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
            },
            DType::Bf16 => Cow::Owned(
                b.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            DType::F16 => Cow::Owned(
                b.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
        }
    }

    /// The index of the first NaN or infinite value, if any. A checkpoint holding one is
    /// corrupt: every logit it reaches would be NaN, and sampling would pick tokens from
    /// nothing without a word. (A scan at memory speed, on every thread.)
    pub fn first_non_finite(&self) -> Option<usize> {
        // All-ones exponent: infinite or NaN, in each format's little-endian bits.
        match self.dtype {
            DType::F32 => first_match(self.bytes(), |v: [u8; 4]| {
                u32::from_le_bytes(v) & 0x7f80_0000 == 0x7f80_0000
            }),
            DType::Bf16 => first_match(self.bytes(), |v: [u8; 2]| {
                u16::from_le_bytes(v) & 0x7f80 == 0x7f80
            }),
            DType::F16 => first_match(self.bytes(), |v: [u8; 2]| {
                u16::from_le_bytes(v) & 0x7c00 == 0x7c00
            }),
        }
    }

    /// A handle that keeps the map alive, for zero-copy use by a backend.
    pub fn mapped_f32(&self) -> Option<MappedF32> {
        if self.dtype != DType::F32 {
            return None;
        }
        Mapped::new(self)
    }

    /// The same for bf16 values (their raw bits), which a backend may hold as they are.
    pub fn mapped_bf16(&self) -> Option<MappedBf16> {
        if self.dtype != DType::Bf16 {
            return None;
        }
        Mapped::new(self)
    }

    /// The same for f16 values.
    pub fn mapped_f16(&self) -> Option<MappedF16> {
        if self.dtype != DType::F16 {
            return None;
        }
        Mapped::new(self)
    }
}

/// Values of type T living in a memory map (checked aligned at construction).
#[derive(Clone)]
pub struct Mapped<T> {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

/// f32 values in a map.
pub type MappedF32 = Mapped<f32>;
/// bf16 values in a map, as their bits (little-endian u16).
pub type MappedBf16 = Mapped<u16>;
/// f16 values in a map.
pub type MappedF16 = Mapped<f16>;

impl<T: bytemuck::Pod> Mapped<T> {
    /// None on a big-endian host or for a tensor not aligned for T in the map.
    fn new(t: &TensorRef) -> Option<Self> {
        if !cfg!(target_endian = "little") {
            return None;
        }
        bytemuck::try_cast_slice::<u8, T>(t.bytes()).ok()?;
        Some(Mapped {
            map: t.map.clone(),
            start: t.start,
            len: t.len / std::mem::size_of::<T>(),
            _t: std::marker::PhantomData,
        })
    }

    pub fn as_slice(&self) -> &[T] {
        bytemuck::cast_slice(
            &self.map[self.start..self.start + self.len * std::mem::size_of::<T>()],
        )
    }
}

/// The index of the first N-byte value of `bytes` that `hit` holds for.
fn first_match<const N: usize>(
    bytes: &[u8],
    hit: impl Fn([u8; N]) -> bool + Sync,
) -> Option<usize> {
    use rayon::prelude::*;
    const VALUES: usize = 1 << 16;
    bytes
        .par_chunks(VALUES * N)
        .enumerate()
        .find_map_first(|(k, c)| {
            let at = c
                .chunks_exact(N)
                .position(|v| hit(v.try_into().expect("N bytes")));
            at.map(|i| k * VALUES + i)
        })
}

/// All tensors of a model directory, by name.
pub struct Weights {
    pub tensors: BTreeMap<String, TensorRef>,
}

impl Weights {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        // The index's tensor → shard map, checked once the shards are read.
        let mut listed = None;
        let files: Vec<PathBuf> = if index.exists() {
            // A FIFO would block the read forever and /dev/zero would never end it.
            crate::input::refuse_non_regular(&index, "")?;
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("cannot read {}", index.display()))?;
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: HashMap<String, String>,
            }
            let idx: Index = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("malformed {}: {e}", index.display()))?;
            let mut f: Vec<String> = idx.weight_map.values().cloned().collect();
            f.sort();
            f.dedup();
            // Shards are files of the model folder: a name that climbs out of it (or an
            // absolute path) would read whatever it points at as this model's weights.
            if let Some(bad) = f.iter().find(|n| {
                !Path::new(n)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            }) {
                bail!(
                    "{} names a weight file outside the model folder: {bad:?}",
                    index.display()
                );
            }
            if f.is_empty() {
                bail!("{} lists no weight files", index.display());
            }
            listed = Some((index, idx.weight_map));
            f.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                bail!(
                    "{} has neither model.safetensors nor model.safetensors.index.json",
                    dir.display()
                );
            }
            vec![single]
        };
        let mut tensors = BTreeMap::new();
        for f in files {
            for t in open_file(&f)? {
                if tensors.contains_key(&t.name) {
                    bail!(
                        "tensor {} appears in more than one shard ({})",
                        t.name,
                        f.display()
                    );
                }
                tensors.insert(t.name.clone(), t);
            }
        }
        // A tensor the index lists but no shard holds is an incomplete or mixed-up download:
        // found here rather than later as a "missing tensor", or never (the optional ones).
        if let Some((index, map)) = listed {
            let mut absent: Vec<(&String, &String)> = map
                .iter()
                .filter(|(n, _)| !tensors.contains_key(*n))
                .collect();
            absent.sort();
            if let Some((name, file)) = absent.first() {
                bail!(
                    "{} lists {} tensor(s) that no shard holds, e.g. {name} in {file} (an \
                     incomplete download?)",
                    index.display(),
                    absent.len()
                );
            }
        }
        Ok(Weights { tensors })
    }

    /// The tensor `name`, checked to have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&TensorRef> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("missing tensor {name}"))?;
        if t.shape != shape {
            bail!(
                "tensor {name} has shape {:?}, the config implies {:?}",
                t.shape,
                shape
            );
        }
        if let Some(i) = t.first_non_finite() {
            bail!(
                "tensor {name} holds a NaN or infinite value (element {i}): the checkpoint is \
                 corrupt"
            );
        }
        Ok(t)
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

fn open_file(path: &Path) -> Result<Vec<TensorRef>> {
    // A directory, a pipe or a device is no weights file (and a pipe would block the open).
    crate::input::refuse_non_regular(path, " (a safetensors file is)")?;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the file is opened read-only; ponder does not modify model files while running,
    // and a file truncated under us by another process is outside what we can defend against.
    let map = Arc::new(
        unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?,
    );
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| anyhow::anyhow!("corrupt safetensors file {}: {e}", path.display()))?;
    let base = map.as_ptr() as usize;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::Bf16,
            d => bail!(
                "tensor {name} in {} has unsupported dtype {d:?}",
                path.display()
            ),
        };
        let data = view.data();
        out.push(TensorRef {
            name,
            dtype,
            shape: view.shape().to_vec(),
            start: data.as_ptr() as usize - base,
            len: data.len(),
            map: map.clone(),
        });
    }
    Ok(out)
}
