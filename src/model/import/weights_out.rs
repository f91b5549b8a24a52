//! The imported model's weights file: each GGUF tensor dequantized (F16 and BF16 kept as they
//! are), Q and K un-permuted back to HF's row order, written one tensor at a time.
use super::Out;
use crate::model::gguf::{GgufFile, GgufTensorInfo};
use crate::model::weights::DType;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// Inverts llama.cpp's convert, which reordered the rows of each head from [half 0 | half 1]
/// to interleaved pairs: `w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2)`.
pub(super) fn unpermute_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Result<Vec<f32>> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) || rows.checked_mul(cols) != Some(w.len()) {
        bail!("cannot un-permute a [{rows}, {cols}] matrix over {heads} heads");
    }
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0f32; w.len()];
    out.par_chunks_exact_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            let (h, within) = (r / per_head, r % per_head);
            let (j, i) = (within / half, within % half);
            let src = (h * per_head + 2 * i + j) * cols;
            row.copy_from_slice(&w[src..src + cols]);
        });
    Ok(out)
}

/// The safetensors dtype a GGUF tensor is written in: F16 and BF16 as they are (ponder holds
/// them so, at half the memory of f32), every other type dequantized to F32.
fn out_dtype(t: &GgufTensorInfo) -> DType {
    // ggml's type ids (gguf/quant.rs): 1 F16, 30 BF16.
    match t.ggml_type.0 {
        1 => DType::F16,
        30 => DType::Bf16,
        _ => DType::F32,
    }
}

/// config.json's `torch_dtype`: the 16-bit type of the checkpoint's matrices, if it has one.
pub(super) fn torch_dtype(tensors: &[Out]) -> &'static str {
    let has = |d| tensors.iter().any(|t| out_dtype(t.src) == d);
    if has(DType::Bf16) {
        "bfloat16"
    } else if has(DType::F16) {
        "float16"
    } else {
        "float32"
    }
}

/// Writes the safetensors format one tensor at a time, so memory holds at most one
/// dequantized tensor (and its un-permuted copy), not the whole model.
pub(super) fn write_safetensors(path: &Path, g: &GgufFile, tensors: &[Out]) -> Result<()> {
    // The 4-byte tensors first, so that every value lies aligned to its size in the file
    // (the data starts 8-aligned and safetensors leaves no gaps), and the loader maps them.
    let mut order: Vec<&Out> = tensors.iter().collect();
    order.sort_by_key(|t| std::cmp::Reverse(out_dtype(t.src).size()));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for t in &order {
        let dtype = out_dtype(t.src);
        let len = t
            .src
            .n_elements
            .checked_mul(dtype.size())
            .context("tensor size overflows")?;
        let end = offset.checked_add(len).context("model size overflows")?;
        let info = json!({
            "dtype": dtype.safetensors(),
            "shape": t.shape,
            "data_offsets": [offset, end]
        });
        header.insert(t.name.clone(), info);
        offset = end;
    }
    let mut h = serde_json::to_vec(&header)?;
    // Pad as the python library does, so the data (and every f32 in it) starts 8-aligned.
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 22, file);
    let io = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    for t in order {
        let mut vals = g.dequantize(t.src)?;
        if let Some(heads) = t.unpermute_heads {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            vals = unpermute_rows(&vals, rows, cols, heads)
                .with_context(|| format!("tensor {}", t.src.name))?;
        }
        // A 16-bit value widened by the dequantizer narrows back exactly.
        use std::borrow::Cow;
        let bytes: Cow<[u8]> = match out_dtype(t.src) {
            DType::F32 if cfg!(target_endian = "little") => {
                Cow::Borrowed(bytemuck::cast_slice(&vals))
            }
            DType::F32 => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F16 => vals
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            DType::Bf16 => vals
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
        };
        w.write_all(&bytes).map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}
