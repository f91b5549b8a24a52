//! RoPE with the KV write, prefill, decode (split) and shared-prefix tree attention, and page
//! copies, against one naive attention reference.
use super::*;

/// An attention scenario: batches that only write K/V (`fills`, in order), then one batch
/// (`main`) that writes its K/V and attends. Entries are (pos_start, n_tokens, page table).
pub(crate) struct Scenario {
    d: AttnDims,
    ps: usize,
    window: Option<usize>,
    pages: usize,
    fills: Vec<Vec<(usize, usize, Vec<u32>)>>,
    main: Vec<(usize, usize, Vec<u32>)>,
    /// `SeqSlice::window_at` of every slice of `main` (a thought's tokens).
    window_at: Option<usize>,
    seed: u64,
}

pub(crate) fn batch_of(
    seqs: &[(usize, usize, Vec<u32>)],
    ps: usize,
    window: Option<usize>,
) -> Batch {
    let mut t = 0;
    let seqs = seqs
        .iter()
        .map(|(p, n, pages)| {
            let s = SeqSlice::new(t, *n, *p, pages.clone());
            t += n;
            s
        })
        .collect();
    Batch {
        seqs,
        page_size: ps,
        sliding_window: window,
    }
}

pub(crate) const LAYER: usize = 1;

