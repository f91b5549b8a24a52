//! Dividing the counts of one forward pass exactly among parts of its batch: the problems
//! whose passes the batcher ran together, and, within one pass, slices charged to another
//! phase than the pass's own (`SeqSlice::phase`: Quiet-STaR's start marker rides in the pass
//! of the real token before it). Each op is divided in proportion to what it does per part:
//! matrix products by the rows and weights they multiply (tokens through the layers, each
//! output row that asked for logits through the LM head), attention by the (query, key) pairs
//! it scores, row gathers by output and logit rows, the rest by tokens. Useful FLOPs are linear
//! in those quantities, so each part gets exactly what it would count alone; executed FLOPs
//! and bytes are apportioned the same way.
use crate::backend::Batch;
use crate::flops::{Counts, Ledger, Phase};
use crate::model::config::Config;

/// What `op` does for the slices of `b`, in the op's own unit (see the module comment).
fn basis(cfg: &Config, b: &Batch, op: &str) -> u128 {
    let (d, q, kvd, ff) = (
        cfg.hidden_size as u128,
        cfg.q_dim() as u128,
        cfg.kv_dim() as u128,
        cfg.intermediate_size as u128,
    );
    let per_token = cfg.num_hidden_layers as u128 * (d * (q + 2 * kvd) + q * d + 3 * d * ff);
    let per_seq = cfg.vocab_size as u128 * d;
    // s: the rows the pass returns (one per slice, all of a thought block's); l: those of them
    // that go through the LM head.
    let (t, s) = (b.n_tokens() as u128, b.n_output_rows() as u128);
    let l = b.n_logit_rows() as u128;
    match op {
        "matmul" => t * per_token + l * per_seq,
        "attention" | "attn_merge" => b.attention_pairs() as u128,
        "gather" => s + l,
        _ => t,
    }
}

/// The slices of `b` grouped by the phase they are charged to (`default` where a slice names
/// none), in order of first appearance; one part with all of `b` when none names another.
pub fn phase_parts(b: &Batch, default: Phase) -> Vec<(Phase, Batch)> {
    let mut parts: Vec<(Phase, Batch)> = Vec::new();
    for s in &b.seqs {
        let p = s.phase.unwrap_or(default);
        match parts.iter_mut().find(|(q, _)| *q == p) {
            Some((_, part)) => part.seqs.push(s.clone()),
            None => parts.push((
                p,
                Batch {
                    seqs: vec![s.clone()],
                    page_size: b.page_size,
                    sliding_window: b.sliding_window,
                },
            )),
        }
    }
    if parts.is_empty() {
        parts.push((default, b.clone()));
    }
    parts
}

/// `ledger` (one pass) divided among `parts`, each share recorded under its part's phase.
pub fn shares(cfg: &Config, ledger: &Ledger, parts: &[(Phase, Batch)]) -> Vec<Ledger> {
    let mut out: Vec<Ledger> = parts.iter().map(|_| Ledger::new()).collect();
    for (_, op, c) in ledger.entries() {
        let w: Vec<u128> = parts.iter().map(|(_, b)| basis(cfg, b, op)).collect();
        for (i, part) in split_counts(c, &w).into_iter().enumerate() {
            out[i].record_in(parts[i].0, op, part);
        }
    }
    out
}

/// Splits every field of `c` in proportion to `w`: floors, the remainder to the largest
/// weights' owners in turn, so the parts sum to `c` exactly. When a field is a multiple of
/// the weights' sum (useful FLOPs are), every part is exact.
fn split_counts(c: &Counts, w: &[u128]) -> Vec<Counts> {
    let total: u128 = w.iter().sum();
    let mut parts = vec![Counts::default(); w.len()];
    if w.is_empty() {
        return parts;
    }
    let field = |get: fn(&Counts) -> u64, set: fn(&mut Counts, u64), parts: &mut Vec<Counts>| {
        let v = get(c) as u128;
        if total == 0 {
            set(&mut parts[0], v as u64);
            return;
        }
        let mut given = 0u128;
        for (i, &wi) in w.iter().enumerate() {
            let p = v * wi / total;
            set(&mut parts[i], p as u64);
            given += p;
        }
        let mut order: Vec<usize> = (0..w.len()).collect();
        order.sort_by(|&a, &b| w[b].cmp(&w[a]).then(a.cmp(&b)));
        for &i in order.iter().cycle().take((v - given) as usize) {
            let now = get(&parts[i]);
            set(&mut parts[i], now + 1);
        }
    };
    field(|c| c.calls, |c, v| c.calls = v, &mut parts);
    field(|c| c.useful_flops, |c, v| c.useful_flops = v, &mut parts);
    field(
        |c| c.executed_flops,
        |c, v| c.executed_flops = v,
        &mut parts,
    );
    field(|c| c.bytes, |c, v| c.bytes = v, &mut parts);
    field(
        |c| c.transcendentals,
        |c, v| c.transcendentals = v,
        &mut parts,
    );
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sums_exactly_and_is_exact_on_multiples() {
        let c = Counts {
            calls: 3,
            useful_flops: 2 * (5 + 7 + 11) * 9,
            executed_flops: 1001,
            bytes: 17,
            transcendentals: 0,
        };
        let w = [5u128, 7, 11];
        let p = split_counts(&c, &w);
        let mut sum = Counts::default();
        for x in &p {
            sum.add(x);
        }
        assert_eq!(sum, c);
        for (x, wi) in p.iter().zip(w) {
            assert_eq!(x.useful_flops as u128, 2 * 9 * wi);
        }
        // Zero weights: everything to the first part.
        let z = split_counts(&c, &[0, 0]);
        assert_eq!(z[0], c);
        assert_eq!(z[1], Counts::default());
    }
}
