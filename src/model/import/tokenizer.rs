//! The HF `tokenizer.json` and `tokenizer_config.json` of a GGUF's vocabulary: GPT-2 style
//! byte-level BPE, or SentencePiece BPE (Llama, Mistral; converted in spm.rs).
use super::bpe_json::{added_token, BpeJson};
use super::spm;
use crate::model::gguf::{GgufFile, GgufValue};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub(super) struct TokenizerFiles {
    pub tokenizer_json: String,
    pub config_json: String,
    pub n_tokens: usize,
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let arr = g
        .get(key)
        .with_context(|| format!("metadata {key} is missing"))?
        .as_array()
        .with_context(|| format!("metadata {key} is not an array"))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .with_context(|| format!("metadata {key} holds a {}, not strings", v.type_name()))
        })
        .collect()
}

/// A bool of the metadata, `default` when absent.
fn flag(g: &GgufFile, key: &str, default: bool) -> Result<bool> {
    match g.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .with_context(|| format!("metadata {key} is a {}, not a bool", v.type_name())),
    }
}

fn token_id(g: &GgufFile, key: &str, n: usize) -> Result<Option<usize>> {
    let Some(v) = g.get(key) else { return Ok(None) };
    match v.as_u64().and_then(|id| usize::try_from(id).ok()) {
        Some(id) if id < n => Ok(Some(id)),
        _ => bail!("metadata {key} = {v:?} is not a token id below the vocabulary size {n}"),
    }
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool) -> Value {
    json!({
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": true,
    })
}

pub(super) fn build(g: &GgufFile) -> Result<TokenizerFiles> {
    let model = match g.get("tokenizer.ggml.model") {
        Some(GgufValue::String(m)) if m == "gpt2" || m == "llama" => m.as_str(),
        Some(GgufValue::String(m)) => {
            bail!(
                "tokenizer.ggml.model {m:?} is not supported (ponder imports gpt2 byte-level \
                 BPE and llama SentencePiece BPE)"
            )
        }
        Some(v) => bail!("metadata tokenizer.ggml.model is a {}", v.type_name()),
        None => bail!("metadata tokenizer.ggml.model is missing"),
    };
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        None => vec![1; n],
        Some(v) => v
            .as_array()
            .context("metadata tokenizer.ggml.token_type is not an array")?
            .iter()
            .map(|t| {
                t.as_i64()
                    .context("metadata tokenizer.ggml.token_type holds a non-integer")
            })
            .collect::<Result<_>>()?,
    };
    if types.len() != n {
        bail!(
            "tokenizer.ggml.token_type has {} entries for {n} tokens",
            types.len()
        );
    }
    let (tokenizer_json, class) = if model == "llama" {
        (sentencepiece(g, &tokens, &types)?, "LlamaTokenizer")
    } else {
        (byte_level_bpe(g, &tokens, &types)?, "GPT2Tokenizer")
    };
    let mut cfg = serde_json::Map::new();
    cfg.insert(
        "add_bos_token".into(),
        flag(g, "tokenizer.ggml.add_bos_token", false)?.into(),
    );
    cfg.insert(
        "add_eos_token".into(),
        flag(g, "tokenizer.ggml.add_eos_token", false)?.into(),
    );
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ] {
        if let Some(id) = token_id(g, key, n)? {
            cfg.insert(name.into(), tokens[id].into());
        }
    }
    match g.get("tokenizer.chat_template") {
        None => {}
        Some(GgufValue::String(t)) => {
            cfg.insert("chat_template".into(), t.as_str().into());
        }
        Some(v) => bail!("metadata tokenizer.chat_template is a {}", v.type_name()),
    }
    cfg.insert("clean_up_tokenization_spaces".into(), false.into());
    cfg.insert("tokenizer_class".into(), class.into());
    let config_json = serde_json::to_string_pretty(&Value::Object(cfg))? + "\n";
    Ok(TokenizerFiles {
        tokenizer_json: tokenizer_json + "\n",
        config_json,
        n_tokens: n,
    })
}

/// The `tokenizer.json` of a GPT-2 style byte-level BPE vocabulary (its merges are listed).
fn byte_level_bpe(g: &GgufFile, tokens: &[&str], types: &[i64]) -> Result<String> {
    let n = tokens.len();
    // The pre-tokenizer decides how text is split before BPE; guessing it wrong gives
    // plausible but different ids, so unknown ones are refused.
    let pre_tokenizer = match g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()) {
        Some("smollm") => json!({
            "type": "Sequence",
            "pretokenizers": [
                { "type": "Digits", "individual_digits": true },
                byte_level(false, true),
            ],
        }),
        None | Some("gpt2") | Some("default") => byte_level(false, true),
        Some(p) => {
            bail!("tokenizer.ggml.pre {p:?} is not supported (ponder knows smollm, gpt2, default)")
        }
    };
    let merges = strings(g, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .with_context(|| format!("merge {m:?} is not two tokens"))
        })
        .collect::<Result<Vec<_>>>()?;
    let added: Vec<Value> = (0..n)
        // llama.cpp's token types (SentencePiece's numbering) that HF treats as added
        // tokens: control and user-defined.
        .filter(|&i| {
            matches!(
                spm::PieceKind::from_code(types[i]),
                Ok(spm::PieceKind::Control | spm::PieceKind::UserDefined)
            )
        })
        .map(|i| added_token(i, tokens[i], true))
        .collect();
    BpeJson {
        added_tokens: added,
        normalizer: Value::Null,
        pre_tokenizer,
        post_processor: byte_level(true, false),
        decoder: byte_level(true, true),
        unk_token: None,
        fuse_unk: false,
        byte_fallback: false,
        vocab: tokens,
        merges,
    }
    .write()
    .context("the tokenizer built from the GGUF metadata")
}

/// The `tokenizer.json` of a SentencePiece BPE vocabulary (Llama, Mistral): its merge order
/// comes from the pieces' scores (spm.rs).
fn sentencepiece(g: &GgufFile, tokens: &[&str], types: &[i64]) -> Result<String> {
    let n = tokens.len();
    let scores = g
        .get("tokenizer.ggml.scores")
        .context("metadata tokenizer.ggml.scores is missing (a SentencePiece vocabulary's merge order comes from its scores)")?
        .as_array()
        .context("metadata tokenizer.ggml.scores is not an array")?;
    if scores.len() != n {
        bail!(
            "tokenizer.ggml.scores has {} entries for {n} tokens",
            scores.len()
        );
    }
    if flag(g, "tokenizer.ggml.remove_extra_whitespaces", false)? {
        bail!(
            "tokenizer.ggml.remove_extra_whitespaces is not supported (ponder keeps every space)"
        );
    }
    let pieces = (0..n)
        .map(|i| {
            let score = scores[i]
                .as_f64()
                .context("metadata tokenizer.ggml.scores holds a non-number")?;
            let kind = spm::PieceKind::from_code(types[i])
                .with_context(|| format!("tokenizer.ggml.token_type of token {i}"))?;
            Ok(spm::Piece {
                text: tokens[i],
                score: score as f32,
                kind,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    spm::tokenizer_json(&pieces, flag(g, "tokenizer.ggml.add_space_prefix", true)?)
        .context("the tokenizer built from the GGUF metadata")
}
