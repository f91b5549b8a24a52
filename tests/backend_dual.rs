//! One test body per backend op, run on the CPU backend always and on the CUDA backend when
//! ponder is built with `--features cuda` and a GPU is present (else the CUDA instance prints
//! "skipped: no CUDA GPU" and passes), in the manner of candle's `test_device!`.
//!
//! Each body draws fresh random inputs, runs the op, and compares it with a naive f64
//! reference written here (so the CPU instance tests the CPU backend), with a tolerance fit
//! for the backend (f32: 1e-4; bf16 storage: 2e-2 relative to the largest magnitude). Weights
//! are rounded to bf16 first, so that both backends hold the same values. Every body also runs
//! the op on a fresh CPU backend and asserts that the useful FLOPs agree op by op (ops the CPU
//! does not have, such as `cast` or `attn_merge`, must count zero useful FLOPs). On the GPU,
//! every fresh output buffer is poisoned with NaN first and NaN fails any comparison.
use anyhow::Result;
use ponder::backend::cpu::Cpu;
use ponder::backend::{AttnDims, Backend, Batch, KvShape, SeqSlice, TalkHead, WeightData};
use ponder::flops::Ledger;
use ponder::kv::PageCopy;
use ponder::sample::Sampling;
use std::borrow::Cow;

const CPU_TOL: f32 = 1e-4;
#[cfg(feature = "cuda")]
const GPU_TOL: f32 = 2e-2;

/// What a body needs beyond the trait: the CUDA-only op (None on the CPU).
trait Dual: Backend + Sized {
    #[allow(clippy::too_many_arguments)]
    fn thought(
        &self,
        _q: &Self::Tensor,
        _kv: &Self::Kv,
        _pages: &[u32],
        _l: usize,
        _depth: usize,
        _window: Option<usize>,
        _dims: AttnDims,
    ) -> Option<Result<Vec<f32>>> {
        None
    }
}

impl Dual for Cpu {}

#[cfg(feature = "cuda")]
impl Dual for ponder::backend::cuda::Cuda {
    fn thought(
        &self,
        q: &Self::Tensor,
        kv: &Self::Kv,
        pages: &[u32],
        l: usize,
        depth: usize,
        window: Option<usize>,
        dims: AttnDims,
    ) -> Option<Result<Vec<f32>>> {
        Some(
            self.thought_attention(q, kv, 0, pages, l, depth, window, dims)
                .and_then(|t| self.to_host(&t)),
        )
    }
}

macro_rules! dual_test {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[test]
            fn cpu() {
                let be = ponder::backend::cpu::Cpu::new();
                super::$body(&be, super::CPU_TOL).unwrap();
            }
            #[test]
            fn cuda() {
                #[cfg(feature = "cuda")]
                {
                    if !ponder::backend::cuda::gpu_available() {
                        println!("skipped: no CUDA GPU");
                        return;
                    }
                    let be = ponder::backend::cuda::Cuda::new(0).unwrap();
                    be.set_poison(true);
                    super::$body(&be, super::GPU_TOL).unwrap();
                    be.synchronize().unwrap();
                }
                #[cfg(not(feature = "cuda"))]
                println!("skipped: no CUDA GPU (built without the cuda feature)");
            }
            /// The CUDA backend's host code and kernels on the CPU (docs/cuda-emulator.md).
            #[test]
            fn cuda_emu() {
                #[cfg(feature = "cuda")]
                {
                    let be = ponder::backend::cuda::Cuda::emulated().unwrap();
                    be.set_poison(true);
                    super::$body(&be, super::GPU_TOL).unwrap();
                }
                #[cfg(not(feature = "cuda"))]
                println!("skipped: the CUDA emulator is built with the cuda feature");
            }
            /// The same, each block's threads run last first between barriers: a read of
            /// another thread's write without a barrier between them gives wrong results in
            /// one of the two orders.
            #[test]
            fn cuda_emu_reverse() {
                #[cfg(feature = "cuda")]
                {
                    use ponder::backend::cuda::{Cuda, EmuOrder};
                    let be = Cuda::emulated_in(EmuOrder::Reverse).unwrap();
                    be.set_poison(true);
                    super::$body(&be, super::GPU_TOL).unwrap();
                }
                #[cfg(not(feature = "cuda"))]
                println!("skipped: the CUDA emulator is built with the cuda feature");
            }
        }
    )*};
}

dual_test!(
    op_embed,
    op_rms_norm,
    op_add_rms_norm,
    op_linear,
    op_silu_mul,
    op_add,
    op_gather_rows,
    op_rope_and_prefill_attention,
    op_decode_attention_long,
    op_tree_attention,
    op_copy_pages,
    op_thought_mask_attention,
    op_sampling,
    op_talk_mix,
    model_forward_tiny,
);

// ---------------------------------------------------------------- helpers

fn rnd(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    ponder::rng::fill_uniform(seed ^ 0x5eed_1234_abcd, n, bound)
}

