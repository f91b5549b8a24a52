//! `ponder check`: a backend's whole forward pass against the CPU backend's, on the same model
//! and the same tokens, at any model size. The dual-backend tests do this op by op and for a
//! tiny model; this runs the model the study runs (synthetic:mistral-7b on a GPU, or a real
//! checkpoint), where a kernel's larger instantiations, cuBLAS's large shapes and 32 layers of
//! bf16 rounding are exercised.
//!
//! `batch` sequences of seeded token ids are prefilled together, then decoded `steps` tokens,
//! each step feeding every sequence the CPU's greedy choice, so that both backends see the
//! same tokens throughout (teacher forcing). The CPU runs first and its model is dropped before
//! the other backend loads, so the two never share memory. Both hold the same bf16 weights (an
//! f32 checkpoint is rounded for the CPU as the CUDA backend rounds it). Every pass compares each
//! sequence's last-position logits: the largest difference relative to the largest CPU logit
//! (the dual tests' measure), and whether the greedy choices agree (a disagreement within a
//! near tie of the CPU's logits is bf16 rounding, not a fault). The useful FLOPs of the same
//! passes must be equal to the last FLOP.
use super::common::fits_positions;
use super::{with_backend, Device, OnBackend};
use anyhow::{bail, Result};
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::generate::Runner;
use ponder::model::config::Config;
use ponder::model::source::load_as;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory or synthetic:NAME; default: the bundled SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<String>,
    /// The backend compared with the CPU (auto: cuda when a GPU answers).
    #[arg(long, value_enum, default_value = "auto")]
    device: CheckDevice,
    /// Prompt tokens of each sequence (prefilled in one pass).
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Decode steps after the prefill.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Sequences, run together in every pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// The largest logit difference allowed, relative to the largest CPU logit of the row.
    /// bf16 activations alone reach a few percent on a real model (SmolLM2-135M: up to 4.9e-2
    /// on the emulator, docs/cuda.md); a wrong mask, position or index gives order one.
    #[arg(long, default_value_t = 0.1)]
    tol: f64,
}

/// `--device` without `cpu`, which check compares the others with.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum CheckDevice {
    Auto,
    Cuda,
    /// The CUDA backend on the CUDA emulator (docs/cuda-emulator.md).
    CudaEmu,
}

pub fn run(a: Args, cache: &Path) -> Result<()> {
    if a.tokens == 0 || a.batch == 0 {
        bail!("--tokens and --batch must be at least 1");
    }
    if !(a.tol.is_finite() && a.tol >= 0.0) {
        bail!("--tol {}: want a number of at least 0", a.tol);
    }
    if a.batch > 256 || a.steps > 4096 {
        bail!("--batch is at most 256 and --steps at most 4096");
    }
    // The positions are checked before a (possibly 7B) model is generated or read, where its
    // config can be read alone; `run_side` checks again after loading, for the rest.
    if let Some(cfg) = config_alone(a.model.as_deref()) {
        positions_fit(&a, &cfg)?;
    }
    let device = match a.device {
        CheckDevice::Auto => Device::Auto,
        CheckDevice::Cuda => Device::Cuda,
        CheckDevice::CudaEmu => Device::CudaEmu,
    };
    with_backend(
        device,
        Check {
            a,
            cache: cache.to_path_buf(),
        },
    )
}

struct Check {
    a: Args,
    cache: PathBuf,
}

/// The model's config without loading it: a synthetic name's, or a directory's config.json
/// (None for the default model or an unreadable config: loading reports those).
fn config_alone(model: Option<&str>) -> Option<Config> {
    let m = model?;
    match m.strip_prefix("synthetic:") {
        Some(name) => Config::builtin(name).ok(),
        None => Config::from_file(&Path::new(m).join("config.json")).ok(),
    }
}

fn positions_fit(a: &Args, cfg: &Config) -> Result<()> {
    fits_positions(
        a.tokens.saturating_add(a.steps),
        &format!("--tokens {} + --steps {}", a.tokens, a.steps),
        cfg,
    )
}

/// What one backend produced: per pass, each sequence's last-position logits ([batch, vocab]
/// row-major), and the useful FLOPs and seconds of all passes.
struct Side {
    name: String,
    logits: Vec<Vec<f32>>,
    useful: u64,
    seconds: f64,
}

