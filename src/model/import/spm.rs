//! A SentencePiece BPE vocabulary (Llama, Mistral: pieces with "▁" for spaces, `<0xNN>` byte
//! pieces, scores) as an HF `tokenizer.json`, so that the `tokenizers` crate encodes text to
//! the ids SentencePiece itself gives. Used for GGUF files whose `tokenizer.ggml.model` is
//! "llama"; tests/mistral_tokenizer.rs holds it to SentencePiece's own ids for Mistral-7B's
//! 32000 pieces.
//!
//! SentencePiece's BPE repeatedly merges the adjacent pair whose concatenation is the piece of
//! highest score. HF's BPE repeatedly applies the merge of lowest rank. So every split of a
//! piece into two pieces becomes a merge, ranked by the merged piece's score (ties by id, as
//! SentencePiece's scores are unique but for the whitespace-run pieces that share one floor).
use super::bpe_json::{added_token, BpeJson};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;

/// SentencePiece's piece types, numbered as in its model proto and in GGUF's
/// `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceKind {
    pub fn from_code(code: i64) -> Result<PieceKind> {
        Ok(match code {
            1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => bail!("piece type {code} is not one of SentencePiece's 1..=6"),
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub score: f32,
    pub kind: PieceKind,
}

/// The merges that rebuild each normal piece from two shorter ones, best score first.
fn merges<'a>(pieces: &[Piece<'a>]) -> Vec<(&'a str, &'a str)> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(pieces.len());
    for (id, p) in pieces.iter().enumerate() {
        // Only normal pieces take part in BPE: control, unknown and byte pieces never come
        // out of a merge, and user-defined ones are matched whole (added tokens).
        if p.kind == PieceKind::Normal {
            ids.entry(p.text).or_insert(id);
        }
    }
    let mut ranked: Vec<(f32, usize, usize, &'a str, &'a str)> = Vec::new();
    for (id, p) in pieces.iter().enumerate() {
        if p.kind != PieceKind::Normal || ids.get(p.text) != Some(&id) {
            continue;
        }
        for (cut, _) in p.text.char_indices().skip(1) {
            let (l, r) = p.text.split_at(cut);
            if let (Some(&li), Some(_)) = (ids.get(l), ids.get(r)) {
                ranked.push((p.score, id, li, l, r));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}

/// The `tokenizer.json` of a SentencePiece BPE vocabulary. `add_dummy_prefix`: whether text
/// gets a leading "▁" before it is split (SentencePiece's normalizer flag; true for Llama and
/// Mistral), which decoding then strips again.
pub fn tokenizer_json(pieces: &[Piece], add_dummy_prefix: bool) -> Result<String> {
    if pieces.is_empty() {
        bail!("the vocabulary is empty");
    }
    let unk = pieces
        .iter()
        .find(|p| p.kind == PieceKind::Unknown)
        .map(|p| p.text)
        .context("the vocabulary has no unknown piece (type 2)")?;
    for p in pieces {
        if p.text.is_empty() {
            bail!("the vocabulary holds an empty piece");
        }
        if p.kind == PieceKind::Byte && byte_of(p.text).is_none() {
            bail!("byte piece {:?} is not of the form <0xNN>", p.text);
        }
    }
    let added: Vec<Value> = pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            matches!(
                p.kind,
                PieceKind::Unknown | PieceKind::Control | PieceKind::UserDefined
            )
        })
        .map(|(id, p)| added_token(id, p.text, p.kind != PieceKind::UserDefined))
        .collect();
    let space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
    let normalizer = if add_dummy_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, space]})
    } else {
        space
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_dummy_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let texts: Vec<&str> = pieces.iter().map(|p| p.text).collect();
    BpeJson {
        added_tokens: added,
        normalizer,
        pre_tokenizer: Value::Null,
        post_processor: Value::Null,
        decoder: json!({"type": "Sequence", "decoders": decoders}),
        unk_token: Some(unk),
        fuse_unk: true,
        byte_fallback: true,
        vocab: &texts,
        merges: merges(pieces),
    }
    .write()
}