fn bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect()
}

fn weight<B: Backend>(be: &B, shape: &[usize], v: &[f32]) -> B::Weight {
    be.weight(shape, WeightData::Host(Cow::Owned(bf16(v))))
        .unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
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

fn ledger<B: Backend>(be: &B) -> Ledger {
    be.ledger().lock().unwrap().clone()
}

fn clear<B: Backend>(be: &B) {
    be.ledger().lock().unwrap().clear();
}

/// Useful FLOPs agree op by op with the CPU's; ops the CPU lacks count none.
fn assert_same_useful(got: &Ledger, cpu: &Ledger) {
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
fn with_flops<B: Backend, T>(
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

fn naive_rms(x: &[f32], d: usize, w: &[f32], eps: f32) -> Vec<f32> {
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

fn naive_linear(x: &[f32], k: usize, w: &[f32], m: usize) -> Vec<f32> {
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
fn rope_row(row: &mut [f32], hd: usize, pos: usize, theta: f32) {
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
fn naive_attn_row(q: &[f32], k: &[f32], v: &[f32], keys: &[usize], dims: AttnDims) -> Vec<f32> {
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

fn dims(hq: usize, hk: usize, hd: usize) -> AttnDims {
    AttnDims {
        heads: hq,
        kv_heads: hk,
        head_dim: hd,
        rope_theta: 10000.0,
    }
}

// ---------------------------------------------------------------- elementwise ops

fn op_embed<B: Dual>(be: &B, tol: f32) -> Result<()> {
    let (vocab, d) = (50, 24);
    let table = bf16(&rnd(1, vocab * d, 1.0));
    let ids: Vec<u32> = vec![3, 0, 49, 3, 17];
    let got = with_flops(
        be,
        |b| {
            let t = weight(b, &[vocab, d], &table);
            b.to_host(&b.embed(&t, &ids)?)
        },
        |c| c.embed(&weight(c, &[vocab, d], &table), &ids).map(|_| ()),
    )?;
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect();
    assert_close(&got, &want, tol.min(1e-6), "embed");
    let t = weight(be, &[vocab, d], &table);
    assert!(be.embed(&t, &[50]).is_err(), "an id past the vocabulary");
    Ok(())
}

fn op_rms_norm<B: Dual>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (5, 40);
    let x = rnd(2, n * d, 3.0);
    let w = bf16(&rnd(3, d, 1.0).iter().map(|v| 1.0 + v).collect::<Vec<_>>());
    let run = |b: &B| -> Result<Vec<f32>> {
        let xt = b.tensor(n, d, &x)?;
        b.to_host(&b.rms_norm(&xt, &weight(b, &[d], &w), 1e-5)?)
    };
    let got = with_flops(be, run, |c| {
        c.rms_norm(&c.tensor(n, d, &x)?, &weight(c, &[d], &w), 1e-5)
            .map(|_| ())
    })?;
    assert_close(&got, &naive_rms(&x, d, &w, 1e-5), tol, "rms_norm");
    Ok(())
}

fn op_add_rms_norm<B: Dual>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (4, 72);
    let (r, x) = (rnd(4, n * d, 2.0), rnd(5, n * d, 2.0));
    let w = bf16(&rnd(6, d, 1.0));
    let run = |b: &B| -> Result<(Vec<f32>, Vec<f32>)> {
        let mut rt = b.tensor(n, d, &r)?;
        let out = b.add_rms_norm(&mut rt, &b.tensor(n, d, &x)?, &weight(b, &[d], &w), 1e-6)?;
        Ok((b.to_host(&out)?, b.to_host(&rt)?))
    };
    let (got, res) = with_flops(be, run, |c| {
        let mut rt = c.tensor(n, d, &r)?;
        c.add_rms_norm(&mut rt, &c.tensor(n, d, &x)?, &weight(c, &[d], &w), 1e-6)
            .map(|_| ())
    })?;
    let sum: Vec<f32> = r.iter().zip(&x).map(|(a, b)| a + b).collect();
    assert_close(&res, &sum, 1e-6, "add_rms_norm residual");
    assert_close(&got, &naive_rms(&sum, d, &w, 1e-6), tol, "add_rms_norm");
    Ok(())
}

fn op_linear<B: Dual>(be: &B, tol: f32) -> Result<()> {
    for (n, k, m) in [(7, 48, 33), (1, 64, 130), (70, 16, 8)] {
        let x = rnd(7 + n as u64, n * k, 1.0);
        let w = bf16(&rnd(8 + m as u64, m * k, 0.5));
        let run = |b: &B| -> Result<Vec<f32>> {
            b.to_host(&b.linear(&b.tensor(n, k, &x)?, &weight(b, &[m, k], &w))?)
        };
        let got = with_flops(be, run, |c| {
            c.linear(&c.tensor(n, k, &x)?, &weight(c, &[m, k], &w))
                .map(|_| ())
        })?;
        assert_close(&got, &naive_linear(&x, k, &w, m), tol, "linear");
    }
    Ok(())
}

fn op_silu_mul<B: Dual>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (6, 130);
    let (g, u) = (rnd(9, n * d, 6.0), rnd(10, n * d, 2.0));
    let run = |b: &B| -> Result<Vec<f32>> {
        b.to_host(&b.silu_mul(&b.tensor(n, d, &g)?, &b.tensor(n, d, &u)?)?)
    };
    let got = with_flops(be, run, |c| {
        c.silu_mul(&c.tensor(n, d, &g)?, &c.tensor(n, d, &u)?)
            .map(|_| ())
    })?;
    let want: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| (*g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64) as f32)
        .collect();
    assert_close(&got, &want, tol, "silu_mul");
    Ok(())
}

fn op_add<B: Dual>(be: &B, _tol: f32) -> Result<()> {
    let (n, d) = (3, 50);
    let (a, b) = (rnd(11, n * d, 1.0), rnd(12, n * d, 1.0));
    let got = with_flops(
        be,
        |be| {
            let mut at = be.tensor(n, d, &a)?;
            be.add(&mut at, &be.tensor(n, d, &b)?)?;
            be.to_host(&at)
        },
        |c| c.add(&mut c.tensor(n, d, &a)?, &c.tensor(n, d, &b)?),
    )?;
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_close(&got, &want, 1e-6, "add");
    Ok(())
}

fn op_gather_rows<B: Dual>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (9, 20);
    let x = rnd(13, n * d, 1.0);
    let rows = [8usize, 0, 3, 3];
    let got = with_flops(
        be,
        |b| b.to_host(&b.gather_rows(&b.tensor(n, d, &x)?, &rows)?),
        |c| c.gather_rows(&c.tensor(n, d, &x)?, &rows).map(|_| ()),
    )?;
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| x[r * d..(r + 1) * d].to_vec())
        .collect();
    assert_close(&got, &want, 1e-6, "gather_rows");
    // bf16 activations (a norm's output) gather too.
    let w = weight(be, &[d], &vec![1.0; d]);
    let h = be.rms_norm(&be.tensor(n, d, &x)?, &w, 1e-5)?;
    let g = be.to_host(&be.gather_rows(&h, &rows)?)?;
    let all = be.to_host(&h)?;
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| all[r * d..(r + 1) * d].to_vec())
        .collect();
    assert_close(&g, &want, tol.min(1e-6), "gather_rows (norm output)");
    assert!(be.gather_rows(&h, &[9]).is_err());
    Ok(())
}

