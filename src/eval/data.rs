//! GSM8K problems: JSON lines with `question` and `answer` (gold after "#### "). Malformed
//! lines are counted and reported with their line numbers, never fatal unless nothing is left.
use crate::methods::answer::gold_answer;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The study's 128 test rows (`numpy.random.default_rng(42).permutation(1319)[:128]`), in
/// the study's order; they index the 1319-row GSM8K test split.
pub const SEED42_128: &str = include_str!("../../data/seed42-128.txt");
pub const TEST_SPLIT_ROWS: usize = 1319;
/// The gold answers of the subset's first 16 rows in the test split (protocol.md): a file of
/// 1319 rows that is not the test split, or not in its order, is refused by them.
const SEED42_FIRST_GOLDS: [&str; 16] = [
    "109", "89", "13", "5", "25", "452", "43", "34", "120", "11", "34", "12", "15", "24", "105",
    "120",
];

/// ponder's own grade-school problems in GSM8K format: the default data set (no download).
pub const DEFAULT_PROBLEMS: &str = include_str!("../../data/default-problems.jsonl");

#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// 0-based row in the data file: blank lines are not rows (a stray one must not shift
    /// the subset's rows), malformed ones are.
    pub index: usize,
    pub question: String,
    pub gold: Option<String>,
}

#[derive(Debug, Default)]
pub struct Loaded {
    /// One entry per row of the file (None for a malformed row), so indices stay row numbers.
    pub rows: Vec<Option<Problem>>,
    /// (1-based line number, reason) of every malformed line.
    pub malformed: Vec<(usize, String)>,
}

pub fn parse(text: &str) -> Loaded {
    let mut out = Loaded::default();
    // A byte-order mark (some editors write one) is not part of a line's JSON: at the start
    // of the file, or of any line (files joined with `cat` keep each one's).
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let index = out.rows.len();
        let row = serde_json::from_str::<serde_json::Value>(line)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                let q = v
                    .get("question")
                    .and_then(|q| q.as_str())
                    .ok_or("no \"question\" string")?;
                if q.trim().is_empty() {
                    return Err("an empty \"question\"".to_string());
                }
                let a = v
                    .get("answer")
                    .and_then(|a| a.as_str())
                    .ok_or("no \"answer\" string")?;
                Ok(Problem {
                    index,
                    question: q.to_string(),
                    gold: Some(gold_answer(a)?),
                })
            });
        match row {
            Ok(p) => out.rows.push(Some(p)),
            Err(e) => {
                out.malformed.push((i + 1, e));
                out.rows.push(None);
            }
        }
    }
    out
}

pub fn load(path: Option<&Path>) -> Result<Loaded> {
    let text = match path {
        Some(p) => String::from_utf8(crate::input::read_file_or_pipe(p)?)
            .map_err(|e| anyhow::anyhow!("data file {} is not UTF-8 ({e})", p.display()))?,
        None => DEFAULT_PROBLEMS.to_string(),
    };
    Ok(parse(&text))
}

/// A shard of a job array with nothing to run, while other shards have problems: an eval
/// leaves its folder empty (which `ponder report` merges as contributing nothing) and
/// succeeds, so that an array larger than the data still completes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EmptyShard(pub String);

/// Which rows to run.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub subset: Option<String>,
    pub offset: usize,
    pub limit: Option<usize>,
    /// (i, n): every n-th selected problem starting at i.
    pub shard: Option<(usize, usize)>,
}

/// More shards than any job array runs (GSM8K's test split has 1319 rows); a bound keeps a
/// merge's list of missing shards finite.
pub const MAX_SHARDS: usize = 1 << 16;

pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s.split_once('/').context("--shard wants i/n, e.g. 0/4")?;
    let (i, n): (usize, usize) = (
        i.trim().parse().context("--shard i is not a number")?,
        n.trim().parse().context("--shard n is not a number")?,
    );
    if n == 0 || i >= n {
        bail!("--shard {i}/{n}: need 0 ≤ i < n");
    }
    if n > MAX_SHARDS {
        bail!("--shard {i}/{n}: at most {MAX_SHARDS} shards");
    }
    Ok((i, n))
}

