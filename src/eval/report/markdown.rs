//! `report.md`: the per (method, budget) tables, and the study's published figures beside
//! them when the run used the study's subset.
use super::{join_distinct, phase_columns, Summary, FLOPS_SVG, SECONDS_SVG};
use crate::eval::manifest::Manifest;
use crate::eval::record::Record;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The subset name under which the study's published figures are shown.
pub const STUDY_SUBSET: &str = "seed42-128";

/// One row of the study's table (arXiv 2412.16260, as quoted in mission.md).
pub struct StudyRow {
    pub label: &'static str,
    pub method: &'static str,
    pub budget: usize,
    pub correct: usize,
    pub accuracy: &'static str,
    pub flops: &'static str,
    pub seconds: &'static str,
}

/// The study's results per question (Mistral-7B, one A100, 128 problems, 6 votes).
pub const STUDY: [StudyRow; 6] = [
    StudyRow {
        label: "baseline",
        method: "baseline",
        budget: 6,
        correct: 13,
        accuracy: "10.16%",
        flops: "11.22 T",
        seconds: "52.47 s",
    },
    StudyRow {
        label: "Quiet-STaR",
        method: "quiet-star",
        budget: 6,
        correct: 41,
        accuracy: "32.03%",
        flops: "12.73 T",
        seconds: "554.66 s",
    },
    StudyRow {
        label: "REBASE width 3",
        method: "rebase",
        budget: 3,
        correct: 14,
        accuracy: "10.94%",
        flops: "2.35 T",
        seconds: "8.47 s",
    },
    StudyRow {
        label: "REBASE width 6",
        method: "rebase",
        budget: 6,
        correct: 13,
        accuracy: "10.16%",
        flops: "4.96 T",
        seconds: "17.82 s",
    },
    StudyRow {
        label: "REBASE width 16",
        method: "rebase",
        budget: 16,
        correct: 16,
        accuracy: "12.50%",
        flops: "13.57 T",
        seconds: "46.90 s",
    },
    StudyRow {
        label: "Quiet-STaR + REBASE (width 6)",
        method: "combined",
        budget: 6,
        correct: 12,
        accuracy: "9.38%",
        flops: "4.25 T",
        seconds: "143.66 s",
    },
];

/// Two decimals, but never a misleading 0.00 for a positive value (more decimals are shown
/// then) nor `cap` (100.00 for a percentage) for a value below it.
pub fn dec2(x: f64, cap: Option<f64>) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x > 0.0 && x < 0.005 {
        let decimals = (-x.log10()).floor() as usize + 2;
        return format!("{x:.decimals$}");
    }
    let s = format!("{x:.2}");
    match cap {
        Some(c) if x < c && s == format!("{c:.2}") => format!("{:.2}", c - 0.01),
        _ => s,
    }
}

/// Scientific with 4 significant digits: `1.234e12`.
pub fn sci4(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if !x.is_finite() {
        format!("{x}")
    } else {
        format!("{x:.3e}")
    }
}

/// 4 significant digits, fixed notation for moderate magnitudes, scientific otherwise.
pub fn sig4(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return sci4(x);
    }
    let mag = x.abs().log10().floor();
    if (-3.0..5.0).contains(&mag) {
        let decimals = (3.0 - mag).max(0.0) as usize;
        format!("{x:.decimals$}")
    } else {
        sci4(x)
    }
}

/// "13/128 (10.16%)".
pub fn accuracy_cell(correct: usize, n: usize) -> String {
    let pct = if n == 0 {
        0.0
    } else {
        100.0 * correct as f64 / n as f64
    };
    format!("{correct}/{n} ({}%)", dec2(pct, Some(100.0)))
}

/// "6 votes" for the voting methods, "width 3" for the tree searches.
pub fn budget_cell(method: &str, budget: usize) -> String {
    match method {
        "baseline" | "quiet-star" => format!("{budget} votes"),
        "rebase" | "combined" => format!("width {budget}"),
        _ => format!("budget {budget}"),
    }
}

/// Text safe inside a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn table_row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

fn table_head(cells: &[&str]) -> String {
    let mut s = table_row(&cells.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    s += &format!("|{}\n", "---|".repeat(cells.len()));
    s
}

/// The ponder row shown beside a study row: same method and budget; for a study method with
/// a single row (all but REBASE) the nearest budget run if that one was not.
fn beside<'a>(row: &StudyRow, summaries: &'a [Summary]) -> Option<&'a Summary> {
    let same = summaries.iter().filter(|s| s.method == row.method);
    if let Some(s) = same.clone().find(|s| s.budget == row.budget) {
        return Some(s);
    }
    if row.method == "rebase" {
        return None;
    }
    same.min_by_key(|s| (s.budget.abs_diff(row.budget), std::cmp::Reverse(s.budget)))
}

