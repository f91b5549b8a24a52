//! Tree-structured batch decoding. Every live branch is a path in a token tree over the paged
//! KV pool: forks share their parent's pages, and one step decodes every live branch together.
//! A branch's KV holds its tokens up to `cached`; the rest (at least one) are fed at the next
//! step, so a fork needs no logits from its parent and re-prompting (cut, append a phrase)
//! reuses the longest common prefix already cached.
use crate::backend::Backend;
use crate::flops::Phase;
use crate::generate::{Finish, Runner, Want};
use crate::kv::{KvError, SeqId};
use crate::model::llama::Output;
use crate::model::tokenizer::Tokenizer;
use crate::sample::Sampling;
use crate::stop::first_stop;
use anyhow::Result;

/// When a branch stops generating.
#[derive(Clone, Default)]
pub struct StopRule {
    /// Ids that end the branch (EOS, BOS, PAD …); they are not kept.
    pub stop_ids: Vec<u32>,
    /// Strings that end the branch; its text is cut before the first one.
    pub stop_strings: Vec<String>,
    /// A protocol's own cut rule on the generated text (byte offset to cut at).
    pub cut: Option<fn(&str) -> Option<usize>>,
    pub max_tokens: usize,
    /// Ignore ids and strings: run every branch to `max_tokens` (replays fixed budgets).
    pub fixed_length: bool,
}

/// One path being decoded.
#[derive(Clone, Debug)]
pub struct Branch {
    pub seq: SeqId,
    /// Every token of the path (cached ones and those still to feed).
    pub all: Vec<u32>,
    /// Where this round of generation began in `all`.
    pub gen_start: usize,
    /// The branch's own random stream (see rng.rs) and how many draws it has taken.
    pub stream: u64,
    pub draws: u64,
    pub finish: Option<Finish>,
    /// The generated text, cut at the stop rule.
    pub text: String,
}

impl Branch {
    /// A branch over `all` (nothing cached yet) drawing from `stream`.
    pub fn new(seq: SeqId, all: Vec<u32>, stream: u64) -> Self {
        Branch {
            seq,
            gen_start: all.len(),
            all,
            stream,
            draws: 0,
            finish: None,
            text: String::new(),
        }
    }

    pub fn generated(&self) -> &[u32] {
        &self.all[self.gen_start..]
    }

    /// The generated tokens' text as it reads after the branch's prompt (special tokens
    /// skipped; Tokenizer::decode_continuation).
    pub fn decode(&self, tok: &Tokenizer) -> anyhow::Result<String> {
        tok.decode_continuation(&self.all[..self.gen_start], self.generated(), true)
    }
}

/// Runs `items` (sequence, tokens to append) through the model and returns each sequence's
/// last-token logits, on the host. When the KV pool runs short the batch is split in halves
/// and run one after the other — the results are the same, only slower.
pub fn forward_items<B: Backend>(
    r: &mut Runner<'_, B>,
    items: &[(SeqId, Vec<u32>)],
) -> Result<Vec<f32>> {
    let parts = forward_parts(r, items, Want::Logits, &|be: &B, out: Output<B>| {
        be.to_host(out.logits()?)
    })?;
    Ok(parts.concat())
}

/// `forward_items` for a caller that reads no logits: the LM head does not run, and the
/// hidden states come back (to the host) instead.
pub fn forward_hidden<B: Backend>(
    r: &mut Runner<'_, B>,
    items: &[(SeqId, Vec<u32>)],
) -> Result<Vec<f32>> {
    let parts = forward_parts(r, items, Want::Hidden, &|be: &B, out: Output<B>| {
        be.to_host(&out.hidden)
    })?;
    Ok(parts.concat())
}

/// Feeds `items` into their KV caches and reads nothing back (a prompt's prefill): no LM head,
/// no copy to the host.
pub fn forward_cache<B: Backend>(r: &mut Runner<'_, B>, items: &[(SeqId, Vec<u32>)]) -> Result<()> {
    forward_parts(r, items, Want::Hidden, &|_: &B, _: Output<B>| Ok(()))?;
    Ok(())
}

