//! Quiet-STaR's parallel-thought attention (the thought-diagonal mask of quiet-star.md, in
//! the attn_prefill kernel family, mode 1) and a raw KV writer for laying out its keys.
use super::ops::to_bf16_bits;
use super::plan::{check_dims, window_arg, BK, BQ};
use super::tensor::{CudaKv, CudaTensor, DType};
use super::Cuda;
use crate::backend::AttnDims;
use crate::flops::Counts;
use anyhow::{ensure, Result};

impl Cuda {
    /// Quiet-STaR's parallel-thought attention (quiet-star.md): the keys of one sequence lie
    /// at logical positions d'·L + j of `pages` (depth block d', position j; block 0 is the
    /// real text). `q` [L, heads·hd] holds the queries of depth `depth`, row i = position i.
    /// Query (i, d) sees (j, 0) for j <= i (and i − j < window) and (i, d') for 1 <= d' <= d.
    /// Output bf16 [L, heads·hd]. Recorded as `attention`; useful pairs as the predicate allows.
    #[allow(clippy::too_many_arguments)]
    pub fn thought_attention(
        &self,
        q: &CudaTensor,
        kv: &CudaKv,
        layer: usize,
        pages: &[u32],
        l: usize,
        depth: usize,
        window: Option<usize>,
        dims: AttnDims,
    ) -> Result<CudaTensor> {
        check_dims(dims)?;
        let (hq, hd) = (dims.heads, dims.head_dim);
        let ps = kv.shape.page_size;
        ensure!(
            q.rows == l && q.cols == hq * hd,
            "thought attention: q is not [{l}, heads*hd]"
        );
        ensure!(
            kv.shape.kv_heads == dims.kv_heads
                && kv.shape.head_dim == hd
                && layer < kv.shape.layers,
            "thought attention: KV shape differs"
        );
        ensure!(
            pages.len() * ps >= (depth + 1) * l,
            "thought attention: pages cover fewer than (depth + 1)·L keys"
        );
        ensure!(
            pages.iter().all(|&p| (p as usize) < kv.shape.pages),
            "thought attention: a page lies outside the KV pool"
        );
        let fv = |p: usize| match window {
            Some(w) if p + 1 > w => p + 1 - w,
            _ => 0,
        };
        let mut items = Vec::new();
        let (mut tiles, mut pairs) = (0u64, 0u64);
        for r0 in (0..l).step_by(BQ) {
            let rows = BQ.min(l - r0);
            let (kt0, kt1) = (fv(r0) / BK, (r0 + rows - 1) / BK + 1);
            items.extend([
                r0 as i32,
                rows as i32,
                r0 as i32,
                kt0 as i32,
                kt1 as i32,
                0,
                l as i32,
                0,
            ]);
            tiles += (kt1 - kt0) as u64;
            for i in r0..r0 + rows {
                pairs += (i + 1 - fv(i) + depth) as u64;
            }
        }
        let q = self.as_dtype(q, DType::F32)?;
        let out = self.bf16_tensor(l, hq * hd)?;
        let dev_items = self.upload(&items)?;
        let dev_pages = self.upload(pages)?;
        let mut p = self.flash_params(&q, kv, layer, dims);
        p.items = dev_items.ptr();
        p.pages = dev_pages.ptr();
        p.out = out.ptr();
        p.window = window_arg(window);
        p.mode = 1;
        p.tl = l as i32;
        p.depth = depth as i32;
        let name = format!("attn_prefill_hd{hd}");
        self.launch_struct(&name, ((items.len() / 8) as u32, hq as u32, 1), 128, 0, &p)?;
        let (hq64, hd64, l64, d64) = (hq as u64, hd as u64, l as u64, depth as u64);
        let tile = (BQ * BK) as u64;
        self.record(
            "attention",
            Counts {
                calls: 1,
                useful_flops: 4 * hd64 * hq64 * pairs,
                executed_flops: 4 * hd64 * hq64 * (tiles * tile + l64 * d64),
                bytes: l64 * hq64 * hd64 * 6 + (tiles * BK as u64 + l64 * d64) * hd64 * 4 * hq64,
                transcendentals: hq64 * (tiles * (tile + BQ as u64) + 2 * l64 * d64),
            },
        );
        Ok(out)
    }

    /// Writes K and V rows straight into layer `layer`'s slots (no RoPE): for tests and for
    /// callers that lay out keys themselves (the parallel-thought layout above).
    pub fn write_kv(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        slot0: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let row = kv.shape.kv_heads * kv.shape.head_dim;
        ensure!(
            k.len() == v.len() && k.len().is_multiple_of(row) && layer < kv.shape.layers,
            "write_kv: rows are not [n, kv_heads*hd]"
        );
        ensure!(
            slot0 + k.len() / row <= kv.shape.pages * kv.shape.page_size,
            "write_kv: slots outside the pool"
        );
        let at = (kv.layer_off(layer) as usize + slot0) * row;
        let (kb, vb) = (to_bf16_bits(k), to_bf16_bits(v));
        self.dev().write_at(&mut kv.k, at, &kb)?;
        self.dev().write_at(&mut kv.v, at, &vb)?;
        Ok(())
    }
}
