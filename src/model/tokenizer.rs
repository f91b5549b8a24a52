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
    /// The template string, or why the one in tokenizer_config.json cannot be used.
    pub chat_template: Option<std::result::Result<String, String>>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (and `tokenizer_config.json` when present) from a model dir.
    pub fn from_dir(dir: &Path, bos: Option<u32>, eos: Vec<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{} is missing", path.display());
        }
        for p in [&path, &dir.join("tokenizer_config.json")] {
            crate::input::refuse_non_regular(p, "")?;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        super::tokenizer_file::check(&path, &text)?;
        // The crate panics on some files it cannot use (contained: an error like any other).
        let what = format!("cannot load tokenizer {}", path.display());
        let mut tk = crate::guard::contain(&what, || text.parse::<tokenizers::Tokenizer>())?
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        // ponder encodes whole prompts and checks their length itself: a file's truncation
        // (which panics inside the crate when its stride is not below its max_length) and
        // padding (which can ask for terabytes of pad tokens) are never wanted.
        tk.with_truncation(None)
            .map_err(|e| anyhow::anyhow!("tokenizer {}: {e}", path.display()))?;
        tk.with_padding(None);
        let mut chat_template = None;
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("cannot read {}", cfg_path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("malformed {}: {e}", cfg_path.display()))?;
            chat_template = match v.get("chat_template") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(t)) => Some(Ok(t.clone())),
                // HF also allows a list of named templates; ponder renders one string. Only
                // --chat needs it, so the model still loads.
                Some(other) => Some(Err(format!(
                    "{}: chat_template is a {}, not one template string",
                    cfg_path.display(),
                    match other {
                        serde_json::Value::Array(_) => "list",
                        serde_json::Value::Object(_) => "map",
                        _ => "non-string value",
                    }
                ))),
            };
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
            Kind::Hf(t) => Ok(crate::guard::contain("the model's tokenizer failed", || {
                t.encode_fast(text, false)
            })?
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
            Kind::Hf(t) => crate::guard::contain("the model's tokenizer failed", || {
                t.decode(ids, skip_special)
            })?
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}")),
            Kind::Bytes { .. } => Ok(decode_bytes(ids, skip_special)),
        }
    }

    /// The text of `ids` as it reads after `context` (the tokens just before them). The
    /// decoders of SentencePiece tokenizers (Llama, Mistral: Metaspace, or Replace + Strip)
    /// drop the leading space of a string's first token, so a continuation decoded alone
    /// loses the space that joins it to its prompt ("step.The" for "step. The"), where the
    /// reference decodes the whole sequence. So the last few context tokens are decoded
    /// with `ids` and their own text removed; when that text is not a prefix of the whole
    /// (a character split across the seam), `ids` alone. Byte-level BPE decodes by
    /// concatenation, so there this gives what `decode(ids)` gives.
    pub fn decode_continuation(
        &self,
        context: &[u32],
        ids: &[u32],
        skip_special: bool,
    ) -> Result<String> {
        // A seam needs one context token; a few more let a multi-token character or a
        // special token just before it decode as it does inside the whole sequence.
        const WINDOW: usize = 4;
        let ctx = &context[context.len().saturating_sub(WINDOW)..];
        if ctx.is_empty() || ids.is_empty() || matches!(self.kind, Kind::Bytes { .. }) {
            return self.decode(ids, skip_special);
        }
        let head = self.decode(ctx, skip_special)?;
        let whole = self.decode(&[ctx, ids].concat(), skip_special)?;
        match whole.strip_prefix(head.as_str()) {
            Some(rest) => Ok(rest.to_string()),
            None => self.decode(ids, skip_special),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Hf(t) => t.get_vocab_size(true),
            Kind::Bytes { vocab } => *vocab,
        }
    }

    /// The base vocabulary of a model with `model_vocab` embedding rows: ids at or above it
    /// are never sampled (protocol.md). That is the lowest id of the thought markers
    /// `<|startthought|>` / `<|endthought|>` a Quiet-STaR checkpoint adds, when it has them,
    /// and never more than the model's rows or the tokenizer's ids.
    pub fn base_vocab(&self, model_vocab: usize) -> usize {
        let limit = model_vocab.min(self.vocab_size().max(1));
        match self.thought_markers() {
            Some((a, b)) => limit.min(a.min(b) as usize),
            None => limit,
        }
    }

    /// The ids of `<|startthought|>` and `<|endthought|>` when both are single tokens, as a
    /// Quiet-STaR checkpoint's tokenizer adds them (the release: end 32000, start 32001).
    pub fn thought_markers(&self) -> Option<(u32, u32)> {
        let marker = |s: &str| match self.encode(s).ok().as_deref() {
            Some(&[id]) => Some(id),
            _ => None,
        };
        Some((marker("<|startthought|>")?, marker("<|endthought|>")?))
    }

    /// The most bytes of text one token stands for, bounded above by its longest vocabulary
    /// entry (a byte-level BPE's entries spell each byte as one character, SentencePiece's
    /// "▁" is three bytes for one space); the byte tokenizer's escapes are four.
    pub fn longest_token_bytes(&self) -> usize {
        match &self.kind {
            Kind::Hf(t) => t.get_vocab(true).keys().map(String::len).max().unwrap_or(1),
            Kind::Bytes { .. } => 4,
        }
    }

    /// Refuses, before tokenizing it, a text too long for `positions` tokens by any reading:
    /// tokenizing costs about 140 bytes of memory per byte of text, and a 64 MiB prompt file
    /// aborted the process before its length was ever checked. A normalizer may shorten the
    /// text, hence the slack of four.
    pub fn check_fits(&self, text: &str, positions: usize, what: &str) -> Result<()> {
        let per = self.longest_token_bytes().max(1);
        let cap = positions.saturating_mul(per).saturating_mul(4);
        if text.len() > cap {
            bail!(
                "{what} of {} bytes is longer than ponder takes for the model's {positions} \
                 positions (4 × the positions × {per} bytes, this tokenizer's longest token)",
                text.len()
            );
        }
        Ok(())
    }

    /// The id of a string that must be exactly one token (e.g. a PRM's step tag).
    pub fn single_token(&self, s: &str) -> Result<u32> {
        let ids = self.encode(s)?;
        match ids[..] {
            [id] => Ok(id),
            _ if ids.len() > 8 => bail!(
                "{s:?} is not a single token in this tokenizer ({} tokens: {:?}, …)",
                ids.len(),
                &ids[..8]
            ),
            _ => bail!("{s:?} is not a single token in this tokenizer ({ids:?})"),
        }
    }

    /// Applies the model's chat template to one user message, with the generation prompt.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let tpl = match &self.chat_template {
            Some(Ok(t)) => t.clone(),
            Some(Err(why)) => bail!("{why}"),
            None => bail!("this model has no chat template (tokenizer_config.json chat_template)"),
        };
        let bos = match self.bos {
            Some(b) => self.decode(&[b], false)?,
            None => String::new(),
        };
        let eos = match self.eos.first() {
            Some(&e) => self.decode(&[e], false)?,
            None => String::new(),
        };
        // Fuel counts a template's instructions, not the work inside one (a sequence repeated
        // 2^63 times and printed): rendered on a thread of its own, a template that has not
        // finished by the deadline is an error, and its thread is left to the process's end.
        let user = user.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("chat-template".into())
            .spawn(move || {
                let r = crate::guard::contain("chat template failed", || {
                    render_chat(&tpl, &user, &bos, &eos)
                });
                let _ = tx.send(r.and_then(|r| r));
            })
            .context("cannot start the chat template's thread")?;
        match rx.recv_timeout(CHAT_TEMPLATE_DEADLINE) {
            Ok(r) => r,
            Err(_) => bail!(
                "chat template failed: it did not finish in {} s",
                CHAT_TEMPLATE_DEADLINE.as_secs()
            ),
        }
    }
}