/// Runs the scenario on `be`: returns (q after RoPE, attention output, ledger of `main`).
pub(crate) fn run_scenario<B: Backend>(
    be: &B,
    sc: &Scenario,
) -> Result<(Vec<f32>, Vec<f32>, Ledger)> {
    let d = sc.d;
    let (qd, kd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let mut kv = be.alloc_kv(KvShape {
        layers: 2,
        pages: sc.pages,
        page_size: sc.ps,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
    })?;
    let mut seed = sc.seed;
    let mut step = |seqs: &[(usize, usize, Vec<u32>)], attend: bool| -> Result<_> {
        let mut b = batch_of(seqs, sc.ps, sc.window);
        if attend {
            for s in &mut b.seqs {
                s.window_at = sc.window_at;
            }
        }
        let n = b.n_tokens();
        seed += 3;
        let (q, k, v) = (
            rnd(seed, n * qd, 1.0),
            rnd(seed + 1, n * kd, 1.0),
            rnd(seed + 2, n * kd, 1.0),
        );
        clear(be);
        let q = rope(be, &q, &k, &v, &mut kv, LAYER, &b, d)?;
        if !attend {
            return Ok(None);
        }
        let out = be.attention(&q, &kv, LAYER, &b, d)?;
        Ok(Some((be.to_host(&q)?, be.to_host(&out)?)))
    };
    for f in &sc.fills {
        step(f, false)?;
    }
    let (q, out) = step(&sc.main, true)?.expect("attended");
    Ok((q, out, ledger(be)))
}

/// The same scenario on the host, in f64: (rotated q, attention output).
pub(crate) fn reference(sc: &Scenario) -> (Vec<f32>, Vec<f32>) {
    let d = sc.d;
    let (hd, qd, kd) = (d.head_dim, d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let mut slots: Vec<Option<(Vec<f32>, Vec<f32>)>> = vec![None; sc.pages * sc.ps];
    let slot = |pages: &[u32], p: usize| pages[p / sc.ps] as usize * sc.ps + p % sc.ps;
    let mut seed = sc.seed;
    let mut result = (vec![], vec![]);
    let all: Vec<_> = sc
        .fills
        .iter()
        .map(|f| (f, false))
        .chain([(&sc.main, true)])
        .collect();
    for (seqs, attend) in all {
        let n: usize = seqs.iter().map(|s| s.1).sum();
        seed += 3;
        let (mut q, k, v) = (
            rnd(seed, n * qd, 1.0),
            rnd(seed + 1, n * kd, 1.0),
            rnd(seed + 2, n * kd, 1.0),
        );
        let mut t = 0;
        for (p0, cnt, pages) in seqs {
            for i in 0..*cnt {
                let pos = p0 + i;
                rope_row(
                    &mut q[(t + i) * qd..(t + i + 1) * qd],
                    hd,
                    pos,
                    d.rope_theta,
                );
                let mut kr = k[(t + i) * kd..(t + i + 1) * kd].to_vec();
                rope_row(&mut kr, hd, pos, d.rope_theta);
                slots[slot(pages, pos)] = Some((kr, v[(t + i) * kd..(t + i + 1) * kd].to_vec()));
            }
            t += cnt;
        }
        if !attend {
            continue;
        }
        let b = batch_of(seqs, sc.ps, sc.window);
        let mut out = Vec::with_capacity(n * qd);
        for (p0, cnt, pages) in seqs {
            for i in 0..*cnt {
                let pos = p0 + i;
                let first = b.first_visible(sc.window_at.map_or(pos, |a| a.min(pos)));
                let (mut ks, mut vs) = (vec![], vec![]);
                for j in first..=pos {
                    let (kr, vr) = slots[slot(pages, j)].as_ref().expect("key written");
                    ks.extend_from_slice(kr);
                    vs.extend_from_slice(vr);
                }
                let keys: Vec<usize> = (0..=pos - first).collect();
                let row = out.len() / qd;
                out.extend(naive_attn_row(
                    &q[row * qd..(row + 1) * qd],
                    &ks,
                    &vs,
                    &keys,
                    d,
                ));
            }
        }
        result = (q, out);
    }
    result
}

pub(crate) fn check_scenario<B: Backend>(
    be: &B,
    tol: f32,
    sc: &Scenario,
    what: &str,
) -> Result<()> {
    let (q, out, l) = run_scenario(be, sc)?;
    let (_, _, lc) = run_scenario(&Cpu::new(), sc)?;
    assert_same_useful(&l, &lc);
    let (wq, wout) = reference(sc);
    assert_close(&q, &wq, tol.max(1e-5), &format!("{what}: rotated q"));
    assert_close(&out, &wout, tol, &format!("{what}: attention"));
    Ok(())
}

/// Page ids handed out in a scrambled order, so that tables are never contiguous.
pub(crate) struct Pages(usize);
impl Pages {
    const N: usize = 400;
    fn take(&mut self, n: usize) -> Vec<u32> {
        let v = (self.0..self.0 + n).map(|i| ((i * 37 + 11) % Self::N) as u32);
        self.0 += n;
        v.collect()
    }
}

pub(crate) fn op_rope_and_prefill_attention<B: Backend>(be: &B, tol: f32) -> Result<()> {
    for (hq, hk, hd, ps, window) in [
        (4, 2, 16, 8, None),
        (6, 2, 64, 16, Some(20)),
        (8, 8, 32, 4, None),
        (8, 2, 128, 16, None),
    ] {
        let mut pg = Pages(0);
        let (a, b, c) = (pg.take(100usize.div_ceil(ps)), pg.take(1), pg.take(1));
        let sc = Scenario {
            d: dims(hq, hk, hd),
            ps,
            window,
            pages: Pages::N,
            fills: vec![vec![(0, 30, a.clone())]],
            // A continued prefill over two query tiles, a fresh prompt, a first token, nothing.
            main: vec![(30, 70, a), (0, 5.min(ps), b), (0, 1, c), (0, 0, vec![])],
            window_at: None,
            seed: 100 + hd as u64,
        };
        check_scenario(
            be,
            tol,
            &sc,
            &format!("prefill hq{hq} hk{hk} hd{hd} ps{ps}"),
        )?;
    }
    Ok(())
}

pub(crate) fn op_decode_attention_long<B: Backend>(be: &B, tol: f32) -> Result<()> {
    // head_dim 64, and Mistral-7B's 128 with its 4:1 GQA ratio.
    for (window, hq, hk, hd) in [
        (None, 8, 2, 64),
        (Some(257), 8, 2, 64),
        (Some(257), 8, 2, 128),
    ] {
        let mut pg = Pages(0);
        let (a, b) = (pg.take(63), pg.take(19));
        let sc = Scenario {
            d: dims(hq, hk, hd),
            ps: 16,
            window,
            pages: Pages::N,
            fills: vec![vec![(0, 1000, a.clone()), (0, 300, b.clone())]],
            main: vec![(1000, 1, a), (300, 1, b)],
            window_at: None,
            seed: 7,
        };
        check_scenario(be, tol, &sc, &format!("decode hd{hd} window {window:?}"))?;
    }
    Ok(())
}

/// Sequences of 2 to 4 new tokens (Quiet-STaR's last thought token with its end marker):
/// attn_decode items, one per token, whose shared history goes through the prefix kernel, so
/// that the first token of each is left no keys of its own; with and without a window, and
/// with a window measured from position 129 (a thought about it: `SeqSlice::window_at`),
/// there over 6 tokens of the first sequence, more than a decode item's usual few.
pub(crate) fn op_short_extend_attention<B: Backend>(be: &B, tol: f32) -> Result<()> {
    for (window, window_at) in [(None, None), (Some(90), None), (Some(90), Some(129))] {
        let mut pg = Pages(0);
        let (a, b, c) = (pg.take(9), pg.take(6), pg.take(2));
        let first = if window_at.is_some() { 6 } else { 2 };
        let sc = Scenario {
            d: dims(8, 2, 64),
            ps: 16,
            window,
            pages: Pages::N,
            fills: vec![vec![
                (0, 130, a.clone()),
                (0, 77, b.clone()),
                (0, 20, c.clone()),
            ]],
            main: vec![(130, first, a), (77, 4, b), (20, 3, c), (0, 0, vec![])],
            window_at,
            seed: 23,
        };
        let what = format!("short extends, window {window:?} from {window_at:?}");
        check_scenario(be, tol, &sc, &what)?;
    }
    Ok(())
}

pub(crate) fn op_tree_attention<B: Backend>(be: &B, tol: f32) -> Result<()> {
    for (hq, hk, hd) in [(8, 2, 64), (16, 4, 128), (4, 2, 16)] {
        let mut pg = Pages(0);
        let shared = pg.take(9); // 144 keys, every page full
        let own: Vec<Vec<u32>> = (0..3)
            .map(|_| [shared.clone(), pg.take(2)].concat())
            .collect();
        let other = pg.take(3);
        let sc = Scenario {
            d: dims(hq, hk, hd),
            ps: 16,
            window: None,
            pages: Pages::N,
            window_at: None,
            fills: vec![
                vec![(0, 144, shared.clone()), (0, 40, other.clone())],
                vec![(144, 5, own[1].clone()), (144, 20, own[2].clone())],
            ],
            main: vec![
                (144, 1, own[0].clone()),
                (0, 3, other.clone()),
                (149, 1, own[1].clone()),
                (164, 1, own[2].clone()),
            ],
            seed: 11,
        };
        check_scenario(be, tol, &sc, &format!("tree hq{hq} hk{hk} hd{hd}"))?;
    }
    Ok(())
}

pub(crate) fn op_copy_pages<B: Backend>(be: &B, tol: f32) -> Result<()> {
    let d = dims(4, 2, 16);
    let (qd, kd) = (64, 32);
    fn run<B: Backend>(be: &B, d: AttnDims, qd: usize, kd: usize) -> Result<Vec<f32>> {
        let mut kv = be.alloc_kv(KvShape {
            layers: 2,
            pages: 8,
            page_size: 8,
            kv_heads: 2,
            head_dim: 16,
        })?;
        let fill = batch_of(&[(0, 12, vec![2, 3])], 8, None);
        let q = rnd(31, 12 * qd, 1.0);
        let (k, v) = (rnd(32, 12 * kd, 1.0), rnd(33, 12 * kd, 1.0));
        rope(be, &q, &k, &v, &mut kv, LAYER, &fill, d)?;
        let copies = [
            PageCopy {
                src: 3,
                dst: 5,
                len: 4,
            },
            PageCopy {
                src: 2,
                dst: 6,
                len: 8,
            },
        ];
        be.copy_pages(&mut kv, &copies)?;
        // The same next token on the original pages and on the copies.
        let b = batch_of(&[(12, 1, vec![2, 3]), (12, 1, vec![6, 5])], 8, None);
        let qr = rnd(34, qd, 1.0);
        let (kr, vr) = (rnd(35, kd, 1.0), rnd(36, kd, 1.0));
        let two = |x: &[f32]| [x, x].concat();
        let q = rope(be, &two(&qr), &two(&kr), &two(&vr), &mut kv, LAYER, &b, d)?;
        be.to_host(&be.attention(&q, &kv, LAYER, &b, d)?)
    }
    clear(be);
    let got = run(be, d, qd, kd)?;
    let cpu = Cpu::new();
    let want = run(&cpu, d, qd, kd)?;
    assert_same_useful(&ledger(be), &ledger(&cpu));
    assert_eq!(got[..qd], got[qd..], "attention over copied pages differs");
    assert_close(&got[..qd], &want[..qd], tol, "copy_pages");
    Ok(())
}
