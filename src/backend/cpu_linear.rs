//! The CPU backend's matrix multiply: `x` [n, k] times `w` [m, k] transposed, the hottest
//! loop of the CPU backend (every linear layer), kept apart from the other forward ops.
use super::cpu_math::{dot, dot4, dot_rows4};
use rayon::prelude::*;

/// A weight's rows, held as one or more row blocks of k columns (a stacked projection's
/// parts stay where they were loaded, memory-mapped ones included).
pub(super) struct Rows<'a> {
    /// (first row, values) of each block, in row order; the first block starts at row 0.
    blocks: Vec<(usize, &'a [f32])>,
    k: usize,
}

impl<'a> Rows<'a> {
    pub(super) fn new(blocks: &[&'a [f32]], k: usize) -> Self {
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
    fn row(&self, j: usize) -> &'a [f32] {
        let mut b = 0;
        while b + 1 < self.blocks.len() && self.blocks[b + 1].0 <= j {
            b += 1;
        }
        let (at, data) = self.blocks[b];
        &data[(j - at) * self.k..(j - at + 1) * self.k]
    }
}

/// `out[i, j] = dot(x[i, ..], w[j, ..])` for `x` [n, k] and `w` [m, k], row-major [n, m].
pub(super) fn matmul_nt(x: &[f32], n: usize, k: usize, wd: &Rows, m: usize) -> Vec<f32> {
    debug_assert!(x.len() >= n * k && wd.len() >= m && wd.k == k);
    let mut out = vec![0.0f32; n * m];
    // Each task streams a block of weight rows once per tile of input rows; every output
    // is one `dot` over k in a fixed order, so a row's result never depends on which other
    // rows share its batch, nor on whether it came in a prefill or a decode step.
    const BLOCK: usize = 64;
    const TILE: usize = 32;
    let mut out_t = vec![0.0f32; m * n];
    if n > 0 {
        out_t
            .par_chunks_mut(BLOCK * n)
            .enumerate()
            .for_each(|(b, o)| {
                let rows = o.len() / n;
                let w = |jj: usize| wd.row(b * BLOCK + jj);
                let xr = |i: usize| &x[i * k..(i + 1) * k];
                // Four weight rows at a time (dot4 gives dot's bits), then the rest.
                let quads = rows / 4 * 4;
                for i0 in (0..n).step_by(TILE) {
                    let i1 = (i0 + TILE).min(n);
                    for jj in (0..quads).step_by(4) {
                        let ws = [w(jj), w(jj + 1), w(jj + 2), w(jj + 3)];
                        let mut put = |i: usize, v: [f32; 4]| {
                            for (r, val) in v.into_iter().enumerate() {
                                o[(jj + r) * n + i] = val;
                            }
                        };
                        // Input rows three at a time, then two, then one: each output is
                        // still dot's bits (dot_rows4 and dot4 give the same).
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
                            o[jj * n + i] = dot(xr(i), w(jj));
                        }
                    }
                }
            });
    }
    // Back to row-major, in parallel over blocks of output rows, a few columns at a time so
    // that the strided reads of out_t stay within cache lines already fetched.
    const ROWS: usize = 16;
    if n > 0 && m > 0 {
        out.par_chunks_mut(ROWS * m)
            .enumerate()
            .for_each(|(b, chunk)| {
                let i0 = b * ROWS;
                let rows = chunk.len() / m;
                for j0 in (0..m).step_by(ROWS) {
                    for j in j0..(j0 + ROWS).min(m) {
                        let col = &out_t[j * n + i0..j * n + i0 + rows];
                        for (i, v) in col.iter().enumerate() {
                            chunk[i * m + j] = *v;
                        }
                    }
                }
            });
    }
    out
}
