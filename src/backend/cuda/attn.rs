//! RoPE + KV write and attention on the device: which kernel serves which sequence, the work
//! lists the kernels run over, and the FLOP accounting of each launch.
//!
//! A batch's sequences with more than DECODE_ROWS new tokens go through attn_prefill (flash
//! attention over their pages), and so do Quiet-STaR's thought blocks (the diagonal mask, per
//! work item). Sequences with up to DECODE_ROWS new tokens are decoded by attn_decode, one item
//! per token, split over the keys; when two or more items start with the same pages (forked
//! branches, the tokens of one short extend) and share at least TREE_MIN keys, that prefix is
//! attended once for all of them by attn_prefix (tensor cores) and only each item's own keys
//! by attn_decode; attn_merge combines the parts by LSE.
//! The work lists depend only on the batch and the dims, so they are built and uploaded once
//! per forward pass and reused by every layer.
use super::executed;
use super::plan::{window_arg, BatchMeta, BK, BQ, DEC_THREADS};
use super::tensor::{CudaKv, CudaTensor, DType};
use super::{Arg, Cuda};
use crate::backend::{AttnDims, Batch};
use crate::flops::Counts;
use anyhow::{ensure, Result};

/// Mirrors `FlashParams` in kernels/flash.cuh.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct FlashParams {
    pub(crate) q: u64,
    pub(crate) kc: u64,
    pub(crate) vc: u64,
    pub(crate) pages: u64,
    pub(crate) items: u64,
    pub(crate) members: u64,
    pub(crate) out: u64,
    pub(crate) o_part: u64,
    pub(crate) lse_part: u64,
    pub(crate) layer_off: i64,
    pub(crate) scale: f32,
    pub(crate) q_stride: i32,
    pub(crate) hq: i32,
    pub(crate) hk: i32,
    pub(crate) group: i32,
    pub(crate) page_size: i32,
    pub(crate) window: i32,
    pub(crate) n_slots: i32,
}

/// Mirrors `DecodeParams` in kernels/attn_decode.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct DecodeParams {
    q: u64,
    kc: u64,
    vc: u64,
    pages: u64,
    items: u64,
    out: u64,
    o_part: u64,
    lse_part: u64,
    layer_off: i64,
    scale: f32,
    q_stride: i32,
    hq: i32,
    hk: i32,
    group: i32,
    hd: i32,
    page_size: i32,
    chunk: i32,
    n_slots: i32,
    direct: i32,
}

const _: () = assert!(std::mem::size_of::<FlashParams>() == 112);
const _: () = assert!(std::mem::size_of::<DecodeParams>() == 112);

impl Cuda {
    /// θ^(−2i/d) in f64 on the device, computed on the host exactly as the CPU backend does.
    fn inv_freq_ptr(&self, hd: usize, theta: f32) -> Result<u64> {
        let mut cache = self.inv_freq.lock().unwrap_or_else(|e| e.into_inner());
        let key = (hd, theta.to_bits());
        if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(key) {
            let v = crate::backend::cpu::inv_freq(hd, theta);
            e.insert(self.upload(&v)?);
        }
        Ok(cache[&key].ptr())
    }

    pub(super) fn rope_store_kv_impl(
        &self,
        qkv: &CudaTensor,
        kv: &mut CudaKv,
        layer: usize,
        batch: &Batch,
        dims: AttnDims,
    ) -> Result<CudaTensor> {
        let hd = dims.head_dim;
        let nt = batch.n_tokens();
        crate::backend::check_rope_shapes((qkv.rows, qkv.cols), kv.shape, layer, batch, dims)?;
        let meta = self.batch_meta(batch, dims)?;
        let cap = kv.shape.pages * kv.shape.page_size;
        ensure!(
            meta.max_slot <= cap,
            "rope: KV slot {} is outside the pool ({cap})",
            meta.max_slot - 1
        );
        let qkv = self.as_dtype(qkv, DType::F32)?;
        let q = self.f32_tensor(nt, dims.heads * hd)?;
        let inv = self.inv_freq_ptr(hd, dims.rope_theta)?;
        let smem = 4 * (hd + dims.kv_heads * hd);
        if nt > 0 {
            self.launch(
                "rope_store_kv",
                (nt as u32, 1, 1),
                128,
                smem as u32,
                &[
                    Arg::P(qkv.ptr()),
                    Arg::P(q.ptr()),
                    Arg::P(kv.k.ptr()),
                    Arg::P(kv.v.ptr()),
                    Arg::P(meta.pos.ptr()),
                    Arg::P(meta.slots.ptr()),
                    Arg::P(inv),
                    Arg::I(dims.heads as i32),
                    Arg::I(dims.kv_heads as i32),
                    Arg::I(hd as i32),
                    Arg::L(kv.layer_off(layer)),
                ],
            )?;
        }
        let (nt, hq, hk, hd) = (
            nt as u64,
            dims.heads as u64,
            dims.kv_heads as u64,
            hd as u64,
        );
        self.record(
            "rope_kv",
            Counts::exact(
                crate::backend::rope_useful_flops(nt as usize, dims),
                nt * (2 * hq + 2 * hk) * hd * 4 + 2 * nt * hk * hd * 2 + 8 * nt,
                nt * hd,
            ),
        );
        Ok(q)
    }

