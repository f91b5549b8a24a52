//! Executed FLOPs of the kernels that run on the CUDA cores, as the hardware's fp32 counters see
//! them: FADD + FMUL + 2·FFMA thread instructions with their predicate on (flops-audit.sh).
//! They are read off the SASS that nvcc 13.0 emits for sm_90a (`cuobjdump -sass`, the
//! nvidia-cuda-cuobjdump wheel; `scripts/sass-fp32.py` lists each kernel's basic blocks with
//! their fp32 instructions) and follow the fast paths that normal inputs take (IEEE division
//! and `expf` without denormal or infinite operands). They are to be confirmed by the first
//! audit on a GPU, and recounted when a kernel or the compiler changes.
//!
//! Two pieces recur: `expf(x)` is 1 FADD + 4 FFMA + 1 FMUL around its MUFU.EX2 (range
//! reduction, the split of x·log2(e), the scale by 2^n): 10; an IEEE division a / b is
//! MUFU.RCP + 5 FFMA (two to refine the reciprocal, three for the quotient and its
//! correction): 10. `logf` is 1 FADD + 11 FFMA + 1 FMUL: 24. The max reductions (FMNMX),
//! comparisons, MUFU and the f64 pipe are not fp32 arithmetic and count nothing here; the
//! tensor-core kernels (cuBLAS, attn_prefill, attn_prefix) are audited on the tensor pipe
//! instead, so their fp32 softmax is not part of their executed count.

/// IEEE division, fast path.
const DIV: u64 = 10;
/// `expf`, besides its MUFU.EX2.
const EXPF: u64 = 10;
/// `logf`, normal positive argument.
const LOGF: u64 = 24;

/// Threads of a row's block in rms_norm / add_rms_norm.
pub(super) const NORM_THREADS: u64 = 256;

/// RMSNorm of `rows` rows of `d` (`fused`: add_rms_norm, the residual add first): the
/// operation's 4d (5d), block_sum's two warp sums — 9 adds in every thread (the fifth add of
/// the second only in the threads that go on) — and in each of the min(d, 256) threads that
/// write: that add, the division ss / d, + eps, sqrtf (2 FMUL + 2 FFMA) and 1 / that (FADD +
/// 2 FFMA).
pub(super) fn rms_norm(rows: u64, d: u64, fused: bool) -> u64 {
    let op = if fused { 5 * d } else { 4 * d };
    rows * (op + 9 * NORM_THREADS + (3 + 2 + 2 * 9) * d.min(NORM_THREADS))
}

/// SiLU·mul of `n` elements: g / (1 + expf(−g)) · u = expf (the negation folded in, its
/// scale by 2^n fused with the + 1 into one FFMA: 1 FADD + 5 FFMA), the division and the
/// multiply by u: 11 + 10 + 1 = 22, against 3 useful.
pub(super) fn silu_mul(n: u64) -> u64 {
    (EXPF + 1 + DIV + 1) * n
}

/// talk_mix_out over `rows` rows of `d`: FMUL + FFMA per element (the useful 3), and the
/// row's 1 − w in each of its threads that has an element (the others exit first).
pub(super) fn talk_mix_out(rows: u64, d: u64, threads: u64) -> u64 {
    rows * (3 * d + d.min(threads))
}

/// The shape of one attn_decode launch, for its executed count.
pub(super) struct DecodeShape {
    pub(super) heads: u64,
    pub(super) group: u64,
    pub(super) head_dim: u64,
    /// Key lanes of the P·V stage: 128 threads / (head_dim / 2).
    pub(super) lanes: u64,
    /// Keys over all items (each item's own keys, the shared prefix excluded).
    pub(super) keys: u64,
    /// Blocks with at least one key: KV heads × Σ over items of their non-empty splits.
    pub(super) live_blocks: u64,
    /// One split and no shared prefix: the block writes the output itself (no log-sum-exp).
    pub(super) direct: bool,
}

/// attn_decode. Per key and query head: the score's 2·hd (FMUL + FFMA + FADD per pair of
/// dims), its scale (FMUL), the softmax's x − max, expf and running sum (1 + 10 + 1), P·V's
/// 2·hd (FFMA per dim): the useful 4·hd plus 13. Per live block and head of its group: the
/// warp sum of the softmax (5 FADD in each of 32 lanes), and for each of the head's hd outputs
/// the sum over the key lanes (one FADD each) and the division by the softmax's sum; in
/// partial mode also lse = max + logf(sum) (25). Empty splits only write their zero partial.
pub(super) fn attn_decode(s: &DecodeShape) -> u64 {
    let per_head = 32 * 5 + s.head_dim * (s.lanes + DIV) + if s.direct { 0 } else { LOGF + 1 };
    s.keys * s.heads * (4 * s.head_dim + 13) + s.live_blocks * s.group * per_head
}

/// attn_merge over `items` items × `heads` heads of `slots` slots, `live` of them (over all
/// items) holding a partial (a non-empty split or the shared prefix). One thread per head:
/// per live slot x − max, expf and the sum's add (1 + 10 + 1), per empty slot the add of its zero
/// weight; then per output dim an FFMA per live slot and the division by the sum.
pub(super) fn attn_merge(items: u64, heads: u64, head_dim: u64, slots: u64, live: u64) -> u64 {
    let empty = items * slots - live;
    heads * ((2 + EXPF) * live + empty + head_dim * (2 * live + DIV * items))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The counts below are the ones read off the SASS by hand (docs/cuda.md), spelled out so
    // that a change to a formula has to change its example too. They are change detectors,
    // not a check of the SASS: only scripts/flops-audit.sh, under Nsight Compute on a GPU,
    // compares these formulas with the instructions the hardware counts.
    #[test]
    fn plain_kernels_match_their_hand_counts() {
        // synthetic:tiny's d = 64: 256 useful per row, 4032 executed.
        assert_eq!(rms_norm(1, 64, false), 256 + 2304 + 23 * 64);
        assert_eq!(rms_norm(2, 4096, true), 2 * (5 * 4096 + 2304 + 23 * 256));
        assert_eq!(silu_mul(10), 220);
        assert_eq!(talk_mix_out(2, 64, 256), 2 * (192 + 64));
        assert_eq!(talk_mix_out(1, 4096, 256), 3 * 4096 + 256);
    }

    #[test]
    fn decode_attention_counts_its_softmax_and_reductions() {
        // One token over 66 keys of synthetic:tiny (4 heads of 16, 2 KV heads: group 2, 16 key
        // lanes) in two splits of 64 keys, both holding keys (64 + 2): 2 KV heads × 2 blocks.
        let s = DecodeShape {
            heads: 4,
            group: 2,
            head_dim: 16,
            lanes: 16,
            keys: 66,
            live_blocks: 2 * 2,
            direct: false,
        };
        let useful = 4 * 16 * 4 * 66;
        let per_head = 160 + 16 * (16 + 10) + 25;
        assert_eq!(attn_decode(&s), useful + 13 * 4 * 66 + 4 * 2 * per_head);
        let direct = DecodeShape {
            direct: true,
            live_blocks: 2,
            ..s
        };
        assert_eq!(
            attn_decode(&direct),
            useful + 13 * 4 * 66 + 2 * 2 * (160 + 16 * 26)
        );
        // Merge of those two splits: both live.
        assert_eq!(attn_merge(1, 4, 16, 2, 2), 4 * (24 + 16 * (4 + 10)));
        // One live slot of three (a split and an unused prefix slot empty).
        assert_eq!(attn_merge(1, 1, 16, 3, 1), 12 + 2 + 16 * (2 + 10));
    }
}
