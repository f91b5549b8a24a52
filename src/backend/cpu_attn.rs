//! RoPE with the KV write, and attention, on the CPU: the reference both backends' attention
//! is tested against (kept apart from cpu.rs, which holds the other forward ops). Every query
//! row sees the keys `Batch::visible` lists, so ordinary sequences and Quiet-STaR's thought
//! blocks go through the same loops.
use super::cpu::{angles, inv_freq, rotate_half, Cpu, CpuKv, CpuTensor, F32};
use super::cpu_math::{axpy, dot_rows};
use super::{AttnDims, Batch};
use crate::flops::Counts;
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// Scores of `M` query heads (`q(0..M)`) against the keys whose rows start at `at`, scaled,
/// into `scores` (head-major: head i's at i·n..): each key row read once for all of them.
fn head_scores<'q, const M: usize>(
    scores: &mut [f32],
    q: impl Fn(usize) -> &'q [f32],
    k: &[f32],
    at: &[usize],
    hd: usize,
    scale: f32,
) {
    let n = at.len();
    let qs: [&[f32]; M] = std::array::from_fn(&q);
    for (j, &a) in at.iter().enumerate() {
        for (i, x) in dot_rows(qs, &k[a..a + hd]).into_iter().enumerate() {
            scores[i * n + j] = x * scale;
        }
    }
}

pub fn rope_store_kv(
    be: &Cpu,
    qkv: &CpuTensor,
    kv: &mut CpuKv,
    layer: usize,
    batch: &Batch,
    dims: AttnDims,
) -> Result<CpuTensor> {
    let hd = dims.head_dim;
    let nt = batch.n_tokens();
    crate::backend::check_rope_shapes((qkv.rows, qkv.cols), kv.shape, layer, batch, dims)?;
    let (qd, kd, w) = (dims.heads * hd, dims.kv_heads * hd, qkv.cols);
    let row = |t: usize| &qkv.data[t * w..(t + 1) * w];
    let pos = batch.positions();
    let slots = batch.slots()?;
    let inv = inv_freq(hd, dims.rope_theta);
    let mut q = vec![0.0f32; nt * qd];
    q.par_chunks_mut(qd.max(1))
        .zip(pos.par_iter())
        .enumerate()
        .for_each(|(t, (out, &p))| {
            out.copy_from_slice(&row(t)[..qd]);
            let (cos, sin) = angles(&inv, p);
            for h in out.chunks_mut(hd) {
                rotate_half(h, &cos, &sin);
            }
        });
    let cap = kv.shape.pages * kv.shape.page_size;
    for t in 0..nt {
        let slot = slots[t] as usize;
        ensure!(
            slot < cap,
            "rope: KV slot {slot} is outside the pool ({cap})"
        );
        let (cos, sin) = angles(&inv, pos[t]);
        let at = kv.at(layer, slot);
        let kr = &mut kv.k[at..at + kd];
        kr.copy_from_slice(&row(t)[qd..qd + kd]);
        for h in kr.chunks_mut(hd) {
            rotate_half(h, &cos, &sin);
        }
        kv.v[at..at + kd].copy_from_slice(&row(t)[qd + kd..]);
    }
    let (nt64, hq, hk, hd) = (
        nt as u64,
        dims.heads as u64,
        dims.kv_heads as u64,
        hd as u64,
    );
    // Reads qkv, writes q, k and v: the bytes of the in-place version it replaced.
    be.record(
        "rope_kv",
        Counts::exact(
            crate::backend::rope_useful_flops(nt, dims),
            nt64 * (2 * hq + 4 * hk) * hd * F32,
            nt64 * hd,
        ),
    );
    Ok(CpuTensor {
        rows: nt,
        cols: qd,
        data: q,
    })
}

