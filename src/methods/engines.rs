//! The models a method needs, built once and reused across problems: the policy with its KV
//! pool, the PRM with its own, and Quiet-STaR's extras.
use super::common::{Policy, Settings, Solution};
use super::prm::Prm;
use super::quiet_star::QuietStar;
use super::{baseline, rebase};
use crate::backend::Backend;
use anyhow::{bail, Context, Result};

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
        let v: Vec<Method> = s.split(',').map(Method::parse).collect::<Result<_>>()?;
        if v.is_empty() {
            bail!("no method given");
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
    pub quiet: Option<QuietStar<B>>,
}

impl<B: Backend> Engines<'_, B> {
    /// Runs `method` on one question. `s.votes` / `s.width` carry the budget.
    pub fn solve(&mut self, method: Method, question: &str, s: &Settings) -> Result<Solution> {
        let quiet = if method.uses_thoughts() {
            Some(self.quiet.as_ref().context("Quiet-STaR was not set up")?)
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
