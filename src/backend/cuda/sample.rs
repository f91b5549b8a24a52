//! Sampling on the device (kernels/sample.cu): the semantics of src/sample.rs for every row of
//! a logits tensor at once, so that only the chosen ids travel back to the host.
use super::tensor::{CudaTensor, DType};
use super::Cuda;
use crate::flops::Counts;
use crate::sample::Sampling;
use anyhow::{ensure, Result};

/// Mirrors `SampleParams` in kernels/sample.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct SampleParams {
    logits: u64,
    u: u64,
    w: u64,
    out: u64,
    inv_t: f64,
    top_p: f32,
    ld: i32,
    limit: i32,
    greedy: i32,
    top_k: i32,
}

const _: () = assert!(std::mem::size_of::<SampleParams>() == 64);

impl Cuda {
    /// One id per row of `logits`, from ids below `limit`, with `u[row]` the row's uniform
    /// draw (src/rng.rs). The id equals `crate::sample::sample`'s for the same logits except
    /// when u lies within f64 rounding of a boundary of the cumulative distribution (see
    /// kernels/sample.cu). Records `sample` with the CPU sampler's counts per row.
    pub fn sample(
        &self,
        logits: &CudaTensor,
        limit: usize,
        s: Sampling,
        u: &[f64],
    ) -> Result<Vec<u32>> {
        let rows = logits.rows;
        ensure!(
            u.len() == rows,
            "sample: {} uniforms for {rows} rows",
            u.len()
        );
        if rows == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.min(logits.cols);
        ensure!(limit <= i32::MAX as usize, "sample: vocabulary too large");
        let l = self.as_dtype(logits, DType::F32)?;
        let greedy = s.temperature <= 0.0 || limit <= 1;
        let dev_u = self.upload(u)?;
        let scratch = if greedy {
            None
        } else {
            // Scratch the kernel writes before reading.
            Some(self.dev().alloc::<f64>(rows * limit)?)
        };
        let out = self.upload(&vec![0u32; rows])?;
        let p = SampleParams {
            logits: l.ptr(),
            u: dev_u.ptr(),
            w: scratch.as_ref().map_or(0, |b| b.ptr()),
            out: out.ptr(),
            inv_t: if greedy {
                0.0
            } else {
                1.0 / s.temperature as f64
            },
            top_p: s.top_p,
            ld: l.cols as i32,
            limit: limit as i32,
            greedy: greedy as i32,
            // k at or past the limit filters nothing (as on the CPU).
            top_k: s.top_k.min(limit) as i32,
        };
        self.launch_struct("sample_rows", (rows as u32, 1, 1), 1024, 0, &p)?;
        let ids = self.dev().download(&out)?;
        // The kernel writes u32::MAX for a row with a NaN or infinite logit below the limit.
        if let Some(k) = ids.iter().position(|&id| id == u32::MAX) {
            anyhow::bail!(
                "{} {k}: the model's activations overflow",
                crate::sample::NOT_FINITE
            );
        }
        let v = limit as u64;
        for _ in 0..rows {
            // The CPU sampler's own cost model (src/sample.rs), per row.
            let c = if greedy {
                Counts::exact(0, v * 4, 0)
            } else {
                Counts::exact(3 * v, v * 4, v)
            };
            self.record("sample", c);
        }
        Ok(ids)
    }
}
