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
        reverse: i32,
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

/// In which order the emulator runs a block's threads between barriers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Thread 0 first.
    Forward,
    /// The last thread first: exposes a read of another thread's write that lacks a barrier
    /// and that the forward order happens to satisfy.
    Reverse,
}

/// Runs kernel `name` to completion on this thread.
pub fn launch(
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    order: Order,
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
            (order == Order::Reverse) as i32,
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
    /// Columns of C anyone reads (≤ n): the emulator computes only these; a GPU computes all
    /// n (batch-invariant mode pads n to a fixed block, see `linear_impl`).
    pub live_n: i32,
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
    let n = n.min(g.live_n.max(0) as usize);
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

#[cfg(test)]
mod tests {
    //! The emulator's own semantics, on csrc/emu/selftest.cu's kernels.
    use super::*;

    fn run(name: &str, grid: u32, block: u32, smem: u32, bufs: &mut [&mut [u8]]) -> Result<()> {
        let mut addrs: Vec<u64> = bufs.iter_mut().map(|b| b.as_mut_ptr() as u64).collect();
        let mut ptrs: Vec<*mut c_void> = addrs
            .iter_mut()
            .map(|a| a as *mut u64 as *mut c_void)
            .collect();
        launch(name, (grid, 1, 1), block, smem, Order::Forward, &mut ptrs)
    }

    #[test]
    fn the_reverse_order_exposes_a_race_the_forward_order_hides() {
        let shifted = |order: Order, base: i32| {
            let mut out = vec![0i32; 64];
            let mut p = out.as_mut_ptr() as u64;
            let mut b = base;
            let mut ptrs = [
                &mut p as *mut u64 as *mut c_void,
                &mut b as *mut i32 as *mut c_void,
            ];
            launch("emu_test_racy_shift", (1, 1, 1), 64, 0, order, &mut ptrs).unwrap();
            out
        };
        let want = |base: i32| (0..64).map(|t| base + t - 1).collect::<Vec<i32>>();
        assert_eq!(
            shifted(Order::Forward, 0),
            want(0),
            "forward hides the race"
        );
        // Each thread reads its lower neighbour's slot before that neighbour ran: the
        // block's fresh shared memory, poisoned (-1), not this launch's values.
        let rev = shifted(Order::Reverse, 1000);
        assert_ne!(rev, want(1000), "reverse exposes the race");
        assert!(
            rev[1..].iter().all(|&x| x == -1),
            "unwritten slots read: {rev:?}"
        );
    }

    fn bytes<T>(v: &mut [T]) -> &mut [u8] {
        // SAFETY: plain integers and floats, viewed as their bytes.
        unsafe {
            std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v))
        }
    }

    #[test]
    fn shuffles_follow_cuda_semantics() {
        let mut out = vec![-1i32; 64 * 4];
        run("emu_test_shfl", 1, 64, 0, &mut [bytes(&mut out)]).unwrap();
        for t in 0..64i32 {
            let (lane, base) = (t % 32, t - t % 32);
            let o = &out[4 * t as usize..4 * t as usize + 4];
            assert_eq!(o[0], base + (lane ^ 5), "xor 5, thread {t}");
            assert_eq!(o[1], if lane >= 3 { t - 3 } else { t }, "up 3, thread {t}");
            assert_eq!(
                o[2],
                if lane + 7 < 32 { t + 7 } else { t },
                "down 7, thread {t}"
            );
            assert_eq!(o[3], base + (lane ^ 2), "xor 2 in width 8, thread {t}");
        }
    }

    /// (row, column) of lane `l`'s four C/D elements (PTX ISA, m16n8k16 f32 accumulators).
    fn c_fragment(l: usize) -> [(usize, usize); 4] {
        let (g, t) = (l / 4, l % 4);
        [
            (g, 2 * t),
            (g, 2 * t + 1),
            (g + 8, 2 * t),
            (g + 8, 2 * t + 1),
        ]
    }

    #[test]
    fn mma_is_a_16x8x16_product_in_the_ptx_fragment_layout() {
        // A 16x16, B 16x8 (bf16-exact small integers / 8), C 16x8.
        let a: Vec<f32> = (0..256)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let b: Vec<f32> = (0..128)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0)
            .collect();
        let c: Vec<f32> = (0..128).map(|i| (i % 9) as f32 - 4.0).collect();
        let bits = |x: f32| half::bf16::from_f32(x).to_bits() as u32;
        let pack = |lo: f32, hi: f32| bits(lo) | (bits(hi) << 16);
        let (mut fa, mut fb, mut fc) = (vec![0u32; 128], vec![0u32; 64], vec![0f32; 128]);
        for l in 0..32 {
            let (g, t) = (l / 4, l % 4);
            let at = |r: usize, k: usize| a[r * 16 + k];
            fa[4 * l] = pack(at(g, 2 * t), at(g, 2 * t + 1));
            fa[4 * l + 1] = pack(at(g + 8, 2 * t), at(g + 8, 2 * t + 1));
            fa[4 * l + 2] = pack(at(g, 2 * t + 8), at(g, 2 * t + 9));
            fa[4 * l + 3] = pack(at(g + 8, 2 * t + 8), at(g + 8, 2 * t + 9));
            let bt = |k: usize, n: usize| b[k * 8 + n];
            fb[2 * l] = pack(bt(2 * t, g), bt(2 * t + 1, g));
            fb[2 * l + 1] = pack(bt(2 * t + 8, g), bt(2 * t + 9, g));
            for (e, (r, n)) in c_fragment(l).into_iter().enumerate() {
                fc[4 * l + e] = c[r * 8 + n];
            }
        }
        let mut d = vec![f32::NAN; 128];
        run(
            "emu_test_mma",
            1,
            32,
            0,
            &mut [
                bytes(&mut fa),
                bytes(&mut fb),
                bytes(&mut fc),
                bytes(&mut d),
            ],
        )
        .unwrap();
        for l in 0..32 {
            for (e, (r, n)) in c_fragment(l).into_iter().enumerate() {
                let want =
                    c[r * 8 + n] + (0..16).map(|k| a[r * 16 + k] * b[k * 8 + n]).sum::<f32>();
                assert_eq!(d[4 * l + e], want, "D[{r}][{n}] (lane {l})");
            }
        }
    }

    #[test]
    fn a_barrier_orders_every_write_before_every_read_of_its_block() {
        let mut out = vec![-1i32; 3 * 128];
        run("emu_test_barrier", 3, 128, 0, &mut [bytes(&mut out)]).unwrap();
        for b in 0..3 {
            for t in 0..128 {
                assert_eq!(out[b * 128 + t], (127 - t) as i32 + 1000 * b as i32);
            }
        }
    }

    #[test]
    fn dynamic_shared_memory_starts_poisoned_and_is_bounded() {
        let mut out = vec![0u32; 2];
        run("emu_test_dynsmem", 2, 32, 64, &mut [bytes(&mut out)]).unwrap();
        assert_eq!(out, [u32::MAX, u32::MAX]);
        let e = run(
            "emu_test_dynsmem",
            1,
            32,
            48 * 1024 + 4,
            &mut [bytes(&mut out)],
        );
        assert!(e.unwrap_err().to_string().contains("dynamic shared memory"));
    }

    #[test]
    fn static_shared_memory_is_fresh_and_poisoned_in_every_block() {
        let mut out = vec![0u32; 64];
        run("emu_test_static_smem", 2, 32, 0, &mut [bytes(&mut out)]).unwrap();
        assert!(
            out[..32].iter().all(|&x| x == 7),
            "block 0 reads its writes"
        );
        assert!(
            out[32..].iter().all(|&x| x == u32::MAX),
            "block 1 must not see block 0's values: {:?}",
            &out[32..]
        );
    }

    #[test]
    fn a_write_past_a_shared_array_is_an_error() {
        let mut out = vec![0i32; 32];
        let overrun = |at: i32, dynamic: i32, out: &mut Vec<i32>| {
            let mut p = out.as_mut_ptr() as u64;
            let (mut a, mut d) = (at, dynamic);
            let mut ptrs = [
                &mut p as *mut u64 as *mut c_void,
                &mut a as *mut i32 as *mut c_void,
                &mut d as *mut i32 as *mut c_void,
            ];
            launch(
                "emu_test_smem_overrun",
                (1, 1, 1),
                32,
                64,
                Order::Forward,
                &mut ptrs,
            )
        };
        overrun(15, 0, &mut out).unwrap();
        overrun(15, 1, &mut out).unwrap();
        let e = overrun(16, 0, &mut out).unwrap_err().to_string();
        assert!(
            e.contains("past the end of shared array s (64 bytes)"),
            "{e}"
        );
        let e = overrun(16, 1, &mut out).unwrap_err().to_string();
        assert!(
            e.contains("past the end of the dynamic shared memory"),
            "{e}"
        );
        let e = overrun(-1, 1, &mut out).unwrap_err().to_string();
        assert!(e.contains("before the start of the dynamic"), "{e}");
    }

    #[test]
    fn deadlocks_and_bad_collectives_are_errors() {
        let mut out = vec![0i32; 64];
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        let e = msg(run("emu_test_deadlock", 1, 64, 0, &mut [bytes(&mut out)]));
        assert!(e.contains("deadlock"), "{e}");
        let e = msg(run("emu_test_shfl_any", 1, 48, 0, &mut [bytes(&mut out)]));
        assert!(e.contains("partial warp"), "{e}");
        let e = msg(run(
            "emu_test_exited_lane",
            1,
            32,
            0,
            &mut [bytes(&mut out)],
        ));
        assert!(e.contains("exited"), "{e}");
        let e = msg(run(
            "emu_test_barrier_after_exit",
            1,
            64,
            0,
            &mut [bytes(&mut out)],
        ));
        assert!(e.contains("__syncthreads"), "{e}");
        run("emu_test_shfl_any", 1, 64, 0, &mut [bytes(&mut out)]).unwrap();
        let e = msg(run("no_such_kernel", 1, 32, 0, &mut []));
        assert!(e.contains("no kernel named"), "{e}");
        let e = msg(run("emu_test_shfl_any", 1, 2048, 0, &mut [bytes(&mut out)]));
        assert!(e.contains("threads"), "{e}");
    }
}
