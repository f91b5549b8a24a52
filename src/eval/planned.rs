//! What each eval into a folder set out to run, beside what it finished: `DIR/planned.jsonl`
//! gets one line when an eval starts (its runs and its selected rows) and one per problem it
//! skips (too long for the model or the pool, so never recorded). A report compares them
//! with the records, so that a stopped run (killed, out of time, still running) is not
//! reported as if it had finished: results.jsonl alone cannot tell 137 of 300 problems from
//! 137 of 137.
use super::record::Record;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::rc::Rc;

pub const PLANNED: &str = "planned.jsonl";

/// One line of `planned.jsonl`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// An eval's runs (method, budget) over its selected data rows.
    Plan {
        runs: Vec<(String, usize)>,
        rows: Vec<usize>,
    },
    /// A problem that run skipped: it has no record, and is not a gap.
    Skipped {
        method: String,
        budget: usize,
        row: usize,
    },
}

/// Appends `line` to `dir/planned.jsonl` (created if missing) and syncs it. With `fresh`
/// (a folder without results: whatever plan is there never produced one, and the manifest
/// is written anew too) the file is started over.
pub fn append(dir: &Path, line: &Line, fresh: bool) -> Result<()> {
    let path = dir.join(PLANNED);
    crate::input::refuse_non_regular(&path, "")?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!fresh)
        .truncate(fresh)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_data())
        .with_context(|| format!("cannot write {}", path.display()))
}

type Key = (String, usize, usize);

/// The largest budget a plan line may name (the CLI's MAX_BUDGET).
const MAX_BUDGET: usize = 4096;

/// A folder's planned rows per (method, budget), and its skipped problems.
#[derive(Default)]
struct Planned {
    /// Each line's rows, shared by the runs it names (never their product).
    expected: HashMap<(String, usize), Vec<Rc<Vec<usize>>>>,
    skipped: HashSet<Key>,
    /// Lines that are no `Line`, or name what no eval writes (a torn last line, a hand
    /// edit): left out, and said.
    unreadable: usize,
}

/// Whether an eval could have run this (method, budget): a method by its exact name and a
/// budget it accepts.
fn known_run(method: &str, budget: usize) -> bool {
    crate::methods::engines::Method::parse(method).is_ok_and(|m| m.name() == method)
        && (1..=MAX_BUDGET).contains(&budget)
}

/// Whether `row` is a row of the data (of `rows` rows, when run.json says).
fn known_row(row: usize, rows: Option<usize>) -> bool {
    rows.is_none_or(|n| row < n)
}

/// Reads `dir/planned.jsonl`; None where there is none (a folder from before it existed).
/// `rows` is the data's row count when run.json gives it.
fn read(dir: &Path, rows: Option<usize>) -> Result<Option<Planned>> {
    let path = dir.join(PLANNED);
    crate::input::refuse_non_regular(&path, "")?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut p = Planned::default();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Line>(l) {
            Ok(Line::Plan { runs, rows: mut r })
                if runs.iter().all(|(m, b)| known_run(m, *b))
                    && r.iter().all(|&x| known_row(x, rows)) =>
            {
                r.sort_unstable();
                r.dedup();
                let r = Rc::new(r);
                for run in runs {
                    p.expected.entry(run).or_default().push(r.clone());
                }
            }
            Ok(Line::Skipped {
                method,
                budget,
                row,
            }) if known_run(&method, budget) && known_row(row, rows) => {
                p.skipped.insert((method, budget, row));
            }
            _ => p.unreadable += 1,
        }
    }
    Ok(Some(p))
}

/// What the report says of the planned problems without a record.
#[derive(Default)]
pub struct Gaps {
    /// Lines for report.md and stderr.
    pub notes: Vec<String>,
    /// Per (method, budget) with planned problems that have no record in any folder (and
    /// were not skipped): how many.
    pub incomplete: BTreeMap<(String, usize), usize>,
}

