//! One trait for the ops the forward pass needs; `cpu` is the reference (and fast enough for
//! the small default model), `cuda` launches kernels/*.cu. Every op records its counts into the
//! backend's FLOP ledger, computed from the shapes it ran on.
mod batch;
pub mod cpu;
mod cpu_attn;
mod cpu_linear;
mod cpu_math;
mod cpu_mix;
mod cpu_weight;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::flops::{Counts, Ledger, Phase};
use crate::kv::PageCopy;
use anyhow::Result;
use std::sync::Mutex;

pub use batch::{Batch, SeqSlice, ThoughtBlock, Visible};

/// A parameter's shape: a vector or a matrix whose size matches its data.
pub fn check_weight_shape(shape: &[usize], len: usize) -> Result<()> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    anyhow::ensure!(n == Some(len), "weight data does not match shape {shape:?}");
    anyhow::ensure!(
        matches!(shape.len(), 1 | 2),
        "weights are vectors or matrices, not {shape:?}"
    );
    Ok(())
}

/// Elements of a [rows, cols] tensor; a product past usize is refused, never wrapped (a
/// wrapped size would let the unsafe kernels write past a small buffer).
pub fn tensor_len(rows: usize, cols: usize) -> Result<usize> {
    rows.checked_mul(cols)
        .ok_or_else(|| anyhow::anyhow!("a {rows}x{cols} tensor is larger than memory"))
}

/// Useful FLOPs of rotating q and k for `nt` tokens: 6 per rotated pair (4 multiplies, 2
/// adds), the same on every backend.
pub fn rope_useful_flops(nt: usize, dims: AttnDims) -> u64 {
    6 * nt as u64 * (dims.heads + dims.kv_heads) as u64 * (dims.head_dim / 2) as u64
}

/// Useful FLOPs of attention over `pairs` allowed (query, key) pairs: 2·head_dim for QKᵀ and
/// 2·head_dim for PV per pair and query head (flops.md), the same on every backend.
pub fn attention_useful_flops(pairs: u64, dims: AttnDims) -> u64 {
    4 * dims.head_dim as u64 * dims.heads as u64 * pairs
}

/// `linear(x, w)` needs w [out, in] with `in` equal to x's columns; returns (out, in).
pub fn check_linear_shape(x_cols: usize, w_shape: &[usize]) -> Result<(usize, usize)> {
    match *w_shape {
        [m, k] if k == x_cols => Ok((m, k)),
        _ => anyhow::bail!("linear: input has {x_cols} columns, weight is {w_shape:?}"),
    }
}

/// `op`'s two operands must have the same [rows, cols].
pub fn check_same_shape(a: (usize, usize), b: (usize, usize), op: &str) -> Result<()> {
    anyhow::ensure!(
        a == b,
        "{op}: shapes [{}, {}] and [{}, {}] differ",
        a.0,
        a.1,
        b.0,
        b.1
    );
    Ok(())
}

/// The shapes `rope_store_kv` needs, checked the same way on every backend: `qkv` is the
/// fused projection, each row q [heads·hd], then k [kv_heads·hd], then v [kv_heads·hd].
pub fn check_rope_shapes(
    qkv: (usize, usize),
    kv: KvShape,
    layer: usize,
    batch: &Batch,
    dims: AttnDims,
) -> Result<()> {
    let (hd, nt) = (dims.head_dim, batch.n_tokens());
    let w = (dims.heads + 2 * dims.kv_heads) * hd;
    anyhow::ensure!(
        qkv == (nt, w),
        "rope: qkv is {}x{}, not [{nt} tokens, (heads + 2·kv_heads)·hd = {w}]",
        qkv.0,
        qkv.1
    );
    anyhow::ensure!(
        kv.kv_heads == dims.kv_heads && kv.head_dim == hd && layer < kv.layers,
        "rope: KV storage shape {kv:?} does not fit layer {layer}"
    );
    Ok(())
}

/// Row-major blocks of equal row counts side by side: row r of the result is row r of each
/// part in turn (`parts`: data and columns). Host-side, for tests and benches that build the
/// fused inputs of rope_store_kv (q|k|v) and silu_mul (gate|up) from separate parts.
pub fn concat_columns(rows: usize, parts: &[(&[f32], usize)]) -> Vec<f32> {
    let cols: usize = parts.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for (data, c) in parts {
            out.extend_from_slice(&data[r * c..(r + 1) * c]);
        }
    }
    out
}

