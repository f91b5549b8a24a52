//! Choosing one answer from many: majority vote (baseline, Quiet-STaR), weighted majority
//! vote (Wu et al.'s best REBASE variant) and best-of-N by an aggregate of step scores.

use std::collections::HashMap;

use super::answer::normalise_number;

/// Key under which two answers count as equal: the canonical number when the answer is a
/// number, else the exact string. The two kinds never collide, because a canonical number
/// is itself a number while a raw key is by construction not one; so "18.00" and "18"
/// share a key, "18" and "18 apples" do not.
fn vote_key(answer: &str) -> String {
    normalise_number(answer).unwrap_or_else(|| answer.to_string())
}

/// Groups in order of first appearance, each with the first-seen spelling and the
/// positions (in `answers`) of its members.
fn groups<'a, T>(
    answers: impl Iterator<Item = (Option<&'a str>, T)>,
) -> Vec<(&'a str, Vec<(usize, T)>)> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(&'a str, Vec<(usize, T)>)> = Vec::new();
    for (pos, (answer, payload)) in answers.enumerate() {
        let Some(answer) = answer else { continue };
        let slot = *index.entry(vote_key(answer)).or_insert_with(|| {
            out.push((answer, Vec::new()));
            out.len() - 1
        });
        out[slot].1.push((pos, payload));
    }
    out
}

/// Most common answer among the non-`None` ones, with its vote count. Ties go to the
/// answer whose first occurrence is earliest, which is what the reference's
/// `Counter(...).most_common(1)` does (insertion order, stable sort). Answers are equal
/// when their [`normalise_number`] forms are equal, or, when either is not a number,
/// when the strings are equal; the answer is returned in its first-seen spelling.
/// `None` votes (nothing extracted) are ignored, as the study's `base.py` does.
pub fn majority(answers: &[Option<String>]) -> Option<(String, usize)> {
    let groups = groups(answers.iter().map(|a| (a.as_deref(), ())));
    let mut best: Option<(&str, usize)> = None;
    for (spelling, members) in groups {
        // Strictly greater: an equal count found later came from a later first occurrence.
        if best.is_none_or(|(_, count)| members.len() > count) {
            best = Some((spelling, members.len()));
        }
    }
    best.map(|(a, n)| (a.to_string(), n))
}

/// What Wu et al.'s extraction returns for a leaf without an answer; in their vote it is a
/// group like any other, and when it wins the problem has no answer.
pub const INVALID: &str = "[invalid]";

/// Weighted majority vote: answers are grouped as in [`majority`], a group's weight is
/// the sum of its members' scores, the heaviest group wins and is returned in its
/// first-seen spelling with its weight.
///
/// Ties go to the group that reached the winning weight first: for each group whose
/// total equals the maximum, take the position (in `answers`) of the member at which its
/// running sum first became >= that maximum; the earliest such position wins. This is
/// exactly what Wu et al.'s `majority_vote` does with its strict `>` update while
/// scanning (for non-negative scores, which PRM probabilities are). It is NOT the same
/// as "earliest first member": for A(1), B(2), A(1) both groups weigh 2, B reached 2 at
/// position 1 and A only at position 2, so B wins. Calling this with every score 1.0
/// therefore reproduces Wu et al.'s unweighted majority vote, whose ties differ from
/// [`majority`]'s (the study's `Counter` rule).
///
/// `None` answers are ignored (Wu et al. vote with an "[invalid]" string instead; pass
/// `Some(INVALID)` to reproduce that). Non-finite scores count as 0: a PRM
/// probability that is NaN or infinite means the score failed, and one such value must
/// not decide or poison a group. No group wins with a total of 0 or less: Wu et al.'s scan
/// starts its maximum at 0 and only a larger weight replaces it, so leaves that all score 0
/// give no answer.
pub fn weighted_majority(answers: &[(Option<String>, f64)]) -> Option<(String, f64)> {
    let groups = groups(answers.iter().map(|(a, w)| {
        let w = if w.is_finite() { *w } else { 0.0 };
        (a.as_deref(), w)
    }));
    let totals: Vec<f64> = groups
        .iter()
        .map(|(_, members)| members.iter().map(|&(_, w)| w).sum())
        .collect();
    let max = totals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max <= 0.0 {
        return None;
    }
    let mut best: Option<(usize, usize)> = None; // (position reached, group)
    for (g, (_, members)) in groups.iter().enumerate() {
        if totals[g] != max {
            continue;
        }
        // The running sum repeats the additions of the total in the same order, so it
        // ends exactly at `max`; a position is always found.
        let mut running = 0.0;
        let reached = members
            .iter()
            .find(|&&(_, w)| {
                running += w;
                running >= max
            })
            .map_or(usize::MAX, |&(pos, _)| pos);
        if best.is_none_or(|(pos, _)| reached < pos) {
            best = Some((reached, g));
        }
    }
    best.map(|(_, g)| (groups[g].0.to_string(), totals[g]))
}

