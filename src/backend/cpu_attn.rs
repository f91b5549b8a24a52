//! RoPE with the KV write, and attention, on the CPU: the reference both backends' attention
//! is tested against (kept apart from cpu.rs, which holds the other forward ops). Every query
//! row sees the keys `Batch::visible` lists, so ordinary sequences and Quiet-STaR's thought
//! blocks go through the same loops.
use super::cpu::{angles, inv_freq, rotate_half, Cpu, CpuKv, CpuTensor, F32};
use super::cpu_math::{axpy, dot, dot4};
use super::{AttnDims, Batch};
use crate::flops::Counts;
use anyhow::{ensure, Result};
use rayon::prelude::*;

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
    // One task per (token, KV head): its query heads share every K/V row it reads.
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(u, o)| {
            let (t, g) = (u / hk, u % hk);
            let (si, vis) = who[t];
            let pages = &batch.seqs[si].pages;
            let at = |k: usize| {
                let j = vis.key(k);
                kv.at(layer, pages[j / ps] as usize * ps + j % ps) + g * hd
            };
            let mut scores = vec![0.0f32; vis.count()];
            for qh in 0..group {
                let h = g * group + qh;
                let qv = &q.data[t * q.cols + h * hd..t * q.cols + (h + 1) * hd];
                let key = |k: usize| {
                    let a = at(k);
                    &kv.k[a..a + hd]
                };
                // Four keys at a time (dot4 gives dot's bits), then the rest.
                let quads = scores.len() / 4 * 4;
                for i in (0..quads).step_by(4) {
                    let v = dot4(qv, [key(i), key(i + 1), key(i + 2), key(i + 3)]);
                    for (s, x) in scores[i..i + 4].iter_mut().zip(v) {
                        *s = x * scale;
                    }
                }
                for (i, s) in scores.iter_mut().enumerate().skip(quads) {
                    *s = dot(qv, key(i)) * scale;
                }
                let mx = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - mx).exp();
                    sum += *s;
                }
                let oh = &mut o[qh * hd..(qh + 1) * hd];
                for (k, s) in scores.iter().enumerate() {
                    let a = at(k);
                    axpy(oh, *s / sum, &kv.v[a..a + hd]);
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