/// The parts of a stacked weight (`Backend::stacked_weight`), checked the same way on every
/// backend: at least one, each [rows, cols]; returns the stacked weight's rows.
pub fn check_stacked_parts(cols: usize, parts: &[(usize, WeightData)]) -> Result<usize> {
    anyhow::ensure!(
        !parts.is_empty(),
        "a stacked weight needs at least one part"
    );
    for (r, part) in parts {
        check_weight_shape(&[*r, cols], part.len())?;
    }
    Ok(parts.iter().map(|p| p.0).sum())
}

/// The fused gate|up projection's shape as silu_mul reads it: [n, 2f] → f.
pub fn check_gate_up(gate_up: (usize, usize)) -> Result<usize> {
    anyhow::ensure!(
        gate_up.1.is_multiple_of(2),
        "silu_mul: gate_up has {} columns, not 2·intermediate",
        gate_up.1
    );
    Ok(gate_up.1 / 2)
}

/// Shape of the paged KV storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub pages: usize,
    pub page_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    pub fn bytes_per_token(&self, elem: usize) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * elem
    }

    /// Elements of K (and of V) for the whole cache, or an error when that is past what a
    /// backend can address (2^40) or overflows: both backends allocate from this count.
    pub fn elements(&self) -> anyhow::Result<usize> {
        self.pages
            .checked_mul(self.page_size)
            .and_then(|slots| slots.checked_mul(self.layers))
            .and_then(|x| x.checked_mul(self.kv_heads * self.head_dim))
            .filter(|&n| n < (1usize << 40))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "a KV cache of {} pages × {} tokens × {} layers is too large to address",
                    self.pages,
                    self.page_size,
                    self.layers
                )
            })
    }
}

/// Attention geometry shared by the attention ops.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
}

/// The ops of a llama/mistral forward pass. Tensors are row-major 2-D [rows, cols].
pub trait Backend: Send + Sync {
    /// Activations.
    type Tensor: Send + Sync;
    /// Parameters (matrices [out, in] as in HF's Linear, and vectors).
    type Weight: Send + Sync;
    /// Paged K/V storage for all layers.
    type Kv: Send + Sync;

    fn name(&self) -> &'static str;
    /// What ran the work, for reports: the backend and its device (a GPU's name, the CPU
    /// threads), since times per question mean nothing without it.
    fn device_label(&self) -> String {
        self.name().to_string()
    }
    fn ledger(&self) -> &Mutex<Ledger>;
    /// The phase this thread's following ops are charged to.
    fn set_phase(&self, p: Phase) {
        crate::account::with_ledger(self.ledger(), |l| l.set_phase(p));
    }
    /// Charges `c` to `op` in this thread's ledger (its problem's account, else the backend's;
    /// inside a pass that `run_pass` moved, the account of the thread that asked for it).
    fn charge(&self, op: &'static str, c: Counts) {
        crate::account::with_ledger(self.ledger(), |l| l.record(op, c));
    }
    /// A copy of the ledger this thread charges, to measure what follows with `since`.
    fn snapshot(&self) -> Ledger {
        crate::account::with_ledger(self.ledger(), |l| l.clone())
    }
    /// Waits until every op queued so far has run, and reports a fault of any of them. The
    /// CPU runs each op as it is called, so it returns at once; a GPU's launches return when
    /// queued, so whoever reads a clock after a pass calls this first.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Runs `f`, one whole forward pass, where this backend's ops start fastest: the CPU runs
    /// it on its thread pool (see its impl); others on the calling thread.
    fn run_pass<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Batch invariance: with it on, each row of every op gets the same bits whatever else
    /// shares its pass (other branches, other problems in flight) and whether its token came
    /// in a prefill or a decode step, so that batching, preemption and `--in-flight` change
    /// cost, never tokens. The CPU backend is always invariant (each row in a fixed order);
    /// the CUDA backend is on by default and, off, picks its fastest kernels per pass.
    fn set_batch_invariant(&self, _on: bool) {}

    /// The most keys one query may attend to, where the backend has such a limit (the CUDA
    /// backend's batch-invariant attention: 63 splits of 512 keys). Methods check a problem
    /// against it before they take any page, as against the model's positions.
    fn max_attention_keys(&self) -> Option<usize> {
        None
    }