/// Wu et al.'s answer for a set of leaves (answer, last-step score): the weighted majority
/// vote in which leaves without an answer form the "[invalid]" group, which can win (and
/// then the problem has no answer) rather than be left out.
pub fn wu_vote(leaves: &[(Option<String>, f64)]) -> Option<String> {
    let w: Vec<(Option<String>, f64)> = leaves
        .iter()
        .map(|(a, s)| (Some(a.clone().unwrap_or_else(|| INVALID.to_string())), *s))
        .collect();
    weighted_majority(&w)
        .map(|(a, _)| a)
        .filter(|a| a != INVALID)
}

/// How a path's step scores become one score for best-of-N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Aggregate {
    /// Score of the last step (Wu et al.'s default, and what the study used).
    Last,
    /// Arithmetic mean of the step scores.
    Mean,
    /// Smallest step score (Wu et al. cap it at 1, which PRM probabilities never exceed).
    Min,
    /// Product of the step scores.
    Product,
}

impl Aggregate {
    /// The aggregate of `step_scores`; a path without scores gets `f64::NEG_INFINITY`, so
    /// that it can only win when nothing else is available (Wu et al. give it 0).
    pub fn apply(&self, step_scores: &[f64]) -> f64 {
        let Some(&last) = step_scores.last() else {
            return f64::NEG_INFINITY;
        };
        match self {
            Aggregate::Last => last,
            Aggregate::Mean => step_scores.iter().sum::<f64>() / step_scores.len() as f64,
            Aggregate::Min => step_scores.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregate::Product => step_scores.iter().product(),
        }
    }
}

/// Best-of-N: the payload (`usize`) of the leaf whose step scores aggregate highest; ties
/// go to the earliest leaf (Wu et al.'s strict `>` scan, and the study's stable sort).
/// A NaN aggregate never wins; `None` when there is no leaf or every aggregate is NaN.
pub fn best_of_n(leaves: &[(Vec<f64>, usize)], agg: Aggregate) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (scores, payload) in leaves {
        let score = agg.apply(scores);
        if score.is_nan() {
            continue;
        }
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, *payload));
        }
    }
    best.map(|(_, payload)| payload)
}

/// How a tree search picks its answer from its leaves (rebase.md, "Choosing the answer").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// Best-of-N: the answer of the leaf whose aggregate score is highest, among the leaves
    /// that hold one (the study's rule).
    Best,
    /// The most common answer, scores unused.
    Majority,
    /// Answers weighted by their leaves' aggregate scores (Wu et al.'s best).
    Weighted,
}

