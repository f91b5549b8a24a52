//! GGUF → HF model directory: `config.json`, `model.safetensors` (f32, so the loader can map
//! it zero-copy), `tokenizer.json` and `tokenizer_config.json`. Only the llama architecture
//! is supported, with a GPT-2 style byte-level BPE vocabulary or a SentencePiece BPE one
//! (Llama, Mistral); anything else is refused rather than converted approximately.
use super::gguf::{GgufFile, GgufTensorInfo, GgufValue};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

mod bpe_json;
pub mod spm;
mod tokenizer;
mod weights_out;

use weights_out::{torch_dtype, write_safetensors};

/// The files `import_gguf` writes; an existing output directory holding only these may be
/// replaced.
const OUTPUT_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

pub fn import_gguf(gguf_path: &Path, out_dir: &Path) -> Result<()> {
    import_inner(gguf_path, out_dir).with_context(|| {
        format!(
            "cannot import {} into {}",
            gguf_path.display(),
            out_dir.display()
        )
    })
}

fn import_inner(gguf_path: &Path, out_dir: &Path) -> Result<()> {
    let g = GgufFile::open(gguf_path)?;
    // Refuse undecodable tensors before reading any metadata, so the error names the real
    // obstacle.
    if let Some(t) = g.tensors.iter().find(|t| !t.ggml_type.can_dequantize()) {
        bail!(
            "tensor {:?} has type {}, which ponder cannot dequantize (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
            t.name,
            t.ggml_type.name()
        );
    }
    let plan = Plan::new(&g)?;
    let tok = tokenizer::build(&g)?;
    if tok.n_tokens > plan.vocab {
        bail!(
            "the tokenizer has {} tokens, the embedding only {} rows",
            tok.n_tokens,
            plan.vocab
        );
    }
    for (what, id) in [("bos", plan.bos), ("eos", plan.eos), ("pad", plan.pad)] {
        if id.is_some_and(|id| id >= tok.n_tokens as u64) {
            bail!(
                "{what} token id {id:?} is outside the {} token vocabulary",
                tok.n_tokens
            );
        }
    }
    write_atomically(out_dir, |tmp| {
        write_file(&tmp.join("config.json"), plan.config_json()?.as_bytes())?;
        write_file(&tmp.join("tokenizer.json"), tok.tokenizer_json.as_bytes())?;
        write_file(
            &tmp.join("tokenizer_config.json"),
            tok.config_json.as_bytes(),
        )?;
        write_safetensors(&tmp.join("model.safetensors"), &g, &plan.tensors)
    })
}

/// One output tensor: where it comes from and how to reshape it.
struct Out<'a> {
    name: String,
    src: &'a GgufTensorInfo,
    shape: Vec<usize>,
    /// Undo llama.cpp's Q/K row interleave for this many heads.
    unpermute_heads: Option<usize>,
}

struct Plan<'a> {
    d: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    eps: f32,
    theta: f32,
    ctx: usize,
    tied: bool,
    bos: Option<u64>,
    eos: Option<u64>,
    pad: Option<u64>,
    tensors: Vec<Out<'a>>,
}

fn get_u64(g: &GgufFile, key: &str) -> Result<Option<u64>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).with_context(|| {
            format!(
                "metadata {key} is a {}, expected a non-negative integer",
                v.type_name()
            )
        }),
    }
}

fn need_usize(g: &GgufFile, key: &str) -> Result<usize> {
    let v = get_u64(g, key)?.with_context(|| format!("metadata {key} is missing"))?;
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0 && v < 1 << 32)
        .with_context(|| format!("metadata {key} = {v} is out of range"))
}

fn get_f32(g: &GgufFile, key: &str) -> Result<Option<f32>> {
    match g.get(key) {
        None => Ok(None),
        Some(GgufValue::F32(x)) if x.is_finite() && *x > 0.0 => Ok(Some(*x)),
        Some(v) => bail!("metadata {key} = {v:?} is not a positive float32"),
    }
}

