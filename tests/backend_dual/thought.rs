//! Quiet-STaR's thought blocks: the thought-diagonal mask of quiet-star.md as the attention
//! predicate of a `ThoughtBlock` slice, next to an ordinary sequence in the same batch.
use super::*;
use ponder::backend::ThoughtBlock;

/// One case: a thought layout of `l` positions whose blocks 0..depth are written, the block
/// `depth` fed by the main batch together with an ordinary sequence of `other` new tokens.
pub(crate) struct ThoughtCase {
    d: AttnDims,
    ps: usize,
    l: usize,
    depth: usize,
    other: usize,
    window: Option<usize>,
}

impl ThoughtCase {
    /// Page tables of the thought layout and of the ordinary sequence, interleaved so that
    /// neither is contiguous.
    fn tables(&self) -> (Vec<u32>, Vec<u32>, usize) {
        let nt = ((self.depth + 1) * self.l).div_ceil(self.ps);
        let no = self.other.div_ceil(self.ps);
        let total = nt + no;
        // Odd pages first, then even ones, each run backwards.
        let order: Vec<u32> = (0..total as u32)
            .rev()
            .filter(|p| p % 2 == 1)
            .chain((0..total as u32).rev().filter(|p| p % 2 == 0))
            .collect();
        (order[..nt].to_vec(), order[nt..].to_vec(), total)
    }

    fn main_batch(&self, tp: &[u32], op: &[u32]) -> Batch {
        let (l, depth) = (self.l, self.depth);
        let mut t = SeqSlice::new(self.other, l, depth * l, tp.to_vec());
        t.thought = Some(ThoughtBlock { len: l, depth });
        Batch {
            seqs: vec![SeqSlice::new(0, self.other, 0, op.to_vec()), t],
            page_size: self.ps,
            sliding_window: self.window,
        }
    }
}

