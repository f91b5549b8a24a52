//! `ponder eval`, `ponder sweep` and `ponder report`.
use super::common::{prm_spec, Opts};
use super::{with_backend, OnBackend};
use anyhow::{bail, Result};
use ponder::backend::Backend;
use ponder::eval::data::{load as load_data, parse_shard, select, Selection};
use ponder::eval::manifest::{self, data_fingerprint, Manifest};
use ponder::eval::planned::{self, Line};
use ponder::eval::report::{check_no_overlap, check_one_run, write_report};
use ponder::eval::results::read_records;
use ponder::eval::results::ResultsFile;
use ponder::eval::run::{run as run_eval, Plan};
use ponder::methods::engines::Method;
use ponder::model::config::Config;
use ponder::model::source::load;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Methods, comma-separated (baseline, quiet-star, rebase, combined) or "all".
    #[arg(long, default_value = "all")]
    method: String,
    /// GSM8K JSON lines; default: ponder's own handful of grade-school problems.
    #[arg(long)]
    data: Option<PathBuf>,
    /// seed42-128: the study's 128 problems of the 1319-row test split.
    #[arg(long)]
    subset: Option<String>,
    /// Run at most this many problems (after --subset and --offset); default: all (3 with
    /// --quick).
    #[arg(long)]
    limit: Option<usize>,
    /// Skip this many problems first (after --subset).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// i/n: this process runs every n-th selected problem starting at i.
    #[arg(long)]
    shard: Option<String>,
    /// Results folder: results.jsonl, report.md, summary.csv, summary.json, plots.
    #[arg(long)]
    out: PathBuf,
    /// Continue the results already in --out (skipping problems already done).
    #[arg(long)]
    resume: bool,
    /// Problems solved at once: their forward passes run as one batch, each with its own
    /// --kv-pages pages per model. Answers are the same for any value; each problem's FLOPs
    /// are its exact share of the shared passes, its seconds its share of their time.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    #[command(flatten)]
    opts: Opts,
}

#[derive(clap::Args)]
// --budgets sets the votes and widths (both flags are refused beside it).
#[command(mut_arg("votes", |a| a.hide(true)), mut_arg("width", |a| a.hide(true)))]
pub struct SweepArgs {
    /// Budgets: votes for baseline / Quiet-STaR, width for REBASE / combined.
    #[arg(long, default_value = "1,2,4,8,16")]
    budgets: String,
    #[command(flatten)]
    eval: EvalArgs,
}

pub fn eval(a: EvalArgs, cache: &Path) -> Result<()> {
    run(a, vec![], cache)
}

pub fn sweep(a: SweepArgs, cache: &Path) -> Result<()> {
    let budgets = super::parse_positive_list(&a.budgets, "budget")?;
    // The budgets are the sweep's votes and widths: a --votes or --width beside them would
    // be ignored without a word.
    if a.eval.opts.votes.is_some() || a.eval.opts.width.is_some() {
        bail!("--budgets sets a sweep's votes and widths: leave out --votes and --width");
    }
    run(a.eval, budgets, cache)
}

