//! The work lists of a batch for the attention kernels (which sequence goes to which kernel,
//! tiles, splits, shared prefixes), built once per batch and dims and cached: every layer of a
//! forward pass reuses them. See attn.rs for the kernels they feed.
use super::device::DSlice;
use super::Cuda;
use crate::backend::{AttnDims, Batch};
use anyhow::{bail, ensure, Result};
use std::sync::Arc;

pub(crate) const BQ: usize = 64;
pub(crate) const BK: usize = 64;
/// Sequences of at most this many new tokens (and no thought block) go to attn_decode, one
/// item per token.
pub(crate) const DECODE_ROWS: usize = 4;
/// Shared prefixes shorter than this go through attn_decode like any other keys.
const TREE_MIN: usize = 64;
const MAX_SLOTS: usize = 64;
pub(crate) const DEC_THREADS: usize = 128;
/// Keys per split of attn_decode in batch-invariant mode: a constant, so that a query's splits
/// (and so its bits) depend on its own keys alone, never on the pass's longest context or
/// size. 63 splits of it bound the context at 32256 keys.
pub(crate) const INVARIANT_CHUNK: usize = 512;
/// The longest context batch-invariant attention takes (`Backend::max_attention_keys`).
pub(crate) const INVARIANT_MAX_KEYS: usize = (MAX_SLOTS - 1) * INVARIANT_CHUNK;
pub(crate) const DEC_MAXG: usize = 16;

/// Per-batch device work lists (see the module comment).
pub(crate) struct BatchMeta {
    pub(crate) max_slot: usize,
    pub(crate) pos: DSlice<u32>,
    pub(crate) slots: DSlice<u32>,
    pub(crate) pages: DSlice<u32>,
    pub(crate) prefill: DSlice<i32>,
    pub(crate) n_prefill: usize,
    pub(crate) prefill_rows: u64,
    pub(crate) prefill_tiles: u64,
    pub(crate) prefill_pairs: u64,
    /// Thought keys (beyond the tiles) the prefill items' queries read: rows × depth.
    pub(crate) thought_keys: u64,
    pub(crate) decode: DSlice<i32>,
    pub(crate) n_decode: usize,
    pub(crate) decode_keys: u64,
    /// Σ over the decode items of their splits that hold keys (the others only write an
    /// empty partial): what attn_decode's executed FLOPs scale with, besides the keys.
    pub(crate) live_splits: u64,
    pub(crate) splits: usize,
    pub(crate) chunk: usize,
    pub(crate) n_slots: usize,
    pub(crate) direct: bool,
    pub(crate) prefix: DSlice<i32>,
    pub(crate) n_prefix: usize,
    pub(crate) prefix_tiles: u64,
    pub(crate) prefix_pairs: u64,
    pub(crate) members: DSlice<i32>,
    pub(crate) n_members: u64,
}

pub(crate) fn window_arg(w: Option<usize>) -> i32 {
    w.map_or(0, |w| w.min(i32::MAX as usize) as i32)
}

fn encode(batch: &Batch, dims: AttnDims, invariant: bool) -> Vec<u64> {
    let mut k = vec![
        invariant as u64,
        batch.page_size as u64,
        batch.sliding_window.map_or(u64::MAX, |w| w as u64),
        dims.heads as u64,
        dims.kv_heads as u64,
        dims.head_dim as u64,
        batch.seqs.len() as u64,
    ];
    for s in &batch.seqs {
        let (tl, depth) = s
            .thought
            .map_or((u64::MAX, 0), |t| (t.len as u64, t.depth as u64));
        k.extend([
            s.token_start as u64,
            s.n_tokens as u64,
            s.pos_start as u64,
            tl,
            depth,
            s.window_at.map_or(u64::MAX, |a| a as u64),
            s.pages.len() as u64,
        ]);
        k.extend(s.pages.iter().map(|&p| p as u64));
    }
    k
}

pub(crate) fn check_dims(dims: AttnDims) -> Result<()> {
    ensure!(
        dims.kv_heads > 0 && dims.heads.is_multiple_of(dims.kv_heads),
        "attention: {} heads are not a multiple of {} KV heads",
        dims.heads,
        dims.kv_heads
    );
    ensure!(
        matches!(dims.head_dim, 16 | 32 | 64 | 128),
        "the CUDA backend supports head_dim 16, 32, 64 and 128, not {}",
        dims.head_dim
    );
    ensure!(
        dims.heads / dims.kv_heads <= DEC_MAXG,
        "the CUDA backend supports at most {DEC_MAXG} query heads per KV head"
    );
    Ok(())
}

