//! GSM8K answer handling: extracting predictions and gold answers, comparing numbers, the
//! baseline's stop rule and the two REBASE leaf tests.
//!
//! Python's `\d` also matches non-ASCII decimal digits, and its `int()` reads them
//! ("١٨" is 18 there); here only ASCII `0`–`9` count. A divergence, kept because the
//! models in question write ASCII digits (a Unicode digit table would be needed to read
//! the others). Returned integers are canonical (no leading zeros), like the reference
//! code's `int(match.group())`.

use super::wu_number::wu_number;

/// Appended after the reasoning to ask for the final number (baseline and Quiet-STaR).
pub const ANSWER_TRIGGER: &str = "\nTherefore, the answer (arabic numerals) is";

/// Wu et al.'s answer phrase; also their leaf marker.
const WU_PHRASE: &str = "The answer is";
/// Math-Shepherd step tag as it follows a step (space, then Cyrillic "ки").
const STEP_TAG: &str = " ки";

/// Maximal runs of ASCII digits, left to right. Slicing at these byte offsets is safe:
/// ASCII bytes never occur inside a multi-byte UTF-8 sequence.
fn digit_runs(text: &str) -> impl Iterator<Item = &str> + '_ {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() && !bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == bytes.len() {
            return None;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        Some(&text[start..i])
    })
}