/// How long a chat template may take (real ones take well under a millisecond).
const CHAT_TEMPLATE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The chat template `tpl` applied to one user message, with the generation prompt.
fn render_chat(tpl: &str, user: &str, bos: &str, eos: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    // A template is code from the model folder: bound its work, so that a runaway loop
    // ends as an error rather than a hang (real chat templates take a few thousand).
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.add_template("chat", tpl)
        .map_err(|e| anyhow::anyhow!("bad chat template: {e}"))?;
    // Fuel bounds the instructions, not the text: the output is capped as it is written.
    let mut out = Capped(Vec::new());
    env.get_template("chat")
        .and_then(|t| {
            t.render_captured_to(
                minijinja::context! {
                    messages => vec![minijinja::context!{ role => "user", content => user }],
                    add_generation_prompt => true,
                    bos_token => bos,
                    eos_token => eos,
                },
                &mut out,
            )
            .map(|_| ())
        })
        .map_err(|e| match out.0.len() > CHAT_TEMPLATE_BYTES {
            true => {
                anyhow::anyhow!(
                    "chat template failed: its output passed {CHAT_TEMPLATE_BYTES} bytes"
                )
            }
            false => anyhow::anyhow!("chat template failed: {e}"),
        })?;
    String::from_utf8(out.0).map_err(|_| anyhow::anyhow!("chat template output is not UTF-8"))
}