/// `forward_items`' last-token logits left on the device: one tensor per batch the items were
/// run in (in item order), for sampling where they are.
pub fn forward_logits<B: Backend>(
    r: &mut Runner<'_, B>,
    items: &[(SeqId, Vec<u32>)],
) -> Result<Vec<B::Tensor>> {
    forward_parts(r, items, Want::Logits, &|_: &B, out: Output<B>| {
        out.into_logits()
    })
}

type TakeOut<'a, B, T> = &'a dyn Fn(&B, Output<B>) -> Result<T>;

/// Runs `items` in as few batches as `max_batch` and the pool allow, keeping `take` of each
/// batch's output, in item order.
fn forward_parts<B: Backend, T>(
    r: &mut Runner<'_, B>,
    items: &[(SeqId, Vec<u32>)],
    want: Want,
    take: TakeOut<'_, B, T>,
) -> Result<Vec<T>> {
    if items.len() > r.max_batch.max(1) {
        let mut parts = Vec::new();
        for chunk in items.chunks(r.max_batch.max(1)) {
            parts.extend(forward_parts(r, chunk, want, take)?);
        }
        return Ok(parts);
    }
    let refs: Vec<(SeqId, &[u32])> = items.iter().map(|(s, t)| (*s, t.as_slice())).collect();
    match r.extend_for(&refs, want) {
        Ok(out) => Ok(vec![take(r.be, out)?]),
        Err(e) if items.len() > 1 && is_oom(&e) => {
            let (a, b) = items.split_at(items.len() / 2);
            let mut parts = forward_parts(r, a, want, take)?;
            parts.extend(forward_parts(r, b, want, take)?);
            Ok(parts)
        }
        Err(e) => {
            // One sequence alone does not fit: empty idle caches, then try again.
            if let Some(KvError::OutOfPages { needed, .. }) = e.downcast_ref::<KvError>() {
                let before = r.pool.free_pages();
                if make_room(r, *needed)? && r.pool.free_pages() > before {
                    return forward_parts(r, items, want, take);
                }
                if let [(seq, tokens)] = items {
                    let len = r.pool.len(*seq)? + tokens.len();
                    return Err(e.context(too_long(r, len, None)));
                }
            }
            Err(e)
        }
    }
}

/// A problem one of whose sequences the whole KV pool cannot hold (the context of the pool's
/// own out-of-pages error): an evaluation skips the problem, says so, and goes on. It is
/// deterministic, so a resume at the same `--kv-pages` meets it again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PoolTooSmall(pub String);

/// The error for a sequence the whole pool cannot hold; `step` is the pages its next step
/// needs beyond those it holds (thought branches included), when known.
fn too_long<B: Backend>(r: &Runner<'_, B>, tokens: usize, step: Option<usize>) -> PoolTooSmall {
    let step = step.map_or(String::new(), |p| {
        format!(" and {p} more pages for its next step")
    });
    PoolTooSmall(format!(
        "one sequence of {tokens} tokens{step} does not fit in {} KV pages of {} tokens \
         (raise --kv-pages)",
        r.pool.n_pages(),
        r.pool.page_size()
    ))
}

/// Whether `e` is the KV pool running out of pages.
pub fn is_oom(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<KvError>(),
        Some(KvError::OutOfPages { .. })
    )
}

/// Marks `seq` idle: its KV is only a cache from now on (see `Runner::parked`).
pub fn park<B: Backend>(r: &mut Runner<'_, B>, seq: SeqId) {
    let pool = &r.pool;
    r.parked.retain(|&s| s != seq && pool.contains(s));
    r.parked.push(seq);
}

/// Takes `seq` off the parked list: it is about to be fed.
pub fn unpark<B: Backend>(r: &mut Runner<'_, B>, seq: SeqId) {
    r.parked.retain(|&s| s != seq);
}