impl Cuda {
    /// The batch's work lists, from the cache when the batch is the one seen last.
    pub(crate) fn batch_meta(&self, batch: &Batch, dims: AttnDims) -> Result<Arc<BatchMeta>> {
        let key = encode(batch, dims, self.invariant());
        let mut cache = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, m)) = cache.as_ref() {
            if *k == key {
                return Ok(m.clone());
            }
        }
        let m = Arc::new(self.build_meta(batch, dims)?);
        *cache = Some((key, m.clone()));
        Ok(m)
    }

    fn build_meta(&self, batch: &Batch, dims: AttnDims) -> Result<BatchMeta> {
        check_dims(dims)?;
        let ps = batch.page_size;
        ensure!(ps > 0, "attention: page size 0");
        let (hq, hk, hd) = (dims.heads, dims.kv_heads, dims.head_dim);
        let group = hq / hk;
        // Batch-invariant mode (Backend::set_batch_invariant): every query row outside a
        // thought block is a decode item with its own whole key range, split in fixed chunks,
        // so its bits do not depend on what shares the pass or on how many of its sequence's
        // tokens came at once (a recompute after preemption prefills what was decoded). The
        // prefill tiles and the shared-prefix kernel are fast paths whose reduction order
        // depends on those; thought blocks keep their tiles, which depend on the block alone.
        let invariant = self.invariant();
        let mut page_off = Vec::with_capacity(batch.seqs.len());
        let mut pages: Vec<u32> = Vec::new();
        for s in &batch.seqs {
            page_off.push(pages.len() as i32);
            pages.extend(&s.pages);
        }
        let pos = batch.positions();
        let slots = batch.slots()?;
        let max_slot = slots.iter().map(|&s| s as usize + 1).max().unwrap_or(0);
        ensure!(
            pos.iter().all(|&p| p < i32::MAX as u32)
                && batch
                    .seqs
                    .iter()
                    .all(|s| s.pos_start + s.n_tokens < i32::MAX as usize),
            "attention: positions beyond 2^31"
        );

        let mut prefill = Vec::new();
        let (mut prefill_rows, mut prefill_tiles, mut prefill_pairs) = (0u64, 0u64, 0u64);
        let mut thought_keys = 0u64;
        let mut decode: Vec<[i32; 4]> = Vec::new();
        let mut dec_pages: Vec<&[u32]> = Vec::new();
        for (si, s) in batch.seqs.iter().enumerate() {
            // A few new tokens (Quiet-STaR's last thought token with its end marker, short
            // extends) are decode items too, one per token with its own key range: attn_decode
            // reads each KV head's keys once for all its query heads, and the rows of one
            // sequence share their history as a prefix (below), where a 64-row prefill tile
            // would compute 64 rows for these few and read the keys once per query head.
            // A slice whose window is measured from elsewhere (a thought's tokens) is always
            // decode items: they carry each query's first key, the prefill kernel derives it
            // from the query's own position.
            if (s.n_tokens <= DECODE_ROWS || s.window_at.is_some() || invariant)
                && s.thought.is_none()
            {
                for i in 0..s.n_tokens {
                    let p = s.pos_start + i;
                    decode.push([
                        (s.token_start + i) as i32,
                        batch.visible(s, i).first as i32,
                        p as i32 + 1,
                        page_off[si],
                    ]);
                    dec_pages.push(&s.pages);
                }
                continue;
            }
            // A thought block's tiles cover block 0 (keys below len, query positions 0..len);
            // the kernel adds each query's own thought keys (item[7] = depth, see flash.cuh).
            let (kv_len, depth) = match s.thought {
                Some(t) => (t.len, t.depth),
                None => (s.pos_start + s.n_tokens, 0),
            };
            for r0 in (0..s.n_tokens).step_by(BQ) {
                let rows = BQ.min(s.n_tokens - r0);
                let v0 = batch.visible(s, r0);
                let q0 = v0.pos;
                let (kt0, kt1) = (v0.first / BK, (q0 + rows - 1) / BK + 1);
                prefill.extend([
                    (s.token_start + r0) as i32,
                    rows as i32,
                    q0 as i32,
                    kt0 as i32,
                    kt1 as i32,
                    page_off[si],
                    kv_len as i32,
                    depth as i32,
                ]);
                prefill_rows += rows as u64;
                prefill_tiles += (kt1 - kt0) as u64;
                thought_keys += (rows * depth) as u64;
                for i in r0..r0 + rows {
                    prefill_pairs += batch.visible(s, i).count() as u64;
                }
            }
        }

        // Shared prefixes among the decode items that see their whole history.
        let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
        if group <= BQ && !invariant {
            let mut by_first: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
            for (i, it) in decode.iter().enumerate() {
                if it[1] == 0 && !dec_pages[i].is_empty() {
                    by_first.entry(dec_pages[i][0]).or_default().push(i);
                }
            }
            for (_, members) in by_first {
                if members.len() < 2 {
                    continue;
                }
                let first = dec_pages[members[0]];
                let mut lcp = first.len();
                for &m in &members[1..] {
                    let same = first.iter().zip(dec_pages[m]).take_while(|(a, b)| a == b);
                    lcp = lcp.min(same.count());
                }
                let min_end = members.iter().map(|&m| decode[m][2] as usize).min();
                let lp = (lcp * ps).min(min_end.unwrap_or(0));
                if lp >= TREE_MIN {
                    for &m in &members {
                        decode[m][1] = lp as i32;
                    }
                    groups.push((members, lp));
                }
            }
        }

        // Splits of the decode keys: enough blocks to fill the GPU twice, chunks of 64 keys,
        // scores within the shared memory the device allows.
        let n_decode = decode.len();
        let kv_max = decode
            .iter()
            .map(|d| (d[2] - d[1]).max(0) as usize)
            .max()
            .unwrap_or(0);
        let lanes = DEC_THREADS / (hd / 2);
        let fixed = 4 * (group * hd + lanes * group * hd + 2 * group);
        let cap = (self.smem_optin.saturating_sub(fixed) / (4 * group)) / 64 * 64;
        ensure!(cap >= 64, "attention: not enough shared memory for decode");
        let (mut splits, mut chunk) = (1usize, 64usize);
        if invariant {
            chunk = INVARIANT_CHUNK;
            ensure!(
                cap >= chunk,
                "attention: not enough shared memory for batch-invariant decode"
            );
            splits = kv_max.div_ceil(chunk).max(1);
            ensure!(
                splits < MAX_SLOTS,
                "attention: a context of {kv_max} keys is past batch-invariant attention's {}",
                (MAX_SLOTS - 1) * chunk
            );
        } else if kv_max > 0 {
            let want = (2 * self.sm_count).div_ceil((n_decode * hk).max(1));
            splits = want.clamp(1, kv_max.div_ceil(64));
            chunk = kv_max.div_ceil(splits).div_ceil(64) * 64;
            // Long splits keep one block per SM busy for long; 2048 keys is a soft limit.
            if chunk > cap.min(2048) {
                chunk = cap.min(2048);
            }
            splits = kv_max.div_ceil(chunk);
            if splits > MAX_SLOTS - 1 {
                chunk = kv_max.div_ceil(MAX_SLOTS - 1).div_ceil(64) * 64;
                if chunk > cap {
                    bail!("attention: a context of {kv_max} keys is too long for attn_decode");
                }
                splits = kv_max.div_ceil(chunk);
            }
        }
        let tree = !groups.is_empty();
        let n_slots = splits + tree as usize;
        let direct = splits == 1 && !tree;

        let mut members = Vec::new();
        let mut prefix = Vec::new();
        let (mut prefix_tiles, mut prefix_pairs) = (0u64, 0u64);
        let per_tile = BQ / group;
        for (ms, lp) in &groups {
            let kt1 = lp.div_ceil(BK);
            for chunk_members in ms.chunks(per_tile) {
                prefix.extend([
                    (members.len() / 2) as i32,
                    chunk_members.len() as i32,
                    0,
                    0,
                    kt1 as i32,
                    decode[chunk_members[0]][3],
                    *lp as i32,
                    (n_slots - 1) as i32,
                ]);
                for &m in chunk_members {
                    members.extend([decode[m][0], m as i32]);
                }
                prefix_tiles += kt1 as u64;
                prefix_pairs += (*lp * chunk_members.len()) as u64;
            }
        }
        let own_keys = |d: &[i32; 4]| (d[2] - d[1]).max(0) as u64;
        let decode_keys = decode.iter().map(own_keys).sum();
        let live_splits = decode
            .iter()
            .map(|d| own_keys(d).div_ceil(chunk as u64))
            .sum();
        let flat: Vec<i32> = decode.iter().flatten().copied().collect();
        Ok(BatchMeta {
            max_slot,
            pos: self.upload(&pos)?,
            slots: self.upload(&slots)?,
            pages: self.upload(&pages)?,
            n_prefill: prefill.len() / 8,
            prefill: self.upload(&prefill)?,
            prefill_rows,
            prefill_tiles,
            prefill_pairs,
            thought_keys,
            decode: self.upload(&flat)?,
            n_decode,
            decode_keys,
            live_splits,
            splits,
            chunk,
            n_slots,
            direct,
            n_prefix: prefix.len() / 8,
            prefix: self.upload(&prefix)?,
            prefix_tiles,
            prefix_pairs,
            n_members: (members.len() / 2) as u64,
            members: self.upload(&members)?,
        })
    }
}
