//! Random inputs, bf16 rounding, comparisons, ledgers and the naive f64 references the bodies share.
use super::*;

pub(crate) fn rnd(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    ponder::rng::fill_uniform(seed ^ 0x5eed_1234_abcd, n, bound)
}

pub(crate) fn bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect()
}

pub(crate) fn weight<B: Backend>(be: &B, shape: &[usize], v: &[f32]) -> B::Weight {
    be.weight(shape, WeightData::Host(Cow::Owned(bf16(v))))
        .unwrap()
}

/// rope_store_kv on separate q, k, v host rows, fused into the one q|k|v tensor the model's
/// projection produces; returns the rotated q.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope<B: Backend>(
    be: &B,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv: &mut B::Kv,
    layer: usize,
    b: &Batch,
    d: AttnDims,
) -> Result<B::Tensor> {
    let n = b.n_tokens();
    let (qd, kd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let qkv = ponder::backend::concat_columns(n, &[(q, qd), (k, kd), (v, kd)]);
    let qkv = be.tensor(n, qd + 2 * kd, &qkv)?;
    be.rope_store_kv(&qkv, kv, layer, b, d)
}

pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(!g.is_nan(), "{what}: NaN at {i} (want {w})");
        let e = (g - w).abs();
        if e > worst.0 {
            worst = (e, i);
        }
    }
    let (e, i) = worst;
    assert!(
        e <= tol * scale,
        "{what}: max error {e} at {i} (got {}, want {}), scale {scale}, tol {tol}",
        got[i],
        want[i]
    );
}

pub(crate) fn ledger<B: Backend>(be: &B) -> Ledger {
    be.ledger().lock().unwrap().clone()
}

pub(crate) fn clear<B: Backend>(be: &B) {
    be.ledger().lock().unwrap().clear();
}

/// Useful FLOPs agree op by op with the CPU's; ops the CPU lacks count none.
pub(crate) fn assert_same_useful(got: &Ledger, cpu: &Ledger) {
    let (g, c) = (got.by_op(), cpu.by_op());
    for (op, cc) in &c {
        let gu = g.get(op).map_or(0, |x| x.useful_flops);
        assert_eq!(gu, cc.useful_flops, "useful FLOPs of {op}");
    }
    for (op, gc) in &g {
        if !c.contains_key(op) {
            assert_eq!(gc.useful_flops, 0, "{op} has no CPU counterpart");
        }
    }
    assert_eq!(got.total().useful_flops, cpu.total().useful_flops);
    for (_, c) in g {
        assert!(c.executed_flops >= c.useful_flops);
    }
}

/// Runs `f` on `be` and on a fresh CPU backend (both from a clear ledger) and compares the
/// useful FLOPs. Returns `be`'s result.
pub(crate) fn with_flops<B: Backend, T>(
    be: &B,
    f: impl Fn(&B) -> Result<T>,
    g: impl Fn(&Cpu) -> Result<()>,
) -> Result<T> {
    clear(be);
    let out = f(be)?;
    let cpu = Cpu::new();
    g(&cpu)?;
    assert_same_useful(&ledger(be), &ledger(&cpu));
    Ok(out)
}

pub(crate) fn naive_rms(x: &[f32], d: usize, w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (o, r) in out.chunks_mut(d).zip(x.chunks(d)) {
        let ss: f64 = r.iter().map(|v| (*v as f64).powi(2)).sum();
        let inv = 1.0 / (ss / d as f64 + eps as f64).sqrt();
        for i in 0..d {
            o[i] = (r[i] as f64 * inv * w[i] as f64) as f32;
        }
    }
    out
}

pub(crate) fn naive_linear(x: &[f32], k: usize, w: &[f32], m: usize) -> Vec<f32> {
    let n = x.len() / k;
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            let s: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
            out[i * m + j] = s as f32;
        }
    }
    out
}

/// RoPE in closed form (f64): element i pairs with i + hd/2, angle pos·θ^(−2i/hd).
pub(crate) fn rope_row(row: &mut [f32], hd: usize, pos: usize, theta: f32) {
    let half = hd / 2;
    for h in row.chunks_mut(hd) {
        for i in 0..half {
            let a = pos as f64 * (theta as f64).powf(-((2 * i) as f64) / hd as f64);
            let (x, y) = (h[i] as f64, h[i + half] as f64);
            h[i] = (x * a.cos() - y * a.sin()) as f32;
            h[i + half] = (y * a.cos() + x * a.sin()) as f32;
        }
    }
}

/// Softmax attention of one query row (all heads) over the keys `keys` (indices into k/v
/// rows of width hk·hd), GQA.
pub(crate) fn naive_attn_row(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keys: &[usize],
    dims: AttnDims,
) -> Vec<f32> {
    let (hq, hk, hd) = (dims.heads, dims.kv_heads, dims.head_dim);
    let g = hq / hk;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0f32; hq * hd];
    for h in 0..hq {
        let kh = h / g;
        let qv = &q[h * hd..(h + 1) * hd];
        let sc: Vec<f64> = keys
            .iter()
            .map(|&j| {
                let kr = &k[j * hk * hd + kh * hd..][..hd];
                qv.iter()
                    .zip(kr)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
        let tot: f64 = e.iter().sum();
        for (p, &j) in e.iter().zip(keys) {
            let vr = &v[j * hk * hd + kh * hd..][..hd];
            for i in 0..hd {
                out[h * hd + i] += (p / tot * vr[i] as f64) as f32;
            }
        }
    }
    out
}

pub(crate) fn dims(hq: usize, hk: usize, hd: usize) -> AttnDims {
    AttnDims {
        heads: hq,
        kv_heads: hk,
        head_dim: hd,
        rope_theta: 10000.0,
    }
}
