//! Quiet-STaR's mixing head on the device (kernels/mix.cu around three cuBLAS GEMMs), with
//! the CPU backend's semantics and useful-FLOP records (src/backend/cpu_mix.rs).
use super::executed;
use super::ops::same_shape;
use super::tensor::{CudaTensor, CudaWeight, DType};
use super::{grid_1d, Arg, Cuda};
use crate::backend::{Backend, TalkHead};
use crate::flops::Counts;
use anyhow::{ensure, Result};

/// Threads per row of `talk_mix_out`.
const MIX_THREADS: u32 = 256;

impl Cuda {
    pub(super) fn talk_mix_impl(
        &self,
        h_base: &CudaTensor,
        h_end: &CudaTensor,
        head: &TalkHead<Cuda>,
    ) -> Result<CudaTensor> {
        same_shape(h_base, h_end, "talk_mix")?;
        let (n, d) = (h_base.rows, h_base.cols);
        let base = self.as_dtype(h_base, DType::F32)?;
        let end = self.as_dtype(h_end, DType::F32)?;
        let cat = self.bf16_tensor(n, 2 * d)?;
        self.launch(
            "concat_bf16",
            (n as u32, 1, 1),
            256,
            0,
            &[
                Arg::P(base.ptr()),
                Arg::P(end.ptr()),
                Arg::P(cat.ptr()),
                Arg::I(d as i32),
            ],
        )?;
        let (nn, dd) = (n as u64, d as u64);
        self.record("concat", Counts::exact(0, nn * dd * (2 * 4 + 2 * 2), 0));
        let a = self.linear(&cat, &head.w1)?;
        let a = self.bias_relu(&a, &head.b1)?;
        let b = self.linear(&a, &head.w2)?;
        let b = self.bias_relu(&b, &head.b2)?;
        let w = self.linear(&b, &head.w3)?;
        ensure!(
            w.cols == 1,
            "the talk head's last layer must have one output"
        );
        let out = self.f32_tensor(n, d)?;
        self.launch(
            "talk_mix_out",
            (n as u32, 1, 1),
            MIX_THREADS,
            0,
            &[
                Arg::P(base.ptr()),
                Arg::P(end.ptr()),
                Arg::P(w.ptr()),
                Arg::P(out.ptr()),
                Arg::I(d as i32),
            ],
        )?;
        // Per row one subtract (1 − w); per element two multiplies and one add (as the CPU).
        // Executed: each of a row's threads that has an element computes its own 1 − w.
        let useful = nn + 3 * nn * dd;
        self.record(
            "talk_mix",
            Counts {
                executed_flops: executed::talk_mix_out(nn, dd, MIX_THREADS as u64),
                ..Counts::exact(useful, 3 * nn * dd * 4 + nn * 4, 0)
            },
        );
        Ok(out)
    }

    /// bf16(max(x + b, 0)) per row: the next GEMM's input. One add per element.
    fn bias_relu(&self, x: &CudaTensor, b: &CudaWeight) -> Result<CudaTensor> {
        ensure!(b.len() == x.cols, "bias length differs from row length");
        let x = self.as_dtype(x, DType::F32)?;
        let out = self.bf16_tensor(x.rows, x.cols)?;
        let n = x.len();
        self.launch(
            "bias_relu",
            (grid_1d(n), 1, 1),
            256,
            0,
            &[
                Arg::P(x.ptr()),
                Arg::P(b.buf.ptr()),
                Arg::P(out.ptr()),
                Arg::I(x.cols as i32),
                Arg::Z(n as u64),
            ],
        )?;
        let n = n as u64;
        self.record(
            "bias_relu",
            Counts::exact(n, n * (4 + 2) + x.cols as u64 * 2, 0),
        );
        Ok(out)
    }
}
