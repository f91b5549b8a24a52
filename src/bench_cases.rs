//! Inputs for timing kernels alone, built the same way on every backend: the attention cases
//! of `ponder bench attention` and of the criterion kernel benches (benches/kernels.rs). Each
//! case is a query tensor, a one-layer paged KV cache filled with random keys and values, and
//! the batch layout to run `Backend::attention` on.
use crate::backend::{concat_columns, AttnDims, Backend, Batch, KvShape, SeqSlice, ThoughtBlock};
use crate::rng::fill_uniform;
use anyhow::Result;

/// Tokens per KV page in every case.
pub const PAGE: usize = 16;

/// A sequence's `n` new tokens at position `pos` over `pages`.
pub fn slice(token_start: usize, n: usize, pos: usize, pages: Vec<u32>) -> SeqSlice {
    SeqSlice::new(token_start, n, pos, pages)
}

/// A batch of `seqs`, their token ranges laid end to end.
pub fn batch(seqs: Vec<SeqSlice>) -> Batch {
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

/// The consecutive pages from `first` that hold `n_tokens`.
pub fn pages(first: usize, n_tokens: usize) -> Vec<u32> {
    (first..first + n_tokens.div_ceil(PAGE))
        .map(|p| p as u32)
        .collect()
}

/// A one-layer KV cache of `n_pages` pages.
pub fn alloc_kv<B: Backend>(be: &B, d: AttnDims, n_pages: usize) -> Result<B::Kv> {
    be.alloc_kv(KvShape {
        layers: 1,
        pages: n_pages,
        page_size: PAGE,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
    })
}

/// Writes random K/V for every token of `fill` (one sequence at a time, to bound the memory
/// of the q rows rope_store_kv also rotates).
pub fn fill_kv<B: Backend>(be: &B, kv: &mut B::Kv, fill: &Batch, d: AttnDims) -> Result<()> {
    for (i, s) in fill.seqs.iter().enumerate() {
        let b = batch(vec![s.clone()]);
        let n = s.n_tokens;
        let (qd, kd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
        let k = fill_uniform(2 * i as u64 + 1, n * kd, 1.0);
        let v = fill_uniform(2 * i as u64 + 2, n * kd, 1.0);
        let qkv = concat_columns(n, &[(&vec![0.0; n * qd], qd), (&k, kd), (&v, kd)]);
        be.rope_store_kv(&be.tensor(n, qd + 2 * kd, &qkv)?, kv, 0, &b, d)?;
    }
    Ok(())
}

/// One attention launch to time: `be.attention(&q, &kv, 0, &batch, d)`.
pub struct AttnCase<B: Backend> {
    pub q: B::Tensor,
    pub kv: B::Kv,
    pub batch: Batch,
    /// The shape in words, for tables.
    pub shape: String,
}

impl<B: Backend> AttnCase<B> {
    pub fn run(&self, be: &B, d: AttnDims) -> Result<B::Tensor> {
        be.attention(&self.q, &self.kv, 0, &self.batch, d)
    }
}

/// Causal prefill: every query of one `tokens`-token sequence over its own keys.
pub fn causal<B: Backend>(be: &B, d: AttnDims, tokens: usize) -> Result<AttnCase<B>> {
    let b = batch(vec![slice(0, tokens, 0, pages(0, tokens))]);
    let mut kv = alloc_kv(be, d, tokens.div_ceil(PAGE))?;
    fill_kv(be, &mut kv, &b, d)?;
    let qd = d.heads * d.head_dim;
    Ok(AttnCase {
        q: be.tensor(tokens, qd, &fill_uniform(7, tokens * qd, 1.0))?,
        kv,
        batch: b,
        shape: format!("{tokens} tokens"),
    })
}

/// Paged decode: one new token for each of `seqs` sequences, each over its own `context` keys
/// (the query is the last of them).
pub fn paged_decode<B: Backend>(
    be: &B,
    d: AttnDims,
    seqs: usize,
    context: usize,
) -> Result<AttnCase<B>> {
    let per = context.div_ceil(PAGE);
    let own = |i: usize| pages(i * per, context);
    let fill = batch((0..seqs).map(|i| slice(0, context, 0, own(i))).collect());
    let step = (0..seqs).map(|i| (own(i), context - 1)).collect();
    let shape = format!("{seqs} seqs x {context} keys");
    decode_step(be, d, seqs * per, &fill, step, 8, shape)
}

/// A decode step after `fill` wrote the cache (`n_pages` pages): one query per (pages, position)
/// of `step`, from random rows drawn with `seed`.
fn decode_step<B: Backend>(
    be: &B,
    d: AttnDims,
    n_pages: usize,
    fill: &Batch,
    step: Vec<(Vec<u32>, usize)>,
    seed: u64,
    shape: String,
) -> Result<AttnCase<B>> {
    let mut kv = alloc_kv(be, d, n_pages)?;
    fill_kv(be, &mut kv, fill, d)?;
    let (n, qd) = (step.len(), d.heads * d.head_dim);
    Ok(AttnCase {
        q: be.tensor(n, qd, &fill_uniform(seed, n * qd, 1.0))?,
        kv,
        batch: batch(
            step.into_iter()
                .map(|(p, pos)| slice(0, 1, pos, p))
                .collect(),
        ),
        shape,
    })
}

/// Shared prefix: `branches` branches forked from one `context`-token prefix (rounded up to
/// whole pages), each with `tail` tokens of its own: the shape of votes and REBASE children.
pub fn shared_prefix<B: Backend>(
    be: &B,
    d: AttnDims,
    branches: usize,
    context: usize,
    tail: usize,
) -> Result<AttnCase<B>> {
    let prefix = pages(0, context);
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
    fills.extend((0..branches).map(|i| slice(0, tail, ctx, branch(i))));
    let step = (0..branches).map(|i| (branch(i), ctx + tail - 1)).collect();
    let shape = format!("{branches} x ({ctx} shared + {tail})");
    decode_step(
        be,
        d,
        np + branches * own_pages,
        &batch(fills),
        step,
        9,
        shape,
    )
}

/// Quiet-STaR's parallel thoughts: depth block `depth` of `len` positions (one query per
/// position) over keys laid out in depth blocks, the diagonal mask of quiet-star.md.
pub fn thought_block<B: Backend>(
    be: &B,
    d: AttnDims,
    len: usize,
    depth: usize,
) -> Result<AttnCase<B>> {
    let keys = (depth + 1) * len;
    let p = pages(0, keys);
    let mut kv = alloc_kv(be, d, p.len())?;
    fill_kv(be, &mut kv, &batch(vec![slice(0, keys, 0, p.clone())]), d)?;
    let mut s = slice(0, len, depth * len, p);
    s.thought = Some(ThoughtBlock { len, depth });
    let qd = d.heads * d.head_dim;
    Ok(AttnCase {
        q: be.tensor(len, qd, &fill_uniform(10, len * qd, 1.0))?,
        kv,
        batch: batch(vec![s]),
        shape: format!("{len} positions, depth {depth}"),
    })
}
