//! Stop strings and streaming: where a completion's text ends, and how much of a growing text
//! can be shown without taking anything back (a stop string's first characters, or an
//! incomplete UTF-8 sequence, may still turn out to be something else).

/// Byte offset of the earliest stop string in `text`.
pub fn first_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// What to stream next, up to `safe` bytes of `text`: what follows `sent` when `text` still
/// starts with it; when earlier text changed under it (the byte tokenizer escapes a trailing
/// incomplete UTF-8 sequence, which becomes a character once its last byte arrives), what
/// follows their longest common prefix — already-streamed text cannot be taken back, so the
/// stream then holds the old characters once, and `Completion::text` is what counts.
pub fn next_piece<'a>(text: &'a str, sent: &str, safe: usize) -> Option<&'a str> {
    let common = if text.starts_with(sent) {
        sent.len()
    } else {
        text.char_indices()
            .zip(sent.chars())
            .find(|((_, a), b)| a != b)
            .map_or(text.len().min(sent.len()), |((i, _), _)| i)
    };
    (safe > common).then(|| &text[common..safe])
}

/// How much of `text` can be shown now: not a trailing replacement character (an incomplete
/// UTF-8 sequence) and not a tail that could be the start of a stop string.
pub fn safe_prefix(text: &str, stop: &[String]) -> usize {
    let base = text.trim_end_matches('\u{FFFD}').len();
    let mut end = base;
    for s in stop {
        for (k, _) in s.char_indices().skip(1) {
            if text[..base].ends_with(&s[..k]) {
                end = end.min(base - k);
            }
        }
    }
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_bytes_for_test(ids: &[u32]) -> String {
        crate::model::tokenizer::Tokenizer::bytes(512)
            .decode(ids, true)
            .unwrap()
    }

    #[test]
    fn streaming_never_slices_text_that_changed_under_it() {
        assert_eq!(next_piece("abc", "ab", 3), Some("c"));
        assert_eq!(next_piece("abc", "abc", 3), None);
        // Seen on the CUDA emulator: the escape of a lone 0xD3 byte streamed, then 0x97
        // arrived and the text became "ӗ…": the old code sliced the new text at the old
        // length, inside a character, and panicked.
        let lone = decode_bytes_for_test(&[0xD3 + 3]);
        let both = decode_bytes_for_test(&[0xD3 + 3, 0x97 + 3, 400]);
        assert!(both.starts_with('ӗ') && !both.starts_with(lone.as_str()));
        assert_eq!(next_piece(&both, &lone, both.len()), Some(both.as_str()));
        assert_eq!(next_piece("ab\u{100169}", "ax", 6), Some("b\u{100169}"));
        assert_eq!(next_piece("ab", "abc", 2), None);
    }

    #[test]
    fn stop_strings_cut_and_hold_back() {
        let stops = vec!["Q:".to_string(), "\n\n\n".to_string()];
        assert_eq!(first_stop("abc Q: x", &stops), Some(4));
        assert_eq!(first_stop("abc", &stops), None);
        assert_eq!(safe_prefix("abc Q", &stops), 4);
        assert_eq!(safe_prefix("abc\n\n", &stops), 3);
        assert_eq!(safe_prefix("abc\u{FFFD}", &stops), 3);
    }
}
