//! The four methods end to end on synthetic:tiny (fast), plus their invariants: Quiet-STaR on a
//! plain model equals the baseline, results do not depend on batch composition or pool size,
//! and the per-problem accounting adds up.
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::generate::Runner;
use ponder::methods::common::{Policy, Protocol, Settings, Solution};
use ponder::methods::prm::Prm;
use ponder::methods::quiet_star::QuietStar;
use ponder::methods::{baseline, rebase};
use ponder::model::source::{load, Loaded};
use std::path::Path;

mod thoughts;
mod tree_search;

const Q: &str = "Tom has 3 apples and buys 4 more. How many apples does he have?";

fn tiny() -> (Cpu, Loaded<Cpu>) {
    let be = Cpu::new();
    let m = load(&be, Some("synthetic:tiny"), Path::new("/nonexistent")).unwrap();
    (be, m)
}

fn settings() -> Settings {
    Settings {
        votes: 4,
        width: 5,
        max_tokens: 24,
        answer_tokens: 6,
        step_tokens: 12,
        path_tokens: 40,
        seed: 11,
        ..Settings::default()
    }
}

fn run_baseline(
    be: &Cpu,
    m: &Loaded<Cpu>,
    quiet: bool,
    pages: usize,
    max_batch: usize,
    s: &Settings,
) -> Solution {
    let mut runner = Runner::new(be, &m.model, pages, 4).unwrap();
    runner.max_batch = max_batch;
    let mut p = Policy {
        runner,
        tok: &m.tok,
    };
    let qs = quiet.then(|| QuietStar::new(be, &m.model, &m.tok, None, true, 8).unwrap());
    let sol = baseline::solve(&mut p, qs.as_ref(), Q, s).unwrap();
    assert_eq!(p.runner.pool.free_pages(), pages, "every page is returned");
    sol
}

/// REBASE or the combination with a roomy pool; every tree it returns keeps the width
/// (`assert_width_kept`).
fn run_rebase(be: &Cpu, m: &Loaded<Cpu>, quiet: bool, max_batch: usize, s: &Settings) -> Solution {
    let sol = try_rebase(be, m, quiet, max_batch, 512, s).unwrap();
    assert_width_kept(&sol, s);
    sol
}

/// REBASE's width bookkeeping, replayed from its tree (rebase.md): each depth's children
/// number what is left of the width, a kept leaf uses one up, and so does, in Wu et al.'s
/// protocol, a dropped node (the study's passes its share on); the study drops a child at a
/// score of 0.1 or less. So the leaves never exceed the width.
fn assert_width_kept(sol: &Solution, s: &Settings) {
    let wu = s.protocol == Protocol::Wu;
    let mut remaining = s.width;
    let deepest = sol.tree.iter().map(|n| n.depth).max().unwrap_or(0);
    for d in 1..=deepest {
        let at: Vec<_> = sol.tree.iter().filter(|n| n.depth == d).collect();
        assert_eq!(at.len(), remaining, "{:?}: nodes at depth {d}", s.protocol);
        remaining -= at
            .iter()
            .filter(|n| (n.leaf && !n.dropped) || (wu && n.dropped))
            .count();
    }
    assert!(sol.votes.len() <= s.width, "{} leaves", sol.votes.len());
    if !wu && !s.fixed_lengths {
        for n in sol.tree.iter().skip(1) {
            assert_eq!(n.dropped, n.score.unwrap() <= 0.1, "{n:?}");
        }
    }
}

/// REBASE with `pages` KV pages of 4 tokens for the policy and as many for the PRM.
fn try_rebase(
    be: &Cpu,
    m: &Loaded<Cpu>,
    quiet: bool,
    max_batch: usize,
    pages: usize,
    s: &Settings,
) -> anyhow::Result<Solution> {
    rebase_with_prm(be, m, m, quiet, max_batch, pages, s)
}

