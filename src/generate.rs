//! Batched generation: a `Runner` owns a model's paged KV pool and runs ragged batches of
//! sequences through the forward pass; `generate` prefills many prompts together, then decodes
//! every live sequence one token per step until EOS, a stop string or the token limit.
use crate::backend::{Backend, Batch, KvShape, SeqSlice, ThoughtBlock};
use crate::batcher::{Batcher, Input};
use crate::flops::Phase;
use crate::kv::PageCopy;
use crate::kv::{KvPool, SeqId};
use crate::model::llama::{Model, Output};
use crate::model::tokenizer::Tokenizer;
use crate::sample::Sampling;
use crate::stop::{first_stop, next_piece, safe_prefix};
use anyhow::{Context, Result};
use std::sync::Mutex;

/// A model, its backend and its KV cache (page tables + storage).
pub struct Runner<'a, B: Backend> {
    pub be: &'a B,
    pub model: &'a Model<B>,
    pub pool: KvPool,
    pub kv: KvStore<'a, B>,
    /// At most this many sequences per forward pass (the scheduler splits larger batches).
    pub max_batch: usize,
    /// Idle sequences whose KV is only a cache (their tokens are kept elsewhere), oldest
    /// first: when the pool runs short the scheduler empties them (scheduler::make_room) and
    /// whoever feeds them next recomputes. A sequence must leave this list before it is fed.
    pub parked: Vec<SeqId>,
    /// Sequences whose new tokens measure the sliding window from a fixed position rather
    /// than their own (`SeqSlice::window_at`): Quiet-STaR's thought forks.
    pub window_at: std::collections::HashMap<SeqId, usize>,
}

/// What the caller of a forward pass reads from the rows it returns: the logits too, or only
/// the hidden states (then the LM head does not run for them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Logits,
    Hidden,
}

/// Where a runner's KV lives: storage of its own, or a range of pages of storage shared by
/// the runners of several problems in flight, whose forward passes a batcher runs together.
pub enum KvStore<'a, B: Backend> {
    Own(B::Kv),
    Shared {
        kv: &'a Mutex<B::Kv>,
        /// The first page of this runner's range: the pool's page p is the storage's base + p.
        base: u32,
        batcher: &'a Batcher<'a, B>,
    },
}

impl<'a, B: Backend> Runner<'a, B> {
    pub fn new(be: &'a B, model: &'a Model<B>, pages: usize, page_size: usize) -> Result<Self> {
        let c = &model.cfg;
        let shape = KvShape {
            layers: c.num_hidden_layers,
            pages,
            page_size,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        let kv = be.alloc_kv(shape).context("cannot allocate the KV cache")?;
        Ok(Runner {
            be,
            model,
            pool: KvPool::try_new(pages, page_size)?,
            kv: KvStore::Own(kv),
            max_batch: usize::MAX,
            parked: Vec::new(),
            window_at: Default::default(),
        })
    }

    /// A runner over pages [base, base + pages) of `kv` (page size `page_size`), whose forward
    /// passes go through `batcher`, to be run together with other runners' on the same storage.
    pub fn shared(
        be: &'a B,
        model: &'a Model<B>,
        kv: &'a Mutex<B::Kv>,
        base: usize,
        pages: usize,
        page_size: usize,
        batcher: &'a Batcher<'a, B>,
    ) -> Result<Self> {
        Ok(Runner {
            be,
            model,
            pool: KvPool::try_new(pages, page_size)?,
            kv: KvStore::Shared {
                kv,
                base: u32::try_from(base).context("KV page range out of bounds")?,
                batcher,
            },
            max_batch: usize::MAX,
            parked: Vec::new(),
            window_at: Default::default(),
        })
    }

    /// The first storage page of this runner's pool.
    fn base(&self) -> u32 {
        match &self.kv {
            KvStore::Own(_) => 0,
            KvStore::Shared { base, .. } => *base,
        }
    }

    /// Performs the page copies the pool asked for (fork, copy-on-write) in the storage.
    pub fn copy_pages(&mut self, copies: &[PageCopy]) -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        match &mut self.kv {
            KvStore::Own(kv) => self.be.copy_pages(kv, copies),
            KvStore::Shared { kv, base, .. } => {
                let moved: Vec<PageCopy> = copies
                    .iter()
                    .map(|c| PageCopy {
                        src: c.src + *base,
                        dst: c.dst + *base,
                        len: c.len,
                    })
                    .collect();
                let mut g = kv.lock().unwrap_or_else(|e| e.into_inner());
                self.be.copy_pages(&mut g, &moved)
            }
        }
    }

