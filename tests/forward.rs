//! The forward pass on a synthetic model: the FLOP ledger against its closed form, and
//! batching / caching invariance (the same tokens give the same logits however they are fed).
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::flops::Phase;
use ponder::generate::Runner;
use ponder::model::config::Config;
use ponder::model::llama::{Model, Synthetic};

fn tiny(be: &Cpu) -> Model<Cpu> {
    Model::load(be, Config::builtin("tiny").unwrap(), &Synthetic { seed: 7 }).unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn ledger_of_one_prefill_matches_the_closed_form() {
    let be = Cpu::new();
    let m = tiny(&be);
    let c = m.cfg.clone();
    let mut r = Runner::new(&be, &m, 8, 16).unwrap();
    let s = r.pool.create();
    let ids: Vec<u32> = (0..37).map(|i| (i * 13 % 500) as u32).collect();
    be.set_phase(Phase::Prefill);
    r.extend(&[(s, &ids)]).unwrap();
    let l = be.ledger().lock().unwrap().clone();

    let n = ids.len() as u64;
    let (d, f, v) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let (h, kvh, hd, layers) = (
        c.num_attention_heads as u64,
        c.num_key_value_heads as u64,
        c.head_dim as u64,
        c.num_hidden_layers as u64,
    );
    let (qd, kvd) = (h * hd, kvh * hd);
    let matmul = layers * 2 * n * (d * qd + 2 * d * kvd + qd * d + 3 * d * f) + 2 * v * d;
    let pairs = n * (n + 1) / 2;
    let attention = layers * 4 * hd * h * pairs;
    let rope = layers * 6 * n * (h + kvh) * (hd / 2);
    let norms = 4 * n * d + layers * 2 * 5 * n * d;
    let silu = layers * 3 * n * f;
    let add = 0;
    let ops = l.by_op();
    assert_eq!(ops["matmul"].useful_flops, matmul);
    assert_eq!(ops["attention"].useful_flops, attention);
    assert_eq!(ops["rope_kv"].useful_flops, rope);
    assert_eq!(
        ops["rmsnorm"].useful_flops + ops["add_rmsnorm"].useful_flops,
        norms
    );
    assert_eq!(ops["silu_mul"].useful_flops, silu);
    assert_eq!(
        l.by_phase(Phase::Prefill).useful_flops,
        matmul + attention + rope + norms + silu + add
    );
    assert_eq!(l.total().useful_flops, l.total().executed_flops);
    // rsqrt per normalised row, exp per (pair, head) and per SiLU element, sin+cos per pair.
    assert_eq!(
        l.total().transcendentals,
        n * (1 + 2 * layers) + layers * (h * pairs + n * f + n * hd)
    );
    // q|k|v, o, gate|up, down per layer (stacked projections), and the LM head.
    assert_eq!(ops["matmul"].calls, layers * 4 + 1);
}

#[test]
fn prefill_then_decode_equals_one_prefill() {
    let be = Cpu::new();
    let m = tiny(&be);
    let ids: Vec<u32> = (0..40).map(|i| (i * 31 % 509) as u32).collect();
    let mut r = Runner::new(&be, &m, 32, 4).unwrap();
    let a = r.pool.create();
    let whole = be
        .to_host(r.extend(&[(a, &ids)]).unwrap().logits().unwrap())
        .unwrap();
    let b = r.pool.create();
    r.extend(&[(b, &ids[..25])]).unwrap();
    let mut last = None;
    for t in &ids[25..] {
        last = Some(r.extend(&[(b, std::slice::from_ref(t))]).unwrap());
    }
    let stepwise = be.to_host(last.unwrap().logits().unwrap()).unwrap();
    assert!(
        max_rel_diff(&stepwise, &whole) < 1e-4,
        "{}",
        max_rel_diff(&stepwise, &whole)
    );
}

#[test]
fn a_sequence_gives_the_same_logits_alone_or_in_a_ragged_batch() {
    let be = Cpu::new();
    let m = tiny(&be);
    let p1: Vec<u32> = (0..19).map(|i| (i * 7 % 500) as u32).collect();
    let p2: Vec<u32> = (0..5).map(|i| (i * 11 % 500 + 3) as u32).collect();
    let p3: Vec<u32> = (0..33).map(|i| (i * 17 % 500 + 1) as u32).collect();
    let mut r = Runner::new(&be, &m, 64, 8).unwrap();
    let alone = {
        let s = r.pool.create();
        be.to_host(r.extend(&[(s, &p2)]).unwrap().logits().unwrap())
            .unwrap()
    };
    let (s1, s2, s3) = (r.pool.create(), r.pool.create(), r.pool.create());
    let out = r.extend(&[(s1, &p1), (s2, &p2), (s3, &p3)]).unwrap();
    let all = be.to_host(out.logits().unwrap()).unwrap();
    let v = m.cfg.vocab_size;
    assert_eq!(all.len(), 3 * v);
    assert!(max_rel_diff(&all[v..2 * v], &alone) < 1e-5);
}

#[test]
fn forked_branches_continue_like_their_parent() {
    let be = Cpu::new();
    let m = tiny(&be);
    let prompt: Vec<u32> = (0..21).map(|i| (i * 5 % 500) as u32).collect();
    let mut r = Runner::new(&be, &m, 64, 8).unwrap();
    let parent = r.pool.create();
    r.extend(&[(parent, &prompt)]).unwrap();
    let (kids, copies) = r.pool.fork(parent, 3).unwrap();
    r.copy_pages(&copies).unwrap();
    let next = [9u32, 77, 300];
    let items: Vec<(ponder::kv::SeqId, &[u32])> = kids
        .iter()
        .zip(&next)
        .map(|(k, t)| (*k, std::slice::from_ref(t)))
        .collect();
    let out = be
        .to_host(r.extend(&items).unwrap().logits().unwrap())
        .unwrap();
    let v = m.cfg.vocab_size;
    for (i, t) in next.iter().enumerate() {
        let s = r.pool.create();
        let mut full = prompt.clone();
        full.push(*t);
        let want = be
            .to_host(r.extend(&[(s, &full)]).unwrap().logits().unwrap())
            .unwrap();
        assert!(
            max_rel_diff(&out[i * v..(i + 1) * v], &want) < 1e-4,
            "branch {i}"
        );
    }
}

#[test]
fn sliding_window_limits_what_a_query_sees() {
    let be = Cpu::new();
    let mut cfg = Config::builtin("tiny").unwrap();
    cfg.sliding_window = Some(6);
    let m = Model::load(&be, cfg, &Synthetic { seed: 7 }).unwrap();
    // With a window of 6, the last token's output ignores everything before the last 6 tokens.
    let a: Vec<u32> = vec![5, 6, 7, 8, 100, 101, 102, 103, 104, 105];
    let mut b = a.clone();
    b[0] = 400;
    b[1] = 401;
    let mut r = Runner::new(&be, &m, 16, 4).unwrap();
    let (sa, sb) = (r.pool.create(), r.pool.create());
    let la = be
        .to_host(r.extend(&[(sa, &a)]).unwrap().logits().unwrap())
        .unwrap();
    let lb = be
        .to_host(r.extend(&[(sb, &b)]).unwrap().logits().unwrap())
        .unwrap();
    // Layer 2 sees layer 1's outputs at positions ≥ 4 - 5, which saw positions ≥ −1: so with
    // two layers the receptive field is 2·(6−1)+1 = 11 > 10 and the first tokens still matter,
    // while a window of 6 on a single layer would not. Check the attention-pair count instead.
    assert_ne!(la, lb);
    let ops = be.ledger().lock().unwrap().by_op();
    let pairs_per_seq: u64 = (0..10u64).map(|p| (p + 1).min(6)).sum();
    let c = &m.cfg;
    let per_pair = 4 * (c.head_dim * c.num_attention_heads) as u64;
    assert_eq!(
        ops["attention"].useful_flops,
        2 * c.num_hidden_layers as u64 * per_pair * pairs_per_seq
    );
}

/// Rows whose caller reads only hidden states skip the LM head: their hidden states are the
/// same, the other rows' logits are the same, and the ledger drops exactly 2·vocab·d FLOPs per
/// skipped row. A pass that asks for no logits returns none (and says so when asked).
#[test]
fn rows_that_want_no_logits_skip_the_lm_head_exactly() {
    use ponder::generate::{KvStore, Want};
    let prompts: Vec<Vec<u32>> = (0..3u32)
        .map(|k| (0..9 + 4 * k).map(|i| (i * 13 + k * 5) % 500).collect())
        .collect();
    // mask[i]: does sequence i ask for logits? None: all through Runner::extend_for(want).
    let run = |mask: Option<[bool; 3]>, want: Want| {
        let be = Cpu::new();
        let m = tiny(&be);
        let mut r = Runner::new(&be, &m, 32, 8).unwrap();
        let seqs: Vec<_> = (0..3).map(|_| r.pool.create()).collect();
        let items: Vec<_> = seqs
            .iter()
            .zip(&prompts)
            .map(|(s, p)| (*s, &p[..]))
            .collect();
        be.set_phase(Phase::Prefill);
        let out = match mask {
            None => r.extend_for(&items, want).unwrap(),
            Some(mask) => {
                let mut batch = r.reserve(items.iter().map(|(s, p)| (*s, p.len()))).unwrap();
                for (s, m) in batch.seqs.iter_mut().zip(mask) {
                    s.logits = m;
                }
                let ids: Vec<u32> = prompts.concat();
                let KvStore::Own(kv) = &mut r.kv else {
                    panic!("a lone runner owns its KV")
                };
                m.forward(&be, kv, &batch, &ids).unwrap()
            }
        };
        let hidden = be.to_host(&out.hidden).unwrap();
        let logits = out.logits.as_ref().map(|l| be.to_host(l).unwrap());
        let err = out.logits().err().map(|e| e.to_string());
        let matmul = be.ledger().lock().unwrap().by_op()["matmul"].useful_flops;
        (hidden, logits, err, matmul)
    };
    let cfg = Config::builtin("tiny").unwrap();
    let (v, head) = (
        cfg.vocab_size,
        2 * (cfg.vocab_size * cfg.hidden_size) as u64,
    );
    let (h_all, l_all, _, f_all) = run(None, Want::Logits);
    let l_all = l_all.unwrap();
    assert_eq!(l_all.len(), 3 * v);
    let (h_mix, l_mix, _, f_mix) = run(Some([false, true, false]), Want::Logits);
    assert_eq!(h_mix, h_all);
    assert_eq!(l_mix.unwrap(), &l_all[v..2 * v]);
    assert_eq!(f_mix, f_all - 2 * head);
    let (h_none, l_none, err, f_none) = run(None, Want::Hidden);
    assert_eq!(h_none, h_all);
    assert!(l_none.is_none());
    assert!(err.unwrap().contains("hidden states only"));
    assert_eq!(f_none, f_all - 3 * head);
}

/// Quiet-STaR's merged pass (`Runner::extend_with_marker`): each sequence's tokens and a marker
/// row in one pass give the hidden states and marker logits of two separate passes, bit for
/// bit, and the same FLOPs in each phase (the marker's share under its own phase); a pool too
/// short for it refuses it and changes nothing.
#[test]
fn tokens_and_a_marker_in_one_pass_equal_two_passes() {
    use ponder::generate::Want;
    use ponder::kv::SeqId;
    let be = Cpu::new();
    let m = tiny(&be);
    let d = m.cfg.hidden_size;
    let prompts: [Vec<u32>; 2] = [(0..21).map(|i| i * 7 % 500).collect(), vec![3, 9, 27]];
    let new_tokens: [Vec<u32>; 2] = [vec![11, 12], vec![40]];
    let marker: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
    let setup = |r: &mut Runner<'_, Cpu>| -> Vec<SeqId> {
        let seqs: Vec<SeqId> = prompts.iter().map(|_| r.pool.create()).collect();
        be.set_phase(Phase::Prefill);
        for (s, p) in seqs.iter().zip(&prompts) {
            r.extend(&[(*s, p)]).unwrap();
        }
        seqs
    };
    let phases = |l: &ponder::flops::Ledger| {
        [Phase::Decode, Phase::Thought].map(|p| l.by_phase(p).useful_flops)
    };

    // Two passes: the tokens (hidden only) under decode, then the markers under thought.
    let mut r = Runner::new(&be, &m, 64, 4).unwrap();
    let seqs = setup(&mut r);
    be.ledger().lock().unwrap().clear();
    be.set_phase(Phase::Decode);
    let items: Vec<(SeqId, &[u32])> = seqs
        .iter()
        .zip(&new_tokens)
        .map(|(s, t)| (*s, t.as_slice()))
        .collect();
    let h1 = be
        .to_host(&r.extend_for(&items, Want::Hidden).unwrap().hidden)
        .unwrap();
    be.set_phase(Phase::Thought);
    let two_markers = [marker.clone(), marker.clone()].concat();
    let out = r
        .extend_embedded(&seqs, &two_markers, 1, Want::Logits)
        .unwrap();
    let (h2, l2) = (
        be.to_host(&out.hidden).unwrap(),
        be.to_host(out.logits().unwrap()).unwrap(),
    );
    let apart = phases(&be.ledger().lock().unwrap());

    // One pass.
    let mut r = Runner::new(&be, &m, 64, 4).unwrap();
    let seqs = setup(&mut r);
    be.ledger().lock().unwrap().clear();
    be.set_phase(Phase::Decode);
    let mut rows = Vec::new();
    for t in &new_tokens {
        rows.extend(be.to_host(&be.embed(&m.embed, t).unwrap()).unwrap());
        rows.extend_from_slice(&marker);
    }
    let sizes: Vec<(SeqId, usize)> = seqs
        .iter()
        .zip(&new_tokens)
        .map(|(s, t)| (*s, t.len() + 1))
        .collect();
    let out = r.extend_with_marker(&sizes, &rows, Phase::Thought).unwrap();
    let hidden = be.to_host(&out.hidden).unwrap();
    let together = phases(&be.ledger().lock().unwrap());
    let (tok, mark): (Vec<&[f32]>, Vec<&[f32]>) = (
        hidden.chunks(d).step_by(2).collect(),
        hidden.chunks(d).skip(1).step_by(2).collect(),
    );
    assert_eq!(tok.concat(), h1, "the tokens' hidden states");
    assert_eq!(mark.concat(), h2, "the markers' hidden states");
    assert_eq!(
        be.to_host(out.logits().unwrap()).unwrap(),
        l2,
        "the markers' logits"
    );
    assert_eq!(together, apart, "useful FLOPs by phase (decode, thought)");
    assert!(together[1] > 0);

    // A pool without room: an out-of-pages error, and every sequence as it was.
    let mut r = Runner::new(&be, &m, 7, 4).unwrap();
    let seqs = setup(&mut r);
    let before: Vec<usize> = seqs.iter().map(|s| r.pool.len(*s).unwrap()).collect();
    let (free, pages) = (r.pool.free_pages(), r.pool.n_pages());
    let sizes: Vec<(SeqId, usize)> = seqs
        .iter()
        .zip(&new_tokens)
        .map(|(s, t)| (*s, t.len() + 1))
        .collect();
    let Err(e) = r.extend_with_marker(&sizes, &rows, Phase::Thought) else {
        panic!("the pool had room for the merged pass");
    };
    assert!(ponder::scheduler::is_oom(&e), "{e:#}");
    let after: Vec<usize> = seqs.iter().map(|s| r.pool.len(*s).unwrap()).collect();
    assert_eq!(
        (after, r.pool.free_pages(), r.pool.n_pages()),
        (before, free, pages)
    );
}

