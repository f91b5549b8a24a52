//! The comparison report: per (method, budget) summaries of finished problems, written as
//! `report.md`, `summary.csv`, `summary.json` and two scatter plots (`accuracy_vs_flops.svg`,
//! `accuracy_vs_seconds.svg`).
mod markdown;
mod study;
pub(crate) use markdown::budget_cell;
mod svg;
#[cfg(test)]
mod svg_tests;
#[cfg(test)]
pub(crate) mod tests;

use crate::eval::record::Record;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The names of the files [`write_report`] writes.
pub const REPORT_MD: &str = "report.md";
pub const SUMMARY_CSV: &str = "summary.csv";
pub const SUMMARY_JSON: &str = "summary.json";
pub const FLOPS_SVG: &str = "accuracy_vs_flops.svg";
pub const SECONDS_SVG: &str = "accuracy_vs_seconds.svg";

/// The FLOP phases in the order the report lists them (others follow alphabetically).
pub const PHASES: [&str; 6] = ["prefill", "decode", "thought", "mix", "prm", "sample"];

/// What one (method, budget) did over its problems; all means are per question.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Summary {
    pub method: String,
    /// Votes (baseline, Quiet-STaR) or width (REBASE, combined).
    pub budget: usize,
    /// Problems finished.
    pub n: usize,
    pub correct: usize,
    /// correct / n, in 0..=1.
    pub accuracy: f64,
    pub mean_seconds: f64,
    pub median_seconds: f64,
    /// Exact useful FLOPs per question (all phases).
    pub mean_flops: f64,
    pub mean_flops_executed: f64,
    /// Exact useful FLOPs per question by phase (a phase a record lacks counts as 0).
    pub mean_flops_by_phase: BTreeMap<String, f64>,
    /// The study's formula FLOPs per question (comparison only).
    pub mean_study_flops: f64,
    pub mean_generated_tokens: f64,
    pub mean_thought_tokens: f64,
    pub mean_prm_tokens: f64,
    pub mean_prompt_tokens: f64,
    /// accuracy (0..1) divided by the mean exact useful TFLOPs per question; 0 when FLOPs are 0.
    pub accuracy_per_tflop: f64,
    /// The PRM that scored the steps (distinct values joined by "; " if the records differ).
    pub prm: Option<String>,
    /// The policy model (distinct values joined by "; " if the records differ).
    pub model: String,
    /// The backend and device (distinct values joined by "; "; "" if never recorded).
    #[serde(default)]
    pub device: String,
    /// How the searches ended, for tree methods whose records say (see `TreeStats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeSummary>,
}

/// Means over a (method, budget)'s problems of their `TreeStats`, and how many found no leaf.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TreeSummary {
    pub mean_steps: f64,
    pub mean_dropped: f64,
    pub mean_leaves: f64,
    pub mean_depth: f64,
    /// Problems whose search ended with no leaf (so with no answer).
    pub no_leaf: usize,
    /// Problems the means are over (those whose records have tree statistics).
    pub problems: usize,
}

fn tree_summary(rs: &[&Record]) -> Option<TreeSummary> {
    let trees: Vec<_> = rs.iter().filter_map(|r| r.tree).collect();
    if trees.is_empty() {
        return None;
    }
    let n = trees.len() as f64;
    let mean = |f: &dyn Fn(&crate::eval::record::TreeStats) -> usize| {
        trees.iter().map(|t| f(t) as f64).sum::<f64>() / n
    };
    Some(TreeSummary {
        mean_steps: mean(&|t| t.steps),
        mean_dropped: mean(&|t| t.dropped),
        mean_leaves: mean(&|t| t.leaves),
        mean_depth: mean(&|t| t.depth),
        no_leaf: trees.iter().filter(|t| t.leaves == 0).count(),
        problems: trees.len(),
    })
}

/// Where a method sorts: the study's four first, in its order, then the rest alphabetically.
pub(crate) fn method_rank(method: &str) -> (usize, &str) {
    match method {
        "baseline" => (0, ""),
        "quiet-star" => (1, ""),
        "rebase" => (2, ""),
        "combined" => (3, ""),
        other => (4, other),
    }
}

