//! The CUDA backend: kernels/*.cu (compiled by build.rs, embedded as fatbins) launched through
//! cudarc's driver API on one stream, linear layers through cuBLAS (bf16 inputs, f32 compute
//! and output). Weights and KV are bf16 on the device; activations are f32, except the ones
//! that only feed a GEMM (norm outputs, SiLU·mul, attention output), which are bf16.
//!
//! Every op records into the ledger like the CPU backend: the same useful FLOPs for the same
//! op and shapes (the CPU's formulas), executed FLOPs as the kernels really compute them (whole
//! attention tiles, padding rows included), bytes with the device's element sizes. Ops with no
//! CPU counterpart (`cast`, `concat`, `attn_merge`) have zero useful FLOPs. Layouts, launch
//! shapes and what is still unverified on a GPU: docs/cuda.md.
mod attn;
mod device;
mod emu;
mod executed;
mod mix;
mod nvtx;
mod ops;
mod plan;
mod sample;
mod tensor;

pub use device::{DSlice, Elem};
pub use emu::Order as EmuOrder;
pub use tensor::{CudaKv, CudaTensor, CudaWeight, DBuf, DType};

use super::{AttnDims, Backend, Batch, KvShape, TalkHead, WeightData};
use crate::flops::{Counts, Ledger};
use crate::kv::PageCopy;
use anyhow::{anyhow, Result};
use cudarc::driver::{sys, CudaContext};
use device::Device;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[allow(dead_code)]
mod images {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Every kernel ponder launches, by the kernels/*.cu file that defines it.
pub const FUNCTIONS: &[(&str, &[&str])] = &[
    (
        "embed",
        &["embed_gather", "gather_rows_b32", "gather_rows_b16"],
    ),
    (
        "elementwise",
        &[
            "add_f32",
            "cast_f32_bf16",
            "cast_bf16_f32",
            "fill_u32",
            "fill_u16",
        ],
    ),
    ("silu_mul", &["silu_mul"]),
    ("rmsnorm", &["rms_norm", "add_rms_norm"]),
    ("rope_kv", &["rope_store_kv", "kv_copy"]),
    ("mix", &["concat_bf16", "bias_relu", "talk_mix_out"]),
    (
        "attn_prefill",
        &[
            "attn_prefill_hd16",
            "attn_prefill_hd32",
            "attn_prefill_hd64",
            "attn_prefill_hd128",
        ],
    ),
    (
        "attn_tree",
        &[
            "attn_prefix_hd16",
            "attn_prefix_hd32",
            "attn_prefix_hd64",
            "attn_prefix_hd128",
        ],
    ),
    ("attn_decode", &["attn_decode", "attn_merge"]),
    ("sample", &["sample_rows"]),
];

/// The embedded kernel images: (kernels/NAME.cu stem, fatbin).
pub fn kernel_images() -> &'static [(&'static str, &'static [u8])] {
    images::KERNELS
}

/// The nvcc -gencode target the images hold SASS for (PTX of the plain arch rides along).
pub fn kernel_target() -> &'static str {
    images::TARGET
}

/// A kernel argument, passed by value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device pointer.
    P(u64),
    I(i32),
    L(i64),
    F(f32),
    /// size_t.
    Z(u64),
}

impl Arg {
    fn as_ptr(&mut self) -> *mut c_void {
        match self {
            Arg::P(x) | Arg::Z(x) => x as *mut u64 as *mut c_void,
            Arg::I(x) => x as *mut i32 as *mut c_void,
            Arg::L(x) => x as *mut i64 as *mut c_void,
            Arg::F(x) => x as *mut f32 as *mut c_void,
        }
    }
}

pub struct Cuda {
    dev: Device,
    ledger: Mutex<Ledger>,
    poison: AtomicBool,
    /// `Backend::set_batch_invariant` (see plan.rs and `linear_impl`).
    invariant: AtomicBool,
    name: String,
    sm_count: usize,
    smem_optin: usize,
    meta: Mutex<Option<(Vec<u64>, Arc<plan::BatchMeta>)>>,
    inv_freq: Mutex<HashMap<(usize, u32), DSlice<f64>>>,
    ranges: nvtx::PhaseRanges,
}

/// Whether a CUDA driver and at least one GPU are present (never panics; false on any
/// machine without them). Tests use it to skip rather than fail.
pub fn gpu_available() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    let driver = unsafe { sys::is_culib_present() };
    driver && CudaContext::device_count().is_ok_and(|n| n > 0)
}

/// attn_decode keeps its scores in dynamic shared memory: it may use all the device allows.
const BIG_SMEM_KERNELS: &[&str] = &["attn_decode"];

impl Cuda {
    /// Opens GPU `ordinal`. Fails with one line (never panics) when the driver library, a
    /// GPU, cuBLAS or a loadable kernel image is missing.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        let mut gpu = Device::open_gpu(ordinal)?;
        let ctx = gpu.ctx.clone();
        let name = ctx.name().unwrap_or_else(|_| "CUDA GPU".into());
        let attr = |a| ctx.attribute(a).map(|v| v.max(0) as usize);
        use sys::CUdevice_attribute_enum as A;
        let sm_count = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1);
        let smem_optin = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let (major, minor) = ctx.compute_capability()?;
        for (file, fns) in FUNCTIONS {
            let image = images::KERNELS
                .iter()
                .find(|(n, _)| n == file)
                .map(|(_, b)| *b)
                .ok_or_else(|| anyhow!("kernels/{file}.cu was not built into this binary"))?;
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
                .map_err(|e| {
                    anyhow!(
                        "cannot load kernels/{file}.cu ({}) on {name} (compute capability \
                         {major}.{minor}): {e}; rebuild with CUDA_COMPUTE_CAP={major}{minor}",
                        images::TARGET
                    )
                })?;
            for f in *fns {
                let func = m
                    .load_function(f)
                    .map_err(|e| anyhow!("kernel {f} missing from kernels/{file}.cu: {e}"))?;
                gpu.funcs.insert(*f, func);
            }
            gpu._modules.push(m);
        }
        for k in BIG_SMEM_KERNELS {
            gpu.funcs[k].set_attribute(
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem_optin as i32,
            )?;
        }
        Ok(Self::with_device(
            Device::Gpu(Box::new(gpu)),
            name,
            sm_count,
            smem_optin,
        ))
    }

    /// The CUDA backend on the CUDA emulator (docs/cuda-emulator.md): the same host code and
    /// the same kernels/*.cu, compiled for the CPU, with an H100's SM count and shared-memory
    /// limits. Slow; for checking the backend on machines without a GPU.
    pub fn emulated() -> Result<Cuda> {
        Self::emulated_in(EmuOrder::Forward)
    }

    /// `emulated`, running each block's threads in `order` between barriers (the reverse
    /// order exposes reads of other threads' writes that lack a barrier).
    pub fn emulated_in(order: EmuOrder) -> Result<Cuda> {
        for (file, fns) in FUNCTIONS {
            for f in *fns {
                anyhow::ensure!(
                    emu::has_kernel(f),
                    "kernel {f} missing from the emulator's build of kernels/{file}.cu"
                );
            }
        }
        for k in BIG_SMEM_KERNELS {
            emu::set_max_dynamic_smem(k, emu::SMEM_OPTIN)?;
        }
        let label = match order {
            EmuOrder::Forward => "CUDA emulator (kernels/*.cu on the CPU, H100 limits)",
            EmuOrder::Reverse => {
                "CUDA emulator (kernels/*.cu on the CPU, H100 limits, threads in reverse order)"
            }
        };
        Ok(Self::with_device(
            Device::Emu(order),
            label.into(),
            emu::SM_COUNT,
            emu::SMEM_OPTIN,
        ))
    }

    fn with_device(dev: Device, name: String, sm_count: usize, smem_optin: usize) -> Cuda {
        Cuda {
            dev,
            ledger: Mutex::new(Ledger::new()),
            poison: AtomicBool::new(false),
            invariant: AtomicBool::new(true),
            name,
            sm_count,
            smem_optin,
            meta: Mutex::new(None),
            inv_freq: Mutex::new(HashMap::new()),
            ranges: nvtx::PhaseRanges,
        }
    }

    /// Whether this backend runs on the CUDA emulator rather than a GPU.
    pub fn is_emulated(&self) -> bool {
        matches!(self.dev, Device::Emu(_))
    }

    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// When on, every fresh output buffer is filled with NaN before the kernel writes it, so
    /// a tests sees any element a kernel forgot.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    pub(crate) fn invariant(&self) -> bool {
        self.invariant.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, op: &'static str, c: Counts) {
        self.charge(op, c);
    }

    pub(crate) fn dev(&self) -> &Device {
        &self.dev
    }

    /// Queues kernel `name`. A grid with a zero dimension launches nothing.
    pub(crate) fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        let mut vals = args.to_vec();
        let mut ptrs: Vec<*mut c_void> = vals.iter_mut().map(Arg::as_ptr).collect();
        self.dev.launch(name, grid, block, smem, &mut ptrs)
    }

    /// Queues kernel `name` whose only argument is the struct `p` (by value).
    pub(crate) fn launch_struct<T: Copy>(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        p: &T,
    ) -> Result<()> {
        let mut v = *p;
        let mut ptrs = [&mut v as *mut T as *mut c_void];
        self.dev.launch(name, grid, block, smem, &mut ptrs)
    }

    /// A fresh f32 buffer (NaN-filled when poisoning is on).
    pub(crate) fn alloc_f32(&self, n: usize) -> Result<DSlice<f32>> {
        let b = self.dev.alloc::<f32>(n)?;
        if self.poison.load(Ordering::Relaxed) {
            self.fill("fill_u32", b.ptr(), 0x7fc0_0000, n)?;
        }
        Ok(b)
    }

    /// A fresh bf16 buffer (NaN-filled when poisoning is on).
    pub(crate) fn alloc_bf16(&self, n: usize) -> Result<DSlice<u16>> {
        let b = self.dev.alloc::<u16>(n)?;
        if self.poison.load(Ordering::Relaxed) {
            self.fill("fill_u16", b.ptr(), 0x7fc0, n)?;
        }
        Ok(b)
    }

    /// Fills n elements at `p` with `bits` (fill_u32, or fill_u16 with the low 16 bits:
    /// the driver copies a kernel parameter's own size, 2 bytes, from the low end).
    pub(crate) fn fill(&self, kernel: &str, p: u64, bits: u32, n: usize) -> Result<()> {
        let args = [Arg::P(p), Arg::I(bits as i32), Arg::Z(n as u64)];
        self.launch(kernel, (grid_1d(n), 1, 1), 256, 0, &args)
    }

    pub(crate) fn upload<T: Elem>(&self, v: &[T]) -> Result<DSlice<T>> {
        self.dev.upload(v)
    }
}

/// Blocks of 256 threads for a grid-stride loop over n elements.
pub(crate) fn grid_1d(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 1 << 16) as u32
}

impl Backend for Cuda {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type Kv = CudaKv;

    fn name(&self) -> &'static str {
        if self.is_emulated() {
            "cuda-emu"
        } else {
            "cuda"
        }
    }
    fn device_label(&self) -> String {
        format!("{}: {}", self.name(), self.name)
    }
    fn ledger(&self) -> &Mutex<Ledger> {
        &self.ledger
    }
    /// Kernel faults surface here.
    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }
    fn set_batch_invariant(&self, on: bool) {
        self.invariant.store(on, Ordering::Relaxed);
    }
    fn max_attention_keys(&self) -> Option<usize> {
        self.invariant().then_some(plan::INVARIANT_MAX_KEYS)
    }
    fn set_phase(&self, p: crate::flops::Phase) {
        self.ranges.enter(p);
        crate::account::with_ledger(&self.ledger, |l| l.set_phase(p));
    }
    fn weight(&self, shape: &[usize], data: WeightData) -> Result<CudaWeight> {
        self.weight_impl(shape, data)
    }
    fn tensor(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CudaTensor> {
        self.tensor_impl(rows, cols, data)
    }
    fn to_host(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        self.to_host_impl(t)
    }
    fn shape(&self, t: &CudaTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }
    fn alloc_kv(&self, shape: KvShape) -> Result<CudaKv> {
        self.alloc_kv_impl(shape)
    }
    fn copy_pages(&self, kv: &mut CudaKv, copies: &[PageCopy]) -> Result<()> {
        self.copy_pages_impl(kv, copies)
    }
    fn embed(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor> {
        self.embed_impl(table, ids)
    }
    fn rms_norm(&self, x: &CudaTensor, w: &CudaWeight, eps: f32) -> Result<CudaTensor> {
        self.rms_norm_impl(x, w, eps)
    }
    fn add_rms_norm(
        &self,
        residual: &mut CudaTensor,
        x: &CudaTensor,
        w: &CudaWeight,
        eps: f32,
    ) -> Result<CudaTensor> {
        self.add_rms_norm_impl(residual, x, w, eps)
    }
    fn linear(&self, x: &CudaTensor, w: &CudaWeight) -> Result<CudaTensor> {
        self.linear_impl(x, w)
    }
    fn rope_store_kv(
        &self,
        qkv: &CudaTensor,
        kv: &mut CudaKv,
        layer: usize,
        batch: &Batch,
        dims: AttnDims,
    ) -> Result<CudaTensor> {
        self.rope_store_kv_impl(qkv, kv, layer, batch, dims)
    }
    fn attention(
        &self,
        q: &CudaTensor,
        kv: &CudaKv,
        layer: usize,
        batch: &Batch,
        dims: AttnDims,
    ) -> Result<CudaTensor> {
        self.attention_impl(q, kv, layer, batch, dims)
    }
    fn silu_mul(&self, gate_up: &CudaTensor) -> Result<CudaTensor> {
        self.silu_mul_impl(gate_up)
    }
    fn add(&self, a: &mut CudaTensor, b: &CudaTensor) -> Result<()> {
        self.add_impl(a, b)
    }
    fn gather_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        self.gather_rows_impl(x, rows)
    }
    fn sample_rows(
        &self,
        logits: &CudaTensor,
        limit: usize,
        s: crate::sample::Sampling,
        u: &[f64],
    ) -> Result<Vec<u32>> {
        self.sample(logits, limit, s, u)
    }
    fn talk_mix(
        &self,
        h_base: &CudaTensor,
        h_end: &CudaTensor,
        head: &TalkHead<Cuda>,
    ) -> Result<CudaTensor> {
        self.talk_mix_impl(h_base, h_end, head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs without a GPU: every kernel the backend looks up is in the embedded images (the
    /// fatbins carry the entry names as plain text in their PTX and symbol tables).
    #[test]
    fn every_kernel_is_in_its_image() {
        for (file, fns) in FUNCTIONS {
            let (_, image) = images::KERNELS
                .iter()
                .find(|(n, _)| n == file)
                .unwrap_or_else(|| panic!("kernels/{file}.cu not embedded"));
            for f in *fns {
                assert!(
                    image.windows(f.len()).any(|w| w == f.as_bytes()),
                    "{f} not found in kernels/{file}.cu's image"
                );
            }
        }
        assert!(images::TARGET.contains("sm_"));
    }

    /// The invariant attention bounds a model's context (`methods::common::attention_cap`)
    /// only where the model has more positions than it takes and no sliding window under it.
    #[test]
    fn the_attention_cap_applies_where_the_model_reaches_it() {
        use crate::methods::common::attention_cap;
        use crate::model::config::Config;
        let mut long = Config::builtin("tiny").unwrap();
        long.max_position_embeddings = 131_072;
        let cuda = Cuda::emulated().unwrap();
        assert_eq!(attention_cap(&cuda, &long), Some(32_256));
        assert_eq!(attention_cap(&crate::backend::cpu::Cpu::new(), &long), None);
        assert_eq!(
            attention_cap(&cuda, &Config::builtin("tiny").unwrap()),
            None
        );
        let windowed = Config {
            sliding_window: Some(4096),
            ..long.clone()
        };
        assert_eq!(attention_cap(&cuda, &windowed), None);
        cuda.set_batch_invariant(false);
        assert_eq!(attention_cap(&cuda, &long), None);
    }
}
