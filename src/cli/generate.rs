//! `ponder generate`: stream a completion of one prompt.
use super::{with_backend, Device, OnBackend};
use anyhow::{bail, Context, Result};
use ponder::backend::Backend;
use ponder::flops::{study_flops_per_token, Phase};
use ponder::generate::{generate, pages_needed, GenParams, Runner};
use ponder::model::source::load;
use ponder::sample::Sampling;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// `--kernels` of generate (bench's has a third value, both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelsArg {
    /// Each row's bits independent of what shares its pass (solve's and eval's).
    Invariant,
    /// The fastest per pass.
    Fast,
}

#[derive(clap::Args)]
pub struct Args {
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a UTF-8 file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// HF model directory or synthetic:NAME (mistral-7b, smollm2-135m, tiny); default: the
    /// bundled SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<String>,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// CUDA kernels: batch-invariant (as solve and eval run them) or the fastest per pass
    /// (for profiling and the FLOP audit of the fast kernels). The CPU has one kind.
    #[arg(long, value_enum, default_value = "invariant")]
    kernels: KernelsArg,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Sample from the smallest set of most likely tokens whose probability reaches this;
    /// 1: every token.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sample from the k most likely tokens only (ties at the k-th kept), before --top-p;
    /// 0: every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Apply the model's chat template to the prompt.
    #[arg(long)]
    chat: bool,
    /// Prepend the BOS token.
    #[arg(long)]
    bos: bool,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print the FLOP ledger after generating.
    #[arg(long)]
    flops: bool,
    /// Tokens per KV page.
    #[arg(long, default_value_t = 16)]
    page_size: usize,
}

pub fn run(a: Args, cache: &std::path::Path) -> Result<()> {
    if !a.temperature.is_finite() || a.temperature < 0.0 {
        bail!(
            "--temperature must be a finite number ≥ 0, not {}",
            a.temperature
        );
    }
    if a.top_p.is_nan() || a.top_p <= 0.0 || a.top_p > 1.0 {
        bail!("--top-p must be in (0, 1], not {}", a.top_p);
    }
    if a.stop.iter().any(String::is_empty) {
        bail!("--stop needs a non-empty string (an empty one would stop before any token)");
    }
    if a.page_size == 0 {
        bail!("--page-size must be positive");
    }
    let prompt = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            let bytes = ponder::input::read_file_or_pipe(f)?;
            let text = String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("prompt file {} is not UTF-8 ({e})", f.display()))?;
            // A byte-order mark (editors on Windows write one) is no part of the prompt,
            // as the data loader drops it from a data file.
            match text.strip_prefix('\u{feff}') {
                Some(t) => t.to_string(),
                None => text,
            }
        }
        (None, None) => bail!("give --prompt TEXT or --prompt-file FILE"),
    };
    let device = a.device;
    with_backend(
        device,
        Generate {
            a,
            prompt,
            cache: cache.to_path_buf(),
        },
    )
}

struct Generate {
    a: Args,
    prompt: String,
    cache: PathBuf,
}

impl OnBackend for Generate {
    fn run<B: Backend + 'static>(self, be: B) -> Result<()> {
        let Generate { a, prompt, cache } = self;
        be.set_batch_invariant(a.kernels == KernelsArg::Invariant);
        let cache = cache.as_path();
        let t_load = Instant::now();
        let m = load(&be, a.model.as_deref(), cache)?;
        let load_s = t_load.elapsed().as_secs_f64();
        let text = if a.chat {
            m.tok.chat_prompt(&prompt)?
        } else {
            prompt
        };
        m.tok
            .check_fits(&text, m.model.cfg.max_position_embeddings, "the prompt")?;
        let mut ids = m.tok.encode(&text)?;
        if a.bos {
            let bos = m
                .model
                .cfg
                .bos_token_id
                .context("the model has no BOS token")?;
            // A chat template often starts with it already (SmolLM2's <|im_start|>).
            if ids.first() == Some(&bos) {
                eprintln!(
                    "ponder: note: the prompt already starts with the BOS token {bos}; --bos \
                     adds a second"
                );
            }
            ids.insert(0, bos);
        }
        if ids.is_empty() {
            bail!("the prompt is empty");
        }
        super::common::fits_positions(
            ids.len().saturating_add(a.max_tokens),
            &format!(
                "the prompt's {} tokens + --max-tokens {}",
                ids.len(),
                a.max_tokens
            ),
            &m.model.cfg,
        )?;
        let pages = pages_needed(&[ids.len()], a.max_tokens, a.page_size);
        let mut runner = Runner::new(&be, &m.model, pages, a.page_size)?;
        let params = GenParams {
            max_tokens: a.max_tokens,
            sampling: Sampling {
                temperature: a.temperature,
                top_p: a.top_p,
                top_k: a.top_k,
            },
            seed: a.seed,
            stop: a.stop.clone(),
            ignore_eos: false,
        };
        let t0 = Instant::now();
        let mut stdout = std::io::stdout();
        // A failed write (a closed pipe, a full disk) stops the generation at once, as a
        // one-line error.
        let out = generate(&mut runner, &m.tok, &[ids.clone()], &params, |_, s| {
            stdout
                .write_all(s.as_bytes())
                .and(stdout.flush())
                .context("cannot write to stdout")
        })?;
        outln!();
        let secs = t0.elapsed().as_secs_f64();
        let n = out[0].ids.len();
        eprintln!(
        "[{}: {} prompt + {} generated tokens in {:.2} s ({:.1} tok/s), load {:.2} s, finish {:?}]",
        m.name,
        ids.len(),
        n,
        secs,
        n as f64 / secs.max(1e-9),
        load_s,
        out[0].finish
    );
        if a.flops {
            let l = be
                .ledger()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            eprint!("{}", l.table());
            let c = &m.model.cfg;
            let study = study_flops_per_token(
                c.hidden_size as u64,
                c.num_hidden_layers as u64,
                c.num_attention_heads as u64,
                c.intermediate_size as u64,
            );
            eprintln!(
            "exact useful FLOPs: {} (prefill {}, decode {}, sample {}); the study's formula: {} ({} per generated token)",
            l.total().useful_flops,
            l.by_phase(Phase::Prefill).useful_flops,
            l.by_phase(Phase::Decode).useful_flops,
            l.by_phase(Phase::Sample).useful_flops,
            study * n as u64,
            study
        );
        }
        Ok(())
    }
}
