//! The CPU backend: f32 compute, multi-threaded with rayon. It is the reference every other
//! backend is tested against, so clarity wins over cleverness except in the two hot paths
//! (`linear`, whose loops are in cpu_linear.rs, and `attention`, in cpu_attn.rs).
use super::cpu_math::norm_row;
pub use super::cpu_math::{angles, inv_freq, rotate_half};
use super::cpu_weight::store;
pub use super::cpu_weight::CpuWeight;
use super::{AttnDims, Backend, Batch, KvShape, TalkHead, WeightData};
use crate::flops::{Counts, Ledger};
use crate::kv::PageCopy;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use std::sync::Mutex;

pub(super) const F32: u64 = 4;

pub struct Cpu {
    ledger: Mutex<Ledger>,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpu {
    pub fn new() -> Self {
        Cpu {
            ledger: Mutex::new(Ledger::new()),
        }
    }

    pub(super) fn record(&self, op: &'static str, c: Counts) {
        self.charge(op, c);
    }
}

#[derive(Clone, Debug)]
pub struct CpuTensor {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) data: Vec<f32>,
}

pub struct CpuKv {
    pub(super) shape: KvShape,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
}

impl CpuKv {
    /// Offset of (layer, slot, kv head 0) in k / v.
    pub(super) fn at(&self, layer: usize, slot: usize) -> usize {
        let s = &self.shape;
        ((layer * s.pages * s.page_size) + slot) * s.kv_heads * s.head_dim
    }
}

