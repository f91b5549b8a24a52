//! Inner loops of the CPU backend. Written so LLVM vectorises them (eight independent
//! accumulators), and compiled for AVX2+FMA (with F16C for f16 weights), picked at run time,
//! and for the baseline target, so one binary is fast on modern x86-64 and runs everywhere.
//!
//! The dot products read their second operand (a weight row) as f32, as bf16 bits or as f16
//! (`Weight`): a 16-bit value is widened, exactly, right before its FMA, in a register on
//! AVX2, and every lane, tail and pairwise sum is the same, so a bf16 or f16 row gives bit for
//! bit what its f32 copy gives, while the weights stream at two bytes a value.

/// A weight element as the dot products read it: f32, bf16 held as its bits (u16), or f16.
pub trait Weight: Copy + Send + Sync {
    /// Whether `load8` needs F16C (besides AVX2 and FMA).
    const F16C: bool = false;
    /// The value as f32 (exact for every type).
    fn f32(self) -> f32;
    /// Eight values at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` points at eight readable values, and the CPU has AVX2, and F16C if `F16C` (`simd`).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Weight for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Weight for u16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        super::widen_one(self)
    }
    /// Zero-extend to 32 bits and shift into the top half.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

impl Weight for half::f16 {
    const F16C: bool = true;
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
    /// F16C's conversion, exact like half's.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

#[inline(always)]
fn dot_body<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] = x[l].mul_add(y[l].f32(), acc[l]);
        }
    }
    finish(&mut acc, ra, rb)
}

