//! The CPU backend's matrix multiply: `x` [n, k] times `w` [m, k] transposed, the hottest
//! loop of the CPU backend (every linear layer), kept apart from the other forward ops.
use super::cpu_math::{dot, dot4, dot_rows4};
use super::cpu_weight::Vals;
use super::widen_one;
use rayon::prelude::*;

/// A weight's rows, held as one or more row blocks of k columns (a stacked projection's
/// parts stay where they were loaded, memory-mapped ones included), f32 or bf16.
pub(super) struct Rows<'a> {
    /// (first row, values) of each block, in row order; the first block starts at row 0.
    blocks: Vec<(usize, Vals<'a>)>,
    k: usize,
}

impl<'a> Rows<'a> {
    pub(super) fn new(blocks: &[Vals<'a>], k: usize) -> Self {
        let mut first = 0;
        let blocks = blocks
            .iter()
            .map(|b| {
                let at = first;
                first += b.len() / k.max(1);
                (at, *b)
            })
            .collect();
        Rows { blocks, k }
    }

    fn len(&self) -> usize {
        self.blocks
            .last()
            .map_or(0, |(at, b)| at + b.len() / self.k.max(1))
    }

    /// Row j (a few blocks at most: a linear scan).
    #[inline]
    fn row(&self, j: usize) -> Vals<'a> {
        let mut b = 0;
        while b + 1 < self.blocks.len() && self.blocks[b + 1].0 <= j {
            b += 1;
        }
        let (at, data) = self.blocks[b];
        let r = (j - at) * self.k..(j - at + 1) * self.k;
        match data {
            Vals::F32(v) => Vals::F32(&v[r]),
            Vals::Bf16(v) => Vals::Bf16(&v[r]),
        }
    }

    /// Rows j0..j0+rows as f32 slices of k values each: borrowed where held as f32, widened
    /// into `scratch` where held as bf16 (exactly, so the products are the same bits).
    fn rows_f32<'s>(&self, j0: usize, rows: usize, scratch: &'s mut Vec<f32>) -> Vec<&'s [f32]>
    where
        'a: 's,
    {
        let k = self.k;
        let widen = (0..rows).any(|jj| matches!(self.row(j0 + jj), Vals::Bf16(_)));
        if widen {
            // Appended, not resized and overwritten: no zero-fill of up to 3.7 MB per task.
            scratch.clear();
            scratch.reserve(rows * k);
            for jj in 0..rows {
                match self.row(j0 + jj) {
                    Vals::F32(v) => scratch.extend_from_slice(v),
                    Vals::Bf16(v) => scratch.extend(v.iter().map(|b| widen_one(*b))),
                }
            }
        }
        let scratch: &'s [f32] = scratch;
        (0..rows)
            .map(|jj| match self.row(j0 + jj) {
                Vals::F32(v) if !widen => v,
                _ => &scratch[jj * k..(jj + 1) * k],
            })
            .collect()
    }
}

/// `out[i, j] = dot(x[i, ..], w[j, ..])` for `x` [n, k] and `w` [m, k], row-major [n, m].
pub(super) fn matmul_nt(x: &[f32], n: usize, k: usize, wd: &Rows, m: usize) -> Vec<f32> {
    debug_assert!(x.len() >= n * k && wd.len() >= m && wd.k == k);
    let mut out = vec![0.0f32; n * m];
    if n == 0 || m == 0 {
        return out;
    }
    // Each task streams a block of weight rows once per tile of input rows; every output
    // is one `dot` over k in a fixed order, so a row's result never depends on which other
    // rows share its batch, nor on whether it came in a prefill or a decode step.
    const BLOCK: usize = 64;
    const TILE: usize = 32;
    // Task b owns the output columns b*BLOCK.. of every row: disjoint strided writes straight
    // into the row-major result (a column-major scratch and a transpose cost a second
    // n*m buffer, its memset and a pass over it, 5-7% of a small-batch decode step).
    let dst = Columns(out.as_mut_ptr());
    (0..m.div_ceil(BLOCK)).into_par_iter().for_each(|b| {
        let j0 = b * BLOCK;
        let rows = BLOCK.min(m - j0);
        // A bf16 block is widened once per task into this thread's scratch (kept between
        // calls: one allocation per thread, not one per task), then read as f32 by every tile.
        // The task calls no rayon op, so nothing else runs on this thread while it is borrowed.
        let mut scratch = SCRATCH.with(|s| s.take());
        let wrows = wd.rows_f32(j0, rows, &mut scratch);
        let w = |jj: usize| wrows[jj];
        let xr = |i: usize| &x[i * k..(i + 1) * k];
        let put1 = |i: usize, jj: usize, val: f32| {
            debug_assert!(i < n && jj < rows);
            // SAFETY: i < n and j0 + jj < m, so the index is inside `out` (n*m values),
            // which outlives this parallel loop; column j0 + jj belongs to task b alone,
            // and within the task each (i, jj) is written once, so no two writes alias.
            unsafe { *dst.at(i * m + j0 + jj) = val };
        };
        // Four weight rows at a time (dot4 gives dot's bits), then the rest.
        let quads = rows / 4 * 4;
        for i0 in (0..n).step_by(TILE) {
            let i1 = (i0 + TILE).min(n);
            for jj in (0..quads).step_by(4) {
                let ws = [w(jj), w(jj + 1), w(jj + 2), w(jj + 3)];
                let put = |i: usize, v: [f32; 4]| {
                    for (r, val) in v.into_iter().enumerate() {
                        put1(i, jj + r, val);
                    }
                };
                // Input rows three at a time, then two, then one: each output is still
                // dot's bits (dot_rows4 and dot4 give the same).
                let mut i = i0;
                while i + 3 <= i1 {
                    let v = dot_rows4([xr(i), xr(i + 1), xr(i + 2)], ws);
                    for (d, vi) in v.into_iter().enumerate() {
                        put(i + d, vi);
                    }
                    i += 3;
                }
                if i + 2 <= i1 {
                    let v = dot_rows4([xr(i), xr(i + 1)], ws);
                    put(i, v[0]);
                    put(i + 1, v[1]);
                    i += 2;
                }
                if i < i1 {
                    put(i, dot4(xr(i), ws));
                }
            }
            for jj in quads..rows {
                for i in i0..i1 {
                    put1(i, jj, dot(xr(i), w(jj)));
                }
            }
        }
        drop(wrows);
        SCRATCH.with(|s| s.set(scratch));
    });
    out
}

thread_local! {
    /// Each rayon worker's buffer for widened bf16 weight rows (matmul_nt).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The output of matmul_nt, shared by its tasks, each of which writes only its own columns.
#[derive(Clone, Copy)]
struct Columns(*mut f32);

impl Columns {
    /// A method rather than a field read, so that closures capture the whole (Sync) wrapper
    /// and not the raw pointer inside it.
    #[inline]
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers pass an index inside the allocation (see matmul_nt).
        unsafe { self.0.add(i) }
    }
}

// SAFETY: the pointer is only written through at indices that are disjoint between tasks
// (matmul_nt), and the buffer outlives every task of the parallel loop that uses it.
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}
