//! What every method shares: its settings, the per-problem accounting, the policy it samples.
use crate::backend::Backend;
use crate::flops::{study_flops_per_token, Ledger, Phase};
use crate::generate::Runner;
use crate::model::tokenizer::Tokenizer;
use serde::Serialize;
use std::collections::BTreeMap;

/// A problem too long for the model's positions at the method's token limits, found before
/// the method took any KV page: an evaluation skips the problem (and says so) and goes on,
/// as it skips a malformed data line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DoesNotFit(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The study's variant (protocol.md).
    Seed,
    /// Wu et al.'s released code (rebase.md).
    Wu,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// Votes for baseline / Quiet-STaR.
    pub votes: usize,
    /// REBASE budget N.
    pub width: usize,
    pub protocol: Protocol,
    /// REBASE's softmax temperature over PRM scores.
    pub rebase_temperature: f64,
    /// Sampling temperature of the policy (the protocol's 1.0).
    pub temperature: f32,
    /// The policy's top-k filter for votes and steps (0, the protocol's: none; HF's default
    /// of 50 is what the study's code sampled with). Thoughts always sample the full vocabulary.
    pub top_k: usize,
    /// Run every vote, step and thought to its token limit (replays the study's workload).
    pub fixed_lengths: bool,
    /// Token limits (protocol values by default; smaller for quick runs).
    pub max_tokens: usize,
    pub answer_tokens: usize,
    pub step_tokens: usize,
    pub path_tokens: usize,
    pub max_depth: usize,
    /// How Quiet-STaR computes its thoughts.
    pub quiet_mode: super::quiet_star::Mode,
    /// How a tree search picks its answer; None: the protocol's (best-of-N for seed, the
    /// weighted vote for wu).
    pub select: Option<super::voting::Select>,
    /// How a leaf's step scores become its score for best-of-N and the weighted vote.
    pub aggregate: super::voting::Aggregate,
}

impl Settings {
    /// The answer rule in force: `select`, else the protocol's.
    pub fn select(&self) -> super::voting::Select {
        use super::voting::Select;
        self.select.unwrap_or(match self.protocol {
            Protocol::Seed => Select::Best,
            Protocol::Wu => Select::Weighted,
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seed: 0,
            votes: 6,
            width: 6,
            protocol: Protocol::Seed,
            rebase_temperature: 0.2,
            temperature: 1.0,
            top_k: 0,
            fixed_lengths: false,
            max_tokens: 384,
            answer_tokens: 12,
            step_tokens: 96,
            path_tokens: 384,
            max_depth: 25,
            quiet_mode: super::quiet_star::Mode::Incremental,
            select: None,
            aggregate: super::voting::Aggregate::Last,
        }
    }
}

/// One vote (baseline, Quiet-STaR) or one leaf (REBASE).
#[derive(Clone, Debug, Serialize)]
pub struct Vote {
    pub text: String,
    pub answer: Option<String>,
    /// PRM score of the leaf (REBASE), per step.
    pub scores: Vec<f64>,
    pub tokens: usize,
}

/// One node of a REBASE tree, for `--show-tree`.
#[derive(Clone, Debug, Serialize)]
pub struct TreeNode {
    pub depth: usize,
    pub parent: Option<usize>,
    pub text: String,
    pub score: Option<f64>,
    pub leaf: bool,
    /// Scored too low (or not at all) and not expanded; its depth's surviving nodes share the width.
    pub dropped: bool,
    pub tokens: usize,
}

/// FLOPs of one problem, by phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlopReport {
    pub useful: u64,
    pub executed: u64,
    pub bytes: u64,
    pub useful_by_phase: BTreeMap<String, u64>,
}

impl FlopReport {
    pub fn from_ledger(l: &Ledger) -> Self {
        let t = l.total();
        let mut by = BTreeMap::new();
        for p in Phase::ALL {
            by.insert(p.name().to_string(), l.by_phase(p).useful_flops);
        }
        FlopReport {
            useful: t.useful_flops,
            executed: t.executed_flops,
            bytes: t.bytes,
            useful_by_phase: by,
        }
    }
}

/// Everything a method returns for one problem.
#[derive(Clone, Debug, Serialize)]
pub struct Solution {
    pub method: String,
    pub answer: Option<String>,
    pub votes: Vec<Vote>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tree: Vec<TreeNode>,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub thought_tokens: u64,
    pub prm_tokens: u64,
    pub seconds: f64,
    pub flops: FlopReport,
    /// The study's formula for the same run (flops.md), for comparison only.
    pub study_flops: u64,
    /// Which model scored the steps (REBASE); says so when it is the policy itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prm: Option<String>,
}

