//! Embedding, RMSNorm (with and without the residual add), linear, SiLU·mul, add, gather.
use super::*;

pub(crate) fn op_embed<B: Backend>(be: &B, tol: f32) -> Result<()> {
    let (vocab, d) = (50, 24);
    let table = bf16(&rnd(1, vocab * d, 1.0));
    let ids: Vec<u32> = vec![3, 0, 49, 3, 17];
    let got = with_flops(
        be,
        |b| {
            let t = weight(b, &[vocab, d], &table);
            b.to_host(&b.embed(&t, &ids)?)
        },
        |c| c.embed(&weight(c, &[vocab, d], &table), &ids).map(|_| ()),
    )?;
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect();
    assert_close(&got, &want, tol.min(1e-6), "embed");
    let t = weight(be, &[vocab, d], &table);
    assert!(be.embed(&t, &[50]).is_err(), "an id past the vocabulary");
    Ok(())
}

pub(crate) fn op_rms_norm<B: Backend>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (5, 40);
    let x = rnd(2, n * d, 3.0);
    let w = bf16(&rnd(3, d, 1.0).iter().map(|v| 1.0 + v).collect::<Vec<_>>());
    let run = |b: &B| -> Result<Vec<f32>> {
        let xt = b.tensor(n, d, &x)?;
        b.to_host(&b.rms_norm(&xt, &weight(b, &[d], &w), 1e-5)?)
    };
    let got = with_flops(be, run, |c| {
        c.rms_norm(&c.tensor(n, d, &x)?, &weight(c, &[d], &w), 1e-5)
            .map(|_| ())
    })?;
    assert_close(&got, &naive_rms(&x, d, &w, 1e-5), tol, "rms_norm");
    Ok(())
}

pub(crate) fn op_add_rms_norm<B: Backend>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (4, 72);
    let (r, x) = (rnd(4, n * d, 2.0), rnd(5, n * d, 2.0));
    let w = bf16(&rnd(6, d, 1.0));
    let run = |b: &B| -> Result<(Vec<f32>, Vec<f32>)> {
        let mut rt = b.tensor(n, d, &r)?;
        let out = b.add_rms_norm(&mut rt, &b.tensor(n, d, &x)?, &weight(b, &[d], &w), 1e-6)?;
        Ok((b.to_host(&out)?, b.to_host(&rt)?))
    };
    let (got, res) = with_flops(be, run, |c| {
        let mut rt = c.tensor(n, d, &r)?;
        c.add_rms_norm(&mut rt, &c.tensor(n, d, &x)?, &weight(c, &[d], &w), 1e-6)
            .map(|_| ())
    })?;
    let sum: Vec<f32> = r.iter().zip(&x).map(|(a, b)| a + b).collect();
    assert_close(&res, &sum, 1e-6, "add_rms_norm residual");
    assert_close(&got, &naive_rms(&sum, d, &w, 1e-6), tol, "add_rms_norm");
    Ok(())
}

/// Row counts below, at and past the CUDA backend's batch-invariant GEMM block (64 rows), in
/// both modes (the CPU has one); and k = 0, empty sums, which are zeros (no GEMM runs).
pub(crate) fn op_linear<B: Backend>(be: &B, tol: f32) -> Result<()> {
    for (n, k, m, invariant) in [
        (5, 0, 9, false),
        (5, 0, 9, true),
        (7, 48, 33, false),
        (1, 64, 130, false),
        (70, 16, 8, false),
        (7, 48, 33, true),
        (64, 24, 40, true),
        (130, 16, 8, true),
    ] {
        be.set_batch_invariant(invariant);
        let x = rnd(7 + n as u64, n * k, 1.0);
        let w = bf16(&rnd(8 + m as u64, m * k, 0.5));
        let run = |b: &B| -> Result<Vec<f32>> {
            b.to_host(&b.linear(&b.tensor(n, k, &x)?, &weight(b, &[m, k], &w))?)
        };
        let got = with_flops(be, run, |c| {
            c.linear(&c.tensor(n, k, &x)?, &weight(c, &[m, k], &w))
                .map(|_| ())
        })?;
        let want = match k {
            0 => vec![0.0; n * m],
            _ => naive_linear(&x, k, &w, m),
        };
        assert_close(&got, &want, tol, "linear");
    }
    Ok(())
}

