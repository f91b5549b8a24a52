//! The Quiet-STaR mixing head and the whole forward pass of a tiny model.
use super::*;

pub(crate) fn op_talk_mix<B: Backend>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (3, 32);
    let (hb, he) = (rnd(61, n * d, 1.0), rnd(62, n * d, 1.0));
    let p = |s, len, b| bf16(&rnd(s, len, b));
    let (w1, b1, w2, b2, w3) = (
        p(63, d * 2 * d, 0.2),
        p(64, d, 0.1),
        p(65, d * d, 0.3),
        p(66, d, 0.1),
        p(67, d, 0.3),
    );
    let run = |be: &B| -> Result<Vec<f32>> {
        let head = TalkHead::<B> {
            w1: weight(be, &[d, 2 * d], &w1),
            b1: weight(be, &[d], &b1),
            w2: weight(be, &[d, d], &w2),
            b2: weight(be, &[d], &b2),
            w3: weight(be, &[1, d], &w3),
        };
        let out = be.talk_mix(&be.tensor(n, d, &hb)?, &be.tensor(n, d, &he)?, &head)?;
        be.to_host(&out)
    };
    clear(be);
    let got = run(be)?;
    let cpu = Cpu::new();
    let head = TalkHead::<Cpu> {
        w1: weight(&cpu, &[d, 2 * d], &w1),
        b1: weight(&cpu, &[d], &b1),
        w2: weight(&cpu, &[d, d], &w2),
        b2: weight(&cpu, &[d], &b2),
        w3: weight(&cpu, &[1, d], &w3),
    };
    cpu.talk_mix(&cpu.tensor(n, d, &hb)?, &cpu.tensor(n, d, &he)?, &head)?;
    assert_same_useful(&ledger(be), &ledger(&cpu));
    let mut want = vec![0.0f32; n * d];
    for r in 0..n {
        let cat = [&hb[r * d..(r + 1) * d], &he[r * d..(r + 1) * d]].concat();
        let relu_b = |x: Vec<f32>, b: &[f32]| -> Vec<f32> {
            x.iter().zip(b).map(|(x, b)| (x + b).max(0.0)).collect()
        };
        let a = relu_b(naive_linear(&cat, 2 * d, &w1, d), &b1);
        let h = relu_b(naive_linear(&a, d, &w2, d), &b2);
        let w = naive_linear(&h, d, &w3, 1)[0];
        for i in 0..d {
            want[r * d + i] = (1.0 - w) * hb[r * d + i] + w * he[r * d + i];
        }
    }
    assert_close(&got, &want, tol, "talk_mix");
    Ok(())
}

// ---------------------------------------------------------------- the whole model

