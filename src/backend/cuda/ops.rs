//! The CUDA backend's non-attention ops: storage, embedding, norms, linear (cuBLAS),
//! elementwise ops, row gather and KV page copies.
use super::emu::Gemm;
use super::executed;
use super::tensor::{CudaKv, CudaTensor, CudaWeight, DBuf, DType};
use super::{grid_1d, Arg, Cuda};
use crate::backend::{KvShape, WeightData};
use crate::flops::Counts;
use crate::kv::PageCopy;
use anyhow::{bail, ensure, Result};
use std::ops::Deref;

const F32: u64 = 4;
/// The one GEMM width (input rows per cuBLAS call) of batch-invariant mode: decode passes are
/// padded up to it, longer passes run block after block (each block reads the weights again).
/// 64 keeps a 7B decode step's padded tensor-core work (~0.9 TFLOP) under its weight read.
pub(crate) const GEMM_ROWS: usize = 64;
const BF16: u64 = 2;

/// A tensor in the dtype a kernel needs: the caller's, or a converted copy.
pub(crate) enum Held<'a> {
    Same(&'a CudaTensor),
    Converted(CudaTensor),
}

impl Deref for Held<'_> {
    type Target = CudaTensor;
    fn deref(&self) -> &CudaTensor {
        match self {
            Held::Same(t) => t,
            Held::Converted(t) => t,
        }
    }
}

pub(crate) fn same_shape(a: &CudaTensor, b: &CudaTensor, op: &str) -> Result<()> {
    crate::backend::check_same_shape((a.rows, a.cols), (b.rows, b.cols), op)
}

