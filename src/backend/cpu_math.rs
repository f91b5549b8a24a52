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

/// `M` rows of `a` against one row `b`, every output bit for bit `dot_body(a[i], b)`, with
/// both halves of each accumulator (2·M ymm chains) in one pass: each 16 values of the weight
/// row are loaded once and used by every input row while the row streams in from memory.
/// For the few input rows of a decode step this beats reusing four weight rows from cache
/// (dot_rows4, whose first lane half waits on memory with a quarter of the FMAs and whose
/// other passes leave memory idle; docs/BENCHMARKS.md, 2026-12-07).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_rows_simd<W: Weight, const M: usize>(a: [&[f32]; M], b: &[W]) -> [f32; M] {
    use std::arch::x86_64::*;
    let n = a.iter().fold(b.len(), |n, r| n.min(r.len()));
    let full = n / 16 * 16;
    let (pa, pb) = (a.map(|r| r.as_ptr()), b.as_ptr());
    let mut lo = [_mm256_setzero_ps(); M];
    let mut hi = [_mm256_setzero_ps(); M];
    let mut c = 0;
    while c < full {
        // SAFETY: c + 16 <= full <= the length of every row.
        let (w0, w1) = (W::load8(pb.add(c)), W::load8(pb.add(c + 8)));
        for i in 0..M {
            lo[i] = _mm256_fmadd_ps(_mm256_loadu_ps(pa[i].add(c)), w0, lo[i]);
            hi[i] = _mm256_fmadd_ps(_mm256_loadu_ps(pa[i].add(c + 8)), w1, hi[i]);
        }
        c += 16;
    }
    let mut out = [0.0f32; M];
    for i in 0..M {
        let mut acc = [0.0f32; 16];
        _mm256_storeu_ps(acc.as_mut_ptr(), lo[i]);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi[i]);
        out[i] = finish(&mut acc, &a[i][full..n], &b[full..n]);
    }
    out
}

/// The SIMD kernels compiled for one set of CPU features: AVX2+FMA for f32 and bf16 weights,
/// and with F16C besides for f16 ones, so that a CPU with AVX2 but without F16C still runs the
/// f32 and bf16 kernels at speed.
macro_rules! simd_kernels {
    ($features:literal, $dot:ident, $dot4:ident, $rows4:ident, $rows:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $rows<W: Weight, const M: usize>(a: [&[f32]; M], b: &[W]) -> [f32; M] {
            dot_rows_simd(a, b)
        }
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
simd_kernels!(
    "avx2,fma",
    dot_avx2,
    dot4_avx2,
    dot_rows4_avx2,
    dot_rows_avx2
);
simd_kernels!(
    "avx2,fma,f16c",
    dot_f16c,
    dot4_f16c,
    dot_rows4_f16c,
    dot_rows_f16c
);

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

/// `[dot(a[0], b), …, dot(a[M-1], b)]`, bit for bit: each weight value loaded once for all
/// M input rows (the kernel for a few input rows against weights streaming from memory).
#[inline]
pub fn dot_rows<W: Weight, const M: usize>(a: [&[f32]; M], b: &[W]) -> [f32; M] {
    // SAFETY: as in `dot`.
    #[cfg(target_arch = "x86_64")]
    match simd::<W>() {
        Simd::Avx2 => return unsafe { dot_rows_avx2(a, b) },
        Simd::F16c => return unsafe { dot_rows_f16c(a, b) },
        Simd::None => {}
    }
    a.map(|x| dot_body(x, b))
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
mod tests;
