//! The study's published figures (arXiv 2412.16260, as quoted in mission.md) beside
//! ponder's rows, and what about the run differs from the study's setup, so that the table
//! is never read as like for like when it is not.
use super::markdown::{accuracy_cell, budget_cell, cell, dec2, sci4, table_head, table_row};
use super::Summary;
use crate::eval::manifest::Manifest;

/// The subset name under which the study's published figures are shown.
pub const STUDY_SUBSET: &str = "seed42-128";

/// How many problems the study ran.
const STUDY_PROBLEMS: usize = 128;

/// One row of the study's table.
pub struct StudyRow {
    pub label: &'static str,
    pub method: &'static str,
    pub budget: usize,
    pub correct: usize,
    pub accuracy: &'static str,
    /// FLOPs per question by the study's formula (published as e.g. "11.22 T").
    pub flops: f64,
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
        flops: 11.22e12,
        seconds: "52.47 s",
    },
    StudyRow {
        label: "Quiet-STaR",
        method: "quiet-star",
        budget: 6,
        correct: 41,
        accuracy: "32.03%",
        flops: 12.73e12,
        seconds: "554.66 s",
    },
    StudyRow {
        label: "REBASE width 3",
        method: "rebase",
        budget: 3,
        correct: 14,
        accuracy: "10.94%",
        flops: 2.35e12,
        seconds: "8.47 s",
    },
    StudyRow {
        label: "REBASE width 6",
        method: "rebase",
        budget: 6,
        correct: 13,
        accuracy: "10.16%",
        flops: 4.96e12,
        seconds: "17.82 s",
    },
    StudyRow {
        label: "REBASE width 16",
        method: "rebase",
        budget: 16,
        correct: 16,
        accuracy: "12.50%",
        flops: 13.57e12,
        seconds: "46.90 s",
    },
    StudyRow {
        label: "Quiet-STaR + REBASE (width 6)",
        method: "combined",
        budget: 6,
        correct: 12,
        accuracy: "9.38%",
        flops: 4.25e12,
        seconds: "143.66 s",
    },
];

/// The study's value of each run.json setting its figures depend on (protocol.md).
const STUDY_SETTINGS: [(&str, &str); 13] = [
    ("protocol", "seed"),
    ("max-tokens", "384"),
    ("answer-tokens", "12"),
    ("step-tokens", "96"),
    ("path-tokens", "384"),
    ("temperature", "1"),
    ("rebase-temperature", "0.2"),
    ("rebase-select", "best"),
    ("rebase-aggregate", "last"),
    ("fixed-lengths", "false"),
    ("n-ahead", "8"),
    // protocol.md: full vocabulary, no top-k; the study re-applied the "---" thought markers.
    ("top-k", "0"),
    ("keep-thought-embeddings", "false"),
];

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

/// Whether a setting's recorded value is the study's: numbers by value ("1" = "1.0").
fn same_setting(ours: &str, study: &str) -> bool {
    match (ours.parse::<f64>(), study.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => ours == study,
    }
}

/// What makes the run's rows beside the study's not like for like: settings, a budget other
/// than the study row's, fewer than its 128 problems. Empty when nothing differs that the
/// records and run.json show (the model is stated separately: its name proves nothing).
pub fn differences(summaries: &[Summary], settings: Option<&Manifest>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = settings {
        for (key, study) in STUDY_SETTINGS {
            match m.0.get(key) {
                Some(ours) if !same_setting(ours, study) => {
                    out.push(format!("{key} {ours} (the study's: {study})"))
                }
                _ => {}
            }
        }
    }
    for row in &STUDY {
        if let Some(s) = beside(row, summaries) {
            if s.budget != row.budget {
                out.push(format!(
                    "{} is shown beside {} {}",
                    row.label,
                    s.method,
                    budget_cell(&s.method, s.budget)
                ));
            }
        }
    }
    for s in summaries.iter().filter(|s| s.n < STUDY_PROBLEMS) {
        out.push(format!(
            "{} {}: {} of the {STUDY_PROBLEMS} problems",
            s.method,
            budget_cell(&s.method, s.budget),
            s.n
        ));
    }
    out
}

pub fn study_section(out: &mut String, summaries: &[Summary], settings: Option<&Manifest>) {
    out.push_str("## The study's published figures\n\n");
    out.push_str(
        "From arXiv 2412.16260 (Mistral-7B-v0.1 and `quietstar-8-ahead`, one A100, no KV \
         cache, the same 128 problems). **Its FLOPs come from a formula that counts generated \
         tokens only** (no prompt, no Quiet-STaR thought tokens, no reward model): compare them \
         with ponder's *study-formula* column, not with ponder's exact count. Times depend on \
         the model and the hardware.\n\n",
    );
    let model: Vec<&str> = {
        let mut m: Vec<&str> = summaries.iter().map(|s| s.model.as_str()).collect();
        m.sort_unstable();
        m.dedup();
        m
    };
    out.push_str(&format!(
        "ponder's policy: {} (the study's: Mistral-7B-v0.1).",
        cell(&model.join("; "))
    ));
    let diffs = differences(summaries, settings);
    if diffs.is_empty() {
        out.push_str(
            " The run's protocol settings, budgets and problem count are the study's.\n\n",
        );
    } else {
        out.push_str(&format!(
            " **Not the study's setup**, so the rows below are not like for like: {}.\n\n",
            cell(&diffs.join("; "))
        ));
    }
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
            format!("{} ({}/{STUDY_PROBLEMS})", row.accuracy, row.correct),
            sci4(row.flops),
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
    out.push_str(REBASE_SCORING);
}

/// How the study scored its REBASE rows, read off its code and its own results files
/// (docs/methods.md, "Where the study's code departs from protocol.md").
const REBASE_SCORING: &str = "The study scored its REBASE rows with a digit-group regex \
     that reads a number of four or more digits written without commas as 3-digit pieces \
     (\"5000\" and \"20000\" both read as 0). Re-scored with the protocol's last integer, \
     which ponder uses, the best leaves in its own results files give 13/128 (width 3), \
     13/128 (width 6), 15/128 (width 16) and 11/128 (with Quiet-STaR) correct, against the \
     14, 13, 16 and 12 published.\n\n";
