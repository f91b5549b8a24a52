//! Quiet-STaR inference (quiet-star.md). Incremental mode: before each output token every
//! live branch forks a thought branch that shares its pages, feeds the start marker, samples
//! the thought tokens one by one, feeds the end marker, and the talk head mixes the hidden
//! states with and without the thought. The thought's pages are dropped afterwards. Parallel
//! mode does the same at every position at once, in depth blocks of a scratch sequence whose
//! attention is the thought-diagonal mask (`ThoughtBlock`).
use crate::backend::{Backend, TalkHead, WeightData};
use crate::batcher::Input;
use crate::flops::Phase;
use crate::generate::{Runner, Want};
use crate::kv::SeqId;
use crate::model::config::check_n_ahead;
use crate::model::llama::{Model, Output, ParamSource, Synthetic};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Weights;
use crate::rng::{child_stream, uniform};
use crate::sample::Sampling;
use crate::scheduler::{forward_hidden, Branch, Stepper};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Stream tag of thought draws: thoughts never consume the output token's random stream, so
/// with a zero talk head the output equals the baseline's draw for draw.
const THOUGHT_STREAM: u64 = 0x7107_6487;

pub struct QuietStar<B: Backend> {
    /// Input embeddings of the start- and end-of-thought markers (row 0 × 100 of the tensors).
    pub start: Vec<f32>,
    pub end: Vec<f32>,
    pub head: TalkHead<B>,
    /// Tokens sampled inside each thought (n_ahead − 3; 5 for "8-ahead").
    pub sampled: usize,
    /// Ids at or above this are the added thought tokens: never sampled.
    pub base_vocab: usize,
    /// Where the markers came from, for reports.
    pub origin: String,
}

impl<B: Backend> QuietStar<B> {
    /// Positions a generation's thoughts need past its own tokens: the thought before its
    /// last token starts after the tokens before that one, and its start marker, sampled
    /// tokens and end marker end n_ahead − 2 positions past the generation.
    pub fn reach(&self) -> usize {
        self.sampled + 1
    }