/// `try_rebase` with `prm_m` as the PRM.
fn rebase_with_prm(
    be: &Cpu,
    m: &Loaded<Cpu>,
    prm_m: &Loaded<Cpu>,
    quiet: bool,
    max_batch: usize,
    pages: usize,
    s: &Settings,
) -> anyhow::Result<Solution> {
    let mut runner = Runner::new(be, &m.model, pages, 4).unwrap();
    runner.max_batch = max_batch;
    let mut p = Policy {
        runner,
        tok: &m.tok,
    };
    let mut prm = Prm::new(
        Runner::new(be, &prm_m.model, pages, 4).unwrap(),
        &prm_m.tok,
        "prm".into(),
    )
    .unwrap();
    let qs = quiet.then(|| QuietStar::new(be, &m.model, &m.tok, None, true, 8).unwrap());
    let sol = rebase::solve(&mut p, &mut prm, qs.as_ref(), Q, s);
    assert_eq!(
        p.runner.pool.free_pages(),
        pages,
        "every policy page is returned"
    );
    assert_eq!(
        prm.runner.pool.free_pages(),
        pages,
        "every PRM page is returned"
    );
    p.runner.pool.check_invariants().unwrap();
    prm.runner.pool.check_invariants().unwrap();
    sol
}

/// The study's FLOPs per generated token for a model (flops.md).
fn study_per_token(c: &ponder::model::config::Config) -> u64 {
    ponder::flops::study_flops_per_token(
        c.hidden_size as u64,
        c.num_hidden_layers as u64,
        c.num_attention_heads as u64,
        c.intermediate_size as u64,
    )
}

fn texts(s: &Solution) -> Vec<String> {
    s.votes.iter().map(|v| v.text.clone()).collect()
}

#[test]
fn baseline_counts_tokens_and_flops() {
    let (be, m) = tiny();
    let s = settings();
    let sol = run_baseline(&be, &m, false, 256, usize::MAX, &s);
    assert_eq!(sol.votes.len(), 4);
    assert!(sol.generated_tokens > 0 && sol.prompt_tokens > 0);
    assert_eq!(
        sol.generated_tokens,
        sol.votes.iter().map(|v| v.tokens as u64).sum::<u64>()
    );
    assert_eq!(
        sol.flops.useful,
        sol.flops.useful_by_phase.values().sum::<u64>()
    );
    assert!(sol.flops.useful_by_phase["prefill"] > 0 && sol.flops.useful_by_phase["decode"] > 0);
    assert_eq!(sol.thought_tokens, 0);
}

#[test]
fn baseline_follows_the_protocol_prompt_and_answer_phase() {
    use ponder::methods::answer::{first_integer, ANSWER_TRIGGER};
    let (be, m) = tiny();
    let s = settings();
    let sol = run_baseline(&be, &m, false, 256, usize::MAX, &s);
    // The prompt, with BOS: "Q: " + question + "\nA: Let's think step by step."
    let prompt = m
        .tok
        .encode(&format!("Q: {Q}\nA: Let's think step by step."))
        .unwrap();
    assert_eq!(sol.prompt_tokens, prompt.len() as u64 + 1);
    // Each vote: its reasoning (trailing whitespace stripped), the trigger, then at most
    // answer-tokens more; the vote is the first integer after the trigger.
    for v in &sol.votes {
        let (reasoning, tail) = v.text.rsplit_once(ANSWER_TRIGGER).expect("the trigger");
        assert_eq!(reasoning, reasoning.trim_end());
        assert_eq!(v.answer, first_integer(tail));
        assert!(v.tokens <= s.max_tokens + s.answer_tokens);
    }
    let answers: Vec<Option<String>> = sol.votes.iter().map(|v| v.answer.clone()).collect();
    assert_eq!(
        sol.answer,
        ponder::methods::voting::majority(&answers).map(|(a, _)| a)
    );
}