impl Cuda {
    pub(crate) fn f32_tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            buf: DBuf::F32(self.alloc_f32(crate::backend::tensor_len(rows, cols)?)?),
        })
    }

    pub(crate) fn bf16_tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            buf: DBuf::Bf16(self.alloc_bf16(crate::backend::tensor_len(rows, cols)?)?),
        })
    }

    /// Converts between f32 and bf16 (recorded as `cast`: no FLOPs).
    pub(crate) fn cast(&self, t: &CudaTensor, to: DType) -> Result<CudaTensor> {
        let n = t.len();
        let (out, kernel) = match to {
            DType::F32 => (self.f32_tensor(t.rows, t.cols)?, "cast_bf16_f32"),
            DType::Bf16 => (self.bf16_tensor(t.rows, t.cols)?, "cast_f32_bf16"),
        };
        self.launch(
            kernel,
            (grid_1d(n), 1, 1),
            256,
            0,
            &[Arg::P(t.ptr()), Arg::P(out.ptr()), Arg::Z(n as u64)],
        )?;
        self.record("cast", Counts::exact(0, n as u64 * (F32 + BF16), 0));
        Ok(out)
    }

    pub(crate) fn as_dtype<'a>(&self, t: &'a CudaTensor, to: DType) -> Result<Held<'a>> {
        if t.dtype() == to {
            Ok(Held::Same(t))
        } else {
            Ok(Held::Converted(self.cast(t, to)?))
        }
    }

    /// Makes an in-place operand f32 (activations only become bf16 as GEMM inputs).
    pub(crate) fn make_f32(&self, t: &mut CudaTensor) -> Result<()> {
        if t.dtype() != DType::F32 {
            *t = self.cast(t, DType::F32)?;
        }
        Ok(())
    }

    pub(super) fn weight_impl(&self, shape: &[usize], data: WeightData) -> Result<CudaWeight> {
        crate::backend::check_weight_shape(shape, data.len())?;
        // A bf16 checkpoint's (or synthetic model's) bits go up as they are.
        let bits = data.to_bf16_bits();
        Ok(CudaWeight {
            shape: shape.to_vec(),
            buf: self.upload(&bits)?,
        })
    }

    pub(super) fn tensor_impl(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CudaTensor> {
        ensure!(
            data.len() == crate::backend::tensor_len(rows, cols)?,
            "tensor data is not {rows}x{cols}"
        );
        Ok(CudaTensor {
            rows,
            cols,
            buf: DBuf::F32(self.upload(data)?),
        })
    }

    pub(super) fn to_host_impl(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        let n = t.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        // Only the tensor's own elements: its buffer may be larger (a padded GEMM's output).
        Ok(match &t.buf {
            DBuf::F32(b) => self.dev().download_prefix(b, n)?,
            DBuf::Bf16(b) => self
                .dev()
                .download_prefix(b, n)?
                .iter()
                .map(|x| half::bf16::from_bits(*x).to_f32())
                .collect(),
        })
    }

    pub(super) fn alloc_kv_impl(&self, shape: KvShape) -> Result<CudaKv> {
        let n = shape.elements()?;
        ensure!(
            shape.pages * shape.page_size <= u32::MAX as usize,
            "a KV cache of {} pages × {} tokens has more slots than u32 indexes",
            shape.pages,
            shape.page_size
        );
        let both = || -> Result<_> {
            Ok(if self.poison.load(std::sync::atomic::Ordering::Relaxed) {
                (self.alloc_bf16(n)?, self.alloc_bf16(n)?)
            } else {
                (
                    self.dev().alloc_zeros::<u16>(n)?,
                    self.dev().alloc_zeros::<u16>(n)?,
                )
            })
        };
        match both() {
            Ok((k, v)) => Ok(CudaKv { shape, k, v }),
            Err(e) => {
                // A K buffer made before its V failed went back to the memory pool, which
                // keeps what it is given (device.rs): hand it to the driver, so that a
                // smaller retry (fewer problems in flight) and cuBLAS can have it.
                self.dev().trim_pool();
                Err(e)
            }
        }
    }

    pub(super) fn copy_pages_impl(&self, kv: &mut CudaKv, copies: &[PageCopy]) -> Result<()> {
        let s = kv.shape;
        let row = s.kv_heads * s.head_dim;
        let mut triples = Vec::with_capacity(3 * copies.len());
        let mut elems = 0u64;
        for c in copies {
            ensure!(
                (c.src as usize) < s.pages && (c.dst as usize) < s.pages && c.len <= s.page_size,
                "bad page copy {c:?}"
            );
            triples.extend([c.src, c.dst, c.len as u32]);
            elems += (c.len * row * s.layers) as u64;
        }
        if copies.is_empty() {
            return Ok(());
        }
        let list = self.upload(&triples)?;
        self.launch(
            "kv_copy",
            (copies.len() as u32, s.layers as u32, 1),
            256,
            0,
            &[
                Arg::P(kv.k.ptr()),
                Arg::P(kv.v.ptr()),
                Arg::P(list.ptr()),
                Arg::I(s.page_size as i32),
                Arg::L((s.pages * s.page_size) as i64),
                Arg::I(row as i32),
            ],
        )?;
        // K and V, each read and written.
        self.record("kv_copy", Counts::exact(0, 4 * elems * BF16, 0));
        Ok(())
    }

    pub(super) fn embed_impl(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor> {
        let (vocab, d) = table.rows_cols();
        for &id in ids {
            ensure!(
                (id as usize) < vocab,
                "token id {id} is outside the vocabulary ({vocab})"
            );
        }
        let out = self.f32_tensor(ids.len(), d)?;
        let dev_ids = self.upload(ids)?;
        self.launch(
            "embed_gather",
            (ids.len() as u32, 1, 1),
            256,
            0,
            &[
                Arg::P(table.buf.ptr()),
                Arg::P(dev_ids.ptr()),
                Arg::P(out.ptr()),
                Arg::I(d as i32),
            ],
        )?;
        let n = ids.len() as u64;
        self.record(
            "embedding",
            Counts::exact(0, n * d as u64 * (BF16 + F32) + n * 4, 0),
        );
        Ok(out)
    }

    pub(super) fn rms_norm_impl(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        eps: f32,
    ) -> Result<CudaTensor> {
        ensure!(
            w.len() == x.cols,
            "rms_norm: weight length differs from row length"
        );
        let x = self.as_dtype(x, DType::F32)?;
        let out = self.bf16_tensor(x.rows, x.cols)?;
        self.launch(
            "rms_norm",
            (x.rows as u32, 1, 1),
            executed::NORM_THREADS as u32,
            0,
            &[
                Arg::P(x.ptr()),
                Arg::P(w.buf.ptr()),
                Arg::P(out.ptr()),
                Arg::I(x.cols as i32),
                Arg::F(eps),
            ],
        )?;
        let (n, d) = (x.rows as u64, x.cols as u64);
        self.record(
            "rmsnorm",
            Counts {
                executed_flops: executed::rms_norm(n, d, false),
                ..Counts::exact(4 * n * d, n * d * (F32 + BF16) + d * BF16, n)
            },
        );
        Ok(out)
    }

    pub(super) fn add_rms_norm_impl(
        &self,
        residual: &mut CudaTensor,
        x: &CudaTensor,
        w: &CudaWeight,
        eps: f32,
    ) -> Result<CudaTensor> {
        same_shape(residual, x, "add_rms_norm")?;
        ensure!(
            w.len() == x.cols,
            "add_rms_norm: weight length differs from row length"
        );
        self.make_f32(residual)?;
        let x = self.as_dtype(x, DType::F32)?;
        let out = self.bf16_tensor(x.rows, x.cols)?;
        self.launch(
            "add_rms_norm",
            (x.rows as u32, 1, 1),
            executed::NORM_THREADS as u32,
            0,
            &[
                Arg::P(residual.ptr()),
                Arg::P(x.ptr()),
                Arg::P(w.buf.ptr()),
                Arg::P(out.ptr()),
                Arg::I(x.cols as i32),
                Arg::F(eps),
            ],
        )?;
        let (n, d) = (x.rows as u64, x.cols as u64);
        self.record(
            "add_rmsnorm",
            Counts {
                executed_flops: executed::rms_norm(n, d, true),
                ..Counts::exact(5 * n * d, n * d * (3 * F32 + BF16) + d * BF16, n)
            },
        );
        Ok(out)
    }

    /// y = x·wᵀ through cuBLAS: bf16 operands, f32 accumulation and output. Column-major
    /// view: yᵀ [m, n] = op(W)ᵀ [m, k] · xᵀ [k, n], with W row-major [m, k] as the transposed
    /// operand (lda = k) and x row-major [n, k] as the plain one (ldb = k).
    ///
    /// Batch-invariant mode calls cuBLAS only with n = GEMM_ROWS, block after block of x's
    /// rows (the last one padded with copies of x's last row): cuBLAS chooses its kernel, and
    /// with it each output's order of summation, from the shape, so a row's bits would
    /// otherwise change with how many rows share the pass. Every call having one shape, every
    /// row gets the same kernel wherever it sits. The padding is executed work and is counted
    /// as such; useful FLOPs stay 2·n·m·k.
    pub(super) fn linear_impl(&self, x: &CudaTensor, w: &CudaWeight) -> Result<CudaTensor> {
        let (m, k) = crate::backend::check_linear_shape(x.cols, &w.shape)?;
        let n = x.rows;
        let block = if self.invariant() {
            GEMM_ROWS
        } else {
            n.max(1)
        };
        let blocks = n.div_ceil(block);
        let n_run = blocks * block;
        ensure!(
            m.max(n_run).max(k) <= i32::MAX as usize,
            "linear: shape too large for cuBLAS"
        );
        let xb = self.as_dtype(x, DType::Bf16)?;
        // Room for the padded rows too: the tensor is n rows, its buffer n_run (every reader
        // of a tensor goes by rows × cols). With k = 0 no GEMM runs and the sums are empty:
        // zeros, as the CPU gives.
        let len = crate::backend::tensor_len(n_run, m)?;
        let out = CudaTensor {
            rows: n,
            cols: m,
            buf: DBuf::F32(if k == 0 {
                self.dev.alloc_zeros::<f32>(len)?
            } else {
                self.alloc_f32(len)?
            }),
        };
        if n > 0 && m > 0 && k > 0 {
            for b0 in (0..n).step_by(block) {
                let live = block.min(n - b0);
                // A partial last block reads its rows from a padded copy.
                let tail = if live < block {
                    let rows: Vec<usize> = (b0..b0 + block).map(|r| r.min(n - 1)).collect();
                    Some(self.gather_rows_impl(&xb, &rows)?)
                } else {
                    None
                };
                let b = match &tail {
                    Some(t) => t.ptr(),
                    None => xb.ptr() + (b0 * k) as u64 * BF16,
                };
                self.dev()
                    .gemm_bf16(Gemm {
                        trans_a: true,
                        trans_b: false,
                        m: m as i32,
                        n: block as i32,
                        k: k as i32,
                        a: w.buf.ptr(),
                        lda: k as i32,
                        b,
                        ldb: k as i32,
                        c: out.ptr() + (b0 * m) as u64 * F32,
                        ldc: m as i32,
                        live_n: live as i32,
                    })
                    .map_err(|e| anyhow::anyhow!("cuBLAS gemm [{n}x{k}]·[{m}x{k}]ᵀ: {e}"))?;
            }
        }
        let (n, n_run, blocks, m, k) = (n as u64, n_run as u64, blocks as u64, m as u64, k as u64);
        // Executed = useful plus the padded rows: cuBLAS picks its own tiles, and their
        // padding is not visible here (the Nsight audit in docs/cuda.md is what checks this).
        // Each call reads the weights again. Bytes are what the GEMMs move: every block's
        // rows, the padded ones included, are read and written (the padded copy's gather
        // records its own bytes); with the fast kernels n_run = n.
        self.record(
            "matmul",
            Counts {
                executed_flops: 2 * n_run * m * k,
                ..Counts::exact(
                    2 * n * m * k,
                    (blocks.max(1) * m * k + n_run * k) * BF16 + n_run * m * F32,
                    0,
                )
            },
        );
        Ok(out)
    }

    pub(super) fn silu_mul_impl(&self, gate_up: &CudaTensor) -> Result<CudaTensor> {
        let f = crate::backend::check_gate_up((gate_up.rows, gate_up.cols))?;
        let gu = self.as_dtype(gate_up, DType::F32)?;
        let out = self.bf16_tensor(gu.rows, f)?;
        let n = gu.rows * f;
        if n > 0 {
            self.launch(
                "silu_mul",
                (grid_1d(n), 1, 1),
                256,
                0,
                &[
                    Arg::P(gu.ptr()),
                    Arg::P(out.ptr()),
                    Arg::Z(n as u64),
                    Arg::Z(f as u64),
                ],
            )?;
        }
        let n = n as u64;
        self.record(
            "silu_mul",
            Counts {
                executed_flops: executed::silu_mul(n),
                ..Counts::exact(3 * n, n * (2 * F32 + BF16), n)
            },
        );
        Ok(out)
    }

    pub(super) fn add_impl(&self, a: &mut CudaTensor, b: &CudaTensor) -> Result<()> {
        same_shape(a, b, "add")?;
        self.make_f32(a)?;
        let b = self.as_dtype(b, DType::F32)?;
        let n = a.len();
        self.launch(
            "add_f32",
            (grid_1d(n), 1, 1),
            256,
            0,
            &[Arg::P(a.ptr()), Arg::P(b.ptr()), Arg::Z(n as u64)],
        )?;
        let n = n as u64;
        self.record("add", Counts::exact(n, 3 * n * F32, 0));
        Ok(())
    }

    pub(super) fn gather_rows_impl(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        let mut idx = Vec::with_capacity(rows.len());
        for &r in rows {
            if r >= x.rows {
                bail!("gather_rows: row {r} of {}", x.rows);
            }
            idx.push(r as u32);
        }
        let (out, kernel) = match x.dtype() {
            DType::F32 => (self.f32_tensor(rows.len(), x.cols)?, "gather_rows_b32"),
            DType::Bf16 => (self.bf16_tensor(rows.len(), x.cols)?, "gather_rows_b16"),
        };
        let dev = self.upload(&idx)?;
        self.launch(
            kernel,
            (rows.len() as u32, 1, 1),
            256,
            0,
            &[
                Arg::P(x.ptr()),
                Arg::P(dev.ptr()),
                Arg::P(out.ptr()),
                Arg::I(x.cols as i32),
            ],
        )?;
        let b = 2 * (rows.len() * x.cols) as u64 * x.dtype().size() + 4 * rows.len() as u64;
        self.record("gather", Counts::exact(0, b, 0));
        Ok(out)
    }
}