/// The most text a chat template may produce (a prompt plus its markup is a few KB).
const CHAT_TEMPLATE_BYTES: usize = 1 << 20;

/// A writer that fails once it holds more than `CHAT_TEMPLATE_BYTES`.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        match self.0.len() > CHAT_TEMPLATE_BYTES {
            true => Err(std::io::Error::other("chat template output too large")),
            false => Ok(b.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Instructions a chat template may run (minijinja's fuel).
const CHAT_TEMPLATE_FUEL: u64 = 1_000_000;

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

    /// A word-level tokenizer of four words, with the two thought markers added at ids 4 and
    /// 5 when `markers` gives their ids (start, end).
    fn word_tokenizer(markers: Option<(u32, u32)>) -> Tokenizer {
        let entry = |id: u32, content: &str| {
            format!(
                r#"{{"id":{id},"content":"{content}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#
            )
        };
        // In id order, as a file lists them (the crate numbers added tokens in file order).
        let added = match markers {
            Some((start, end)) => {
                let mut e = [(start, "<|startthought|>"), (end, "<|endthought|>")];
                e.sort();
                format!("[{},{}]", entry(e[0].0, e[0].1), entry(e[1].0, e[1].1))
            }
            None => "[]".into(),
        };
        let json = word_json(r#""truncation":null,"padding":null"#, &added);
        from_files(&format!("words-{markers:?}"), &json, None, None)
    }

    /// tokenizer.json of the four-word vocabulary, with `settings` (its truncation and
    /// padding) and `added` tokens.
    fn word_json(settings: &str, added: &str) -> String {
        format!(
            r#"{{"version":"1.0",{settings},"added_tokens":{added},
              "normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,
              "decoder":null,"model":{{"type":"WordLevel","vocab":{{"a":0,"b":1,"c":2,"<unk>":3}},
              "unk_token":"<unk>"}}}}"#
        )
    }

    /// A tokenizer loaded from a scratch folder holding `tokenizer_json` (and
    /// `tokenizer_config`, when given), as a model directory would hold them.
    fn from_files(
        tag: &str,
        tokenizer_json: &str,
        tokenizer_config: Option<&str>,
        bos: Option<u32>,
    ) -> Tokenizer {
        let dir = std::env::temp_dir().join(format!("ponder-tok-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json).unwrap();
        if let Some(c) = tokenizer_config {
            std::fs::write(dir.join("tokenizer_config.json"), c).unwrap();
        }
        let t = Tokenizer::from_dir(&dir, bos, vec![]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        t
    }

    #[test]
    fn the_base_vocabulary_ends_below_the_thought_markers() {
        // A Quiet-STaR checkpoint: 6 embedding rows, the markers at 4 and 5 never sampled,
        // in either order (the release has the end marker first).
        for (start, end) in [(4, 5), (5, 4)] {
            let q = word_tokenizer(Some((start, end)));
            assert_eq!(q.vocab_size(), 6);
            assert_eq!(q.thought_markers(), Some((start, end)));
            assert_eq!(q.base_vocab(6), 4);
            assert_eq!(q.base_vocab(3), 3);
        }
        // A plain tokenizer: the smaller of the model's rows and the tokenizer's ids.
        let plain = word_tokenizer(None);
        assert_eq!(plain.thought_markers(), None);
        assert_eq!(plain.base_vocab(10), 4);
        assert_eq!(plain.base_vocab(2), 2);
        assert_eq!(Tokenizer::bytes(512).base_vocab(600), 512);
    }

    /// A Llama/Mistral-style decoder (▁ for spaces, byte fallback, the first space
    /// stripped) over a word-level vocabulary, with `<s>` as a special token.
    fn sentencepiece_tokenizer() -> Tokenizer {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,
          "added_tokens":[{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
          "normalizer":null,"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,
          "decoder":{"type":"Sequence","decoders":[
            {"type":"Replace","pattern":{"String":"▁"},"content":" "},
            {"type":"ByteFallback"},{"type":"Fuse"},
            {"type":"Strip","content":" ","start":1,"stop":0}]},
          "model":{"type":"WordLevel","vocab":{"<s>":0,"▁step.":1,"▁The":2,"▁total":3,"<unk>":4,
            "<0xC3>":5,"<0xA9>":6},"unk_token":"<unk>"}}"#;
        from_files("sp", json, None, Some(0))
    }

    /// The word tokenizer with `settings` for its truncation and padding, and a chat
    /// template that would loop 10^10 times.
    fn word_tokenizer_with(settings: &str, tag: &str) -> Tokenizer {
        let json = word_json(settings, "[]");
        let runaway = r#"{"chat_template":"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"}"#;
        from_files(tag, &json, Some(runaway), None)
    }

    #[test]
    fn a_files_truncation_padding_and_runaway_template_are_not_obeyed() {
        // A stride not below max_length made the tokenizers crate panic; padding to 2^40
        // tokens aborted on the allocation. ponder encodes whole prompts, unpadded.
        for (tag, settings) in [
            (
                "trunc",
                r#""truncation":{"max_length":1,"strategy":"LongestFirst","stride":5,"direction":"Right"},"padding":null"#,
            ),
            (
                "pad",
                r#""truncation":null,"padding":{"strategy":{"Fixed":1099511627776},"direction":"Right","pad_to_multiple_of":null,"pad_id":0,"pad_type_id":0,"pad_token":"<unk>"}"#,
            ),
        ] {
            let t = word_tokenizer_with(settings, tag);
            assert_eq!(t.encode("a b c a").unwrap(), vec![0, 1, 2, 0], "{tag}");
            assert_eq!(t.base_vocab(10), 4);
            // 10^10 loop turns: out of fuel, an error rather than a hang.
            let e = t.chat_prompt("hi").unwrap_err().to_string();
            assert!(e.contains("fuel"), "{e}");
        }
    }

    #[test]
    fn a_continuation_keeps_the_space_that_joins_it_to_its_prompt() {
        let t = sentencepiece_tokenizer();
        // Alone, the decoder strips the first token's space; after its prompt it is kept,
        // as in the whole sequence's text.
        assert_eq!(t.decode(&[2, 3], true).unwrap(), "The total");
        assert_eq!(t.decode(&[0, 1, 2, 3], true).unwrap(), "step. The total");
        assert_eq!(
            t.decode_continuation(&[0, 1], &[2, 3], true).unwrap(),
            " The total"
        );
        // A prompt of only special tokens: the whole sequence starts with the continuation.
        assert_eq!(
            t.decode_continuation(&[0], &[2, 3], true).unwrap(),
            "The total"
        );
        // A character split across the seam (é as two byte tokens): the continuation alone.
        assert_eq!(t.decode(&[1, 5, 6], true).unwrap(), "step.é");
        let split = t.decode_continuation(&[1, 5], &[6], true).unwrap();
        assert_eq!(split, t.decode(&[6], true).unwrap());
        // Nothing generated yet, or no prompt: as decode.
        assert_eq!(t.decode_continuation(&[1], &[], true).unwrap(), "");
        assert_eq!(t.decode_continuation(&[], &[2], true).unwrap(), "The");
        // Byte-level tokenizers decode by concatenation: unchanged.
        let b = Tokenizer::bytes(512);
        let ids = b.encode(" x y").unwrap();
        let ctx = b.encode("a.").unwrap();
        assert_eq!(b.decode_continuation(&ctx, &ids, true).unwrap(), " x y");
    }
}