#[test]
fn fixed_lengths_run_every_vote_to_its_limit() {
    let (be, m) = tiny();
    let s = Settings {
        fixed_lengths: true,
        ..settings()
    };
    let sol = run_baseline(&be, &m, false, 256, usize::MAX, &s);
    assert_eq!(sol.generated_tokens, 4 * (24 + 6));
    let per = study_per_token(&m.model.cfg);
    assert_eq!(sol.study_flops, 4 * 30 * per);
    // REBASE: every path runs to the path limit (steps of 12, 12, 12 and 4 tokens), whatever
    // the text or the scores say, so the tree generates width × path limit tokens.
    for protocol in [Protocol::Seed, Protocol::Wu] {
        let s = Settings {
            protocol,
            ..s.clone()
        };
        let tree = run_rebase(&be, &m, false, usize::MAX, &s);
        assert_eq!(tree.generated_tokens, 5 * 40, "{protocol:?}");
        assert_eq!(tree.votes.len(), 5);
        assert!(tree
            .votes
            .iter()
            .all(|v| v.tokens == 40 && v.scores.len() == 4));
        // The study charges its step limit (here 12) per expansion whatever was generated,
        // path-cumulative: 12·(1+2+3+4) per path.
        assert_eq!(tree.study_flops, 5 * 12 * 10 * per);
    }
}

#[test]
fn quiet_star_on_a_plain_model_equals_the_baseline() {
    let (be, m) = tiny();
    let s = settings();
    let base = run_baseline(&be, &m, false, 256, usize::MAX, &s);
    let quiet = run_baseline(&be, &m, true, 256, usize::MAX, &s);
    assert_eq!(texts(&base), texts(&quiet));
    assert_eq!(base.answer, quiet.answer);
    // 8-ahead: start + 5 sampled + end before every output token.
    assert_eq!(quiet.thought_tokens, 7 * quiet.generated_tokens);
    assert!(quiet.flops.useful_by_phase["thought"] > 0 && quiet.flops.useful_by_phase["mix"] > 0);
}

#[test]
fn same_seed_same_result_whatever_the_batching_or_pool_size() {
    let (be, m) = tiny();
    let s = settings();
    let a = run_baseline(&be, &m, false, 256, usize::MAX, &s);
    let b = run_baseline(&be, &m, false, 256, 1, &s);
    // A pool too small for all votes at once: the scheduler preempts and recomputes.
    let c = run_baseline(&be, &m, false, 80, usize::MAX, &s);
    assert_eq!(texts(&a), texts(&b));
    assert_eq!(texts(&a), texts(&c));
    assert_eq!(a.flops.useful, b.flops.useful);
    assert!(c.flops.useful > a.flops.useful, "recomputation costs FLOPs");
    // Quiet-STaR's thoughts need pages too.
    let q = run_baseline(&be, &m, true, 256, usize::MAX, &s);
    let q_small = run_baseline(&be, &m, true, 80, usize::MAX, &s);
    assert_eq!(texts(&q), texts(&q_small));
    // …and the small pool did preempt (or the comparison would test nothing).
    assert!(
        q_small.flops.useful > q.flops.useful,
        "the small pool recomputed nothing"
    );
    let other = run_baseline(&be, &m, false, 256, usize::MAX, &Settings { seed: 12, ..s });
    assert_ne!(texts(&a), texts(&other));
}

/// With problems in flight each problem's own passes keep `--max-batch`, as with one problem
/// (the flag had reached only the batcher, so a problem's 4 votes ran as one pass of 4).
#[test]
fn a_fleets_runners_keep_max_batch() {
    use ponder::methods::engines::Fleet;
    let (be, m) = tiny();
    let fleet = Fleet::new(&be, &m.model, Some(&m.model), 2, 64, 4, 2).unwrap();
    for w in 0..2 {
        let prm = Some((&m.model, &m.tok, "tiny".to_string()));
        let e = fleet.engines(w, (&m.model, &m.tok), prm, None).unwrap();
        assert_eq!(e.policy.runner.max_batch, 2);
        assert_eq!(e.prm.unwrap().runner.max_batch, 2);
    }
}