    /// Loads start/end embeddings and the talk head from `dir` when its weights have them;
    /// otherwise (any plain model) initialises them so the output equals the base model's:
    /// markers = embed("---"), talk head's last layer zero. `reinit` re-applies the "---"
    /// markers over a checkpoint's, as the reference eval (and so the study) did.
    pub fn new(
        be: &B,
        model: &Model<B>,
        tok: &Tokenizer,
        dir: Option<&Path>,
        reinit: bool,
        n_ahead: usize,
    ) -> Result<Self> {
        let d = model.cfg.hidden_size;
        let dashes = *tok
            .encode("---")?
            .first()
            .context("the Quiet-STaR markers' initialisation needs \"---\", which this model's tokenizer encodes as no tokens")?;
        let dash = be.to_host(&be.embed(&model.embed, &[dashes])?)?;
        let weights = match dir {
            Some(p) if p.join("config.json").exists() => Some(Weights::open_dir(p)?),
            _ => None,
        };
        // Any one of Quiet-STaR's tensors makes a checkpoint: a missing other one is then an
        // error naming it, never a silent fall-back to the untrained head.
        let trained = weights.as_ref().filter(|w| {
            ["start_embedding", "end_embedding", "talk_head.0.0.weight"]
                .iter()
                .any(|n| w.has(n))
        });
        check_n_ahead("--n-ahead", n_ahead)?;
        let sampled = n_ahead - 3;
        let base_vocab = tok.base_vocab(model.cfg.vocab_size);
        match trained {
            Some(w) => {
                let row0 = |name: &str| -> Result<Vec<f32>> {
                    let t = w.get(name, &[2, d])?;
                    Ok(t.to_f32()[..d].iter().map(|x| x * 100.0).collect())
                };
                // Read (and so checked) even when "---" replaces them: a checkpoint missing
                // its markers is incomplete whichever markers this run uses.
                let trained_markers = (row0("start_embedding")?, row0("end_embedding")?);
                let (start, end) = if reinit {
                    (dash.clone(), dash)
                } else {
                    trained_markers
                };
                let p = |name: &str, shape: &[usize]| -> Result<B::Weight> {
                    be.weight(shape, w.param(name, shape)?)
                };
                let head = TalkHead {
                    w1: p("talk_head.0.0.weight", &[d, 2 * d])?,
                    b1: p("talk_head.0.0.bias", &[d])?,
                    w2: p("talk_head.0.2.weight", &[d, d])?,
                    b2: p("talk_head.0.2.bias", &[d])?,
                    w3: p("talk_head.0.4.weight", &[1, d])?,
                };
                let origin = if reinit {
                    "checkpoint talk head, \"---\" markers"
                } else {
                    "checkpoint"
                };
                Ok(QuietStar {
                    start,
                    end,
                    head,
                    sampled,
                    base_vocab,
                    origin: origin.into(),
                })
            }
            None => {
                // A tokenizer with the thought markers belongs to a Quiet-STaR checkpoint: its
                // weights without the tensors (a partial download, an import that dropped
                // them) would make Quiet-STaR the baseline under another name.
                if let (Some(p), Some(_)) = (dir, tok.thought_markers()) {
                    bail!(
                        "{}: its tokenizer has <|startthought|> and <|endthought|>, as a \
                         Quiet-STaR checkpoint's does, but its weights hold no \
                         start_embedding, end_embedding or talk_head.* (an incomplete \
                         download, or a conversion that dropped them)",
                        p.display()
                    );
                }
                let syn = Synthetic { seed: 0x9e11 };
                let zeros = |n: usize| WeightData::Host(std::borrow::Cow::Owned(vec![0.0; n]));
                let head = TalkHead {
                    w1: be.weight(&[d, 2 * d], syn.param("talk_head.0.0.weight", &[d, 2 * d])?)?,
                    b1: be.weight(&[d], zeros(d))?,
                    w2: be.weight(&[d, d], syn.param("talk_head.0.2.weight", &[d, d])?)?,
                    b2: be.weight(&[d], zeros(d))?,
                    w3: be.weight(&[1, d], zeros(d))?,
                };
                Ok(QuietStar {
                    start: dash.clone(),
                    end: dash,
                    head,
                    sampled,
                    base_vocab,
                    origin: "initialised (\"---\" markers, zero talk head)".into(),
                })
            }
        }
    }
}

/// Which computation produces the thoughts (quiet-star.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One thought per output token, forked from the branch (the default: same output
    /// distribution as `Parallel` at a fraction of the cost).
    Incremental,
    /// The reference computation: a thought at every position of the sequence at once, the
    /// base pass recomputed for every position, in n_ahead passes over all L positions; the
    /// last position's mixed logits give the output token. Each pass is one depth block of a
    /// scratch sequence whose attention is the thought-diagonal mask (`ThoughtBlock`):
    /// position i sees the real prefix ≤ i and its own earlier thought tokens, nothing else.
    Parallel,
}

/// The Stepper that puts a thought before every output token.
pub struct ThoughtStep<'q, B: Backend> {
    pub qs: &'q QuietStar<B>,
    pub seed: u64,
    /// Thought tokens fed so far (start + sampled + end per thought).
    pub thought_tokens: u64,
    pub vocab_limit: usize,
    pub mode: Mode,
    /// Use these thought tokens (one list of `sampled` ids per row) instead of sampling:
    /// lets a test give both modes the same thoughts.
    pub forced: Option<Vec<u32>>,
}

impl<'q, B: Backend> ThoughtStep<'q, B> {
    pub fn new(qs: &'q QuietStar<B>, seed: u64, mode: Mode) -> Self {
        ThoughtStep {
            qs,
            seed,
            thought_tokens: 0,
            vocab_limit: qs.base_vocab,
            mode,
            forced: None,
        }
    }
}

/// One thought to run: where its tokens go, and where its random draws come from.
struct Row {
    stream: u64,
    counter: u64,
}

/// Where the thoughts' tokens go: one forked sequence per row (incremental), or one scratch
/// sequence per branch laid out in depth blocks of its L positions (parallel).
enum Layout {
    Forks(Vec<SeqId>),
    Blocks(Vec<(SeqId, usize)>),
}

