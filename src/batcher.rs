//! Cross-problem batching. Several problems are solved at once, one worker thread each, every
//! one with its own KV pool over its own range of pages of one shared KV storage. A worker's
//! forward pass is not run at once: it waits here until every active worker is waiting too,
//! and then all waiting passes on the same model run as one batch (the last worker to arrive
//! runs it). So one step decodes the live branches of all problems in flight together, while
//! each problem's own code — its scheduler, its pool, its preemption — stays as if it ran
//! alone, and gives the same tokens (every op computes each row independently of the batch).
//! Workers take turns: one at a time runs its own host code and ops (sampling, tokenizing,
//! Quiet-STaR's mixing), handing the turn over while it waits for a pass — so the device and
//! its library handles are never driven from two threads at once, and on the CPU the ops keep
//! every core to themselves.
//!
//! Accounting: the shared pass is charged to a scratch ledger and then split among the
//! problems, op by op, in proportion to what each op does per problem (src/split.rs: useful
//! FLOPs are linear in what it counts, so each problem gets exactly what its pass alone would
//! count; the executed FLOPs and bytes of the GPU's tiles are apportioned the same way). Its
//! wall time is split in proportion to useful FLOPs.
use crate::account::{self, SharedAccount};
use crate::backend::Backend;
use crate::backend::Batch;
use crate::flops::{Ledger, Phase};
use crate::model::llama::{Model, Output};
use crate::split;
use anyhow::Result;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// A forward pass's input rows: token ids, or embedding rows (Quiet-STaR's thought markers).
pub enum Input {
    Ids(Vec<u32>),
    Rows(Vec<f32>),
}

struct Request<'a, B: Backend> {
    id: u64,
    model: &'a Model<B>,
    kv: &'a Mutex<B::Kv>,
    batch: Batch,
    input: Input,
    account: Option<SharedAccount>,
    phase: Phase,
}

struct State<'a, B: Backend> {
    /// Workers that will submit a pass or leave; a batch runs when all of them wait.
    active: usize,
    /// A worker holds the turn (see the module's comment).
    busy: bool,
    running: bool,
    next_id: u64,
    pending: Vec<Request<'a, B>>,
    done: HashMap<u64, Result<Output<B>, String>>,
}

pub struct Batcher<'a, B: Backend> {
    be: &'a B,
    /// At most this many sequences per combined pass.
    max_batch: usize,
    state: Mutex<State<'a, B>>,
    cv: Condvar,
    /// Passes run, those that carried several problems' requests, and the most in one.
    passes: AtomicU64,
    shared: AtomicU64,
    most: AtomicUsize,
}

/// How much the batcher merged: what an eval with problems in flight reports at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sharing {
    pub passes: u64,
    /// Passes that ran two or more problems' requests together.
    pub shared: u64,
    /// The most problems' requests in one pass.
    pub most: usize,
}

/// A worker's place in the batcher, holding the turn outside forward passes. Dropping it
/// (however the worker ends: done, an error, a panic) gives up the turn and leaves, so that
/// the others never wait for it.
pub struct Membership<'b, 'a, B: Backend>(&'b Batcher<'a, B>);

impl<B: Backend> Drop for Membership<'_, '_, B> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl<'a, B: Backend> Batcher<'a, B> {
    pub fn new(be: &'a B, max_batch: usize) -> Self {
        Batcher {
            be,
            max_batch: max_batch.max(1),
            state: Mutex::new(State {
                active: 0,
                busy: false,
                running: false,
                next_id: 0,
                pending: Vec::new(),
                done: HashMap::new(),
            }),
            cv: Condvar::new(),
            passes: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            most: AtomicUsize::new(0),
        }
    }

