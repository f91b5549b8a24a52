//! One test body per backend op, run on the CPU backend always and on the CUDA backend when
//! ponder is built with `--features cuda` and a GPU is present (else the CUDA instance prints
//! "skipped: no CUDA GPU" and passes), in the manner of candle's `test_device!`.
//!
//! Each body draws fresh random inputs, runs the op, and compares it with a naive f64
//! reference written here (so the CPU instance tests the CPU backend), with a tolerance fit
//! for the backend (f32: 1e-4; bf16 storage: 2e-2 relative to the largest magnitude). Weights
//! are rounded to bf16 first, so that both backends hold the same values. Every body also runs
//! the op on a fresh CPU backend and asserts that the useful FLOPs agree op by op (ops the CPU
//! does not have, such as `cast` or `attn_merge`, must count zero useful FLOPs). On the GPU,
//! every fresh output buffer is poisoned with NaN first and NaN fails any comparison. The CUDA
//! instances run the fast kernels (batch invariance off) except in the body that tests
//! batch invariance.
use anyhow::Result;
use ponder::backend::cpu::Cpu;
use ponder::backend::{AttnDims, Backend, Batch, KvShape, SeqSlice, TalkHead, WeightData};
use ponder::flops::Ledger;
use ponder::kv::PageCopy;
use ponder::sample::Sampling;
use std::borrow::Cow;

mod attention;
mod elementwise;
mod helpers;
mod model;
mod sampling;
mod thought;
use attention::*;
use elementwise::*;
use helpers::*;
use model::*;
use sampling::*;
use thought::*;

const CPU_TOL: f32 = 1e-4;
#[cfg(feature = "cuda")]
const GPU_TOL: f32 = 2e-2;

macro_rules! dual_test {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[test]
            fn cpu() {
                let be = ponder::backend::cpu::Cpu::new();
                super::$body(&be, super::CPU_TOL).unwrap();
            }
            #[test]
            fn cuda() {
                #[cfg(feature = "cuda")]
                {
                    if !ponder::backend::cuda::gpu_available() {
                        println!("skipped: no CUDA GPU");
                        return;
                    }
                    let be = ponder::backend::cuda::Cuda::new(0).unwrap();
                    be.set_poison(true);
                    // The fast kernels (prefill tiles, shared prefixes); a body that tests
                    // batch invariance turns it on itself.
                    ponder::backend::Backend::set_batch_invariant(&be, false);
                    super::$body(&be, super::GPU_TOL).unwrap();
                    ponder::backend::Backend::synchronize(&be).unwrap();
                }
                #[cfg(not(feature = "cuda"))]
                println!("skipped: no CUDA GPU (built without the cuda feature)");
            }
            /// The CUDA backend's host code and kernels on the CPU (docs/cuda-emulator.md).
            #[test]
            fn cuda_emu() {
                #[cfg(feature = "cuda")]
                {
                    let be = ponder::backend::cuda::Cuda::emulated().unwrap();
                    be.set_poison(true);
                    ponder::backend::Backend::set_batch_invariant(&be, false);
                    super::$body(&be, super::GPU_TOL).unwrap();
                }
                #[cfg(not(feature = "cuda"))]
                println!("skipped: the CUDA emulator is built with the cuda feature");
            }
            /// The same, each block's threads run last first between barriers: a read of
            /// another thread's write without a barrier between them gives wrong results in
            /// one of the two orders.
            #[test]
            fn cuda_emu_reverse() {
                #[cfg(feature = "cuda")]
                {
                    use ponder::backend::cuda::{Cuda, EmuOrder};
                    let be = Cuda::emulated_in(EmuOrder::Reverse).unwrap();
                    be.set_poison(true);
                    ponder::backend::Backend::set_batch_invariant(&be, false);
                    super::$body(&be, super::GPU_TOL).unwrap();
                }
                #[cfg(not(feature = "cuda"))]
                println!("skipped: the CUDA emulator is built with the cuda feature");
            }
        }
    )*};
}

dual_test!(
    op_embed,
    op_rms_norm,
    op_add_rms_norm,
    op_linear,
    op_linear_stacked,
    op_linear_row_anywhere,
    op_sizes_past_memory,
    op_silu_mul,
    op_add,
    op_gather_rows,
    op_rope_and_prefill_attention,
    op_decode_attention_long,
    op_tree_attention,
    op_short_extend_attention,
    op_copy_pages,
    op_thought_mask_attention,
    op_sampling,
    op_talk_mix,
    model_forward_tiny,
    model_forward_batch_invariant,
);