/// Sizes whose element count is past usize are refused, never wrapped into a small buffer
/// that the kernels would then write past (a tensor of k = 0 columns holds no data, so only
/// the product can tell).
pub(crate) fn op_sizes_past_memory<B: Backend>(be: &B, _tol: f32) -> Result<()> {
    let huge = (1usize << 62) + 1;
    let e = be
        .tensor(huge, 4, &[1.0; 4])
        .err()
        .expect("a wrapped tensor size is refused");
    assert!(e.to_string().contains("larger than memory"), "{e}");
    let wrapped = be.weight(&[4, 1 << 62], WeightData::Host(Cow::Owned(vec![])));
    assert!(
        wrapped.is_err(),
        "a weight shape whose product wraps to 0 is refused"
    );
    // Zero-sized is fine: a [huge, 0] tensor is empty.
    let x = be.tensor(huge, 0, &[])?;
    assert_eq!(be.to_host(&be.gather_rows(&x, &[])?)?.len(), 0);
    Ok(())
}

/// Batch-invariant linear: one input row gives the same output bits alone, at every slot of
/// a 64-row block, in a later full block and in a padded last block. On a GPU at Mistral-7B's
/// shapes (q/o, the MLP's down and up, the LM head), where cuBLAS picks the kernels eval
/// runs: a kernel that splits the sum differently per output tile (stream-K) would fail here.
pub(crate) fn op_linear_row_anywhere<B: Backend>(be: &B, _tol: f32) -> Result<()> {
    be.set_batch_invariant(true);
    let shapes: &[(usize, usize)] = if be.name() == "cuda" {
        &[(4096, 4096), (14336, 4096), (4096, 14336), (4096, 32000)]
    } else {
        &[(48, 40), (64, 130)]
    };
    for (si, &(k, m)) in shapes.iter().enumerate() {
        let w = weight(be, &[m, k], &bf16(&rnd(90 + si as u64, m * k, 0.05)));
        let others = rnd(91 + si as u64, 130 * k, 1.0);
        let row = rnd(92 + si as u64, k, 1.0);
        let out_row = |x: &[f32], at: usize| -> Result<Vec<u32>> {
            let n = x.len() / k;
            let y = be.to_host(&be.linear(&be.tensor(n, k, x)?, &w)?)?;
            Ok(y[at * m..(at + 1) * m]
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        let alone = out_row(&row, 0)?;
        for (n, at) in [
            (64, 0),
            (64, 1),
            (64, 37),
            (64, 63),
            (130, 64),
            (130, 100),
            (130, 129),
        ] {
            let mut x = others[..n * k].to_vec();
            x[at * k..(at + 1) * k].copy_from_slice(&row);
            anyhow::ensure!(
                out_row(&x, at)? == alone,
                "[{k}→{m}]: the row at {at} of {n} differs from the row alone"
            );
        }
    }
    Ok(())
}

/// A weight stacked from parts (how the model holds q|k|v and gate|up) gives the same bits as
/// the one concatenated weight, on every backend; row counts cross the CPU kernel's 4-row
/// groups and 64-row blocks.
pub(crate) fn op_linear_stacked<B: Backend>(be: &B, tol: f32) -> Result<()> {
    let (k, rows) = (40, [5usize, 67, 3]);
    let m: usize = rows.iter().sum();
    let w = bf16(&rnd(21, m * k, 0.5));
    fn stacked<C: Backend>(b: &C, w: &[f32], rows: &[usize], k: usize) -> Result<C::Weight> {
        let mut at = 0;
        let parts = rows
            .iter()
            .map(|&r| {
                let part = w[at * k..(at + r) * k].to_vec();
                at += r;
                (r, WeightData::Host(Cow::Owned(part)))
            })
            .collect();
        b.stacked_weight(k, parts)
    }
    for n in [1, 7] {
        let x = rnd(22 + n as u64, n * k, 1.0);
        let run = |b: &B| -> Result<Vec<f32>> {
            b.to_host(&b.linear(&b.tensor(n, k, &x)?, &stacked(b, &w, &rows, k)?)?)
        };
        let got = with_flops(be, run, |c| {
            c.linear(&c.tensor(n, k, &x)?, &stacked(c, &w, &rows, k)?)
                .map(|_| ())
        })?;
        let whole = be.to_host(&be.linear(&be.tensor(n, k, &x)?, &weight(be, &[m, k], &w))?)?;
        assert_eq!(got, whole, "stacked and concatenated weights differ");
        assert_close(&got, &naive_linear(&x, k, &w, m), tol, "linear (stacked)");
    }
    // A part of the wrong length is refused, naming the shape.
    let bad = vec![(2, WeightData::Host(Cow::Owned(vec![0.0; 2 * k - 1])))];
    assert!(be.stacked_weight(k, bad).is_err());
    Ok(())
}

pub(crate) fn op_silu_mul<B: Backend>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (6, 130);
    let (g, u) = (rnd(9, n * d, 6.0), rnd(10, n * d, 2.0));
    // The fused gate|up layout the model's one projection produces: row r is gate r, up r.
    let gu = ponder::backend::concat_columns(n, &[(&g, d), (&u, d)]);
    let run = |b: &B| -> Result<Vec<f32>> { b.to_host(&b.silu_mul(&b.tensor(n, 2 * d, &gu)?)?) };
    let got = with_flops(be, run, |c| {
        c.silu_mul(&c.tensor(n, 2 * d, &gu)?).map(|_| ())
    })?;
    let want: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| (*g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64) as f32)
        .collect();
    assert_close(&got, &want, tol, "silu_mul");
    Ok(())
}

