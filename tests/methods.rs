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

fn run_rebase(be: &Cpu, m: &Loaded<Cpu>, quiet: bool, max_batch: usize, s: &Settings) -> Solution {
    try_rebase(be, m, quiet, max_batch, 512, s).unwrap()
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
    let other = run_baseline(&be, &m, false, 256, usize::MAX, &Settings { seed: 12, ..s });
    assert_ne!(texts(&a), texts(&other));
}

/// Quiet-STaR's pages beyond the baseline's are what a step really needs: a 3-token thought
/// (n_ahead 4) fits in the page its fork copies, so its smallest pool is the baseline's plus
/// one page of 16 tokens (a fixed allowance of ceil(3 / 16) + 2 pages had made it three), and
/// in that pool it samples what it samples with room to spare.
#[test]
fn quiet_star_needs_only_the_pages_its_thoughts_take() {
    let (be, m) = tiny();
    let s = Settings {
        votes: 1,
        max_tokens: 30,
        answer_tokens: 4,
        fixed_lengths: true,
        ..settings()
    };
    let qs = QuietStar::new(&be, &m.model, &m.tok, None, true, 4).unwrap();
    let solve = |pages: usize, quiet: bool| {
        let mut p = Policy {
            runner: Runner::new(&be, &m.model, pages, 16).unwrap(),
            tok: &m.tok,
        };
        let sol = baseline::solve(&mut p, quiet.then_some(&qs), Q, &s);
        if sol.is_ok() {
            assert_eq!(p.runner.pool.free_pages(), pages, "every page is returned");
        }
        sol
    };
    let smallest = |quiet: bool| (1..64).find(|&n| solve(n, quiet).is_ok()).unwrap();
    let base = smallest(false);
    let quiet = smallest(true);
    assert_eq!(quiet, base + 1, "baseline {base} pages, Quiet-STaR {quiet}");
    let roomy = solve(4096, true).unwrap();
    assert_eq!(texts(&solve(quiet, true).unwrap()), texts(&roomy));
}

#[test]
fn rebase_builds_a_tree_and_scores_it() {
    let (be, m) = tiny();
    for protocol in [Protocol::Seed, Protocol::Wu] {
        let s = Settings {
            protocol,
            ..settings()
        };
        let sol = run_rebase(&be, &m, false, usize::MAX, &s);
        assert!(sol.tree.len() > 1, "{protocol:?}");
        assert!(sol.prm_tokens > 0);
        assert!(sol.flops.useful_by_phase["prm"] > 0);
        for v in &sol.votes {
            assert!(!v.scores.is_empty() && v.scores.iter().all(|x| (0.0..=1.0).contains(x)));
        }
        let again = run_rebase(&be, &m, false, 2, &s);
        assert_eq!(
            texts(&sol),
            texts(&again),
            "{protocol:?}: batching changed the tree"
        );
        assert_eq!(sol.flops.useful, again.flops.useful);
    }
}

#[test]
fn wu_leaves_are_answers_or_the_path_limit_never_an_eos() {
    // Wu et al.'s node is a leaf on "The answer is" alone. The bundled model, as its own
    // PRM, ends some steps at EOS without it: those nodes are expanded again.
    let be = Cpu::new();
    let m = load(&be, None, &ponder::model::source::cache_dir(None)).unwrap();
    let s = Settings {
        protocol: Protocol::Wu,
        width: 4,
        step_tokens: 48,
        path_tokens: 96,
        ..settings()
    };
    let sol = run_rebase(&be, &m, false, usize::MAX, &s);
    let path = |mut i: usize| {
        let (mut tokens, mut text) = (0, String::new());
        while let Some(p) = sol.tree[i].parent {
            tokens += sol.tree[i].tokens;
            text = format!("{}\n{text}", sol.tree[i].text);
            i = p;
        }
        (tokens, text)
    };
    for (i, n) in sol.tree.iter().enumerate().filter(|(_, n)| n.leaf) {
        let (tokens, text) = path(i);
        assert!(
            tokens >= s.path_tokens || text.contains("The answer is") || n.depth == s.max_depth,
            "node {i} is a leaf at {tokens} tokens: {text:?}"
        );
    }
}