fn run(a: EvalArgs, budgets: Vec<usize>, cache: &Path) -> Result<()> {
    let methods = Method::parse_list(&a.method)?;
    let settings = a.opts.settings()?;
    for b in &budgets {
        super::common::check_budget("a budget of", *b)?;
    }
    if a.in_flight == 0 {
        bail!("--in-flight must be at least 1");
    }
    let data = load_data(a.data.as_deref())?;
    if !data.malformed.is_empty() {
        let lines: Vec<String> = data
            .malformed
            .iter()
            .take(10)
            .map(|(l, why)| format!("{l} ({why})"))
            .collect();
        eprintln!(
            "ponder: skipping {} malformed line(s) of the data: {}{}",
            data.malformed.len(),
            lines.join(", "),
            if data.malformed.len() > 10 {
                ", …"
            } else {
                ""
            }
        );
    }
    let sel = Selection {
        subset: a.subset.clone(),
        offset: a.offset,
        limit: a.limit.or(if a.opts.quick { Some(3) } else { None }),
        shard: a.shard.as_deref().map(parse_shard).transpose()?,
    };
    let problems = match select(&data, &sel) {
        Err(e) if e.is::<ponder::eval::data::EmptyShard>() => {
            // Nothing is written, so nothing is checked against this run: a folder holding
            // anything of a run (another shard's, an old one's) is refused instead of being
            // called empty and merged later.
            let held = [
                ponder::eval::manifest::MANIFEST,
                ponder::eval::results::RESULTS,
            ]
            .iter()
            .map(|f| a.out.join(f))
            .find(|p| p.exists());
            if let Some(p) = held {
                bail!(
                    "{e}, but {} exists: give this shard an empty --out",
                    p.display()
                );
            }
            ponder::input::create_dir(&a.out)?;
            eprintln!(
                "ponder: {e}: {} stays empty, and `ponder report` merges it as adding nothing",
                a.out.display()
            );
            return Ok(());
        }
        other => other?,
    };
    let data_id = data_fingerprint(&data);
    let device = a.opts.device;
    with_backend(
        device,
        Eval {
            a,
            budgets,
            problems,
            methods,
            settings,
            data_id,
            data_rows: data.rows.len(),
            cache: cache.to_path_buf(),
        },
    )
}

struct Eval {
    a: EvalArgs,
    budgets: Vec<usize>,
    problems: Vec<ponder::eval::data::Problem>,
    /// Rows in the data file: every record's index must be one of them.
    data_rows: usize,
    methods: Vec<Method>,
    settings: ponder::methods::common::Settings,
    data_id: String,
    cache: PathBuf,
}

/// Everything the records of this run depend on (see eval/manifest.rs).
fn manifest<B: Backend>(e: &Eval, be: &B, model: &str, cfg: &Config) -> Manifest {
    let (o, s) = (&e.a.opts, &e.settings);
    let mut m = Manifest::default();
    m.set("model", model)
        .set("prm", o.prm.as_deref().unwrap_or("(the policy itself)"))
        .set("backend", be.name())
        .set("device", be.device_label())
        .set("data", &e.data_id)
        .set("subset", e.a.subset.as_deref().unwrap_or("(none)"))
        // A folder holds one shard (a resume keeps it); shards merge with each other.
        .set(
            "shard",
            e.a.shard
                .as_deref()
                .and_then(|s| parse_shard(s).ok())
                .map_or("(none)".to_string(), |(i, n)| format!("{i}/{n}")),
        )
        .set("seed", s.seed)
        .set("protocol", format!("{:?}", s.protocol).to_lowercase())
        .set("rebase-temperature", s.rebase_temperature)
        .set("rebase-select", format!("{:?}", s.select()).to_lowercase())
        .set(
            "rebase-aggregate",
            format!("{:?}", s.aggregate).to_lowercase(),
        )
        .set("temperature", s.temperature)
        .set("top-k", s.top_k)
        .set("fixed-lengths", s.fixed_lengths)
        .set("max-tokens", s.max_tokens)
        .set("answer-tokens", s.answer_tokens)
        .set("step-tokens", s.step_tokens)
        .set("path-tokens", s.path_tokens)
        .set("max-depth", s.max_depth)
        .set("quiet-mode", format!("{:?}", s.quiet_mode).to_lowercase())
        .set("n-ahead", o.n_ahead(cfg))
        .set("keep-thought-embeddings", o.keep_thought_embeddings)
        // A pool too small for a problem's tree makes the scheduler free and later recompute
        // sequences: the answers stay the same, the prefill FLOPs do not.
        .set("kv-pages", o.kv_pages);
    m
}