fn study_section(out: &mut String, summaries: &[Summary]) {
    out.push_str("## The study's published figures\n\n");
    out.push_str(
        "From arXiv 2412.16260 (Mistral-7B-v0.1 and `quietstar-8-ahead`, one A100, no KV \
         cache, the same 128 problems). **Its FLOPs come from a formula that counts generated \
         tokens only** (no prompt, no Quiet-STaR thought tokens, no reward model): compare them \
         with ponder's *study-formula* column, not with ponder's exact count. Times depend on \
         the model and the hardware.\n\n",
    );
    out.push_str(&table_head(&[
        "study method",
        "study accuracy",
        "study FLOPs/q (formula)",
        "study s/q",
        "ponder run",
        "ponder accuracy",
        "ponder study-formula FLOPs/q",
        "ponder exact useful FLOPs/q",
        "ponder mean s/q",
    ]));
    for row in &STUDY {
        let mut cells = vec![
            row.label.to_string(),
            format!("{} ({}/128)", row.accuracy, row.correct),
            row.flops.to_string(),
            row.seconds.to_string(),
        ];
        match beside(row, summaries) {
            Some(s) => cells.extend([
                format!("{} {}", cell(&s.method), budget_cell(&s.method, s.budget)),
                accuracy_cell(s.correct, s.n),
                sci4(s.mean_study_flops),
                sci4(s.mean_flops),
                dec2(s.mean_seconds, None),
            ]),
            None => cells.extend([
                "not run".to_string(),
                "—".into(),
                "—".into(),
                "—".into(),
                "—".into(),
            ]),
        }
        out.push_str(&table_row(&cells));
    }
    out.push('\n');
}

/// "- {label}: v1; v2\n" over the distinct `values`, or `none` without any.
/// Tree methods: how their searches ended. An answer needs a leaf that was not dropped, so
/// this is where an accuracy of 0 from an unhelpful PRM shows.
fn tree_section(out: &mut String, summaries: &[Summary]) {
    let trees: Vec<(&Summary, &super::TreeSummary)> = summaries
        .iter()
        .filter_map(|s| s.tree.as_ref().map(|t| (s, t)))
        .collect();
    if trees.is_empty() {
        return;
    }
    out.push_str(
        "## Tree search

",
    );
    out.push_str(&table_head(&[
        "method",
        "budget",
        "steps/q",
        "dropped/q",
        "leaves/q",
        "mean depth",
        "no leaf (no answer)",
    ]));
    for (s, t) in &trees {
        out.push_str(&table_row(&[
            cell(&s.method),
            budget_cell(&s.method, s.budget),
            sig4(t.mean_steps),
            sig4(t.mean_dropped),
            sig4(t.mean_leaves),
            sig4(t.mean_depth),
            format!("{}/{}", t.no_leaf, t.problems),
        ]));
    }
    out.push_str(
        "\nSteps are the nodes the search generated; *dropped* ones scored too low (with \
         `--protocol seed`, a PRM score of 0.1 or less) or not at all, and are not expanded: \
         the width they held goes to the surviving steps of their depth, and a depth whose \
         steps are all dropped ends the search. A problem whose search found no leaf has no \
         answer: a PRM that scores every step that low ends each search at depth 1.\n\n",
    );
}

fn distinct_item<'a>(label: &str, values: impl Iterator<Item = &'a str>, none: &str) -> String {
    let joined = join_distinct(values);
    let shown = if joined.is_empty() {
        none.to_string()
    } else {
        cell(&joined)
    };
    format!("- {label}: {shown}\n")
}

