//! The process reward model, Math-Shepherd style (rebase.md): a causal LM reads
//! `question + " " + "Step 1: … ки\nStep 2: … ки"`; the score of the last step is the softmax
//! over the '+' and '-' logits at the final tag, '+' entry. Any causal LM can serve: the ids
//! come from its tokenizer. It has its own KV pool; a child's path forks its parent's cached
//! path, so only the new step is prefilled.
use crate::backend::Backend;
use crate::flops::Phase;
use crate::generate::Runner;
use crate::model::tokenizer::Tokenizer;
use crate::scheduler::{
    fork_seqs, forward_cache, forward_items, is_oom, kept_prefix, park, release, set_tokens, Branch,
};
use anyhow::{ensure, Context, Result};

pub const STEP_TAG: &str = " ки";

/// The ids of '+' and '-' in the PRM's tokenizer, each encoded alone as Math-Shepherd's code
/// does (`encode("+ -")[1:]`): in a SentencePiece vocabulary that is "▁+" and "▁-" (648 and
/// 387 for Mistral's, tests/mistral_tokenizer.rs).
pub fn reward_ids(tok: &Tokenizer) -> Result<(u32, u32)> {
    let plus = tok
        .single_token("+")
        .context("the PRM's tokenizer needs a '+' token")?;
    let minus = tok
        .single_token("-")
        .context("the PRM's tokenizer needs a '-' token")?;
    Ok((plus, minus))
}

pub struct Prm<'a, B: Backend> {
    pub runner: Runner<'a, B>,
    pub tok: &'a Tokenizer,
    pub plus: u32,
    pub minus: u32,
    pub name: String,
    /// Tokens the PRM has scored: the question once, then each child path's tokens past what
    /// its parent's cache holds when nothing was evicted. Recomputation after an eviction
    /// (a short `--kv-pages`) is counted in the PRM's FLOPs, not here, as for the policy's
    /// tokens: the count depends on the tree alone.
    pub tokens: u64,
    /// The length of the current question path (`root`), whose last token stays uncached.
    root_len: usize,
}

impl<'a, B: Backend> Prm<'a, B> {
    pub fn new(runner: Runner<'a, B>, tok: &'a Tokenizer, name: String) -> Result<Self> {
        let (plus, minus) = reward_ids(tok)?;
        // The scores read these logits: an id past the model's vocabulary (a tokenizer of
        // another model) has none.
        let vocab = runner.model.cfg.vocab_size;
        for (c, id) in [('+', plus), ('-', minus)] {
            ensure!(
                (id as usize) < vocab,
                "the PRM's tokenizer gives '{c}' the id {id}, outside its model's {vocab}-token \
                 vocabulary (a tokenizer of another model?)"
            );
        }
        Ok(Prm {
            runner,
            tok,
            plus,
            minus,
            name,
            tokens: 0,
            root_len: 0,
        })
    }

    /// BOS as the policy finds it (`Policy::encode_with_bos`): the config's, else the
    /// tokenizer's; Math-Shepherd's `tokenizer.encode` always adds one.
    fn bos(&self) -> Option<u32> {
        self.runner.model.cfg.bos_token_id.or(self.tok.bos)
    }

    /// A PRM path holding just the question (nothing scored yet).
    pub fn root(&mut self, question: &str) -> Result<Branch> {
        let mut ids = Vec::new();
        ids.extend(self.bos());
        ids.extend(self.tok.encode(&format!("{question} "))?);
        // Before any page is taken: a question the PRM cannot even read is skipped by an
        // evaluation (DoesNotFit), as one the policy cannot.
        self.check_fits(ids.len())
            .map_err(|e| super::common::DoesNotFit(e.to_string()))?;
        let b = Branch::new(self.runner.pool.create(), ids, 0);
        self.root_len = b.all.len();
        // Cache the question once: every first-level child forks it instead of re-reading it.
        if b.all.len() > 1 {
            self.runner.be.set_phase(Phase::Prm);
            self.tokens += (b.all.len() - 1) as u64;
            let fed = forward_cache(
                &mut self.runner,
                &[(b.seq, b.all[..b.all.len() - 1].to_vec())],
            );
            if let Err(e) = fed {
                release(&mut self.runner, b.seq)?;
                return Err(e);
            }
        }
        park(&mut self.runner, b.seq);
        Ok(b)
    }