impl OnBackend for Eval {
    fn run<B: Backend + 'static>(self, be: B) -> Result<()> {
        let m = load(&be, self.a.opts.model.as_deref(), &self.cache)?;
        let trees = self.methods.iter().any(|m| m.uses_prm());
        let votes = self.methods.iter().any(|m| !m.uses_prm());
        self.a
            .opts
            .check_lengths(&self.settings, &m.model.cfg, votes, trees)?;
        let _lock = manifest::lock_dir(&self.a.out)?;
        let recorded = manifest::check_or_write(
            &self.a.out,
            &manifest(&self, &be, &m.name, &m.model.cfg),
            self.a.resume,
        )?;
        let Eval {
            a,
            budgets,
            problems,
            methods,
            settings,
            data_id: _,
            data_rows,
            cache,
        } = self;
        let cache = cache.as_path();
        let needs_prm = methods.iter().any(|m| m.uses_prm());
        let needs_quiet = methods.iter().any(|m| m.uses_thoughts());
        let prm = a.opts.load_prm(&be, cache, needs_prm)?;
        let plan = Plan {
            methods,
            budgets,
            settings,
            model: m.name.clone(),
            device: be.device_label(),
            subset: a.subset.clone(),
        };
        // Refusals of the folder (results there without --resume, a results file that is a
        // directory, a corrupt line) come before the banner, as the one line they are.
        let opened = ResultsFile::open(&a.out, a.resume)?;
        if let Some(r) = opened.1.iter().find(|r| r.index >= data_rows) {
            bail!(
                "{} holds a result for row {} of {}, but the data has {data_rows} rows",
                a.out.join(ponder::eval::results::RESULTS).display(),
                r.index,
                r.method
            );
        }
        // Every record there must be this run's (run.json agreeing is not enough: a line
        // pasted from another run's file would be skipped as done and mix into the report).
        let this_run = [
            ("model", plan.model.clone()),
            ("seed", plan.settings.seed.to_string()),
            (
                "subset",
                a.subset.clone().unwrap_or_else(|| "(none)".into()),
            ),
        ];
        for r in &opened.1 {
            if let Some(((key, theirs), (_, ours))) = r
                .run_fields()
                .into_iter()
                .zip(this_run.iter())
                .find(|((_, x), (_, y))| x != y)
            {
                bail!(
                    "{} holds a result of another run ({} row {}: {key} {theirs}, this run's is \
                     {ours})",
                    a.out.join(ponder::eval::results::RESULTS).display(),
                    r.method,
                    r.index
                );
            }
        }
        let runs = plan.runs();
        let done: std::collections::HashSet<_> = opened.1.iter().map(|r| r.key()).collect();
        let left = runs
            .iter()
            .flat_map(|(method, budget)| {
                problems
                    .iter()
                    .map(move |p| (method.name().to_string(), *budget, p.index))
            })
            .filter(|k| !done.contains(k))
            .count();
        let total = problems.len() * runs.len();
        let unused = a.opts.unused_flags(&plan.methods);
        eprintln!(
            "ponder: {} problem(s) × {} run(s) on {} ({}) → {}{}",
            problems.len(),
            runs.len(),
            m.name,
            be.name(),
            a.out.display(),
            if left < total {
                format!(
                    " ({} of {total} already there, {left} to run)",
                    total - left
                )
            } else {
                String::new()
            }
        );
        if let Some(note) = unused {
            eprintln!("{note}");
        }
        // What this run sets out to do, so that a report of the folder can tell a stopped
        // run from a finished one.
        let line = Line::Plan {
            runs: runs
                .iter()
                .map(|(m, b)| (m.name().to_string(), *b))
                .collect(),
            rows: problems.iter().map(|p| p.index).collect(),
        };
        planned::append(&a.out, &line, opened.1.is_empty())?;
        let in_flight = a.in_flight.min(problems.len()).max(1);
        let records = if in_flight == 1 {
            let e = a
                .opts
                .engines(&be, &m, prm.as_ref(), cache, needs_prm, needs_quiet)?;
            run_eval(&mut [e], None, &plan, &problems, opened)?
        } else {
            let fleet = a.opts.fleet(&be, &m, prm.as_ref(), needs_prm, in_flight)?;
            if fleet.workers() < in_flight {
                eprintln!(
                    "ponder: {} problem(s) in flight instead of {in_flight} (KV memory)",
                    fleet.workers()
                );
            }
            let quiet = a.opts.quiet_star(&be, &m, cache, needs_quiet)?;
            let mut workers = (0..fleet.workers())
                .map(|w| {
                    let prm = needs_prm.then(|| prm_spec(&m, prm.as_ref()));
                    fleet.engines(w, (&m.model, &m.tok), prm, quiet.clone())
                })
                .collect::<Result<Vec<_>>>()?;
            let records = run_eval(
                &mut workers,
                Some(fleet.batcher()),
                &plan,
                &problems,
                opened,
            )?;
            let s = fleet.batcher().sharing();
            // Nothing to say where nothing ran (a resume of a finished folder).
            if s.passes > 0 {
                eprintln!(
                    "ponder: {} of {} forward passes ran several problems together (up to {} in one)",
                    s.shared, s.passes, s.most
                );
            }
            records
        };
        // A finished run has no gaps of its own, but an earlier plan of the folder may (a
        // resume that left out a method or budget the folder had begun).
        let gaps = planned::gaps(
            &[(a.out.as_path(), records.as_slice())],
            manifest::data_rows(&recorded),
        )?;
        for n in &gaps.notes {
            eprintln!("ponder: {n}");
        }
        let sources = ponder::eval::report::Sources {
            notes: gaps.notes,
            incomplete: gaps.incomplete,
            ..Default::default()
        };
        let md = write_report(&a.out, &records, Some(&recorded), &sources)?;
        outln!("{md}");
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// One or more results folders (e.g. the shards of one run); they must not overlap.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where to write the merged report; default: the first folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let mut sets = Vec::new();
    for d in &a.dirs {
        if !d.is_dir() {
            bail!("{} is not a results folder", d.display());
        }
        let read = read_records(d)?;
        if read.torn > 0 {
            eprintln!(
                "ponder: ignoring a torn last line of {} ({} bytes: a run was stopped while \
                 writing it; the command that wrote the folder, run again with --resume and \
                 the same --method (and a sweep's --budgets), drops it and reruns that problem)",
                d.join(ponder::eval::results::RESULTS).display(),
                read.torn
            );
        }
        sets.push((d.clone(), read.records));
    }
    let (settings, mut notes) =
        manifest::check_same_run(&a.dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
    check_no_overlap(&sets)?;
    check_one_run(&sets)?;
    for d in &a.dirs {
        if manifest::is_being_written(d) {
            notes.push(format!(
                "{} is being written by a running eval: this report holds the results it had \
                 written so far",
                d.display()
            ));
        }
    }
    let gaps = planned::gaps(&sets, settings.as_ref().and_then(manifest::data_rows))?;
    notes.extend(gaps.notes);
    let all: Vec<_> = sets.into_iter().flat_map(|(_, r)| r).collect();
    if let Some(m) = &settings {
        manifest::check_indices(m, &all)?;
    }
    if all.is_empty() {
        bail!(
            "no results in {}",
            a.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let default_out = a.out.is_none();
    let out = a.out.unwrap_or_else(|| a.dirs[0].clone());
    // The merged report may go into one of its own folders or a new one, never over the
    // report of a run it did not read.
    let same = |d: &PathBuf| d.canonicalize().ok() == out.canonicalize().ok();
    if out.join(ponder::eval::results::RESULTS).exists() && !a.dirs.iter().any(same) {
        bail!(
            "--out {} holds results that are not among the folders read; write the merged \
             report into one of those folders or into a new one",
            out.display()
        );
    }
    ponder::input::create_dir(&out)?;
    // Said once nothing refuses the merge (a refusal is the one line), and in report.md.
    for n in &notes {
        eprintln!("ponder: {n}");
    }
    let sources = ponder::eval::report::Sources {
        folders: match a.dirs.len() {
            1 => vec![],
            _ => a.dirs.iter().map(|d| d.display().to_string()).collect(),
        },
        notes,
        incomplete: gaps.incomplete,
    };
    let md = write_report(&out, &all, settings.as_ref(), &sources).map_err(|e| {
        // A folder one may read but not write (another user's, a read-only mount).
        if default_out {
            e.context("--out DIR writes the report elsewhere")
        } else {
            e
        }
    })?;
    outln!("{md}");
    Ok(())
}
