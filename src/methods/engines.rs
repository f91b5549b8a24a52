//! The models a method needs, built once and reused across problems: the policy with its KV
//! pool, the PRM with its own, and Quiet-STaR's extras.
use super::common::{Policy, Settings, Solution};
use super::prm::Prm;
use super::quiet_star::QuietStar;
use super::{baseline, rebase};
use crate::backend::{Backend, KvShape};
use crate::batcher::Batcher;
use crate::generate::Runner;
use crate::model::llama::Model;
use crate::model::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Baseline,
    QuietStar,
    Rebase,
    Combined,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::Baseline,
        Method::QuietStar,
        Method::Rebase,
        Method::Combined,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::QuietStar => "quiet-star",
            Method::Rebase => "rebase",
            Method::Combined => "combined",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .with_context(|| {
                format!("unknown method {s:?} (baseline, quiet-star, rebase, combined)")
            })
    }

    /// A comma-separated list, e.g. "baseline,rebase"; "all" means the four.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        if s.trim() == "all" {
            return Ok(Method::ALL.to_vec());
        }
        if s.split(',').any(|m| m.trim() == "all") {
            bail!("--method all stands alone (it means the four); got {s:?}");
        }
        let v: Vec<Method> = s.split(',').map(Method::parse).collect::<Result<_>>()?;
        if v.is_empty() {
            bail!("no method given");
        }
        // Twice the same method would solve every problem twice and count it twice.
        for (i, m) in v.iter().enumerate() {
            if v[..i].contains(m) {
                bail!("--method names {} twice", m.name());
            }
        }
        Ok(v)
    }

    pub fn uses_prm(self) -> bool {
        matches!(self, Method::Rebase | Method::Combined)
    }

    pub fn uses_thoughts(self) -> bool {
        matches!(self, Method::QuietStar | Method::Combined)
    }
}

pub struct Engines<'a, B: Backend> {
    pub policy: Policy<'a, B>,
    pub prm: Option<Prm<'a, B>>,
    /// Shared by the workers of a fleet (read only).
    pub quiet: Option<Arc<QuietStar<B>>>,
}

/// KV storage that the problems in flight share (each over its own range of pages).
type SharedKv<B> = Mutex<<B as Backend>::Kv>;

/// What several problems in flight share: one KV storage per model, each worker owning a
/// range of `pages` pages of it, and the batcher that runs their forward passes together.
pub struct Fleet<'a, B: Backend> {
    be: &'a B,
    batcher: Batcher<'a, B>,
    policy_kv: Mutex<B::Kv>,
    prm_kv: Option<Mutex<B::Kv>>,
    workers: usize,
    pages: usize,
    page_size: usize,
    /// `--max-batch`: each problem's own passes keep it as with one problem in flight (so
    /// its executed FLOPs and Quiet-STaR's choice of a merged pass do not change), and so
    /// do the batcher's combined ones.
    max_batch: usize,
}

impl<'a, B: Backend> Fleet<'a, B> {
    /// Storage for `workers` pools of `pages` pages of `page_size` tokens, per model. When
    /// the storage of that many does not fit the device (or the host), fewer problems are put
    /// in flight — half as many, then half again, down to one — each still with its own
    /// `pages`, so its answers and ledger do not change; `workers()` says how many.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        be: &'a B,
        policy: &Model<B>,
        prm: Option<&Model<B>>,
        workers: usize,
        pages: usize,
        page_size: usize,
        max_batch: usize,
    ) -> Result<Self> {
        let mut n = workers.max(1);
        loop {
            match Self::storage(be, policy, prm, n, pages, page_size) {
                Ok((policy_kv, prm_kv)) => {
                    return Ok(Fleet {
                        be,
                        batcher: Batcher::new(be, max_batch),
                        policy_kv,
                        prm_kv,
                        workers: n,
                        pages,
                        page_size,
                        max_batch,
                    })
                }
                Err(e) if n > 1 => {
                    let fewer = n / 2;
                    eprintln!(
                        "ponder: the KV cache of {n} problem(s) in flight does not fit ({:#}); \
                         trying {fewer}",
                        e.root_cause()
                    );
                    n = fewer;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The policy's (and the PRM's) KV storage for `workers` pools of `pages` pages.
    fn storage(
        be: &B,
        policy: &Model<B>,
        prm: Option<&Model<B>>,
        workers: usize,
        pages: usize,
        page_size: usize,
    ) -> Result<(SharedKv<B>, Option<SharedKv<B>>)> {
        let total = workers
            .checked_mul(pages)
            .context("--in-flight × --kv-pages is too large")?;
        let alloc = |m: &Model<B>| -> Result<SharedKv<B>> {
            let c = &m.cfg;
            let kv = be
                .alloc_kv(KvShape {
                    layers: c.num_hidden_layers,
                    pages: total,
                    page_size,
                    kv_heads: c.num_key_value_heads,
                    head_dim: c.head_dim,
                })
                .with_context(|| {
                    format!("cannot allocate the KV cache of {workers} problem(s) in flight")
                })?;
            Ok(Mutex::new(kv))
        };
        // The policy's storage is dropped before the PRM's is retried smaller.
        let policy_kv = alloc(policy)?;
        let prm_kv = prm.map(alloc).transpose()?;
        Ok((policy_kv, prm_kv))
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn batcher(&self) -> &Batcher<'a, B> {
        &self.batcher
    }

    /// Worker `w`'s engines: pools over its page ranges, forward passes through the batcher.
    pub fn engines(
        &'a self,
        w: usize,
        policy: (&'a Model<B>, &'a Tokenizer),
        prm: Option<(&'a Model<B>, &'a Tokenizer, String)>,
        quiet: Option<Arc<QuietStar<B>>>,
    ) -> Result<Engines<'a, B>> {
        anyhow::ensure!(w < self.workers, "worker {w} of {}", self.workers);
        let runner = |m: &'a Model<B>, kv: &'a Mutex<B::Kv>| {
            Runner::shared(
                self.be,
                m,
                kv,
                w * self.pages,
                self.pages,
                self.page_size,
                &self.batcher,
            )
            .map(|mut r| {
                r.max_batch = self.max_batch;
                r
            })
        };
        let prm = match prm {
            Some((m, tok, name)) => {
                let kv = self
                    .prm_kv
                    .as_ref()
                    .context("the fleet has no PRM storage")?;
                Some(Prm::new(runner(m, kv)?, tok, name)?)
            }
            None => None,
        };
        Ok(Engines {
            policy: Policy {
                runner: runner(policy.0, &self.policy_kv)?,
                tok: policy.1,
            },
            prm,
            quiet,
        })
    }
}

impl<B: Backend> Engines<'_, B> {
    /// Runs `method` on one question. `s.votes` / `s.width` carry the budget.
    pub fn solve(&mut self, method: Method, question: &str, s: &Settings) -> Result<Solution> {
        let quiet = if method.uses_thoughts() {
            Some(self.quiet.as_deref().context("Quiet-STaR was not set up")?)
        } else {
            None
        };
        if method.uses_prm() {
            let prm = self
                .prm
                .as_mut()
                .context("no process reward model was set up")?;
            rebase::solve(&mut self.policy, prm, quiet, question, s)
        } else {
            baseline::solve(&mut self.policy, quiet, question, s)
        }
    }
}
