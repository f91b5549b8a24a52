//! `ponder eval`: every (method, budget) over the selected problems, each finished problem
//! appended durably to results.jsonl, a progress line per problem, the report at the end.
use super::data::Problem;
use super::planned;
use super::record::Record;
use super::results::ResultsFile;
use crate::account;
use crate::backend::Backend;
use crate::batcher::Batcher;
use crate::methods::answer::{first_integer, normalise_number};
use crate::methods::common::{DoesNotFit, Protocol, Settings, Solution};
use crate::methods::engines::{Engines, Method};
use crate::rng::mix64;
use crate::scheduler::PoolTooSmall;
use anyhow::Result;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

pub struct Plan {
    pub methods: Vec<Method>,
    /// Budgets to run for each method (votes or width); empty = the settings' own.
    pub budgets: Vec<usize>,
    pub settings: Settings,
    pub model: String,
    /// Backend::device_label of the backend running it.
    pub device: String,
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

/// Whether a prediction matches the gold answer as the method's reference grades it
/// (numbers compared by value). The study (baseline, Quiet-STaR, REBASE under `--protocol
/// seed`) reads the gold with the same `\d+` as the prediction (protocol.md), so its sign
/// is not part of it: gold "-7" is 7, which an unsigned prediction can match. Wu et al.'s
/// grader (`signed`: REBASE under `--protocol wu`) compares the numbers as written.
pub fn is_correct(pred: Option<&str>, gold: Option<&str>, signed: bool) -> bool {
    let (Some(p), Some(g)) = (pred, gold) else {
        return false;
    };
    let g = if signed {
        g.to_string()
    } else {
        match first_integer(g) {
            Some(g) => g,
            None => return false,
        }
    };
    match (normalise_number(p), normalise_number(&g)) {
        (Some(a), Some(b)) => a == b,
        _ => p.trim() == g.trim(),
    }
}

/// Runs the plan; problems already in `out`'s results (with --resume) are skipped. Each
/// problem gets its own seed (from the run's seed and its row), so a resumed run gives the
/// same answers as an uninterrupted one. Each of `workers` solves one problem at a time; with
/// several (and their `batcher`, see batcher.rs) that many problems are in flight and their
/// forward passes run together. Results are appended as problems finish.
pub fn run<B: Backend>(
    workers: &mut [Engines<'_, B>],
    batcher: Option<&Batcher<'_, B>>,
    plan: &Plan,
    problems: &[Problem],
    opened: (ResultsFile, Vec<Record>),
) -> Result<Vec<Record>> {
    anyhow::ensure!(!workers.is_empty(), "no worker to run the problems");
    let (mut file, mut records) = opened;
    let done: HashSet<(String, usize, usize)> = records.iter().map(|r| r.key()).collect();
    let held: Vec<(&str, usize)> = records
        .iter()
        .map(|r| (r.method.as_str(), r.budget))
        .collect();
    for line in other_budgets(&held, &plan.runs()) {
        eprintln!("{line}");
    }
    // Rows skipped as too long, per run (label), for the closing line.
    let mut skipped: Vec<(String, Vec<usize>)> = Vec::new();
    // Whether any of them was too long for the KV pool (not the model's positions).
    let mut pool_skips = false;
    let runs = plan.runs();
    for (ri, &(method, budget)) in runs.iter().enumerate() {
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
        let prev: Vec<&Record> = records
            .iter()
            .filter(|r| r.method == method.name() && r.budget == budget)
            .collect();
        let mut progress = Progress {
            label,
            // A sweep's (method, budget) runs one after another: which one this is, since
            // the ETA covers this run only.
            of: match runs.len() {
                1 => String::new(),
                n => format!(", run {} of {n}", ri + 1),
            },
            correct: prev.iter().filter(|r| r.correct).count(),
            n: prev.len(),
            flops: prev.iter().map(|r| r.flops as u128).sum(),
            total: prev.len() + todo.len(),
            t0: Instant::now(),
            new: 0,
            in_flight: workers.len().min(todo.len()).max(1),
        };
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<(usize, Result<Solution>)>();
        let n_workers = workers.len().min(todo.len());
        if let Some(b) = batcher {
            b.expect(n_workers);
        }
        let mut first_error = None;
        let mut too_long = Vec::new();
        std::thread::scope(|sc| {
            for (w, e) in workers.iter_mut().take(n_workers).enumerate() {
                let (tx, todo, next, stop, s) = (tx.clone(), &todo, &next, &stop, &s);
                let spawned = std::thread::Builder::new().spawn_scoped(sc, move || {
                    let _turn = batcher.map(|b| b.enter());
                    // A panicking worker stops the others taking new problems, as an error
                    // does (the scope then passes the panic on). Declared after the turn, so
                    // dropped first: the flag is set before another worker gets the turn.
                    let _stop = StopOnPanic(stop);
                    while !stop.load(Ordering::SeqCst) {
                        let k = next.fetch_add(1, Ordering::SeqCst);
                        let Some(p) = todo.get(k) else { break };
                        let ps = Settings {
                            seed: mix64(plan.settings.seed ^ mix64(p.index as u64)),
                            ..s.clone()
                        };
                        // The problem's own account: its costs, whatever else is in flight.
                        let prev = account::install(Some(Default::default()));
                        let res = e.solve(method, &p.question, &ps);
                        account::install(prev);
                        let failed = res.as_ref().is_err_and(|e| !does_not_fit(e));
                        if tx.send((k, res)).is_err() || failed {
                            stop.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                });
                // A thread the system will not start: the batcher stops waiting for the
                // workers not started (it expected them all), and those started go on.
                if let Err(err) = spawned {
                    if let Some(b) = batcher {
                        b.unexpect(n_workers - w);
                    }
                    if w == 0 {
                        first_error
                            .get_or_insert(anyhow::anyhow!("cannot start a worker thread: {err}"));
                    } else {
                        eprintln!(
                            "ponder: cannot start worker thread {} ({err}); going on with {w}",
                            w + 1
                        );
                    }
                    break;
                }
            }
            drop(tx);
            // Append each result as it arrives; after an error, keep those still in flight.
            for (k, res) in rx {
                let p = todo[k];
                let sol = match res {
                    Ok(sol) => sol,
                    // Skipped, as a malformed data line is: no record (a resume meets it
                    // again, and skips it again).
                    Err(e) if does_not_fit(&e) => {
                        pool_skips |= e.downcast_ref::<PoolTooSmall>().is_some();
                        eprintln!("ponder: [{}] skipping row {}: {e}", progress.label, p.index);
                        // Not a gap in the run: a report must not call it unfinished.
                        let line = planned::Line::Skipped {
                            method: method.name().to_string(),
                            budget,
                            row: p.index,
                        };
                        if let Err(e) = planned::append(file.dir(), &line, false) {
                            eprintln!(
                                "ponder: {e:#} (a report will count row {} as not run)",
                                p.index
                            );
                        }
                        progress.total -= 1;
                        too_long.push(p.index);
                        continue;
                    }
                    Err(e) => {
                        first_error.get_or_insert(e.context(format!(
                            "{} on row {}",
                            method.name(),
                            p.index
                        )));
                        continue;
                    }
                };
                let signed = method.uses_prm() && plan.settings.protocol == Protocol::Wu;
                let ok = is_correct(sol.answer.as_deref(), p.gold.as_deref(), signed);
                let rec = Record::new(
                    &sol,
                    budget,
                    p.index,
                    p.gold.clone(),
                    ok,
                    &plan.model,
                    &plan.device,
                    plan.subset.as_deref(),
                    plan.settings.seed,
                );
                if let Err(e) = file.append(&rec) {
                    stop.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                    continue;
                }
                progress.add(&rec);
                records.push(rec);
            }
        });
        if !too_long.is_empty() {
            too_long.sort_unstable();
            skipped.push((progress.label.clone(), too_long));
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    if !skipped.is_empty() {
        // Said again at the end, beside the report: a method's accuracy there counts only
        // the problems it ran, which may differ between methods.
        let runs: Vec<String> = skipped
            .iter()
            .map(|(label, rows)| {
                let rows: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
                format!("{label} row(s) {}", rows.join(", "))
            })
            .collect();
        // A pool's size changes the FLOPs (preemption recomputes), so a folder keeps one:
        // a larger pool is another run.
        let pool = if pool_skips {
            " or the KV pool (a larger --kv-pages is another run: give it a new --out)"
        } else {
            ""
        };
        eprintln!(
            "ponder: skipped as too long for the model's positions{pool} (no record, not in \
             the report): {}",
            runs.join("; ")
        );
        if records.is_empty() {
            anyhow::bail!("no problem fits the model's positions{pool} at these token limits");
        }
    }
    Ok(records)
}

/// Sets the flag when dropped by a panic.
struct StopOnPanic<'s>(&'s AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Whether a method refused the problem as too long for the model before it took any page,
/// or found one of its sequences too long for the KV pool (its partial costs are dropped
/// with it: a problem has a record only once solved).
fn does_not_fit(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<DoesNotFit>()) || e.downcast_ref::<PoolTooSmall>().is_some()
}

/// The progress line of one (method, budget) run.
struct Progress {
    label: String,
    correct: usize,
    n: usize,
    /// u128: a 7B model's parallel Quiet-STaR costs ~1e17 FLOPs a problem, and u64 ends at
    /// 1.8e19.
    flops: u128,
    total: usize,
    t0: Instant,
    new: usize,
    /// Problems solved at once (at most those to run).
    in_flight: usize,
    /// ", run k of n" when the plan has several runs.
    of: String,
}

impl Progress {
    fn add(&mut self, rec: &Record) {
        self.n += 1;
        self.new += 1;
        self.correct += rec.correct as usize;
        self.flops += rec.flops as u128;
        let per = seconds_per_problem(self.t0.elapsed().as_secs_f64(), self.new, self.in_flight);
        let left = per * self.total.saturating_sub(self.n) as f64;
        let line =
            format!(
            "[{}{}] {} {}/{} acc {}/{} ({:.2}%) {per:.2} s/problem, {:.3e} FLOPs so far, ETA {}{}",
            self.label,
            self.of,
            bar(self.n, self.total),
            self.n,
            self.total,
            self.correct,
            self.n,
            100.0 * self.correct as f64 / self.n as f64,
            self.flops as f64,
            fmt_secs(left),
            if self.of.is_empty() { "" } else { " (this run)" }
        );
        // One line per finished problem, never redrawn in place: it reads the same in a
        // terminal and in a log (CI, a job array), and an error line never lands inside it.
        eprintln!("{line}");
    }
}

/// On a resume, one note per budget the folder holds for a method this run runs, at a budget
/// this run does not: a resume with another --votes or --width adds a budget beside the
/// recorded one (the report keeps them apart) instead of continuing it, which a user who
/// mistyped the flag should hear before the problems run again.
fn other_budgets(held: &[(&str, usize)], runs: &[(Method, usize)]) -> Vec<String> {
    let mut counts: std::collections::BTreeMap<(&str, usize), usize> = Default::default();
    for &(m, b) in held {
        *counts.entry((m, b)).or_default() += 1;
    }
    let mut lines = Vec::new();
    for (&(m, b), &n) in &counts {
        let running: Vec<usize> = runs
            .iter()
            .filter(|(rm, _)| rm.name() == m)
            .map(|&(_, rb)| rb)
            .collect();
        // Continuing a budget the folder holds adds nothing beside the others it holds.
        if running.is_empty() || running.iter().any(|&rb| counts.contains_key(&(m, rb))) {
            continue;
        }
        let now: Vec<String> = running
            .iter()
            .map(|&rb| super::report::budget_cell(m, rb))
            .collect();
        lines.push(format!(
            "note: the folder already holds {m} at {} ({n} problem{}); this run adds {m} at {} \
             beside it, and the report shows each budget on its own row",
            super::report::budget_cell(m, b),
            if n == 1 { "" } else { "s" },
            now.join(", ")
        ));
    }
    lines
}

/// Seconds per problem after `done` problems finished in `elapsed` seconds, `in_flight` at a
/// time: the throughput so far. Until as many have finished as run at once, the others in
/// flight are taken as about done too (they started together and share every pass), rather
/// than the first one's whole time being counted once per problem.
fn seconds_per_problem(elapsed: f64, done: usize, in_flight: usize) -> f64 {
    elapsed / done.max(in_flight).max(1) as f64
}

/// A 20-cell bar of `n` done out of `total`.
fn bar(n: usize, total: usize) -> String {
    const CELLS: usize = 20;
    let full = (n * CELLS).checked_div(total).unwrap_or(CELLS).min(CELLS);
    format!("[{}{}]", "#".repeat(full), ".".repeat(CELLS - full))
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

#[cfg(test)]
mod tests {
    use super::{bar, is_correct, other_budgets, seconds_per_problem};
    use crate::methods::engines::Method;

    #[test]
    fn a_resume_at_another_budget_is_noted() {
        let held = [
            ("baseline", 6),
            ("baseline", 6),
            ("rebase", 3),
            ("quiet-star", 2),
        ];
        let runs = [(Method::Baseline, 4), (Method::Rebase, 3)];
        let lines = other_budgets(&held, &runs);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("baseline at 6 votes (2 problems)")
                && lines[0].contains("adds baseline at 4 votes"),
            "{}",
            lines[0]
        );
        // Same budgets, or a method this run does not run: nothing to say.
        assert!(other_budgets(&held, &[(Method::Baseline, 6)]).is_empty());
        assert!(other_budgets(&held, &[(Method::Combined, 2)]).is_empty());
        // Continuing a budget the folder holds (baseline at 6, beside 2) adds none.
        let both = [("baseline", 6), ("baseline", 2)];
        assert!(other_budgets(&both, &[(Method::Baseline, 2)]).is_empty());
    }

    #[test]
    fn gold_answers_are_graded_as_each_reference_grades_them() {
        // The study: `\d+` on both sides, so a negative gold is its digits.
        assert!(is_correct(Some("7"), Some("-7"), false));
        assert!(is_correct(Some("1234"), Some("1234"), false));
        assert!(!is_correct(Some("8"), Some("-7"), false));
        assert!(!is_correct(None, Some("7"), false));
        // Wu et al.: signed numbers by value.
        assert!(is_correct(Some("-7"), Some("-7"), true));
        assert!(is_correct(Some("-7.0"), Some("-7"), true));
        assert!(!is_correct(Some("7"), Some("-7"), true));
        assert!(!is_correct(Some("7"), None, true));
    }

    #[test]
    fn seconds_per_problem_counts_the_problems_in_flight() {
        // One at a time: the time over the problems done.
        assert_eq!(seconds_per_problem(30.0, 1, 1), 30.0);
        assert_eq!(seconds_per_problem(30.0, 3, 1), 10.0);
        // Three in flight: the first finishes after about three problems' share of the
        // passes, and the other two are close behind it.
        assert_eq!(seconds_per_problem(30.0, 1, 3), 10.0);
        assert_eq!(seconds_per_problem(30.0, 3, 3), 10.0);
        assert_eq!(seconds_per_problem(60.0, 6, 3), 10.0);
    }

    #[test]
    fn the_progress_bar_fills_with_problems_done() {
        assert_eq!(bar(0, 8), format!("[{}]", ".".repeat(20)));
        assert_eq!(bar(2, 8), format!("[{}{}]", "#".repeat(5), ".".repeat(15)));
        assert_eq!(bar(8, 8), format!("[{}]", "#".repeat(20)));
        assert_eq!(bar(0, 0), format!("[{}]", "#".repeat(20)));
    }
}
