//! The CPU backend's matrix multiply: `x` [n, k] times `w` [m, k] transposed, the hottest
//! loop of the CPU backend (every linear layer), kept apart from the other forward ops.
use super::cpu_math::{dot, dot4, dot_rows, dot_rows4, Weight};
use super::cpu_weight::{Held, Vals};
use rayon::prelude::*;

/// A weight's rows, held as one or more row blocks of k columns (a stacked projection's
/// parts stay where they were loaded, memory-mapped ones included), f32, bf16 or f16.
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
        data.slice((j - at) * self.k..(j - at + 1) * self.k)
    }

    /// Rows j0..j0+rows as values of type W, when every one of them is held as W.
    fn rows_as<W: Held>(&self, j0: usize, rows: usize) -> Option<Vec<&'a [W]>> {
        (0..rows).map(|jj| W::of(self.row(j0 + jj))).collect()
    }
}

/// `out[i, j] = dot(x[i, ..], w[j, ..])` for `x` [n, k] and `w` [m, k], row-major [n, m].
pub(super) fn matmul_nt(x: &[f32], n: usize, k: usize, wd: &Rows, m: usize) -> Vec<f32> {
    // Hard checks: the writes below are unchecked, and with k = 0 no slice bound would stop
    // a wrapped n·m.
    let len = n.checked_mul(m).expect("matmul_nt: n·m overflows");
    assert!(n.checked_mul(k).is_some_and(|nk| x.len() >= nk) && wd.k == k);
    let mut out = vec![0.0f32; len];
    // k = 0: empty sums (and weight rows of no values, which cannot be counted).
    if n == 0 || m == 0 || k == 0 {
        return out;
    }
    assert!(
        wd.len() >= m,
        "matmul_nt: {} weight rows, not {m}",
        wd.len()
    );
    // Each task streams a block of weight rows once per tile of input rows; every output
    // is one `dot` over k in a fixed order, so a row's result never depends on which other
    // rows share its batch, nor on whether it came in a prefill or a decode step.
    // Decode-sized calls take half the block: a 576-row projection is then 18 tasks, not 9
    // split 5:4 over two threads. Blocks stay multiples of four rows, so each weight row
    // gets the same dot function (dot4 in a quad, dot past the last) with either size.
    let block = if n < 16 { 32 } else { 64 };
    // Task b owns the output columns b*block.. of every row: disjoint strided writes straight
    // into the row-major result (a column-major scratch and a transpose cost a second
    // n*m buffer, its memset and a pass over it, 5-7% of a small-batch decode step).
    let dst = Columns(out.as_mut_ptr());
    (0..m.div_ceil(block)).into_par_iter().for_each(|b| {
        let j0 = b * block;
        let rows = block.min(m - j0);
        let task = Task {
            x,
            n,
            k,
            m,
            j0,
            rows,
            dst,
        };
        // An f32 block is read where it lies. A bf16 or f16 block streams its two-byte values
        // through the dot kernels, which widen in registers (cpu_math::Weight: the same bits
        // as on the widened rows). Those widen a weight again for every three input rows, so
        // from WIDEN_ONCE rows on the block is widened once into this thread's scratch and
        // read as f32 by every row; so is a block mixing dtypes, which CpuWeight never holds
        // (it widens such a stack at load time). The task calls no rayon op, so nothing
        // else runs on this thread while the scratch is out.
        if let Some(w) = wd.rows_as::<f32>(j0, rows) {
            return task.run(&w);
        }
        if n < WIDEN_ONCE {
            if let Some(w) = wd.rows_as::<u16>(j0, rows) {
                return task.run(&w);
            }
            if let Some(w) = wd.rows_as::<half::f16>(j0, rows) {
                return task.run(&w);
            }
        }
        // (Every value below rows * k is overwritten: no need to clear what a previous block
        // left there.)
        let mut scratch = SCRATCH.with(|s| s.take());
        if scratch.len() < rows * k {
            scratch.resize(rows * k, 0.0);
        }
        for (jj, out) in scratch[..rows * k].chunks_exact_mut(k.max(1)).enumerate() {
            wd.row(j0 + jj).widen_into(out);
        }
        let w: Vec<&[f32]> = (0..rows).map(|jj| &scratch[jj * k..(jj + 1) * k]).collect();
        task.run(&w);
        drop(w);
        SCRATCH.with(|s| s.set(scratch));
    });
    out
}

/// Below this many input rows, a task streams each weight row once past all of them
/// (`Task::stream`); from it on, it reuses blocks of four weight rows from cache for groups of
/// three input rows, which the FMAs then bound (docs/BENCHMARKS.md, 2026-12-07).
const STREAM_BELOW: usize = 8;

/// Past this many bytes of input rows, `Task::stream` takes the rows in pairs outside the
/// weight rows rather than inside (the rows no longer stay in a 32 KB L1 data cache).
const STREAM_L1_BYTES: usize = 24 * 1024;

/// From this many input rows on, a 16-bit block is widened once per task rather than in
/// registers per group of three rows (docs/BENCHMARKS.md, 2026-12-07).
const WIDEN_ONCE: usize = 16;