/// The answer of `leaves` (answer, step scores) by `select`, each leaf scored by `agg`.
/// With `wu`, the votes follow Wu et al.'s code: leaves without an answer vote together as
/// "[invalid]" (which can win: then there is no answer), and an unweighted majority is their
/// weighted one with every weight 1 (its ties differ from the study's `Counter` rule).
pub fn choose(
    leaves: &[(Option<String>, Vec<f64>)],
    select: Select,
    agg: Aggregate,
    wu: bool,
) -> Option<String> {
    let weighted = |w: Vec<(Option<String>, f64)>| {
        if wu {
            wu_vote(&w)
        } else {
            weighted_majority(&w).map(|(a, _)| a)
        }
    };
    match select {
        // The study ranks the leaves that hold an answer; Wu et al.'s `evaluate` takes the
        // best leaf and then extracts, so a best leaf without one gives no answer.
        Select::Best => {
            let scored: Vec<(Vec<f64>, usize)> = leaves
                .iter()
                .enumerate()
                .filter(|(_, (a, _))| wu || a.is_some())
                .map(|(i, (_, s))| (s.clone(), i))
                .collect();
            best_of_n(&scored, agg).and_then(|i| leaves[i].0.clone())
        }
        Select::Majority if wu => weighted(leaves.iter().map(|(a, _)| (a.clone(), 1.0)).collect()),
        Select::Majority => {
            let answers: Vec<Option<String>> = leaves.iter().map(|(a, _)| a.clone()).collect();
            majority(&answers).map(|(a, _)| a)
        }
        Select::Weighted => weighted(
            leaves
                .iter()
                .map(|(a, s)| (a.clone(), agg.apply(s)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_follows_the_rule_and_the_aggregate() {
        let leaf = |a: &str, s: &[f64]| ((!a.is_empty()).then(|| a.to_string()), s.to_vec());
        // "5" has the best last score; "7" the most votes and the most weight; by its min
        // score "9" is best; without an answer the last leaf only counts as "[invalid]".
        let leaves = [
            leaf("7", &[0.2, 0.5]),
            leaf("5", &[0.3, 0.9]),
            leaf("7", &[0.1, 0.6]),
            leaf("9", &[0.8, 0.7]),
            leaf("", &[0.9, 0.95]),
        ];
        let c = |sel, agg, wu| choose(&leaves, sel, agg, wu);
        assert_eq!(c(Select::Best, Aggregate::Last, false), Some("5".into()));
        assert_eq!(c(Select::Best, Aggregate::Min, false), Some("9".into()));
        // By product the answerless leaf (0.855) is best: the study ranks only the leaves
        // with an answer ("9", 0.56), Wu et al. extract from the best leaf, so none.
        assert_eq!(c(Select::Best, Aggregate::Product, false), Some("9".into()));
        assert_eq!(c(Select::Best, Aggregate::Product, true), None);
        assert_eq!(
            c(Select::Majority, Aggregate::Last, false),
            Some("7".into())
        );
        assert_eq!(
            c(Select::Weighted, Aggregate::Last, false),
            Some("7".into())
        );
        // Wu et al.'s vote: "[invalid]" weighs 0.95 < 1.1 ("7") by last score, but by min
        // score "[invalid]" (0.9) beats "7" (0.3), "5" (0.3) and "9" (0.7): no answer.
        assert_eq!(c(Select::Weighted, Aggregate::Last, true), Some("7".into()));
        assert_eq!(c(Select::Weighted, Aggregate::Min, true), None);
        assert_eq!(c(Select::Weighted, Aggregate::Min, false), Some("9".into()));
        assert_eq!(c(Select::Majority, Aggregate::Last, true), Some("7".into()));
        assert_eq!(choose(&[], Select::Best, Aggregate::Last, false), None);
    }

    fn votes(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect()
    }

    fn weighted(v: &[(&str, f64)]) -> Vec<(Option<String>, f64)> {
        v.iter()
            .map(|(s, w)| ((!s.is_empty()).then(|| s.to_string()), *w))
            .collect()
    }

    #[test]
    fn majority_basic() {
        let r = majority(&votes(&["5", "7", "7", "5", "7"]));
        assert_eq!(r, Some(("7".to_string(), 3)));
        assert_eq!(majority(&votes(&["", "", "3"])), Some(("3".to_string(), 1)));
        assert_eq!(majority(&votes(&["", ""])), None);
        assert_eq!(majority(&[]), None);
    }

    #[test]
    fn majority_ties_go_to_earliest_first_occurrence() {
        assert_eq!(
            majority(&votes(&["5", "7", "7", "5"])),
            Some(("5".into(), 2))
        );
        assert_eq!(
            majority(&votes(&["", "7", "5", "5", "7"])),
            Some(("7".into(), 2))
        );
        assert_eq!(majority(&votes(&["1", "2", "3"])), Some(("1".into(), 1)));
    }

    #[test]
    fn majority_compares_numbers_canonically() {
        let r = majority(&votes(&["9", "18.00", "18", "018", "9"]));
        assert_eq!(r, Some(("18.00".to_string(), 3)));
        // Non-numbers compare exactly.
        let r = majority(&votes(&["12 apples", "12", "12 apples"]));
        assert_eq!(r, Some(("12 apples".to_string(), 2)));
        let r = majority(&votes(&["abc", "ABC", "abc "]));
        assert_eq!(r, Some(("abc".to_string(), 1)));
    }

    #[test]
    fn weighted_majority_sums_scores() {
        let r = weighted_majority(&weighted(&[("5", 0.9), ("7", 0.5), ("7", 0.75)]));
        assert_eq!(r, Some(("7".to_string(), 1.25)));
        let r = weighted_majority(&weighted(&[("5", 0.9), ("7", 0.3), ("7", 0.4)]));
        assert_eq!(r, Some(("5".to_string(), 0.9)));
        let r = weighted_majority(&weighted(&[("18", 0.25), ("9", 0.5), ("18.0", 0.5)]));
        assert_eq!(r, Some(("18".to_string(), 0.75)));
        assert_eq!(weighted_majority(&weighted(&[("", 1.0)])), None);
        assert_eq!(weighted_majority(&[]), None);
    }

    #[test]
    fn weighted_majority_ties_go_to_the_group_that_reached_the_max_first() {
        // A(1), B(2), A(1): B reaches 2 at position 1, A at position 2.
        let r = weighted_majority(&weighted(&[("A", 1.0), ("B", 2.0), ("A", 1.0)]));
        assert_eq!(r, Some(("B".to_string(), 2.0)));
        // B(2), A(1), A(1): B first again.
        let r = weighted_majority(&weighted(&[("B", 2.0), ("A", 1.0), ("A", 1.0)]));
        assert_eq!(r, Some(("B".to_string(), 2.0)));
        // A(2), B(1), B(1): A reached 2 at position 0.
        let r = weighted_majority(&weighted(&[("A", 2.0), ("B", 1.0), ("B", 1.0)]));
        assert_eq!(r, Some(("A".to_string(), 2.0)));
        // Unit weights reproduce Wu et al.'s unweighted vote: A,B,B,A → B (majority says A).
        let r = weighted_majority(&weighted(&[("A", 1.0), ("B", 1.0), ("B", 1.0), ("A", 1.0)]));
        assert_eq!(r, Some(("B".to_string(), 2.0)));
        assert_eq!(
            majority(&votes(&["A", "B", "B", "A"])),
            Some(("A".into(), 2))
        );
        // All-zero weights: nothing beats Wu et al.'s starting maximum of 0, no answer.
        let r = weighted_majority(&weighted(&[("A", 0.0), ("B", 0.0)]));
        assert_eq!(r, None);
    }

    #[test]
    fn wu_vote_counts_leaves_without_an_answer_as_a_group() {
        let leaf = |a: Option<&str>, s: f64| (a.map(str::to_string), s);
        // Two answerless leaves outweigh the one answer: no answer, as in Wu et al.
        let l = [leaf(None, 0.5), leaf(Some("5"), 0.7), leaf(None, 0.4)];
        assert_eq!(wu_vote(&l), None);
        // Lighter than the answer: the answer wins, as if they were left out.
        let l = [
            leaf(None, 0.2),
            leaf(Some("5"), 0.7),
            leaf(Some("5.0"), 0.1),
        ];
        assert_eq!(wu_vote(&l), Some("5".to_string()));
        assert_eq!(
            wu_vote(&[leaf(Some("5"), 0.0)]),
            None,
            "a weight of 0 never wins"
        );
        assert_eq!(wu_vote(&[]), None);
    }

    #[test]
    fn weighted_majority_ignores_non_finite_scores() {
        let r = weighted_majority(&weighted(&[("A", f64::NAN), ("B", 0.2), ("A", 0.1)]));
        assert_eq!(r, Some(("B".to_string(), 0.2)));
        let r = weighted_majority(&weighted(&[("A", f64::INFINITY), ("B", 0.2)]));
        assert_eq!(r, Some(("B".to_string(), 0.2)));
    }

    #[test]
    fn aggregates() {
        let s = [0.5, 0.25, 0.8];
        assert_eq!(Aggregate::Last.apply(&s), 0.8);
        assert!((Aggregate::Mean.apply(&s) - 1.55 / 3.0).abs() < 1e-12);
        assert_eq!(Aggregate::Min.apply(&s), 0.25);
        assert_eq!(Aggregate::Product.apply(&s), 0.1);
        for a in [
            Aggregate::Last,
            Aggregate::Mean,
            Aggregate::Min,
            Aggregate::Product,
        ] {
            assert_eq!(a.apply(&[]), f64::NEG_INFINITY);
            assert_eq!(a.apply(&[0.3]), 0.3);
        }
    }

    #[test]
    fn aggregate_serde_round_trip() {
        let json = serde_json::to_string(&Aggregate::Product).unwrap();
        assert_eq!(json, "\"Product\"");
        let back: Aggregate = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Aggregate::Product);
    }

    #[test]
    fn best_of_n_picks_highest_aggregate() {
        let leaves = vec![
            (vec![0.95, 0.3], 10),
            (vec![0.5, 0.6], 11),
            (vec![0.3, 0.7], 12),
        ];
        assert_eq!(best_of_n(&leaves, Aggregate::Last), Some(12));
        assert_eq!(best_of_n(&leaves, Aggregate::Mean), Some(10));
        assert_eq!(best_of_n(&leaves, Aggregate::Min), Some(11));
        assert_eq!(best_of_n(&leaves, Aggregate::Product), Some(11));
        assert_eq!(best_of_n(&[], Aggregate::Last), None);
    }

    #[test]
    fn best_of_n_ties_and_edge_cases() {
        let leaves = vec![(vec![0.1, 0.5], 3), (vec![0.5], 1), (vec![0.2, 0.5], 2)];
        assert_eq!(best_of_n(&leaves, Aggregate::Last), Some(3));
        // An empty path only wins when alone.
        let leaves = vec![(vec![], 0), (vec![0.01], 1)];
        assert_eq!(best_of_n(&leaves, Aggregate::Last), Some(1));
        assert_eq!(best_of_n(&[(vec![], 7)], Aggregate::Mean), Some(7));
        // NaN never wins.
        let leaves = vec![(vec![f64::NAN], 0), (vec![0.01], 1)];
        assert_eq!(best_of_n(&leaves, Aggregate::Last), Some(1));
        assert_eq!(best_of_n(&[(vec![f64::NAN], 0)], Aggregate::Last), None);
    }
}
