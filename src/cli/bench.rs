//! `ponder bench decode|prefill`: timings with the roofline beside them. The bytes and FLOPs
//! come from the ledger over the timed steps (what the ops really moved and computed); the
//! H100 ceilings (3.1 TB/s, 790 TFLOP/s bf16) are printed as percentages on CUDA, and the
//! measured ones too when PONDER_MEASURED_TBPS / PONDER_MEASURED_TFLOPS give them.
use super::common::fits_positions;
use super::{with_backend, Device, OnBackend};
use anyhow::{bail, Result};
use clap::Subcommand;
use ponder::backend::Backend;
use ponder::flops::Phase;
use ponder::generate::Runner;
use ponder::kv::SeqId;
use ponder::model::config::Config;
use ponder::model::source::load;
use ponder::sample::Sampling;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(super) const HBM_BYTES_PER_S: f64 = 3.1e12;
pub(super) const BF16_FLOP_PER_S: f64 = 790e12;

/// The ceilings measured on this machine, when given (gpu-bin/run.sh exports them from
/// roofline.py: the lent GPU may not be hardware.md's H100): (bytes/s, FLOP/s).
pub(super) fn measured_ceilings() -> (Option<f64>, Option<f64>) {
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite() && *x > 0.0)
            .map(|x| x * 1e12)
    };
    (get("PONDER_MEASURED_TBPS"), get("PONDER_MEASURED_TFLOPS"))
}

/// " (x% of the measured y TB/s)" for a rate in bytes/s, or "" without a measurement.
pub(super) fn of_measured_bw(bytes_per_s: f64) -> String {
    measured_ceilings().0.map_or(String::new(), |m| {
        format!(
            " ({:.1}% of the measured read {:.3} TB/s)",
            100.0 * bytes_per_s / m,
            m / 1e12
        )
    })
}

/// " (x% of the measured y TFLOP/s)" for a rate in FLOP/s, or "" without a measurement.
pub(super) fn of_measured_flops(flop_per_s: f64) -> String {
    measured_ceilings().1.map_or(String::new(), |m| {
        format!(
            " ({:.1}% of the measured {:.1} TFLOP/s)",
            100.0 * flop_per_s / m,
            m / 1e12
        )
    })
}