    /// A parameter from host values, f32, bf16 or f16 (the backend chooses its storage dtype).
    fn weight(&self, shape: &[usize], data: WeightData) -> Result<Self::Weight>;
    /// Parameters of `cols` columns stacked by rows into one [Σ rows, cols] weight (`parts`:
    /// each part's rows and values), for the fused projections q|k|v and gate|up. This
    /// default copies them into one host buffer; the CPU backend keeps the parts where they
    /// are (a memory-mapped part is not copied).
    fn stacked_weight(&self, cols: usize, parts: Vec<(usize, WeightData)>) -> Result<Self::Weight> {
        let rows = check_stacked_parts(cols, &parts)?;
        // bf16 parts stay bf16 (a mix is widened: f32 loses nothing).
        if parts.iter().all(|(_, p)| p.bf16_bits().is_some()) {
            let mut bits = Vec::with_capacity(rows * cols);
            for (_, part) in &parts {
                bits.extend_from_slice(part.bf16_bits().unwrap_or_default());
            }
            return self.weight(
                &[rows, cols],
                WeightData::HostBf16(std::borrow::Cow::Owned(bits)),
            );
        }
        let mut data = Vec::with_capacity(rows * cols);
        for (_, part) in &parts {
            data.extend_from_slice(&part.to_f32());
        }
        self.weight(
            &[rows, cols],
            WeightData::Host(std::borrow::Cow::Owned(data)),
        )
    }
    fn tensor(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Self::Tensor>;
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);

    fn alloc_kv(&self, shape: KvShape) -> Result<Self::Kv>;
    /// Performs the page copies the KV pool asked for (fork and copy-on-write).
    fn copy_pages(&self, kv: &mut Self::Kv, copies: &[PageCopy]) -> Result<()>;

    /// Rows `ids` of the embedding table.
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Tensor>;
    /// y = x / rms(x) · w, row by row.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Weight, eps: f32) -> Result<Self::Tensor>;
    /// residual += x; returns rms_norm(residual) — the fused pre-norm of the next block.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        x: &Self::Tensor,
        w: &Self::Weight,
        eps: f32,
    ) -> Result<Self::Tensor>;
    /// x · wᵀ for w [out, in].
    fn linear(&self, x: &Self::Tensor, w: &Self::Weight) -> Result<Self::Tensor>;
    /// From the fused projection `qkv` [n, (heads + 2·kv_heads)·hd] (each row: q, k, v side
    /// by side, one matrix product for all three): rotates q and k (rotate-half RoPE at each
    /// row's position), writes k, v into the pages of layer `layer`, and returns the rotated
    /// q [n, heads·hd].
    fn rope_store_kv(
        &self,
        qkv: &Self::Tensor,
        kv: &mut Self::Kv,
        layer: usize,
        batch: &Batch,
        dims: AttnDims,
    ) -> Result<Self::Tensor>;
    /// Causal (optionally windowed) GQA attention of every query row over its sequence's pages.
    fn attention(
        &self,
        q: &Self::Tensor,
        kv: &Self::Kv,
        layer: usize,
        batch: &Batch,
        dims: AttnDims,
    ) -> Result<Self::Tensor>;
    /// silu(gate) · up, elementwise, from the fused projection `gate_up` [n, 2f] (gate the
    /// first f columns of each row, up the last f): [n, f].
    fn silu_mul(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor>;
    /// a += b.
    fn add(&self, a: &mut Self::Tensor, b: &Self::Tensor) -> Result<()>;
    /// The given rows of x, in order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// One token id per row of `logits`, from ids below `limit`, with `u[row]` the row's
    /// uniform draw (`crate::sample::sample`'s draw, and its error for a non-finite logit);
    /// charges `sample` per row with the CPU sampler's counts. A device backend samples where
    /// the logits are and returns only the ids.
    fn sample_rows(
        &self,
        logits: &Self::Tensor,
        limit: usize,
        s: crate::sample::Sampling,
        u: &[f64],
    ) -> Result<Vec<u32>>;
    /// Quiet-STaR's mixing head, row by row: w = head(concat[h_base, h_end]) (Linear 2d→d,
    /// ReLU, Linear d→d, ReLU, Linear d→1, a raw scalar); returns (1 − w)·h_base + w·h_end.
    fn talk_mix(
        &self,
        h_base: &Self::Tensor,
        h_end: &Self::Tensor,
        head: &TalkHead<Self>,
    ) -> Result<Self::Tensor>
    where
        Self: Sized;
}

/// The Quiet-STaR talk head's parameters (`talk_head.0.{0,2,4}`).
pub struct TalkHead<B: Backend> {
    pub w1: B::Weight,
    pub b1: B::Weight,
    pub w2: B::Weight,
    pub b2: B::Weight,
    pub w3: B::Weight,
}