impl<'a> Plan<'a> {
    fn new(g: &'a GgufFile) -> Result<Self> {
        let arch = match g.get("general.architecture") {
            Some(GgufValue::String(a)) => a.as_str(),
            Some(v) => bail!("metadata general.architecture is a {}", v.type_name()),
            None => bail!("metadata general.architecture is missing"),
        };
        if arch != "llama" {
            bail!("architecture {arch:?} is not supported (ponder imports llama)");
        }
        let k = |s: &str| format!("{arch}.{s}");
        let d = need_usize(g, &k("embedding_length"))?;
        let heads = need_usize(g, &k("attention.head_count"))?;
        let kv_heads = match get_u64(g, &k("attention.head_count_kv"))? {
            None => heads,
            Some(_) => need_usize(g, &k("attention.head_count_kv"))?,
        };
        let head_dim = match get_u64(g, &k("attention.key_length"))? {
            Some(_) => need_usize(g, &k("attention.key_length"))?,
            None if d.is_multiple_of(heads) => d / heads,
            None => bail!("embedding_length {d} is not a multiple of head_count {heads}"),
        };
        if !heads.is_multiple_of(kv_heads) {
            bail!("head_count {heads} is not a multiple of head_count_kv {kv_heads}");
        }
        // The interleave being undone pairs rows within a head.
        if !head_dim.is_multiple_of(2) {
            bail!("head dimension {head_dim} is odd");
        }
        for key in ["attention.value_length", "rope.dimension_count"] {
            if let Some(v) = get_u64(g, &k(key))? {
                if v != head_dim as u64 {
                    bail!("{arch}.{key} = {v} differs from the head dimension {head_dim}, which ponder does not support");
                }
            }
        }
        if let Some(s) = g.get(&k("rope.scaling.type")).and_then(|v| v.as_str()) {
            if s != "none" {
                bail!("rope scaling {s:?} is not supported");
            }
        }
        if get_u64(g, &k("expert_count"))?.is_some_and(|n| n > 0) {
            bail!("mixture-of-experts models are not supported");
        }
        let embed = g
            .tensor("token_embd.weight")
            .context("tensor token_embd.weight is missing")?;
        let vocab = match embed.dims[..] {
            [dd, v] if dd == d && v > 0 => v,
            _ => bail!(
                "token_embd.weight has dims {:?}, expected [{d}, vocab]",
                embed.dims
            ),
        };
        if let Some(v) = get_u64(g, &k("vocab_size"))? {
            if v != vocab as u64 {
                bail!("{arch}.vocab_size = {v} but token_embd.weight has {vocab} rows");
            }
        }
        let mut plan = Plan {
            d,
            ffn: need_usize(g, &k("feed_forward_length"))?,
            layers: need_usize(g, &k("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            eps: get_f32(g, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            theta: get_f32(g, &k("rope.freq_base"))?.unwrap_or(10000.0),
            ctx: match get_u64(g, &k("context_length"))? {
                Some(_) => need_usize(g, &k("context_length"))?,
                None => 2048,
            },
            tied: g.tensor("output.weight").is_none(),
            bos: get_u64(g, "tokenizer.ggml.bos_token_id")?,
            eos: get_u64(g, "tokenizer.ggml.eos_token_id")?,
            pad: get_u64(g, "tokenizer.ggml.padding_token_id")?,
            tensors: Vec::new(),
        };
        // Nine tensors a layer: a block count the file cannot hold is refused before the
        // tensor list is built from it.
        if plan.layers.saturating_mul(9) > g.tensors.len() {
            bail!(
                "{arch}.block_count = {} but the file holds only {} tensors (a llama layer has 9)",
                plan.layers,
                g.tensors.len()
            );
        }
        // The config it would write must be one ponder loads (dimensions past any model's
        // are refused there): refuse it before its tensors are looked up, rather than write
        // a model that cannot be opened.
        crate::model::config::Config::from_json(&plan.config_json()?)
            .context("the model the GGUF describes")?;
        plan.map_tensors(g)?;
        Ok(plan)
    }

    /// Maps every GGUF tensor to its HF name, checking shapes. A tensor with no HF
    /// counterpart (biases, rope_freqs, …) means a model variant this importer would get
    /// wrong, so it is an error rather than something to drop.
    fn map_tensors(&mut self, g: &'a GgufFile) -> Result<()> {
        let (d, f, v) = (self.d, self.ffn, self.vocab);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut want: Vec<(String, String, Vec<usize>, Option<usize>)> = Vec::new();
        let mut add = |gg: String, hf: String, shape: Vec<usize>, heads: Option<usize>| {
            want.push((gg, hf, shape, heads))
        };
        add(
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            vec![v, d],
            None,
        );
        for i in 0..self.layers {
            let (b, p) = (format!("blk.{i}"), format!("model.layers.{i}"));
            let layer: [(&str, &str, Vec<usize>, Option<usize>); 9] = [
                ("attn_norm", "input_layernorm", vec![d], None),
                ("attn_q", "self_attn.q_proj", vec![q, d], Some(self.heads)),
                (
                    "attn_k",
                    "self_attn.k_proj",
                    vec![kv, d],
                    Some(self.kv_heads),
                ),
                ("attn_v", "self_attn.v_proj", vec![kv, d], None),
                ("attn_output", "self_attn.o_proj", vec![d, q], None),
                ("ffn_norm", "post_attention_layernorm", vec![d], None),
                ("ffn_gate", "mlp.gate_proj", vec![f, d], None),
                ("ffn_up", "mlp.up_proj", vec![f, d], None),
                ("ffn_down", "mlp.down_proj", vec![d, f], None),
            ];
            for (gg, hf, shape, heads) in layer {
                add(
                    format!("{b}.{gg}.weight"),
                    format!("{p}.{hf}.weight"),
                    shape,
                    heads,
                );
            }
        }
        add(
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            vec![d],
            None,
        );
        if !self.tied {
            add(
                "output.weight".into(),
                "lm_head.weight".into(),
                vec![v, d],
                None,
            );
        }
        for (gg, name, shape, unpermute_heads) in want {
            let src = g
                .tensor(&gg)
                .with_context(|| format!("tensor {gg} is missing"))?;
            if src.shape() != shape {
                bail!(
                    "tensor {gg} has shape {:?}, the metadata implies {shape:?}",
                    src.shape()
                );
            }
            self.tensors.push(Out {
                name,
                src,
                shape,
                unpermute_heads,
            });
        }
        let used: std::collections::HashSet<&str> =
            self.tensors.iter().map(|o| o.src.name.as_str()).collect();
        if let Some(t) = g.tensors.iter().find(|t| !used.contains(t.name.as_str())) {
            bail!(
                "tensor {:?} has no counterpart in a llama model (unsupported variant)",
                t.name
            );
        }
        Ok(())
    }

    fn config_json(&self) -> Result<String> {
        let cfg = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.d,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": shortest_f64(self.eps),
            "rope_theta": shortest_f64(self.theta),
            "vocab_size": self.vocab,
            "max_position_embeddings": self.ctx,
            "tie_word_embeddings": self.tied,
            "bos_token_id": self.bos,
            "eos_token_id": self.eos,
            "pad_token_id": self.pad,
            "torch_dtype": torch_dtype(&self.tensors),
        });
        Ok(serde_json::to_string_pretty(&cfg)? + "\n")
    }
}