/// The end of every dot product: the tail past the last full 16-lane chunk as one sequential
/// FMA chain, then the lanes summed pairwise, in a fixed order (so results depend neither on
/// threading nor on which kernel variant ran).
#[inline(always)]
fn finish<W: Weight>(acc: &mut [f32; 16], a_tail: &[f32], b_tail: &[W]) -> f32 {
    let mut s = 0.0f32;
    for (x, y) in a_tail.iter().zip(b_tail) {
        s = x.mul_add(y.f32(), s);
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
fn dot4_body<W: Weight>(a: &[f32], b: [&[W]; 4]) -> [f32; 4] {
    let n = b.iter().fold(a.len(), |n, r| n.min(r.len()));
    let a = &a[..n];
    let b = b.map(|r| &r[..n]);
    let mut acc = [[0.0f32; 16]; 4];
    let full = n / 16 * 16;
    for c in (0..full).step_by(16) {
        let x: &[f32; 16] = a[c..c + 16].try_into().expect("16 lanes");
        for (r, accr) in acc.iter_mut().enumerate() {
            let y = &b[r][c..c + 16];
            for l in 0..16 {
                accr[l] = x[l].mul_add(y[l].f32(), accr[l]);
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

/// `dot4_body` in AVX2 registers: lanes 0..8 and 8..16 of each row's accumulator are two
/// ymm registers, so the four rows keep eight independent FMA chains in flight. Inlined into
/// the `simd_kernels!` wrappers, which enable the CPU features.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot4_simd<W: Weight>(a: &[f32], b: [&[W]; 4]) -> [f32; 4] {
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
            lo[r] = _mm256_fmadd_ps(x0, W::load8(pb[r].add(c)), lo[r]);
            hi[r] = _mm256_fmadd_ps(x1, W::load8(pb[r].add(c + 8)), hi[r]);
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

/// `M` rows of `a` against four rows `b`, every output bit for bit `dot_body(a[i], b[r])`.
/// Lanes 0..8 and 8..16 of a dot product's accumulator are independent chains, so they are
/// computed one half after the other: each half keeps M × 4 ymm accumulators and loads M + 4
/// vectors for M × 4 FMAs (dot4 loads 10 for 8), and both halves meet in `finish`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_rows4_simd<W: Weight, const M: usize>(a: [&[f32]; M], b: [&[W]; 4]) -> [[f32; 4]; M] {
    use std::arch::x86_64::*;
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
                let w = W::load8(pb[r].add(c));
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

/// The SIMD kernels compiled for one set of CPU features: AVX2+FMA for f32 and bf16 weights,
/// and with F16C besides for f16 ones, so that a CPU with AVX2 but without F16C still runs the
/// f32 and bf16 kernels at speed.
macro_rules! simd_kernels {
    ($features:literal, $dot:ident, $dot4:ident, $rows4:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
            dot_body(a, b)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $dot4<W: Weight>(a: &[f32], b: [&[W]; 4]) -> [f32; 4] {
            dot4_simd(a, b)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $rows4<W: Weight, const M: usize>(a: [&[f32]; M], b: [&[W]; 4]) -> [[f32; 4]; M] {
            dot_rows4_simd(a, b)
        }
    };
}
simd_kernels!("avx2,fma", dot_avx2, dot4_avx2, dot_rows4_avx2);
simd_kernels!("avx2,fma,f16c", dot_f16c, dot4_f16c, dot_rows4_f16c);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_body(y, a, x)
}

/// Which SIMD kernels this CPU runs for weights of type W: None (the portable loops), the
/// AVX2+FMA ones, or for f16 weights the ones with F16C too.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq)]
enum Simd {
    None,
    Avx2,
    F16c,
}

#[cfg(target_arch = "x86_64")]
fn simd<W: Weight>() -> Simd {
    use std::sync::OnceLock;
    static F: OnceLock<(bool, bool)> = OnceLock::new();
    let (avx2, f16c) = *F.get_or_init(|| {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        (avx2, avx2 && is_x86_feature_detected!("f16c"))
    });
    match (W::F16C, avx2, f16c) {
        (false, true, _) => Simd::Avx2,
        (true, _, true) => Simd::F16c,
        _ => Simd::None,
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    simd::<f32>() == Simd::Avx2
}

/// Σ a·b over the common length.
#[inline]
pub fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    // SAFETY (all three): `simd` checked the CPU for the features each kernel enables.
    #[cfg(target_arch = "x86_64")]
    match simd::<W>() {
        Simd::Avx2 => return unsafe { dot_avx2(a, b) },
        Simd::F16c => return unsafe { dot_f16c(a, b) },
        Simd::None => {}
    }
    dot_body(a, b)
}

/// `dot4` for `M` rows of `a` at once: `[dot4(a[0], b), …]`, bit for bit.
#[inline]
pub fn dot_rows4<W: Weight, const M: usize>(a: [&[f32]; M], b: [&[W]; 4]) -> [[f32; 4]; M] {
    // SAFETY: as in `dot`.
    #[cfg(target_arch = "x86_64")]
    match simd::<W>() {
        Simd::Avx2 => return unsafe { dot_rows4_avx2(a, b) },
        Simd::F16c => return unsafe { dot_rows4_f16c(a, b) },
        Simd::None => {}
    }
    a.map(|x| dot4_body(x, b))
}

/// `[dot(a, b[0]), …, dot(a, b[3])]`, bit for bit, faster.
#[inline]
pub fn dot4<W: Weight>(a: &[f32], b: [&[W]; 4]) -> [f32; 4] {
    // SAFETY: as in `dot`.
    #[cfg(target_arch = "x86_64")]
    match simd::<W>() {
        Simd::Avx2 => return unsafe { dot4_avx2(a, b) },
        Simd::F16c => return unsafe { dot4_f16c(a, b) },
        Simd::None => {}
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

    /// Every kernel on 16-bit rows gives the bits of the same kernel on their f32 copy (made
    /// by half's conversion, independent of Weight::f32 and load8), for lengths around the
    /// 16-lane chunks and the 8-lane halves, tails included.
    fn halves_give_their_f32_copys_bits<W: Weight>(
        name: &str,
        round: impl Fn(&[f32]) -> Vec<W>,
        widen: impl Fn(W) -> f32,
    ) {
        let vals = |n: usize, seed: u64| round(&crate::rng::fill_uniform(seed, n, 3.0));
        let same = |p: &[f32], q: &[f32]| p.iter().zip(q).all(|(u, v)| u.to_bits() == v.to_bits());
        for k in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 100, 576] {
            let b: Vec<Vec<W>> = (0..4).map(|r| vals(k, 10 + r)).collect();
            let w: Vec<Vec<f32>> = b
                .iter()
                .map(|r| r.iter().map(|x| widen(*x)).collect())
                .collect();
            let x: Vec<Vec<f32>> = (0..3)
                .map(|i| crate::rng::fill_uniform(20 + i, k, 1.0))
                .collect();
            let bb = [&b[0][..], &b[1], &b[2], &b[3]];
            let ww = [&w[0][..], &w[1], &w[2], &w[3]];
            assert!(
                same(&dot4(&x[0], bb), &dot4(&x[0], ww)),
                "{name} dot4, k = {k}"
            );
            let (p, q) = (
                dot_rows4([&x[0][..], &x[1], &x[2]], bb),
                dot_rows4([&x[0][..], &x[1], &x[2]], ww),
            );
            assert!(
                (0..3).all(|i| same(&p[i], &q[i])),
                "{name} dot_rows4::<3>, k = {k}"
            );
            let (p, q) = (
                dot_rows4([&x[0][..], &x[1]], bb),
                dot_rows4([&x[0][..], &x[1]], ww),
            );
            assert!(
                (0..2).all(|i| same(&p[i], &q[i])),
                "{name} dot_rows4::<2>, k = {k}"
            );
            assert_eq!(
                dot(&x[2], &b[1]).to_bits(),
                dot(&x[2], &w[1]).to_bits(),
                "{name} dot, k = {k}"
            );
            // The scalar bodies (the baseline target's path) too.
            assert!(
                same(&dot4_body(&x[0], bb), &dot4(&x[0], ww)),
                "{name} dot4_body, k = {k}"
            );
            assert_eq!(
                dot_body(&x[2], &b[1]).to_bits(),
                dot(&x[2], &w[1]).to_bits()
            );
        }
    }

    #[test]
    fn bf16_rows_give_their_f32_copys_bits() {
        halves_give_their_f32_copys_bits("bf16", crate::backend::round_to_bf16_bits, |x: u16| {
            half::bf16::from_bits(x).to_f32()
        });
    }

    #[test]
    fn f16_rows_give_their_f32_copys_bits() {
        // Values down to f16's subnormals (uniform in ±3, so some are tiny), and beyond: the
        // rounding of tiny values to subnormals or zero is half's, the widening must be exact.
        let round = |v: &[f32]| v.iter().map(|x| half::f16::from_f32(*x * 1e-3)).collect();
        halves_give_their_f32_copys_bits("f16", round, f16_by_hand);
    }

    /// An f16's value from its fields, in f64 (exact) then f32 (exact: f32 holds every f16),
    /// independent of half's conversion, which may itself use F16C.
    fn f16_by_hand(h: half::f16) -> f32 {
        let b = h.to_bits();
        let sign = if b >> 15 == 1 { -1.0 } else { 1.0 };
        let (e, m) = (i32::from((b >> 10) & 0x1f), f64::from(b & 0x3ff));
        let v = match e {
            0 => m / 1024.0 * 2f64.powi(-14),
            31 if m == 0.0 => f64::INFINITY,
            31 => f64::NAN,
            _ => (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        };
        (sign * v) as f32
    }

    /// f16 weights never reach a kernel compiled without F16C; the others need only AVX2+FMA.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_weight_type_gets_the_kernels_its_load_needs() {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let f16c = avx2 && is_x86_feature_detected!("f16c");
        let want = |ok, s| if ok { s } else { Simd::None };
        assert!(simd::<f32>() == want(avx2, Simd::Avx2));
        assert!(simd::<u16>() == want(avx2, Simd::Avx2));
        assert!(simd::<half::f16>() == want(f16c, Simd::F16c));
    }

    /// `load8` widens every 16-bit pattern as half does (NaNs stay NaNs).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn load8_widens_every_pattern_exactly() {
        fn check<W: Weight>(all: &[W], want: impl Fn(W) -> f32, name: &str) {
            if simd::<W>() == Simd::None {
                return;
            }
            for (i, c) in all.chunks_exact(8).enumerate() {
                let mut got = [0.0f32; 8];
                // SAFETY: eight values at c, and the CPU has what W's load8 needs (`simd`).
                unsafe {
                    std::arch::x86_64::_mm256_storeu_ps(got.as_mut_ptr(), W::load8(c.as_ptr()))
                };
                for (g, w) in got.iter().zip(c) {
                    let e = want(*w);
                    let ok = g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan());
                    assert!(ok, "{name}: pattern {:#06x}", i * 8);
                }
            }
        }
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        check(&bits, |b| half::bf16::from_bits(b).to_f32(), "bf16");
        let f16s: Vec<half::f16> = bits.iter().map(|b| half::f16::from_bits(*b)).collect();
        check(&f16s, f16_by_hand, "f16");
    }

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