pub(crate) fn op_add<B: Backend>(be: &B, _tol: f32) -> Result<()> {
    let (n, d) = (3, 50);
    let (a, b) = (rnd(11, n * d, 1.0), rnd(12, n * d, 1.0));
    let got = with_flops(
        be,
        |be| {
            let mut at = be.tensor(n, d, &a)?;
            be.add(&mut at, &be.tensor(n, d, &b)?)?;
            be.to_host(&at)
        },
        |c| c.add(&mut c.tensor(n, d, &a)?, &c.tensor(n, d, &b)?),
    )?;
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_close(&got, &want, 1e-6, "add");
    Ok(())
}

pub(crate) fn op_gather_rows<B: Backend>(be: &B, tol: f32) -> Result<()> {
    let (n, d) = (9, 20);
    let x = rnd(13, n * d, 1.0);
    let rows = [8usize, 0, 3, 3];
    let got = with_flops(
        be,
        |b| b.to_host(&b.gather_rows(&b.tensor(n, d, &x)?, &rows)?),
        |c| c.gather_rows(&c.tensor(n, d, &x)?, &rows).map(|_| ()),
    )?;
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| x[r * d..(r + 1) * d].to_vec())
        .collect();
    assert_close(&got, &want, 1e-6, "gather_rows");
    // bf16 activations (a norm's output) gather too.
    let w = weight(be, &[d], &vec![1.0; d]);
    let h = be.rms_norm(&be.tensor(n, d, &x)?, &w, 1e-5)?;
    let g = be.to_host(&be.gather_rows(&h, &rows)?)?;
    let all = be.to_host(&h)?;
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| all[r * d..(r + 1) * d].to_vec())
        .collect();
    assert_close(&g, &want, tol.min(1e-6), "gather_rows (norm output)");
    assert!(be.gather_rows(&h, &[9]).is_err());
    Ok(())
}