fn byte_of(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: PieceKind) -> Piece<'_> {
        Piece { text, score, kind }
    }

    /// A SentencePiece-shaped vocabulary: unknown, two controls, the 256 bytes, then pieces
    /// whose scores fall with their id, and one whitespace run at the floor score.
    fn vocab(bytes: &[String]) -> Vec<Piece<'_>> {
        let mut v = vec![
            piece("<unk>", 0.0, PieceKind::Unknown),
            piece("<s>", 0.0, PieceKind::Control),
            piece("</s>", 0.0, PieceKind::Control),
        ];
        v.extend(bytes.iter().map(|b| piece(b, 0.0, PieceKind::Byte)));
        v.push(piece("▁▁", -1e9, PieceKind::Normal));
        for (i, t) in ["▁t", "he", "▁the", "▁", "t", "h", "e", "a", "▁a", "+"]
            .iter()
            .enumerate()
        {
            v.push(piece(t, -(i as f32), PieceKind::Normal));
        }
        v
    }

    fn bytes() -> Vec<String> {
        (0..=255u32).map(|b| format!("<0x{b:02X}>")).collect()
    }

    fn ids_of(v: &[Piece], names: &[&str]) -> Vec<u32> {
        names
            .iter()
            .map(|n| v.iter().position(|p| p.text == *n).unwrap() as u32)
            .collect()
    }

    #[test]
    fn encodes_as_sentencepiece_merges_by_score() {
        let b = bytes();
        let v = vocab(&b);
        let tk: tokenizers::Tokenizer = tokenizer_json(&v, true).unwrap().parse().unwrap();
        let enc = |s: &str| tk.encode(s, false).unwrap().get_ids().to_vec();
        // "▁the": ▁+t first (best score), then h+e, then ▁t+he.
        assert_eq!(enc("the"), ids_of(&v, &["▁the"]));
        assert_eq!(enc("the a"), ids_of(&v, &["▁the", "▁a"]));
        // Spaces: the word takes its "▁" first (better score), the rest of the run after.
        assert_eq!(enc(" a"), ids_of(&v, &["▁", "▁a"]));
        assert_eq!(enc("  a"), ids_of(&v, &["▁▁", "▁a"]));
        // A character outside the vocabulary falls back to its UTF-8 bytes.
        assert_eq!(enc("é"), ids_of(&v, &["▁", "<0xC3>", "<0xA9>"]));
        assert_eq!(enc("+"), ids_of(&v, &["▁", "+"]));
        // Decoding strips the dummy prefix and reassembles the bytes.
        assert_eq!(tk.decode(&enc("the é"), false).unwrap(), "the é");
        // Control pieces are special tokens, matched whole in text.
        assert_eq!(enc("<s>"), ids_of(&v, &["<s>"]));
    }

    #[test]
    fn without_the_dummy_prefix_text_starts_bare() {
        let b = bytes();
        let v = vocab(&b);
        let tk: tokenizers::Tokenizer = tokenizer_json(&v, false).unwrap().parse().unwrap();
        let ids = tk.encode("the", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, ids_of(&v, &["t", "he"]));
        assert_eq!(tk.decode(&ids, false).unwrap(), "the");
    }

    #[test]
    fn malformed_vocabularies_are_errors() {
        let b = bytes();
        let mut v = vocab(&b);
        v[0].kind = PieceKind::Normal;
        let e = tokenizer_json(&v, true).unwrap_err().to_string();
        assert!(e.contains("no unknown piece"), "{e}");
        let mut v = vocab(&b);
        v[3].text = "<0xZZ>";
        let e = tokenizer_json(&v, true).unwrap_err().to_string();
        assert!(e.contains("<0xZZ>"), "{e}");
        let mut v = vocab(&b);
        v[5].text = "";
        assert!(tokenizer_json(&v, true).is_err());
        assert!(tokenizer_json(&[], true).is_err());
        assert!(PieceKind::from_code(7).is_err());
        assert_eq!(PieceKind::from_code(6).unwrap(), PieceKind::Byte);
    }
}
