//! Inner loops of the CPU backend. Written so LLVM vectorises them (eight independent
//! accumulators), and compiled twice: for AVX2+FMA, picked at run time, and for the baseline
//! target, so one binary is fast on modern x86-64 and still runs everywhere.

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    finish(&mut acc, ra, rb)
}

/// The end of every dot product: the tail past the last full 16-lane chunk as one sequential
/// FMA chain, then the lanes summed pairwise, in a fixed order (so results depend neither on
/// threading nor on which kernel variant ran).
#[inline(always)]
pub(super) fn finish(acc: &mut [f32; 16], a_tail: &[f32], b_tail: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (x, y) in a_tail.iter().zip(b_tail) {
        s = x.mul_add(*y, s);
    }
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0] + s
}

/// Four `dot_body`s of `a` with `b[0..4]` at once, each output bit for bit the same as
/// `dot_body(a, b[r])`: every lane accumulates the same products in the same order, the tail
/// and the pairwise sum are the same. Four independent chains keep the FMA units busy where
/// one chain waits on its own latency, and each chunk of `a` is loaded once for four rows.
#[inline(always)]
fn dot4_body(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    let n = b.iter().fold(a.len(), |n, r| n.min(r.len()));
    let a = &a[..n];
    let b = b.map(|r| &r[..n]);
    let mut acc = [[0.0f32; 16]; 4];
    let full = n / 16 * 16;
    for c in (0..full).step_by(16) {
        let x: &[f32; 16] = a[c..c + 16].try_into().expect("16 lanes");
        for (r, accr) in acc.iter_mut().enumerate() {
            let y: &[f32; 16] = b[r][c..c + 16].try_into().expect("16 lanes");
            for l in 0..16 {
                accr[l] = x[l].mul_add(y[l], accr[l]);
            }
        }
    }
    let mut out = [0.0f32; 4];
    for (r, accr) in acc.iter_mut().enumerate() {
        out[r] = finish(accr, &a[full..], &b[r][full..]);
    }
    out
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv = xv.mul_add(a, *yv);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

/// `dot4_body` in AVX2 registers: lanes 0..8 and 8..16 of each row's accumulator are two
/// ymm registers, so the four rows keep eight independent FMA chains in flight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
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
            lo[r] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(pb[r].add(c)), lo[r]);
            hi[r] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(pb[r].add(c + 8)), hi[r]);
        }
        c += 16;
    }
    let mut out = [0.0f32; 4];
    for r in 0..4 {
        let mut acc = [0.0f32; 16];
        _mm256_storeu_ps(acc.as_mut_ptr(), lo[r]);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi[r]);
        out[r] = finish(&mut acc, &a[full..n], &b[r][full..n]);
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_body(y, a, x)
}

#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Σ a·b over the common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports avx2 and fma (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_body(a, b)
}

/// `M` rows of `a` against four rows `b`, every output bit for bit `dot_body(a[i], b[r])`.
/// Lanes 0..8 and 8..16 of a dot product's accumulator are independent chains, so they are
/// computed one half after the other: each half keeps M × 4 ymm accumulators and loads M + 4
/// vectors for M × 4 FMAs (dot4 loads 10 for 8), and both halves meet in `finish`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows4_avx2<const M: usize>(a: [&[f32]; M], b: [&[f32]; 4]) -> [[f32; 4]; M] {
    use std::arch::x86_64::*;
    let n = a
        .iter()
        .chain(b.iter())
        .fold(usize::MAX, |n, r| n.min(r.len()));
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
                let w = _mm256_loadu_ps(pb[r].add(c));
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
    let mut out = [[0.0f32; 4]; M];
    for i in 0..M {
        for r in 0..4 {
            out[i][r] = finish(&mut lanes[i][r], &a[i][full..n], &b[r][full..n]);
        }
    }
    out
}

/// `dot4` for `M` rows of `a` at once: `[dot4(a[0], b), …]`, bit for bit.
#[inline]
pub fn dot_rows4<const M: usize>(a: [&[f32]; M], b: [&[f32]; 4]) -> [[f32; 4]; M] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `dot`.
        return unsafe { dot_rows4_avx2(a, b) };
    }
    a.map(|x| dot4_body(x, b))
}

/// `[dot(a, b[0]), …, dot(a, b[3])]`, bit for bit, faster.
#[inline]
pub fn dot4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `dot`.
        return unsafe { dot4_avx2(a, b) };
    }
    dot4_body(a, b)
}

/// y += a·x.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `dot`.
        return unsafe { axpy_avx2(y, a, x) };
    }
    axpy_body(y, a, x)
}

/// out = x / rms(x) · w.
pub fn norm_row(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss = dot(x, x);
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = *v * inv * *g;
    }
}

/// θ^(−2i/d) for i < d/2, in f64 so that long positions keep their precision.
pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| (theta as f64).powf(-((2 * i) as f64) / head_dim as f64))
        .collect()
}

pub fn angles(inv: &[f64], pos: u32) -> (Vec<f32>, Vec<f32>) {
    inv.iter()
        .map(|f| {
            let a = pos as f64 * f;
            (a.cos() as f32, a.sin() as f32)
        })
        .unzip()
}

/// HF's rotate-half RoPE: element i pairs with element i + d/2.
pub fn rotate_half(h: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = h.len() / 2;
    for i in 0..half {
        let (a, b) = (h[i], h[i + half]);
        h[i] = a * cos[i] - b * sin[i];
        h[i + half] = b * cos[i] + a * sin[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot4_is_four_dots_bit_for_bit() {
        for n in [0usize, 1, 15, 16, 17, 64, 100, 576, 1000] {
            let a = crate::rng::fill_uniform(1, n, 3.0);
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| crate::rng::fill_uniform(2 + r, n, 1.0))
                .collect();
            let got = dot4(&a, [&rows[0], &rows[1], &rows[2], &rows[3]]);
            for r in 0..4 {
                assert_eq!(got[r].to_bits(), dot(&a, &rows[r]).to_bits(), "n={n} r={r}");
                assert_eq!(got[r].to_bits(), dot_body(&a, &rows[r]).to_bits(), "n={n}");
            }
        }
    }

    #[test]
    fn row_blocks_are_dot4_bit_for_bit() {
        for n in [0usize, 1, 8, 15, 16, 17, 40, 64, 100, 576, 1000] {
            let x: Vec<Vec<f32>> = (0..3)
                .map(|i| crate::rng::fill_uniform(10 + i, n, 2.0))
                .collect();
            let w: Vec<Vec<f32>> = (0..4)
                .map(|r| crate::rng::fill_uniform(20 + r, n, 1.0))
                .collect();
            let ws = [&w[0][..], &w[1][..], &w[2][..], &w[3][..]];
            let two = dot_rows4([&x[0][..], &x[1]], ws);
            let three = dot_rows4([&x[0][..], &x[1], &x[2]], ws);
            for i in 0..3 {
                let want = dot4(&x[i], ws);
                for r in 0..4 {
                    assert_eq!(
                        three[i][r].to_bits(),
                        want[r].to_bits(),
                        "n={n} i={i} r={r}"
                    );
                    assert_eq!(want[r].to_bits(), dot_body(&x[i], ws[r]).to_bits());
                    if i < 2 {
                        assert_eq!(two[i][r].to_bits(), want[r].to_bits(), "n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn dot_and_axpy_match_plain_loops() {
        for n in [0usize, 1, 7, 16, 33, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "n={n}");
            let mut y = b.clone();
            axpy(&mut y, 0.5, &a);
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6);
            }
        }
    }
}
