//! Quiet-STaR's mixing head on the CPU (kept apart from cpu.rs, which holds the forward ops).
use super::cpu::{same_shape, Cpu, CpuTensor, CpuWeight};
use super::{Backend, TalkHead};
use crate::flops::Counts;
use anyhow::{ensure, Result};

pub fn talk_mix(
    be: &Cpu,
    h_base: &CpuTensor,
    h_end: &CpuTensor,
    head: &TalkHead<Cpu>,
) -> Result<CpuTensor> {
    same_shape(h_base, h_end, "talk_mix")?;
    let (n, d) = (h_base.rows, h_base.cols);
    let mut cat = Vec::with_capacity(n * 2 * d);
    for i in 0..n {
        cat.extend_from_slice(&h_base.data[i * d..(i + 1) * d]);
        cat.extend_from_slice(&h_end.data[i * d..(i + 1) * d]);
    }
    let x = CpuTensor {
        rows: n,
        cols: 2 * d,
        data: cat,
    };
    let mut a = be.linear(&x, &head.w1)?;
    bias_relu(be, &mut a, &head.b1)?;
    let mut b = be.linear(&a, &head.w2)?;
    bias_relu(be, &mut b, &head.b2)?;
    let w = be.linear(&b, &head.w3)?;
    ensure!(
        w.cols == 1,
        "the talk head's last layer must have one output"
    );
    let mut out = h_base.clone();
    for i in 0..n {
        let wi = w.data[i];
        let e = &h_end.data[i * d..(i + 1) * d];
        for (o, e) in out.data[i * d..(i + 1) * d].iter_mut().zip(e) {
            *o = (1.0 - wi) * *o + wi * *e;
        }
    }
    let (n, d) = (n as u64, d as u64);
    // Per row one subtract (1 − w); per element two multiplies and one add.
    be.record("talk_mix", Counts::exact(n + 3 * n * d, 3 * n * d * 4, 0));
    Ok(out)
}

/// x += b (per row), then ReLU: one add per element (the max is a comparison, not a FLOP).
fn bias_relu(be: &Cpu, x: &mut CpuTensor, b: &CpuWeight) -> Result<()> {
    let b = b.data()?;
    ensure!(b.len() == x.cols, "bias length differs from row length");
    for row in x.data.chunks_mut(x.cols) {
        for (v, bb) in row.iter_mut().zip(b) {
            *v = (*v + *bb).max(0.0);
        }
    }
    let n = x.data.len() as u64;
    be.record("bias_relu", Counts::exact(n, 2 * n * 4, 0));
    Ok(())
}
