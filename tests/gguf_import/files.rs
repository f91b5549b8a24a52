//! The test's files: the committed fixtures, scratch folders, and the imported model's
//! config and tensors as the loader will see them.
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bad_inputs/gguf")
        .join(name)
}

/// A scratch directory, removed on drop; outputs go one level down so leftovers show.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "ponder-gguf-import-{}-{tag}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The model's tensors as (shape, values), checking the layout the loader relies on.
pub fn read_tensors(dir: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    read_typed_tensors(dir)
        .into_iter()
        .map(|(name, (_, shape, vals))| (name, (shape, vals)))
        .collect()
}

/// The same with each tensor's dtype: F32, or F16 and BF16 as the GGUF held them.
#[allow(clippy::type_complexity)]
pub fn read_typed_tensors(
    dir: &Path,
) -> std::collections::BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<f32>)> {
    use safetensors::Dtype;
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(
        (8 + header_len) % 8,
        0,
        "data section is not 8-byte aligned"
    );
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let size = match v.dtype() {
                Dtype::F32 => 4,
                Dtype::F16 | Dtype::BF16 => 2,
                other => panic!("{name} is {other:?}"),
            };
            let off = v.data().as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(
                off % size,
                0,
                "{name} is not aligned to its values in the file"
            );
            let vals = v
                .data()
                .chunks_exact(size)
                .map(|c| match v.dtype() {
                    Dtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                    Dtype::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                    _ => f32::from_le_bytes(c.try_into().unwrap()),
                })
                .collect();
            (name, (v.dtype(), v.shape().to_vec(), vals))
        })
        .collect()
}

pub fn assert_roundtrip(tok: &tokenizers::Tokenizer, text: &str, ids: &[u32]) {
    let enc = tok.encode(text, false).unwrap();
    assert_eq!(enc.get_ids(), ids, "encoding {text:?}");
    assert_eq!(tok.decode(ids, false).unwrap(), text);
}