/// Frees parked caches, oldest first, until `free` pages are free: first the pages each holds
/// alone at its end (what it shares with others stays), then whole sequences (emptied, not
/// forgotten: their owner feeds them again from the start). True when that many are free.
pub fn make_room<B: Backend>(r: &mut Runner<'_, B>, free: usize) -> Result<bool> {
    for whole in [false, true] {
        let mut i = 0;
        while r.pool.free_pages() < free && i < r.parked.len() {
            let s = r.parked[i];
            if !r.pool.contains(s) {
                r.parked.remove(i);
            } else if whole {
                r.pool.truncate(s, 0)?;
                r.parked.remove(i);
            } else {
                release_private_tail(r, s)?;
                i += 1;
            }
        }
    }
    Ok(r.pool.free_pages() >= free)
}

/// `n` children of `seq` sharing its pages. When the pool has no room for their copies of
/// the partial last page, they share only the full pages and feed the rest again.
pub fn fork_seqs<B: Backend>(r: &mut Runner<'_, B>, seq: SeqId, n: usize) -> Result<Vec<SeqId>> {
    match r.pool.fork(seq, n) {
        Ok((kids, copies)) => match r.copy_pages(&copies) {
            Ok(()) => Ok(kids),
            Err(e) => {
                // The caller never learns these ids: give their pages back before failing.
                for &k in &kids {
                    r.pool.free(k)?;
                }
                Err(e)
            }
        },
        Err(KvError::OutOfPages { .. }) => Ok(r.pool.fork_full_pages(seq, n)?),
        Err(e) => Err(e.into()),
    }
}

/// Frees `seq` unless it is already gone (a leaf freed early, then a clean-up pass).
pub fn release<B: Backend>(r: &mut Runner<'_, B>, seq: SeqId) -> Result<()> {
    if r.pool.contains(seq) {
        r.pool.free(seq)?;
    }
    unpark(r, seq);
    Ok(())
}

/// Points `b` at a new token path, keeping the longest common prefix already in its cache.
pub fn set_tokens<B: Backend>(r: &mut Runner<'_, B>, b: &mut Branch, all: Vec<u32>) -> Result<()> {
    anyhow::ensure!(!all.is_empty(), "a branch needs at least one token");
    let cached = r.pool.len(b.seq)?;
    let keep = kept_prefix(&b.all, cached, &all);
    if keep < cached {
        r.pool.truncate(b.seq, keep)?;
    }
    b.all = all;
    Ok(())
}

/// The tokens of a cache holding `cached` tokens of path `old` that a new path `new` keeps:
/// their common prefix, less the last token of `new`, which a pass must feed for its logits.
pub fn kept_prefix(old: &[u32], cached: usize, new: &[u32]) -> usize {
    let lcp = old.iter().zip(new).take_while(|(x, y)| x == y).count();
    lcp.min(cached).min(new.len().saturating_sub(1))
}

/// Feeds every branch's pending tokens except the last, so that a later step (or fork) feeds
/// exactly one token: used after a prompt is set, so its prefill runs batched, once.
pub fn prefill<B: Backend>(r: &mut Runner<'_, B>, branches: &[&Branch]) -> Result<()> {
    let mut items = Vec::new();
    for b in branches {
        let cached = r.pool.len(b.seq)?;
        if b.all.len() > cached + 1 {
            items.push((b.seq, b.all[cached..b.all.len() - 1].to_vec()));
        }
    }
    if !items.is_empty() {
        r.be.set_phase(Phase::Prefill);
        forward_cache(r, &items)?;
    }
    Ok(())
}

/// Forks `parent` into n branches sharing its pages; child i draws from `streams[i]`.
pub fn fork<B: Backend>(
    r: &mut Runner<'_, B>,
    parent: &Branch,
    streams: &[u64],
) -> Result<Vec<Branch>> {
    let kids = fork_seqs(r, parent.seq, streams.len())?;
    Ok(kids
        .into_iter()
        .zip(streams)
        .map(|(seq, &stream)| Branch::new(seq, parent.all.clone(), stream))
        .collect())
}

