//! `ponder bench attention`: each attention kernel alone, on the model's attention geometry,
//! against the roofline that bounds it. Prefill-shaped cases (causal, the Quiet-STaR diagonal
//! mask) are compute-bound: useful TFLOP/s against 790. Decode-shaped cases (paged decode,
//! shared prefix) are bound by reading the KV cache: GB/s against 3.1 TB/s. FLOPs and bytes
//! are the ledger's counts over the timed launches, so they are what the kernels were charged
//! with, not a formula of this file.
use super::bench::{of_measured_bw, of_measured_flops, BF16_FLOP_PER_S, HBM_BYTES_PER_S};
use anyhow::{bail, Result};
use ponder::backend::Backend;
use ponder::bench_cases as cases;
use ponder::flops::{Counts, Phase};
use ponder::model::config::Config;
use std::time::Instant;

/// The sizes of the four cases.
pub struct Sizes {
    /// Causal prefill: one sequence of this many tokens.
    pub tokens: usize,
    /// Paged decode and shared prefix: this many sequences…
    pub batch: usize,
    /// …each attending to this many keys (shared by all in the shared-prefix case).
    pub context: usize,
    /// Diagonal mask: thought positions per depth, and the depth of the timed queries.
    pub thought_len: usize,
    pub depth: usize,
    pub iters: usize,
}

/// Runs `f` once to warm up (waited for), then `iters` times back to back; returns seconds
/// per run and the ledger's counts per run. The clock stops when the device has finished the
/// last run (`synchronize`), before anything is copied back: a copy of the output to the host
/// would cost more than a short kernel itself. The runs go through `run_pass`, as a forward
/// pass's ops do: on the CPU they start on its thread pool instead of each being handed to it.
fn time<B: Backend>(
    be: &B,
    iters: usize,
    mut f: impl FnMut() -> Result<B::Tensor> + Send,
) -> Result<(f64, Counts)> {
    be.to_host(&f()?)?;
    let before = be
        .ledger()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let t = Instant::now();
    let last = be.run_pass(|| {
        let mut last = None;
        for _ in 0..iters {
            last = Some(f()?);
        }
        anyhow::Ok(last)
    })?;
    be.synchronize()?;
    let secs = t.elapsed().as_secs_f64() / iters as f64;
    // Outside the clock: a fault in the last run surfaces here at the latest.
    if let Some(o) = &last {
        be.to_host(o)?;
    }
    let l = be.ledger().lock().unwrap_or_else(|e| e.into_inner());
    let mut c = l.since(&before).total();
    for x in [
        &mut c.useful_flops,
        &mut c.executed_flops,
        &mut c.bytes,
        &mut c.calls,
    ] {
        *x /= iters as u64;
    }
    Ok((secs, c))
}

fn row(
    case: &str,
    shape: &str,
    secs: f64,
    c: Counts,
    memory_bound: bool,
    on_gpu: bool,
) -> Result<()> {
    let (tf, gbs) = (c.useful_flops as f64 / secs, c.bytes as f64 / secs);
    let pct = match (on_gpu, memory_bound) {
        (false, _) => "-".to_string(),
        (true, true) => format!(
            "{:.1}% of 3.1 TB/s{}",
            100.0 * gbs / HBM_BYTES_PER_S,
            of_measured_bw(gbs)
        ),
        (true, false) => format!(
            "{:.1}% of 790 TFLOP/s{}",
            100.0 * tf / BF16_FLOP_PER_S,
            of_measured_flops(tf)
        ),
    };
    outln!(
        "{case:<14} {shape:<30} {:>10.3} {:>10.3} {:>10.3} {pct:>20}",
        secs * 1e3,
        tf / 1e12,
        gbs / 1e9
    );
    Ok(())
}

/// The most timed runs per case `--iters` may ask for.
const MAX_ITERS: usize = 1_000_000;

