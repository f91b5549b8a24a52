//! `ponder bench attention`: each attention kernel alone, on the model's attention geometry,
//! against the roofline that bounds it. Prefill-shaped cases (causal, the Quiet-STaR diagonal
//! mask) are compute-bound: useful TFLOP/s against 790. Decode-shaped cases (paged decode,
//! shared prefix) are bound by reading the KV cache: GB/s against 3.1 TB/s. FLOPs and bytes
//! are the ledger's counts over the timed launches, so they are what the kernels were charged
//! with, not a formula of this file.
use super::bench::{BF16_FLOP_PER_S, HBM_BYTES_PER_S};
use anyhow::{bail, Result};
use ponder::backend::{AttnDims, Backend, Batch, KvShape, SeqSlice};
use ponder::flops::{Counts, Phase};
use ponder::model::config::Config;
use ponder::rng::fill_uniform;
use std::time::Instant;

const PAGE: usize = 16;

/// The sizes of the four cases.
pub struct Sizes {
    /// Causal prefill: one sequence of this many tokens.
    pub tokens: usize,
    /// Paged decode and shared prefix: this many sequences…
    pub batch: usize,
    /// …each attending to this many keys (shared by all in the shared-prefix case).
    pub context: usize,
    /// Diagonal mask: thought positions per depth, and the depth of the timed queries.
    pub thought_len: usize,
    pub depth: usize,
    pub iters: usize,
}

/// A sequence's new tokens at `pos` over `pages`.
fn slice(token_start: usize, n: usize, pos: usize, pages: Vec<u32>) -> SeqSlice {
    SeqSlice {
        token_start,
        n_tokens: n,
        pos_start: pos,
        pages,
    }
}

fn batch(seqs: Vec<SeqSlice>) -> Batch {
    let mut start = 0;
    let seqs = seqs
        .into_iter()
        .map(|mut s| {
            s.token_start = start;
            start += s.n_tokens;
            s
        })
        .collect();
    Batch {
        seqs,
        page_size: PAGE,
        sliding_window: None,
    }
}

fn pages(first: usize, n_tokens: usize) -> Vec<u32> {
    (first..first + n_tokens.div_ceil(PAGE))
        .map(|p| p as u32)
        .collect()
}

