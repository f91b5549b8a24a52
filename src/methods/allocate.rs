//! REBASE budget allocation (rebase.md, step 3):
//!
//! > sort candidates by score, highest first; e_j = exp(score_j / T); S = Σ e_j;
//! > W = remaining_width; for each candidate in order: n_j = ceil(W·e_j / S);
//! > W −= n_j; S −= e_j. Candidates with n_j = 0 are pruned. The total equals
//! > the remaining width exactly. Example: N=16, T=0.2, scores 0.9, 0.8, 0.5 →
//! > 10, 5, 1.
//!
//! In exact arithmetic the last candidate with e_j > 0 gets ceil(W·e_j/e_j) = W, so the
//! total is the width, and since W/S never grows along the sorted order, a better
//! candidate never gets fewer children than a worse one. The implementation keeps both
//! properties under floating point (see [`allocate`]).

/// Unnormalised softmax weight of a score. `max` is the highest score (NaN already
/// mapped to −∞). Subtracting it before `exp` cannot overflow and changes no ratio
/// e_j / S, so the allocation is the rule's.
fn weight(score: f64, max: f64, temperature: f64) -> f64 {
    // T ≤ 0 or NaN, and an infinite top score: use the T → 0⁺ limit, where the best
    // scores share everything equally and the rest get nothing.
    if temperature.is_nan() || temperature <= 0.0 || !max.is_finite() {
        return if score == max { 1.0 } else { 0.0 };
    }
    let z = (score - max) / temperature;
    // Only −∞/∞ (a −∞ score under T = ∞) gives NaN; such a score gets nothing.
    if z.is_nan() {
        0.0
    } else {
        z.exp()
    }
}