pub(super) fn same_shape(a: &CpuTensor, b: &CpuTensor, op: &str) -> Result<()> {
    super::check_same_shape((a.rows, a.cols), (b.rows, b.cols), op)
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type Kv = CpuKv;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn device_label(&self) -> String {
        format!("cpu: {} threads", rayon::current_num_threads())
    }

    fn ledger(&self) -> &Mutex<Ledger> {
        &self.ledger
    }

    /// A pass is about 270 parallel ops (9 per layer). Called from a thread outside rayon's
    /// pool (an eval worker, the main thread), each op would be handed to the pool and its
    /// end waited for, two thread wake-ups apiece: 15-20 µs on a 2-core VM, some 10% of a
    /// decode step of the default model. So the whole pass runs on a pool thread, where each
    /// op splits among the pool's threads without a hand-off. The caller's account (its
    /// problem's ledger, a thread-local) goes with it; results are the same either way.
    fn run_pass<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if rayon::current_thread_index().is_some() {
            return f();
        }
        let account = crate::account::current();
        rayon::scope(move |_| crate::account::with_installed(account, f))
    }

    fn weight(&self, shape: &[usize], data: WeightData) -> Result<CpuWeight> {
        crate::backend::check_weight_shape(shape, data.len())?;
        Ok(CpuWeight {
            shape: shape.to_vec(),
            parts: vec![store(data, shape.len() == 2)],
        })
    }

    fn stacked_weight(&self, cols: usize, parts: Vec<(usize, WeightData)>) -> Result<CpuWeight> {
        let rows = crate::backend::check_stacked_parts(cols, &parts)?;
        // One dtype for every block (linear reads them alike): a mix of dtypes, which no
        // checkpoint has, is widened to f32.
        let one = parts.windows(2).all(|p| p[0].1.dtype() == p[1].1.dtype());
        Ok(CpuWeight {
            shape: vec![rows, cols],
            parts: parts.into_iter().map(|(_, d)| store(d, one)).collect(),
        })
    }

    fn tensor(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CpuTensor> {
        ensure!(
            data.len() == super::tensor_len(rows, cols)?,
            "tensor data is not {rows}x{cols}"
        );
        Ok(CpuTensor {
            rows,
            cols,
            data: data.to_vec(),
        })
    }

    fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    /// The rows drawn at once on the pool's threads (each draw is a pure function of its row:
    /// ~0.4 ms of f64 exp over a 49152-token vocabulary, which one thread did row after row),
    /// their costs charged in row order; no copy of the logits.
    fn sample_rows(
        &self,
        logits: &CpuTensor,
        limit: usize,
        s: crate::sample::Sampling,
        u: &[f64],
    ) -> Result<Vec<u32>> {
        let (rows, cols) = (logits.rows, logits.cols);
        ensure!(
            u.len() == rows,
            "sample: {} uniforms for {rows} rows",
            u.len()
        );
        let draw = |k: usize| -> Result<(u32, Counts)> {
            let row = &logits.data[k * cols..(k + 1) * cols];
            crate::sample::check_finite(row, limit, k)?;
            Ok(crate::sample::sample(row, limit, s, u[k]))
        };
        let drawn: Vec<Result<(u32, Counts)>> = if rows > 1 {
            (0..rows).into_par_iter().map(draw).collect()
        } else {
            (0..rows).map(draw).collect()
        };
        let mut ids = Vec::with_capacity(rows);
        for d in drawn {
            let (id, cost) = d?;
            self.charge("sample", cost);
            ids.push(id);
        }
        Ok(ids)
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn alloc_kv(&self, shape: KvShape) -> Result<CpuKv> {
        let n = shape.elements()?;
        let too_big = || {
            anyhow::anyhow!(
                "the KV cache ({:.1} GB for {} pages of {} tokens) cannot be allocated in \
                 this machine's memory",
                (2 * n * 4) as f64 / 1e9,
                shape.pages,
                shape.page_size
            )
        };
        Ok(CpuKv {
            shape,
            k: zeroed(n).ok_or_else(too_big)?,
            v: zeroed(n).ok_or_else(too_big)?,
        })
    }

    fn copy_pages(&self, kv: &mut CpuKv, copies: &[PageCopy]) -> Result<()> {
        let s = kv.shape;
        let row = s.kv_heads * s.head_dim;
        let mut bytes = 0u64;
        for c in copies {
            ensure!(
                (c.src as usize) < s.pages && (c.dst as usize) < s.pages && c.len <= s.page_size,
                "bad page copy {c:?}"
            );
            for layer in 0..s.layers {
                let src = kv.at(layer, c.src as usize * s.page_size);
                let dst = kv.at(layer, c.dst as usize * s.page_size);
                let n = c.len * row;
                kv.k.copy_within(src..src + n, dst);
                kv.v.copy_within(src..src + n, dst);
                bytes += 4 * n as u64 * F32;
            }
        }
        if !copies.is_empty() {
            self.record("kv_copy", Counts::exact(0, bytes, 0));
        }
        Ok(())
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32]) -> Result<CpuTensor> {
        let (vocab, d) = table.rows_cols();
        let t = match &table.blocks()[..] {
            [one] => *one,
            _ => bail!("a stacked weight is an operand of linear only"),
        };
        let mut data = vec![0.0f32; ids.len() * d];
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            ensure!(
                id < vocab,
                "token id {id} is outside the vocabulary ({vocab})"
            );
            let row = &mut data[i * d..(i + 1) * d];
            t.slice(id * d..(id + 1) * d).widen_into(row);
        }
        let n = ids.len() as u64;
        self.record(
            "embedding",
            Counts::exact(0, n * d as u64 * (table.value_bytes() + F32) + n * 4, 0),
        );
        Ok(CpuTensor {
            rows: ids.len(),
            cols: d,
            data,
        })
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuWeight, eps: f32) -> Result<CpuTensor> {
        let w = w.data()?;
        ensure!(
            w.len() == x.cols,
            "rms_norm: weight length differs from row length"
        );
        let mut out = vec![0.0; x.data.len()];
        out.par_chunks_mut(x.cols)
            .zip(x.data.par_chunks(x.cols))
            .for_each(|(o, r)| {
                norm_row(o, r, w, eps);
            });
        let (n, d) = (x.rows as u64, x.cols as u64);
        self.record(
            "rmsnorm",
            Counts::exact(4 * n * d, (2 * n * d + d) * F32, n),
        );
        Ok(CpuTensor {
            rows: x.rows,
            cols: x.cols,
            data: out,
        })
    }

    fn add_rms_norm(
        &self,
        residual: &mut CpuTensor,
        x: &CpuTensor,
        w: &CpuWeight,
        eps: f32,
    ) -> Result<CpuTensor> {
        same_shape(residual, x, "add_rms_norm")?;
        let w = w.data()?;
        ensure!(
            w.len() == x.cols,
            "add_rms_norm: weight length differs from row length"
        );
        let cols = x.cols;
        let mut out = vec![0.0; x.data.len()];
        out.par_chunks_mut(cols)
            .zip(residual.data.par_chunks_mut(cols))
            .zip(x.data.par_chunks(cols))
            .for_each(|((o, r), xr)| {
                for (a, b) in r.iter_mut().zip(xr) {
                    *a += *b;
                }
                norm_row(o, r, w, eps);
            });
        let (n, d) = (x.rows as u64, x.cols as u64);
        self.record(
            "add_rmsnorm",
            Counts::exact(5 * n * d, (4 * n * d + d) * F32, n),
        );
        Ok(CpuTensor {
            rows: x.rows,
            cols,
            data: out,
        })
    }

    fn linear(&self, x: &CpuTensor, w: &CpuWeight) -> Result<CpuTensor> {
        let (m, k) = super::check_linear_shape(x.cols, &w.shape)?;
        let n = x.rows;
        let rows = super::cpu_linear::Rows::new(&w.blocks(), k);
        let out = super::cpu_linear::matmul_nt(&x.data, n, k, &rows, m);
        let (n, m, k) = (n as u64, m as u64, k as u64);
        self.record(
            "matmul",
            Counts::exact(
                2 * n * m * k,
                m * k * w.value_bytes() + (n * k + n * m) * F32,
                0,
            ),
        );
        Ok(CpuTensor {
            rows: x.rows,
            cols: m as usize,
            data: out,
        })
    }

    fn rope_store_kv(
        &self,
        qkv: &CpuTensor,
        kv: &mut CpuKv,
        layer: usize,
        batch: &Batch,
        dims: AttnDims,
    ) -> Result<CpuTensor> {
        super::cpu_attn::rope_store_kv(self, qkv, kv, layer, batch, dims)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        kv: &CpuKv,
        layer: usize,
        batch: &Batch,
        dims: AttnDims,
    ) -> Result<CpuTensor> {
        super::cpu_attn::attention(self, q, kv, layer, batch, dims)
    }

    fn silu_mul(&self, gate_up: &CpuTensor) -> Result<CpuTensor> {
        let f = super::check_gate_up((gate_up.rows, gate_up.cols))?;
        let mut out = vec![0.0; gate_up.rows * f];
        if f > 0 {
            out.par_chunks_mut(f)
                .zip(gate_up.data.par_chunks(2 * f))
                .for_each(|(o, gu)| {
                    let (g, u) = gu.split_at(f);
                    for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                        *o = *g / (1.0 + (-*g).exp()) * *u;
                    }
                });
        }
        let n = out.len() as u64;
        self.record("silu_mul", Counts::exact(3 * n, 3 * n * F32, n));
        Ok(CpuTensor {
            rows: gate_up.rows,
            cols: f,
            data: out,
        })
    }

    fn add(&self, a: &mut CpuTensor, b: &CpuTensor) -> Result<()> {
        same_shape(a, b, "add")?;
        for (x, y) in a.data.iter_mut().zip(&b.data) {
            *x += *y;
        }
        let n = a.data.len() as u64;
        self.record("add", Counts::exact(n, 3 * n * F32, 0));
        Ok(())
    }

    fn gather_rows(&self, x: &CpuTensor, rows: &[usize]) -> Result<CpuTensor> {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r >= x.rows {
                bail!("gather_rows: row {r} of {}", x.rows);
            }
            data.extend_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        let b = 2 * (rows.len() * x.cols) as u64 * F32;
        self.record("gather", Counts::exact(0, b, 0));
        Ok(CpuTensor {
            rows: rows.len(),
            cols: x.cols,
            data,
        })
    }

    fn talk_mix(
        &self,
        h_base: &CpuTensor,
        h_end: &CpuTensor,
        head: &TalkHead<Cpu>,
    ) -> Result<CpuTensor> {
        super::cpu_mix::talk_mix(self, h_base, h_end, head)
    }
}

/// n zeros, or None when the allocator refuses (instead of aborting the process as `vec!`
/// does). Zeroed pages are mapped lazily, so KV pages never written cost no memory.
fn zeroed(n: usize) -> Option<Vec<f32>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n).ok()?;
    // SAFETY: the layout is non-zero-sized; on success the block holds n zeroed f32s (all-zero
    // bits are 0.0), allocated by the global allocator with the layout Vec<f32> frees with.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut f32;
        (!p.is_null()).then(|| Vec::from_raw_parts(p, n, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn a_stacked_weight_is_an_operand_of_linear_only() {
        let be = Cpu::new();
        let part = |r: usize| (r, WeightData::Host(Cow::Owned(vec![1.0; r * 4])));
        let w = be.stacked_weight(4, vec![part(1), part(2)]).unwrap();
        assert_eq!(w.shape, [3, 4]);
        let x = be.tensor(2, 4, &[1.0; 8]).unwrap();
        assert_eq!(be.linear(&x, &w).unwrap().data, vec![4.0; 6]);
        let e = be.rms_norm(&x, &w, 1e-6).unwrap_err().to_string();
        assert!(e.contains("stacked weight"), "{e}");
    }
}
