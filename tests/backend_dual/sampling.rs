//! Device sampling (argmax, temperature, top-k, top-p, Gumbel) against a naive sampler given the
//! same uniforms.
use super::*;

/// src/sample.rs's semantics written out plainly: sort, cut, walk.
pub(crate) fn naive_sample(l: &[f32], limit: usize, s: Sampling, u: f64) -> u32 {
    let l = &l[..limit];
    let argmax = || {
        let mut b = 0;
        for i in 0..l.len() {
            if l[i] > l[b] {
                b = i;
            }
        }
        b as u32
    };
    if s.temperature <= 0.0 || l.len() <= 1 {
        return argmax();
    }
    let mx = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    // Top-k: the k-th value of a full sort (-0 as +0), ties at it kept.
    let key = |x: f32| if x == 0.0 { 0.0 } else { x };
    let cut = (s.top_k > 0 && s.top_k < l.len()).then(|| {
        let mut sorted: Vec<f32> = l.iter().map(|&x| key(x)).collect();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        sorted[s.top_k - 1]
    });
    let w: Vec<f64> = l
        .iter()
        .map(|x| match cut {
            Some(c) if key(*x) < c => 0.0,
            _ => ((x - mx) as f64 / s.temperature as f64).exp(),
        })
        .collect();
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..l.len()).collect();
    if s.top_p < 1.0 {
        order.sort_by(|&a, &b| w[b].partial_cmp(&w[a]).unwrap().then(a.cmp(&b)));
        let target = s.top_p.max(0.0) as f64 * total;
        let mut acc = 0.0;
        let mut keep = 0;
        while keep < order.len() {
            acc += w[order[keep]];
            keep += 1;
            if acc >= target {
                break;
            }
        }
        order.truncate(keep);
    }
    let mass: f64 = order.iter().map(|&i| w[i]).sum();
    let mut r = u * mass;
    for &i in &order {
        r -= w[i];
        if r < 0.0 {
            return i as u32;
        }
    }
    *order
        .iter()
        .rev()
        .find(|&&i| w[i] > 0.0)
        .unwrap_or(&order[0]) as u32
}

pub(crate) fn op_sampling<B: Backend>(be: &B, _tol: f32) -> Result<()> {
    // A row narrower than the device's 1024-thread block, and one wider (each thread then
    // scans several ids, so its own tie rule matters too).
    sampling_case(be, (5, 300, 290), 4.0, 12)?;
    sampling_case(be, (2, 3000, 2900), 0.5, 3)?;
    top_k_at_zero(be)?;
    not_finite(be)
}

/// A NaN or infinite logit below the limit is an error naming its row, greedy or not; one
/// past the limit (an added thought token's) is never looked at.
fn not_finite<B: Backend>(be: &B) -> Result<()> {
    let (rows, v, limit) = (3, 2000, 1990);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut logits = rnd(52, rows * v, 3.0);
        logits[v + 1500] = bad;
        logits[2 * v + 1995] = bad;
        let t = be.tensor(rows, v, &logits)?;
        for s in [
            Sampling::GREEDY,
            Sampling {
                temperature: 0.7,
                top_p: 0.9,
                top_k: 0,
            },
        ] {
            let e = be
                .sample_rows(&t, limit, s, &[0.5; 3])
                .expect_err("a NaN or infinite logit is an error");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{} 1", ponder::sample::NOT_FINITE)),
                "{}: {msg}",
                be.name()
            );
        }
        // Row 2's bad logit is past the limit: rows 0 and 2 alone sample.
        let ok = be.tensor(1, v, &logits[2 * v..])?;
        be.sample_rows(&ok, limit, Sampling::GREEDY, &[0.5])?;
    }
    Ok(())
}