#[derive(Subcommand, Clone)]
pub enum What {
    /// Decode steps of `batch` branches forked from one shared `context`-token prefix.
    Decode {
        /// Batch sizes, comma-separated.
        #[arg(long, default_value = "1,16")]
        batch: String,
        /// Tokens of the shared prefix, prefilled once before the timed steps.
        #[arg(long, default_value_t = 512)]
        context: usize,
        /// Timed decode steps per batch size.
        #[arg(long, default_value_t = 16)]
        steps: usize,
    },
    /// One prefill of `tokens` tokens.
    Prefill {
        /// Tokens of the one sequence.
        #[arg(long, default_value_t = 2048)]
        tokens: usize,
        /// Timed prefills, each waited for; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Each attention kernel alone against its roofline: causal prefill, the Quiet-STaR
    /// diagonal mask, paged decode, shared-prefix decode. Only the model's attention geometry
    /// is used (no weights are loaded); default: Mistral-7B's.
    Attention {
        /// Causal case: tokens of the one sequence.
        #[arg(long, default_value_t = 2048)]
        tokens: usize,
        /// Decode cases: sequences (branches).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Decode cases: keys per sequence (the shared prefix's length).
        #[arg(long, default_value_t = 4096)]
        context: usize,
        /// Diagonal-mask case: positions per thought depth.
        #[arg(long, default_value_t = 512)]
        thought_len: usize,
        /// Diagonal-mask case: depth of the timed queries (7 = the last of an 8-token thought).
        #[arg(long, default_value_t = 7)]
        depth: usize,
        /// Timed runs per case, back to back after one warm-up run; default 50 on a GPU
        /// (a short kernel's launch gaps average out), 5 elsewhere.
        #[arg(long)]
        iters: Option<usize>,
    },
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
    /// HF model directory or synthetic:NAME; default: the bundled SmolLM2-135M-Instruct for
    /// decode and prefill, synthetic:mistral-7b's geometry for attention.
    #[arg(long, global = true)]
    model: Option<String>,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    device: Device,
    /// CUDA kernels to time (the CPU backend has one kind, always batch-invariant).
    #[arg(long, value_enum, default_value = "invariant", global = true)]
    kernels: Kernels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kernels {
    /// Batch-invariant, as solve and eval run them: each row's bits independent of what
    /// shares its pass (GEMMs in 64-row blocks, attention as per-query decode items).
    Invariant,
    /// The fastest per pass (cuBLAS's choice per shape, prefill tiles, shared prefixes).
    Fast,
    /// Both, one after the other on the same loaded model.
    Both,
}

impl Kernels {
    /// The `set_batch_invariant` values to run, in order.
    fn modes(self) -> &'static [bool] {
        match self {
            Kernels::Invariant => &[true],
            Kernels::Fast => &[false],
            Kernels::Both => &[true, false],
        }
    }
}

/// The header line of one mode's results (GPU backends only: the CPU has one kind).
fn kernels_line<B: Backend>(be: &B, invariant: bool) -> Result<()> {
    if be.name() != "cpu" {
        outln!(
            "kernels: {}",
            if invariant {
                "batch-invariant (what solve and eval run)"
            } else {
                "fastest per pass (not batch-invariant; solve and eval do not run these)"
            }
        );
    }
    Ok(())
}

pub fn run(a: Args, cache: &Path) -> Result<()> {
    check_sizes(&a.what)?;
    with_backend(
        a.device,
        Bench {
            what: a.what,
            model: a.model,
            cache: cache.to_path_buf(),
            kernels: a.kernels,
        },
    )
}

/// Sizes no run could use are refused before a model (Mistral-7B's takes a minute) is loaded;
/// those that depend on the model (its positions) after.
fn check_sizes(what: &What) -> Result<()> {
    match what {
        What::Decode {
            batch,
            context,
            steps,
        } => {
            let batches = super::parse_positive_list(batch, "batch size")?;
            if *context == 0 || *steps == 0 {
                bail!("--context and --steps must be at least 1");
            }
            if let Some(b) = batches.iter().find(|&&b| b > 1 << 16) {
                bail!("batch size {b} is more than ponder runs in one step (at most 65536)");
            }
        }
        What::Prefill { tokens, .. } if *tokens == 0 => bail!("--tokens must be at least 1"),
        What::Prefill { runs, .. } if *runs == 0 => bail!("--runs must be at least 1"),
        What::Prefill { runs, .. } if *runs > MAX_RUNS => {
            bail!("--runs is at most {MAX_RUNS}, not {runs}")
        }
        _ => {}
    }
    Ok(())
}

/// The most timed prefills `--runs` may ask for.
const MAX_RUNS: usize = 1000;

struct Bench {
    what: What,
    model: Option<String>,
    cache: PathBuf,
    kernels: Kernels,
}

impl OnBackend for Bench {
    fn run<B: Backend + 'static>(self, be: B) -> Result<()> {
        let modes = if be.name() == "cpu" {
            &[true][..]
        } else {
            self.kernels.modes()
        };
        if be.name() == "cuda-emu" {
            eprintln!(
                "note: the CUDA emulator runs the kernels on the CPU; its times and roofline \
                 shares say nothing about a GPU"
            );
        }
        if let What::Attention {
            tokens,
            batch,
            context,
            thought_len,
            depth,
            iters,
        } = self.what
        {
            let (cfg, name) = geometry(self.model.as_deref())?;
            let sizes = super::bench_attention::Sizes {
                tokens,
                batch,
                context,
                thought_len,
                depth,
                iters: iters.unwrap_or(if be.name() == "cuda" { 50 } else { 5 }),
            };
            for &inv in modes {
                be.set_batch_invariant(inv);
                kernels_line(&be, inv)?;
                super::bench_attention::run(&be, &cfg, &name, &sizes)?;
            }
            return Ok(());
        }
        let t0 = Instant::now();
        let m = load(&be, self.model.as_deref(), &self.cache)?;
        // What a run pays before its first token (a synthetic model's weights are generated on
        // the host, then uploaded), kept apart from the rates below.
        outln!(
            "{} ({} parameters) loaded on {} in {:.3} s",
            m.name,
            m.model.cfg.n_params(),
            be.name(),
            t0.elapsed().as_secs_f64()
        );
        let on_gpu = be.name() != "cpu";
        // Ids spread over the vocabulary, whatever its size.
        let vocab = m.model.cfg.vocab_size;
        let ids = |n: usize| -> Vec<u32> {
            (0..n)
                .map(|i| (i * 7919 % vocab.saturating_sub(10).max(1) + 5).min(vocab - 1) as u32)
                .collect()
        };
        for &inv in modes {
            be.set_batch_invariant(inv);
            kernels_line(&be, inv)?;
            self.run_mode(&be, &m, &ids, on_gpu)?;
        }
        Ok(())
    }
}