/// Parameter values handed to a backend, in the dtype they were stored in: a backend that
/// holds weights as bf16 takes bf16 bits as they are, and f32 values rounded to nearest even.
pub enum WeightData<'a> {
    /// f32 values in a memory map: a CPU backend can use them without copying.
    Mapped(crate::model::weights::MappedF32),
    Host(std::borrow::Cow<'a, [f32]>),
    /// bf16 values (their bits) in a memory map: a bf16 checkpoint's tensors, zero-copy.
    MappedBf16(crate::model::weights::MappedBf16),
    /// bf16 bits in host memory (synthetic weights, an unaligned bf16 tensor).
    HostBf16(std::borrow::Cow<'a, [u16]>),
    /// f16 values in a memory map (an f16 checkpoint's tensors, zero-copy), and in host memory.
    MappedF16(crate::model::weights::MappedF16),
    HostF16(std::borrow::Cow<'a, [half::f16]>),
}

impl WeightData<'_> {
    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            WeightData::Mapped(m) => m.as_slice().len(),
            WeightData::Host(c) => c.len(),
            WeightData::MappedBf16(m) => m.as_slice().len(),
            WeightData::HostBf16(c) => c.len(),
            WeightData::MappedF16(m) => m.as_slice().len(),
            WeightData::HostF16(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bf16 bits when the values are stored as bf16.
    pub fn bf16_bits(&self) -> Option<&[u16]> {
        match self {
            WeightData::MappedBf16(m) => Some(m.as_slice()),
            WeightData::HostBf16(c) => Some(c),
            _ => None,
        }
    }

    /// The dtype the values are stored in.
    pub fn dtype(&self) -> crate::model::weights::DType {
        use crate::model::weights::DType;
        match self {
            WeightData::Mapped(_) | WeightData::Host(_) => DType::F32,
            WeightData::MappedBf16(_) | WeightData::HostBf16(_) => DType::Bf16,
            WeightData::MappedF16(_) | WeightData::HostF16(_) => DType::F16,
        }
    }

    /// The f16 values when they are stored as f16.
    pub fn f16_vals(&self) -> Option<&[half::f16]> {
        match self {
            WeightData::MappedF16(m) => Some(m.as_slice()),
            WeightData::HostF16(c) => Some(c),
            _ => None,
        }
    }

    /// The values as f32 (bf16 and f16 widen exactly): borrowed when stored as f32.
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        use std::borrow::Cow;
        match self {
            WeightData::Mapped(m) => Cow::Borrowed(m.as_slice()),
            WeightData::Host(c) => Cow::Borrowed(c),
            WeightData::MappedBf16(_) | WeightData::HostBf16(_) => {
                let bits = self.bf16_bits().unwrap_or_default();
                let mut out = vec![0.0f32; bits.len()];
                widen_bf16(&mut out, bits);
                Cow::Owned(out)
            }
            WeightData::MappedF16(_) | WeightData::HostF16(_) => {
                use half::slice::HalfFloatSliceExt;
                let vals = self.f16_vals().unwrap_or_default();
                let mut out = vec![0.0f32; vals.len()];
                vals.convert_to_f32_slice(&mut out);
                Cow::Owned(out)
            }
        }
    }

    /// The values as bf16 bits: borrowed when stored as bf16, else rounded to nearest even.
    pub fn to_bf16_bits(&self) -> std::borrow::Cow<'_, [u16]> {
        use std::borrow::Cow;
        match self.bf16_bits() {
            Some(b) => Cow::Borrowed(b),
            None => Cow::Owned(round_to_bf16_bits(&self.to_f32())),
        }
    }
}

/// f32 values rounded to bf16 (nearest even; half's rounding, which the CUDA backend's
/// uploads and the synthetic weights share).
pub fn round_to_bf16_bits(v: &[f32]) -> Vec<u16> {
    use rayon::prelude::*;
    v.par_iter()
        .map(|x| half::bf16::from_f32(*x).to_bits())
        .collect()
}

/// `out[i] = bits[i]` as f32: exact (a bf16 is the top half of an f32), so a weight held as
/// bf16 and widened before use gives the same products as the same weight held as f32.
#[inline]
pub fn widen_bf16(out: &mut [f32], bits: &[u16]) {
    debug_assert_eq!(out.len(), bits.len());
    for (o, b) in out.iter_mut().zip(bits) {
        *o = widen_one(*b);
    }
}

/// One bf16 (its bits) as f32, exactly.
#[inline]
pub fn widen_one(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}