#[test]
fn the_study_formula_of_the_combination_charges_generated_path_tokens() {
    // quiet-rebase.py charges the tokens each step really generated, path-cumulative, for
    // the children it keeps; not REBASE's step limit per level.
    let (be, m) = tiny();
    let per = study_per_token(&m.model.cfg);
    let s = Settings {
        width: 3,
        ..settings()
    };
    let sol = run_rebase(&be, &m, true, usize::MAX, &s);
    let path = |mut i: usize| {
        let mut t = 0;
        while let Some(p) = sol.tree[i].parent {
            t += sol.tree[i].tokens as u64;
            i = p;
        }
        t
    };
    let kept: Vec<usize> = (0..sol.tree.len())
        .filter(|&i| sol.tree[i].parent.is_some() && !sol.tree[i].dropped)
        .collect();
    assert!(!kept.is_empty());
    let charged: u64 = kept.iter().map(|&i| path(i) * per).sum();
    assert_eq!(sol.study_flops, charged);
    let by_limit: u64 = kept
        .iter()
        .map(|&i| 12 * sol.tree[i].depth as u64 * per)
        .sum();
    assert_ne!(charged, by_limit, "the test must tell the two rules apart");
}

#[test]
fn the_study_formula_charges_kept_steps_only() {
    // The study's code adds a child's path-cumulative charge (its step limit per level) only
    // once the child scores above 0.1; the children it drops cost it nothing. synthetic:tiny
    // scores its own steps above 0.1 and the bundled model, as its own PRM, at or below it,
    // so between them both kinds of child occur.
    let be = Cpu::new();
    let (mut kept, mut dropped) = (0, 0);
    for model in [Some("synthetic:tiny"), None] {
        let m = load(&be, model, &ponder::model::source::cache_dir(None)).unwrap();
        let per = study_per_token(&m.model.cfg);
        let s = Settings {
            width: 3,
            ..settings()
        };
        let sol = run_rebase(&be, &m, false, usize::MAX, &s);
        let charged: u64 = sol
            .tree
            .iter()
            .filter(|n| n.parent.is_some() && !n.dropped)
            .map(|n| 12 * n.depth as u64 * per)
            .sum();
        assert_eq!(sol.study_flops, charged, "{model:?}");
        kept += sol
            .tree
            .iter()
            .filter(|n| n.parent.is_some() && !n.dropped)
            .count();
        dropped += sol.tree.iter().filter(|n| n.dropped).count();
    }
    assert!(
        kept > 0 && dropped > 0,
        "kept {kept}, dropped {dropped}: the test needs both"
    );
}

#[test]
fn rebase_with_a_tiny_pool_builds_the_same_tree() {
    // Pools far too small for the whole tree: forks share only full pages, idle nodes' caches
    // are emptied and recomputed, scoring runs in smaller groups, branches wait their turn.
    let (be, m) = tiny();
    for (quiet, protocol) in [
        (false, Protocol::Seed),
        (false, Protocol::Wu),
        (true, Protocol::Seed),
    ] {
        let s = Settings {
            protocol,
            width: 4,
            ..settings()
        };
        let roomy = run_rebase(&be, &m, quiet, usize::MAX, &s);
        let (mut fits, mut recomputed) = (0, false);
        for pages in [64, 48, 40, 36] {
            match try_rebase(&be, &m, quiet, usize::MAX, pages, &s) {
                Ok(tight) => {
                    fits += 1;
                    assert_eq!(texts(&roomy), texts(&tight), "{pages} pages, {protocol:?}");
                    let scores = |x: &Solution| -> Vec<Vec<f64>> {
                        x.votes.iter().map(|v| v.scores.clone()).collect()
                    };
                    assert_eq!(scores(&roomy), scores(&tight));
                    assert_eq!(roomy.answer, tight.answer);
                    // Token counts describe the tree, not the memory: what was recomputed
                    // shows in the FLOPs only.
                    let counts = |x: &Solution| {
                        [
                            x.prompt_tokens,
                            x.generated_tokens,
                            x.thought_tokens,
                            x.prm_tokens,
                        ]
                    };
                    assert_eq!(counts(&roomy), counts(&tight), "{pages} pages");
                    assert!(tight.flops.useful >= roomy.flops.useful);
                    recomputed |= tight.flops.useful > roomy.flops.useful;
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    assert!(msg.contains("raise --kv-pages"), "{pages} pages: {msg}");
                }
            }
        }
        assert!(
            fits >= 2,
            "{protocol:?} quiet={quiet}: only {fits} pool sizes fit"
        );
        assert!(
            recomputed,
            "the small pools never made anything be recomputed"
        );
    }
}