/// max that keeps a NaN (f64::max drops it), so that a NaN logit fails the check.
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// The greedy choice of a logits row (the first of equal maxima).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Runs the prompts, then `steps` decode steps. `feed`: the token each sequence gets at each
/// step; None for the CPU, which chooses them (its argmax) and returns them in the second value.
fn run_side<B: Backend>(
    be: &B,
    a: &Args,
    cache: &Path,
    feed: Option<&[Vec<u32>]>,
) -> Result<(Side, Vec<Vec<u32>>)> {
    // Both hold the device's bf16 values (a checkpoint's f32 weights rounded on the CPU too),
    // so that the difference measured is the kernels', not the weights'.
    let m = load_as(be, a.model.as_deref(), cache, true)?;
    let cfg = &m.model.cfg;
    positions_fit(a, cfg)?;
    let vocab = cfg.vocab_size;
    let page = 16;
    let pages = a.batch * (a.tokens + a.steps).div_ceil(page);
    let mut r = Runner::new(be, &m.model, pages, page)?;
    let seqs: Vec<_> = (0..a.batch).map(|_| r.pool.create()).collect();
    // Seeded ids away from the vocabulary's ends (often special tokens), different per sequence.
    let prompt = |s: usize| -> Vec<u32> {
        (0..a.tokens)
            .map(|i| ((i * 7919 + s * 104_729 + 13) % (vocab.saturating_sub(10).max(1)) + 5) as u32)
            .map(|t| t.min(vocab as u32 - 1))
            .collect()
    };
    be.ledger().lock().map(|mut l| l.clear()).ok();
    let t0 = Instant::now();
    let mut logits = Vec::with_capacity(a.steps + 1);
    let mut chosen: Vec<Vec<u32>> = Vec::with_capacity(a.steps);
    let prompts: Vec<Vec<u32>> = (0..a.batch).map(prompt).collect();
    let items: Vec<_> = seqs
        .iter()
        .zip(&prompts)
        .map(|(s, p)| (*s, &p[..]))
        .collect();
    let out = r.extend(&items)?;
    logits.push(be.to_host(out.logits()?)?);
    for step in 0..a.steps {
        let last = logits.last().map(|l| &l[..]).unwrap_or_default();
        let next: Vec<u32> = match feed {
            Some(f) => f[step].clone(),
            None => last.chunks(vocab).map(|row| argmax(row) as u32).collect(),
        };
        let items: Vec<_> = seqs
            .iter()
            .zip(&next)
            .map(|(s, t)| (*s, std::slice::from_ref(t)))
            .collect();
        let out = r.extend(&items)?;
        logits.push(be.to_host(out.logits()?)?);
        chosen.push(next);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let useful = be
        .ledger()
        .lock()
        .map(|l| l.total().useful_flops)
        .unwrap_or(0);
    let side = Side {
        name: format!("{} on {}", m.name, be.device_label()),
        logits,
        useful,
        seconds,
    };
    Ok((side, chosen))
}

impl OnBackend for Check {
    fn run<B: Backend + 'static>(self, be: B) -> Result<()> {
        let a = &self.a;
        if be.name() == "cpu" {
            bail!(
                "--device auto found no GPU{}: check compares cuda or cuda-emu with the CPU",
                if cfg!(feature = "cuda") {
                    ""
                } else {
                    " (this ponder was built without the cuda feature)"
                }
            );
        }
        let (cpu, fed) = run_side(&Cpu::new(), a, &self.cache, None)?;
        let (dev, _) = run_side(&be, a, &self.cache, Some(&fed))?;
        let vocab = cpu.logits[0].len() / a.batch;
        outln!("check: {} against {}", dev.name, cpu.name);
        outln!(
            "{} sequences, {}-token prompts, {} decode steps (every sequence fed the CPU's greedy token)",
            a.batch,
            a.tokens,
            a.steps
        );
        outln!(
            "{:>8} {:>12} {:>12} {:>10} {:>14} {:>12}",
            "pass",
            "max rel err",
            "max abs err",
            "max |cpu|",
            "top-1 agree",
            "worst gap"
        );
        let mut worst = 0.0f64;
        let (mut agree, mut rows) = (0, 0);
        for (p, (c, d)) in cpu.logits.iter().zip(&dev.logits).enumerate() {
            if c.len() != d.len() {
                bail!(
                    "pass {p}: the CPU returned {} logits, {} {}",
                    c.len(),
                    be.name(),
                    d.len()
                );
            }
            let (mut err, mut same, mut gap) = (0.0f64, 0, 0.0f64);
            let (mut abs, mut big) = (0.0f64, 0.0f64);
            for (cr, dr) in c.chunks(vocab).zip(d.chunks(vocab)) {
                let scale = cr.iter().fold(0.0, |m, v| nan_max(m, f64::from(v.abs())));
                let diff = cr
                    .iter()
                    .zip(dr)
                    .fold(0.0, |m, (x, y)| nan_max(m, f64::from(x - y).abs()));
                err = nan_max(err, diff / scale.max(1e-30));
                abs = nan_max(abs, diff);
                big = nan_max(big, scale);
                let (ci, di) = (argmax(cr), argmax(dr));
                if ci == di {
                    same += 1;
                } else {
                    // How far apart the two choices are in the CPU's own logits.
                    gap = gap.max(f64::from(cr[ci] - cr[di]) / scale.max(1e-30));
                }
            }
            let label = if p == 0 {
                "prefill".to_string()
            } else {
                format!("step {p}")
            };
            outln!(
                "{label:>8} {err:>12.3e} {abs:>12.3e} {big:>10.3} {:>14} {gap:>12.3e}",
                format!("{same}/{}", a.batch)
            );
            worst = nan_max(worst, err);
            agree += same;
            rows += a.batch;
        }
        outln!(
            "useful FLOPs: cpu {} · {} {} · time: cpu {:.3} s · {} {:.3} s",
            cpu.useful,
            be.name(),
            dev.useful,
            cpu.seconds,
            be.name(),
            dev.seconds
        );
        outln!(
            "max rel err {worst:.3e} (tolerance {:.3e}); top-1 agreement {agree}/{rows}",
            a.tol
        );
        if cpu.useful != dev.useful {
            bail!(
                "useful FLOPs differ: cpu {} against {} {} for the same passes",
                cpu.useful,
                be.name(),
                dev.useful
            );
        }
        if worst.is_nan() || worst > a.tol {
            bail!(
                "{} differs from the CPU: largest relative logit difference {worst:.3e} is over --tol {:.3e}",
                be.name(),
                a.tol
            );
        }
        outln!("ok");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_logit_is_never_within_tolerance() {
        assert!(nan_max(0.5, f64::NAN).is_nan());
        assert!(nan_max(f64::NAN, 0.5).is_nan());
        assert_eq!(nan_max(0.5, 0.25), 0.5);
        // f64::max would have dropped it, and a NaN row would have compared as 0 error.
        assert_eq!(0.5f64.max(f64::NAN), 0.5);
        assert_eq!(
            argmax(&[1.0, 3.0, 3.0, 2.0]),
            1,
            "the first of equal maxima"
        );
    }
}