/// Writes random K/V for every token of `fill` (one sequence at a time, to bound the memory
/// of the q rows rope_store_kv also rotates).
fn fill_kv<B: Backend>(be: &B, kv: &mut B::Kv, fill: &Batch, d: AttnDims) -> Result<()> {
    for (i, s) in fill.seqs.iter().enumerate() {
        let b = batch(vec![s.clone()]);
        let n = s.n_tokens;
        let (qd, kd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
        let mut q = be.tensor(n, qd, &vec![0.0; n * qd])?;
        let k = be.tensor(n, kd, &fill_uniform(2 * i as u64 + 1, n * kd, 1.0))?;
        let v = be.tensor(n, kd, &fill_uniform(2 * i as u64 + 2, n * kd, 1.0))?;
        be.rope_store_kv(&mut q, &k, &v, kv, 0, &b, d)?;
    }
    Ok(())
}

/// Runs `f` once to warm up, then `iters` times; returns seconds per run and the ledger's
/// counts per run. `f` returns its output, copied to the host only after the last run (the
/// copy waits for the device; one small copy per measurement).
fn time<B: Backend>(
    be: &B,
    iters: usize,
    mut f: impl FnMut() -> Result<B::Tensor>,
) -> Result<(f64, Counts)> {
    be.to_host(&f()?)?;
    let before = be
        .ledger()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let t = Instant::now();
    let mut last = None;
    for _ in 0..iters {
        last = Some(f()?);
    }
    if let Some(o) = &last {
        be.to_host(o)?;
    }
    let secs = t.elapsed().as_secs_f64() / iters as f64;
    let l = be.ledger().lock().unwrap_or_else(|e| e.into_inner());
    let mut c = l.since(&before).total();
    for x in [
        &mut c.useful_flops,
        &mut c.executed_flops,
        &mut c.bytes,
        &mut c.calls,
    ] {
        *x /= iters as u64;
    }
    Ok((secs, c))
}

fn row(case: &str, shape: &str, secs: f64, c: Counts, memory_bound: bool, on_gpu: bool) {
    let (tf, gbs) = (c.useful_flops as f64 / secs, c.bytes as f64 / secs);
    let pct = match (on_gpu, memory_bound) {
        (false, _) => "-".to_string(),
        (true, true) => format!("{:.1}% of 3.1 TB/s", 100.0 * gbs / HBM_BYTES_PER_S),
        (true, false) => format!("{:.1}% of 790 TFLOP/s", 100.0 * tf / BF16_FLOP_PER_S),
    };
    println!(
        "{case:<14} {shape:<30} {:>10.3} {:>10.3} {:>10.1} {pct:>20}",
        secs * 1e3,
        tf / 1e12,
        gbs / 1e9
    );
}

pub fn run<B: Backend + 'static>(be: &B, cfg: &Config, name: &str, s: &Sizes) -> Result<()> {
    if [s.tokens, s.batch, s.context, s.thought_len, s.iters].contains(&0) {
        bail!("--tokens, --batch, --context, --thought-len and --iters must be at least 1");
    }
    let d = AttnDims {
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        rope_theta: cfg.rope_theta,
    };
    let on_gpu = be.name() != "cpu";
    let (qd, kd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let kv_of = |n_pages: usize| {
        be.alloc_kv(KvShape {
            layers: 1,
            pages: n_pages,
            page_size: PAGE,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
        })
    };
    println!(
        "attention on {name} ({}): {} query heads, {} KV heads, head_dim {}; {} timed runs each",
        be.name(),
        d.heads,
        d.kv_heads,
        d.head_dim,
        s.iters
    );
    println!(
        "{:<14} {:<30} {:>10} {:>10} {:>10} {:>20}",
        "case", "shape", "ms", "TFLOP/s", "GB/s", "roofline"
    );
    be.set_phase(Phase::Prefill);

    // Causal prefill: every query of one sequence over its own keys.
    let b = batch(vec![slice(0, s.tokens, 0, pages(0, s.tokens))]);
    let mut kv = kv_of(s.tokens.div_ceil(PAGE))?;
    fill_kv(be, &mut kv, &b, d)?;
    let q = be.tensor(s.tokens, qd, &fill_uniform(7, s.tokens * qd, 1.0))?;
    let (secs, c) = time(be, s.iters, || be.attention(&q, &kv, 0, &b, d))?;
    row(
        "causal",
        &format!("{} tokens", s.tokens),
        secs,
        c,
        false,
        on_gpu,
    );
    drop((kv, q));

    // The diagonal mask of Quiet-STaR's parallel thoughts (a kernel of the CUDA backend).
    thought_case(be, d, s, on_gpu)?;

    // Paged decode: one new token per sequence, each over its own `context` keys.
    be.set_phase(Phase::Decode);
    // The query is the last of `context` tokens already in the cache: it sees all of them.
    let per = s.context.div_ceil(PAGE);
    let own = |i: usize| pages(i * per, s.context);
    let fill = batch(
        (0..s.batch)
            .map(|i| slice(0, s.context, 0, own(i)))
            .collect(),
    );
    let mut kv = kv_of(s.batch * per)?;
    fill_kv(be, &mut kv, &fill, d)?;
    let step = batch(
        (0..s.batch)
            .map(|i| slice(0, 1, s.context - 1, own(i)))
            .collect(),
    );
    let q = be.tensor(s.batch, qd, &fill_uniform(8, s.batch * qd, 1.0))?;
    let (secs, c) = time(be, s.iters, || be.attention(&q, &kv, 0, &step, d))?;
    let shape = format!("{} seqs x {} keys", s.batch, s.context);
    row("paged-decode", &shape, secs, c, true, on_gpu);
    drop((kv, q));

    // Shared prefix: `batch` branches forked from one `context`-token prefix, each with 32
    // tokens of its own (the shape of votes and REBASE children).
    let tail: usize = 32;
    let prefix = pages(0, s.context);
    let np = prefix.len();
    let own_pages = tail.div_ceil(PAGE);
    // The prefix fills whole pages, so the branches' own tokens start on a page of their own.
    let ctx = np * PAGE;
    let branch = |i: usize| -> Vec<u32> {
        let mut p = prefix.clone();
        p.extend(pages(np + i * own_pages, tail));
        p
    };
    let mut fills = vec![slice(0, ctx, 0, prefix.clone())];
    fills.extend((0..s.batch).map(|i| slice(0, tail, ctx, branch(i))));
    let mut kv = kv_of(np + s.batch * own_pages)?;
    fill_kv(be, &mut kv, &batch(fills), d)?;
    let step = batch(
        (0..s.batch)
            .map(|i| slice(0, 1, ctx + tail - 1, branch(i)))
            .collect(),
    );
    let q = be.tensor(s.batch, qd, &fill_uniform(9, s.batch * qd, 1.0))?;
    let (secs, c) = time(be, s.iters, || be.attention(&q, &kv, 0, &step, d))?;
    let shape = format!("{} x ({ctx} shared + {tail})", s.batch);
    row("shared-prefix", &shape, secs, c, true, on_gpu);
    // What reading the prefix once per branch would cost, beside what the kernels were charged.
    let per_branch = (s.batch * (ctx + tail)) as f64 * kd as f64 * 2.0 * kv_elem_bytes(on_gpu);
    println!(
        "{:<14} K/V read per branch would be {:.1} MB; the kernels were charged {:.1} MB",
        "",
        per_branch / 1e6,
        c.bytes as f64 / 1e6
    );
    Ok(())
}

/// Bytes per K/V element in the pool: bf16 on the GPU, f32 on the CPU.
fn kv_elem_bytes(on_gpu: bool) -> f64 {
    if on_gpu {
        2.0
    } else {
        4.0
    }
}

#[cfg(feature = "cuda")]
fn thought_case<B: Backend + 'static>(be: &B, d: AttnDims, s: &Sizes, on_gpu: bool) -> Result<()> {
    let Some(cuda) = (be as &dyn std::any::Any).downcast_ref::<ponder::backend::cuda::Cuda>()
    else {
        return thought_skipped();
    };
    let (l, depth) = (s.thought_len, s.depth);
    let keys = (depth + 1) * l;
    let p = pages(0, keys);
    let mut kv = cuda.alloc_kv(KvShape {
        layers: 1,
        pages: p.len(),
        page_size: PAGE,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
    })?;
    fill_kv(cuda, &mut kv, &batch(vec![slice(0, keys, 0, p.clone())]), d)?;
    let qd = d.heads * d.head_dim;
    let q = cuda.tensor(l, qd, &fill_uniform(10, l * qd, 1.0))?;
    let (secs, c) = time(cuda, s.iters, || {
        cuda.thought_attention(&q, &kv, 0, &p, l, depth, None, d)
    })?;
    let shape = format!("{l} positions, depth {depth}");
    row("diagonal-mask", &shape, secs, c, false, on_gpu);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn thought_case<B: Backend + 'static>(
    _be: &B,
    _d: AttnDims,
    s: &Sizes,
    _on_gpu: bool,
) -> Result<()> {
    // The sizes are the CUDA case's; nothing to run here.
    let _ = (s.thought_len, s.depth);
    thought_skipped()
}

fn thought_skipped() -> Result<()> {
    println!(
        "{:<14} (a CUDA kernel: the CPU backend realises the mask with page tables instead)",
        "diagonal-mask"
    );
    Ok(())
}
