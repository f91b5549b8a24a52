//! Where the CUDA backend's buffers live and its kernels run: a real GPU (cudarc's driver API
//! on one stream, cuBLAS for the GEMMs) or the CUDA emulator (emu.rs: the same kernels/*.cu
//! compiled for the host by build.rs, buffers in host memory, cuBLAS's GEMM computed on the
//! CPU). Everything above this file — work lists, launch shapes, kernel arguments, the FLOP
//! ledger — is one code path for both, so the emulator tests it on machines without a GPU.
use super::emu;
use anyhow::{anyhow, Context, Result};
use cudarc::cublas;
use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

/// Element types of device buffers (any bit pattern valid, so poisoned memory is sound).
pub trait Elem: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {}
impl<T: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static> Elem for T {}

/// A device buffer: GPU memory, or the emulator's host memory.
pub enum DSlice<T> {
    Gpu(GpuBuf<T>),
    Host(HostBuf<T>),
}

/// A cudarc buffer whose drop first makes its context current on the dropping thread:
/// cudarc frees with cuMemFreeAsync without binding it, and with problems in flight a buffer
/// is often dropped by a worker thread other than the one whose pass made it (the batcher
/// hands outputs around), possibly before that worker has made any CUDA call of its own.
/// Without a current context the free fails, the buffer leaks, and the recorded error
/// surfaces at some later, unrelated call.
pub struct GpuBuf<T>(std::mem::ManuallyDrop<CudaSlice<T>>);

impl<T> GpuBuf<T> {
    fn new(b: CudaSlice<T>) -> Self {
        GpuBuf(std::mem::ManuallyDrop::new(b))
    }
}

impl<T> std::ops::Deref for GpuBuf<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.0
    }
}

impl<T> std::ops::DerefMut for GpuBuf<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.0
    }
}

impl<T> Drop for GpuBuf<T> {
    fn drop(&mut self) {
        bind_quietly(self.0.stream());
        // SAFETY: dropped once, here; the field is never used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.0) };
    }
}

impl<T> DSlice<T> {
    pub fn len(&self) -> usize {
        match self {
            DSlice::Gpu(b) => b.len(),
            DSlice::Host(h) => h.len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The address kernels get (everything runs on one stream in order, and buffers are
    /// freed stream-ordered, so it stays valid for the launches queued while `self` lives).
    pub fn ptr(&self) -> u64 {
        match self {
            DSlice::Gpu(b) => b.device_ptr(b.stream()).0,
            DSlice::Host(h) => h.ptr.as_ptr() as u64,
        }
    }
}

/// Host memory standing in for a device allocation: 256-byte aligned like cudaMalloc's, so
/// a kernel's vector loads are aligned exactly when they would be on a GPU. Kernels write it
/// through raw addresses, so no Rust reference to its contents is ever held.
pub struct HostBuf<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: plain memory owned by this value; access goes through raw pointers, in launch order.
unsafe impl<T: Send> Send for HostBuf<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for HostBuf<T> {}

impl<T> HostBuf<T> {
    /// At least one element (a zero-size layout may not be allocated), 256-byte aligned as
    /// cudaMalloc's are; a size past isize is an error, never a wrapped small buffer.
    fn layout(len: usize) -> Result<std::alloc::Layout> {
        std::alloc::Layout::array::<T>(len.max(1))
            .and_then(|l| l.align_to(256))
            .map_err(|_| anyhow!("a {len}-element buffer is larger than memory"))
    }
}

impl<T: Elem> HostBuf<T> {
    /// `len` elements of `byte` repeated (0xff: NaN for floats, like an unwritten buffer
    /// under poisoning; 0: zeros).
    fn filled(len: usize, byte: u8) -> Result<HostBuf<T>> {
        let layout = Self::layout(len)?;
        // SAFETY: layout has non-zero size.
        let p = unsafe {
            if byte == 0 {
                std::alloc::alloc_zeroed(layout)
            } else {
                std::alloc::alloc(layout)
            }
        };
        let ptr = NonNull::new(p as *mut T)
            .ok_or_else(|| anyhow!("out of host memory for a {len}-element buffer"))?;
        if byte != 0 {
            // SAFETY: the allocation holds layout.size() bytes.
            unsafe { std::ptr::write_bytes(p, byte, layout.size()) };
        }
        Ok(HostBuf { ptr, len })
    }
}

impl<T> Drop for HostBuf<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `filled` with this layout.
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr() as *mut u8,
                Self::layout(self.len).expect("allocated with it"),
            )
        };
    }
}