pub fn attention(
    be: &Cpu,
    q: &CpuTensor,
    kv: &CpuKv,
    layer: usize,
    batch: &Batch,
    dims: AttnDims,
) -> Result<CpuTensor> {
    let (hd, hq, hk) = (dims.head_dim, dims.heads, dims.kv_heads);
    let group = hq / hk;
    let nt = batch.n_tokens();
    ensure!(
        q.rows == nt && q.cols == hq * hd,
        "attention: q is not [{nt}, heads*hd]"
    );
    ensure!(
        kv.shape.kv_heads == hk && kv.shape.head_dim == hd,
        "attention: KV shape differs"
    );
    batch.check()?;
    ensure!(
        kv.shape.page_size == batch.page_size
            && batch
                .seqs
                .iter()
                .flat_map(|s| &s.pages)
                .all(|&p| (p as usize) < kv.shape.pages),
        "attention: the batch's pages do not fit the KV pool"
    );
    // For every token row: its sequence and the keys it sees.
    let mut who = Vec::with_capacity(nt);
    for (si, s) in batch.seqs.iter().enumerate() {
        who.extend((0..s.n_tokens).map(|i| (si, batch.visible(s, i))));
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let ps = batch.page_size;
    let mut out = vec![0.0f32; nt * hq * hd];
    // One task per (token, KV head): its query heads share every K/V row it reads, each row
    // loaded once for all of them (dot_rows; the V rows added in key order for every head).
    // Every score and output keeps the bits of one head at a time: dot's for a score, and for
    // an output the same sequence of axpys.
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(u, o)| {
            let (t, g) = (u / hk, u % hk);
            let (si, vis) = who[t];
            let pages = &batch.seqs[si].pages;
            // Where each visible key's row of this KV head starts in the pool.
            let at: Vec<usize> = (0..vis.count())
                .map(|k| {
                    let j = vis.key(k);
                    kv.at(layer, pages[j / ps] as usize * ps + j % ps) + g * hd
                })
                .collect();
            let q_row = |qh: usize| {
                let h = g * group + qh;
                &q.data[t * q.cols + h * hd..t * q.cols + (h + 1) * hd]
            };
            let mut scores = vec![0.0f32; group * at.len()];
            let n = at.len();
            match group {
                1 => head_scores::<1>(&mut scores, q_row, &kv.k, &at, hd, scale),
                2 => head_scores::<2>(&mut scores, q_row, &kv.k, &at, hd, scale),
                3 => head_scores::<3>(&mut scores, q_row, &kv.k, &at, hd, scale),
                4 => head_scores::<4>(&mut scores, q_row, &kv.k, &at, hd, scale),
                _ => {
                    for (qh, s) in scores.chunks_mut(n.max(1)).enumerate() {
                        head_scores::<1>(s, |_| q_row(qh), &kv.k, &at, hd, scale);
                    }
                }
            }
            // Softmax per head, turned into each key's weight.
            for s in scores.chunks_mut(n.max(1)) {
                let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for x in s.iter_mut() {
                    *x = (*x - mx).exp();
                    sum += *x;
                }
                for x in s.iter_mut() {
                    *x /= sum;
                }
            }
            for (k, &a) in at.iter().enumerate() {
                let v = &kv.v[a..a + hd];
                for (qh, oh) in o.chunks_mut(hd).enumerate() {
                    axpy(oh, scores[qh * n + k], v);
                }
            }
        });
    let pairs = batch.attention_pairs();
    // K/V rows each sequence's queries read, together.
    let mut kv_rows = 0u64;
    for s in &batch.seqs {
        if s.n_tokens > 0 {
            let first = batch.visible(s, 0).first;
            kv_rows += (s.pos_start + s.n_tokens - first) as u64;
        }
    }
    let (hq, hk, hd) = (hq as u64, hk as u64, hd as u64);
    be.record(
        "attention",
        Counts::exact(
            crate::backend::attention_useful_flops(pairs, dims),
            (2 * nt as u64 * hq * hd + 2 * kv_rows * hk * hd) * F32,
            hq * pairs,
        ),
    );
    Ok(CpuTensor {
        rows: nt,
        cols: (hq * hd) as usize,
        data: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_cases as cases;

    /// Each query head alone, as attention computed it before heads shared their K/V rows:
    /// the score of every key by `dot`, the softmax, then one `axpy` per key in key order.
    fn each_head_alone(q: &CpuTensor, kv: &CpuKv, batch: &Batch, d: AttnDims) -> Vec<f32> {
        let (hd, group) = (d.head_dim, d.heads / d.kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let ps = batch.page_size;
        let mut out = vec![0.0f32; q.data.len()];
        let mut t = 0;
        for s in &batch.seqs {
            for i in 0..s.n_tokens {
                let vis = batch.visible(s, i);
                for h in 0..d.heads {
                    let at = |k: usize| {
                        let j = vis.key(k);
                        kv.at(0, s.pages[j / ps] as usize * ps + j % ps) + (h / group) * hd
                    };
                    let qv = &q.data[t * q.cols + h * hd..][..hd];
                    let mut sc: Vec<f32> = (0..vis.count())
                        .map(|k| super::super::cpu_math::dot(qv, &kv.k[at(k)..][..hd]) * scale)
                        .collect();
                    let mx = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f32;
                    for x in sc.iter_mut() {
                        *x = (*x - mx).exp();
                        sum += *x;
                    }
                    let o = &mut out[t * q.cols + h * hd..][..hd];
                    for (k, x) in sc.iter().enumerate() {
                        axpy(o, *x / sum, &kv.v[at(k)..][..hd]);
                    }
                }
                t += 1;
            }
        }
        out
    }

    #[test]
    fn heads_sharing_their_kv_rows_give_each_head_alones_bits() {
        let be = Cpu::new();
        // Groups of 1, 3 and 4 query heads have their own kernels; 5 goes head by head.
        for (heads, kv_heads) in [(2, 2), (6, 2), (8, 2), (10, 2)] {
            let d = AttnDims {
                heads,
                kv_heads,
                head_dim: 24,
                rope_theta: 10000.0,
            };
            let all = [
                cases::causal(&be, d, 37).unwrap(),
                cases::paged_decode(&be, d, 3, 70).unwrap(),
                cases::shared_prefix(&be, d, 3, 40, 5).unwrap(),
                cases::thought_block(&be, d, 9, 3).unwrap(),
            ];
            for c in &all {
                let got = c.run(&be, d).unwrap();
                let want = each_head_alone(&c.q, &c.kv, &c.batch, d);
                assert!(
                    got.data
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} with {heads} heads over {kv_heads}",
                    c.shape
                );
            }
        }
    }
}