/// Children per candidate, in the INPUT order of `scores`, for `width` remaining
/// solutions and softmax temperature `temperature`.
///
/// - Candidates are ranked by score, highest first; the sort is stable, so equal scores
///   are served in input order. A NaN score ranks as −∞.
/// - e_j = exp((s_j − s_max)/T): the rule's exp(s_j/T) scaled by a common factor.
/// - S is recomputed as the sum of the e's not yet served (summed from the smallest)
///   instead of by running subtraction `S −= e_j`: same value in exact arithmetic, but
///   no cancellation, so the last candidate with e_j > 0 sees S = e_j exactly and gets
///   all of the remaining width. n_j is also clamped to the remaining width (guards a
///   quotient a hair above W), and candidates with e_j = 0 (underflow, −∞) get 0.
///   Hence the total is `width` exactly whenever there is a candidate.
/// - Temperature must be > 0 for the rule itself. T = +∞ is its limit: all e_j = 1, an
///   even split in rank order. T ≤ 0 or NaN is treated as the T → 0⁺ limit: the
///   candidates holding the top score share the width as equal weights would (the first
///   ranked gets the ceiling), all others get 0. The same limit applies when the top
///   score is +∞; if every score is −∞ or NaN they all tie and share evenly.
/// - Empty input gives an empty vector; width 0 gives all zeros.
pub fn allocate(scores: &[f64], width: usize, temperature: f64) -> Vec<usize> {
    let mut out = vec![0; scores.len()];
    if scores.is_empty() || width == 0 {
        return out;
    }
    let rank_score = |i: usize| {
        let s = scores[i];
        if s.is_nan() {
            f64::NEG_INFINITY
        } else {
            s
        }
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // No NaN remains, so partial_cmp always answers; sort_by is stable.
    order.sort_by(|&a, &b| {
        rank_score(b)
            .partial_cmp(&rank_score(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let max = rank_score(order[0]);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| weight(rank_score(i), max, temperature))
        .collect();
    // suffix[j] = Σ_{k ≥ j} weights[k]; weights are ≥ 0, so it never grows with j.
    let mut suffix = vec![0.0; weights.len() + 1];
    for j in (0..weights.len()).rev() {
        suffix[j] = suffix[j + 1] + weights[j];
    }
    let mut remaining = width;
    for (j, &i) in order.iter().enumerate() {
        let sum = suffix[j];
        if remaining == 0 || sum.is_nan() || sum <= 0.0 {
            break;
        }
        let share = remaining as f64 * weights[j] / sum;
        let n = if share > 0.0 {
            // The `as` cast saturates, and the clamp keeps the total at `width`.
            (share.ceil() as usize).min(remaining)
        } else {
            0
        };
        out[i] = n;
        remaining -= n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a tiny deterministic generator, enough for property tests.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1) with 53 random bits.
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Uniform in lo..=hi.
        fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
        }
    }

    #[test]
    fn worked_example() {
        assert_eq!(allocate(&[0.9, 0.8, 0.5], 16, 0.2), vec![10, 5, 1]);
    }

    #[test]
    fn worked_example_in_any_input_order() {
        assert_eq!(allocate(&[0.5, 0.9, 0.8], 16, 0.2), vec![1, 10, 5]);
        assert_eq!(allocate(&[0.8, 0.5, 0.9], 16, 0.2), vec![5, 1, 10]);
        assert_eq!(allocate(&[0.5, 0.8, 0.9], 16, 0.2), vec![1, 5, 10]);
    }

    #[test]
    fn trivial_inputs() {
        assert_eq!(allocate(&[], 16, 0.2), Vec::<usize>::new());
        assert_eq!(allocate(&[0.9, 0.1], 0, 0.2), vec![0, 0]);
        assert_eq!(allocate(&[0.3], 7, 0.2), vec![7]);
    }

    #[test]
    fn low_scores_are_pruned() {
        // e = 1 and exp(-0.8/0.05) ≈ 1e-7: the first takes all 3, the second gets 0.
        assert_eq!(allocate(&[0.9, 0.1], 3, 0.05), vec![3, 0]);
        // Underflow to e = 0 is pruned too.
        assert_eq!(allocate(&[0.0, 1000.0], 4, 0.01), vec![0, 4]);
    }

    #[test]
    fn equal_scores_are_served_in_input_order() {
        assert_eq!(allocate(&[0.5, 0.5, 0.5], 4, 0.2), vec![2, 1, 1]);
        assert_eq!(allocate(&[0.5, 0.5, 0.5], 6, 0.2), vec![2, 2, 2]);
        assert_eq!(allocate(&[0.5, 0.5], 1, 0.2), vec![1, 0]);
    }

    #[test]
    fn zero_or_nan_temperature_is_the_greedy_limit() {
        for t in [0.0, -1.0, f64::NAN] {
            assert_eq!(allocate(&[0.3, 0.9, 0.5], 5, t), vec![0, 5, 0]);
            // Tied best scores share as equal weights would.
            assert_eq!(allocate(&[0.3, 0.9, 0.9], 5, t), vec![0, 3, 2]);
        }
        // The rule approaches that limit as T → 0⁺.
        assert_eq!(allocate(&[0.3, 0.9, 0.5], 5, 1e-6), vec![0, 5, 0]);
    }

    #[test]
    fn infinite_temperature_splits_evenly() {
        assert_eq!(allocate(&[0.1, 0.9, 0.5], 7, f64::INFINITY), vec![2, 3, 2]);
        assert_eq!(
            allocate(&[f64::NEG_INFINITY, 0.9], 4, f64::INFINITY),
            vec![0, 4]
        );
    }

    #[test]
    fn non_finite_scores() {
        assert_eq!(allocate(&[f64::NAN, 0.2], 4, 0.2), vec![0, 4]);
        assert_eq!(allocate(&[0.9, f64::INFINITY], 4, 0.2), vec![0, 4]);
        assert_eq!(allocate(&[f64::NAN, f64::NAN], 3, 0.2), vec![2, 1]);
        assert_eq!(allocate(&[f64::NEG_INFINITY, 0.1], 3, 0.2), vec![0, 3]);
    }

    #[test]
    fn property_total_bounds_and_monotonicity() {
        let mut rng = SplitMix64(0x5EED_2024);
        let temperatures = [0.05, 0.1, 0.2, 1.0];
        for case in 0..20_000 {
            let n = rng.range(1, 40);
            let width = rng.range(1, 64);
            let t = temperatures[rng.range(0, temperatures.len() - 1)];
            // Some cases draw from a few levels so that equal scores occur.
            let coarse = rng.range(0, 3) == 0;
            let scores: Vec<f64> = (0..n)
                .map(|_| {
                    let u = rng.unit();
                    if coarse {
                        (u * 4.0).floor() / 4.0
                    } else {
                        u
                    }
                })
                .collect();
            let out = allocate(&scores, width, t);
            let ctx = format!("case {case}: width {width}, T {t}, scores {scores:?} → {out:?}");
            assert_eq!(out.len(), n, "{ctx}");
            assert_eq!(out.iter().sum::<usize>(), width, "{ctx}");
            assert!(out.iter().all(|&c| c <= width), "{ctx}");
            for a in 0..n {
                for b in 0..n {
                    if scores[a] > scores[b] {
                        assert!(out[a] >= out[b], "{ctx}");
                    }
                }
            }
        }
    }
}
