//! Choosing the next token from logits: greedy, temperature, top-k, top-p. One uniform draw
//! per token (inverse CDF), taken from the branch's own counter-based stream (see rng.rs).
use crate::flops::Counts;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax, ties to the lowest id).
    pub temperature: f32,
    /// Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p.
    pub top_p: f32,
    /// Keep only the tokens whose logit is at least the k-th largest (ties at it all kept, as
    /// HF's top-k filter does), before top-p; 0 keeps every token.
    pub top_k: usize,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
    };
}

/// A logit as top-k compares it: f32's total order, except that -0 and +0 tie, as they do
/// under HF's `<` (the order then gives NaN a place, which `<` does not).
#[inline]
pub fn top_k_key(x: f32) -> f32 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// The k-th largest of `l` by `top_k_key`, when that filters anything.
pub fn top_k_cut(l: &[f32], k: usize) -> Option<f32> {
    if k == 0 || k >= l.len() {
        return None;
    }
    let mut v: Vec<f32> = l.iter().map(|&x| top_k_key(x)).collect();
    let (_, kth, _) = v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    Some(*kth)
}

/// Refuses row `row`'s logits when one below `limit` is NaN or infinite: weights that pass the
/// load's check but overflow the activations (a norm weight of 3e38) would otherwise be
/// sampled as if they meant something (argmax and every comparison skip a NaN).
pub fn check_finite(logits: &[f32], limit: usize, row: usize) -> anyhow::Result<()> {
    let l = &logits[..limit.min(logits.len())];
    match l.iter().position(|x| !x.is_finite()) {
        Some(i) => anyhow::bail!(
            "{NOT_FINITE} {row} (id {i} is {}): the model's activations overflow",
            l[i]
        ),
        None => Ok(()),
    }
}

/// The start of `check_finite`'s error, which the CUDA backend's shares.
pub const NOT_FINITE: &str = "a logit is not finite (NaN or infinite) in row";

/// Samples one id from `logits[..limit]` (ids at or above `limit`, such as added thought
/// tokens, are never chosen). `u` is uniform in [0, 1). Returns the id and what it cost.
pub fn sample(logits: &[f32], limit: usize, s: Sampling, u: f64) -> (u32, Counts) {
    let l = &logits[..limit.min(logits.len())];
    let v = l.len() as u64;
    if s.temperature <= 0.0 || l.len() <= 1 {
        return (argmax(l), Counts::exact(0, v * 4, 0));
    }
    let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / s.temperature as f64;
    // f64 weights: the tail of a 50k-token softmax must not vanish into rounding. Tokens under
    // the top-k cut weigh nothing: never drawn, and the softmax renormalised over the rest.
    let cut = top_k_cut(l, s.top_k);
    let w: Vec<f64> = l
        .iter()
        .map(|&x| match cut {
            Some(c) if top_k_key(x).total_cmp(&c).is_lt() => 0.0,
            _ => ((x - mx) as f64 * inv_t).exp(),
        })
        .collect();
    let total: f64 = w.iter().sum();
    let cost = Counts::exact(3 * v, v * 4, v);
    if s.top_p < 1.0 {
        let target = s.top_p.max(0.0) as f64 * total;
        let (idx, n, kept) = nucleus(&w, target);
        let mut r = u * kept;
        for &i in &idx[..n] {
            r -= w[i as usize];
            if r < 0.0 {
                return (i, cost);
            }
        }
        return (idx[n - 1], cost);
    }
    let mut r = u * total;
    let mut last = 0;
    for (i, &x) in w.iter().enumerate() {
        if x > 0.0 {
            last = i;
        }
        r -= x;
        if r < 0.0 {
            return (i as u32, cost);
        }
    }
    (last as u32, cost)
}