    pub fn sharing(&self) -> Sharing {
        Sharing {
            passes: self.passes.load(Ordering::Relaxed),
            shared: self.shared.load(Ordering::Relaxed),
            most: self.most.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<'a, B>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces `n` workers before they start, so that no pass runs before all have entered.
    pub fn expect(&self, n: usize) {
        self.lock().active += n;
    }

    /// Called by an expected worker on its own thread: waits for the turn and holds it.
    pub fn enter(&self) -> Membership<'_, 'a, B> {
        let mut st = self.lock();
        while st.busy {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.busy = true;
        Membership(self)
    }

    fn leave(&self) {
        let mut st = self.lock();
        st.busy = false;
        self.fewer(st, 1);
    }

    /// `n` expected workers will not come (their threads could not start).
    pub fn unexpect(&self, n: usize) {
        self.fewer(self.lock(), n);
    }

    /// `n` fewer active workers: the passes pending may be all there are now.
    fn fewer<'g>(&'g self, mut st: MutexGuard<'g, State<'a, B>>, n: usize) {
        st.active = st.active.saturating_sub(n);
        if !st.running && !st.pending.is_empty() && st.pending.len() >= st.active {
            st = self.run_pending(st);
        }
        drop(st);
        self.cv.notify_all();
    }

    /// Runs `batch` (reserved in a pool over `kv`) together with the other workers' passes.
    pub fn forward(
        &self,
        model: &'a Model<B>,
        kv: &'a Mutex<B::Kv>,
        batch: Batch,
        input: Input,
    ) -> Result<Output<B>> {
        let t0 = Instant::now();
        let phase = account::with_ledger(self.be.ledger(), |l| l.phase());
        let acct = account::current();
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.pending.push(Request {
            id,
            model,
            kv,
            batch,
            input,
            account: acct.clone(),
            phase,
        });
        st.busy = false;
        self.cv.notify_all();
        let out = loop {
            if let Some(r) = st.done.remove(&id) {
                break r;
            }
            if !st.running && st.pending.len() >= st.active {
                st = self.run_pending(st);
                continue;
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        while st.busy {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.busy = true;
        drop(st);
        if let Some(a) = acct {
            account::lock(&a).waited += t0.elapsed().as_secs_f64();
        }
        out.map_err(anyhow::Error::msg)
    }

    /// Takes every pending pass, runs them (without the lock: all workers wait meanwhile),
    /// posts the results and wakes the workers.
    fn run_pending<'g>(
        &'g self,
        mut st: MutexGuard<'g, State<'a, B>>,
    ) -> MutexGuard<'g, State<'a, B>> {
        st.running = true;
        let reqs = std::mem::take(&mut st.pending);
        drop(st);
        // A panic inside the pass must not leave `running` set and the taken requests
        // unanswered: every other worker would wait for them forever (a hung eval instead
        // of a failed one). Each request gets the panic as its error instead.
        // (Each group catches its own pass's panic; this is for the grouping around them.)
        let ids: Vec<u64> = reqs.iter().map(|r| r.id).collect();
        let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.execute(reqs)))
            .unwrap_or_else(|p| {
                let e = format!("a forward pass failed: {}", panic_text(&*p));
                ids.into_iter().map(|id| (id, Err(e.clone()))).collect()
            });
        let mut st = self.lock();
        st.running = false;
        st.done.extend(results);
        self.cv.notify_all();
        st
    }

    /// Groups the passes by model, storage and input kind, in chunks of at most max_batch
    /// sequences, and runs each group as one pass.
    fn execute(&self, reqs: Vec<Request<'a, B>>) -> Vec<(u64, Result<Output<B>, String>)> {
        let mut groups: Vec<Vec<Request<'a, B>>> = Vec::new();
        for r in reqs {
            let fits = |g: &Vec<Request<'a, B>>| {
                let h = &g[0];
                std::ptr::eq(h.model, r.model)
                    && std::ptr::eq(h.kv, r.kv)
                    && matches!(
                        (&h.input, &r.input),
                        (Input::Ids(_), Input::Ids(_)) | (Input::Rows(_), Input::Rows(_))
                    )
                    && g.iter().map(|x| x.batch.seqs.len()).sum::<usize>() + r.batch.seqs.len()
                        <= self.max_batch
            };
            match groups.iter_mut().find(|g| fits(g)) {
                Some(g) => g.push(r),
                None => groups.push(vec![r]),
            }
        }
        let mut out = Vec::new();
        for g in groups {
            out.extend(self.run_group_or_each(&g));
        }
        out
    }

    /// A group's pass. If it fails with several problems' requests in it, each request runs
    /// again alone, so that one problem's failure (an input its model refuses, memory for
    /// the combined activations) is its own, as with one problem in flight; the rerun
    /// rewrites the same KV slots with the same values (every op is batch-invariant). The
    /// failed attempt is charged to no problem, so each keeps the ledger it has alone. A
    /// panic is a bug, not an input: it is every request's error, with no rerun.
    fn run_group_or_each(&self, g: &[Request<'a, B>]) -> Vec<(u64, Result<Output<B>, String>)> {
        match self.run_group(g) {
            Ok(outs) => g
                .iter()
                .map(|r| r.id)
                .zip(outs.into_iter().map(Ok))
                .collect(),
            Err((_, false)) if g.len() > 1 => g
                .iter()
                .flat_map(|r| self.run_group_or_each(std::slice::from_ref(r)))
                .collect(),
            Err((e, _)) => g.iter().map(|r| (r.id, Err(e.clone()))).collect(),
        }
    }

    /// One pass of the group, charged to its requests when it succeeds; an error is
    /// (message, whether it was a panic).
    fn run_group(&self, g: &[Request<'a, B>]) -> Result<Vec<Output<B>>, (String, bool)> {
        // The running thread's own phase, restored after the pass: the pass runs under the
        // phase of its first request (the backend's profiler ranges follow it; the ledger
        // split below charges each request under its own phase).
        let own = account::with_ledger(self.be.ledger(), |l| l.phase());
        let t = Instant::now();
        // A panic inside the pass must not leave the other groups of this run unanswered
        // (every worker would wait for them forever): it becomes this group's error.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            account::capture(|| {
                self.be.set_phase(g[0].phase);
                // A GPU's launches return when queued: the pass's time is only known once
                // they have run. Without the wait, the worker whose turn comes first would
                // wait for them in its sampling and be charged every problem's GPU time.
                self.combined_pass(g)
                    .and_then(|outs| self.be.synchronize().map(|()| outs))
            })
        }));
        let secs = t.elapsed().as_secs_f64();
        self.be.set_phase(own);
        match caught {
            Ok((Ok(outs), ledger)) => {
                self.split(g, &ledger, secs);
                // Counted when a pass succeeds: a failed shared attempt is not, its reruns are.
                self.passes.fetch_add(1, Ordering::Relaxed);
                if g.len() > 1 {
                    self.shared.fetch_add(1, Ordering::Relaxed);
                }
                self.most.fetch_max(g.len(), Ordering::Relaxed);
                Ok(outs)
            }
            Ok((Err(e), _)) => Err((format!("{e:#}"), false)),
            Err(p) => Err((format!("a forward pass failed: {}", panic_text(&*p)), true)),
        }
    }

    /// One forward pass over every request's sequences; each request gets its own rows back.
    fn combined_pass(&self, g: &[Request<'a, B>]) -> Result<Vec<Output<B>>> {
        let model = g[0].model;
        let mut seqs = Vec::new();
        let (mut ids, mut rows) = (Vec::new(), Vec::new());
        for r in g {
            let start = seqs
                .iter()
                .map(|s: &crate::backend::SeqSlice| s.n_tokens)
                .sum::<usize>();
            seqs.extend(r.batch.seqs.iter().map(|s| {
                let mut s = s.clone();
                s.token_start += start;
                s
            }));
            match &r.input {
                Input::Ids(v) => ids.extend_from_slice(v),
                Input::Rows(v) => rows.extend_from_slice(v),
            }
        }
        let batch = Batch {
            seqs,
            page_size: g[0].batch.page_size,
            sliding_window: g[0].batch.sliding_window,
        };
        let mut kv = g[0].kv.lock().unwrap_or_else(|e| e.into_inner());
        let out = match &g[0].input {
            Input::Ids(_) => model.forward(self.be, &mut kv, &batch, &ids)?,
            Input::Rows(_) => {
                let x = self
                    .be
                    .tensor(batch.n_tokens(), model.cfg.hidden_size, &rows)?;
                model.forward_embedded(self.be, &mut kv, &batch, x)?
            }
        };
        drop(kv);
        if g.len() == 1 {
            return Ok(vec![out]);
        }
        let mut outs = Vec::with_capacity(g.len());
        let (mut first, mut first_logit) = (0, 0);
        for r in g {
            let (n, nl) = (r.batch.n_output_rows(), r.batch.n_logit_rows());
            let sel: Vec<usize> = (first..first + n).collect();
            let logits = match &out.logits {
                Some(l) if nl > 0 => {
                    let sel: Vec<usize> = (first_logit..first_logit + nl).collect();
                    Some(self.be.gather_rows(l, &sel)?)
                }
                _ => None,
            };
            outs.push(Output {
                hidden: self.be.gather_rows(&out.hidden, &sel)?,
                logits,
            });
            first += n;
            first_logit += nl;
        }
        Ok(outs)
    }

    /// Charges each request its share of the pass (see the module's comment), under the phase
    /// it was submitted in (or a slice's own, `SeqSlice::phase`).
    fn split(&self, g: &[Request<'a, B>], ledger: &Ledger, secs: f64) {
        let cfg = &g[0].model.cfg;
        let (mut owner, mut parts) = (Vec::new(), Vec::new());
        for (i, r) in g.iter().enumerate() {
            for part in split::phase_parts(&r.batch, r.phase) {
                owner.push(i);
                parts.push(part);
            }
        }
        let mut shares: Vec<Ledger> = g.iter().map(|_| Ledger::new()).collect();
        let mut useful = vec![0u128; g.len()];
        for (k, share) in split::shares(cfg, ledger, &parts).into_iter().enumerate() {
            useful[owner[k]] += share.total().useful_flops as u128;
            shares[owner[k]].merge(&share);
        }
        let total_useful: u128 = useful.iter().sum();
        for (i, r) in g.iter().enumerate() {
            let frac = if total_useful == 0 {
                1.0 / g.len() as f64
            } else {
                useful[i] as f64 / total_useful as f64
            };
            match &r.account {
                Some(a) => {
                    let mut a = account::lock(a);
                    a.ledger.merge(&shares[i]);
                    a.charged += secs * frac;
                }
                None => self
                    .be
                    .ledger()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .merge(&shares[i]),
            }
        }
    }
}

/// A panic's message, where it has one.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
