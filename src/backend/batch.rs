//! The ragged batch a forward pass runs on: the new tokens of several sequences, where their
//! K/V go, and which keys each query may see. Both backends derive RoPE positions, KV slots,
//! the attention predicate and the useful-FLOP count from these methods, so they agree by
//! construction.
//!
//! A sequence is either ordinary (its new tokens extend a causal history) or a depth block of
//! Quiet-STaR's parallel thoughts ([`ThoughtBlock`]).
use anyhow::{ensure, Result};

/// Quiet-STaR's parallel thoughts (quiet-star.md, "The thought-aware diagonal mask"): the
/// sequence's keys lie in depth blocks of `len` positions, key (position j, depth d′) at
/// logical position d′·len + j; block 0 is the real text. The new tokens are the `len` tokens
/// of block `depth` (one per position), so the slice's `pos_start` is depth·len and its
/// `n_tokens` is len. Token i has RoPE position i + depth and sees (j, 0) for j ≤ i (within the
/// sliding window counted from i) and (i, d′) for 1 ≤ d′ ≤ depth. Depth 0 is plain causal
/// attention over block 0. Every token of such a slice is an output row of the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThoughtBlock {
    pub len: usize,
    pub depth: usize,
}

/// Where the new tokens of one sequence sit in a ragged batch, and where its KV lives.
#[derive(Clone, Debug)]
pub struct SeqSlice {
    /// Index of the sequence's first new token in the batch's token rows.
    pub token_start: usize,
    pub n_tokens: usize,
    /// Logical position of the first new token (= tokens already in the cache); also its RoPE
    /// position unless the slice is a thought block.
    pub pos_start: usize,
    /// The sequence's page table, covering pos_start + n_tokens tokens.
    pub pages: Vec<u32>,
    /// Some for a depth block of parallel thoughts (see [`ThoughtBlock`]).
    pub thought: Option<ThoughtBlock>,
    /// Whether the forward pass projects the slice's output rows through the LM head. Off
    /// where the caller reads only hidden states (a prompt's prefill, Quiet-STaR's base pass
    /// and end marker): the logits would be computed, counted and thrown away.
    pub logits: bool,
    /// The ledger phase the slice's share of the pass is charged to, when not the pass's own
    /// (Quiet-STaR's start marker rides in the pass of the real token before it).
    pub phase: Option<crate::flops::Phase>,
    /// The position a sliding window is measured from, when it is not each token's own: the
    /// tokens of an incremental Quiet-STaR thought see the real keys that the position they
    /// think about sees (quiet-star.md's mask: i − j < window for the position i), and their
    /// own thought's keys, which follow it.
    pub window_at: Option<usize>,
}

/// What new token i of a slice may see: the block-0 keys [first, pos] and then, for a thought
/// block, the keys (pos, d′) for 1 ≤ d′ ≤ depth at logical positions d′·len + pos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visible {
    pub first: usize,
    pub pos: usize,
    pub depth: usize,
    pub len: usize,
}

impl Visible {
    /// How many keys the query sees.
    pub fn count(&self) -> usize {
        self.pos + 1 - self.first + self.depth
    }

    /// The logical position of the k-th key it sees (k < count), in the order both backends
    /// reduce them: the prefix first, then the thought keys by depth.
    pub fn key(&self, k: usize) -> usize {
        let prefix = self.pos + 1 - self.first;
        if k < prefix {
            self.first + k
        } else {
            (k - prefix + 1) * self.len + self.pos
        }
    }
}

impl SeqSlice {
    /// An ordinary slice: `n_tokens` new tokens after `pos_start` cached ones.
    pub fn new(token_start: usize, n_tokens: usize, pos_start: usize, pages: Vec<u32>) -> Self {
        SeqSlice {
            token_start,
            n_tokens,
            pos_start,
            pages,
            thought: None,
            logits: true,
            phase: None,
            window_at: None,
        }
    }

