//! The FLOP ledger: every op (CPU) or kernel launch (CUDA) records what it did, computed from
//! the shapes it ran on, summed as integers by op and by phase. Rules: ../shared/spec/flops.md.
//!
//! Conventions used by every backend (so that useful FLOPs agree exactly across backends):
//! - a multiply-add is 2 FLOPs, a lone add or multiply 1;
//! - attention counts 2·head_dim for QK^T and 2·head_dim for PV per allowed (query, key) pair
//!   (useful); of the softmax only the exp per pair is counted (as a transcendental);
//! - transcendental ops (exp, rsqrt, sin, cos, log) are counted apart, never as FLOPs;
//! - bytes are device-memory bytes, each operand read once and each result written once.
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What part of a method a launch served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Prefill,
    Decode,
    Thought,
    Mix,
    Prm,
    Sample,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Prefill,
        Phase::Decode,
        Phase::Thought,
        Phase::Mix,
        Phase::Prm,
        Phase::Sample,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
            Phase::Thought => "thought",
            Phase::Mix => "mix",
            Phase::Prm => "prm",
            Phase::Sample => "sample",
        }
    }
}

/// The counts of one op (or a sum of ops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub calls: u64,
    pub useful_flops: u64,
    pub executed_flops: u64,
    pub bytes: u64,
    pub transcendentals: u64,
}

impl Counts {
    /// Counts of one call where executed FLOPs equal useful FLOPs (no padding).
    pub fn exact(flops: u64, bytes: u64, transcendentals: u64) -> Self {
        Counts {
            calls: 1,
            useful_flops: flops,
            executed_flops: flops,
            bytes,
            transcendentals,
        }
    }

    /// Saturating: a sum past u64 (1.8e19, about 200 problems of a 7B model's parallel
    /// Quiet-STaR in one ledger) stays at the maximum instead of wrapping to a small number.
    pub fn add(&mut self, o: &Counts) {
        self.calls = self.calls.saturating_add(o.calls);
        self.useful_flops = self.useful_flops.saturating_add(o.useful_flops);
        self.executed_flops = self.executed_flops.saturating_add(o.executed_flops);
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.transcendentals = self.transcendentals.saturating_add(o.transcendentals);
    }
}

/// Per (phase, op) totals. A BTreeMap so that tables print in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    phase: Option<Phase>,
    entries: BTreeMap<(Phase, &'static str), Counts>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// The phase that following records are charged to. Ops recorded while no phase is set are
    /// charged to `Decode`: callers are expected to set one, this only avoids losing counts.
    pub fn set_phase(&mut self, p: Phase) {
        self.phase = Some(p);
    }

    pub fn phase(&self) -> Phase {
        self.phase.unwrap_or(Phase::Decode)
    }

    pub fn record(&mut self, op: &'static str, c: Counts) {
        self.record_in(self.phase(), op, c);
    }

    /// Records under phase `p`, whatever the current phase.
    pub fn record_in(&mut self, p: Phase, op: &'static str, c: Counts) {
        self.entries.entry((p, op)).or_default().add(&c);
    }

    pub fn entries(&self) -> impl Iterator<Item = (Phase, &'static str, &Counts)> {
        self.entries.iter().map(|((p, op), c)| (*p, *op, c))
    }

    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for c in self.entries.values() {
            t.add(c);
        }
        t
    }

    pub fn by_phase(&self, p: Phase) -> Counts {
        let mut t = Counts::default();
        for ((q, _), c) in &self.entries {
            if *q == p {
                t.add(c);
            }
        }
        t
    }

    pub fn by_op(&self) -> BTreeMap<&'static str, Counts> {
        let mut m: BTreeMap<&'static str, Counts> = BTreeMap::new();
        for ((_, op), c) in &self.entries {
            m.entry(op).or_default().add(c);
        }
        m
    }

    /// Adds another ledger's counts into this one (phase by phase, op by op).
    pub fn merge(&mut self, o: &Ledger) {
        for (k, c) in &o.entries {
            self.entries.entry(*k).or_default().add(c);
        }
    }

    /// What was recorded after `before` (a snapshot of this same ledger) was taken.
    pub fn since(&self, before: &Ledger) -> Ledger {
        let mut out = Ledger::new();
        for (k, c) in &self.entries {
            let b = before.entries.get(k).copied().unwrap_or_default();
            let d = Counts {
                calls: c.calls - b.calls.min(c.calls),
                useful_flops: c.useful_flops - b.useful_flops.min(c.useful_flops),
                executed_flops: c.executed_flops - b.executed_flops.min(c.executed_flops),
                bytes: c.bytes - b.bytes.min(c.bytes),
                transcendentals: c.transcendentals - b.transcendentals.min(c.transcendentals),
            };
            if d != Counts::default() {
                out.entries.insert(*k, d);
            }
        }
        out
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// A plain-text table: one row per (phase, op), subtotals per phase, and the total.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<8} {:<14} {:>8} {:>18} {:>18} {:>16} {:>14}",
            "phase", "op", "calls", "useful FLOPs", "executed FLOPs", "bytes", "transcend."
        );
        for p in Phase::ALL {
            let rows: Vec<_> = self.entries().filter(|(q, _, _)| *q == p).collect();
            if rows.is_empty() {
                continue;
            }
            for (_, op, c) in &rows {
                let _ = writeln!(s, "{:<8} {:<14} {}", p.name(), op, fmt_counts(c));
            }
            let _ = writeln!(
                s,
                "{:<8} {:<14} {}",
                p.name(),
                "(all)",
                fmt_counts(&self.by_phase(p))
            );
        }
        let _ = writeln!(s, "{:<8} {:<14} {}", "total", "", fmt_counts(&self.total()));
        s
    }
}

fn fmt_counts(c: &Counts) -> String {
    format!(
        "{:>8} {:>18} {:>18} {:>16} {:>14}",
        c.calls, c.useful_flops, c.executed_flops, c.bytes, c.transcendentals
    )
}

/// The study's per-generated-token formula (flops.md): C = 2N + 2·n_layers·d_model with
/// N = 2·d_model·n_layers·(2·d_model/n_heads + d_ff). Kept only as a comparison column.
pub fn study_flops_per_token(d_model: u64, n_layers: u64, n_heads: u64, d_ff: u64) -> u64 {
    let n = 2 * d_model * n_layers * (2 * d_model / n_heads + d_ff);
    2 * n + 2 * n_layers * d_model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_formula_for_mistral_7b_is_exact() {
        assert_eq!(study_flops_per_token(4096, 32, 32, 14336), 7_650_672_640);
    }

    #[test]
    fn records_sum_by_phase_and_op() {
        let mut l = Ledger::new();
        l.set_phase(Phase::Prefill);
        l.record("matmul", Counts::exact(100, 10, 0));
        l.record("matmul", Counts::exact(50, 5, 1));
        l.set_phase(Phase::Decode);
        l.record("rmsnorm", Counts::exact(7, 3, 2));
        assert_eq!(l.by_phase(Phase::Prefill).useful_flops, 150);
        assert_eq!(l.by_phase(Phase::Prefill).calls, 2);
        assert_eq!(l.total().useful_flops, 157);
        assert_eq!(l.total().transcendentals, 3);
        assert_eq!(l.by_op()["matmul"].bytes, 15);
        let t = l.table();
        assert!(t.contains("prefill") && t.contains("rmsnorm"), "{t}");
    }
}