    pub(crate) fn flash_params(
        &self,
        q: &CudaTensor,
        kv: &CudaKv,
        layer: usize,
        dims: AttnDims,
    ) -> FlashParams {
        FlashParams {
            q: q.ptr(),
            kc: kv.k.ptr(),
            vc: kv.v.ptr(),
            layer_off: kv.layer_off(layer),
            scale: 1.0 / (dims.head_dim as f32).sqrt(),
            q_stride: q.cols as i32,
            hq: dims.heads as i32,
            hk: dims.kv_heads as i32,
            group: (dims.heads / dims.kv_heads) as i32,
            page_size: kv.shape.page_size as i32,
            ..Default::default()
        }
    }

    pub(super) fn attention_impl(
        &self,
        q: &CudaTensor,
        kv: &CudaKv,
        layer: usize,
        batch: &Batch,
        dims: AttnDims,
    ) -> Result<CudaTensor> {
        let (hq, hk, hd) = (dims.heads, dims.kv_heads, dims.head_dim);
        let nt = batch.n_tokens();
        ensure!(
            q.rows == nt && q.cols == hq * hd,
            "attention: q is not [{nt}, heads*hd]"
        );
        ensure!(
            kv.shape.kv_heads == hk && kv.shape.head_dim == hd && layer < kv.shape.layers,
            "attention: KV shape differs"
        );
        ensure!(
            kv.shape.page_size == batch.page_size,
            "attention: the batch's page size differs from the KV pool's"
        );
        let meta = self.batch_meta(batch, dims)?;
        ensure!(
            meta.max_slot <= kv.shape.pages * kv.shape.page_size,
            "attention: a page lies outside the KV pool"
        );
        let q = self.as_dtype(q, DType::F32)?;
        let out = self.bf16_tensor(nt, hq * hd)?;
        let mut fp = self.flash_params(&q, kv, layer, dims);
        fp.pages = meta.pages.ptr();
        fp.out = out.ptr();
        fp.window = window_arg(batch.sliding_window);
        let (hq64, hd64) = (hq as u64, hd as u64);
        let tile = (BQ * BK) as u64;

        if meta.n_prefill > 0 {
            let mut p = fp;
            p.items = meta.prefill.ptr();
            let name = format!("attn_prefill_hd{hd}");
            self.launch_struct(&name, (meta.n_prefill as u32, hq as u32, 1), 128, 0, &p)?;
            // Tiles are computed whole; a thought block's own keys are read one by one
            // (K and V, bf16) and cost two exps each.
            let (t, x) = (meta.prefill_tiles, meta.thought_keys);
            self.record(
                "attention",
                Counts {
                    calls: 1,
                    useful_flops: crate::backend::attention_useful_flops(meta.prefill_pairs, dims),
                    executed_flops: 4 * hd64 * hq64 * (t * tile + x),
                    bytes: meta.prefill_rows * hq64 * hd64 * (4 + 2)
                        + (t * BK as u64 + x) * hd64 * 4 * hq64,
                    transcendentals: (t * (tile + BQ as u64) + 2 * x) * hq64,
                },
            );
        }
        if meta.n_decode > 0 {
            self.decode_attention(&q, &out, dims, &meta, fp)?;
        }
        Ok(out)
    }