/// The nucleus: ids in order of weight (descending, ties by id), how many of them it takes
/// for their weights, summed in that order, to reach `target`, and that sum. Only the head of
/// the order is sorted: the k heaviest are selected and sorted, k growing fourfold until they
/// hold the target. The order is total, so that head is exactly the head of a full sort, and
/// the result is the full sort's bit for bit (a test).
fn nucleus(w: &[f64], target: f64) -> (Vec<u32>, usize, f64) {
    let order = |a: &u32, b: &u32| w[*b as usize].total_cmp(&w[*a as usize]).then(a.cmp(b));
    let mut idx: Vec<u32> = (0..w.len() as u32).collect();
    let mut k = 256;
    loop {
        let head = if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, order);
            k
        } else {
            idx.len()
        };
        idx[..head].sort_by(order);
        let mut kept = 0.0;
        for (n, &i) in idx[..head].iter().enumerate() {
            kept += w[i as usize];
            if kept >= target {
                return (idx, n + 1, kept);
            }
        }
        if head == idx.len() {
            // Rounding left the sum of every weight just under the target: keep them all.
            return (idx, head, kept);
        }
        k *= 4;
    }
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(sample(&[1.0, 3.0, 3.0, 9.0], 3, Sampling::GREEDY, 0.5).0, 1);
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        };
        let mut counts = [0usize; 3];
        let n = 20_000;
        for i in 0..n {
            let u = crate::rng::uniform(3, 0, i);
            counts[sample(&logits, 3, s, u).0 as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.1, 0.2, 0.7]) {
            assert!((*c as f64 / n as f64 - p).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn nucleus_is_the_full_sorts_head_bit_for_bit() {
        // The plain algorithm: sort everything, then take the head.
        let full = |w: &[f64], target: f64| {
            let mut idx: Vec<u32> = (0..w.len() as u32).collect();
            idx.sort_by(|&a, &b| w[b as usize].total_cmp(&w[a as usize]).then(a.cmp(&b)));
            let (mut kept, mut n) = (0.0, 0);
            for &i in &idx {
                kept += w[i as usize];
                n += 1;
                if kept >= target {
                    break;
                }
            }
            (idx[..n].to_vec(), kept)
        };
        for (seed, len) in [(1u64, 10usize), (2, 300), (3, 5000), (4, 49152)] {
            let logits = crate::rng::fill_uniform(seed, len, 6.0);
            // Many ties too: quantised weights.
            let tied: Vec<f32> = logits.iter().map(|x| (x * 2.0).round()).collect();
            for l in [&logits, &tied] {
                let w: Vec<f64> = l.iter().map(|&x| (x as f64).exp()).collect();
                let total: f64 = w.iter().sum();
                for p in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999999, 1.0] {
                    let (want, want_kept) = full(&w, p * total);
                    let (idx, n, kept) = nucleus(&w, p * total);
                    assert_eq!(&idx[..n], &want[..], "len {len} p {p}");
                    assert_eq!(kept.to_bits(), want_kept.to_bits());
                }
            }
        }
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_their_ties() {
        let logits = [1.0f32, 5.0, 3.0, 5.0, 4.0, 3.0];
        let s = |k| Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: k,
        };
        let seen = |k| {
            let mut ids = std::collections::BTreeSet::new();
            for i in 0..3000 {
                ids.insert(sample(&logits, 6, s(k), crate::rng::uniform(4, 2, i)).0);
            }
            ids.into_iter().collect::<Vec<u32>>()
        };
        assert_eq!(seen(1), [1, 3], "the tie at the cut is kept");
        assert_eq!(seen(3), [1, 3, 4]);
        assert_eq!(seen(4), [1, 2, 3, 4, 5], "both 3.0s tie at the 4th");
        assert_eq!(seen(0), [0, 1, 2, 3, 4, 5]);
        assert_eq!(seen(6), seen(0));
        // Within the kept tokens the draw is the softmax renormalised over them: for the same
        // uniform, top-k over these weights picks what an unfiltered draw over the kept
        // logits alone picks.
        let kept = [5.0f32, 5.0, 4.0];
        for i in 0..200 {
            let u = crate::rng::uniform(4, 3, i);
            let a = sample(&logits, 6, s(3), u).0;
            let b = [1u32, 3, 4][sample(&kept, 3, s(0), u).0 as usize];
            assert_eq!(a, b, "u = {u}");
        }
        // -0 and +0 tie (HF's `<`): both are kept at a cut of zero, whichever comes first.
        let zeros = [-0.0f32, 2.0, 0.0, -1.0];
        let mut kept = std::collections::BTreeSet::new();
        for i in 0..500 {
            kept.insert(sample(&zeros, 4, s(2), crate::rng::uniform(4, 4, i)).0);
        }
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.75,
            top_k: 0,
        };
        for i in 0..2000 {
            let id = sample(&logits, 3, s, crate::rng::uniform(9, 1, i)).0;
            assert!(id != 0, "id 0 lies outside the 0.75 nucleus");
        }
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            top_k: 0,
        };
        for i in 0..200 {
            assert_eq!(sample(&logits, 3, s, crate::rng::uniform(9, 1, i)).0, 2);
        }
    }
}