/// "007" → "7", "000" → "0": the reference votes on `int(...)`, so spellings must agree.
fn canonical_integer(run: &str) -> String {
    let trimmed = run.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

/// First `\d+` after removing every comma, so "1,234" reads as 1234 (the reference
/// removes commas from the whole string before searching). A minus sign is ignored, as
/// in the reference.
pub fn first_integer(text: &str) -> Option<String> {
    digit_runs(&text.replace(',', ""))
        .next()
        .map(canonical_integer)
}

/// Last `\d+` after removing every comma: the study's REBASE final answer.
pub fn last_integer(text: &str) -> Option<String> {
    digit_runs(&text.replace(',', ""))
        .last()
        .map(canonical_integer)
}

/// The prediction of a baseline or Quiet-STaR vote: the first integer after the last
/// [`ANSWER_TRIGGER`] (the reference's `text.split(trigger)[-1]`, which is the whole
/// text when the trigger is absent).
pub fn trigger_answer(full_text: &str) -> Option<String> {
    let tail = match full_text.rfind(ANSWER_TRIGGER) {
        Some(i) => &full_text[i + ANSWER_TRIGGER.len()..],
        None => full_text,
    };
    first_integer(tail)
}

/// Gold answer of a GSM8K `answer` field: the number after the last "####", canonical
/// (commas dropped, as the reference's extraction drops them). A field without the marker,
/// or whose tail is not one number, has no gold: the data loader reports that row as
/// malformed rather than scoring every prediction against nothing (the reference would
/// take the first integer of whatever follows, e.g. 1 from "1e400").
pub fn gold_answer(answer_field: &str) -> Result<String, String> {
    let tail = answer_field
        .rfind("####")
        .map(|i| answer_field[i + "####".len()..].trim())
        .ok_or("no gold answer: the \"answer\" has no \"#### N\"")?;
    normalise_number(tail)
        .ok_or_else(|| format!("the gold answer {tail:?} after \"####\" is not a number"))
}

/// Canonical spelling of a decimal number, for equality tests: surrounding whitespace and
/// commas dropped, optional sign, digits with at most one '.', no exponent. Leading zeros
/// of the integer part and trailing zeros of the fraction go, so "18.00", "018" and "18."
/// all give "18", ".5" gives "0.5" and "-0" gives "0". Anything else is `None`.
pub fn normalise_number(s: &str) -> Option<String> {
    let cleaned = s.trim().replace(',', "");
    let (negative, body) = match cleaned.as_bytes().first() {
        Some(b'-') => (true, &cleaned[1..]),
        Some(b'+') => (false, &cleaned[1..]),
        _ => (false, cleaned.as_str()),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int_part.len() + frac_part.len() == 0 || !all_digits(int_part) || !all_digits(frac_part) {
        return None;
    }
    let int_part = int_part.trim_start_matches('0');
    let frac_part = frac_part.trim_end_matches('0');
    let mut out = String::new();
    if negative && !(int_part.is_empty() && frac_part.is_empty()) {
        out.push('-');
    }
    out.push_str(if int_part.is_empty() { "0" } else { int_part });
    if !frac_part.is_empty() {
        out.push('.');
        out.push_str(frac_part);
    }
    Some(out)
}

/// Wu et al.'s extraction, modelled on their regex `The answer is:(.+) ки` (re.search):
/// 1. find "The answer is", skip one ':' if present (their regex requires it; our steps
///    may lack it, so it is optional);
/// 2. take the rest of that line (`.` never crosses '\n'); if the line holds " ки", cut at
///    its LAST occurrence (the regex's `.+` is greedy);
/// 3. trim, remove commas; an empty capture moves on to the next "The answer is";
/// 4. the first occurrence whose line holds the tag wins, as their search skips a line
///    without it; only when none has the tag does the first untagged line count (a path
///    that ended at EOS may carry no tag, which their regex would call "[invalid]");
/// 5. the number their grader reads there ([`wu_number`]: "$1,200.00", "18 days",
///    "x = 18" → "1200", "18", "18"); otherwise the trimmed, comma-free capture (e.g.
///    "12 apples").
pub fn wu_answer(text: &str) -> Option<String> {
    let mut untagged = None;
    let mut from = 0;
    while let Some(pos) = text[from..].find(WU_PHRASE) {
        let start = from + pos + WU_PHRASE.len();
        from = start;
        let rest = &text[start..];
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        let line = rest.split('\n').next().unwrap_or("");
        let (captured, tagged) = match line.rfind(STEP_TAG) {
            Some(i) => (&line[..i], true),
            None => (line, false),
        };
        let cleaned = captured.trim().replace(',', "");
        if cleaned.is_empty() {
            continue;
        }
        let answer = wu_number(&cleaned).unwrap_or(cleaned);
        if tagged {
            return Some(answer);
        }
        untagged.get_or_insert(answer);
    }
    untagged
}

/// Start offsets of the non-overlapping occurrences of `needle`, left to right (Python's
/// `str.count` and `str.split` count the same way).
fn occurrences<'a>(haystack: &'a str, needle: &'a str) -> impl Iterator<Item = usize> + 'a {
    let mut from = 0;
    std::iter::from_fn(move || {
        let pos = from + haystack[from..].find(needle)?;
        from = pos + needle.len();
        Some(pos)
    })
}

/// The baseline's end markers, in the reference's order.
const END_MARKERS: [&str; 2] = ["Q:", "\n\n\n"];

/// Stop rule of the baseline and Quiet-STaR, for a continuation generated after `prompt`.
///
/// The reference (Quiet-STaR's `zero-shotcot-eval.py`, the study's `base.py`) decodes the
/// WHOLE sequence, prompt included, after every token and stops once
/// `decoded.count(marker) > 1` for "Q:" or "\n\n\n", keeping the text before the last
/// occurrence. Because it checks after every token, that occurrence is the second one in
/// the full text. Here the full-text count is split into the prompt's count plus the
/// continuation's (exact as long as no occurrence straddles the seam; the protocol's
/// prompt ends in "step.", so none can), and the result is the byte offset in
/// `continuation` where the second full-text occurrence starts. With several markers the
/// earliest cut wins: "Q:" and "\n\n\n" share no character, so the occurrence that starts
/// first also ends first, i.e. is the one the token-by-token check sees first. A prompt
/// that already holds two occurrences of a marker gives `Some(0)` (the reference would
/// stop at once).
pub fn baseline_cut_after(prompt: &str, continuation: &str) -> Option<usize> {
    END_MARKERS
        .iter()
        .filter_map(|marker| {
            let in_prompt = occurrences(prompt, marker).count();
            match 2usize.checked_sub(in_prompt) {
                None | Some(0) => Some(0),
                Some(needed) => occurrences(continuation, marker).nth(needed - 1),
            }
        })
        .min()
}

/// [`baseline_cut_after`] for the protocol's prompt `"Q: " + question + "\nA: Let's think
/// step by step."`, taking its question to hold neither marker (true of GSM8K): the prompt
/// holds one "Q:" and no "\n\n\n". So the cut is at the FIRST "Q:" of the continuation
/// (the model starting a new question) or at the SECOND "\n\n\n" of the continuation,
/// whichever comes first. Note the asymmetry: one run of three newlines is not enough,
/// exactly as in the reference code.
pub fn baseline_cut(text: &str) -> Option<usize> {
    baseline_cut_after("Q: \nA: Let's think step by step.", text)
}

/// The study's loose REBASE leaf test (protocol.md): the step contains "Therefore,",
/// "Thus," or "####", or an ASCII digit appears in one of its last 3 sentences.
/// Sentences are the pieces between '.', '!', '?' and '\n'; pieces that are empty after
/// trimming are ignored. A decimal such as "3.5" is split in two, which does not matter
/// here since only the presence of a digit is tested.
pub fn study_is_leaf(step_text: &str) -> bool {
    if ["Therefore,", "Thus,", "####"]
        .iter()
        .any(|m| step_text.contains(m))
    {
        return true;
    }
    let sentences: Vec<&str> = step_text
        .split(['.', '!', '?', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let tail = &sentences[sentences.len().saturating_sub(3)..];
    tail.iter().any(|s| s.bytes().any(|b| b.is_ascii_digit()))
}

/// Wu et al.'s leaf test on a node's full text.
pub fn wu_is_leaf(full_text: &str) -> bool {
    full_text.contains(WU_PHRASE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn first_and_last_integer() {
        assert_eq!(first_integer("is 42. Then 7"), s("42"));
        assert_eq!(last_integer("is 42. Then 7"), s("7"));
        assert_eq!(first_integer(" $1,234 in total"), s("1234"));
        assert_eq!(last_integer("costs 3 then 1,000,000."), s("1000000"));
        assert_eq!(first_integer("-5 degrees"), s("5"));
        assert_eq!(first_integer("3.75"), s("3"));
        assert_eq!(first_integer("007 agents"), s("7"));
        assert_eq!(first_integer("0"), s("0"));
        assert_eq!(first_integer("no digits here"), None);
        assert_eq!(last_integer(""), None);
        // Non-ASCII digits (Arabic-Indic three, fullwidth five) do not count.
        assert_eq!(first_integer("٣ and ５ then 9"), s("9"));
        assert_eq!(first_integer("ки 12"), s("12"));
    }

    #[test]
    fn gold_answers() {
        let g = |a: &str| gold_answer(a).ok();
        assert_eq!(g("He pays 2*617=1234\n#### 1,234"), s("1234"));
        assert_eq!(g("#### 18"), s("18"));
        assert_eq!(g("a #### 3\nb\n#### 72"), s("72"));
        assert_eq!(
            g("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"),
            s("72")
        );
        assert_eq!(g("####7 "), s("7"));
        // A row without a numeric gold cannot be scored: the data loader reports it.
        for bad in [
            "no marker, answer 5",
            "#### none",
            "#### ",
            "#### 1e400",
            "#### 5 apples",
        ] {
            assert!(gold_answer(bad).is_err(), "{bad}");
        }
        assert!(gold_answer("#### five").unwrap_err().contains("\"five\""));
    }

    #[test]
    fn trigger_answers() {
        let text = format!("Q: x\nA: Let's think step by step. 3+4=7.{ANSWER_TRIGGER} 18. Then 5");
        assert_eq!(trigger_answer(&text), s("18"));
        let text = format!("12 apples{ANSWER_TRIGGER} $1,500.");
        assert_eq!(trigger_answer(&text), s("1500"));
        assert_eq!(trigger_answer(&format!("9{ANSWER_TRIGGER} unknown")), None);
        assert_eq!(trigger_answer("no trigger 4 then 6"), s("4"));
    }

    #[test]
    fn normalised_numbers() {
        assert_eq!(normalise_number("18.00"), s("18"));
        assert_eq!(normalise_number("018"), s("18"));
        assert_eq!(normalise_number("18."), s("18"));
        assert_eq!(normalise_number(" 1,234.50 "), s("1234.5"));
        assert_eq!(normalise_number(".5"), s("0.5"));
        assert_eq!(normalise_number("-0.0"), s("0"));
        assert_eq!(normalise_number("+7"), s("7"));
        assert_eq!(normalise_number("-3.10"), s("-3.1"));
        assert_eq!(normalise_number("000"), s("0"));
        for bad in ["", ".", "-", "1e3", "1.2.3", "12a", "$5", "5%", "--5"] {
            assert_eq!(normalise_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wu_answers() {
        assert_eq!(
            wu_answer("Step 2: 6*3=18 ки\nStep 3: The answer is: 18 ки"),
            s("18")
        );
        assert_eq!(wu_answer("The answer is: 1,200.00 ки\n"), s("1200"));
        assert_eq!(wu_answer("The answer is: $15 ки"), s("15"));
        assert_eq!(wu_answer("The answer is: 25% ки"), s("25"));
        assert_eq!(wu_answer("The answer is 7"), s("7"));
        assert_eq!(wu_answer("The answer is: 12 apples ки"), s("12 apples"));
        // Greedy: the capture runs to the last tag on the line.
        assert_eq!(wu_answer("The answer is: 3 ки 4 ки"), s("3 ки 4"));
        // The capture stops at the end of the line.
        assert_eq!(wu_answer("The answer is: 5\nStep 9: 6 ки"), s("5"));
        // An empty capture moves on to the next phrase.
        assert_eq!(wu_answer("The answer is: ки\nThe answer is: 9 ки"), s("9"));
        assert_eq!(wu_answer("The answer is"), None);
        assert_eq!(wu_answer("no phrase 5 ки"), None);
        // Their grader's reading (wu_number.rs): units, spaces, "x =" go.
        assert_eq!(wu_answer("The answer is: 18 days ки"), s("18"));
        assert_eq!(wu_answer("The answer is: x = 1 000 ки"), s("1000"));
        // Their search skips a line without the tag for a later one that has it; an
        // untagged line counts only when no line has the tag.
        assert_eq!(
            wu_answer("The answer is: 5\nStep 4: The answer is: 6 ки"),
            s("6")
        );
        assert_eq!(wu_answer("The answer is: 5\nThe answer is: 6"), s("5"));
    }

    #[test]
    fn baseline_cut_rules() {
        // A new question: the prompt's "Q:" is the first, this one the second.
        let t = "Step one. 5 apples.\n\nQ: Another question";
        assert_eq!(baseline_cut(t), Some(t.find("Q:").unwrap()));
        // One run of three newlines is only the first occurrence: no cut.
        assert_eq!(baseline_cut("5 apples.\n\n\nMore text"), None);
        let t = "5 apples.\n\n\nMore\n\n\nEven more";
        assert_eq!(baseline_cut(t), Some(t.rfind("\n\n\n").unwrap()));
        // Six newlines hold two non-overlapping occurrences; cut keeps three.
        assert_eq!(baseline_cut("ab\n\n\n\n\n\n"), Some(5));
        assert_eq!(baseline_cut("ab\n\n\n\n\n"), None);
        // Earliest cut wins.
        let t = "a\n\n\nb\n\n\nc Q: d";
        assert_eq!(baseline_cut(t), Some(5));
        let t = "a Q: b\n\n\nc\n\n\n";
        assert_eq!(baseline_cut(t), Some(2));
        assert_eq!(baseline_cut("plain text, no markers"), None);
        assert_eq!(baseline_cut(""), None);
    }

    #[test]
    fn baseline_cut_counts_the_prompt() {
        assert_eq!(baseline_cut_after("", "Q: a Q: b"), Some(5));
        assert_eq!(baseline_cut_after("x\n\n\ny", "a\n\n\nb"), Some(1));
        assert_eq!(baseline_cut_after("Q: Q: two already", "text"), Some(0));
        assert_eq!(
            baseline_cut_after("Q: question\nA: Let's think step by step.", " 5. Q:"),
            Some(4)
        );
    }

    #[test]
    fn study_leaf_test() {
        assert!(study_is_leaf(" Therefore, she has apples left."));
        assert!(study_is_leaf(" Thus, it works"));
        assert!(study_is_leaf("blah\n#### "));
        assert!(study_is_leaf(" She buys 3 apples."));
        assert!(study_is_leaf("There are 3 cats. A. B. "));
        // The digit is in the 4th sentence from the end: not a leaf.
        assert!(!study_is_leaf("There are 3 cats. A. B! C?"));
        // Empty pieces do not count as sentences.
        assert!(study_is_leaf("There are 3 cats... \n\n A. B."));
        assert!(!study_is_leaf(" First, we find how many apples she has."));
        assert!(!study_is_leaf(""));
        // Case and comma matter, as with the reference's substring test.
        assert!(!study_is_leaf("therefore we continue"));
    }

    #[test]
    fn wu_leaf_test() {
        assert!(wu_is_leaf("Step 3: The answer is: 18 ки"));
        assert!(!wu_is_leaf("Step 3: the answer is 18 ки"));
    }
}