impl Layout {
    /// Feeds pass `depth` of every thought: one id or embedding row per thought row.
    fn feed<B: Backend>(
        &self,
        r: &mut Runner<'_, B>,
        depth: usize,
        input: Input,
        want: Want,
    ) -> Result<Output<B>> {
        match (self, input) {
            (Layout::Blocks(b), input) => r.extend_thought(b, depth, input, want),
            (Layout::Forks(seqs), Input::Rows(rows)) => r.extend_embedded(seqs, &rows, 1, want),
            (Layout::Forks(seqs), Input::Ids(ids)) => {
                let items: Vec<(SeqId, &[u32])> = seqs
                    .iter()
                    .zip(&ids)
                    .map(|(k, t)| (*k, std::slice::from_ref(t)))
                    .collect();
                r.extend_for(&items, want)
            }
        }
    }

    fn seqs(&self) -> Vec<SeqId> {
        match self {
            Layout::Forks(s) => s.clone(),
            Layout::Blocks(b) => b.iter().map(|(s, _)| *s).collect(),
        }
    }
}

impl<B: Backend> Stepper<B> for ThoughtStep<'_, B> {
    fn logits(
        &mut self,
        r: &mut Runner<'_, B>,
        live: &mut [&mut Branch],
    ) -> Result<Vec<B::Tensor>> {
        let d = r.model.cfg.hidden_size;
        // 1. The real token(s): hidden state without a thought.
        let mut items = Vec::with_capacity(live.len());
        for b in live.iter() {
            let cached = r.pool.len(b.seq)?;
            items.push((b.seq, b.all[cached..].to_vec()));
        }
        r.be.set_phase(Phase::Decode);
        // Incremental mode: the real tokens and the start marker in one pass where the pool
        // has room (else, or past max_batch, two passes as before; same results either way).
        let merged = match self.mode {
            Mode::Incremental if live.len() <= r.max_batch.max(1) => {
                self.base_with_start(r, &items)?
            }
            _ => None,
        };
        let (mut h_base, start_logits) = match merged {
            Some((h, l)) => (h, Some(l)),
            None => (forward_hidden(r, &items)?, None),
        };
        // 2. The thought rows: per branch one (incremental: a fork sharing the branch's
        //    pages) or one per position (parallel: the positions of a scratch sequence).
        let mut rows: Vec<Row> = Vec::new();
        let mut last_rows = Vec::with_capacity(live.len());
        let mut layout = match self.mode {
            Mode::Incremental => Layout::Forks(Vec::new()),
            Mode::Parallel => Layout::Blocks(Vec::new()),
        };
        let res = (|| -> Result<Vec<f32>> {
            for b in live.iter() {
                let own = child_stream(b.stream, THOUGHT_STREAM);
                let l = b.all.len();
                let positions = match &mut layout {
                    Layout::Forks(f) => {
                        let (k, copies) = r.pool.fork(b.seq, 1)?;
                        f.push(k[0]);
                        // The thought is about position l − 1: its window is that one's.
                        r.window_at.insert(k[0], l - 1);
                        r.copy_pages(&copies)?;
                        if start_logits.is_some() {
                            // The marker stays in the thought only.
                            let len = r.pool.len(b.seq)?;
                            r.pool.truncate(b.seq, len - 1)?;
                        }
                        l - 1..l
                    }
                    Layout::Blocks(bl) => {
                        bl.push((r.pool.create(), l));
                        0..l
                    }
                };
                for i in positions {
                    // The output's thought keeps the branch's own draws in both modes.
                    let stream = if i + 1 == l {
                        own
                    } else {
                        child_stream(own, i as u64 + 1)
                    };
                    rows.push(Row {
                        stream,
                        counter: b.draws * 64,
                    });
                }
                last_rows.push(rows.len() - 1);
            }
            if let Layout::Blocks(_) = layout {
                // Depth 0: the base pass of every position, recomputed as the reference does.
                let ids = live.iter().flat_map(|b| b.all.iter().copied()).collect();
                r.be.set_phase(Phase::Decode);
                let out = layout.feed(r, 0, Input::Ids(ids), Want::Hidden)?;
                h_base = r.be.to_host(&out.hidden)?;
            }
            self.think(r, &layout, &rows, d, start_logits)
        })();
        for s in layout.seqs() {
            r.window_at.remove(&s);
            r.pool.free(s)?;
        }
        let h_end = res?;
        // 3. Mix and project (every row: the reference mixes every position).
        r.be.set_phase(Phase::Mix);
        let n = rows.len();
        let hb = r.be.tensor(n, d, &h_base)?;
        let he = r.be.tensor(n, d, &h_end)?;
        let mixed = r.be.talk_mix(&hb, &he, &self.qs.head)?;
        // The output token's projection to the vocabulary is its decode step's, as in the
        // baseline's decode pass (where the LM head is computed on the unmixed state): `mix`
        // holds only what Quiet-STaR adds there, the talk head and the mixing.
        r.be.set_phase(Phase::Decode);
        let logits = r.be.linear(&mixed, r.model.lm_head())?;
        // Incremental mode: one row per branch, already in order. Parallel: each branch's
        // last position.
        if last_rows.iter().copied().eq(0..n) {
            Ok(vec![logits])
        } else {
            Ok(vec![r.be.gather_rows(&logits, &last_rows)?])
        }
    }

    fn vocab_limit(&self) -> Option<usize> {
        Some(self.vocab_limit)
    }

    fn extra_pages(&self, b: &Branch, page_size: usize) -> usize {
        let thought = self.qs.sampled + 2;
        let l = b.all.len();
        match self.mode {
            // Exactly what a step needs beyond the branch's own l tokens, in the larger of
            // its two ways (`logits`): (a) the start marker goes into the branch at slot l,
            // then a fork of those l + 1 tokens copies their partial last page and grows to
            // l + thought; (b) the fork of the l tokens copies theirs and takes the marker.
            // Either way the thought's pages past the branch's are pages(l + thought) −
            // pages(l) (in (a) the marker's slot is the first of them), plus the copy of a
            // partial page of l + 1 or of l tokens. A fixed allowance of ceil(thought /
            // page) + 2 refused pools that could hold the step.
            Mode::Incremental => {
                let pages = |n: usize| n.div_ceil(page_size);
                let partial = |n: usize| usize::from(!n.is_multiple_of(page_size));
                pages(l + thought) - pages(l) + partial(l + 1).max(partial(l))
            }
            // The scratch sequence: the base block and one block per thought token.
            Mode::Parallel => ((thought + 1) * l).div_ceil(page_size),
        }
    }
}