thread_local! {
    /// Each rayon worker's buffer for a widened bf16 block (matmul_nt).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One task of matmul_nt: output columns j0..j0+rows of every input row.
struct Task<'a> {
    x: &'a [f32],
    n: usize,
    k: usize,
    m: usize,
    j0: usize,
    rows: usize,
    dst: Columns,
}

impl Task<'_> {
    /// Output (input row i, weight row j0 + jj).
    #[inline]
    fn put(&self, i: usize, jj: usize, val: f32) {
        debug_assert!(i < self.n && jj < self.rows);
        // SAFETY: i < n and j0 + jj < m, so the index is inside `out` (n*m values), which
        // outlives this parallel loop; column j0 + jj belongs to this task alone, and within
        // the task each (i, jj) is written once, so no two writes alias.
        unsafe { *self.dst.at(i * self.m + self.j0 + jj) = val };
    }

    /// `w[jj]` is weight row j0 + jj.
    fn run<W: Weight>(&self, w: &[&[W]]) {
        const TILE: usize = 32;
        let Task { x, n, k, rows, .. } = *self;
        debug_assert_eq!(w.len(), rows);
        if n < STREAM_BELOW {
            return self.stream(w);
        }
        let xr = |i: usize| &x[i * k..(i + 1) * k];
        // Four weight rows at a time (dot4 gives dot's bits), then the rest.
        let quads = rows / 4 * 4;
        for i0 in (0..n).step_by(TILE) {
            let i1 = (i0 + TILE).min(n);
            for jj in (0..quads).step_by(4) {
                let ws = [w[jj], w[jj + 1], w[jj + 2], w[jj + 3]];
                let put = |i: usize, v: [f32; 4]| {
                    for (r, val) in v.into_iter().enumerate() {
                        self.put(i, jj + r, val);
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
            for (jj, wj) in w.iter().enumerate().skip(quads) {
                for i in i0..i1 {
                    self.put(i, jj, dot(xr(i), wj));
                }
            }
        }
    }

    /// Each weight row once, against every input row in pairs (dot_rows): with few input
    /// rows a step waits on the weights coming in from memory, so each is used up while it
    /// passes, in one sequential stream.
    fn stream<W: Weight>(&self, w: &[&[W]]) {
        let n = self.n;
        // Where each dot_rows call's input rows start: row 0 alone when n is odd, then pairs.
        let starts = || {
            (n % 2 == 1)
                .then_some(0)
                .into_iter()
                .chain((n % 2..n).step_by(2))
        };
        // Input rows past L1's size (the down projection's six rows of 1536 are 36 KB) are
        // reread for every weight row: then pairs of rows go outside, and the block's
        // weights come from L2 after the first pair. The same dot_rows calls either way.
        if n * self.k * 4 > STREAM_L1_BYTES {
            for i in starts() {
                for (jj, wj) in w.iter().enumerate() {
                    self.rows_from(i, jj, wj);
                }
            }
        } else {
            for (jj, wj) in w.iter().enumerate() {
                for i in starts() {
                    self.rows_from(i, jj, wj);
                }
            }
        }
    }

    /// One dot_rows call of `stream`: input row 0 alone (i = 0 and n odd), else rows i and
    /// i + 1, against weight row `wj` (output column jj).
    fn rows_from<W: Weight>(&self, i: usize, jj: usize, wj: &[W]) {
        let Task { x, n, k, .. } = *self;
        let xr = |r: usize| &x[r * k..(r + 1) * k];
        if i == 0 && n % 2 == 1 {
            self.put(0, jj, dot_rows([xr(0)], wj)[0]);
        } else {
            let [a, b] = dot_rows([xr(i), xr(i + 1)], wj);
            self.put(i, jj, a);
            self.put(i + 1, jj, b);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_of_f32_bf16_and_f16_rows_gives_the_f32_bits() {
        // Rows 0..5 f32, 5..40 bf16, 40..71 f16: the first task (rows 0..64) mixes all three.
        let k = 19;
        let f: Vec<f32> = crate::rng::fill_uniform(1, 5 * k, 1.0);
        let b = crate::backend::round_to_bf16_bits(&crate::rng::fill_uniform(2, 35 * k, 1.0));
        let h: Vec<half::f16> = crate::rng::fill_uniform(4, 31 * k, 1.0)
            .iter()
            .map(|x| half::f16::from_f32(*x))
            .collect();
        let mut all = f.clone();
        all.extend(b.iter().map(|x| half::bf16::from_bits(*x).to_f32()));
        all.extend(h.iter().map(|x| x.to_f32()));
        let mixed = Rows::new(&[Vals::F32(&f), Vals::Bf16(&b), Vals::F16(&h)], k);
        let plain = Rows::new(&[Vals::F32(&all)], k);
        // Input rows below and past WIDEN_ONCE.
        for n in [7, 20] {
            let x = crate::rng::fill_uniform(3, n * k, 1.0);
            let (p, q) = (
                matmul_nt(&x, n, k, &mixed, 71),
                matmul_nt(&x, n, k, &plain, 71),
            );
            assert!(
                p.iter().zip(&q).all(|(u, v)| u.to_bits() == v.to_bits()),
                "n = {n}"
            );
        }
    }
}