    fn decode_attention(
        &self,
        q: &CudaTensor,
        out: &CudaTensor,
        dims: AttnDims,
        meta: &BatchMeta,
        fp: FlashParams,
    ) -> Result<()> {
        let (hq, hk, hd) = (dims.heads, dims.kv_heads, dims.head_dim);
        let group = hq / hk;
        let (hq64, hk64, hd64) = (hq as u64, hk as u64, hd as u64);
        let n = meta.n_decode;
        let parts = if meta.direct {
            1
        } else {
            n * meta.n_slots * hq
        };
        let o_part = self.alloc_f32(parts * hd)?;
        let lse = self.alloc_f32(parts)?;
        if meta.n_prefix > 0 {
            // Items that are no tree member never write the prefix slot: mark it empty.
            self.fill("fill_u32", lse.ptr(), 0xff80_0000, parts)?;
            self.record("fill", Counts::exact(0, parts as u64 * 4, 0));
            let mut p = fp;
            p.items = meta.prefix.ptr();
            p.members = meta.members.ptr();
            p.o_part = o_part.ptr();
            p.lse_part = lse.ptr();
            p.n_slots = meta.n_slots as i32;
            p.window = 0;
            let name = format!("attn_prefix_hd{hd}");
            self.launch_struct(&name, (meta.n_prefix as u32, hk as u32, 1), 128, 0, &p)?;
            let t = meta.prefix_tiles;
            let tile = (BQ * BK) as u64;
            self.record(
                "attention",
                Counts {
                    calls: 1,
                    useful_flops: crate::backend::attention_useful_flops(meta.prefix_pairs, dims),
                    executed_flops: 4 * hd64 * hk64 * t * tile,
                    bytes: meta.n_members * hq64 * (hd64 * 4 + (hd64 + 1) * 4)
                        + t * BK as u64 * hd64 * 4 * hk64,
                    transcendentals: t * (tile + BQ as u64) * hk64,
                },
            );
        }
        let p = DecodeParams {
            q: q.ptr(),
            kc: fp.kc,
            vc: fp.vc,
            pages: fp.pages,
            items: meta.decode.ptr(),
            out: out.ptr(),
            o_part: o_part.ptr(),
            lse_part: lse.ptr(),
            layer_off: fp.layer_off,
            scale: fp.scale,
            q_stride: fp.q_stride,
            hq: hq as i32,
            hk: hk as i32,
            group: group as i32,
            hd: hd as i32,
            page_size: fp.page_size,
            chunk: meta.chunk as i32,
            n_slots: meta.n_slots as i32,
            direct: meta.direct as i32,
        };
        let lanes = DEC_THREADS / (hd / 2);
        let smem = 4 * (group * hd + group * meta.chunk + lanes * group * hd + 2 * group);
        self.launch_struct(
            "attn_decode",
            (n as u32, hk as u32, meta.splits as u32),
            DEC_THREADS as u32,
            smem as u32,
            &p,
        )?;
        let keys = meta.decode_keys;
        let n64 = n as u64;
        let blocks = n64 * meta.splits as u64 * hk64;
        let live_blocks = meta.live_splits * hk64;
        let shape = executed::DecodeShape {
            heads: hq64,
            group: group as u64,
            head_dim: hd64,
            lanes: lanes as u64,
            keys,
            live_blocks,
            direct: meta.direct,
        };
        let written = if meta.direct {
            n64 * hq64 * hd64 * 2
        } else {
            n64 * meta.splits as u64 * hq64 * (hd64 + 1) * 4
        };
        self.record(
            "attention",
            Counts {
                calls: 1,
                useful_flops: crate::backend::attention_useful_flops(keys, dims),
                executed_flops: executed::attn_decode(&shape),
                bytes: blocks * group as u64 * hd64 * 4 + keys * hk64 * hd64 * 4 + written,
                // An exp per key and head, and in partial mode a log per live block and head.
                transcendentals: keys * hq64
                    + if meta.direct {
                        0
                    } else {
                        live_blocks * group as u64
                    },
            },
        );
        if !meta.direct {
            let slots = meta.n_slots as u64;
            // Live slots: each item's splits that hold keys, and the prefix slot of a member.
            let live = meta.live_splits + meta.n_members;
            self.launch(
                "attn_merge",
                (n as u32, hq as u32, 1),
                64,
                0,
                &[
                    Arg::P(o_part.ptr()),
                    Arg::P(lse.ptr()),
                    Arg::P(meta.decode.ptr()),
                    Arg::P(out.ptr()),
                    Arg::I(meta.n_slots as i32),
                    Arg::I(hq as i32),
                    Arg::I(hd as i32),
                ],
            )?;
            self.record(
                "attn_merge",
                Counts {
                    calls: 1,
                    useful_flops: 0,
                    executed_flops: executed::attn_merge(n64, hq64, hd64, slots, live),
                    bytes: n64 * hq64 * (slots * (hd64 + 1) * 4 + hd64 * 2),
                    transcendentals: hq64 * live,
                },
            );
        }
        Ok(())
    }
}