/// Token counters a method fills in while it runs.
#[derive(Default, Clone, Copy, Debug)]
pub struct Tally {
    pub prompt: u64,
    pub generated: u64,
    pub thought: u64,
    pub prm: u64,
    /// The study's token charge (generated tokens, or 96 per REBASE expansion along the path).
    pub study_tokens: u64,
}

/// Measures one solve: wall time and the growth of the ledger this thread charges. With
/// several problems in flight the time is the problem's own: its thread's wall time, less
/// its waits for shared forward passes, plus its share of their time (account.rs).
pub struct Meter {
    t0: std::time::Instant,
    before: Ledger,
    times: (f64, f64),
}

impl Meter {
    pub fn start<B: Backend>(p: &Policy<'_, B>) -> Self {
        Meter {
            t0: std::time::Instant::now(),
            before: p.runner.be.snapshot(),
            times: crate::account::times(),
        }
    }

    /// The solution with its costs filled in from the meter and the tally.
    #[allow(clippy::too_many_arguments)]
    pub fn finish<B: Backend>(
        self,
        p: &Policy<'_, B>,
        method: &str,
        answer: Option<String>,
        votes: Vec<Vote>,
        tree: Vec<TreeNode>,
        tally: Tally,
        prm: Option<String>,
    ) -> Solution {
        let ledger = p.runner.be.snapshot().since(&self.before);
        let (waited, charged) = crate::account::times();
        let seconds =
            self.t0.elapsed().as_secs_f64() - (waited - self.times.0) + (charged - self.times.1);
        Solution {
            method: method.into(),
            answer,
            votes,
            tree,
            prompt_tokens: tally.prompt,
            generated_tokens: tally.generated,
            thought_tokens: tally.thought,
            prm_tokens: tally.prm,
            seconds: seconds.max(0.0),
            flops: FlopReport::from_ledger(&ledger),
            study_flops: tally.study_tokens * p.study_per_token(),
            prm,
        }
    }
}

/// The policy: a model with its KV pool and tokenizer.
pub struct Policy<'a, B: Backend> {
    pub runner: Runner<'a, B>,
    pub tok: &'a Tokenizer,
}

impl<B: Backend> Policy<'_, B> {
    pub fn study_per_token(&self) -> u64 {
        let c = &self.runner.model.cfg;
        study_flops_per_token(
            c.hidden_size as u64,
            c.num_hidden_layers as u64,
            c.num_attention_heads as u64,
            c.intermediate_size as u64,
        )
    }

    /// BOS (when the model has one) followed by the text's tokens.
    pub fn encode_with_bos(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut ids = Vec::new();
        if let Some(b) = self.runner.model.cfg.bos_token_id.or(self.tok.bos) {
            ids.push(b);
        }
        ids.extend(self.tok.encode(text)?);
        Ok(ids)
    }

    /// Refuses a problem whose prompt and the tokens its method may add (`what` names them)
    /// do not fit the model's positions: past them RoPE would extrapolate silently, and the
    /// flags' own check cannot know the prompt. Methods call it before they take any KV page,
    /// so an evaluation can skip the problem and go on (`DoesNotFit`).
    pub fn check_fits(&self, prompt_tokens: usize, more: usize, what: &str) -> anyhow::Result<()> {
        let max = self.runner.model.cfg.max_position_embeddings;
        let n = prompt_tokens.saturating_add(more);
        if n > max {
            return Err(DoesNotFit(format!(
                "the problem's prompt of {prompt_tokens} tokens + {what} needs {n} positions, \
                 past the model's {max} (max_position_embeddings)"
            ))
            .into());
        }
        if let Some(cap) = attention_cap(self.runner.be, &self.runner.model.cfg) {
            if n > cap {
                return Err(DoesNotFit(format!(
                    "the problem's prompt of {prompt_tokens} tokens + {what} needs {n} keys, \
                     past the {cap} the backend's batch-invariant attention takes"
                ))
                .into());
            }
        }
        Ok(())
    }

    /// The ids that end a sample: EOS, BOS and PAD (protocol.md).
    pub fn stop_ids(&self) -> Vec<u32> {
        let c = &self.runner.model.cfg;
        let mut v = c.eos_token_ids.clone();
        v.extend(self.tok.eos.iter().copied());
        // BOS as `encode_with_bos` finds it: the config's, else the tokenizer's.
        v.extend(c.bos_token_id);
        v.extend(self.tok.bos);
        v.extend(c.pad_token_id);
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The keys a query of `cfg`'s model may attend to on `be`, where that is below the model's
/// positions: the backend's limit (`Backend::max_attention_keys`), unless a sliding window
/// keeps every query under it.
pub fn attention_cap<B: Backend>(be: &B, cfg: &crate::model::config::Config) -> Option<usize> {
    let cap = be.max_attention_keys()?;
    let windowed = cfg.sliding_window.is_some_and(|w| w <= cap);
    (!windowed && cap < cfg.max_position_embeddings).then_some(cap)
}
