//! The CUDA emulator's Rust half: launches go to csrc/emu/runtime.cpp (kernels/*.cu compiled
//! for the host, every thread of a block a fiber, barriers and warp collectives real
//! rendezvous), and the one cuBLAS call ponder makes (gemm_ex, bf16 × bf16 → f32) is computed
//! here from its column-major definition, so a wrong transpose flag or leading dimension
//! gives wrong numbers here as it would on the GPU. docs/cuda-emulator.md says what the
//! emulator does and does not check.
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::ffi::{c_char, c_void, CString};

extern "C" {
    fn ponder_emu_launch(
        name: *const c_char,
        gx: u32,
        gy: u32,
        gz: u32,
        block: u32,
        smem: u32,
        args: *mut *mut c_void,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
    fn ponder_emu_set_max_dynamic_smem(name: *const c_char, bytes: u32) -> i32;
    fn ponder_emu_has_kernel(name: *const c_char) -> i32;
}

/// Shared memory per block a kernel may opt into on an H100 / H200 (227 KiB).
pub const SMEM_OPTIN: usize = 232_448;
/// Multiprocessors the emulator reports (an H100 SXM's / H200's 132), so that work lists
/// and splits are planned as they would be on that GPU.
pub const SM_COUNT: usize = 132;

fn cname(name: &str) -> Result<CString> {
    CString::new(name).map_err(|_| anyhow::anyhow!("kernel name {name:?} holds a NUL"))
}

pub fn has_kernel(name: &str) -> bool {
    // SAFETY: a NUL-terminated string that outlives the call.
    cname(name).is_ok_and(|c| unsafe { ponder_emu_has_kernel(c.as_ptr()) } != 0)
}

/// The driver's CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
pub fn set_max_dynamic_smem(name: &str, bytes: usize) -> Result<()> {
    let c = cname(name)?;
    // SAFETY: as above.
    if unsafe { ponder_emu_set_max_dynamic_smem(c.as_ptr(), bytes.min(u32::MAX as usize) as u32) }
        != 0
    {
        bail!("emulator: cannot allow {bytes} bytes of dynamic shared memory for {name}");
    }
    Ok(())
}

/// Runs kernel `name` to completion on this thread.
pub fn launch(
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    ptrs: &mut [*mut c_void],
) -> Result<()> {
    let c = cname(name)?;
    let mut err = vec![0 as c_char; 512];
    // SAFETY: `ptrs` point at the kernel's arguments in order (as for cuLaunchKernel); the
    // pointers inside them are live emulator buffers; err has err.len() bytes.
    let rc = unsafe {
        ponder_emu_launch(
            c.as_ptr(),
            grid.0,
            grid.1,
            grid.2,
            block,
            smem,
            ptrs.as_mut_ptr(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the runtime wrote a NUL-terminated message into err.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        bail!("CUDA emulator: {}", msg.to_string_lossy());
    }
    Ok(())
}

/// One cublasGemmEx call: column-major C[m×n] = op(A)[m×k] · op(B)[k×n], A and B bf16, C f32
/// (alpha 1, beta 0). op(X) = Xᵀ when `trans_x`. Addresses are device addresses.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub a: u64,
    pub lda: i32,
    pub b: u64,
    pub ldb: i32,
    pub c: u64,
    pub ldc: i32,
}

/// The GEMM on the host, with cuBLAS's argument checks (CUBLAS_STATUS_INVALID_VALUE).
///
/// # Safety
/// `g.a`, `g.b`, `g.c` must be addresses of host buffers large enough for the shapes and
/// leading dimensions given.
pub unsafe fn gemm(g: &Gemm) -> Result<()> {
    let rows = |t: bool, r: i32, c: i32| if t { c } else { r };
    if g.m < 0
        || g.n < 0
        || g.k < 0
        || g.lda < rows(g.trans_a, g.m, g.k).max(1)
        || g.ldb < rows(g.trans_b, g.k, g.n).max(1)
        || g.ldc < g.m.max(1)
    {
        bail!("cuBLAS gemm (emulated): CUBLAS_STATUS_INVALID_VALUE for {g:?}");
    }
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
    // Addresses as integers so that the parallel closure is Send + Sync; every task writes
    // its own elements of C.
    let (a, b, c) = (g.a as usize, g.b as usize, g.c as usize);
    let f = |x: u16| half::bf16::from_bits(x).to_f32();
    // op(A)[i][p] and op(B)[p][j] in column-major storage.
    let a_at = |i: usize, p: usize| {
        let at = if g.trans_a { p + i * lda } else { i + p * lda };
        // SAFETY: within A's buffer (the caller's contract).
        f(unsafe { *(a as *const u16).add(at) })
    };
    let b_at = |p: usize, j: usize| {
        let at = if g.trans_b { j + p * ldb } else { p + j * ldb };
        // SAFETY: within B's buffer.
        f(unsafe { *(b as *const u16).add(at) })
    };
    const TILE: usize = 64;
    let tiles = m.div_ceil(TILE);
    (0..n * tiles).into_par_iter().for_each(|t| {
        let (j, i0) = (t / tiles, (t % tiles) * TILE);
        for i in i0..(i0 + TILE).min(m) {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += a_at(i, p) * b_at(p, j);
            }
            // SAFETY: element (i, j) of C, written by this task only.
            unsafe { *(c as *mut f32).add(i + j * ldc) = acc };
        }
    });
    Ok(())
}