/// The f64 whose decimal form is the f32's shortest one, so 1e-5f32 is written as 1e-05
/// instead of 9.999999747378752e-06.
fn shortest_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Builds the output in a fresh sibling directory and renames it into place, so a crash
/// never leaves a half-written model where a complete one is expected.
fn write_atomically(out_dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = out_dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| {
            format!(
                "output path {} has no usable final component",
                out_dir.display()
            )
        })?;
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if out_dir.exists() {
        check_replaceable(out_dir)?;
    }
    crate::input::create_dir(&parent)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let sibling =
        |kind: &str| parent.join(format!(".{name}.{kind}-{}-{stamp}", std::process::id()));
    let tmp = sibling("importing");
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let res = fill(&tmp).and_then(|()| {
        if !out_dir.exists() {
            return std::fs::rename(&tmp, out_dir).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), out_dir.display())
            });
        }
        let old = sibling("replaced");
        std::fs::rename(out_dir, &old)
            .with_context(|| format!("cannot move the old {} aside", out_dir.display()))?;
        if let Err(e) = std::fs::rename(&tmp, out_dir) {
            let _ = std::fs::rename(&old, out_dir);
            return Err(e).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), out_dir.display())
            });
        }
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res
}

/// An existing output directory is replaced only if it holds nothing but files an import
/// writes: pointing `out_dir` at a directory of other data must not delete it.
fn check_replaceable(out_dir: &Path) -> Result<()> {
    if !out_dir.is_dir() {
        bail!("{} exists and is not a directory", out_dir.display());
    }
    let entries =
        std::fs::read_dir(out_dir).with_context(|| format!("cannot list {}", out_dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", out_dir.display()))?;
        let n = e.file_name();
        if !OUTPUT_FILES.iter().any(|f| n == *f) {
            bail!(
                "{} already exists and holds {:?}, which an import does not write; refusing to replace it",
                out_dir.display(),
                n
            );
        }
    }
    Ok(())
}