/// Compares each folder's plan with its records. Folders without `planned.jsonl` add nothing.
/// `rows` is the data's row count (run.json's), when known: a plan of rows past it is none.
pub fn gaps<P: AsRef<Path>, R: AsRef<[Record]>>(
    sets: &[(P, R)],
    rows: Option<usize>,
) -> Result<Gaps> {
    // Per (method, budget): the rows planned and skipped in any folder, and the folders whose
    // own plan has rows that no folder finished. A problem is finished wherever its record is
    // (a stopped shard's rows may have been rerun into another folder).
    #[derive(Default)]
    struct Tally {
        planned: HashSet<usize>,
        skipped: HashSet<usize>,
        /// Each folder with planned rows that have no record anywhere, and those rows.
        undone: Vec<(String, Vec<usize>)>,
    }
    let done: HashSet<(&str, usize, usize)> = sets
        .iter()
        .flat_map(|(_, rs)| {
            rs.as_ref()
                .iter()
                .map(|r| (r.method.as_str(), r.budget, r.index))
        })
        .collect();
    let mut tally: BTreeMap<(String, usize), Tally> = BTreeMap::new();
    let mut out = Gaps::default();
    for (dir, _) in sets {
        let dir = dir.as_ref();
        let Some(p) = read(dir, rows)? else { continue };
        if p.unreadable > 0 {
            out.notes.push(format!(
                "{} has {} unreadable line(s), left out of the check for unfinished runs",
                dir.join(PLANNED).display(),
                p.unreadable
            ));
        }
        for (m, b, r) in p.skipped {
            tally.entry((m, b)).or_default().skipped.insert(r);
        }
        for ((m, b), lines) in p.expected {
            let mut undone = Vec::new();
            let t = tally.entry((m.clone(), b)).or_default();
            for &r in lines.iter().flat_map(|l| l.iter()) {
                t.planned.insert(r);
                if !done.contains(&(m.as_str(), b, r)) {
                    undone.push(r);
                }
            }
            if !undone.is_empty() {
                t.undone.push((dir.display().to_string(), undone));
            }
        }
    }
    let (mut unfinished, mut skips) = (Vec::new(), Vec::new());
    for ((m, b), t) in tally {
        let finished = t
            .planned
            .iter()
            .filter(|&&r| done.contains(&(m.as_str(), b, r)))
            .count();
        let skipped = t
            .planned
            .iter()
            .filter(|&&r| !done.contains(&(m.as_str(), b, r)) && t.skipped.contains(&r))
            .count();
        let missing = t.planned.len() - finished - skipped;
        if missing > 0 {
            let mut folders: Vec<&str> = t
                .undone
                .iter()
                .filter(|(_, rows)| rows.iter().any(|r| !t.skipped.contains(r)))
                .map(|(d, _)| d.as_str())
                .collect();
            folders.sort();
            folders.dedup();
            let in_dirs = if sets.len() > 1 {
                format!(" (in {})", folders.join(", "))
            } else {
                String::new()
            };
            unfinished.push(format!(
                "{m}@{b}: {finished} of {} planned problems have results; {missing} never \
                 finished{in_dirs} (a stopped or still running eval: the same command with \
                 --resume runs them)",
                t.planned.len()
            ));
            out.incomplete.insert((m.clone(), b), missing);
        }
        if skipped > 0 {
            skips.push(format!(
                "{m}@{b}: {skipped} planned problem(s) were skipped as too long for the model's \
                 positions or the KV pool (no record)"
            ));
        }
    }
    // A sweep of many budgets stopped early has a line per budget: the first ten, then a
    // count.
    for mut lines in [unfinished, skips] {
        if lines.len() > 12 {
            let more = lines.len() - 10;
            lines.truncate(10);
            lines.push(format!("and {more} more (method, budget) pairs alike"));
        }
        out.notes.extend(lines);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::report::tests::{rec, temp_dir};

    fn plan(runs: &[(&str, usize)], rows: &[usize]) -> Line {
        Line::Plan {
            runs: runs.iter().map(|(m, b)| (m.to_string(), *b)).collect(),
            rows: rows.to_vec(),
        }
    }

    /// A stopped run's missing problems are a gap; a skipped one is not, and is said apart.
    #[test]
    fn a_gap_is_a_planned_problem_neither_done_nor_skipped() {
        let dir = temp_dir("planned-gap");
        std::fs::create_dir_all(&dir).unwrap();
        append(
            &dir,
            &plan(&[("baseline", 2), ("rebase", 2)], &[0, 1, 2]),
            true,
        )
        .unwrap();
        let skip = Line::Skipped {
            method: "rebase".into(),
            budget: 2,
            row: 2,
        };
        append(&dir, &skip, false).unwrap();
        let records = vec![
            rec("baseline", 2, 0, true, 1.0, 10),
            rec("baseline", 2, 1, true, 1.0, 10),
            rec("rebase", 2, 0, true, 1.0, 10),
            rec("rebase", 2, 1, true, 1.0, 10),
        ];
        let g = gaps(&[(dir.clone(), records.clone())], None).unwrap();
        assert_eq!(
            g.incomplete.into_iter().collect::<Vec<_>>(),
            [(("baseline".to_string(), 2), 1)]
        );
        assert_eq!(g.notes.len(), 2, "{:?}", g.notes);
        assert!(
            g.notes[0].starts_with("baseline@2: 2 of 3 planned problems have results; 1 never"),
            "{:?}",
            g.notes
        );
        assert!(g.notes[1].starts_with("rebase@2: 1 planned problem(s) were skipped"));

        // A resume that adds rows (a larger --limit) plans them too; a torn line is said.
        append(&dir, &plan(&[("baseline", 2)], &[0, 1, 2, 3]), false).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(PLANNED))
            .and_then(|mut f| f.write_all(b"{\"plan\":{\"ru"))
            .unwrap();
        let mut done = records.clone();
        done.push(rec("baseline", 2, 2, true, 1.0, 10));
        let g = gaps(&[(dir.clone(), done)], None).unwrap();
        assert_eq!(g.incomplete[&("baseline".to_string(), 2)], 1, "row 3 alone");
        assert!(g.notes[0].contains("1 unreadable line(s)"), "{:?}", g.notes);
        assert!(g.notes[1].contains("3 of 4 planned"), "{:?}", g.notes);

        // A fresh start (no results yet) forgets the old plans.
        append(&dir, &plan(&[("baseline", 2)], &[0]), true).unwrap();
        let g = gaps(&[(dir.clone(), records[..1].to_vec())], None).unwrap();
        assert!(
            g.incomplete.is_empty() && g.notes.is_empty(),
            "{:?}",
            g.notes
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stopped shard's row rerun into another folder is finished; a folder from before
    /// planned.jsonl adds records but no plan, and the counts stay those of the plans.
    #[test]
    fn a_row_finished_in_another_folder_is_no_gap() {
        let (s1, x, old) = (
            temp_dir("planned-s1"),
            temp_dir("planned-x"),
            temp_dir("planned-old"),
        );
        for d in [&s1, &x, &old] {
            std::fs::create_dir_all(d).unwrap();
        }
        append(&s1, &plan(&[("baseline", 1)], &[1, 4, 7]), true).unwrap();
        append(&x, &plan(&[("baseline", 1)], &[7]), true).unwrap();
        let r = |i| rec("baseline", 1, i, true, 1.0, 10);
        let sets = vec![
            (s1.clone(), vec![r(1), r(4)]),
            (x.clone(), vec![r(7)]),
            (old.clone(), vec![r(0), r(3), r(6)]),
        ];
        let g = gaps(&sets, None).unwrap();
        assert!(
            g.incomplete.is_empty() && g.notes.is_empty(),
            "{:?}",
            g.notes
        );
        // Without the rerun, row 7 is the one gap, named in s1 (x planned it too).
        let g = gaps(&sets[..1], None).unwrap();
        assert_eq!(g.incomplete[&("baseline".to_string(), 1)], 1);
        assert!(
            g.notes[0].starts_with("baseline@1: 2 of 3 planned"),
            "{:?}",
            g.notes
        );
        for d in [&s1, &x, &old] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// Merged shards: the note names the folders with gaps; a folder without a plan (from
    /// before planned.jsonl) adds nothing.
    #[test]
    fn merged_folders_name_where_the_gaps_are() {
        let (a, b, old) = (
            temp_dir("planned-a"),
            temp_dir("planned-b"),
            temp_dir("planned-o"),
        );
        for d in [&a, &b, &old] {
            std::fs::create_dir_all(d).unwrap();
        }
        append(&a, &plan(&[("baseline", 6)], &[0, 2]), true).unwrap();
        append(&b, &plan(&[("baseline", 6)], &[1, 3]), true).unwrap();
        let sets = vec![
            (
                a.clone(),
                vec![
                    rec("baseline", 6, 0, true, 1.0, 10),
                    rec("baseline", 6, 2, true, 1.0, 10),
                ],
            ),
            (b.clone(), vec![rec("baseline", 6, 1, true, 1.0, 10)]),
            (old.clone(), vec![rec("baseline", 6, 4, true, 1.0, 10)]),
        ];
        let g = gaps(&sets, None).unwrap();
        assert_eq!(g.notes.len(), 1, "{:?}", g.notes);
        assert!(
            g.notes[0].contains("3 of 4 planned")
                && g.notes[0].contains(&format!("(in {})", b.display())),
            "{:?}",
            g.notes
        );
        for d in [&a, &b, &old] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// A line no eval writes (an unknown method, a budget of 0, a row past the data) is
    /// unreadable, not a plan; a line of many runs and rows is read without their product.
    #[test]
    fn plan_lines_are_checked_and_never_multiplied_out() {
        let dir = temp_dir("planned-bad");
        std::fs::create_dir_all(&dir).unwrap();
        append(&dir, &plan(&[("weird\n", 2)], &[0]), true).unwrap();
        append(&dir, &plan(&[("baseline", 0)], &[0]), false).unwrap();
        append(&dir, &plan(&[("baseline", 2)], &[0, 9]), false).unwrap();
        let skip = Line::Skipped {
            method: "rebase".into(),
            budget: 2,
            row: 99,
        };
        append(&dir, &skip, false).unwrap();
        let g = gaps(&[(dir.clone(), vec![])], Some(8)).unwrap();
        assert!(g.incomplete.is_empty(), "{:?}", g.notes);
        assert_eq!(g.notes.len(), 1, "{:?}", g.notes);
        assert!(g.notes[0].contains("4 unreadable line(s)"), "{:?}", g.notes);

        // Two lines: 4 runs over 20000 rows, and every valid run (4 × 4096) over 3 rows.
        let runs: Vec<(&str, usize)> = ["baseline", "quiet-star", "rebase", "combined"]
            .iter()
            .flat_map(|m| (1..=4096).map(move |b| (*m, b)))
            .collect();
        let rows: Vec<usize> = (0..20_000).collect();
        append(&dir, &plan(&runs[..4], &rows), true).unwrap();
        append(&dir, &plan(&runs, &rows[..3]), false).unwrap();
        let t = std::time::Instant::now();
        let g = gaps(
            &[(dir.clone(), vec![rec("baseline", 1, 0, true, 1.0, 10)])],
            None,
        )
        .unwrap();
        assert!(t.elapsed().as_secs_f64() < 5.0, "{:?}", t.elapsed());
        assert_eq!(g.incomplete.len(), runs.len());
        assert_eq!(
            g.incomplete[&("baseline".to_string(), 1)],
            19_999,
            "all but row 0"
        );
        assert_eq!(g.notes.len(), 11, "ten, then a count");
        assert!(g.notes[10].starts_with(&format!("and {} more", runs.len() - 10)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