/// Produces next-token logits for the live branches, one row each, on the backend (sampled
/// there; only the ids come back): the plain model, or Quiet-STaR with a thought before each
/// token. The rows may come in several tensors, in branch order.
pub trait Stepper<B: Backend> {
    fn logits(&mut self, r: &mut Runner<'_, B>, live: &mut [&mut Branch])
        -> Result<Vec<B::Tensor>>;
    /// Ids at or above this are never sampled (added tokens such as thought markers).
    fn vocab_limit(&self) -> Option<usize> {
        None
    }
    /// KV pages a branch needs for a step beyond its own growth (thought forks).
    fn extra_pages(&self, _b: &Branch, _page_size: usize) -> usize {
        0
    }
}

/// The plain model: feed each branch's pending tokens, read its last logits.
pub struct Plain;

impl<B: Backend> Stepper<B> for Plain {
    fn logits(
        &mut self,
        r: &mut Runner<'_, B>,
        live: &mut [&mut Branch],
    ) -> Result<Vec<B::Tensor>> {
        let mut items = Vec::with_capacity(live.len());
        for b in live.iter() {
            let cached = r.pool.len(b.seq)?;
            items.push((b.seq, b.all[cached..].to_vec()));
        }
        r.be.set_phase(Phase::Decode);
        forward_logits(r, &items)
    }
}

/// Pages a branch needs for its next step: its growth, one for a copy-on-write of a shared
/// partial last page, and the stepper's extra.
fn pages_for_step<B: Backend>(
    r: &Runner<'_, B>,
    b: &Branch,
    stepper: &dyn Stepper<B>,
) -> Result<usize> {
    let ps = r.pool.page_size();
    let pages = r.pool.pages(b.seq)?;
    let cached = r.pool.len(b.seq)?;
    // Appending into a partly filled page that another sequence shares copies it first.
    let cow = match pages.last() {
        Some(&p) if cached % ps != 0 && r.pool.refcount(p) > 1 => 1,
        _ => 0,
    };
    Ok(b.all.len().div_ceil(ps).saturating_sub(pages.len()) + cow + stepper.extra_pages(b, ps))
}

/// `decode` with an optional stepper (Quiet-STaR's thoughts); the plain model otherwise.
#[allow(clippy::too_many_arguments)]
pub fn decode_with<B: Backend, S: Stepper<B>>(
    r: &mut Runner<'_, B>,
    tok: &Tokenizer,
    stepper: Option<&mut S>,
    branches: &mut [Branch],
    rule: &StopRule,
    sampling: Sampling,
    seed: u64,
) -> Result<()> {
    match stepper {
        Some(st) => decode(r, tok, st, branches, rule, sampling, seed),
        None => decode(r, tok, &mut Plain, branches, rule, sampling, seed),
    }
}

/// Frees the pages a sequence holds alone at its end, keeping the leading pages it shares (a
/// prompt, a parent's path): only its own tail is recomputed later.
fn release_private_tail<B: Backend>(r: &mut Runner<'_, B>, seq: SeqId) -> Result<()> {
    let shared = r
        .pool
        .pages(seq)?
        .iter()
        .take_while(|&&p| r.pool.refcount(p) > 1)
        .count();
    let keep = (shared * r.pool.page_size()).min(r.pool.len(seq)?);
    r.pool.truncate(seq, keep)?;
    Ok(())
}

/// Decodes all branches together until each meets its stop rule. When the KV pool cannot
/// hold the next step of every branch, finished branches and then parked caches give their
/// pages back; if that is not enough, the branches with the highest indices are preempted
/// (their pages freed) and wait; they resume by recomputing their path once room is back.
/// Every op computes each row independently of the batch, so preemption changes only the
/// cost, never the tokens.
pub fn decode<B: Backend>(
    r: &mut Runner<'_, B>,
    tok: &Tokenizer,
    stepper: &mut dyn Stepper<B>,
    branches: &mut [Branch],
    rule: &StopRule,
    sampling: Sampling,
    seed: u64,
) -> Result<()> {
    let vocab_limit = tok
        .base_vocab(r.model.cfg.vocab_size)
        .min(stepper.vocab_limit().unwrap_or(usize::MAX));
    for b in branches.iter_mut() {
        b.gen_start = b.all.len();
        b.finish = if rule.max_tokens == 0 {
            Some(Finish::Length)
        } else {
            None
        };
        b.text.clear();
    }
    loop {
        let mut admitted: Vec<usize> = (0..branches.len())
            .filter(|&i| branches[i].finish.is_none())
            .collect();
        if admitted.is_empty() {
            return Ok(());
        }
        // Finished branches are evicted first (their tokens stay; whoever uses them again
        // recomputes their KV), then the live branches with the highest indices wait.
        let mut evictable: Vec<usize> = (0..branches.len())
            .filter(|&i| branches[i].finish.is_some())
            .collect();
        loop {
            let mut need = 0;
            for &i in &admitted {
                need += pages_for_step(r, &branches[i], stepper)?;
            }
            if need <= r.pool.free_pages() {
                break;
            }
            let victim = match evictable.pop() {
                Some(i) => i,
                None if make_room(r, need)? => break,
                None if admitted.len() > 1 => admitted.pop().unwrap_or_default(),
                None => {
                    // Last resort: waiting branches give back even the pages they share.
                    let mut emptied = false;
                    for (i, b) in branches.iter().enumerate() {
                        if !admitted.contains(&i) && r.pool.len(b.seq)? > 0 {
                            r.pool.truncate(b.seq, 0)?;
                            emptied = true;
                        }
                    }
                    if emptied {
                        continue;
                    }
                    let b = &branches[admitted[0]];
                    return Err(anyhow::Error::from(KvError::OutOfPages {
                        needed: need,
                        free: r.pool.free_pages(),
                        total: r.pool.n_pages(),
                    })
                    .context(too_long(r, b.all.len(), Some(need))));
                }
            };
            release_private_tail(r, branches[victim].seq)?;
        }
        // Re-prompted or preempted branches first catch up as a prefill.
        prefill(
            r,
            &admitted.iter().map(|&i| &branches[i]).collect::<Vec<_>>(),
        )?;
        let mut live: Vec<&mut Branch> = branches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| admitted.contains(i))
            .map(|(_, b)| b)
            .collect();
        let parts = stepper.logits(r, &mut live)?;
        r.be.set_phase(Phase::Sample);
        // Checked before the rows are matched to branches, so a stepper that got it wrong is
        // an error, not an out-of-range slice.
        let rows: usize = parts.iter().map(|p| r.be.shape(p).0).sum();
        anyhow::ensure!(rows == live.len(), "one logits row per live branch");
        let u: Vec<f64> = live
            .iter()
            .map(|b| crate::rng::uniform(seed, b.stream, b.draws))
            .collect();
        let mut ids = Vec::with_capacity(live.len());
        for part in &parts {
            let at = ids.len();
            let n = r.be.shape(part).0;
            ids.extend(r.be.sample_rows(part, vocab_limit, sampling, &u[at..at + n])?);
        }
        for (b, id) in live.iter_mut().zip(ids) {
            b.draws += 1;
            if !rule.fixed_length && rule.stop_ids.contains(&id) {
                b.finish = Some(Finish::Eos);
                b.text = b.decode(tok)?;
                continue;
            }
            b.all.push(id);
            b.text = b.decode(tok)?;
            if !rule.fixed_length {
                let cut = [
                    first_stop(&b.text, &rule.stop_strings),
                    rule.cut.and_then(|f| f(&b.text)),
                ]
                .into_iter()
                .flatten()
                .min();
                if let Some(c) = cut {
                    b.text.truncate(c);
                    b.finish = Some(Finish::Stop);
                    continue;
                }
            }
            if b.all.len() - b.gen_start >= rule.max_tokens {
                b.finish = Some(Finish::Length);
            }
        }
    }
}