/// Greedy generation of `max_tokens` tokens with EOS ignored, for the `generate` tests.
fn greedy(max_tokens: usize) -> ponder::generate::GenParams {
    ponder::generate::GenParams {
        max_tokens,
        sampling: ponder::sample::Sampling::GREEDY,
        seed: 1,
        stop: vec![],
        ignore_eos: true,
    }
}

/// `generate` frees its sequences when a step fails too (here the pool runs out of pages
/// mid-generation), so a caller that keeps the runner keeps all of its pool.
#[test]
fn generate_frees_its_sequences_when_a_step_fails() {
    use ponder::generate::generate;
    let be = Cpu::new();
    let m = ponder::model::source::load(&be, Some("synthetic:tiny"), std::path::Path::new("/"))
        .unwrap();
    let mut r = Runner::new(&be, &m.model, 3, 16).unwrap();
    let params = greedy(64);
    let prompts = vec![vec![5u32; 20], vec![6u32; 10]];
    let e = generate(&mut r, &m.tok, &prompts, &params, |_, _| Ok(())).unwrap_err();
    assert!(format!("{e:#}").contains("pages"), "{e:#}");
    assert_eq!(r.pool.free_pages(), 3);
    // …and it is reusable: a short generation now fits.
    let short = greedy(4);
    let done = generate(&mut r, &m.tok, &prompts[1..], &short, |_, _| Ok(())).unwrap();
    assert_eq!(done[0].ids.len(), 4);
    assert_eq!(r.pool.free_pages(), 3);
}

/// An error from `on_text` (stdout closed under `ponder generate | head`) stops the
/// generation at the piece it failed on, not after every remaining token, and comes back as
/// the error; the sequences are freed.
#[test]
fn generate_stops_when_its_output_fails() {
    use ponder::generate::generate;
    let be = Cpu::new();
    let m = ponder::model::source::load(&be, Some("synthetic:tiny"), std::path::Path::new("/"))
        .unwrap();
    let mut r = Runner::new(&be, &m.model, 64, 16).unwrap();
    let params = greedy(200);
    let mut pieces = 0;
    let e = generate(&mut r, &m.tok, &[vec![5u32; 4]], &params, |_, _| {
        pieces += 1;
        anyhow::ensure!(pieces < 3, "the pipe is closed");
        Ok(())
    })
    .unwrap_err();
    assert_eq!(format!("{e:#}"), "the pipe is closed");
    assert_eq!(pieces, 3, "no piece after the failed one");
    assert_eq!(r.pool.free_pages(), 64);
}