/// Applies subset, offset, limit and shard, in that order.
pub fn select(data: &Loaded, sel: &Selection) -> Result<Vec<Problem>> {
    let mut rows: Vec<usize> = match sel.subset.as_deref() {
        None => (0..data.rows.len()).collect(),
        Some("seed42-128") => {
            if data.rows.len() != TEST_SPLIT_ROWS {
                bail!(
                    "--subset seed42-128 indexes the {TEST_SPLIT_ROWS}-row GSM8K test split; this file has {} rows",
                    data.rows.len()
                );
            }
            let rows: Vec<usize> = SEED42_128
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().parse::<usize>())
                .collect::<Result<_, _>>()?;
            for (&r, want) in rows.iter().zip(SEED42_FIRST_GOLDS) {
                // A malformed row is reported as such elsewhere; its gold proves nothing.
                if let Some(Some(p)) = data.rows.get(r) {
                    if p.gold.as_deref() != Some(want) {
                        bail!(
                            "--subset seed42-128 wants GSM8K's test split in its published \
                             order: row {r} of this file has gold answer {}, the test split's \
                             is {want}",
                            p.gold.as_deref().unwrap_or("(none)")
                        );
                    }
                }
            }
            rows
        }
        Some(other) => bail!("unknown --subset {other:?} (known: seed42-128)"),
    };
    if data.rows.is_empty() {
        bail!("the data holds no problems (no non-blank lines)");
    }
    // Each step that empties the selection is named, with what it started from.
    let before = rows.len();
    rows = rows.into_iter().skip(sel.offset).collect();
    if rows.is_empty() && before > 0 {
        bail!("--offset {} skips all {before} problems", sel.offset);
    }
    if let Some(l) = sel.limit {
        if l == 0 {
            bail!("--limit 0 selects no problem");
        }
        rows.truncate(l);
    }
    let valid = |rows: &[usize]| {
        rows.iter()
            .any(|&r| matches!(data.rows.get(r), Some(Some(_))))
    };
    if let Some((i, n)) = sel.shard {
        let before = rows.len();
        let any = valid(&rows);
        rows = rows
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, r)| r)
            .collect();
        // Another shard of the same job has work: this one is empty, not wrong.
        if any && !valid(&rows) {
            let why = match rows.len() {
                0 => "none of them".to_string(),
                k => format!("{k} row(s), all malformed"),
            };
            return Err(EmptyShard(format!(
                "--shard {i}/{n} has no problem to run of the {before} selected ({why})"
            ))
            .into());
        }
    }
    let out: Vec<Problem> = rows
        .iter()
        .filter_map(|&r| data.rows.get(r).cloned().flatten())
        .collect();
    if out.is_empty() {
        // The first reason in the error itself: the error is the line a user reads.
        let first = data
            .malformed
            .first()
            .map_or(String::new(), |(line, why)| format!("; line {line}: {why}"));
        bail!(
            "no problems to run: the {} selected row(s) are all malformed ({} malformed line(s) in the data{first})",
            rows.len(),
            data.malformed.len()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_are_counted_with_their_numbers() {
        let text = "{\"question\":\"a\",\"answer\":\"#### 1\"}\nnot json\n{\"question\":\"b\"}\n{\"question\":\"c\",\"answer\":\"x #### 3\"}\n\
                    {\"question\":\"d\",\"answer\":\"#### five\"}\n{\"question\":\" \",\"answer\":\"#### 2\"}\n\
                    {\"question\":\"e\",\"answer\":\"no marker 4\"}\n";
        let d = parse(text);
        assert_eq!(d.rows.len(), 7);
        assert_eq!(
            d.malformed.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![2, 3, 5, 6, 7]
        );
        assert!(
            d.malformed[2].1.contains("\"five\" after"),
            "{:?}",
            d.malformed[2]
        );
        assert!(d.malformed[3].1.contains("empty"), "{:?}", d.malformed[3]);
        assert!(
            d.malformed[4].1.contains("no gold answer"),
            "{:?}",
            d.malformed[4]
        );
        let p = select(&d, &Selection::default()).unwrap();
        assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(p[1].gold.as_deref(), Some("3"));
        assert!(select(&parse("bad\n"), &Selection::default()).is_err());
    }

    #[test]
    fn data_of_only_malformed_lines_names_the_first_reason() {
        let d = parse("{\"q\":1}\n{\"question\":\"a\"}\n");
        let e = format!("{:#}", select(&d, &Selection::default()).unwrap_err());
        assert!(
            e.contains("are all malformed") && e.contains("line 1: no \"question\" string"),
            "{e}"
        );
    }

    #[test]
    fn a_byte_order_mark_does_not_cost_the_first_row() {
        let d = parse("\u{feff}{\"question\":\"a\",\"answer\":\"#### 1\"}\r\n{\"question\":\"b\",\"answer\":\"#### 2\"}\r\n\u{feff}{\"question\":\"c\",\"answer\":\"#### 3\"}\n");
        assert!(d.malformed.is_empty(), "{:?}", d.malformed);
        assert_eq!(d.rows.len(), 3);
        assert_eq!(
            d.rows[2].as_ref().unwrap().question,
            "c",
            "a second file's mark"
        );
        assert_eq!(d.rows[0].as_ref().unwrap().question, "a");
    }

    #[test]
    fn the_study_subset_starts_as_published_and_refuses_other_files() {
        let ids: Vec<usize> = SEED42_128
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 128);
        assert_eq!(&ids[..3], &[30, 754, 429]);
        let d = load(None).unwrap();
        let sel = Selection {
            subset: Some("seed42-128".into()),
            ..Default::default()
        };
        assert!(format!("{:#}", select(&d, &sel).unwrap_err()).contains("1319"));
        // 1319 rows whose golds at the subset's first rows are the published ones pass; one
        // changed gold (another file, or the split reordered) is refused.
        let file = |bad: Option<usize>| {
            let text: String = (0..TEST_SPLIT_ROWS)
                .map(|r| {
                    let gold = match ids[..16].iter().position(|&i| i == r) {
                        Some(k) if bad != Some(k) => SEED42_FIRST_GOLDS[k].to_string(),
                        _ => "7".to_string(),
                    };
                    format!("{{\"question\":\"q{r}\",\"answer\":\"#### {gold}\"}}\n")
                })
                .collect();
            parse(&text)
        };
        assert_eq!(select(&file(None), &sel).unwrap().len(), 128);
        let e = format!("{:#}", select(&file(Some(3)), &sel).unwrap_err());
        assert!(
            e.contains(&format!("row {} of this file has gold answer 7", ids[3])),
            "{e}"
        );
    }

    #[test]
    fn offset_limit_and_shards_partition_the_rows() {
        let d = load(None).unwrap();
        assert!(d.malformed.is_empty() && d.rows.len() >= 8);
        let all = select(&d, &Selection::default()).unwrap();
        let mut seen = vec![];
        for i in 0..3 {
            let s = Selection {
                shard: Some((i, 3)),
                ..Default::default()
            };
            seen.extend(select(&d, &s).unwrap().into_iter().map(|p| p.index));
        }
        seen.sort();
        assert_eq!(seen, all.iter().map(|p| p.index).collect::<Vec<_>>());
        let s = Selection {
            offset: 2,
            limit: Some(3),
            ..Default::default()
        };
        assert_eq!(
            select(&d, &s)
                .unwrap()
                .iter()
                .map(|p| p.index)
                .collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(parse_shard("3/3").is_err() && parse_shard("x").is_err());
        // A shard with nothing to run while others have work is empty, not an error of the
        // data: 3 problems over 8 shards, or a shard whose one row is malformed.
        let shard = |i, n, limit| Selection {
            shard: Some((i, n)),
            limit: Some(limit),
            ..Default::default()
        };
        let e = select(&d, &shard(5, 8, 3)).unwrap_err();
        assert!(e.is::<EmptyShard>(), "{e}");
        let text = "{\"question\":\"a\",\"answer\":\"#### 1\"}\nnot json\n";
        let bad = parse(text);
        assert!(select(&bad, &shard(1, 2, 2))
            .unwrap_err()
            .is::<EmptyShard>());
        assert_eq!(select(&bad, &shard(0, 2, 2)).unwrap().len(), 1);
        // With nothing valid anywhere, it stays the data's error.
        let none = parse("not json\n{oops\n");
        let e = select(&none, &shard(0, 2, 2)).unwrap_err();
        assert!(
            !e.is::<EmptyShard>() && e.to_string().contains("all malformed"),
            "{e}"
        );
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
    }
}
