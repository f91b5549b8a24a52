//! Quiet-STaR: the pages its thoughts take, the two modes' agreement, and where it runs the
//! LM head.
use super::*;

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

/// Quiet-STaR on `m` with a talk head whose last layer is nonzero, so that the thoughts change
/// the output (the initialisation's zero head gives the base model's logits whatever they are).
fn talking(be: &Cpu, m: &Loaded<Cpu>) -> QuietStar<Cpu> {
    let mut qs = QuietStar::new(be, &m.model, &m.tok, None, true, 8).unwrap();
    let d = m.model.cfg.hidden_size;
    let w3: Vec<f32> = (0..d).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.05).collect();
    qs.head.w3 = be
        .weight(&[1, d], ponder::backend::WeightData::Host(w3.into()))
        .unwrap();
    qs
}

#[test]
fn parallel_thoughts_give_the_incremental_logits_for_the_same_thought_tokens() {
    use ponder::methods::quiet_star::{Mode, ThoughtStep};
    use ponder::scheduler::{prefill, Branch, Stepper};
    let (be, mut m) = tiny();
    let qs = talking(&be, &m);
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
    // A talking head: each mode samples its own thoughts (the branch's own stream in both),
    // and they decide the text, so a thought drawn from another stream would show.
    let qs = talking(&be, &m);
    let solve = |quiet_mode| {
        let mut p = Policy {
            runner: Runner::new(&be, &m.model, 1024, 4).unwrap(),
            tok: &m.tok,
        };
        baseline::solve(&mut p, Some(&qs), Q, &Settings { quiet_mode, ..s }).unwrap()
    };
    use ponder::methods::quiet_star::Mode;
    let (inc, par) = (solve(Mode::Incremental), solve(Mode::Parallel));
    assert_eq!(texts(&inc), texts(&par));
    let silent = run_baseline(&be, &m, true, 1024, usize::MAX, &s);
    assert_ne!(
        texts(&inc),
        texts(&silent),
        "the thoughts should change the text"
    );
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
        // Base pass: the pending token, and in parallel mode depth 0 of every position again;
        // then the LM head on every mixed row, the output token's projection as in a decode.
        let base = if mode == Mode::Parallel { 1 + n } else { 1 };
        assert_eq!(
            matmul(Phase::Decode),
            base * layers_per_token + n * head,
            "{mode:?}"
        );
        assert_eq!(
            matmul(Phase::Thought),
            7 * n * layers_per_token + 5 * n * head,
            "{mode:?}"
        );
        // The mix: the talk head's three linears for every row, and nothing else.
        let talk = 2 * n * (2 * d * d + d * d + d);
        assert_eq!(matmul(Phase::Mix), talk, "{mode:?}");
    }
}
