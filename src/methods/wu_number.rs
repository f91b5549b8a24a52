//! The number in a `--protocol wu` answer, as Wu et al.'s grader reads it. Their
//! `grade_answer` (the MATH grader their inference_scaling code imports) normalises both
//! sides before it compares, so "18 days", "1 000", "x = 18", "1e3" and "18.00000001" all
//! grade equal to 18 there, and their weighted vote groups answers with the same grader.
//! Ponder compares numbers by value (answer.rs), so it brings such answers to their number
//! here, once, at extraction: the vote's groups and the grade then follow from it. What this
//! covers of their normalisation (choices, docs/methods.md): a `\text{…}` wrapper, dollar and
//! percent signs, LaTeX spacing and degree marks, the unit words of their list (with a
//! plural and a `^N`), a short `k =` in front, enclosing braces, spaces (also after a minus),
//! exponent forms, and a float within 1e-7 of an integer. Not covered: fractions, mixed
//! numbers and other LaTeX, which their grader hands to sympy, and "million"-style words;
//! such an answer stays text, compared as written.

use super::answer::normalise_number;

/// Unit words their grader strips, in its order ("centimeter" before "meter").
const UNITS: [&str; 16] = [
    "degree",
    "cm",
    "centimeter",
    "meter",
    "mile",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "foot",
    "feet",
    "inch",
    "yard",
];

/// The canonical number (as [`normalise_number`] spells it) that Wu et al.'s grader would
/// find in `answer`, or `None` when it reads no plain number there. Their grader has two
/// normalisations and counts a match under either; they stay apart here, since mixing them
/// would read numbers that neither finds ("2 hours 30 minutes" as 230):
/// - the MATH one (their `math_normalize`): a name of at most two characters before a
///   single '=' goes ("x = 18", not "ab = 18"), then every space ("1 000");
/// - theirs (`_normalize`): unit words go, a minus takes the spaces after it ("- 5"), and
///   a digit, spaces, digit left then is a mixed number, no plain one ("2  30": none);
///   then the spaces go.
///
/// Either way a `\text{…}` wrapper, `$`, `%`, commas, LaTeX spacing, degree marks and
/// enclosing braces go first, and what is left is read as a decimal, an exponent form or a
/// float within 1e-7 of an integer (their `_is_int(float(x))`).
pub fn wu_number(answer: &str) -> Option<String> {
    let mut s = answer.trim().to_string();
    if let Some(inner) = s.strip_prefix("\\text{").and_then(|r| r.strip_suffix('}')) {
        s = inner.to_string();
    }
    for mark in [
        "\\!",
        "\\left",
        "\\right",
        "^{\\circ}",
        "^\\circ",
        "\\%",
        "\\$",
        "$",
        "%",
        ",",
    ] {
        s = s.replace(mark, "");
    }
    // The MATH normalisation: the name before '=' as written (untrimmed), then no spaces.
    let mut math = s.as_str();
    if let Some((left, right)) = math.split_once('=') {
        if !right.contains('=') && left.chars().count() <= 2 {
            math = right;
        }
    }
    if let Some(n) = read_number(math) {
        return Some(n);
    }
    // Theirs: no units, "- 5" is "-5", and a mixed number is none.
    let mut plain = s.clone();
    for unit in UNITS {
        plain = strip_unit(&plain, unit);
    }
    let mut plain = plain.trim().to_string();
    while let Some(i) = plain.find("- ") {
        plain.remove(i + 1);
    }
    let b = plain.as_bytes();
    let mixed = (1..b.len()).any(|i| {
        b[i] == b' '
            && b[i - 1].is_ascii_digit()
            && b[i..]
                .iter()
                .find(|&&c| c != b' ')
                .is_some_and(u8::is_ascii_digit)
    });
    if mixed {
        return None;
    }
    read_number(&plain)
}

/// A decimal, an exponent form or a float within 1e-7 of an integer, once spaces and
/// enclosing braces are gone.
fn read_number(s: &str) -> Option<String> {
    let mut s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    while let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        s = inner.to_string();
    }
    if let Some(n) = normalise_number(&s) {
        return Some(near_integer(&n).unwrap_or(n));
    }
    // Exponent forms ("1e3", "2.5E1"): Rust's float syntax, finite values only (it also
    // reads "inf" and "NaN", which are no answer).
    let has_digit = s.bytes().any(|b| b.is_ascii_digit());
    let x: f64 = s
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && has_digit)?;
    near_integer(&format!("{x}")).or_else(|| normalise_number(&format!("{x}")))
}

/// `unit`, an optional "es" and "s", spaces and an optional "^N", wherever `unit` occurs
/// (their pattern `{unit}(es)?(s)? *(\^[0-9]+)?`, which has no word boundary either).
fn strip_unit(s: &str, unit: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(unit) {
        out.push_str(&rest[..i]);
        let mut after = &rest[i + unit.len()..];
        after = after.strip_prefix("es").unwrap_or(after);
        after = after.strip_prefix('s').unwrap_or(after);
        after = after.trim_start_matches(' ');
        if let Some(pow) = after.strip_prefix('^') {
            let digits = pow.len() - pow.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                after = &pow[digits..];
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A decimal within 1e-7 of an integer, as that integer (their `_is_int(float(x))`).
fn near_integer(n: &str) -> Option<String> {
    if !n.contains('.') {
        return None;
    }
    let x: f64 = n.parse().ok()?;
    let r = x.round();
    ((x - r).abs() <= 1e-7 && r.abs() < 9.0e15).then(|| normalise_number(&format!("{r}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Option<String> {
        wu_number(s)
    }

    #[test]
    fn what_their_grader_reads_as_a_number() {
        let eighteen = Some("18".to_string());
        for a in [
            "18",
            "18 days",
            "18 hours",
            "18hours",
            "18 feet",
            "18 cm^2",
            "18 degrees",
            "18^\\circ",
            "x = 18",
            "k=18",
            "\\text{18}",
            "{18}",
            "$18",
            "18%",
            "1 8",
            "18.00000001",
            "17.99999999",
            "1.8e1",
            "18.000",
        ] {
            assert_eq!(n(a), eighteen, "{a:?}");
        }
        assert_eq!(n("- 5"), Some("-5".into()));
        assert_eq!(n("1 000"), Some("1000".into()));
        assert_eq!(n("1e3"), Some("1000".into()));
        assert_eq!(n("18.5"), Some("18.5".into()));
        assert_eq!(n("1.5e-1"), Some("0.15".into()));
        assert_eq!(
            n("18.0001"),
            Some("18.0001".into()),
            "past 1e-7: not an integer"
        );
    }

    #[test]
    fn what_stays_text() {
        for a in [
            "eighteen",
            "18 apples",
            "1/2",
            "3 million",
            "inf",
            "NaN",
            "",
            "ab = 5 = 6",
            "speed = 18",
            "ab = 18",
            "x = 18 days",
            "2 hours 30 minutes",
            "5 feet 6 inches",
            "1 hour, 30 minutes",
        ] {
            assert_eq!(n(a), None, "{a:?}");
        }
    }
}