impl<B: Backend> ThoughtStep<'_, B> {
    /// The real tokens of every live branch and its start marker in one pass, the marker
    /// charged to the thought phase: (h_base rows on the host, the markers' logits). None when
    /// the pool is too short for it; nothing has changed then.
    fn base_with_start(
        &self,
        r: &mut Runner<'_, B>,
        items: &[(SeqId, Vec<u32>)],
    ) -> Result<Option<(Vec<f32>, B::Tensor)>> {
        let d = r.model.cfg.hidden_size;
        let groups: Vec<&[u32]> = items.iter().map(|(_, t)| t.as_slice()).collect();
        let rows = with_marker(r, &groups, &self.qs.start)?;
        let sizes: Vec<(SeqId, usize)> = items.iter().map(|(s, t)| (*s, t.len() + 1)).collect();
        let out = match r.extend_with_marker(&sizes, &rows, Phase::Thought) {
            Ok(out) => out,
            Err(e) if crate::scheduler::is_oom(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Output rows alternate: each branch's last real token, then its marker.
        let hidden = r.be.to_host(&out.hidden)?;
        let h_base = hidden.chunks(d).step_by(2).flatten().copied().collect();
        Ok(Some((h_base, out.into_logits()?)))
    }

    /// Feeds the start marker, samples and feeds the thought tokens, feeds the end marker
    /// (depths 1 to sampled + 2 of `layout`; with forks the last sampled token and the end
    /// marker share one pass); returns the end marker's final hidden state for each row.
    fn think(
        &mut self,
        r: &mut Runner<'_, B>,
        layout: &Layout,
        rows: &[Row],
        d: usize,
        start_logits: Option<B::Tensor>,
    ) -> Result<Vec<f32>> {
        let n = rows.len();
        r.be.set_phase(Phase::Thought);
        let starts: Vec<f32> = (0..n).flat_map(|_| self.qs.start.iter().copied()).collect();
        // A pass's logits are read only when a thought token is sampled from them: not those
        // of the last sampled token or of the end marker (the output's logits come from the
        // mixed hidden state).
        let want = |sampled_next: bool| {
            if sampled_next {
                Want::Logits
            } else {
                Want::Hidden
            }
        };
        // The start markers' logits: from the base pass they rode in, or a pass of their own.
        let mut logits = match start_logits {
            Some(l) => Some(l),
            None => {
                layout
                    .feed(r, 1, Input::Rows(starts), want(self.qs.sampled > 0))?
                    .logits
            }
        };
        let any = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        };
        // Incremental mode feeds the last sampled token and the end marker in one pass (two
        // new tokens of each fork): the same tokens at the same positions, so the same
        // result as two passes, for one pass's weight reads and launches fewer. Parallel mode
        // keeps the reference's one depth block per pass.
        let merge_end = matches!(layout, Layout::Forks(_));
        let mut last_sampled = None;
        for s in 0..self.qs.sampled {
            let next: Vec<u32> = match &self.forced {
                Some(f) => (0..n).map(|k| f[k * self.qs.sampled + s]).collect(),
                None => {
                    r.be.set_phase(Phase::Sample);
                    let u: Vec<f64> = rows
                        .iter()
                        .map(|row| uniform(self.seed, row.stream, row.counter + s as u64))
                        .collect();
                    let l = logits
                        .as_ref()
                        .context("no logits to sample a thought token from")?;
                    r.be.sample_rows(l, self.qs.base_vocab, any, &u)?
                }
            };
            r.be.set_phase(Phase::Thought);
            let next_sampled = s + 1 < self.qs.sampled;
            if !next_sampled && merge_end {
                last_sampled = Some(next);
                break;
            }
            logits = layout
                .feed(r, 2 + s, Input::Ids(next), want(next_sampled))?
                .logits;
        }
        let out = match (last_sampled, layout) {
            (Some(ids), Layout::Forks(seqs)) => {
                let groups: Vec<&[u32]> = ids.iter().map(std::slice::from_ref).collect();
                let both = with_marker(r, &groups, &self.qs.end)?;
                r.extend_embedded(seqs, &both, 2, Want::Hidden)?
            }
            _ => {
                let ends: Vec<f32> = (0..n).flat_map(|_| self.qs.end.iter().copied()).collect();
                layout.feed(r, self.qs.sampled + 2, Input::Rows(ends), Want::Hidden)?
            }
        };
        self.thought_tokens += (n * (self.qs.sampled + 2)) as u64;
        let h = r.be.to_host(&out.hidden)?;
        anyhow::ensure!(
            h.len() == n * d,
            "thought hidden states have the wrong size"
        );
        Ok(h)
    }
}

/// Input rows for passes that feed token ids and a marker embedding together: for each group
/// of ids, their embedding rows (looked up once for all groups), then `marker`.
fn with_marker<B: Backend>(
    r: &Runner<'_, B>,
    groups: &[&[u32]],
    marker: &[f32],
) -> Result<Vec<f32>> {
    let ids: Vec<u32> = groups.concat();
    let emb = r.be.to_host(&r.be.embed(&r.model.embed, &ids)?)?;
    let d = marker.len();
    let mut rows = Vec::with_capacity(emb.len() + groups.len() * d);
    let mut at = 0;
    for g in groups {
        rows.extend_from_slice(&emb[at * d..(at + g.len()) * d]);
        rows.extend_from_slice(marker);
        at += g.len();
    }
    Ok(rows)
}