    /// RoPE position of new token i.
    pub fn rope_position(&self, i: usize) -> usize {
        match self.thought {
            Some(t) => i + t.depth,
            None => self.pos_start + i,
        }
    }

    /// How many of the slice's rows the forward pass returns: every row of a thought block,
    /// else the last one.
    pub fn output_rows(&self) -> usize {
        if self.thought.is_some() {
            self.n_tokens
        } else {
            1
        }
    }

    /// How many of the output rows get logits: all of them or none.
    pub fn logit_rows(&self) -> usize {
        if self.logits {
            self.output_rows()
        } else {
            0
        }
    }

    /// The pages cover the slice, and a thought block has the shape [`ThoughtBlock`] says.
    pub fn check(&self, index: usize, page_size: usize) -> Result<()> {
        ensure!(
            self.pages.len() * page_size >= self.pos_start + self.n_tokens,
            "sequence {index} of the batch has {} pages for {} tokens",
            self.pages.len(),
            self.pos_start + self.n_tokens
        );
        if let Some(t) = self.thought {
            ensure!(
                t.len > 0 && self.n_tokens == t.len && self.pos_start == t.depth * t.len,
                "sequence {index} of the batch is not depth block {} of a thought layout of \
                 {} positions ({} tokens from {})",
                t.depth,
                t.len,
                self.n_tokens,
                self.pos_start
            );
        }
        Ok(())
    }
}

/// A ragged batch: the new tokens of several sequences, concatenated.
#[derive(Clone, Debug)]
pub struct Batch {
    pub seqs: Vec<SeqSlice>,
    pub page_size: usize,
    /// Mistral's sliding window; None = full causal attention.
    pub sliding_window: Option<usize>,
}