// ---------------------------------------------------------------- RoPE, KV and attention

/// An attention scenario: batches that only write K/V (`fills`, in order), then one batch
/// (`main`) that writes its K/V and attends. Entries are (pos_start, n_tokens, page table).
struct Scenario {
    d: AttnDims,
    ps: usize,
    window: Option<usize>,
    pages: usize,
    fills: Vec<Vec<(usize, usize, Vec<u32>)>>,
    main: Vec<(usize, usize, Vec<u32>)>,
    seed: u64,
}

fn batch_of(seqs: &[(usize, usize, Vec<u32>)], ps: usize, window: Option<usize>) -> Batch {
    let mut t = 0;
    let seqs = seqs
        .iter()
        .map(|(p, n, pages)| {
            let s = SeqSlice {
                token_start: t,
                n_tokens: *n,
                pos_start: *p,
                pages: pages.clone(),
            };
            t += n;
            s
        })
        .collect();
    Batch {
        seqs,
        page_size: ps,
        sliding_window: window,
    }
}

const LAYER: usize = 1;

/// Runs the scenario on `be`: returns (q after RoPE, attention output, ledger of `main`).
fn run_scenario<B: Backend>(be: &B, sc: &Scenario) -> Result<(Vec<f32>, Vec<f32>, Ledger)> {
    let d = sc.d;
    let (qd, kd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let mut kv = be.alloc_kv(KvShape {
        layers: 2,
        pages: sc.pages,
        page_size: sc.ps,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
    })?;
    let mut seed = sc.seed;
    let mut step = |seqs: &[(usize, usize, Vec<u32>)], attend: bool| -> Result<_> {
        let b = batch_of(seqs, sc.ps, sc.window);
        let n = b.n_tokens();
        seed += 3;
        let mut q = be.tensor(n, qd, &rnd(seed, n * qd, 1.0))?;
        let k = be.tensor(n, kd, &rnd(seed + 1, n * kd, 1.0))?;
        let v = be.tensor(n, kd, &rnd(seed + 2, n * kd, 1.0))?;
        clear(be);
        be.rope_store_kv(&mut q, &k, &v, &mut kv, LAYER, &b, d)?;
        if !attend {
            return Ok(None);
        }
        let out = be.attention(&q, &kv, LAYER, &b, d)?;
        Ok(Some((be.to_host(&q)?, be.to_host(&out)?)))
    };
    for f in &sc.fills {
        step(f, false)?;
    }
    let (q, out) = step(&sc.main, true)?.expect("attended");
    Ok((q, out, ledger(be)))
}

/// The same scenario on the host, in f64: (rotated q, attention output).
fn reference(sc: &Scenario) -> (Vec<f32>, Vec<f32>) {
    let d = sc.d;
    let (hd, qd, kd) = (d.head_dim, d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let mut slots: Vec<Option<(Vec<f32>, Vec<f32>)>> = vec![None; sc.pages * sc.ps];
    let slot = |pages: &[u32], p: usize| pages[p / sc.ps] as usize * sc.ps + p % sc.ps;
    let mut seed = sc.seed;
    let mut result = (vec![], vec![]);
    let all: Vec<_> = sc
        .fills
        .iter()
        .map(|f| (f, false))
        .chain([(&sc.main, true)])
        .collect();
    for (seqs, attend) in all {
        let n: usize = seqs.iter().map(|s| s.1).sum();
        seed += 3;
        let (mut q, k, v) = (
            rnd(seed, n * qd, 1.0),
            rnd(seed + 1, n * kd, 1.0),
            rnd(seed + 2, n * kd, 1.0),
        );
        let mut t = 0;
        for (p0, cnt, pages) in seqs {
            for i in 0..*cnt {
                let pos = p0 + i;
                rope_row(
                    &mut q[(t + i) * qd..(t + i + 1) * qd],
                    hd,
                    pos,
                    d.rope_theta,
                );
                let mut kr = k[(t + i) * kd..(t + i + 1) * kd].to_vec();
                rope_row(&mut kr, hd, pos, d.rope_theta);
                slots[slot(pages, pos)] = Some((kr, v[(t + i) * kd..(t + i + 1) * kd].to_vec()));
            }
            t += cnt;
        }
        if !attend {
            continue;
        }
        let b = batch_of(seqs, sc.ps, sc.window);
        let mut out = Vec::with_capacity(n * qd);
        for (p0, cnt, pages) in seqs {
            for i in 0..*cnt {
                let pos = p0 + i;
                let first = b.first_visible(pos);
                let (mut ks, mut vs) = (vec![], vec![]);
                for j in first..=pos {
                    let (kr, vr) = slots[slot(pages, j)].as_ref().expect("key written");
                    ks.extend_from_slice(kr);
                    vs.extend_from_slice(vr);
                }
                let keys: Vec<usize> = (0..=pos - first).collect();
                let row = out.len() / qd;
                out.extend(naive_attn_row(
                    &q[row * qd..(row + 1) * qd],
                    &ks,
                    &vs,
                    &keys,
                    d,
                ));
            }
        }
        result = (q, out);
    }
    result
}

fn check_scenario<B: Backend>(be: &B, tol: f32, sc: &Scenario, what: &str) -> Result<()> {
    let (q, out, l) = run_scenario(be, sc)?;
    let (_, _, lc) = run_scenario(&Cpu::new(), sc)?;
    assert_same_useful(&l, &lc);
    let (wq, wout) = reference(sc);
    assert_close(&q, &wq, tol.max(1e-5), &format!("{what}: rotated q"));
    assert_close(&out, &wout, tol, &format!("{what}: attention"));
    Ok(())
}

/// Page ids handed out in a scrambled order, so that tables are never contiguous.
struct Pages(usize);
impl Pages {
    const N: usize = 400;
    fn take(&mut self, n: usize) -> Vec<u32> {
        let v = (self.0..self.0 + n).map(|i| ((i * 37 + 11) % Self::N) as u32);
        self.0 += n;
        v.collect()
    }
}

fn op_rope_and_prefill_attention<B: Dual>(be: &B, tol: f32) -> Result<()> {
    for (hq, hk, hd, ps, window) in [
        (4, 2, 16, 8, None),
        (6, 2, 64, 16, Some(20)),
        (8, 8, 32, 4, None),
        (8, 2, 128, 16, None),
    ] {
        let mut pg = Pages(0);
        let (a, b, c) = (pg.take(100usize.div_ceil(ps)), pg.take(1), pg.take(1));
        let sc = Scenario {
            d: dims(hq, hk, hd),
            ps,
            window,
            pages: Pages::N,
            fills: vec![vec![(0, 30, a.clone())]],
            // A continued prefill over two query tiles, a fresh prompt, a first token, nothing.
            main: vec![(30, 70, a), (0, 5.min(ps), b), (0, 1, c), (0, 0, vec![])],
            seed: 100 + hd as u64,
        };
        check_scenario(
            be,
            tol,
            &sc,
            &format!("prefill hq{hq} hk{hk} hd{hd} ps{ps}"),
        )?;
    }
    Ok(())
}

fn op_decode_attention_long<B: Dual>(be: &B, tol: f32) -> Result<()> {
    for window in [None, Some(257)] {
        let mut pg = Pages(0);
        let (a, b) = (pg.take(63), pg.take(19));
        let sc = Scenario {
            d: dims(8, 2, 64),
            ps: 16,
            window,
            pages: Pages::N,
            fills: vec![vec![(0, 1000, a.clone()), (0, 300, b.clone())]],
            main: vec![(1000, 1, a), (300, 1, b)],
            seed: 7,
        };
        check_scenario(be, tol, &sc, &format!("decode window {window:?}"))?;
    }
    Ok(())
}

fn op_tree_attention<B: Dual>(be: &B, tol: f32) -> Result<()> {
    for (hq, hk, hd) in [(8, 2, 64), (16, 4, 128), (4, 2, 16)] {
        let mut pg = Pages(0);
        let shared = pg.take(9); // 144 keys, every page full
        let own: Vec<Vec<u32>> = (0..3)
            .map(|_| [shared.clone(), pg.take(2)].concat())
            .collect();
        let other = pg.take(3);
        let sc = Scenario {
            d: dims(hq, hk, hd),
            ps: 16,
            window: None,
            pages: Pages::N,
            fills: vec![
                vec![(0, 144, shared.clone()), (0, 40, other.clone())],
                vec![(144, 5, own[1].clone()), (144, 20, own[2].clone())],
            ],
            main: vec![
                (144, 1, own[0].clone()),
                (0, 3, other.clone()),
                (149, 1, own[1].clone()),
                (164, 1, own[2].clone()),
            ],
            seed: 11,
        };
        check_scenario(be, tol, &sc, &format!("tree hq{hq} hk{hk} hd{hd}"))?;
    }
    Ok(())
}

fn op_copy_pages<B: Dual>(be: &B, tol: f32) -> Result<()> {
    let d = dims(4, 2, 16);
    let (qd, kd) = (64, 32);
    fn run<B: Backend>(be: &B, d: AttnDims, qd: usize, kd: usize) -> Result<Vec<f32>> {
        let mut kv = be.alloc_kv(KvShape {
            layers: 2,
            pages: 8,
            page_size: 8,
            kv_heads: 2,
            head_dim: 16,
        })?;
        let fill = batch_of(&[(0, 12, vec![2, 3])], 8, None);
        let mut q = be.tensor(12, qd, &rnd(31, 12 * qd, 1.0))?;
        let (k, v) = (rnd(32, 12 * kd, 1.0), rnd(33, 12 * kd, 1.0));
        be.rope_store_kv(
            &mut q,
            &be.tensor(12, kd, &k)?,
            &be.tensor(12, kd, &v)?,
            &mut kv,
            LAYER,
            &fill,
            d,
        )?;
        let copies = [
            PageCopy {
                src: 3,
                dst: 5,
                len: 4,
            },
            PageCopy {
                src: 2,
                dst: 6,
                len: 8,
            },
        ];
        be.copy_pages(&mut kv, &copies)?;
        // The same next token on the original pages and on the copies.
        let b = batch_of(&[(12, 1, vec![2, 3]), (12, 1, vec![6, 5])], 8, None);
        let qr = rnd(34, qd, 1.0);
        let (kr, vr) = (rnd(35, kd, 1.0), rnd(36, kd, 1.0));
        let two = |x: &[f32]| [x, x].concat();
        let mut q = be.tensor(2, qd, &two(&qr))?;
        be.rope_store_kv(
            &mut q,
            &be.tensor(2, kd, &two(&kr))?,
            &be.tensor(2, kd, &two(&vr))?,
            &mut kv,
            LAYER,
            &b,
            d,
        )?;
        be.to_host(&be.attention(&q, &kv, LAYER, &b, d)?)
    }
    clear(be);
    let got = run(be, d, qd, kd)?;
    let cpu = Cpu::new();
    let want = run(&cpu, d, qd, kd)?;
    assert_same_useful(&ledger(be), &ledger(&cpu));
    assert_eq!(got[..qd], got[qd..], "attention over copied pages differs");
    assert_close(&got[..qd], &want[..qd], tol, "copy_pages");
    Ok(())
}

/// Quiet-STaR's thought-diagonal mask. Keys of depth d' and position j lie at d'·L + j.
/// Everywhere: the naive predicate reference equals the trait's attention over page-size-1
/// tables that list exactly the allowed keys (the incremental view). With CUDA: the
/// diagonal-mask kernel equals the reference, with and without a sliding window.
fn op_thought_mask_attention<B: Dual>(be: &B, tol: f32) -> Result<()> {
    for (hq, hk, hd, l, depth) in [(4, 2, 16, 70, 3), (8, 2, 64, 33, 1)] {
        let d = dims(hq, hk, hd);
        let (qd, kd, n) = (hq * hd, hk * hd, (depth + 1) * l);
        let mut kv = be.alloc_kv(KvShape {
            layers: 1,
            pages: n,
            page_size: 1,
            kv_heads: hk,
            head_dim: hd,
        })?;
        let all: Vec<u32> = (0..n as u32).collect();
        let fill = batch_of(&[(0, n, all.clone())], 1, None);
        let (k, v) = (rnd(41, n * kd, 1.0), rnd(42, n * kd, 1.0));
        let mut scratch = be.tensor(n, qd, &vec![0.0; n * qd])?;
        be.rope_store_kv(
            &mut scratch,
            &be.tensor(n, kd, &k)?,
            &be.tensor(n, kd, &v)?,
            &mut kv,
            0,
            &fill,
            d,
        )?;
        let mut kh = k.clone();
        for (p, r) in kh.chunks_mut(kd).enumerate() {
            rope_row(r, hd, p, d.rope_theta);
        }
        let q = rnd(43, l * qd, 1.0);
        let reference = |window: Option<usize>| -> Vec<f32> {
            let mut out = Vec::new();
            for i in 0..l {
                let first = window.map_or(0, |w| (i + 1).saturating_sub(w));
                let mut keys: Vec<usize> = (first..=i).collect();
                keys.extend((1..=depth).map(|dd| dd * l + i));
                out.extend(naive_attn_row(&q[i * qd..(i + 1) * qd], &kh, &v, &keys, d));
            }
            out
        };
        // The incremental view through the trait.
        let seqs: Vec<(usize, usize, Vec<u32>)> = (0..l)
            .map(|i| {
                let mut t: Vec<u32> = (0..=i as u32).collect();
                t.extend((1..=depth).map(|dd| (dd * l + i) as u32));
                (i + depth, 1, t)
            })
            .collect();
        let b = batch_of(&seqs, 1, None);
        let qt = be.tensor(l, qd, &q)?;
        clear(be);
        let inc = be.to_host(&be.attention(&qt, &kv, 0, &b, d)?)?;
        let inc_flops = ledger(be).total().useful_flops;
        assert_close(
            &inc,
            &reference(None),
            tol,
            "thought mask: incremental view",
        );
        for window in [None, Some(20)] {
            clear(be);
            if let Some(got) = be.thought(&qt, &kv, &all, l, depth, window, d) {
                assert_close(&got?, &reference(window), tol, "thought-diagonal kernel");
                if window.is_none() {
                    assert_eq!(ledger(be).total().useful_flops, inc_flops);
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- sampling

/// src/sample.rs's semantics written out plainly: sort, cut, walk.
fn naive_sample(l: &[f32], limit: usize, s: Sampling, u: f64) -> u32 {
    let l = &l[..limit];
    let argmax = || {
        let mut b = 0;
        for i in 0..l.len() {
            if l[i] > l[b] {
                b = i;
            }
        }
        b as u32
    };
    if s.temperature <= 0.0 || l.len() <= 1 {
        return argmax();
    }
    let mx = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = l
        .iter()
        .map(|x| ((x - mx) as f64 / s.temperature as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..l.len()).collect();
    if s.top_p < 1.0 {
        order.sort_by(|&a, &b| w[b].partial_cmp(&w[a]).unwrap().then(a.cmp(&b)));
        let target = s.top_p.max(0.0) as f64 * total;
        let mut acc = 0.0;
        let mut keep = 0;
        while keep < order.len() {
            acc += w[order[keep]];
            keep += 1;
            if acc >= target {
                break;
            }
        }
        order.truncate(keep);
    }
    let mass: f64 = order.iter().map(|&i| w[i]).sum();
    let mut r = u * mass;
    for &i in &order {
        r -= w[i];
        if r < 0.0 {
            return i as u32;
        }
    }
    *order
        .iter()
        .rev()
        .find(|&&i| w[i] > 0.0)
        .unwrap_or(&order[0]) as u32
}

fn op_sampling<B: Dual>(be: &B, _tol: f32) -> Result<()> {
    // A row narrower than the device's 1024-thread block, and one wider (each thread then
    // scans several ids, so its own tie rule matters too).
    sampling_case(be, (5, 300, 290), 4.0, 12)?;
    sampling_case(be, (2, 3000, 2900), 0.5, 3)
}

/// `shape` = (rows, vocabulary, limit); logits in [-6, 6] on a grid of 1/`grid`.
fn sampling_case<B: Dual>(
    be: &B,
    (rows, v, limit): (usize, usize, usize),
    grid: f32,
    draws: u64,
) -> Result<()> {
    // Logits on a coarse grid: many exact ties, which the id order must break.
    let mut logits: Vec<f32> = rnd(51, rows * v, 6.0)
        .iter()
        .map(|x| (x * grid).round() / grid)
        .collect();
    logits[(rows - 1) * v + 7] = 40.0; // a dominant token
    logits[(rows / 2) * v + limit + 5] = 90.0; // past the limit: never chosen
    let t = be.tensor(rows, v, &logits)?;
    let settings = [
        Sampling::GREEDY,
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
        },
        Sampling {
            temperature: 0.7,
            top_p: 0.9,
        },
        Sampling {
            temperature: 1.3,
            top_p: 0.5,
        },
        Sampling {
            temperature: 1.0,
            top_p: 1e-4,
        },
    ];
    for (si, s) in settings.iter().enumerate() {
        for draw in 0..draws {
            let u: Vec<f64> = (0..rows as u64)
                .map(|r| ponder::rng::uniform(5, r * 16 + si as u64, draw))
                .collect();
            let cpu: Vec<u32> = (0..rows)
                .map(|r| ponder::sample::sample(&logits[r * v..(r + 1) * v], limit, *s, u[r]).0)
                .collect();
            for r in 0..rows {
                let want = naive_sample(&logits[r * v..(r + 1) * v], limit, *s, u[r]);
                assert_eq!(cpu[r], want, "CPU sampler vs reference, {s:?} row {r}");
                assert!((cpu[r] as usize) < limit);
            }
            // Backend::sample_rows: on the host for the CPU, on the device for CUDA.
            let got = be.sample_rows(&t, limit, *s, &u)?;
            assert_eq!(got, cpu, "{} sampler vs CPU, {s:?} draw {draw}", be.name());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- Quiet-STaR mixing

fn op_talk_mix<B: Dual>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (3, 32);
    let (hb, he) = (rnd(61, n * d, 1.0), rnd(62, n * d, 1.0));
    let p = |s, len, b| bf16(&rnd(s, len, b));
    let (w1, b1, w2, b2, w3) = (
        p(63, d * 2 * d, 0.2),
        p(64, d, 0.1),
        p(65, d * d, 0.3),
        p(66, d, 0.1),
        p(67, d, 0.3),
    );
    let run = |be: &B| -> Result<Vec<f32>> {
        let head = TalkHead::<B> {
            w1: weight(be, &[d, 2 * d], &w1),
            b1: weight(be, &[d], &b1),
            w2: weight(be, &[d, d], &w2),
            b2: weight(be, &[d], &b2),
            w3: weight(be, &[1, d], &w3),
        };
        let out = be.talk_mix(&be.tensor(n, d, &hb)?, &be.tensor(n, d, &he)?, &head)?;
        be.to_host(&out)
    };
    clear(be);
    let got = run(be)?;
    let cpu = Cpu::new();
    let head = TalkHead::<Cpu> {
        w1: weight(&cpu, &[d, 2 * d], &w1),
        b1: weight(&cpu, &[d], &b1),
        w2: weight(&cpu, &[d, d], &w2),
        b2: weight(&cpu, &[d], &b2),
        w3: weight(&cpu, &[1, d], &w3),
    };
    cpu.talk_mix(&cpu.tensor(n, d, &hb)?, &cpu.tensor(n, d, &he)?, &head)?;
    assert_same_useful(&ledger(be), &ledger(&cpu));
    let mut want = vec![0.0f32; n * d];
    for r in 0..n {
        let cat = [&hb[r * d..(r + 1) * d], &he[r * d..(r + 1) * d]].concat();
        let relu_b = |x: Vec<f32>, b: &[f32]| -> Vec<f32> {
            x.iter().zip(b).map(|(x, b)| (x + b).max(0.0)).collect()
        };
        let a = relu_b(naive_linear(&cat, 2 * d, &w1, d), &b1);
        let h = relu_b(naive_linear(&a, d, &w2, d), &b2);
        let w = naive_linear(&h, d, &w3, 1)[0];
        for i in 0..d {
            want[r * d + i] = (1.0 - w) * hb[r * d + i] + w * he[r * d + i];
        }
    }
    assert_close(&got, &want, tol, "talk_mix");
    Ok(())
}

// ---------------------------------------------------------------- the whole model

/// synthetic:tiny with its weights rounded to bf16 (what the CUDA backend holds).
struct Bf16Src(ponder::model::llama::Synthetic);
impl ponder::model::llama::ParamSource for Bf16Src {
    fn param(&self, name: &str, shape: &[usize]) -> Result<WeightData<'_>> {
        let w = self.0.param(name, shape)?;
        Ok(WeightData::Host(Cow::Owned(bf16(w.as_slice()))))
    }
    fn has(&self, name: &str) -> bool {
        self.0.has(name)
    }
}

/// The forward pass written out plainly for one sequence: logits and final hidden state of
/// its last token.
fn naive_forward(
    cfg: &ponder::model::config::Config,
    src: &Bf16Src,
    ids: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    use ponder::model::llama::ParamSource;
    let get = |n: &str, s: &[usize]| src.param(n, s).unwrap().as_slice().to_vec();
    let (d, f, v, n) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.vocab_size,
        ids.len(),
    );
    let (qd, kd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let ad = dims(cfg.num_attention_heads, cfg.num_key_value_heads, hd);
    let emb = get("model.embed_tokens.weight", &[v, d]);
    let mut x: Vec<f32> = ids
        .iter()
        .flat_map(|&i| emb[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect();
    for l in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let h = naive_rms(
            &x,
            d,
            &get(&p("input_layernorm.weight"), &[d]),
            cfg.rms_norm_eps,
        );
        let mut q = naive_linear(&h, d, &get(&p("self_attn.q_proj.weight"), &[qd, d]), qd);
        let mut k = naive_linear(&h, d, &get(&p("self_attn.k_proj.weight"), &[kd, d]), kd);
        let vv = naive_linear(&h, d, &get(&p("self_attn.v_proj.weight"), &[kd, d]), kd);
        for t in 0..n {
            rope_row(&mut q[t * qd..(t + 1) * qd], hd, t, cfg.rope_theta);
            rope_row(&mut k[t * kd..(t + 1) * kd], hd, t, cfg.rope_theta);
        }
        let mut a = Vec::with_capacity(n * qd);
        for t in 0..n {
            let keys: Vec<usize> = (0..=t).collect();
            a.extend(naive_attn_row(&q[t * qd..(t + 1) * qd], &k, &vv, &keys, ad));
        }
        let o = naive_linear(&a, qd, &get(&p("self_attn.o_proj.weight"), &[d, qd]), d);
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        let h = naive_rms(
            &x,
            d,
            &get(&p("post_attention_layernorm.weight"), &[d]),
            cfg.rms_norm_eps,
        );
        let g = naive_linear(&h, d, &get(&p("mlp.gate_proj.weight"), &[f, d]), f);
        let u = naive_linear(&h, d, &get(&p("mlp.up_proj.weight"), &[f, d]), f);
        let m: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let dn = naive_linear(&m, f, &get(&p("mlp.down_proj.weight"), &[d, f]), d);
        x.iter_mut().zip(&dn).for_each(|(x, o)| *x += o);
    }
    let last = &x[(n - 1) * d..];
    let hidden = naive_rms(last, d, &get("model.norm.weight", &[d]), cfg.rms_norm_eps);
    let head = get("lm_head.weight", &[v, d]);
    (naive_linear(&hidden, d, &head, v), hidden)
}

/// Prefill of two prompts, a fork of the first into three branches (which share four full
/// pages: the tree path on CUDA), and two decode steps; all logits and hidden states against
/// the CPU backend, the second prompt's against the plain forward pass, and the useful FLOPs
/// of the whole run against the CPU's.
fn model_forward_tiny<B: Dual>(be: &B, tol: f32) -> Result<()> {
    use ponder::generate::Runner;
    use ponder::model::config::Config;
    use ponder::model::llama::{Model, Synthetic};
    let cfg = Config::builtin("tiny")?;
    let src = Bf16Src(Synthetic { seed: 7 });
    let p1: Vec<u32> = (0..70).map(|i| (i * 13 % 500) as u32).collect();
    let p2: Vec<u32> = (0..9).map(|i| (i * 7 % 500 + 3) as u32).collect();
    fn run<B: Backend>(
        be: &B,
        cfg: &Config,
        src: &Bf16Src,
        p1: &[u32],
        p2: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        let m = Model::load(be, cfg.clone(), src)?;
        let mut r = Runner::new(be, &m, 64, 16)?;
        let (a, b) = (r.pool.create(), r.pool.create());
        let mut outs = Vec::new();
        let o = r.extend(&[(a, p1), (b, p2)])?;
        outs.push(be.to_host(&o.logits)?);
        outs.push(be.to_host(&o.hidden)?);
        let (kids, copies) = r.pool.fork(a, 3)?;
        r.copy_pages(&copies)?;
        for step in 0..2u32 {
            let toks: Vec<[u32; 1]> = (0..4).map(|i| [(i * 101 + step * 7 + 5) % 500]).collect();
            let mut items: Vec<(ponder::kv::SeqId, &[u32])> =
                kids.iter().zip(&toks).map(|(k, t)| (*k, &t[..])).collect();
            items.push((b, &toks[3][..]));
            let o = r.extend(&items)?;
            outs.push(be.to_host(&o.logits)?);
        }
        Ok(outs)
    }
    clear(be);
    let got = run(be, &cfg, &src, &p1, &p2)?;
    let cpu = Cpu::new();
    let want = run(&cpu, &cfg, &src, &p1, &p2)?;
    assert_same_useful(&ledger(be), &ledger(&cpu));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(g, w, tol.max(1e-4), &format!("forward output {i} vs CPU"));
    }
    let (logits, hidden) = naive_forward(&cfg, &src, &p2);
    let v = cfg.vocab_size;
    assert_close(
        &got[0][v..],
        &logits,
        tol.max(1e-4),
        "prompt 2 logits vs plain forward",
    );
    assert_close(
        &got[1][cfg.hidden_size..],
        &hidden,
        tol.max(1e-4),
        "prompt 2 hidden",
    );
    Ok(())
}
