//! An HF `tokenizer.json` with a BPE model, written for both vocabularies a GGUF can hold
//! (byte-level in tokenizer.rs, SentencePiece in spm.rs). Structs rather than `json!`, whose
//! map would re-sort the vocabulary.
use anyhow::Result;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashSet;

/// What differs between the vocabularies; the rest of the file is fixed.
pub(super) struct BpeJson<'a> {
    pub added_tokens: Vec<Value>,
    pub normalizer: Value,
    pub pre_tokenizer: Value,
    pub post_processor: Value,
    pub decoder: Value,
    pub unk_token: Option<&'a str>,
    /// SentencePiece's: runs of unknown characters become one `unk_token`, and characters
    /// outside the vocabulary become their UTF-8 byte pieces.
    pub fuse_unk: bool,
    pub byte_fallback: bool,
    /// Token strings in id order.
    pub vocab: &'a [&'a str],
    pub merges: Vec<(&'a str, &'a str)>,
}

/// An added token (matched whole in text, never split or normalised).
pub(super) fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": special,
    })
}

impl BpeJson<'_> {
    /// The file's text, pretty as HF writes it (a model folder is read by people too), once
    /// the tokenizers crate has loaded it: a merge naming a token the vocabulary lacks only
    /// shows up then, and is caught here rather than left in an unloadable model.
    pub fn write(self) -> Result<String> {
        let file = File {
            version: "1.0",
            truncation: None,
            padding: None,
            added_tokens: self.added_tokens,
            normalizer: self.normalizer,
            pre_tokenizer: self.pre_tokenizer,
            post_processor: self.post_processor,
            decoder: self.decoder,
            model: Bpe {
                kind: "BPE",
                dropout: None,
                unk_token: self.unk_token,
                continuing_subword_prefix: None,
                end_of_word_suffix: None,
                fuse_unk: self.fuse_unk,
                byte_fallback: self.byte_fallback,
                ignore_merges: false,
                vocab: Vocab(self.vocab),
                merges: self.merges,
            },
        };
        let text = serde_json::to_string_pretty(&file)?;
        // What the loader refuses (an added token of 70 KB took the crate minutes), refused
        // here first; and the crate's panics are contained.
        crate::model::tokenizer_file::check(std::path::Path::new("tokenizer.json"), &text)?;
        crate::guard::contain("the tokenizer built from it does not load", || {
            text.parse::<tokenizers::Tokenizer>()
        })?
        .map_err(|e| anyhow::anyhow!("the tokenizer built from it does not load: {e}"))?;
        Ok(text)
    }
}

#[derive(Serialize)]
struct File<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<Value>,
    normalizer: Value,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    model: Bpe<'a>,
}

#[derive(Serialize)]
struct Bpe<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: Option<&'a str>,
    continuing_subword_prefix: Option<&'a str>,
    end_of_word_suffix: Option<&'a str>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: Vocab<'a>,
    merges: Vec<(&'a str, &'a str)>,
}

/// The vocabulary as a JSON object in id order, as HF writes it. llama.cpp tolerates a token
/// listed twice; HF's map cannot hold it, so the first id wins.
struct Vocab<'a>(&'a [&'a str]);

impl Serialize for Vocab<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seen = HashSet::with_capacity(self.0.len());
        let mut m = s.serialize_map(None)?;
        for (id, tok) in self.0.iter().enumerate() {
            if seen.insert(*tok) {
                m.serialize_entry(tok, &id)?;
            }
        }
        m.end()
    }
}
