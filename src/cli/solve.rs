//! `ponder solve`: one question, one method; prints `answer: …`, the votes or the tree, and
//! the cost table.
use super::common::Opts;
use super::{with_backend, OnBackend};
use anyhow::Result;
use ponder::backend::Backend;
use ponder::methods::common::Solution;
use ponder::methods::engines::Method;
use ponder::model::source::load;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// baseline | quiet-star | rebase | combined
    #[arg(long)]
    method: String,
    /// The question, as a GSM8K problem's text.
    #[arg(long)]
    question: String,
    #[command(flatten)]
    opts: Opts,
    /// Draw REBASE's tree (rebase, combined): every node with its step's text and score.
    #[arg(long)]
    show_tree: bool,
    /// Print the whole solution as JSON instead of the tables.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, cache: &Path) -> Result<()> {
    if a.question.trim().is_empty() {
        anyhow::bail!("the question is empty");
    }
    let device = a.opts.device;
    with_backend(
        device,
        Solve {
            a,
            cache: cache.to_path_buf(),
        },
    )
}

struct Solve {
    a: Args,
    cache: PathBuf,
}

impl OnBackend for Solve {
    fn run<B: Backend + 'static>(self, be: B) -> Result<()> {
        let (a, cache) = (self.a, self.cache.as_path());
        let method = Method::parse(&a.method)?;
        let trees = method.uses_prm();
        if a.show_tree && !trees {
            anyhow::bail!(
                "--show-tree draws a REBASE tree (rebase, combined); {} prints its votes without it",
                method.name()
            );
        }
        let settings = a.opts.settings()?;
        let m = load(&be, a.opts.model.as_deref(), cache)?;
        a.opts
            .check_lengths(&settings, &m.model.cfg, !trees, trees)?;
        let prm = a.opts.load_prm(&be, cache, method.uses_prm())?;
        let mut e = a.opts.engines(
            &be,
            &m,
            prm.as_ref(),
            cache,
            method.uses_prm(),
            method.uses_thoughts(),
        )?;
        if let Some(note) = a.opts.unused_flags(&[method]) {
            eprintln!("{note}");
        }
        let sol = e.solve(method, &a.question, &settings)?;
        if a.json {
            // The solution, and for Quiet-STaR where its thought markers came from (the
            // text output's "thought markers" line).
            #[derive(serde::Serialize)]
            struct Out<'s> {
                #[serde(flatten)]
                sol: &'s Solution,
                #[serde(skip_serializing_if = "Option::is_none")]
                thought_markers: Option<&'s str>,
            }
            let out = Out {
                sol: &sol,
                thought_markers: e.quiet.as_ref().map(|q| q.origin.as_str()),
            };
            outln!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        print_solution(
            &sol,
            a.show_tree,
            e.quiet.as_ref().map(|q| q.origin.as_str()),
        )
    }
}

fn print_solution(sol: &Solution, show_tree: bool, quiet_origin: Option<&str>) -> Result<()> {
    outln!("answer: {}", sol.answer.as_deref().unwrap_or("(none)"));
    if show_tree && !sol.tree.is_empty() {
        outln!("\ntree ({} nodes):", sol.tree.len());
        for (i, n) in sol.tree.iter().enumerate() {
            let score = n
                .score
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into());
            let text = one_line(&n.text, 90);
            let parent = n
                .parent
                .map_or("root".to_string(), |p| format!("child of #{p}"));
            outln!(
                "{:indent$}#{i} ({parent}) score {score}{} [{} tok] {text}",
                "",
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
    outln!("\n{what}:");
    if sol.votes.is_empty() {
        outln!("  (none)");
    }
    for (i, v) in sol.votes.iter().enumerate() {
        let score = v
            .scores
            .last()
            .map(|s| format!(" score {s:.3}"))
            .unwrap_or_default();
        let text = one_line(&v.text, 120);
        outln!(
            "  {i}: answer {}{score} [{} tok] {text}",
            v.answer.as_deref().unwrap_or("-"),
            v.tokens
        );
    }
    outln!("\ncost ({}):", sol.method);
    if let Some(o) = quiet_origin {
        outln!("  thought markers          {o}");
    }
    if let Some(p) = &sol.prm {
        outln!("  PRM                      {p}");
    }
    outln!("  seconds                  {:.3}", sol.seconds);
    outln!("  prompt tokens            {}", sol.prompt_tokens);
    outln!("  generated tokens         {}", sol.generated_tokens);
    outln!("  thought tokens           {}", sol.thought_tokens);
    outln!("  PRM tokens               {}", sol.prm_tokens);
    outln!("  useful FLOPs             {}", sol.flops.useful);
    for (phase, f) in &sol.flops.useful_by_phase {
        if *f > 0 {
            outln!("    {phase:<22} {f}");
        }
    }
    outln!("  executed FLOPs           {}", sol.flops.executed);
    outln!("  bytes moved              {}", sol.flops.bytes);
    outln!("  study's formula FLOPs    {}", sol.study_flops);
    Ok(())
}

/// The first `max` characters of a generated text on one terminal line: a newline shows as
/// " ⏎ ", a tab as a space, and any other control character (a carriage return would
/// overwrite the line, a NUL reach the output as is) as its escape, e.g. `\u{0}`.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().take(max) {
        match c {
            '\n' => out.push_str(" ⏎ "),
            '\t' => out.push(' '),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_text_stays_on_one_line() {
        let t = "a\nb\tc\rd\0e\u{1b}[2Jf";
        assert_eq!(super::one_line(t, 100), "a ⏎ b c\\u{d}d\\u{0}e\\u{1b}[2Jf");
        assert_eq!(super::one_line("αβγδ", 2), "αβ");
    }
}