    /// Runs the forward pass of a reserved batch: here, or through the batcher together with
    /// the other problems in flight.
    fn run(&mut self, mut batch: Batch, input: Input, want: Want) -> Result<Output<B>> {
        for s in &mut batch.seqs {
            s.logits = want == Want::Logits;
        }
        self.run_batch(batch, input)
    }

    /// `run` for a batch whose slices say themselves whether they want logits. Slices charged
    /// to another phase (`SeqSlice::phase`) get their exact share of the pass there.
    fn run_batch(&mut self, batch: Batch, input: Input) -> Result<Output<B>> {
        match &mut self.kv {
            KvStore::Own(kv) => {
                let (be, model) = (self.be, self.model);
                let forward = |kv: &mut B::Kv| match input {
                    Input::Ids(ids) => model.forward(be, kv, &batch, &ids),
                    Input::Rows(rows) => {
                        let x = be.tensor(batch.n_tokens(), model.cfg.hidden_size, &rows)?;
                        model.forward_embedded(be, kv, &batch, x)
                    }
                };
                if batch.seqs.iter().all(|s| s.phase.is_none()) {
                    return forward(kv);
                }
                // Charge the pass to a scratch ledger, then each part to its phase.
                let phase = crate::account::with_ledger(be.ledger(), |l| l.phase());
                let (out, pass) = crate::account::capture(|| forward(kv));
                let parts = crate::split::phase_parts(&batch, phase);
                for share in crate::split::shares(&model.cfg, &pass, &parts) {
                    crate::account::with_ledger(be.ledger(), |l| l.merge(&share));
                }
                out
            }
            KvStore::Shared { kv, batcher, .. } => batcher.forward(self.model, kv, batch, input),
        }
    }

    /// Quiet-STaR's real tokens and its start marker in one pass: for each `(seq, n)`, n
    /// embedding rows of `rows` (the sequence's new tokens, then the marker), all committed
    /// to `seq`. The tokens' last row returns its hidden state; the marker's row, charged to
    /// `marker_phase`, its hidden state and logits. Output rows alternate token, marker.
    pub fn extend_with_marker(
        &mut self,
        items: &[(SeqId, usize)],
        rows: &[f32],
        marker_phase: Phase,
    ) -> Result<Output<B>> {
        let d = self.model.cfg.hidden_size;
        let n: usize = items.iter().map(|i| i.1).sum();
        anyhow::ensure!(
            rows.len() == n * d && items.iter().all(|i| i.1 >= 2),
            "a real token and a marker row per sequence"
        );
        let reserved = self.reserve(items.iter().copied())?;
        let mut seqs = Vec::with_capacity(2 * items.len());
        for s in reserved.seqs {
            let mut tokens = s.clone();
            tokens.n_tokens -= 1;
            tokens.logits = false;
            let mut marker = s.clone();
            marker.token_start += tokens.n_tokens;
            marker.pos_start += tokens.n_tokens;
            marker.n_tokens = 1;
            marker.phase = Some(marker_phase);
            // The marker belongs to the thought about the token before it.
            marker.window_at = Some(marker.pos_start - 1);
            seqs.extend([tokens, marker]);
        }
        let batch = Batch { seqs, ..reserved };
        let out = self.run_batch(batch, Input::Rows(rows.to_vec()))?;
        self.commit(items.iter().copied())?;
        Ok(out)
    }

    /// Appends `tokens[i]` to sequence `seqs[i]` for every i, in one forward pass, and returns
    /// hidden state and logits of each sequence's last new token. Running out of KV pages is an
    /// error (a `KvError` inside) that leaves every sequence as it was.
    pub fn extend(&mut self, items: &[(SeqId, &[u32])]) -> Result<Output<B>> {
        self.extend_for(items, Want::Logits)
    }

