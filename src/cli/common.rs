//! Flags shared by `solve`, `eval` and `sweep`, and building the engines from them.
use super::Device;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use ponder::backend::Backend;
use ponder::generate::Runner;
use ponder::methods::common::{Policy, Protocol, Settings};
use ponder::methods::engines::{Engines, Fleet, Method};
use ponder::methods::prm::Prm;
use ponder::methods::quiet_star::{Mode, QuietStar};
use ponder::methods::voting::{Aggregate, Select};
use ponder::model::config::{check_n_ahead, Config};
use ponder::model::llama::Model;
use ponder::model::source::{default_model_dir, load, Loaded};
use ponder::model::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProtocolArg {
    /// The study's (protocol.md): "Let's think step by step." then "Step k:" prompts,
    /// 96-token steps, 384-token paths, children dropped at PRM score <= 0.1, best-of-N by
    /// score.
    Seed,
    /// Wu et al.'s REBASE: the question alone, "Step k: … ки" format, 256-token steps, leaf
    /// at "The answer is", score-weighted vote.
    Wu,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SelectArg {
    Best,
    Majority,
    Weighted,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AggregateArg {
    Last,
    Mean,
    Min,
    Product,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum QuietModeArg {
    Incremental,
    Parallel,
}

#[derive(clap::Args, Clone)]
pub struct Opts {
    /// HF model directory or synthetic:NAME; default: the bundled SmolLM2-135M-Instruct.
    #[arg(long)]
    pub model: Option<String>,
    /// The process reward model (REBASE); default: the policy model itself.
    #[arg(long)]
    pub prm: Option<String>,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Votes (baseline, Quiet-STaR); default 6 (2 with --quick).
    #[arg(long)]
    pub votes: Option<usize>,
    /// REBASE width (budget N); default 6 (2 with --quick).
    #[arg(long)]
    pub width: Option<usize>,
    /// The REBASE protocol (docs/methods.md); baseline and Quiet-STaR always follow the
    /// study's.
    #[arg(long, value_enum, default_value = "seed")]
    pub protocol: ProtocolArg,
    /// REBASE softmax temperature over PRM scores.
    #[arg(long, default_value_t = 0.2)]
    pub rebase_temperature: f64,
    /// How REBASE picks its answer from the leaves: best-of-N by score, majority vote, or the
    /// score-weighted vote; default: the protocol's (best for seed, weighted for wu).
    #[arg(long, value_enum)]
    pub select: Option<SelectArg>,
    /// How a leaf's step scores become its score for --select best and weighted.
    #[arg(long, value_enum, default_value = "last")]
    pub aggregate: AggregateArg,
    /// Seed of every random draw (each vote, branch and thought has its own stream from it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sample votes and steps from the k most likely tokens only (ties at the k-th kept);
    /// 0, the protocol's: every token. 50 is HF's default, which the study's code sampled with.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Tokens per vote before the answer phase; default 384, the protocol's (48 with --quick).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Tokens of the answer phase (protocol: 12).
    #[arg(long, default_value_t = 12)]
    pub answer_tokens: usize,
    /// Tokens per REBASE step; default 96 with --protocol seed, 256 with wu (48 with --quick).
    #[arg(long)]
    pub step_tokens: Option<usize>,
    /// Tokens per REBASE path; default 384 with --protocol seed (the study's), 1024 with wu
    /// (Wu et al.'s max_tokens); 96 with --quick.
    #[arg(long)]
    pub path_tokens: Option<usize>,
    /// Run every vote, step and thought to its limit, ignoring EOS and stop strings.
    #[arg(long)]
    pub fixed_lengths: bool,
    /// Quiet-STaR thought length n_ahead, 4 to 67 (start + n_ahead−3 sampled + end); default: the
    /// checkpoint's `n_ahead` in config.json, else 8.
    #[arg(long)]
    pub n_ahead: Option<usize>,
    /// Quiet-STaR's computation: incremental (one thought per output token) or parallel (the
    /// reference: thoughts at every position, recomputed for every output token).
    #[arg(long, value_enum, default_value = "incremental")]
    pub quiet_mode: QuietModeArg,
    /// Keep a checkpoint's trained start/end-of-thought embeddings instead of re-applying the
    /// "---" initialisation that the reference eval (and the study) applied.
    #[arg(long)]
    pub keep_thought_embeddings: bool,
    /// KV pages per model (16 tokens each).
    #[arg(long, default_value_t = 4096)]
    pub kv_pages: usize,
    /// At most this many sequences per decode, prefill or PRM pass (Quiet-STaR's thought
    /// passes carry every live branch's thought at once).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Small sizes for a demo that finishes in minutes on two CPU cores: 2 votes, width 2,
    /// 48-token votes and steps, 96-token paths (and, for eval and sweep, 3 problems); a size given
    /// with its own flag (--votes, --width, --max-tokens, --step-tokens, --path-tokens,
    /// --limit) wins over --quick's (a sweep sets votes and width by --budgets instead).
    #[arg(long)]
    pub quick: bool,
}

impl Opts {
    pub fn settings(&self) -> Result<Settings> {
        // --quick only changes the defaults: a size given with its own flag wins.
        let q = |v: Option<usize>, quick: usize, full: usize| {
            v.unwrap_or(if self.quick { quick } else { full })
        };
        let votes = q(self.votes, 2, 6);
        let width = q(self.width, 2, 6);
        // rebase.md: Wu et al.'s steps run up to 256 tokens; the study's (protocol.md) 96.
        let step_tokens = q(
            self.step_tokens,
            48,
            match self.protocol {
                ProtocolArg::Seed => 96,
                ProtocolArg::Wu => 256,
            },
        );
        let max_tokens = q(self.max_tokens, 48, 384);
        // protocol.md: the study's paths stop at 384 tokens; Wu et al.'s rebase.yaml has
        // max_tokens 1024 (their node counts only its last step against it, so there it
        // never binds; ponder applies it to the whole path, as its name says).
        let path_tokens = q(
            self.path_tokens,
            96,
            match self.protocol {
                ProtocolArg::Seed => 384,
                ProtocolArg::Wu => 1024,
            },
        );
        if votes == 0 || width == 0 {
            bail!("--votes and --width must be at least 1");
        }
        if !(self.rebase_temperature.is_finite() && self.rebase_temperature > 0.0) {
            bail!(
                "--rebase-temperature must be a positive number, not {}",
                self.rebase_temperature
            );
        }
        if self.kv_pages == 0 {
            bail!("--kv-pages must be at least 1");
        }
        // Checked again where the thoughts are built (a checkpoint's own n_ahead too); here,
        // so that a bad flag is refused before a model is loaded.
        if let Some(n) = self.n_ahead {
            check_n_ahead("--n-ahead", n)?;
        }
        for (flag, n) in [("--votes", votes), ("--width", width)] {
            check_budget(flag, n)?;
        }
        if self.max_batch == Some(0) {
            bail!("--max-batch must be at least 1");
        }
        // The answer is read from the answer phase, and a REBASE step or path of no tokens
        // can never grow: zero would run and report nothing. (--max-tokens 0 is a real
        // setting: a direct answer without a chain of thought.)
        for (flag, v) in [
            ("--answer-tokens", self.answer_tokens),
            ("--step-tokens", step_tokens),
            ("--path-tokens", path_tokens),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        Ok(Settings {
            seed: self.seed,
            votes,
            width,
            protocol: match self.protocol {
                ProtocolArg::Seed => Protocol::Seed,
                ProtocolArg::Wu => Protocol::Wu,
            },
            rebase_temperature: self.rebase_temperature,
            top_k: self.top_k,
            fixed_lengths: self.fixed_lengths,
            max_tokens,
            answer_tokens: self.answer_tokens,
            step_tokens,
            path_tokens,
            quiet_mode: match self.quiet_mode {
                QuietModeArg::Incremental => Mode::Incremental,
                QuietModeArg::Parallel => Mode::Parallel,
            },
            select: self.select.map(|s| match s {
                SelectArg::Best => Select::Best,
                SelectArg::Majority => Select::Majority,
                SelectArg::Weighted => Select::Weighted,
            }),
            aggregate: match self.aggregate {
                AggregateArg::Last => Aggregate::Last,
                AggregateArg::Mean => Aggregate::Mean,
                AggregateArg::Min => Aggregate::Min,
                AggregateArg::Product => Aggregate::Product,
            },
            ..Settings::default()
        })
    }

    /// The policy model's directory (None for synthetic models), for Quiet-STaR's extras.
    pub fn model_dir(&self, cache: &Path) -> Option<PathBuf> {
        match self.model.as_deref() {
            Some(s) if s.starts_with("synthetic:") => None,
            Some(d) => Some(PathBuf::from(d)),
            None => Some(default_model_dir(cache)),
        }
    }

    pub fn load_prm<B: Backend>(
        &self,
        be: &B,
        cache: &Path,
        needed: bool,
    ) -> Result<Option<Loaded<B>>> {
        match (&self.prm, needed) {
            (Some(spec), true) => {
                // The loader's own message names --model (the policy's flag).
                if Path::new(spec).is_file() {
                    bail!(
                        "--prm {spec} is a file; a model is a directory (config.json, \
                         model.safetensors, tokenizer.json) or synthetic:NAME"
                    );
                }
                Ok(Some(
                    load(be, Some(spec), cache).with_context(|| format!("--prm {spec}"))?,
                ))
            }
            // Unused by these methods, but recorded in run.json: it must at least name a
            // model, or a typo would be carried into every later --resume.
            (Some(spec), false) => {
                match spec.strip_prefix("synthetic:") {
                    Some(name) => {
                        Config::builtin(name)?;
                    }
                    None if Path::new(spec).is_dir() => {}
                    None => bail!("--prm {spec} is no model directory (nor synthetic:NAME)"),
                }
                Ok(None)
            }
            (None, _) => Ok(None),
        }
    }

    /// The engines for the given needs (a PRM, Quiet-STaR's extras), for one problem at a time.
    pub fn engines<'a, B: Backend>(
        &self,
        be: &'a B,
        m: &'a Loaded<B>,
        prm: Option<&'a Loaded<B>>,
        cache: &Path,
        needs_prm: bool,
        needs_quiet: bool,
    ) -> Result<Engines<'a, B>> {
        let runner = |model| -> Result<Runner<'a, B>> {
            let mut r = Runner::new(be, model, self.kv_pages, PAGE_SIZE)?;
            if let Some(b) = self.max_batch {
                r.max_batch = b;
            }
            Ok(r)
        };
        let prm = match needs_prm.then(|| prm_spec(m, prm)) {
            Some((model, tok, name)) => Some(Prm::new(runner(model)?, tok, name)?),
            None => None,
        };
        Ok(Engines {
            policy: Policy {
                runner: runner(&m.model)?,
                tok: &m.tok,
            },
            prm,
            quiet: self.quiet_star(be, m, cache, needs_quiet)?,
        })
    }

    /// Quiet-STaR's extras (start/end embeddings, talk head) when a method needs them.
    pub fn quiet_star<B: Backend>(
        &self,
        be: &B,
        m: &Loaded<B>,
        cache: &Path,
        needed: bool,
    ) -> Result<Option<Arc<QuietStar<B>>>> {
        if !needed {
            return Ok(None);
        }
        let dir = self.model_dir(cache);
        Ok(Some(Arc::new(QuietStar::new(
            be,
            &m.model,
            &m.tok,
            dir.as_deref(),
            !self.keep_thought_embeddings,
            self.n_ahead(&m.model.cfg),
        )?)))
    }

    /// The flags given for a part that none of the methods to run has (`--width` for the
    /// baseline alone, say), as a note to print when the work starts: they change nothing, and
    /// a user who thought they did should hear it, while a script that passes one set of
    /// flags to every method keeps working.
    pub fn unused_flags(&self, methods: &[Method]) -> Option<String> {
        // Whether any of them votes (baseline, Quiet-STaR), grows a REBASE tree (rebase,
        // combined), thinks (Quiet-STaR, combined).
        let votes = methods.iter().any(|m| !m.uses_prm());
        let trees = methods.iter().any(|m| m.uses_prm());
        let thoughts = methods.iter().any(|m| m.uses_thoughts());
        let running: Vec<&str> = methods.iter().map(|m| m.name()).collect();
        let running = running.join(",");
        const VOTES: &str = "baseline and quiet-star";
        const TREES: &str = "rebase and combined";
        let flags = [
            ("--votes", self.votes.is_some(), votes, VOTES),
            ("--max-tokens", self.max_tokens.is_some(), votes, VOTES),
            ("--width", self.width.is_some(), trees, TREES),
            ("--step-tokens", self.step_tokens.is_some(), trees, TREES),
            ("--path-tokens", self.path_tokens.is_some(), trees, TREES),
            ("--prm", self.prm.is_some(), trees, TREES),
            ("--select", self.select.is_some(), trees, TREES),
            (
                "--n-ahead",
                self.n_ahead.is_some(),
                thoughts,
                "quiet-star and combined",
            ),
        ];
        let unused: Vec<String> = flags
            .iter()
            .filter(|(_, given, used, _)| *given && !used)
            .map(|(flag, _, _, who)| format!("{flag} (for {who})"))
            .collect();
        (!unused.is_empty()).then(|| {
            format!(
                "ponder: note: --method {running} uses none of {}; {} nothing",
                unused.join(", "),
                if unused.len() == 1 {
                    "it changes"
                } else {
                    "they change"
                }
            )
        })
    }

    /// Refuses, before any work, token limits that no sequence could hold: past the model's
    /// positions, or past one problem's KV pool (which preemption cannot help).
    /// Only the limits of the methods that run count: `votes` for baseline and Quiet-STaR,
    /// `trees` for REBASE and the combination.
    pub fn check_lengths(
        &self,
        s: &Settings,
        cfg: &Config,
        votes: bool,
        trees: bool,
    ) -> Result<()> {
        let pool = self.kv_pages.saturating_mul(PAGE_SIZE);
        let mut limits = Vec::new();
        if votes {
            limits.push((
                format!(
                    "--max-tokens {} + --answer-tokens {}",
                    s.max_tokens, s.answer_tokens
                ),
                s.max_tokens.saturating_add(s.answer_tokens),
            ));
        }
        if trees {
            limits.push((
                format!(
                    "--path-tokens {} + --step-tokens {}",
                    s.path_tokens, s.step_tokens
                ),
                s.path_tokens.saturating_add(s.step_tokens),
            ));
        }
        for (what, n) in limits {
            fits_positions(n, &what, cfg)?;
            if n > pool {
                bail!(
                    "{what} do not fit one problem's KV pool of {pool} tokens (--kv-pages {} × {PAGE_SIZE})",
                    self.kv_pages
                );
            }
        }
        Ok(())
    }

    /// The thought length: `--n-ahead`, else the checkpoint's, else 8 (quiet-star.md).
    pub fn n_ahead(&self, cfg: &Config) -> usize {
        self.n_ahead.or(cfg.n_ahead).unwrap_or(8)
    }

    /// The storage and batcher of `n` problems in flight, each with --kv-pages pages per model.
    pub fn fleet<'a, B: Backend>(
        &self,
        be: &'a B,
        m: &Loaded<B>,
        prm: Option<&Loaded<B>>,
        needs_prm: bool,
        n: usize,
    ) -> Result<Fleet<'a, B>> {
        let prm_model = needs_prm.then(|| prm.map_or(&m.model, |l| &l.model));
        Fleet::new(
            be,
            &m.model,
            prm_model,
            n,
            self.kv_pages,
            PAGE_SIZE,
            self.max_batch.unwrap_or(usize::MAX),
        )
    }
}

