//! The chain-of-thought baseline (protocol.md), and Quiet-STaR on the same protocol: N votes
//! forked from one prefilled prompt (they share its pages), decoded together, each followed
//! by the answer phase; the majority answer wins, ties to the earliest vote.
use super::answer::{baseline_cut, first_integer, ANSWER_TRIGGER};
use super::common::{Meter, Policy, Settings, Solution, Tally, Vote};
use super::quiet_star::{QuietStar, ThoughtStep};
use super::voting::majority;
use crate::backend::Backend;
use crate::rng::child_stream;
use crate::sample::Sampling;
use crate::scheduler::{decode_with, fork, park, prefill, release, set_tokens, Branch, StopRule};
use anyhow::Result;

/// Runs the baseline (or, with `quiet`, Quiet-STaR) on one question.
pub fn solve<B: Backend>(
    p: &mut Policy<'_, B>,
    quiet: Option<&QuietStar<B>>,
    question: &str,
    s: &Settings,
) -> Result<Solution> {
    let meter = Meter::start(p);
    let mut tally = Tally::default();
    let prompt = format!("Q: {question}\nA: Let's think step by step.");
    let ids = p.encode_with_bos(&prompt)?;
    let trigger = p.tok.encode(ANSWER_TRIGGER)?.len();
    let thought = quiet.map_or(0, QuietStar::reach);
    p.check_fits(
        ids.len(),
        s.max_tokens + trigger + s.answer_tokens + thought,
        &format!(
            "--max-tokens {} + the answer phase ({trigger} + --answer-tokens {}) + a thought \
             ({thought})",
            s.max_tokens, s.answer_tokens
        ),
    )?;
    tally.prompt = ids.len() as u64;
    let root = Branch::new(p.runner.pool.create(), ids, 0);
    let res = run_votes(p, quiet, &root, &prompt, s, &mut tally);
    release(&mut p.runner, root.seq)?;
    let votes = res?;
    let answers: Vec<Option<String>> = votes.iter().map(|v| v.answer.clone()).collect();
    let answer = majority(&answers).map(|(a, _)| a);
    let method = if quiet.is_some() {
        "quiet-star"
    } else {
        "baseline"
    };
    Ok(meter.finish(p, method, answer, votes, vec![], tally, None))
}

fn run_votes<B: Backend>(
    p: &mut Policy<'_, B>,
    quiet: Option<&QuietStar<B>>,
    root: &Branch,
    prompt: &str,
    s: &Settings,
    tally: &mut Tally,
) -> Result<Vec<Vote>> {
    prefill(&mut p.runner, &[root])?;
    let streams: Vec<u64> = (0..s.votes as u64)
        .map(|v| child_stream(s.seed, v))
        .collect();
    let mut votes = fork(&mut p.runner, root, &streams)?;
    // The votes hold what they need of the prompt's pages; the rest may make room.
    park(&mut p.runner, root.seq);
    let res = sample_votes(p, quiet, &mut votes, prompt, s, tally);
    for v in &votes {
        p.runner.pool.free(v.seq)?;
    }
    res
}

fn sample_votes<B: Backend>(
    p: &mut Policy<'_, B>,
    quiet: Option<&QuietStar<B>>,
    votes: &mut [Branch],
    prompt: &str,
    s: &Settings,
    tally: &mut Tally,
) -> Result<Vec<Vote>> {
    let sampling = Sampling {
        temperature: s.temperature,
        top_p: 1.0,
        top_k: s.top_k,
    };
    let rule = StopRule {
        stop_ids: p.stop_ids(),
        stop_strings: vec![],
        cut: Some(baseline_cut),
        max_tokens: s.max_tokens,
        fixed_length: s.fixed_lengths,
    };
    let mut thought = quiet.map(|qs| ThoughtStep::new(qs, s.seed, s.quiet_mode));
    decode_with(
        &mut p.runner,
        p.tok,
        thought.as_mut(),
        votes,
        &rule,
        sampling,
        s.seed,
    )?;
    let reasoning: Vec<(String, usize)> = votes
        .iter()
        .map(|v| (v.text.clone(), v.generated().len()))
        .collect();
    // The answer phase: the cut text, trailing whitespace stripped, then the trigger phrase;
    // the cache keeps the longest common prefix of the old and the new tokens.
    for (v, (text, _)) in votes.iter_mut().zip(&reasoning) {
        let full = format!("{prompt}{}{ANSWER_TRIGGER}", text.trim_end());
        let ids = p.encode_with_bos(&full)?;
        set_tokens(&mut p.runner, v, ids)?;
    }
    let answer_rule = StopRule {
        stop_ids: p.stop_ids(),
        stop_strings: vec![],
        cut: None,
        max_tokens: s.answer_tokens,
        fixed_length: s.fixed_lengths,
    };
    decode_with(
        &mut p.runner,
        p.tok,
        thought.as_mut(),
        votes,
        &answer_rule,
        sampling,
        s.seed,
    )?;
    let mut out = Vec::with_capacity(votes.len());
    for (v, (text, n)) in votes.iter().zip(reasoning) {
        let generated = n + v.generated().len();
        tally.generated += generated as u64;
        tally.study_tokens += generated as u64;
        out.push(Vote {
            text: format!("{}{ANSWER_TRIGGER}{}", text.trim_end(), v.text),
            answer: first_integer(&v.text),
            scores: vec![],
            tokens: generated,
        });
    }
    if let Some(t) = thought {
        tally.thought += t.thought_tokens;
    }
    Ok(out)
}