    /// `extend`, returning only what `want` asks for.
    pub fn extend_for(&mut self, items: &[(SeqId, &[u32])], want: Want) -> Result<Output<B>> {
        let ids: Vec<u32> = items.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let batch = self.reserve(items.iter().map(|(s, t)| (*s, t.len())))?;
        let out = self.run(batch, Input::Ids(ids), want)?;
        self.commit(items.iter().map(|(s, t)| (*s, t.len())))?;
        Ok(out)
    }

    /// Like `extend_for`, with `per_seq` input embedding rows (not token ids) per sequence,
    /// in order: Quiet-STaR's start- and end-of-thought markers (and, before an end marker,
    /// the embedding of the thought's last token).
    pub fn extend_embedded(
        &mut self,
        seqs: &[SeqId],
        rows: &[f32],
        per_seq: usize,
        want: Want,
    ) -> Result<Output<B>> {
        let d = self.model.cfg.hidden_size;
        anyhow::ensure!(
            rows.len() == seqs.len() * per_seq * d,
            "{per_seq} embedding row(s) per sequence"
        );
        let batch = self.reserve(seqs.iter().map(|s| (*s, per_seq)))?;
        let out = self.run(batch, Input::Rows(rows.to_vec()), want)?;
        self.commit(seqs.iter().map(|s| (*s, per_seq)))?;
        Ok(out)
    }

    /// One pass of Quiet-STaR's parallel thoughts: for each sequence `(seq, len)`, its depth
    /// block `depth` (one new token per position, see `ThoughtBlock`), whose first `depth`
    /// blocks are already written. `input` holds `len` ids or embedding rows per sequence, in
    /// order. Returns hidden states (and, if wanted, logits) of every new token.
    pub fn extend_thought(
        &mut self,
        seqs: &[(SeqId, usize)],
        depth: usize,
        input: Input,
        want: Want,
    ) -> Result<Output<B>> {
        for &(s, len) in seqs {
            let have = self.pool.len(s)?;
            anyhow::ensure!(
                len > 0 && have == depth * len,
                "thought block {depth} of {len} positions needs {} tokens written, not {have}",
                depth * len
            );
        }
        let mut batch = self.reserve(seqs.iter().copied())?;
        for (slice, &(_, len)) in batch.seqs.iter_mut().zip(seqs) {
            slice.thought = Some(ThoughtBlock { len, depth });
        }
        let out = self.run(batch, input, want)?;
        self.commit(seqs.iter().copied())?;
        Ok(out)
    }

    /// Reserves room for n new tokens in each sequence and lays out the ragged batch. All or
    /// nothing: when the pool runs short, what was reserved here is undone.
    pub fn reserve(&mut self, items: impl Iterator<Item = (SeqId, usize)>) -> Result<Batch> {
        let mut seqs = Vec::new();
        let mut token_start = 0;
        let mut done: Vec<(SeqId, usize)> = Vec::new();
        for (s, n) in items {
            anyhow::ensure!(n > 0, "a sequence in the batch has no new tokens");
            let copied = match self.pool.reserve(s, n) {
                Ok(copies) => {
                    done.push((s, n));
                    self.copy_pages(&copies)
                }
                Err(e) => Err(e.into()),
            };
            if let Err(e) = copied {
                // Release the spare pages reserved so far, so a caller can retry smaller.
                for (s2, _) in &done {
                    let len = self.pool.len(*s2)?;
                    self.pool.truncate(*s2, len)?;
                }
                return Err(e);
            }
            let pos_start = self.pool.len(s)?;
            let base = self.base();
            let pages = self.pool.pages(s)?.iter().map(|p| p + base).collect();
            let mut slice = SeqSlice::new(token_start, n, pos_start, pages);
            slice.window_at = self.window_at.get(&s).copied();
            seqs.push(slice);
            token_start += n;
        }
        Ok(Batch {
            seqs,
            page_size: self.pool.page_size(),
            sliding_window: self.model.cfg.sliding_window,
        })
    }

