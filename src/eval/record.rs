//! One finished problem, as written to `results.jsonl` (one JSON object per line).
use crate::methods::common::{Solution, TreeNode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VoteRecord {
    pub answer: Option<String>,
    pub text: String,
    #[serde(default)]
    pub scores: Vec<f64>,
    pub tokens: usize,
}

/// The shape of a tree method's search (REBASE, combined): why a problem has an answer, or
/// none (with `--protocol seed` every step scoring 0.1 or less is dropped with its budget).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TreeStats {
    /// Steps generated (nodes below the root).
    pub steps: usize,
    /// Steps pruned for their PRM score (at or below the drop threshold, or none).
    pub dropped: usize,
    /// Finished solutions the answer was chosen from (leaves that were not dropped).
    pub leaves: usize,
    /// The deepest step (1 = the root's children).
    pub depth: usize,
}

impl TreeStats {
    /// None for a method without a tree.
    pub fn of(tree: &[TreeNode]) -> Option<Self> {
        if tree.is_empty() {
            return None;
        }
        let steps: Vec<&TreeNode> = tree.iter().filter(|n| n.parent.is_some()).collect();
        Some(TreeStats {
            steps: steps.len(),
            dropped: steps.iter().filter(|n| n.dropped).count(),
            leaves: steps.iter().filter(|n| n.leaf && !n.dropped).count(),
            depth: steps.iter().map(|n| n.depth).max().unwrap_or(0),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// baseline | quiet-star | rebase | combined
    pub method: String,
    /// Votes (baseline, Quiet-STaR) or width (REBASE, combined).
    pub budget: usize,
    /// 0-based row in the data file.
    pub index: usize,
    pub gold: Option<String>,
    pub prediction: Option<String>,
    pub correct: bool,
    pub seconds: f64,
    /// Exact useful FLOPs of the problem (all phases).
    pub flops: u64,
    pub flops_executed: u64,
    pub flops_by_phase: BTreeMap<String, u64>,
    /// The study's formula for the same run (comparison only).
    pub study_flops: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub thought_tokens: u64,
    pub prm_tokens: u64,
    pub votes: Vec<VoteRecord>,
    /// Tree methods only; absent in files written before ponder recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeStats>,
    pub model: String,
    /// The backend and device that ran it (Backend::device_label); "" in files written
    /// before ponder recorded it.
    #[serde(default)]
    pub device: String,
    pub prm: Option<String>,
    /// "seed42-128" when the study's subset was selected.
    pub subset: Option<String>,
    pub seed: u64,
}

impl Record {
    /// What every record ponder writes satisfies; a record that does not was edited or
    /// written by something else, and would skew the report.
    pub fn check(&self) -> anyhow::Result<()> {
        let m = crate::methods::engines::Method::parse(&self.method)?;
        // The name exactly: "baseline " would pass the parse but group, key and resume as
        // a method of its own, counting its problem twice.
        anyhow::ensure!(
            m.name() == self.method,
            "method {:?} is not written as {:?}",
            self.method,
            m.name()
        );
        anyhow::ensure!(self.budget >= 1, "budget {} is not a budget", self.budget);
        anyhow::ensure!(
            self.seconds.is_finite() && self.seconds >= 0.0,
            "seconds {} is not a duration",
            self.seconds
        );
        // The phases split the problem's ledger: they sum to its total exactly.
        let phases = self
            .flops_by_phase
            .values()
            .try_fold(0u64, |a, &f| a.checked_add(f));
        anyhow::ensure!(
            phases == Some(self.flops),
            "flops {} is not the sum of flops_by_phase ({})",
            self.flops,
            phases.map_or("more than 2^64".into(), |p| p.to_string())
        );
        if let Some(g) = &self.gold {
            anyhow::ensure!(
                crate::methods::answer::normalise_number(g).is_some(),
                "gold {g:?} is not a number"
            );
        }
        // The report counts `correct` as it stands, so it must be what one of the two
        // gradings gives (which one depends on the protocol, in run.json, not in the record).
        let (p, g) = (self.prediction.as_deref(), self.gold.as_deref());
        let graded = [false, true].map(|signed| super::run::is_correct(p, g, signed));
        anyhow::ensure!(
            graded.contains(&self.correct),
            "correct is {} but the prediction {} against gold {} grades {}",
            self.correct,
            p.map_or("null".into(), |p| format!("{p:?}")),
            g.map_or("null".into(), |g| format!("{g:?}")),
            !self.correct
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sol: &Solution,
        budget: usize,
        index: usize,
        gold: Option<String>,
        correct: bool,
        model: &str,
        device: &str,
        subset: Option<&str>,
        seed: u64,
    ) -> Self {
        Record {
            method: sol.method.clone(),
            budget,
            index,
            gold,
            prediction: sol.answer.clone(),
            correct,
            seconds: sol.seconds,
            flops: sol.flops.useful,
            flops_executed: sol.flops.executed,
            flops_by_phase: sol.flops.useful_by_phase.clone(),
            study_flops: sol.study_flops,
            prompt_tokens: sol.prompt_tokens,
            generated_tokens: sol.generated_tokens,
            thought_tokens: sol.thought_tokens,
            prm_tokens: sol.prm_tokens,
            votes: sol
                .votes
                .iter()
                .map(|v| VoteRecord {
                    answer: v.answer.clone(),
                    text: v.text.clone(),
                    scores: v.scores.clone(),
                    tokens: v.tokens,
                })
                .collect(),
            tree: TreeStats::of(&sol.tree),
            model: model.to_string(),
            device: device.to_string(),
            prm: sol.prm.clone(),
            subset: subset.map(String::from),
            seed,
        }
    }

    /// What identifies a problem's result within a run: resume skips these.
    pub fn key(&self) -> (String, usize, usize) {
        (self.method.clone(), self.budget, self.index)
    }

    /// What every record carries of the run that wrote it, under run.json's field names
    /// ("(none)" for no subset): the records of one run agree on all of them.
    pub fn run_fields(&self) -> [(&'static str, String); 3] {
        [
            ("model", self.model.clone()),
            ("seed", self.seed.to_string()),
            (
                "subset",
                self.subset.clone().unwrap_or_else(|| "(none)".into()),
            ),
        ]
    }
}