/// Distinct values in first-seen order, joined by "; ".
fn join_distinct<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen.join("; ")
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

fn summarize_group(method: &str, budget: usize, rs: &[&Record]) -> Summary {
    let n = rs.len();
    let nf = n as f64;
    // Integer sums are exact; only the final division rounds.
    let mean_u =
        |f: &dyn Fn(&Record) -> u64| rs.iter().map(|r| f(r) as u128).sum::<u128>() as f64 / nf;
    let correct = rs.iter().filter(|r| r.correct).count();
    let accuracy = correct as f64 / nf;
    let mut phase_sums: BTreeMap<String, u128> = BTreeMap::new();
    for r in rs {
        for (p, v) in &r.flops_by_phase {
            *phase_sums.entry(p.clone()).or_default() += *v as u128;
        }
    }
    let mean_flops = mean_u(&|r| r.flops);
    let prms: Vec<&str> = rs.iter().filter_map(|r| r.prm.as_deref()).collect();
    Summary {
        method: method.to_string(),
        budget,
        n,
        correct,
        accuracy,
        mean_seconds: rs.iter().map(|r| r.seconds).sum::<f64>() / nf,
        median_seconds: median(rs.iter().map(|r| r.seconds).collect()),
        mean_flops,
        mean_flops_executed: mean_u(&|r| r.flops_executed),
        mean_flops_by_phase: phase_sums
            .into_iter()
            .map(|(p, s)| (p, s as f64 / nf))
            .collect(),
        mean_study_flops: mean_u(&|r| r.study_flops),
        mean_generated_tokens: mean_u(&|r| r.generated_tokens),
        mean_thought_tokens: mean_u(&|r| r.thought_tokens),
        mean_prm_tokens: mean_u(&|r| r.prm_tokens),
        mean_prompt_tokens: mean_u(&|r| r.prompt_tokens),
        accuracy_per_tflop: if mean_flops > 0.0 {
            accuracy / (mean_flops / 1e12)
        } else {
            0.0
        },
        prm: if prms.is_empty() {
            None
        } else {
            Some(join_distinct(prms.into_iter()))
        },
        model: join_distinct(rs.iter().map(|r| r.model.as_str())),
        device: join_distinct(
            rs.iter()
                .map(|r| r.device.as_str())
                .filter(|d| !d.is_empty()),
        ),
        tree: tree_summary(rs),
    }
}

/// One summary per (method, budget): methods in the order baseline, quiet-star, rebase,
/// combined, then the others alphabetically; budgets ascending.
pub fn summarize(records: &[Record]) -> Vec<Summary> {
    type Group<'a> = (&'a str, Vec<&'a Record>);
    let mut groups: BTreeMap<((usize, &str), usize), Group> = BTreeMap::new();
    for r in records {
        let key = (method_rank(&r.method), r.budget);
        groups
            .entry(key)
            .or_insert_with(|| (r.method.as_str(), Vec::new()))
            .1
            .push(r);
    }
    groups
        .into_iter()
        .map(|((_, budget), (method, rs))| summarize_group(method, budget, &rs))
        .collect()
}