/// Tokens per KV page.
pub const PAGE_SIZE: usize = 16;

/// Refuses a sequence of `n` positions (`what` names its parts) past the model's context:
/// generate, solve, eval and the benches all check this before any work.
pub fn fits_positions(n: usize, what: &str, cfg: &Config) -> Result<()> {
    if n > cfg.max_position_embeddings {
        bail!(
            "{what} do not fit the model's {} positions (max_position_embeddings)",
            cfg.max_position_embeddings
        );
    }
    Ok(())
}

/// The most votes or REBASE width one problem may ask for. A small pool runs a large budget
/// a few sequences at a time (preemption), but each vote or leaf still keeps its own state
/// and text on the host; the study's budgets are 3 to 16, Wu et al.'s up to 256.
pub const MAX_BUDGET: usize = 4096;

/// Refuses a budget of votes or width past `MAX_BUDGET` before anything is allocated for it.
pub fn check_budget(flag: &str, n: usize) -> Result<()> {
    if n > MAX_BUDGET {
        bail!("{flag} {n} is more than ponder runs for one problem (at most {MAX_BUDGET})");
    }
    Ok(())
}

/// The PRM's model, tokenizer and report name: `--prm`, else the policy itself (said so).
pub fn prm_spec<'a, B: Backend>(
    m: &'a Loaded<B>,
    prm: Option<&'a Loaded<B>>,
) -> (&'a Model<B>, &'a Tokenizer, String) {
    match prm {
        Some(l) => (&l.model, &l.tok, l.name.clone()),
        None => (&m.model, &m.tok, format!("{} (the policy itself)", m.name)),
    }
}

#[cfg(test)]
mod tests;