/// The text of `report.md`.
pub fn render(records: &[Record], summaries: &[Summary], settings: Option<&Manifest>) -> String {
    let mut out = String::from("# ponder: GSM8K comparison of reasoning methods\n\n");
    out.push_str(&distinct_item(
        "Model",
        records.iter().map(|r| r.model.as_str()),
        "—",
    ));
    out.push_str(&distinct_item(
        "Ran on",
        records
            .iter()
            .map(|r| r.device.as_str())
            .filter(|d| !d.is_empty()),
        "— (not recorded)",
    ));
    let mut prms: Vec<(String, Vec<String>)> = Vec::new();
    for s in summaries {
        if let Some(p) = &s.prm {
            let run = format!("{}@{}", s.method, s.budget);
            match prms.iter_mut().find(|(q, _)| q == p) {
                Some((_, runs)) => runs.push(run),
                None => prms.push((p.clone(), vec![run])),
            }
        }
    }
    if prms.is_empty() {
        out.push_str("- PRM: none (no run scored steps with a reward model)\n");
    } else {
        for (p, runs) in &prms {
            writeln!(
                out,
                "- PRM: {} (used by {})",
                cell(p),
                cell(&runs.join(", "))
            )
            .unwrap();
        }
    }
    let problems: BTreeSet<usize> = records.iter().map(|r| r.index).collect();
    writeln!(
        out,
        "- Problems: {} ({} results in all)",
        problems.len(),
        records.len()
    )
    .unwrap();
    let subsets: BTreeSet<Option<&str>> = records.iter().map(|r| r.subset.as_deref()).collect();
    let subsets: Vec<String> = subsets
        .iter()
        .map(|s| s.unwrap_or("(none: data file order)").to_string())
        .collect();
    if !subsets.is_empty() {
        writeln!(out, "- Subset: {}", cell(&subsets.join(", "))).unwrap();
    }
    let seeds: BTreeSet<u64> = records.iter().map(|r| r.seed).collect();
    if !seeds.is_empty() {
        let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
        writeln!(out, "- Seed: {}", seeds.join(", ")).unwrap();
    }
    if let Some(m) = settings {
        writeln!(out, "- Settings: {}", cell(&m.describe())).unwrap();
    }
    out.push('\n');

    out.push_str("## Results per question\n\n");
    out.push_str(&table_head(&[
        "method",
        "budget",
        "accuracy",
        "mean s/q",
        "median s/q",
        "exact useful FLOPs/q",
        "executed FLOPs/q",
        "study-formula FLOPs/q",
        "generated tokens/q",
        "thought tokens/q",
        "PRM tokens/q",
        "prompt tokens/q",
        "accuracy per TFLOP",
    ]));
    for s in summaries {
        out.push_str(&table_row(&[
            cell(&s.method),
            budget_cell(&s.method, s.budget),
            accuracy_cell(s.correct, s.n),
            dec2(s.mean_seconds, None),
            dec2(s.median_seconds, None),
            sci4(s.mean_flops),
            sci4(s.mean_flops_executed),
            sci4(s.mean_study_flops),
            format!("{:.1}", s.mean_generated_tokens),
            format!("{:.1}", s.mean_thought_tokens),
            format!("{:.1}", s.mean_prm_tokens),
            format!("{:.1}", s.mean_prompt_tokens),
            sig4(s.accuracy_per_tflop),
        ]));
    }
    out.push_str(
        "\n*Exact useful* FLOPs are what the kernels computed for the method, counted from their \
         shapes (all phases: prompt prefill, decode, Quiet-STaR thoughts and mixing head, reward \
         model, sampling); *executed* adds the work done on padding. *Study-formula* FLOPs \
         apply the study's formula to the same run, for comparison with its figures: its \
         per-token cost times the generated tokens (no prompt, thoughts or PRM), and for a \
         REBASE tree the step limit per level of every step the search kept. Accuracy \
         per TFLOP is accuracy (0 to 1) divided by the exact useful TFLOPs per question.\n\n",
    );

    out.push_str("## Exact useful FLOPs per question, by phase\n\n");
    let phases = phase_columns(summaries);
    let mut head: Vec<&str> = vec!["method", "budget"];
    head.extend(phases.iter().map(String::as_str));
    head.push("total");
    out.push_str(&table_head(&head));
    for s in summaries {
        let mut cells = vec![cell(&s.method), budget_cell(&s.method, s.budget)];
        cells.extend(
            phases
                .iter()
                .map(|p| sci4(s.mean_flops_by_phase.get(p).copied().unwrap_or(0.0))),
        );
        cells.push(sci4(s.mean_flops));
        out.push_str(&table_row(&cells));
    }
    out.push('\n');

    tree_section(&mut out, summaries);

    if !records.is_empty()
        && records
            .iter()
            .all(|r| r.subset.as_deref() == Some(STUDY_SUBSET))
    {
        study_section(&mut out, summaries);
    }

    out.push_str("## Plots\n\n");
    out.push_str(
        "One point per (method, budget), the points of a method joined in budget order \
         (its compute frontier).\n\n",
    );
    writeln!(
        out,
        "- [Accuracy vs exact useful FLOPs per question]({FLOPS_SVG})"
    )
    .unwrap();
    writeln!(out, "- [Accuracy vs seconds per question]({SECONDS_SVG})").unwrap();
    writeln!(
        out,
        "\n![accuracy vs FLOPs]({FLOPS_SVG})\n\n![accuracy vs seconds]({SECONDS_SVG})"
    )
    .unwrap();
    out
}
