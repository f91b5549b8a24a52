//! Tokenizers: an HF `tokenizer.json` (through the `tokenizers` crate), or the byte-level
//! tokenizer of synthetic models. Plus the chat template from `tokenizer_config.json`.
use anyhow::{bail, Context, Result};
use std::path::Path;

pub enum Kind {
    Hf(Box<tokenizers::Tokenizer>),
    /// ids 0..3 are <unk>, <s>, </s>; id 3 + b is byte b. Ids that are not valid UTF-8 here
    /// (ids ≥ 259, stray bytes, specials) decode to private-use characters U+100000 + id, which
    /// encode back to the same id: random weights sample the whole vocabulary, and ids → text
    /// → ids must be the identity so that re-prompting keeps the cached prefix.
    Bytes {
        vocab: usize,
    },
}

pub struct Tokenizer {
    kind: Kind,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub chat_template: Option<String>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (and `tokenizer_config.json` when present) from a model dir.
    pub fn from_dir(dir: &Path, bos: Option<u32>, eos: Vec<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{} is missing", path.display());
        }
        let tk = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let mut chat_template = None;
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("cannot read {}", cfg_path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("malformed {}: {e}", cfg_path.display()))?;
            chat_template = v
                .get("chat_template")
                .and_then(|t| t.as_str())
                .map(String::from);
        }
        Ok(Tokenizer {
            kind: Kind::Hf(Box::new(tk)),
            bos,
            eos,
            chat_template,
        })
    }

    pub fn bytes(vocab: usize) -> Self {
        Tokenizer {
            kind: Kind::Bytes { vocab },
            bos: Some(1),
            eos: vec![2],
            chat_template: None,
        }
    }

    /// Token ids of `text`; special-token strings in the text are recognised, no BOS added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.kind {
            Kind::Hf(t) => Ok(t
                .encode_fast(text, false)
                .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
                .get_ids()
                .to_vec()),
            Kind::Bytes { vocab } => {
                if *vocab < 259 {
                    bail!("byte tokenizer needs a vocabulary of at least 259, not {vocab}");
                }
                let mut ids = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match (c as u32).checked_sub(ESCAPE_BASE) {
                        Some(id) if (id as usize) < *vocab => ids.push(id),
                        _ => ids.extend(c.to_string().bytes().map(|b| b as u32 + 3)),
                    }
                }
                Ok(ids)
            }
        }
    }

    /// The text of `ids`; with `skip_special` control tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.kind {
            Kind::Hf(t) => t
                .decode(ids, skip_special)
                .map_err(|e| anyhow::anyhow!("cannot decode: {e}")),
            Kind::Bytes { .. } => Ok(decode_bytes(ids, skip_special)),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Hf(t) => t.get_vocab_size(true),
            Kind::Bytes { vocab } => *vocab,
        }
    }

    /// The id of a string that must be exactly one token (e.g. a PRM's step tag).
    pub fn single_token(&self, s: &str) -> Result<u32> {
        let ids = self.encode(s)?;
        match ids[..] {
            [id] => Ok(id),
            _ => bail!("{s:?} is not a single token in this tokenizer ({ids:?})"),
        }
    }

    /// Applies the model's chat template to one user message, with the generation prompt.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let tpl = self
            .chat_template
            .as_deref()
            .context("this model has no chat template (tokenizer_config.json chat_template)")?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", tpl)
            .map_err(|e| anyhow::anyhow!("bad chat template: {e}"))?;
        let bos = match self.bos {
            Some(b) => self.decode(&[b], false)?,
            None => String::new(),
        };
        let eos = match self.eos.first() {
            Some(&e) => self.decode(&[e], false)?,
            None => String::new(),
        };
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => vec![minijinja::context!{ role => "user", content => user }],
                    add_generation_prompt => true,
                    bos_token => bos,
                    eos_token => eos,
                })
            })
            .map_err(|e| anyhow::anyhow!("chat template failed: {e}"))
    }
}

/// Private-use plane 16: U+100000 + id stands for token `id` when it is not plain text.
const ESCAPE_BASE: u32 = 0x10_0000;

fn escape(id: u32) -> char {
    char::from_u32(ESCAPE_BASE + id.min(0xFFFD)).unwrap_or('\u{FFFD}')
}

fn decode_bytes(ids: &[u32], skip_special: bool) -> String {
    let mut out = String::new();
    let mut run: Vec<u8> = Vec::new();
    let flush = |run: &mut Vec<u8>, out: &mut String| {
        for chunk in run.utf8_chunks() {
            out.push_str(chunk.valid());
            out.extend(chunk.invalid().iter().map(|&b| escape(b as u32 + 3)));
        }
        run.clear();
    };
    for &id in ids {
        match id {
            3..=258 => run.push((id - 3) as u8),
            0..=2 if skip_special => {}
            _ => {
                flush(&mut run, &mut out);
                out.push(escape(id));
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips() {
        let t = Tokenizer::bytes(512);
        let s = "Q: 3 + 4 = ?\nA: 7 — ok";
        let ids = t.encode(s).unwrap();
        assert_eq!(t.decode(&ids, true).unwrap(), s);
        // Whatever a random model samples, ids → text → ids is the identity.
        let sampled = [300u32, 0xE2 + 3, 40, 511, 0x80 + 3, 1, 72];
        let text = t.decode(&sampled, false).unwrap();
        assert_eq!(t.encode(&text).unwrap(), sampled);
        assert!(t.chat_prompt("hi").is_err());
    }
}