/// A top-k cut at zero with both zeros among the ties: -0 and +0 are one value (HF's `<`),
/// so every one of them is kept, on the device as on the CPU.
fn top_k_at_zero<B: Backend>(be: &B) -> Result<()> {
    let (rows, v) = (2, 300);
    let mut logits = vec![-3.0f32; rows * v];
    for r in 0..rows {
        for i in 0..10 {
            logits[r * v + 3 * i] = 1.0 + i as f32 * 0.1;
            // Twelve zeros of both signs, the -0s first in one row and last in the other.
            logits[r * v + 100 + i] = if (i < 6) == (r == 0) { -0.0 } else { 0.0 };
        }
        logits[r * v + 150] = -0.0;
        logits[r * v + 151] = 0.0;
    }
    let t = be.tensor(rows, v, &logits)?;
    let s = Sampling {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 12,
    };
    let mut kept = std::collections::BTreeSet::new();
    for draw in 0..64 {
        let u: Vec<f64> = (0..rows as u64)
            .map(|r| ponder::rng::uniform(6, r, draw))
            .collect();
        let got = be.sample_rows(&t, v, s, &u)?;
        for r in 0..rows {
            let want = naive_sample(&logits[r * v..(r + 1) * v], v, s, u[r]);
            assert_eq!(got[r], want, "{} top-k at zero, row {r}", be.name());
            kept.insert(got[r]);
        }
    }
    assert!(
        kept.iter().any(|&i| (100..110).contains(&i) || i >= 150),
        "zeros drawn: {kept:?}"
    );
    assert!(kept
        .iter()
        .all(|&i| i < 30 || (100..110).contains(&i) || i == 150 || i == 151));
    Ok(())
}

/// `shape` = (rows, vocabulary, limit); logits in [-6, 6] on a grid of 1/`grid`.
pub(crate) fn sampling_case<B: Backend>(
    be: &B,
    (rows, v, limit): (usize, usize, usize),
    grid: f32,
    draws: u64,
) -> Result<()> {
    // Logits on a coarse grid: many exact ties, which the id order must break.
    let mut logits: Vec<f32> = rnd(51, rows * v, 6.0)
        .iter()
        .map(|x| (x * grid).round() / grid)
        .collect();
    logits[(rows - 1) * v + 7] = 40.0; // a dominant token
    logits[(rows / 2) * v + limit + 5] = 90.0; // past the limit: never chosen
    let t = be.tensor(rows, v, &logits)?;
    let s = |temperature, top_p, top_k| Sampling {
        temperature,
        top_p,
        top_k,
    };
    let settings = [
        Sampling::GREEDY,
        s(1.0, 1.0, 0),
        s(0.7, 0.9, 0),
        s(1.3, 0.5, 0),
        s(1.0, 1e-4, 0),
        // Top-k alone and before top-p; a k that cuts inside a run of ties on the grid; one
        // past the limit (no filter).
        s(1.0, 1.0, 50),
        s(0.8, 0.9, 7),
        s(1.0, 1.0, 1),
        s(1.0, 1.0, limit + 3),
    ];
    for (si, s) in settings.iter().enumerate() {
        for draw in 0..draws {
            let u: Vec<f64> = (0..rows as u64)
                .map(|r| ponder::rng::uniform(5, r * 16 + si as u64, draw))
                .collect();
            let cpu: Vec<u32> = (0..rows)
                .map(|r| ponder::sample::sample(&logits[r * v..(r + 1) * v], limit, *s, u[r]).0)
                .collect();
            for r in 0..rows {
                let want = naive_sample(&logits[r * v..(r + 1) * v], limit, *s, u[r]);
                assert_eq!(cpu[r], want, "CPU sampler vs reference, {s:?} row {r}");
                assert!((cpu[r] as usize) < limit);
            }
            // Backend::sample_rows: on the host for the CPU, on the device for CUDA; its useful
            // FLOPs (the CUDA backend's own count of the CPU's cost model) equal the CPU's.
            let got = with_flops(
                be,
                |b| b.sample_rows(&t, limit, *s, &u),
                |c| {
                    c.sample_rows(&c.tensor(rows, v, &logits)?, limit, *s, &u)
                        .map(|_| ())
                },
            )?;
            assert_eq!(got, cpu, "{} sampler vs CPU, {s:?} draw {draw}", be.name());
        }
    }
    Ok(())
}