    pub fn commit(&mut self, items: impl Iterator<Item = (SeqId, usize)>) -> Result<()> {
        for (s, n) in items {
            self.pool.commit(s, n)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Generation stops when the decoded text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Keep going through EOS (used to replay fixed token budgets on synthetic weights).
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    Eos,
    Stop,
    Length,
}

#[derive(Clone, Debug)]
pub struct Completion {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: Finish,
}

struct Live {
    seq: SeqId,
    ids: Vec<u32>,
    /// The decoded text that has been streamed (see `crate::stop::next_piece`).
    sent: String,
    done: Option<Finish>,
    text: String,
}

/// How many KV pages `generate` needs for these prompts.
pub fn pages_needed(prompt_lens: &[usize], max_tokens: usize, page_size: usize) -> usize {
    prompt_lens
        .iter()
        .map(|l| (l + max_tokens).div_ceil(page_size) + 1)
        .sum()
}

/// Generates a completion for every prompt, all in one batch; `on_text(i, delta)` receives
/// the new text of prompt i as it is produced (text is held back while it ends inside a
/// multi-byte character or could still become a stop string). An error from it (a closed
/// pipe) stops the generation at once and is returned.
pub fn generate<B: Backend>(
    r: &mut Runner<'_, B>,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    p: &GenParams,
    mut on_text: impl FnMut(usize, &str) -> Result<()>,
) -> Result<Vec<Completion>> {
    let vocab_limit = tok.base_vocab(r.model.cfg.vocab_size);
    let mut live: Vec<Live> = prompts
        .iter()
        .map(|_| Live {
            seq: r.pool.create(),
            ids: vec![],
            sent: String::new(),
            done: None,
            text: String::new(),
        })
        .collect();
    // The steps, then the sequences freed whatever happened (a caller may keep the runner).
    let mut steps = || -> Result<()> {
        r.be.set_phase(Phase::Prefill);
        let items: Vec<(SeqId, &[u32])> = live
            .iter()
            .zip(prompts)
            .map(|(l, p)| (l.seq, p.as_slice()))
            .collect();
        anyhow::ensure!(
            prompts.iter().all(|p| !p.is_empty()),
            "a prompt has no tokens"
        );
        let mut out = r.extend(&items)?;
        let mut rows: Vec<usize> = (0..live.len()).collect();
        let mut step = 0u64;
        while !rows.is_empty() && p.max_tokens > 0 {
            r.be.set_phase(Phase::Sample);
            let u: Vec<f64> = rows
                .iter()
                .map(|&i| crate::rng::uniform(p.seed, i as u64, step))
                .collect();
            let ids =
                r.be.sample_rows(out.logits()?, vocab_limit, p.sampling, &u)?;
            for (&i, id) in rows.iter().zip(ids) {
                let l = &mut live[i];
                l.ids.push(id);
                if !p.ignore_eos && tok.eos.contains(&id) {
                    l.ids.pop();
                    l.done = Some(Finish::Eos);
                }
                l.text = tok.decode_continuation(&prompts[i], &l.ids, true)?;
                if let Some(cut) = first_stop(&l.text, &p.stop) {
                    l.text.truncate(cut);
                    l.done = Some(Finish::Stop);
                } else if l.done.is_none() && l.ids.len() >= p.max_tokens {
                    l.done = Some(Finish::Length);
                }
                let safe = if l.done.is_some() {
                    l.text.len()
                } else {
                    safe_prefix(&l.text, &p.stop)
                };
                if let Some(new) = next_piece(&l.text, &l.sent, safe) {
                    on_text(i, new)?;
                    l.sent = l.text[..safe].to_string();
                }
            }
            step += 1;
            rows.retain(|&i| live[i].done.is_none());
            if rows.is_empty() {
                break;
            }
            r.be.set_phase(Phase::Decode);
            let next: Vec<(SeqId, [u32; 1])> = rows
                .iter()
                .map(|&i| (live[i].seq, [*live[i].ids.last().unwrap_or(&0)]))
                .collect();
            let items: Vec<(SeqId, &[u32])> = next.iter().map(|(s, t)| (*s, &t[..])).collect();
            out = r.extend(&items)?;
        }
        Ok(())
    };
    let outcome = steps();
    // Every sequence is freed before an error of the steps is returned (it says more).
    let mut freed = Ok(());
    for l in &live {
        if let Err(e) = r.pool.free(l.seq) {
            freed = freed.and(Err(e));
        }
    }
    outcome?;
    freed?;
    let mut res = Vec::with_capacity(live.len());
    for l in live {
        let finish = l.done.unwrap_or(Finish::Length);
        res.push(Completion {
            ids: l.ids,
            text: l.text,
            finish,
        });
    }
    Ok(res)
}