#[test]
fn combined_runs_thoughts_inside_the_tree() {
    let (be, m) = tiny();
    let s = Settings {
        width: 3,
        ..settings()
    };
    let plain = run_rebase(&be, &m, false, usize::MAX, &s);
    let comb = run_rebase(&be, &m, true, usize::MAX, &s);
    assert_eq!(comb.method, "combined");
    assert_eq!(comb.thought_tokens, 7 * comb.generated_tokens);
    // A zero talk head leaves the policy's choices unchanged.
    assert_eq!(texts(&plain), texts(&comb));
}

#[test]
fn parallel_thoughts_give_the_incremental_logits_for_the_same_thought_tokens() {
    use ponder::methods::quiet_star::{Mode, ThoughtStep};
    use ponder::scheduler::{prefill, Branch, Stepper};
    let (be, mut m) = tiny();
    // A talk head with a nonzero last layer, so the thoughts change the output.
    let mut qs = QuietStar::new(&be, &m.model, &m.tok, None, true, 8).unwrap();
    let d = m.model.cfg.hidden_size;
    let w3: Vec<f32> = (0..d).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.05).collect();
    qs.head.w3 = be
        .weight(&[1, d], ponder::backend::WeightData::Host(w3.into()))
        .unwrap();
    let seq: Vec<u32> = (0..23).map(|i| (i * 29 % 500 + 3) as u32).collect();
    let thought = [17u32, 230, 41, 99, 400];
    // No window, then one that the thoughts of the last position cross: quiet-star.md
    // measures it from the position thought about, not from each thought token's own.
    let mut by_window = vec![];
    for window in [None, Some(20)] {
        m.model.cfg.sliding_window = window;
        let mut out = vec![];
        for mode in [Mode::Incremental, Mode::Parallel] {
            let mut r = Runner::new(&be, &m.model, 512, 4).unwrap();
            let mut b = Branch::new(r.pool.create(), seq.clone(), 3);
            prefill(&mut r, &[&b]).unwrap();
            let rows = if mode == Mode::Parallel { seq.len() } else { 1 };
            let mut step = ThoughtStep::new(&qs, 1, mode);
            step.forced = Some((0..rows).flat_map(|_| thought).collect());
            let parts = step.logits(&mut r, &mut [&mut b]).unwrap();
            assert_eq!(step.thought_tokens, 7 * rows as u64);
            assert_eq!(parts.len(), 1, "one tensor of one row");
            out.push(be.to_host(&parts[0]).unwrap());
        }
        assert_eq!(out[0].len(), m.model.cfg.vocab_size);
        assert_eq!(
            out[0], out[1],
            "window {window:?}: parallel and incremental last-position logits differ"
        );
        by_window.push(out.swap_remove(0));
    }
    assert_ne!(by_window[0], by_window[1], "the window should matter here");
    let out = by_window;
    m.model.cfg.sliding_window = None;
    let base = {
        let mut r = Runner::new(&be, &m.model, 64, 4).unwrap();
        let s = r.pool.create();
        be.to_host(r.extend(&[(s, &seq)]).unwrap().logits().unwrap())
            .unwrap()
    };
    assert_ne!(out[0], base, "the talk head should move the logits");
}