/// The forward pass written out plainly for one sequence: logits and final hidden state of
/// its last token.
pub(crate) fn naive_forward(
    cfg: &ponder::model::config::Config,
    src: &ponder::model::llama::Synthetic,
    ids: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    use ponder::model::llama::ParamSource;
    let get = |n: &str, s: &[usize]| src.param(n, s).unwrap().to_f32().to_vec();
    let (d, f, v, n) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.vocab_size,
        ids.len(),
    );
    let (qd, kd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let ad = dims(cfg.num_attention_heads, cfg.num_key_value_heads, hd);
    let emb = get("model.embed_tokens.weight", &[v, d]);
    let mut x: Vec<f32> = ids
        .iter()
        .flat_map(|&i| emb[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect();
    for l in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let h = naive_rms(
            &x,
            d,
            &get(&p("input_layernorm.weight"), &[d]),
            cfg.rms_norm_eps,
        );
        let mut q = naive_linear(&h, d, &get(&p("self_attn.q_proj.weight"), &[qd, d]), qd);
        let mut k = naive_linear(&h, d, &get(&p("self_attn.k_proj.weight"), &[kd, d]), kd);
        let vv = naive_linear(&h, d, &get(&p("self_attn.v_proj.weight"), &[kd, d]), kd);
        for t in 0..n {
            rope_row(&mut q[t * qd..(t + 1) * qd], hd, t, cfg.rope_theta);
            rope_row(&mut k[t * kd..(t + 1) * kd], hd, t, cfg.rope_theta);
        }
        let mut a = Vec::with_capacity(n * qd);
        for t in 0..n {
            let keys: Vec<usize> = (0..=t).collect();
            a.extend(naive_attn_row(&q[t * qd..(t + 1) * qd], &k, &vv, &keys, ad));
        }
        let o = naive_linear(&a, qd, &get(&p("self_attn.o_proj.weight"), &[d, qd]), d);
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        let h = naive_rms(
            &x,
            d,
            &get(&p("post_attention_layernorm.weight"), &[d]),
            cfg.rms_norm_eps,
        );
        let g = naive_linear(&h, d, &get(&p("mlp.gate_proj.weight"), &[f, d]), f);
        let u = naive_linear(&h, d, &get(&p("mlp.up_proj.weight"), &[f, d]), f);
        let m: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let dn = naive_linear(&m, f, &get(&p("mlp.down_proj.weight"), &[d, f]), d);
        x.iter_mut().zip(&dn).for_each(|(x, o)| *x += o);
    }
    let last = &x[(n - 1) * d..];
    let hidden = naive_rms(last, d, &get("model.norm.weight", &[d]), cfg.rms_norm_eps);
    let head = get("lm_head.weight", &[v, d]);
    (naive_linear(&hidden, d, &head, v), hidden)
}

/// Prefill of two prompts, a fork of the first into three branches (which share four full
/// pages: the tree path on CUDA), two decode steps, one where only some sequences ask for logits
/// and one asking for hidden states only; all logits and hidden states against
/// the CPU backend, the second prompt's against the plain forward pass, and the useful FLOPs
/// of the whole run against the CPU's.
pub(crate) fn model_forward_tiny<B: Backend>(be: &B, tol: f32) -> Result<()> {
    use ponder::generate::{KvStore, Runner, Want};
    use ponder::model::config::Config;
    use ponder::model::llama::{Model, Synthetic};
    let cfg = Config::builtin("tiny")?;
    // Synthetic weights are bf16 values: both backends hold exactly these.
    let src = Synthetic { seed: 7 };
    let p1: Vec<u32> = (0..70).map(|i| (i * 13 % 500) as u32).collect();
    let p2: Vec<u32> = (0..9).map(|i| (i * 7 % 500 + 3) as u32).collect();
    fn run<B: Backend>(
        be: &B,
        cfg: &Config,
        src: &Synthetic,
        p1: &[u32],
        p2: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        let m = Model::load(be, cfg.clone(), src)?;
        let mut r = Runner::new(be, &m, 64, 16)?;
        let (a, b) = (r.pool.create(), r.pool.create());
        let mut outs = Vec::new();
        let o = r.extend(&[(a, p1), (b, p2)])?;
        outs.push(be.to_host(o.logits()?)?);
        outs.push(be.to_host(&o.hidden)?);
        let (kids, copies) = r.pool.fork(a, 3)?;
        r.copy_pages(&copies)?;
        for step in 0..2u32 {
            let toks: Vec<[u32; 1]> = (0..4).map(|i| [(i * 101 + step * 7 + 5) % 500]).collect();
            let mut items: Vec<(ponder::kv::SeqId, &[u32])> =
                kids.iter().zip(&toks).map(|(k, t)| (*k, &t[..])).collect();
            items.push((b, &toks[3][..]));
            let o = r.extend(&items)?;
            outs.push(be.to_host(o.logits()?)?);
        }
        // A step where only the first and last sequences ask for logits (their own gather
        // before the LM head), then one that asks for hidden states only.
        let toks: Vec<[u32; 1]> = (0..4).map(|i| [(i * 37 + 11) % 500]).collect();
        let mut items: Vec<(ponder::kv::SeqId, &[u32])> =
            kids.iter().zip(&toks).map(|(k, t)| (*k, &t[..])).collect();
        items.push((b, &toks[0][..]));
        let mut batch = r.reserve(items.iter().map(|(s, t)| (*s, t.len())))?;
        let n = batch.seqs.len();
        for (i, s) in batch.seqs.iter_mut().enumerate() {
            s.logits = i == 0 || i + 1 == n;
        }
        let ids: Vec<u32> = items.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let KvStore::Own(kv) = &mut r.kv else {
            anyhow::bail!("a lone runner owns its KV")
        };
        let o = m.forward(be, kv, &batch, &ids)?;
        r.commit(items.iter().map(|(s, t)| (*s, t.len())))?;
        anyhow::ensure!(be.shape(o.logits()?).0 == 2, "two rows of logits");
        outs.push(be.to_host(o.logits()?)?);
        outs.push(be.to_host(&o.hidden)?);
        let o = r.extend_for(&items, Want::Hidden)?;
        anyhow::ensure!(o.logits.is_none(), "no logits were asked for");
        outs.push(be.to_host(&o.hidden)?);
        Ok(outs)
    }
    clear(be);
    let got = run(be, &cfg, &src, &p1, &p2)?;
    let cpu = Cpu::new();
    let want = run(&cpu, &cfg, &src, &p1, &p2)?;
    assert_same_useful(&ledger(be), &ledger(&cpu));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(g, w, tol.max(1e-4), &format!("forward output {i} vs CPU"));
    }
    let (logits, hidden) = naive_forward(&cfg, &src, &p2);
    let v = cfg.vocab_size;
    assert_close(
        &got[0][v..],
        &logits,
        tol.max(1e-4),
        "prompt 2 logits vs plain forward",
    );
    assert_close(
        &got[1][cfg.hidden_size..],
        &hidden,
        tol.max(1e-4),
        "prompt 2 hidden",
    );
    Ok(())
}