/// Runs the case: returns (q after RoPE, attention output, ledger of the main batch).
fn run_case<B: Backend>(be: &B, c: &ThoughtCase) -> Result<(Vec<f32>, Vec<f32>, Ledger)> {
    let d = c.d;
    let (qd, kd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let (tp, op, pages) = c.tables();
    let mut kv = be.alloc_kv(KvShape {
        layers: 2,
        pages,
        page_size: c.ps,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
    })?;
    if c.depth > 0 {
        // Blocks 0..depth, written as an ordinary sequence (RoPE at the logical positions).
        let n = c.depth * c.l;
        let fill = Batch {
            seqs: vec![SeqSlice::new(0, n, 0, tp.clone())],
            page_size: c.ps,
            sliding_window: None,
        };
        let (k, v) = (rnd(61, n * kd, 1.0), rnd(62, n * kd, 1.0));
        rope(be, &vec![0.0; n * qd], &k, &v, &mut kv, LAYER, &fill, d)?;
    }
    let b = c.main_batch(&tp, &op);
    let n = b.n_tokens();
    let (q, k, v) = (
        rnd(63, n * qd, 1.0),
        rnd(64, n * kd, 1.0),
        rnd(65, n * kd, 1.0),
    );
    clear(be);
    let q = rope(be, &q, &k, &v, &mut kv, LAYER, &b, d)?;
    let out = be.attention(&q, &kv, LAYER, &b, d)?;
    Ok((be.to_host(&q)?, be.to_host(&out)?, ledger(be)))
}

/// The case on the host, in f64, from the predicate as quiet-star.md writes it: (rotated q,
/// attention output, allowed (query, key) pairs).
fn reference(c: &ThoughtCase) -> (Vec<f32>, Vec<f32>, u64) {
    let d = c.d;
    let (hd, qd, kd, th) = (
        d.head_dim,
        d.heads * d.head_dim,
        d.kv_heads * d.head_dim,
        d.rope_theta,
    );
    let (l, depth, other) = (c.l, c.depth, c.other);
    let rotated = |v: &[f32], pos: usize| {
        let mut r = v.to_vec();
        rope_row(&mut r, hd, pos, th);
        r
    };
    // Thought keys by logical position d'·l + j; ordinary keys by position.
    let (mut tk, mut tv) = (
        vec![0.0; (depth + 1) * l * kd],
        vec![0.0; (depth + 1) * l * kd],
    );
    let (k0, v0) = (rnd(61, depth * l * kd, 1.0), rnd(62, depth * l * kd, 1.0));
    for p in 0..depth * l {
        tk[p * kd..(p + 1) * kd].copy_from_slice(&rotated(&k0[p * kd..(p + 1) * kd], p));
        tv[p * kd..(p + 1) * kd].copy_from_slice(&v0[p * kd..(p + 1) * kd]);
    }
    let n = other + l;
    let (q, k, v) = (
        rnd(63, n * qd, 1.0),
        rnd(64, n * kd, 1.0),
        rnd(65, n * kd, 1.0),
    );
    let (mut ok, mut ov) = (vec![], vec![]);
    let mut qr = Vec::with_capacity(n * qd);
    for t in 0..n {
        // Ordinary rows sit at their position; thought row i at RoPE position i + depth.
        let pos = if t < other { t } else { t - other + depth };
        qr.extend(rotated(&q[t * qd..(t + 1) * qd], pos));
        let kr = rotated(&k[t * kd..(t + 1) * kd], pos);
        let vr = &v[t * kd..(t + 1) * kd];
        if t < other {
            ok.extend(kr);
            ov.extend_from_slice(vr);
        } else {
            let at = depth * l + (t - other);
            tk[at * kd..(at + 1) * kd].copy_from_slice(&kr);
            tv[at * kd..(at + 1) * kd].copy_from_slice(vr);
        }
    }
    let first = |i: usize| c.window.map_or(0, |w| (i + 1).saturating_sub(w));
    let (mut out, mut pairs) = (Vec::with_capacity(n * qd), 0u64);
    for t in 0..n {
        let row = &qr[t * qd..(t + 1) * qd];
        let (keys, ks, vs): (Vec<usize>, &[f32], &[f32]) = if t < other {
            ((first(t)..=t).collect(), &ok, &ov)
        } else {
            // (j, 0) for j <= i within the window, and (i, d') for 1 <= d' <= depth.
            let i = t - other;
            let mut keys: Vec<usize> = (first(i)..=i).collect();
            keys.extend((1..=depth).map(|dd| dd * l + i));
            (keys, &tk, &tv)
        };
        pairs += keys.len() as u64;
        out.extend(naive_attn_row(row, ks, vs, &keys, d));
    }
    (qr, out, pairs)
}

/// Thought blocks of several shapes (depth 0 is plain causal over block 0; blocks longer
/// than one 64-row tile; more depths than positions), with and without a sliding window:
/// q rotated at i + depth, attention as the predicate says, useful FLOPs 4·hd·heads per
/// allowed pair and equal to the CPU's op by op.
pub(crate) fn op_thought_mask_attention<B: Backend>(be: &B, tol: f32) -> Result<()> {
    for (hq, hk, hd, l, depth, ps, other) in [
        (4, 2, 16, 70, 3, 16, 40),
        (8, 2, 64, 33, 1, 4, 5),
        (4, 1, 32, 5, 7, 16, 1),
        (2, 2, 16, 20, 0, 8, 3),
        // Mistral-7B's head size and GQA ratio (Quiet-STaR's parallel mode at the study's
        // shape), the thought block past one 64-row tile.
        (8, 2, 128, 66, 2, 16, 9),
    ] {
        for window in [None, Some(20)] {
            let c = ThoughtCase {
                d: dims(hq, hk, hd),
                ps,
                l,
                depth,
                other,
                window,
            };
            let what = format!("thought block l={l} depth={depth} window={window:?}");
            let (q, out, lg) = run_case(be, &c)?;
            let (_, _, lc) = run_case(&Cpu::new(), &c)?;
            assert_same_useful(&lg, &lc);
            let (wq, wout, pairs) = reference(&c);
            assert_close(&q, &wq, tol.max(1e-5), &format!("{what}: rotated q"));
            assert_close(&out, &wout, tol, &format!("{what}: attention"));
            let attn = lc.by_op()["attention"].useful_flops;
            assert_eq!(
                attn,
                4 * (hd * hq) as u64 * pairs,
                "{what}: attention FLOPs"
            );
        }
    }
    Ok(())
}
