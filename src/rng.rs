//! Counter-based random numbers: value = hash(seed, stream, counter). Every branch of every
//! problem draws from its own stream, so results do not depend on how branches are batched,
//! and a GPU kernel can reproduce any draw without sharing state.
use rayon::prelude::*;

/// SplitMix64's finaliser: a bijective mix with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// FNV-1a's offset basis: the starting state of [`fnv1a`].
pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// FNV-1a over `bytes` from state `h`: a stable hash of names and texts (synthetic weights'
/// seeds, the data fingerprint of a results folder), not a random stream.
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

/// A uniform in [0, 1) with 53 random bits, for draw `counter` of stream `stream`.
#[inline]
pub fn uniform(seed: u64, stream: u64, counter: u64) -> f64 {
    let a = mix64(seed ^ mix64(stream.wrapping_add(0x9e3779b97f4a7c15)));
    let b = mix64(a ^ counter.wrapping_mul(0xd6e8feb86659fd93));
    (b >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A stream id derived from a parent stream and a child index (for forks).
pub fn child_stream(parent: u64, index: u64) -> u64 {
    mix64(parent ^ mix64(index.wrapping_add(0x632be59bd9b4e019)))
}

/// n values uniform in [−bound, bound), in parallel but independent of the thread count.
pub fn fill_uniform(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = (c as u64) << 16;
            for (i, x) in chunk.iter_mut().enumerate() {
                let u = (mix64(seed ^ mix64(base + i as u64)) >> 40) as f32 / (1u64 << 24) as f32;
                *x = (2.0 * u - 1.0) * bound;
            }
        });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_roughly_flat() {
        let n = 100_000;
        let mut buckets = [0usize; 10];
        for i in 0..n {
            let u = uniform(42, 7, i);
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((b as f64 - 10_000.0).abs() < 500.0, "{buckets:?}");
        }
        assert_ne!(uniform(1, 0, 0), uniform(2, 0, 0));
        assert_ne!(uniform(1, 0, 0), uniform(1, 1, 0));
    }
}
