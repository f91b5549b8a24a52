//! `dot`, `dot4` and `dot_rows4` (cpu_math.rs) for weight rows held as bf16: each group of
//! eight weights is widened in a register right before its FMAs (a bf16 is the top half of an
//! f32, so widening is exact), and every lane, tail and pairwise sum is the f32 kernel's. So
//! each output is bit for bit the f32 kernel's on the widened row, while the weights stream at
//! two bytes a value with no f32 copy written and read back.
use super::cpu_math::{dot, dot4, dot_rows4};
use super::widen_bf16;

/// A bf16 row's values as f32 (the fallback without AVX2, and the short tails).
fn widened(b: &[u16]) -> Vec<f32> {
    let mut out = vec![0.0f32; b.len()];
    widen_bf16(&mut out, b);
    out
}

/// `dot(a, widened(b))`, bit for bit.
pub fn dot_bf16(a: &[f32], b: &[u16]) -> f32 {
    dot(a, &widened(b))
}

/// `dot4(a, widened(b[..]))`, bit for bit.
#[inline]
pub fn dot4_bf16(a: &[f32], b: [&[u16]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if super::cpu_math::has_avx2() {
        // SAFETY: the CPU supports avx2 and fma (checked above).
        return unsafe { avx2::dot4(a, b) };
    }
    let w = b.map(widened);
    dot4(a, [&w[0], &w[1], &w[2], &w[3]])
}

/// `dot_rows4(a, widened(b[..]))`, bit for bit.
#[inline]
pub fn dot_rows4_bf16<const M: usize>(a: [&[f32]; M], b: [&[u16]; 4]) -> [[f32; 4]; M] {
    #[cfg(target_arch = "x86_64")]
    if super::cpu_math::has_avx2() {
        // SAFETY: as in `dot4_bf16`.
        return unsafe { avx2::dot_rows4(a, b) };
    }
    let w = b.map(widened);
    dot_rows4(a, [&w[0], &w[1], &w[2], &w[3]])
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::cpu_math::finish;
    use std::arch::x86_64::*;

    /// Eight bf16 at `p` as eight f32: zero-extend to 32 bits, shift into the top half.
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    /// The rows' tails past `full` (fewer than 16 values), widened.
    fn tails(b: [&[u16]; 4], full: usize, n: usize) -> [[f32; 16]; 4] {
        let mut t = [[0.0f32; 16]; 4];
        for (tr, br) in t.iter_mut().zip(b) {
            super::widen_bf16(&mut tr[..n - full], &br[full..n]);
        }
        t
    }

    /// cpu_math's `dot4_avx2` with bf16 rows: the same two ymm halves per row.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4(a: &[f32], b: [&[u16]; 4]) -> [f32; 4] {
        let n = b.iter().fold(a.len(), |n, r| n.min(r.len()));
        let full = n / 16 * 16;
        let (pa, pb) = (a.as_ptr(), b.map(|r| r.as_ptr()));
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c < full {
            // SAFETY: c + 16 <= full <= the length of `a` and of every row.
            let (x0, x1) = (_mm256_loadu_ps(pa.add(c)), _mm256_loadu_ps(pa.add(c + 8)));
            for r in 0..4 {
                lo[r] = _mm256_fmadd_ps(x0, load8(pb[r].add(c)), lo[r]);
                hi[r] = _mm256_fmadd_ps(x1, load8(pb[r].add(c + 8)), hi[r]);
            }
            c += 16;
        }
        let t = tails(b, full, n);
        let mut out = [0.0f32; 4];
        for r in 0..4 {
            let mut acc = [0.0f32; 16];
            _mm256_storeu_ps(acc.as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi[r]);
            out[r] = finish(&mut acc, &a[full..n], &t[r][..n - full]);
        }
        out
    }

    /// cpu_math's `dot_rows4_avx2` with bf16 rows: one 16-lane half after the other.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows4<const M: usize>(
        a: [&[f32]; M],
        b: [&[u16]; 4],
    ) -> [[f32; 4]; M] {
        let n = a.iter().fold(usize::MAX, |n, r| n.min(r.len()));
        let n = b.iter().fold(n, |n, r| n.min(r.len()));
        let full = n / 16 * 16;
        let (pa, pb) = (a.map(|r| r.as_ptr()), b.map(|r| r.as_ptr()));
        let mut lanes = [[[0.0f32; 16]; 4]; M];
        for half in [0, 8] {
            let mut acc = [[_mm256_setzero_ps(); 4]; M];
            let mut c = half;
            while c < full {
                // SAFETY: c + 8 <= full <= the length of every row.
                let x: [__m256; M] = std::array::from_fn(|i| _mm256_loadu_ps(pa[i].add(c)));
                for r in 0..4 {
                    let w = load8(pb[r].add(c));
                    for i in 0..M {
                        acc[i][r] = _mm256_fmadd_ps(x[i], w, acc[i][r]);
                    }
                }
                c += 16;
            }
            for i in 0..M {
                for r in 0..4 {
                    _mm256_storeu_ps(lanes[i][r].as_mut_ptr().add(half), acc[i][r]);
                }
            }
        }
        let t = tails(b, full, n);
        let mut out = [[0.0f32; 4]; M];
        for i in 0..M {
            for r in 0..4 {
                out[i][r] = finish(&mut lanes[i][r], &a[i][full..n], &t[r][..n - full]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(n: usize, seed: u64) -> Vec<u16> {
        crate::backend::round_to_bf16_bits(&crate::rng::fill_uniform(seed, n, 3.0))
    }

    #[test]
    fn bf16_rows_give_the_f32_kernels_bits() {
        // Lengths around the 16-lane chunks and the 8-lane halves, tails included.
        for k in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 100, 576] {
            let b: Vec<Vec<u16>> = (0..4).map(|r| bits(k, 10 + r)).collect();
            let w: Vec<Vec<f32>> = b.iter().map(|r| widened(r)).collect();
            let x: Vec<Vec<f32>> = (0..3)
                .map(|i| crate::rng::fill_uniform(20 + i, k, 1.0))
                .collect();
            let (bb, ww) = (
                [&b[0][..], &b[1], &b[2], &b[3]],
                [&w[0][..], &w[1], &w[2], &w[3]],
            );
            let same =
                |p: &[f32], q: &[f32]| p.iter().zip(q).all(|(u, v)| u.to_bits() == v.to_bits());
            assert!(
                same(&dot4_bf16(&x[0], bb), &dot4(&x[0], ww)),
                "dot4, k = {k}"
            );
            let (p, q) = (
                dot_rows4_bf16([&x[0][..], &x[1], &x[2]], bb),
                dot_rows4([&x[0][..], &x[1], &x[2]], ww),
            );
            assert!(
                (0..3).all(|i| same(&p[i], &q[i])),
                "dot_rows4::<3>, k = {k}"
            );
            let (p, q) = (
                dot_rows4_bf16([&x[0][..], &x[1]], bb),
                dot_rows4([&x[0][..], &x[1]], ww),
            );
            assert!(
                (0..2).all(|i| same(&p[i], &q[i])),
                "dot_rows4::<2>, k = {k}"
            );
            assert_eq!(
                dot_bf16(&x[2], &b[1]).to_bits(),
                dot(&x[2], &w[1]).to_bits()
            );
        }
    }
}