impl Bench {
    /// One kind of kernels' decode or prefill table.
    fn run_mode<B: Backend>(
        &self,
        be: &B,
        m: &ponder::model::source::Loaded<B>,
        ids: &dyn Fn(usize) -> Vec<u32>,
        on_gpu: bool,
    ) -> Result<()> {
        match &self.what {
            &What::Decode {
                ref batch,
                context,
                steps,
            } => {
                let batches = super::parse_positive_list(batch, "batch size")?;
                // The warm-up step writes one position more than the timed ones.
                fits_positions(
                    context.saturating_add(steps).saturating_add(1),
                    &format!("--context {context} + --steps {steps} + 1 warm-up step"),
                    &m.model.cfg,
                )?;
                outln!(
                    "decode on {} ({}), {context}-token shared prefix, {steps} steps",
                    m.name,
                    be.device_label()
                );
                outln!(
                    "GB/s: the ledger's bytes per step over its time (each GEMM call's weights, \
                     each branch's K/V with the prefix charged per branch where the kernels \
                     read it so, activations), against hardware.md's H100 3.1 TB/s"
                );
                outln!(
                    "{:>6} {:>10} {:>10} {:>10} {:>8}",
                    "batch",
                    "ms/step",
                    "tokens/s",
                    "GB/s",
                    "% of 3.1"
                );
                for b in batches {
                    let pages = (context + steps).div_ceil(16) + b * (steps.div_ceil(16) + 2) + 4;
                    let mut r = Runner::new(be, &m.model, pages, 16)?;
                    let root = r.pool.create();
                    be.set_phase(Phase::Prefill);
                    r.extend(&[(root, &ids(context))])?;
                    let (kids, copies) = r.pool.fork(root, b)?;
                    r.copy_pages(&copies)?;
                    be.set_phase(Phase::Decode);
                    let tok = [42u32.min(m.model.cfg.vocab_size as u32 - 1)];
                    let step: Vec<(SeqId, &[u32])> = kids.iter().map(|k| (*k, &tok[..])).collect();
                    // A warm-up step, waited for (the sampled ids come back): the prefill, the
                    // page copies and first-use costs are queued asynchronously on a GPU and
                    // must not run inside the timed steps.
                    let (u, vocab) = (vec![0.5; b], m.model.cfg.vocab_size);
                    let warm = r.extend(&step)?;
                    be.sample_rows(warm.logits()?, vocab, Sampling::GREEDY, &u)?;
                    let before = be
                        .ledger()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    let t = Instant::now();
                    // A step as the engine runs it: the forward pass, then the next ids
                    // sampled where the logits are (greedy; only the ids come back).
                    for _ in 0..steps {
                        let out = r.extend(&step)?;
                        be.sample_rows(out.logits()?, vocab, Sampling::GREEDY, &u)?;
                    }
                    let secs = t.elapsed().as_secs_f64() / steps as f64;
                    let l = be
                        .ledger()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .since(&before);
                    let gbs = l.total().bytes as f64 / steps as f64 / secs;
                    let (pct, meas) = if on_gpu {
                        (
                            format!("{:.1}", 100.0 * gbs / HBM_BYTES_PER_S),
                            of_measured_bw(gbs),
                        )
                    } else {
                        ("-".into(), String::new())
                    };
                    outln!(
                        "{b:>6} {:>10.3} {:>10.1} {:>10.2} {pct:>8}{meas}",
                        secs * 1e3,
                        b as f64 / secs,
                        gbs / 1e9
                    );
                }
            }
            What::Attention { .. } => unreachable!("handled above"),
            &What::Prefill { tokens, runs } => {
                fits_positions(tokens, &format!("--tokens {tokens}"), &m.model.cfg)?;
                let mut r = Runner::new(be, &m.model, tokens.div_ceil(16) + 2, 16)?;
                be.set_phase(Phase::Prefill);
                // A warm-up of the same shape, waited for: cuBLAS picks (and loads on first
                // use) its kernels per shape, and a GPU queues work asynchronously.
                let mut prefill = || -> Result<f64> {
                    let s = r.pool.create();
                    let t = Instant::now();
                    let out = r.extend(&[(s, &ids(tokens))])?;
                    be.to_host(out.logits()?)?;
                    let secs = t.elapsed().as_secs_f64();
                    r.pool.free(s)?;
                    Ok(secs)
                };
                prefill()?;
                let before = be
                    .ledger()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let mut times = (0..runs).map(|_| prefill()).collect::<Result<Vec<f64>>>()?;
                times.sort_by(f64::total_cmp);
                let secs = times[runs / 2];
                let l = be
                    .ledger()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .since(&before);
                // Every run is the same prefill: its count is the total's share.
                let tf = (l.total().useful_flops / runs as u64) as f64 / secs;
                let pct = if on_gpu {
                    format!(
                        " ({:.1}% of 790){}",
                        100.0 * tf / BF16_FLOP_PER_S,
                        of_measured_flops(tf)
                    )
                } else {
                    String::new()
                };
                outln!(
                    "prefill of {tokens} tokens on {} ({}): {:.3} s (median of {runs}), {:.1} tokens/s, {:.3} TFLOP/s useful{pct}",
                    m.name,
                    be.device_label(),
                    secs,
                    tokens as f64 / secs,
                    tf / 1e12
                );
            }
        }
        Ok(())
    }
}

/// The attention geometry of `spec` without loading weights: a builtin synthetic config, an HF
/// directory's config.json, or Mistral-7B's by default.
fn geometry(spec: Option<&str>) -> Result<(Config, String)> {
    let spec = spec.unwrap_or("synthetic:mistral-7b");
    match spec.strip_prefix("synthetic:") {
        Some(name) => Ok((Config::builtin(name)?, spec.to_string())),
        None => Ok((
            Config::from_file(&Path::new(spec).join("config.json"))?,
            spec.to_string(),
        )),
    }
}