/// A cuBLAS handle bound to the backend's stream. Not cudarc's `CudaBlas`, whose drop unwraps
/// cublasDestroy's status: a run ended by a kernel fault drops the backend while its error is
/// on the way to being printed, and a panic there would replace the one-line error.
pub struct Blas {
    handle: cublas::sys::cublasHandle_t,
    /// The stream the handle launches on, kept alive as long as the handle.
    stream: Arc<CudaStream>,
}

// SAFETY: the handle is only used with the backend's context bound, one call at a time on its
// one stream (cuBLAS handles may be used from any thread that binds their context).
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Blas {
    fn new(stream: Arc<CudaStream>) -> Result<Self> {
        stream.context().bind_to_thread()?;
        let blas = Blas {
            handle: cublas::result::create_handle()?,
            stream,
        };
        // SAFETY: a live handle and this context's live stream.
        unsafe { cublas::result::set_stream(blas.handle, blas.stream.cu_stream() as _) }?;
        Ok(blas)
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        bind_quietly(&self.stream);
        // SAFETY: created in `new`, destroyed once, here. Its status is of no use now.
        let _ = unsafe { cublas::result::destroy_handle(self.handle) };
    }
}

/// Makes the stream's context current without `bind_to_thread`, which would first take (and
/// so lose) an error recorded earlier, which the next checked call must still report.
fn bind_quietly(stream: &CudaStream) {
    let ctx = stream.context().cu_ctx();
    if result::ctx::get_current().ok().flatten() != Some(ctx) {
        // SAFETY: the context outlives the stream that holds it; making it current only
        // changes this thread's binding.
        let _ = unsafe { result::ctx::set_current(ctx) };
    }
}

/// A real GPU: context, the one stream, cuBLAS, the loaded kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: Blas,
    pub funcs: HashMap<&'static str, CudaFunction>,
    pub _modules: Vec<Arc<CudaModule>>,
}

pub enum Device {
    Gpu(Box<Gpu>),
    Emu(emu::Order),
}

impl Device {
    pub fn alloc<T: Elem>(&self, n: usize) -> Result<DSlice<T>> {
        Ok(match self {
            // SAFETY: handed out uninitialised; every caller's kernel writes it first.
            Device::Gpu(g) => DSlice::Gpu(GpuBuf::new(unsafe { g.stream.alloc::<T>(n.max(1)) }?)),
            Device::Emu(_) => DSlice::Host(HostBuf::filled(n, 0xff)?),
        })
    }

    pub fn alloc_zeros<T: Elem>(&self, n: usize) -> Result<DSlice<T>> {
        Ok(match self {
            Device::Gpu(g) => DSlice::Gpu(GpuBuf::new(g.stream.alloc_zeros::<T>(n.max(1))?)),
            Device::Emu(_) => DSlice::Host(HostBuf::filled(n, 0)?),
        })
    }

    pub fn upload<T: Elem>(&self, v: &[T]) -> Result<DSlice<T>> {
        match self {
            Device::Gpu(g) if !v.is_empty() => {
                Ok(DSlice::Gpu(GpuBuf::new(g.stream.clone_htod(v)?)))
            }
            _ => {
                let mut b = self.alloc::<T>(v.len())?;
                self.write_at(&mut b, 0, v)?;
                Ok(b)
            }
        }
    }

    pub fn download<T: Elem>(&self, b: &DSlice<T>) -> Result<Vec<T>> {
        self.download_prefix(b, b.len())
    }

    /// The first `n` elements of `b` (a tensor in a larger buffer: the padded GEMM's output).
    pub fn download_prefix<T: Elem>(&self, b: &DSlice<T>, n: usize) -> Result<Vec<T>> {
        anyhow::ensure!(n <= b.len(), "download of {n} elements from {}", b.len());
        match (self, b) {
            (Device::Gpu(g), DSlice::Gpu(b)) => {
                let v = g.stream.clone_dtoh(&b.slice(..n))?;
                // A copy into pageable memory returns once it is done on today's drivers,
                // but the API only promises "might be synchronous"; the host reads `v` next.
                g.stream.synchronize().context("CUDA stream")?;
                Ok(v)
            }
            (Device::Emu(_), DSlice::Host(h)) => {
                let mut v = vec![T::default(); n];
                // SAFETY: h holds h.len ≥ n elements; no launch runs concurrently on this
                // backend (launches are synchronous in the emulator).
                unsafe { std::ptr::copy_nonoverlapping(h.ptr.as_ptr(), v.as_mut_ptr(), n) };
                Ok(v)
            }
            _ => Err(anyhow!("a buffer of another device")),
        }
    }

