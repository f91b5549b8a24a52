//! Checks of a `tokenizer.json` before the tokenizers crate reads it, for what no error and
//! no contained panic can stop: a corrupt Precompiled charsmap whose size field makes the
//! crate allocate gigabytes (the process aborts), and an added token so long that building
//! the matcher of added tokens takes minutes.
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;

/// The longest added token ponder accepts, in bytes (real ones are a few dozen).
pub const MAX_ADDED_TOKEN_BYTES: usize = 1024;

/// Parses `text` (the file at `path`) and refuses what the crate cannot be trusted with.
pub fn check(path: &Path, text: &str) -> Result<()> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("malformed {}: {e}", path.display()))?;
    if let Some(added) = v.get("added_tokens").and_then(Value::as_array) {
        for t in added {
            let len = t.get("content").and_then(Value::as_str).map_or(0, str::len);
            if len > MAX_ADDED_TOKEN_BYTES {
                bail!(
                    "{}: an added token of {len} bytes (at most {MAX_ADDED_TOKEN_BYTES})",
                    path.display()
                );
            }
        }
    }
    check_charsmaps(&v).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
}

/// Every Precompiled normalizer's charsmap, wherever it sits (alone or in a Sequence): its
/// first four bytes give the size of the trie that follows, which must be there.
fn check_charsmaps(v: &Value) -> std::result::Result<(), String> {
    match v {
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) == Some("Precompiled") {
                if let Some(Value::String(b64)) = o.get("precompiled_charsmap") {
                    let (head, len) = base64_head(b64).ok_or(
                        "a Precompiled charsmap that is not base64 of at least 4 bytes".to_string(),
                    )?;
                    let trie = u32::from_le_bytes(head) as usize;
                    if !trie.is_multiple_of(4) || 4 + trie > len {
                        return Err(format!(
                            "a Precompiled charsmap of {len} bytes whose trie claims {trie}"
                        ));
                    }
                }
            }
            o.values().try_for_each(check_charsmaps)
        }
        Value::Array(a) => a.iter().try_for_each(check_charsmaps),
        _ => Ok(()),
    }
}

/// The first four bytes of standard base64 `s` and its decoded length; None if `s` is not
/// base64 or decodes to fewer than four bytes.
fn base64_head(s: &str) -> Option<([u8; 4], usize)> {
    let s = s.trim_end_matches('=');
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    if !s.bytes().all(|c| digit(c).is_some()) || s.len() % 4 == 1 {
        return None;
    }
    let len = s.len() / 4 * 3 + (s.len() % 4).saturating_sub(1);
    if len < 4 {
        return None;
    }
    // Eight digits hold six bytes; the first four are the size.
    let mut bits = 0u64;
    for c in s.bytes().take(8) {
        bits = bits << 6 | digit(c)? as u64;
    }
    bits <<= 6 * (8 - s.len().min(8)) as u64;
    let b = (bits >> 16).to_be_bytes();
    Some(([b[4], b[5], b[6], b[7]], len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_heads_and_lengths() {
        // "/////wAAAAA=" is ff ff ff ff 00 00 00 00: a trie of 2^32 - 1 bytes in 8.
        assert_eq!(
            base64_head("/////wAAAAA="),
            Some(([0xff, 0xff, 0xff, 0xff], 8))
        );
        // "CAAAAAECAwQFBgcI" is 08 00 00 00 then 8 more bytes (the trie, 12 bytes in all).
        assert_eq!(base64_head("CAAAAAECAwQFBgcI"), Some(([8, 0, 0, 0], 12)));
        assert_eq!(base64_head("AAA="), None, "two bytes");
        assert_eq!(base64_head("AA*AAAAA"), None);
    }

    #[test]
    fn corrupt_charsmaps_and_long_added_tokens_are_refused() {
        let p = Path::new("t/tokenizer.json");
        let with = |charsmap: &str| {
            format!(
                r#"{{"normalizer":{{"type":"Sequence","normalizers":[{{"type":"Precompiled","precompiled_charsmap":"{charsmap}"}}]}}}}"#
            )
        };
        let e = check(p, &with("/////wAAAAA=")).unwrap_err().to_string();
        assert!(e.contains("whose trie claims 4294967295"), "{e}");
        assert!(check(p, &with("CAAAAAECAwQFBgcI")).is_ok());
        assert!(check(p, &with("%%%%"))
            .unwrap_err()
            .to_string()
            .contains("not base64 of at least 4 bytes"));
        let long = format!(
            r#"{{"added_tokens":[{{"id":300,"content":"{}"}}]}}"#,
            "a".repeat(2000)
        );
        let e = check(p, &long).unwrap_err().to_string();
        assert!(e.contains("an added token of 2000 bytes"), "{e}");
        let e = check(p, "{\"model\": NaN}").unwrap_err().to_string();
        assert!(e.starts_with("malformed t/tokenizer.json"), "{e}");
    }
}
