//! `ponder solve`: one question, one method; prints `answer: …`, the votes or the tree, and
//! the cost table.
use super::{pick_cpu, Device};
use anyhow::{bail, Result};
use clap::ValueEnum;
use ponder::generate::Runner;
use ponder::methods::common::{Policy, Protocol, Settings, Solution};
use ponder::methods::prm::Prm;
use ponder::methods::quiet_star::QuietStar;
use ponder::methods::{baseline, rebase};
use ponder::model::source::{default_model_dir, load};
use std::path::Path;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Method {
    Baseline,
    QuietStar,
    Rebase,
    Combined,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProtocolArg {
    Seed,
    Wu,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum)]
    method: Method,
    #[arg(long)]
    question: String,
    /// HF model directory or synthetic:NAME; default: the bundled SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<String>,
    /// The process reward model (REBASE); default: the policy model itself.
    #[arg(long)]
    prm: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Votes (baseline, Quiet-STaR).
    #[arg(long, default_value_t = 6)]
    votes: usize,
    /// REBASE width (budget N).
    #[arg(long, default_value_t = 6)]
    width: usize,
    #[arg(long, value_enum, default_value = "seed")]
    protocol: ProtocolArg,
    /// REBASE softmax temperature over PRM scores.
    #[arg(long, default_value_t = 0.2)]
    rebase_temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokens per vote before the answer phase (protocol: 384).
    #[arg(long, default_value_t = 384)]
    max_tokens: usize,
    /// Tokens per REBASE step (protocol: 96).
    #[arg(long, default_value_t = 96)]
    step_tokens: usize,
    /// Run every vote, step and thought to its limit, ignoring EOS and stop strings.
    #[arg(long)]
    fixed_lengths: bool,
    /// Quiet-STaR thought length n_ahead (start + n_ahead−3 sampled + end).
    #[arg(long, default_value_t = 8)]
    n_ahead: usize,
    /// Keep a checkpoint's trained start/end-of-thought embeddings instead of re-applying the
    /// "---" initialisation that the reference eval (and the study) applied.
    #[arg(long)]
    keep_thought_embeddings: bool,
    /// KV pages per model (16 tokens each).
    #[arg(long, default_value_t = 4096)]
    kv_pages: usize,
    /// At most this many sequences per forward pass.
    #[arg(long)]
    max_batch: Option<usize>,
    #[arg(long)]
    show_tree: bool,
    /// Print the whole solution as JSON instead of the tables.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, cache: &Path) -> Result<()> {
    if a.votes == 0 || a.width == 0 {
        bail!("--votes and --width must be at least 1");
    }
    if !(a.rebase_temperature.is_finite() && a.rebase_temperature > 0.0) {
        bail!("--rebase-temperature must be a positive number");
    }
    let be = pick_cpu(a.device)?;
    let m = load(&be, a.model.as_deref(), cache)?;
    let settings = Settings {
        seed: a.seed,
        votes: a.votes,
        width: a.width,
        protocol: match a.protocol {
            ProtocolArg::Seed => Protocol::Seed,
            ProtocolArg::Wu => Protocol::Wu,
        },
        rebase_temperature: a.rebase_temperature,
        fixed_lengths: a.fixed_lengths,
        max_tokens: a.max_tokens,
        step_tokens: a.step_tokens,
        ..Settings::default()
    };
    let mut runner = Runner::new(&be, &m.model, a.kv_pages, 16)?;
    if let Some(b) = a.max_batch {
        runner.max_batch = b.max(1);
    }
    let mut policy = Policy {
        runner,
        tok: &m.tok,
    };
    let wants_quiet = matches!(a.method, Method::QuietStar | Method::Combined);
    let dir = match a.model.as_deref() {
        Some(s) if s.starts_with("synthetic:") => None,
        Some(d) => Some(Path::new(d).to_path_buf()),
        None => Some(default_model_dir(cache)),
    };
    let quiet = if wants_quiet {
        Some(QuietStar::new(
            &be,
            &m.model,
            &m.tok,
            dir.as_deref(),
            !a.keep_thought_embeddings,
            a.n_ahead,
        )?)
    } else {
        None
    };
    let sol = match a.method {
        Method::Baseline | Method::QuietStar => {
            baseline::solve(&mut policy, quiet.as_ref(), &a.question, &settings)?
        }
        Method::Rebase | Method::Combined => {
            let prm_loaded = match &a.prm {
                Some(spec) => Some(load(&be, Some(spec), cache)?),
                None => None,
            };
            let (prm_model, prm_tok, name) = match &prm_loaded {
                Some(l) => (&l.model, &l.tok, l.name.clone()),
                None => (&m.model, &m.tok, format!("{} (the policy itself)", m.name)),
            };
            let prm_runner = Runner::new(&be, prm_model, a.kv_pages, 16)?;
            let mut prm = Prm::new(prm_runner, prm_tok, name)?;
            rebase::solve(
                &mut policy,
                &mut prm,
                quiet.as_ref(),
                &a.question,
                &settings,
            )?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sol)?);
        return Ok(());
    }
    print_solution(&sol, a.show_tree, quiet.as_ref().map(|q| q.origin.as_str()));
    Ok(())
}

fn print_solution(sol: &Solution, show_tree: bool, quiet_origin: Option<&str>) {
    println!("answer: {}", sol.answer.as_deref().unwrap_or("(none)"));
    if show_tree && !sol.tree.is_empty() {
        println!("\ntree ({} nodes):", sol.tree.len());
        for (i, n) in sol.tree.iter().enumerate() {
            let score = n
                .score
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into());
            let text: String = n
                .text
                .chars()
                .take(90)
                .collect::<String>()
                .replace('\n', " ⏎ ");
            println!(
                "{:indent$}#{i} <- {:?} score {score}{} [{} tok] {text}",
                "",
                n.parent,
                match (n.leaf, n.dropped) {
                    (_, true) => " dropped",
                    (true, _) => " leaf",
                    _ => "",
                },
                n.tokens,
                indent = 2 * n.depth
            );
        }
    }
    let what = if sol.tree.is_empty() {
        "votes"
    } else {
        "leaves"
    };
    println!("\n{what}:");
    for (i, v) in sol.votes.iter().enumerate() {
        let score = v
            .scores
            .last()
            .map(|s| format!(" score {s:.3}"))
            .unwrap_or_default();
        let text: String = v
            .text
            .chars()
            .take(120)
            .collect::<String>()
            .replace('\n', " ⏎ ");
        println!(
            "  {i}: answer {}{score} [{} tok] {text}",
            v.answer.as_deref().unwrap_or("-"),
            v.tokens
        );
    }
    println!("\ncost ({}):", sol.method);
    if let Some(o) = quiet_origin {
        println!("  thought markers          {o}");
    }
    if let Some(p) = &sol.prm {
        println!("  PRM                      {p}");
    }
    println!("  seconds                  {:.3}", sol.seconds);
    println!("  prompt tokens            {}", sol.prompt_tokens);
    println!("  generated tokens         {}", sol.generated_tokens);
    println!("  thought tokens           {}", sol.thought_tokens);
    println!("  PRM tokens               {}", sol.prm_tokens);
    println!("  useful FLOPs             {}", sol.flops.useful);
    for (phase, f) in &sol.flops.useful_by_phase {
        if *f > 0 {
            println!("    {phase:<22} {f}");
        }
    }
    println!("  executed FLOPs           {}", sol.flops.executed);
    println!("  bytes moved              {}", sol.flops.bytes);
    println!("  study's formula FLOPs    {}", sol.study_flops);
}