    /// The PRM text of a path of steps, each as generated: "Step k: " before it and the
    /// tag after it, unless the step already has them (a `--protocol wu` policy writes its
    /// own "Step k: … ки", which the PRM must read once). The tag counts as there only as
    /// its own word (" ки" at the end): a step ending in a Cyrillic word such as "руки", or
    /// in "7.ки", still gets one, so the score is always read at the tag token. Steps are
    /// trimmed and joined by "\n" (rebase.md's format; Wu et al.'s PRM reads the policy's
    /// raw text, which differs only in whitespace).
    pub fn path_text(question: &str, steps: &[String]) -> String {
        let mut t = format!("{question} ");
        for (i, s) in steps.iter().enumerate() {
            if i > 0 {
                t.push('\n');
            }
            let s = s.trim();
            let head = format!("Step {}:", i + 1);
            if !s.starts_with(&head) {
                t.push_str(&head);
                t.push(' ');
            }
            t.push_str(s);
            if !s.ends_with(STEP_TAG) {
                t.push_str(STEP_TAG);
            }
        }
        t
    }

    /// Scores each (parent path, full path text): forks the parent, feeds what is new, and
    /// returns the child paths with the last step's score. Scored paths are parked (their KV
    /// is a cache for their own children). When the pool is short, the items are scored in
    /// smaller groups; the scores do not change, only what is recomputed.
    pub fn score(&mut self, items: &[(&Branch, String)]) -> Result<Vec<(Branch, f64)>> {
        let mut out = Vec::with_capacity(items.len());
        let mut group = items.len().max(1);
        while out.len() < items.len() {
            let part = &items[out.len()..(out.len() + group).min(items.len())];
            match self.score_group(part) {
                Ok(scored) => {
                    for (b, _) in &scored {
                        park(&mut self.runner, b.seq);
                    }
                    out.extend(scored);
                }
                Err(e) if group > 1 && is_oom(&e) => group = group.div_ceil(2),
                Err(e) => {
                    for (b, _) in &out {
                        release(&mut self.runner, b.seq)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// `score` for one group, all or nothing: on an error its child paths are freed.
    fn score_group(&mut self, items: &[(&Branch, String)]) -> Result<Vec<(Branch, f64)>> {
        let mut kids: Vec<Branch> = Vec::with_capacity(items.len());
        let res = self.feed_group(items, &mut kids);
        match res {
            Ok(scores) => Ok(kids.into_iter().zip(scores).collect()),
            Err(e) => {
                for b in &kids {
                    release(&mut self.runner, b.seq)?;
                }
                Err(e)
            }
        }
    }

    /// The tokens of `ids` a child of `parent` feeds when nothing was evicted: the parent's
    /// cache then holds all of a scored path and all but the last token of the question, and
    /// the child keeps what `set_tokens` keeps of it.
    fn new_tokens(&self, parent: &Branch, ids: &[u32]) -> usize {
        let n = parent.all.len();
        let cached = if n == self.root_len { n - 1 } else { n };
        ids.len() - kept_prefix(&parent.all, cached, ids)
    }

    fn feed_group(
        &mut self,
        items: &[(&Branch, String)],
        kids: &mut Vec<Branch>,
    ) -> Result<Vec<f64>> {
        let mut scored = 0u64;
        for (parent, text) in items {
            let mut ids = Vec::new();
            ids.extend(self.bos());
            ids.extend(self.tok.encode(text)?);
            self.check_fits(ids.len())?;
            scored += self.new_tokens(parent, &ids) as u64;
            let mut b = (*parent).clone();
            b.seq = fork_seqs(&mut self.runner, parent.seq, 1)?[0];
            kids.push(b);
            let kid = kids.last_mut().expect("just pushed");
            set_tokens(&mut self.runner, kid, ids)?;
        }
        let mut feed = Vec::with_capacity(kids.len());
        for b in kids.iter() {
            let cached = self.runner.pool.len(b.seq)?;
            feed.push((b.seq, b.all[cached..].to_vec()));
        }
        self.runner.be.set_phase(Phase::Prm);
        let logits = forward_items(&mut self.runner, &feed)?;
        self.tokens += scored;
        let v = logits.len() / kids.len().max(1);
        Ok((0..kids.len())
            .map(|i| {
                let row = &logits[i * v..(i + 1) * v];
                let (lp, lm) = (
                    row[self.plus as usize] as f64,
                    row[self.minus as usize] as f64,
                );
                1.0 / (1.0 + (lm - lp).exp())
            })
            .collect())
    }

    /// Refuses a path of `n` tokens past the PRM's positions: its tokenizer and context are
    /// its own, so the policy's checks cannot bound it, and past them RoPE would extrapolate
    /// and the score mean nothing.
    fn check_fits(&self, n: usize) -> Result<()> {
        let max = self.runner.model.cfg.max_position_embeddings;
        anyhow::ensure!(
            n <= max,
            "the PRM ({}) path of {n} tokens is past its {max} positions \
             (max_position_embeddings); lower --path-tokens or use a PRM with a longer context",
            self.name
        );
        if let Some(cap) = super::common::attention_cap(self.runner.be, &self.runner.model.cfg) {
            anyhow::ensure!(
                n <= cap,
                "the PRM ({}) path of {n} tokens is past the {cap} keys the backend's \
                 batch-invariant attention takes; lower --path-tokens",
                self.name
            );
        }
        Ok(())
    }

    /// Frees a path (already freed is fine).
    pub fn free(&mut self, b: &Branch) -> Result<()> {
        release(&mut self.runner, b.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn paths_are_written_in_the_math_shepherd_format() {
        // rebase.md: question + " " + "Step 1: … ки\nStep 2: … ки", steps trimmed.
        let steps = vec![" Tom has 3. ".to_string(), "3 + 4 = 7.".to_string()];
        assert_eq!(
            Prm::<Cpu>::path_text("Q?", &steps),
            "Q? Step 1: Tom has 3. ки\nStep 2: 3 + 4 = 7. ки"
        );
        assert_eq!(Prm::<Cpu>::path_text("Q?", &[]), "Q? ");
        // A policy that writes the format itself (--protocol wu) is read once, not twice;
        // a header with another step's number is text, not the step's own header.
        let own = vec![
            "Step 1: Tom has 3. ки".to_string(),
            " Step 2: 3 + 4 = 7. ки\n".to_string(),
            "Step 2: again".to_string(),
        ];
        assert_eq!(
            Prm::<Cpu>::path_text("Q?", &own),
            "Q? Step 1: Tom has 3. ки\nStep 2: 3 + 4 = 7. ки\nStep 3: Step 2: again ки"
        );
        // "ки" glued to a word is not the tag.
        let glued = vec!["Step 1: две руки".to_string(), "Step 2: 7.ки".to_string()];
        assert_eq!(
            Prm::<Cpu>::path_text("Q?", &glued),
            "Q? Step 1: две руки ки\nStep 2: 7.ки ки"
        );
        // A child's text extends its parent's, so its PRM pass feeds only the new step.
        let parent = Prm::<Cpu>::path_text("Q?", &steps[..1]);
        assert!(Prm::<Cpu>::path_text("Q?", &steps).starts_with(&parent));
    }
}