impl Batch {
    pub fn n_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.n_tokens).sum()
    }

    /// Every slice is consistent with its pages and its layout.
    pub fn check(&self) -> Result<()> {
        for (si, s) in self.seqs.iter().enumerate() {
            s.check(si, self.page_size)?;
        }
        Ok(())
    }

    /// RoPE position of every token row.
    pub fn positions(&self) -> Vec<u32> {
        let mut p = Vec::with_capacity(self.n_tokens());
        for s in &self.seqs {
            p.extend((0..s.n_tokens).map(|i| s.rope_position(i) as u32));
        }
        p
    }

    /// The KV slot (page · page_size + offset) every token row is written to.
    pub fn slots(&self) -> Result<Vec<u32>> {
        self.check()?;
        let mut v = Vec::with_capacity(self.n_tokens());
        for s in &self.seqs {
            for i in 0..s.n_tokens {
                let pos = s.pos_start + i;
                v.push(
                    s.pages[pos / self.page_size] * self.page_size as u32
                        + (pos % self.page_size) as u32,
                );
            }
        }
        Ok(v)
    }

    /// The first key position a query at `pos` may see.
    pub fn first_visible(&self, pos: usize) -> usize {
        match self.sliding_window {
            Some(w) if pos + 1 > w => pos + 1 - w,
            _ => 0,
        }
    }

    /// The keys new token i of slice `s` may see.
    pub fn visible(&self, s: &SeqSlice, i: usize) -> Visible {
        let (pos, depth, len) = match s.thought {
            Some(t) => (i, t.depth, t.len),
            None => (s.pos_start + i, 0, 0),
        };
        Visible {
            first: self.first_visible(s.window_at.map_or(pos, |a| a.min(pos))),
            pos,
            depth,
            len,
        }
    }

    /// Allowed (query, key) pairs of attention over this batch, summed: the useful-FLOP base
    /// of attention, identical for every backend.
    pub fn attention_pairs(&self) -> u64 {
        let mut n = 0u64;
        for s in &self.seqs {
            for i in 0..s.n_tokens {
                n += self.visible(s, i).count() as u64;
            }
        }
        n
    }

    /// How many rows the forward pass returns (see [`SeqSlice::output_rows`]).
    pub fn n_output_rows(&self) -> usize {
        self.seqs.iter().map(|s| s.output_rows()).sum()
    }

    /// The token rows the forward pass returns, in order (see [`SeqSlice::output_rows`]).
    pub fn output_rows(&self) -> Vec<usize> {
        let mut rows = Vec::with_capacity(self.seqs.len());
        for s in &self.seqs {
            let end = s.token_start + s.n_tokens;
            rows.extend(end - s.output_rows()..end);
        }
        rows
    }

    /// How many rows of logits the forward pass returns (see [`SeqSlice::logit_rows`]).
    pub fn n_logit_rows(&self) -> usize {
        self.seqs.iter().map(|s| s.logit_rows()).sum()
    }

    /// Which output rows (indices into [`Batch::output_rows`]) get logits, in order.
    pub fn logit_rows(&self) -> Vec<usize> {
        let mut rows = Vec::with_capacity(self.seqs.len());
        let mut first = 0;
        for s in &self.seqs {
            rows.extend(first..first + s.logit_rows());
            first += s.output_rows();
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thought(len: usize, depth: usize, pages: usize) -> SeqSlice {
        let mut s = SeqSlice::new(0, len, depth * len, (0..pages as u32).collect());
        s.thought = Some(ThoughtBlock { len, depth });
        s
    }

    fn batch(seqs: Vec<SeqSlice>, window: Option<usize>) -> Batch {
        Batch {
            seqs,
            page_size: 4,
            sliding_window: window,
        }
    }

    #[test]
    fn a_thought_query_sees_its_prefix_then_its_own_thought_keys() {
        let b = batch(vec![thought(5, 3, 5)], None);
        let v = b.visible(&b.seqs[0], 2);
        let keys: Vec<usize> = (0..v.count()).map(|k| v.key(k)).collect();
        // (0..=2, depth 0), then (2, 1), (2, 2), (2, 3) at d'·5 + 2.
        assert_eq!(keys, [0, 1, 2, 7, 12, 17]);
        assert_eq!(b.positions(), [3, 4, 5, 6, 7]);
        assert_eq!(b.slots().unwrap(), [15, 16, 17, 18, 19]);
        assert_eq!(b.attention_pairs(), (1..=5).sum::<u64>() + 5 * 3);
        // The window counts from the position in block 0, not from the RoPE position.
        let w = batch(vec![thought(5, 3, 5)], Some(2));
        let v = w.visible(&w.seqs[0], 4);
        let keys: Vec<usize> = (0..v.count()).map(|k| v.key(k)).collect();
        assert_eq!(keys, [3, 4, 9, 14, 19]);
    }

    #[test]
    fn every_row_of_a_thought_block_is_an_output_row() {
        let mut t = thought(3, 1, 2);
        t.token_start = 2;
        let b = batch(vec![SeqSlice::new(0, 2, 7, vec![0, 1, 2]), t], None);
        assert_eq!(b.output_rows(), [1, 2, 3, 4]);
        assert_eq!(b.n_output_rows(), 4);
        assert_eq!(b.positions(), [7, 8, 1, 2, 3]);
        assert_eq!(b.logit_rows(), [0, 1, 2, 3]);
        let mut hidden_only = b.clone();
        hidden_only.seqs[0].logits = false;
        assert_eq!(hidden_only.logit_rows(), [1, 2, 3]);
        assert_eq!(hidden_only.n_logit_rows(), 3);
        hidden_only.seqs[1].logits = false;
        assert_eq!(hidden_only.n_logit_rows(), 0);
        assert!(hidden_only.logit_rows().is_empty());
        assert_eq!(hidden_only.n_output_rows(), 4);
    }

    #[test]
    fn a_malformed_thought_block_is_an_error() {
        let mut s = thought(4, 2, 3);
        s.pos_start = 7;
        let e = batch(vec![s], None).slots().unwrap_err().to_string();
        assert!(e.contains("not depth block 2"), "{e}");
        let short = batch(vec![thought(4, 2, 2)], None);
        let e = short.check().unwrap_err().to_string();
        assert!(e.contains("has 2 pages for 12 tokens"), "{e}");
    }
}
