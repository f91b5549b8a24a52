//! The kernels against their plain definitions, bit for bit.
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
        assert!(
            same(
                &dot_rows([&x[0][..], &x[1]], &b[3]),
                &dot_rows([&x[0][..], &x[1]], &w[3])
            ),
            "{name} dot_rows::<2>, k = {k}"
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
            unsafe { std::arch::x86_64::_mm256_storeu_ps(got.as_mut_ptr(), W::load8(c.as_ptr())) };
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
        // The streaming kernel, one weight row at a time, gives the same bits.
        let pair: Vec<[f32; 2]> = ws.iter().map(|w| dot_rows([&x[0][..], &x[1]], w)).collect();
        let one: Vec<[f32; 1]> = ws.iter().map(|w| dot_rows([&x[2][..]], w)).collect();
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
                    assert_eq!(pair[r][i].to_bits(), want[r].to_bits(), "n={n} pair");
                } else {
                    assert_eq!(one[r][0].to_bits(), want[r].to_bits(), "n={n} one");
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