#[test]
fn quiet_star_parallel_mode_samples_what_incremental_samples() {
    let (be, m) = tiny();
    let s = Settings {
        votes: 2,
        max_tokens: 6,
        answer_tokens: 2,
        ..settings()
    };
    let inc = run_baseline(&be, &m, true, 1024, usize::MAX, &s);
    let par = run_baseline(
        &be,
        &m,
        true,
        1024,
        usize::MAX,
        &Settings {
            quiet_mode: ponder::methods::quiet_star::Mode::Parallel,
            ..s
        },
    );
    assert_eq!(texts(&inc), texts(&par));
    assert!(
        par.thought_tokens > 5 * inc.thought_tokens,
        "parallel thinks at every position"
    );
    assert!(par.flops.useful_by_phase["thought"] > inc.flops.useful_by_phase["thought"]);
}

/// One Quiet-STaR step projects through the LM head only the rows whose logits it reads: the
/// five passes a thought token is sampled from and the mixed row(s) — not the base pass, the
/// last sampled token or the end marker. Checked on the matrix-product FLOPs of each phase, in
/// both modes (parallel: L rows per pass, every position mixed).
#[test]
fn quiet_star_runs_the_lm_head_only_where_it_reads_logits() {
    use ponder::flops::Phase;
    use ponder::methods::quiet_star::{Mode, ThoughtStep};
    use ponder::scheduler::{prefill, Branch, Stepper};
    let (be, m) = tiny();
    let qs = QuietStar::new(&be, &m.model, &m.tok, None, true, 8).unwrap();
    let c = &m.model.cfg;
    let (d, f, v) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let (qd, kvd) = (c.q_dim() as u64, c.kv_dim() as u64);
    let layers_per_token =
        c.num_hidden_layers as u64 * 2 * (d * qd + 2 * d * kvd + qd * d + 3 * d * f);
    let head = 2 * v * d;
    let seq: Vec<u32> = (0..11).map(|i| (i * 31 % 500 + 3) as u32).collect();
    for mode in [Mode::Incremental, Mode::Parallel] {
        let mut r = Runner::new(&be, &m.model, 512, 4).unwrap();
        let mut b = Branch::new(r.pool.create(), seq.clone(), 3);
        prefill(&mut r, &[&b]).unwrap();
        let before = be.ledger().lock().unwrap().clone();
        let mut step = ThoughtStep::new(&qs, 1, mode);
        step.logits(&mut r, &mut [&mut b]).unwrap();
        let l = be.ledger().lock().unwrap().since(&before);
        let matmul = |p: Phase| -> u64 {
            l.entries()
                .filter(|(ph, op, _)| *ph == p && *op == "matmul")
                .map(|(_, _, c)| c.useful_flops)
                .sum()
        };
        // Rows per pass: one (incremental) or one per position (parallel).
        let n = if mode == Mode::Parallel { seq.len() } else { 1 } as u64;
        // Base pass: the pending token, and in parallel mode depth 0 of every position again.
        let base = if mode == Mode::Parallel { 1 + n } else { 1 };
        assert_eq!(matmul(Phase::Decode), base * layers_per_token, "{mode:?}");
        assert_eq!(
            matmul(Phase::Thought),
            7 * n * layers_per_token + 5 * n * head,
            "{mode:?}"
        );
        // The mix: the talk head's three linears, then the LM head, for every row.
        let talk = 2 * n * (2 * d * d + d * d + d);
        assert_eq!(matmul(Phase::Mix), talk + n * head, "{mode:?}");
    }
}

/// A PRM with a shorter context than the policy's paths: its path (in its own tokens) past
/// its positions is refused, naming the PRM, and every page of both pools comes back.
#[test]
fn a_prm_path_past_its_positions_is_refused() {
    let (be, m) = tiny();
    let s = settings();
    let root = 1 + format!("{Q} ").len();
    for max in [root - 1, root + 8] {
        let mut short = load(&be, Some("synthetic:tiny"), Path::new("/nonexistent")).unwrap();
        short.model.cfg.max_position_embeddings = max;
        let err = rebase_with_prm(&be, &m, &short, false, usize::MAX, 512, &s).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("the PRM (prm) path of")
                && msg.contains(&format!("past its {max} positions")),
            "{msg}"
        );
    }
    // With room for the whole tree the same search runs.
    rebase_with_prm(&be, &m, &m, false, usize::MAX, 512, &s).unwrap();
}