/// Batch invariance (`Backend::set_batch_invariant`): a sequence's logits have the same bits
/// whether its tokens came in one prefill, in a prefill and decode steps alone, or in a
/// decode step in the middle of another two sequences' prefills — a 201-row pass, the row in
/// its second GEMM block (a full one), its context of 602 keys past one 512-key split. And a
/// short sequence's logits prefilled alone (one split: attn_decode writes them directly) are
/// those it gets in that pass (split-merged, beside the long context). The CPU is always so.
pub(crate) fn model_forward_batch_invariant<B: Backend>(be: &B, tol: f32) -> Result<()> {
    use ponder::generate::Runner;
    use ponder::model::config::Config;
    use ponder::model::llama::{Model, Synthetic};
    be.set_batch_invariant(true);
    let cfg = Config::builtin("tiny")?;
    let m = Model::load(be, cfg, &Synthetic { seed: 9 })?;
    let ids = |n: usize, a: usize, b: usize| -> Vec<u32> {
        (0..n).map(|i| ((i * a) % 500 + b) as u32).collect()
    };
    let (p1, p2, p3) = (ids(600, 17, 2), ids(130, 7, 3), ids(70, 11, 5));
    let (t1, t2) = ([41u32], [97u32]);
    let row = |o: &ponder::model::llama::Output<B>, row: usize| -> Result<Vec<f32>> {
        let l = be.to_host(o.logits()?)?;
        let v = l.len() / be.shape(o.logits()?).0;
        Ok(l[row * v..(row + 1) * v].to_vec())
    };
    let pages = 128;
    // Prefill, then two decode steps alone.
    let mut r = Runner::new(be, &m, pages, 16)?;
    let a = r.pool.create();
    r.extend(&[(a, &p1[..])])?;
    r.extend(&[(a, &t1[..])])?;
    let alone = row(&r.extend(&[(a, &t2[..])])?, 0)?;
    // The short prompt prefilled alone.
    let mut r = Runner::new(be, &m, pages, 16)?;
    let c = r.pool.create();
    let short_alone = row(&r.extend(&[(c, &p3[..])])?, 0)?;
    // Prefill with the first decoded token, then the second between two prompts' prefills.
    let mut r = Runner::new(be, &m, pages, 16)?;
    let (a, b, c) = (r.pool.create(), r.pool.create(), r.pool.create());
    let p1t1: Vec<u32> = p1.iter().chain(&t1).copied().collect();
    r.extend(&[(a, &p1t1[..])])?;
    let o = r.extend(&[(c, &p3[..]), (a, &t2[..]), (b, &p2[..])])?;
    let (short_shared, shared) = (row(&o, 0)?, row(&o, 1)?);
    // All of it in one prefill.
    let mut r = Runner::new(be, &m, pages, 16)?;
    let a = r.pool.create();
    let all: Vec<u32> = p1t1.iter().chain(&t2).copied().collect();
    let one = row(&r.extend(&[(a, &all[..])])?, 0)?;
    // And right: the one prefill against the CPU backend's.
    let cpu = Cpu::new();
    let mc = Model::load(&cpu, m.cfg.clone(), &Synthetic { seed: 9 })?;
    let mut r = Runner::new(&cpu, &mc, pages, 16)?;
    let a = r.pool.create();
    let o = r.extend(&[(a, &all[..])])?;
    assert_close(&one, &cpu.to_host(o.logits()?)?, tol.max(1e-4), "vs CPU");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    anyhow::ensure!(
        bits(&alone) == bits(&shared),
        "decoded alone and between two other prefills differ"
    );
    anyhow::ensure!(bits(&alone) == bits(&one), "decoded and prefilled differ");
    anyhow::ensure!(
        bits(&short_alone) == bits(&short_shared),
        "a short prompt alone and beside a long context differ"
    );
    Ok(())
}