pub fn run<B: Backend>(be: &B, cfg: &Config, name: &str, s: &Sizes) -> Result<()> {
    for (flag, v) in [
        ("--tokens", s.tokens),
        ("--batch", s.batch),
        ("--context", s.context),
        ("--thought-len", s.thought_len),
        // Depth 0 sees no thought keys: the diagonal mask would time a plain causal block.
        ("--depth", s.depth),
        ("--iters", s.iters),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if s.depth > 64 {
        bail!("--depth is at most 64, not {}", s.depth);
    }
    if s.thought_len > 1 << 20 {
        bail!("--thought-len is at most 1048576, not {}", s.thought_len);
    }
    // Each case runs `iters` times: a count past this is a typo, not a benchmark.
    if s.iters > MAX_ITERS {
        bail!("--iters is at most {MAX_ITERS}, not {}", s.iters);
    }
    let d = cfg.attn_dims();
    fits_in_memory(s, cfg)?;
    let on_gpu = be.name() != "cpu";
    outln!(
        "attention on {name} ({}): {} query heads, {} KV heads, head_dim {}; {} timed runs each",
        be.device_label(),
        d.heads,
        d.kv_heads,
        d.head_dim,
        s.iters
    );
    outln!(
        "{:<14} {:<30} {:>10} {:>10} {:>10} {:>20}",
        "case",
        "shape",
        "ms",
        "TFLOP/s",
        "GB/s",
        "roofline"
    );
    be.set_phase(Phase::Prefill);
    let c = cases::causal(be, d, s.tokens)?;
    let (secs, n) = time(be, s.iters, || c.run(be, d))?;
    row("causal", &c.shape, secs, n, false, on_gpu)?;
    drop(c);

    // The diagonal mask of Quiet-STaR's parallel thoughts.
    let c = cases::thought_block(be, d, s.thought_len, s.depth)?;
    let (secs, n) = time(be, s.iters, || c.run(be, d))?;
    row("diagonal-mask", &c.shape, secs, n, false, on_gpu)?;
    drop(c);

    be.set_phase(Phase::Decode);
    let c = cases::paged_decode(be, d, s.batch, s.context)?;
    let (secs, n) = time(be, s.iters, || c.run(be, d))?;
    row("paged-decode", &c.shape, secs, n, true, on_gpu)?;
    drop(c);

    let tail = 32;
    let c = cases::shared_prefix(be, d, s.batch, s.context, tail)?;
    let (secs, n) = time(be, s.iters, || c.run(be, d))?;
    row("shared-prefix", &c.shape, secs, n, true, on_gpu)?;
    // What reading the prefix once per branch would cost, beside what the kernels were charged.
    let ctx = s.context.div_ceil(cases::PAGE) * cases::PAGE;
    let kd = d.kv_heads * d.head_dim;
    let per_branch = (s.batch * (ctx + tail)) as f64 * kd as f64 * 2.0 * kv_elem_bytes(on_gpu);
    outln!(
        "{:<14} K/V read per branch would be {:.1} MB; the kernels were charged {:.1} MB{}",
        "",
        per_branch / 1e6,
        n.bytes as f64 / 1e6,
        if on_gpu {
            ""
        } else {
            " (the CPU reads each branch's keys, the prefix included, so it saves nothing)"
        }
    );
    Ok(())
}

/// Bytes per K/V element in the pool: bf16 on the GPU, f32 on the CPU.
fn kv_elem_bytes(on_gpu: bool) -> f64 {
    if on_gpu {
        2.0
    } else {
        4.0
    }
}

/// The cases' inputs are built on the host (then copied to a device): refuses sizes whose
/// f32 queries, outputs and K/V would not fit this machine's memory, before allocating any.
fn fits_in_memory(s: &Sizes, cfg: &Config) -> Result<()> {
    let (q, kv) = (cfg.q_dim() as u128, cfg.kv_dim() as u128);
    let u = |x: usize| x as u128;
    // Causal: queries, output and the fill's q|k|v rows, plus K and V; decode: a page range
    // of keys per branch and a shared prefix; the diagonal mask: depth + 1 blocks of keys.
    let causal = u(s.tokens) * (3 * q + 4 * kv);
    let decode = u(s.batch) * (2 * q + 2 * kv * u(s.context)) + 4 * kv * u(s.context);
    let blocks = u(s.thought_len) * u(s.depth + 1);
    let diagonal = blocks * (3 * q + 4 * kv);
    let bytes = 4 * causal.max(decode).max(diagonal);
    if let Some(total) = ponder::model::source::host_memory("MemTotal") {
        if bytes > total as u128 {
            bail!(
                "these sizes need about {:.1} GB of host memory for their inputs, more than this \
                 machine's {:.1} GB (lower --tokens, --batch × --context or --thought-len × --depth)",
                bytes as f64 / 1e9,
                total as f64 / 1e9
            );
        }
    }
    Ok(())
}
