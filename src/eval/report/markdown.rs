//! `report.md`: the per (method, budget) tables, and (study.rs) the study's published
//! figures beside them when the run used the study's subset.
use super::{join_distinct, phase_columns, Summary, FLOPS_SVG, SECONDS_SVG};
use crate::eval::manifest::Manifest;
use crate::eval::record::Record;
use std::collections::BTreeSet;
use std::fmt::Write as _;

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
        "baseline" | "quiet-star" if budget == 1 => "1 vote".into(),
        "baseline" | "quiet-star" => format!("{budget} votes"),
        "rebase" | "combined" => format!("width {budget}"),
        _ => format!("budget {budget}"),
    }
}

/// Text safe inside a markdown table cell.
pub(super) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

pub(super) fn table_row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

pub(super) fn table_head(cells: &[&str]) -> String {
    let mut s = table_row(&cells.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    s += &format!("|{}\n", "---|".repeat(cells.len()));
    s
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
pub fn render(
    records: &[Record],
    summaries: &[Summary],
    settings: Option<&Manifest>,
    view: &super::View,
) -> String {
    let (full, frontiers) = (&view.full, &view.frontiers);
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
    if !view.sources.folders.is_empty() {
        writeln!(
            out,
            "- Merged from: {}",
            cell(&view.sources.folders.join(", "))
        )
        .unwrap();
    }
    for n in &view.sources.notes {
        writeln!(out, "- **Note:** {}", cell(n)).unwrap();
    }
    let partial: Vec<String> = summaries
        .iter()
        .zip(full)
        .filter(|(_, &f)| !f)
        .map(
            |(s, _)| match view.sources.incomplete.get(&(s.method.clone(), s.budget)) {
                Some(missing) => format!(
                    "{}@{} ({} results; {missing} planned never finished)",
                    s.method, s.budget, s.n
                ),
                None => format!("{}@{} ({} of {})", s.method, s.budget, s.n, problems.len()),
            },
        )
        .collect();
    if !partial.is_empty() {
        writeln!(
            out,
            "- **Not over every problem:** {}. Each of these accuracies is over its own \
             problems, so they do not compare with the other rows, and the compute \
             frontier leaves them out.",
            cell(&partial.join(", "))
        )
        .unwrap();
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
         per TFLOP is accuracy (0 to 1) divided by the exact useful TFLOPs per question. \
         Tokens: *generated* are what the policy sampled (votes, answer phases, steps); \
         *thought* are Quiet-STaR's, markers included; *PRM* are what the reward model \
         read with unlimited memory (re-reads after an eviction show in the FLOPs only); \
         *prompt* is the problem's prompt, once: text ponder adds later (the answer \
         phase's trigger, REBASE's step headers) is prefilled and counted in the FLOPs, \
         not in a token column.\n\n",
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
            .all(|r| r.subset.as_deref() == Some(super::study::STUDY_SUBSET))
    {
        super::study::study_section(&mut out, summaries, settings);
    }

    out.push_str("## Plots\n\n");
    out.push_str(
        "One point per (method, budget), the points of a method joined in budget order; the \
         dashed line is the compute frontier over the rows that ran every problem (each \
         point on it is more accurate than every cheaper one; no line when fewer than two \
         points are on it).\n\n",
    );
    for (what, f) in ["FLOPs", "seconds"].iter().zip(frontiers) {
        let on = match f.len() {
            0 => "none (no row with a cost above 0 ran every problem)".to_string(),
            _ => f.join(" → "),
        };
        writeln!(out, "- Frontier by {what}: {}", cell(&on)).unwrap();
    }
    out.push('\n');
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