/// Merging result directories: every record must come from one run, the same model, seed
/// and subset (what each record carries: a check of the records themselves, beside run.json's
/// of the folders); fails naming the two folders and the field.
pub fn check_one_run(sets: &[(PathBuf, Vec<Record>)]) -> Result<()> {
    let mut first: Option<(&Path, &Record)> = None;
    for (dir, records) in sets {
        for r in records {
            let Some((d0, r0)) = first else {
                first = Some((dir, r));
                continue;
            };
            let differs = r0
                .run_fields()
                .into_iter()
                .zip(r.run_fields())
                .find(|((_, a), (_, b))| a != b);
            if let Some(((key, a), (_, b))) = differs {
                if d0 == dir.as_path() {
                    bail!(
                        "{} mixes results of different runs: {key} is {a} for {} row {} and \
                         {b} for {} row {}",
                        dir.join(super::results::RESULTS).display(),
                        r0.method,
                        r0.index,
                        r.method,
                        r.index
                    );
                }
                bail!(
                    "the results in {} and {} come from different runs: {key} is {a} in one \
                     and {b} in the other",
                    d0.display(),
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

/// Merging result directories (shards): fails, naming both directories and the
/// (method, budget, index), if a problem's result appears in two of them.
pub fn check_no_overlap(sets: &[(PathBuf, Vec<Record>)]) -> Result<()> {
    let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
    for (dir, _) in sets {
        let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        if let Some(first) = seen.insert(real, dir) {
            bail!(
                "the results folder {} is named twice ({} and {})",
                dir.display(),
                first.display(),
                dir.display()
            );
        }
    }
    let mut owner: HashMap<(String, usize, usize), usize> = HashMap::new();
    for (i, (dir, records)) in sets.iter().enumerate() {
        // (read_records refuses a key repeated inside one directory.)
        let keys: BTreeSet<_> = records.iter().map(Record::key).collect();
        for key in keys {
            if let Some(&j) = owner.get(&key) {
                bail!(
                    "result directories {} and {} both hold (method {}, budget {}, index {}); \
                     shards to merge must not overlap",
                    sets[j].0.display(),
                    dir.display(),
                    key.0,
                    key.1,
                    key.2
                );
            }
            owner.insert(key, i);
        }
    }
    Ok(())
}

/// Every phase present in the summaries: the known ones in [`PHASES`] order, then the rest.
pub(crate) fn phase_columns(summaries: &[Summary]) -> Vec<String> {
    let present: BTreeSet<&str> = summaries
        .iter()
        .flat_map(|s| s.mean_flops_by_phase.keys().map(String::as_str))
        .collect();
    let mut cols: Vec<String> = PHASES.iter().map(|p| p.to_string()).collect();
    cols.extend(
        present
            .iter()
            .filter(|p| !PHASES.contains(p))
            .map(|p| p.to_string()),
    );
    cols
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `summary.csv`: one row per (method, budget); floats in full precision (Rust's shortest
/// round-trip form), one `flops_<phase>` column per phase.
pub fn summary_csv(summaries: &[Summary]) -> String {
    let phases = phase_columns(summaries);
    let mut out = String::from(
        "method,budget,n,correct,accuracy,mean_seconds,median_seconds,mean_flops,\
         mean_flops_executed,mean_study_flops,mean_generated_tokens,mean_thought_tokens,\
         mean_prm_tokens,mean_prompt_tokens,accuracy_per_tflop,prm,model,device",
    );
    for p in &phases {
        write!(out, ",{}", csv_field(&format!("flops_{p}"))).unwrap();
    }
    out.push('\n');
    for s in summaries {
        write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&s.method),
            s.budget,
            s.n,
            s.correct,
            s.accuracy,
            s.mean_seconds,
            s.median_seconds,
            s.mean_flops,
            s.mean_flops_executed,
            s.mean_study_flops,
            s.mean_generated_tokens,
            s.mean_thought_tokens,
            s.mean_prm_tokens,
            s.mean_prompt_tokens,
            s.accuracy_per_tflop,
            csv_field(s.prm.as_deref().unwrap_or("")),
            csv_field(&s.model),
            csv_field(&s.device),
        )
        .unwrap();
        for p in &phases {
            write!(
                out,
                ",{}",
                s.mean_flops_by_phase.get(p).copied().unwrap_or(0.0)
            )
            .unwrap();
        }
        out.push('\n');
    }
    out
}

/// The points of a plot: accuracy (%) against `x` of each summary.
fn plot_points(
    summaries: &[Summary],
    full: &[bool],
    x: impl Fn(&Summary) -> f64,
) -> Vec<svg::Point> {
    summaries
        .iter()
        .zip(full)
        .map(|(s, &full)| svg::Point {
            series: s.method.clone(),
            label: format!("{}@{}", s.method, s.budget),
            x: x(s),
            y: s.accuracy * 100.0,
            full,
        })
        .collect()
}

/// Per summary row (in `summaries`' order): whether it ran every problem the records hold.
/// A row of fewer (a budget added to part of the problems, a merge of shards that ran
/// different budgets) has an accuracy over its own problems only.
fn full_rows(records: &[Record], summaries: &[Summary]) -> Vec<bool> {
    let all: BTreeSet<usize> = records.iter().map(|r| r.index).collect();
    let mut sets: HashMap<(&str, usize), BTreeSet<usize>> = HashMap::new();
    for r in records {
        sets.entry((r.method.as_str(), r.budget))
            .or_default()
            .insert(r.index);
    }
    summaries
        .iter()
        .map(|s| sets.get(&(s.method.as_str(), s.budget)) == Some(&all))
        .collect()
}

/// The (method@budget) labels on the compute frontier of `x` against accuracy, among the
/// rows that ran every problem and that a log axis can show (x > 0), cheapest first.
fn frontier_labels(
    summaries: &[Summary],
    full: &[bool],
    x: impl Fn(&Summary) -> f64,
) -> Vec<String> {
    let rows: Vec<&Summary> = summaries
        .iter()
        .zip(full)
        .filter(|(s, &f)| f && x(s).is_finite() && x(s) > 0.0)
        .map(|(s, _)| s)
        .collect();
    let pts: Vec<(f64, f64)> = rows.iter().map(|s| (x(s), s.accuracy)).collect();
    svg::frontier(&pts)
        .into_iter()
        .map(|i| format!("{}@{}", rows[i].method, rows[i].budget))
        .collect()
}

/// Where a report's records came from, when it merges folders: report.md names them and
/// repeats the merge's notes (missing shards, machines), which stderr alone would lose.
#[derive(Default)]
pub struct Sources {
    pub folders: Vec<String>,
    pub notes: Vec<String>,
    /// The rows with planned problems that never finished (eval/planned.rs), with how many
    /// never did: not over every problem, whatever the records alone say.
    pub incomplete: BTreeMap<(String, usize), usize>,
}

/// What report.md says beside the summaries (markdown::render).
pub(crate) struct View<'a> {
    /// Per summary row: whether it ran every problem.
    pub full: Vec<bool>,
    /// The labels on the FLOPs and the seconds frontiers.
    pub frontiers: [Vec<String>; 2],
    pub sources: &'a Sources,
}

/// Writes `report.md`, `summary.csv`, `summary.json`, `accuracy_vs_flops.svg` and
/// `accuracy_vs_seconds.svg` into `dir` (created if missing); returns the text of `report.md`.
/// `settings` (the run's manifest, when it has one) goes into report.md's header.
pub fn write_report(
    dir: &Path,
    records: &[Record],
    settings: Option<&crate::eval::manifest::Manifest>,
    sources: &Sources,
) -> Result<String> {
    crate::input::create_dir(dir)?;
    let summaries = summarize(records);
    let write = |name: &str, text: &str| -> Result<()> {
        let path = dir.join(name);
        crate::input::refuse_non_regular(&path, "")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    let full: Vec<bool> = full_rows(records, &summaries)
        .into_iter()
        .zip(&summaries)
        .map(|(f, s)| {
            f && !sources
                .incomplete
                .contains_key(&(s.method.clone(), s.budget))
        })
        .collect();
    let view = View {
        frontiers: [
            frontier_labels(&summaries, &full, |s| s.mean_flops),
            frontier_labels(&summaries, &full, |s| s.mean_seconds),
        ],
        full,
        sources,
    };
    let full = &view.full;
    let md = markdown::render(records, &summaries, settings, &view);
    write(REPORT_MD, &md)?;
    write(SUMMARY_CSV, &summary_csv(&summaries))?;
    write(
        SUMMARY_JSON,
        &(serde_json::to_string_pretty(&summaries)? + "\n"),
    )?;
    let flops = svg::scatter(
        "Accuracy vs exact useful FLOPs per question",
        "exact useful FLOPs per question (log scale)",
        &plot_points(&summaries, full, |s| s.mean_flops),
    );
    write(FLOPS_SVG, &flops)?;
    let seconds = svg::scatter(
        "Accuracy vs time per question",
        "mean seconds per question (log scale)",
        &plot_points(&summaries, full, |s| s.mean_seconds),
    );
    write(SECONDS_SVG, &seconds)?;
    Ok(md)
}
