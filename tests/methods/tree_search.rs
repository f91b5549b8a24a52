//! REBASE and the combination: the tree, its scores, the study's formula, small pools and
//! a PRM with its own limits.
use super::*;

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
        // Wu et al.'s prompt is the question alone (rebase.py: `s += question`); the study's
        // adds its "A: Let's think step by step.". BOS comes first in both.
        let alone = 1 + m.tok.encode(Q).unwrap().len() as u64;
        match protocol {
            Protocol::Wu => assert_eq!(sol.prompt_tokens, alone),
            Protocol::Seed => assert!(sol.prompt_tokens > alone),
        }
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
