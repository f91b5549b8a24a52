//! `ponder eval`: every (method, budget) over the selected problems, each finished problem
//! appended durably to results.jsonl, a progress line per problem, the report at the end.
use super::data::Problem;
use super::record::Record;
use super::results::ResultsFile;
use crate::backend::Backend;
use crate::methods::answer::normalise_number;
use crate::methods::common::Settings;
use crate::methods::engines::{Engines, Method};
use crate::rng::mix64;
use anyhow::Result;
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

pub struct Plan {
    pub methods: Vec<Method>,
    /// Budgets to run for each method (votes or width); empty = the settings' own.
    pub budgets: Vec<usize>,
    pub settings: Settings,
    pub model: String,
    pub subset: Option<String>,
}

impl Plan {
    pub fn runs(&self) -> Vec<(Method, usize)> {
        let mut v = Vec::new();
        for &m in &self.methods {
            if self.budgets.is_empty() {
                let b = if m.uses_prm() {
                    self.settings.width
                } else {
                    self.settings.votes
                };
                v.push((m, b));
            } else {
                v.extend(self.budgets.iter().map(|&b| (m, b)));
            }
        }
        v
    }
}

/// Whether a prediction matches the gold answer (numbers compared by value).
pub fn is_correct(pred: Option<&str>, gold: Option<&str>) -> bool {
    match (pred, gold) {
        (Some(p), Some(g)) => match (normalise_number(p), normalise_number(g)) {
            (Some(a), Some(b)) => a == b,
            _ => p.trim() == g.trim(),
        },
        _ => false,
    }
}

/// Runs the plan; problems already in `out`'s results (with --resume) are skipped. Each
/// problem gets its own seed (from the run's seed and its row), so a resumed run gives the
/// same answers as an uninterrupted one.
pub fn run<B: Backend>(
    e: &mut Engines<'_, B>,
    plan: &Plan,
    problems: &[Problem],
    out: &Path,
    resume: bool,
) -> Result<Vec<Record>> {
    let (mut file, mut records) = ResultsFile::open(out, resume)?;
    let done: HashSet<(String, usize, usize)> = records.iter().map(|r| r.key()).collect();
    for (method, budget) in plan.runs() {
        let mut s = plan.settings.clone();
        if method.uses_prm() {
            s.width = budget;
        } else {
            s.votes = budget;
        }
        let label = format!("{}@{budget}", method.name());
        let todo: Vec<&Problem> = problems
            .iter()
            .filter(|p| !done.contains(&(method.name().to_string(), budget, p.index)))
            .collect();
        let mut prev: Vec<&Record> = records
            .iter()
            .filter(|r| r.method == method.name() && r.budget == budget)
            .collect::<Vec<_>>();
        let (mut correct, mut n) = (prev.iter().filter(|r| r.correct).count(), prev.len());
        let mut flops: u64 = prev.iter().map(|r| r.flops).sum();
        prev.clear();
        let t0 = Instant::now();
        for (k, p) in todo.iter().enumerate() {
            let ps = Settings {
                seed: mix64(plan.settings.seed ^ mix64(p.index as u64)),
                ..s.clone()
            };
            let sol = e.solve(method, &p.question, &ps)?;
            let ok = is_correct(sol.answer.as_deref(), p.gold.as_deref());
            let rec = Record::new(
                &sol,
                budget,
                p.index,
                p.gold.clone(),
                ok,
                &plan.model,
                plan.subset.as_deref(),
                plan.settings.seed,
            );
            file.append(&rec)?;
            n += 1;
            correct += ok as usize;
            flops += rec.flops;
            let per = t0.elapsed().as_secs_f64() / (k + 1) as f64;
            let left = per * (todo.len() - k - 1) as f64;
            eprintln!(
                "[{label}] {n}/{} acc {correct}/{n} ({:.2}%) {per:.2} s/problem, {:.3e} FLOPs so far, ETA {}",
                n + todo.len() - k - 1,
                100.0 * correct as f64 / n as f64,
                flops as f64,
                fmt_secs(left)
            );
            records.push(rec);
        }
    }
    Ok(records)
}

fn fmt_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
