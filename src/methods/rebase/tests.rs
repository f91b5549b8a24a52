use super::*;

#[test]
fn seed_prompts_drop_their_suffixes_from_the_text_later_steps_build_on() {
    let q = "Q?";
    let root = step_prompt(Protocol::Seed, q, 0);
    assert_eq!(root, "Q?\nA: Let's think step by step.");
    // A node's text is the question and the steps as generated, nothing else: the
    // prompt for step 3 after steps s1, s2 is question + s1 + s2 + "\nStep 3:".
    let text = format!("{q}{}{}", " s1.", " s2.");
    assert_eq!(step_prompt(Protocol::Seed, &text, 2), "Q? s1. s2.\nStep 3:");
    assert_eq!(
        step_prompt(Protocol::Wu, "Q?\nStep 1: a", 1),
        "Q?\nStep 1: a"
    );
}

#[test]
fn parents_expand_best_first_with_each_references_ties() {
    let scores = [0.5, 0.9, 0.5, 0.2, 0.9];
    assert_eq!(expansion_order(Protocol::Seed, &scores), [1, 4, 0, 2, 3]);
    assert_eq!(expansion_order(Protocol::Wu, &scores), [4, 1, 2, 0, 3]);
    assert!(expansion_order(Protocol::Seed, &[]).is_empty());
}

#[test]
fn a_seed_leaf_reads_its_whole_text() {
    let q = "Tom has 12 apples and eats 5.";
    // The steps' last integer, when they hold one (commas dropped).
    let text = format!("{q} He has 12 - 5 = 7 left. So 1,007 minus 1,000.");
    assert_eq!(leaf_answer(Protocol::Seed, &text).as_deref(), Some("1000"));
    // Steps without a number: the question's last, as the study's code reads it.
    let text = format!("{q} He ate some, so fewer remain.");
    assert_eq!(leaf_answer(Protocol::Seed, &text).as_deref(), Some("5"));
    assert_eq!(leaf_answer(Protocol::Seed, "How many? None."), None);
    // Wu et al.'s extraction reads the node's text as written, the question included.
    let text = format!("{q}\nStep 1: 12 - 5 = 7 ки\nStep 2: The answer is: 7 ки");
    assert_eq!(leaf_answer(Protocol::Wu, &text).as_deref(), Some("7"));
    let text = format!("{q}\nStep 1: 12 - 5 ки");
    assert_eq!(leaf_answer(Protocol::Wu, &text), None);
}

#[test]
fn the_best_leaf_with_an_integer_gives_the_answer() {
    use crate::methods::voting::{choose, Aggregate, Select};
    let leaf = |a: Option<&str>, s: &[f64]| (a.map(str::to_string), s.to_vec());
    let v = [
        leaf(None, &[0.9, 0.95]),
        leaf(Some("7"), &[0.2, 0.6]),
        leaf(Some("8"), &[0.9, 0.6]),
        leaf(Some("9"), &[0.3, 0.5]),
    ];
    // The study's rule (the seed protocol's default): the top leaf has no integer; of the
    // rest the first of the two at 0.6 wins.
    let best = |v: &[(Option<String>, Vec<f64>)]| choose(v, Select::Best, Aggregate::Last, false);
    assert_eq!(best(&v).as_deref(), Some("7"));
    assert_eq!(best(&v[..1]), None);
    assert_eq!(best(&[]), None);
}

/// Under Wu et al.'s protocol a leaf without "The answer is" (a path stopped at the token
/// limit) does not vote: two such leaves no longer outweigh the answer as "[invalid]".
#[test]
fn wu_votes_only_among_leaves_with_the_phrase() {
    use crate::methods::voting::{choose, Aggregate, Select};
    let vote = |a: Option<&str>, s: f64| Vote {
        text: String::new(),
        answer: a.map(str::to_string),
        scores: vec![s],
        tokens: 0,
    };
    let votes = [vote(None, 0.9), vote(Some("5"), 0.6), vote(None, 0.8)];
    let texts = [
        "Step 1: 2+3 ки",
        "Step 1: The answer is: 5 ки",
        "Step 1: so 5",
    ];
    let pick = |p| {
        let v = voters(p, &votes, &texts);
        (
            v.len(),
            choose(&v, Select::Weighted, Aggregate::Last, p == Protocol::Wu),
        )
    };
    assert_eq!(pick(Protocol::Wu), (1, Some("5".into())));
    // Had they voted, "[invalid]" (1.7) would have won over "5" (0.6).
    let all: Vec<_> = votes
        .iter()
        .map(|v| (v.answer.clone(), v.scores.clone()))
        .collect();
    assert_eq!(choose(&all, Select::Weighted, Aggregate::Last, true), None);
    assert_eq!(voters(Protocol::Seed, &votes, &texts).len(), 3);
}