    /// Copies `v` into `b[at..at + v.len()]`.
    pub fn write_at<T: Elem>(&self, b: &mut DSlice<T>, at: usize, v: &[T]) -> Result<()> {
        anyhow::ensure!(
            at + v.len() <= b.len(),
            "write past the end of a device buffer"
        );
        if v.is_empty() {
            return Ok(());
        }
        match (self, b) {
            (Device::Gpu(g), DSlice::Gpu(b)) => {
                g.stream
                    .memcpy_htod(v, &mut b.slice_mut(at..at + v.len()))?;
                Ok(())
            }
            (Device::Emu(_), DSlice::Host(h)) => {
                // SAFETY: bounds checked above.
                unsafe {
                    std::ptr::copy_nonoverlapping(v.as_ptr(), h.ptr.as_ptr().add(at), v.len())
                };
                Ok(())
            }
            _ => Err(anyhow!("a buffer of another device")),
        }
    }

    /// Queues (GPU) or runs (emulator) kernel `name`; `ptrs` point at its arguments in order.
    /// A grid with a zero dimension launches nothing.
    pub fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        ptrs: &mut [*mut c_void],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        match self {
            Device::Gpu(g) => {
                let f = g
                    .funcs
                    .get(name)
                    .ok_or_else(|| anyhow!("unknown kernel {name}"))?;
                g.ctx.bind_to_thread()?;
                // SAFETY: `ptrs` point at values of the kernel's parameter types, in order
                // (each call site mirrors its kernel's signature); they live until
                // cuLaunchKernel returns, which copies them.
                unsafe {
                    result::launch_kernel(
                        f.cu_function(),
                        grid,
                        (block, 1, 1),
                        smem,
                        g.stream.cu_stream(),
                        ptrs,
                    )
                }
                .map_err(|e| anyhow!("launching {name}: {e}"))
            }
            Device::Emu(order) => emu::launch(name, grid, block, smem, *order, ptrs),
        }
    }

    /// Column-major C[m×n] = op(A)·op(B) (cuBLAS gemm_ex: bf16 A and B, f32 compute and C,
    /// alpha 1, beta 0).
    pub fn gemm_bf16(&self, g: emu::Gemm) -> Result<()> {
        match self {
            Device::Gpu(gpu) => {
                use cudarc::cublas::sys as cb;
                let op = |t: bool| {
                    if t {
                        cb::cublasOperation_t::CUBLAS_OP_T
                    } else {
                        cb::cublasOperation_t::CUBLAS_OP_N
                    }
                };
                let (alpha, beta) = (1.0f32, 0.0f32);
                gpu.ctx.bind_to_thread()?;
                // SAFETY: device pointers of live buffers of the sizes the caller checked; the
                // handle is bound to this backend's stream.
                unsafe {
                    cudarc::cublas::result::gemm_ex(
                        gpu.blas.handle,
                        op(g.trans_a),
                        op(g.trans_b),
                        g.m,
                        g.n,
                        g.k,
                        &alpha as *const f32 as *const c_void,
                        g.a as *const c_void,
                        cb::cudaDataType_t::CUDA_R_16BF,
                        g.lda,
                        g.b as *const c_void,
                        cb::cudaDataType_t::CUDA_R_16BF,
                        g.ldb,
                        &beta as *const f32 as *const c_void,
                        g.c as *mut c_void,
                        cb::cudaDataType_t::CUDA_R_32F,
                        g.ldc,
                        cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
                .map_err(|e| anyhow!("cuBLAS gemm: {e}"))
            }
            // SAFETY: the caller passes addresses of live emulator buffers of the sizes the
            // shapes imply (checked before the call).
            Device::Emu(_) => unsafe { emu::gemm(&g) },
        }
    }

    /// Returns the memory pool's unused memory to the driver (GPU; best effort: after a
    /// failed allocation, the error being reported matters more).
    pub fn trim_pool(&self) {
        if let Device::Gpu(g) = self {
            let _ = g.stream.synchronize();
            if let Some(pool) = default_pool(&g.ctx) {
                // SAFETY: a plain driver call on this device's pool.
                let _ = unsafe { sys::cuMemPoolTrimTo(pool, 0) };
            }
        }
    }

    pub fn synchronize(&self) -> Result<()> {
        if let Device::Gpu(g) = self {
            g.stream.synchronize().context("CUDA stream")?;
        }
        Ok(())
    }

    /// Opens GPU `ordinal`'s context, stream and cuBLAS (the caller loads the kernels).
    pub fn open_gpu(ordinal: usize) -> Result<Gpu> {
        // SAFETY: only tries to dlopen the driver library.
        if !unsafe { sys::is_culib_present() } {
            anyhow::bail!(
                "no CUDA driver (libcuda.so.1 not found): this machine has no usable GPU"
            );
        }
        // The kernels are built by nvcc 13.0: an older driver cannot load them, and would
        // otherwise fail later with advice about compute capabilities that does not apply.
        let mut driver = 0;
        // SAFETY: writes one int; needs no context or cuInit.
        let got = unsafe { sys::cuDriverGetVersion(&mut driver) };
        if got == sys::cudaError_enum::CUDA_SUCCESS && driver < 13000 {
            anyhow::bail!(
                "the CUDA driver supports CUDA {}.{} only; ponder's kernels are built with CUDA \
                 13.0 and need a driver for CUDA 13 or newer (R580+)",
                driver / 1000,
                driver % 1000 / 10
            );
        }
        let n = CudaContext::device_count()
            .map_err(|e| anyhow!("the CUDA driver found no usable GPU ({e})"))?;
        if n <= 0 || ordinal >= n as usize {
            anyhow::bail!("no CUDA GPU {ordinal} ({n} found)");
        }
        // SAFETY: as above, for cuBLAS.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            anyhow::bail!(
                "cuBLAS (libcublas.so.13) not found: install the CUDA 13 runtime libraries"
            );
        }
        // cudarc accepts any libcublas.so.N it finds; its bindings are CUDA 13's.
        let mut major = 0;
        // SAFETY: writes one int; needs no handle.
        let got = unsafe {
            cudarc::cublas::sys::cublasGetProperty(
                cudarc::cublas::sys::libraryPropertyType::MAJOR_VERSION,
                &mut major,
            )
        };
        if got == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && major < 13 {
            anyhow::bail!(
                "the cuBLAS found is version {major}; ponder needs cuBLAS 13 (libcublas.so.13, \
                 the CUDA 13 runtime libraries)"
            );
        }
        let ctx = CudaContext::new(ordinal).context("cannot create a CUDA context")?;
        // One stream, stream-ordered allocation: cudarc's per-buffer events are not needed.
        // SAFETY: called before any buffer exists; nothing is shared across streams.
        unsafe { ctx.disable_event_tracking() };
        keep_pool_memory(&ctx);
        let stream = ctx.new_stream().context("cannot create a CUDA stream")?;
        let blas = Blas::new(stream.clone()).context("cannot create a cuBLAS handle")?;
        Ok(Gpu {
            ctx,
            stream,
            blas,
            funcs: HashMap::new(),
            _modules: Vec::new(),
        })
    }
}

/// Buffers come from the device's default memory pool (cudarc allocates stream-ordered). By
/// default that pool hands freed memory back to the driver at every synchronisation, and ponder
/// synchronises once a decode step (to read the sampled ids), so each step would map its
/// scratch buffers afresh. A release threshold of "never" keeps freed memory in the pool for
/// the next step, as the CUDA programming guide recommends for this pattern. Best effort: a
/// device without memory pools allocates synchronously anyway.
fn keep_pool_memory(ctx: &CudaContext) {
    let Some(pool) = default_pool(ctx) else {
        return;
    };
    let mut never: u64 = u64::MAX;
    // SAFETY: a plain driver call on this device's pool; `never` outlives it.
    let _ = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut never as *mut u64 as *mut c_void,
        )
    };
}

/// The default memory pool of the context's device, where cudarc's buffers come from (None
/// on a device without memory pools).
fn default_pool(ctx: &CudaContext) -> Option<sys::CUmemoryPool> {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: a plain driver call on this context's device; `pool` outlives it.
    let got = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    (got == sys::cudaError_enum::CUDA_SUCCESS && !pool.is_null()).then_some(pool)
}
