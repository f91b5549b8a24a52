use super::markdown::{accuracy_cell, dec2, sci4, sig4};
use super::*;

#[allow(clippy::too_many_arguments)]
pub(crate) fn rec(
    method: &str,
    budget: usize,
    index: usize,
    correct: bool,
    seconds: f64,
    flops: u64,
) -> Record {
    let mut by_phase = BTreeMap::new();
    by_phase.insert("prefill".to_string(), flops / 4);
    by_phase.insert("decode".to_string(), flops - flops / 4);
    Record {
        method: method.into(),
        budget,
        index,
        gold: Some("1".into()),
        prediction: Some(if correct { "1" } else { "2" }.into()),
        correct,
        seconds,
        flops,
        flops_executed: flops + 100,
        flops_by_phase: by_phase,
        study_flops: flops / 2,
        prompt_tokens: 10,
        generated_tokens: 100 + index as u64,
        thought_tokens: 0,
        prm_tokens: 0,
        tree: None,
        votes: Vec::new(),
        model: "tiny".into(),
        device: "cpu: 2 threads".into(),
        prm: None,
        subset: None,
        seed: 42,
    }
}

fn sample() -> Vec<Record> {
    let mut rs = vec![
        rec("zeta", 1, 0, true, 1.0, 10),
        rec("rebase", 3, 0, true, 2.0, 2_000_000_000_000),
        rec("baseline", 6, 0, true, 1.0, 1_000_000_000_000),
        rec("rebase", 3, 1, false, 4.0, 4_000_000_000_000),
        // 1, 11 and 3 seconds: a mean (5) apart from the median (3).
        rec("baseline", 6, 1, false, 11.0, 2_000_000_000_000),
        rec("alpha", 2, 0, false, 1.0, 0),
        rec("baseline", 2, 0, true, 3.0, 500_000_000_000),
        rec("baseline", 6, 2, true, 3.0, 3_000_000_000_000),
    ];
    for r in rs.iter_mut().filter(|r| r.method == "rebase") {
        r.prm = Some("tiny (the policy itself)".into());
        r.prm_tokens = 7;
        r.flops_by_phase.insert("prm".into(), 5);
    }
    rs
}

#[test]
fn summarize_groups_orders_and_averages() {
    let s = summarize(&sample());
    let keys: Vec<(&str, usize)> = s.iter().map(|s| (s.method.as_str(), s.budget)).collect();
    assert_eq!(
        keys,
        [
            ("baseline", 2),
            ("baseline", 6),
            ("rebase", 3),
            ("alpha", 2),
            ("zeta", 1)
        ]
    );

    let b = &s[1];
    assert_eq!((b.n, b.correct), (3, 2));
    assert!((b.accuracy - 2.0 / 3.0).abs() < 1e-12);
    assert!((b.mean_seconds - 5.0).abs() < 1e-12);
    assert_eq!(b.median_seconds, 3.0);
    assert_eq!(b.mean_flops, 2e12);
    assert_eq!(b.mean_flops_executed, 2e12 + 100.0);
    assert_eq!(b.mean_study_flops, 1e12);
    assert_eq!(b.mean_generated_tokens, 101.0);
    assert_eq!(b.mean_prompt_tokens, 10.0);
    assert_eq!(b.mean_flops_by_phase["prefill"], 0.5e12);
    assert_eq!(b.mean_flops_by_phase["decode"], 1.5e12);
    assert!((b.accuracy_per_tflop - (2.0 / 3.0) / 2.0).abs() < 1e-12);
    assert_eq!(b.prm, None);
    assert_eq!(b.model, "tiny");

    let r = &s[2];
    assert_eq!(r.median_seconds, 3.0, "even count: mean of the middle two");
    assert_eq!(r.accuracy, 0.5);
    assert_eq!(r.accuracy_per_tflop, 0.5 / 3.0);
    assert_eq!(r.mean_prm_tokens, 7.0);
    assert_eq!(r.mean_flops_by_phase["prm"], 5.0);
    assert_eq!(r.prm.as_deref(), Some("tiny (the policy itself)"));

    assert_eq!(
        s[3].accuracy_per_tflop, 0.0,
        "no FLOPs: 0, not NaN or infinity"
    );
    assert_eq!(s[0].accuracy_per_tflop, 1.0 / 0.5);
    assert!(summarize(&[]).is_empty());
}

#[test]
fn overlap_between_shards_is_an_error() {
    let a = vec![
        rec("baseline", 6, 0, true, 1.0, 1),
        rec("baseline", 6, 1, true, 1.0, 1),
    ];
    let b = vec![
        rec("baseline", 6, 2, true, 1.0, 1),
        rec("baseline", 3, 1, true, 1.0, 1),
    ];
    let ok = [
        (PathBuf::from("runs/a"), a.clone()),
        (PathBuf::from("runs/b"), b.clone()),
    ];
    check_no_overlap(&ok).unwrap();
    let c = vec![
        rec("rebase", 6, 1, true, 1.0, 1),
        rec("baseline", 6, 1, false, 2.0, 1),
    ];
    let bad = [
        (PathBuf::from("runs/a"), a),
        (PathBuf::from("runs/b"), b),
        (PathBuf::from("runs/c"), c),
    ];
    let msg = check_no_overlap(&bad).unwrap_err().to_string();
    assert!(msg.contains("runs/a") && msg.contains("runs/c"), "{msg}");
    assert!(msg.contains("method baseline, budget 6, index 1"), "{msg}");
    assert!(!msg.contains("runs/b"), "{msg}");
    // Folders of two runs (another seed, another model) are refused, naming both.
    let one = vec![rec("baseline", 6, 0, true, 1.0, 1)];
    let mut seeded = vec![rec("baseline", 6, 1, true, 1.0, 1)];
    seeded[0].seed = 5;
    let mut modelled = vec![rec("baseline", 6, 2, true, 1.0, 1)];
    modelled[0].model = "other".into();
    let sets = |b: &Vec<Record>| {
        [
            (PathBuf::from("runs/a"), one.clone()),
            (PathBuf::from("runs/b"), b.clone()),
        ]
    };
    check_one_run(&sets(&one)).unwrap();
    let msg = check_one_run(&sets(&seeded)).unwrap_err().to_string();
    assert!(
        msg.contains("runs/a and runs/b") && msg.contains("seed is"),
        "{msg}"
    );
    let msg = check_one_run(&sets(&modelled)).unwrap_err().to_string();
    assert!(msg.contains("model is tiny in one and other"), "{msg}");
    // One folder named twice (here as runs/a and runs/./a) is said to be that.
    let dir = temp_dir("twice");
    std::fs::create_dir_all(&dir).unwrap();
    let twice = [(dir.clone(), vec![]), (dir.join("."), vec![])];
    let msg = check_no_overlap(&twice).unwrap_err().to_string();
    assert!(msg.contains("named twice"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "ponder-report-{tag}-{}-{nanos}",
        std::process::id()
    ))
}

/// Tags balance (a light XML check): every `<x ...>` closed by `</x>`, `<x .../>` self-closed.
pub(crate) fn balanced(svg: &str) -> bool {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find('<') {
        let Some(j) = rest[i..].find('>') else {
            return false;
        };
        let tag = &rest[i + 1..i + j];
        rest = &rest[i + j + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name.trim()) {
                return false;
            }
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    stack.is_empty() && !rest.contains('>')
}

#[test]
fn write_report_writes_five_files() {
    let dir = temp_dir("plain");
    let records = sample();
    let md = write_report(&dir, &records, None, &Sources::default()).unwrap();
    for f in [REPORT_MD, SUMMARY_CSV, SUMMARY_JSON, FLOPS_SVG, SECONDS_SVG] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(std::fs::read_to_string(dir.join(REPORT_MD)).unwrap(), md);
    assert!(
        md.contains(
            "| baseline | 6 votes | 2/3 (66.67%) | 5.00 | 3.00 | 2.000e12 | 2.000e12 | 1.000e12 |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| rebase | width 3 | 1/2 (50.00%) | 3.00 | 3.00 | 3.000e12 |"),
        "{md}"
    );
    assert!(
        md.contains("PRM: tiny (the policy itself) (used by rebase@3)"),
        "{md}"
    );
    assert!(md.contains("Problems: 3 (8 results in all)"), "{md}");
    // Only baseline@6 ran all three problems: the others are named, and the frontier is
    // baseline@6 alone (rebase@3's 50% over two problems does not compare).
    assert!(
        md.contains(
            "**Not over every problem:** baseline@2 (1 of 3), rebase@3 (2 of 3), alpha@2 \
             (1 of 3), zeta@1 (1 of 3)."
        ),
        "{md}"
    );
    assert!(md.contains("- Frontier by FLOPs: baseline@6\n"), "{md}");
    assert!(md.contains("- Frontier by seconds: baseline@6\n"), "{md}");
    assert!(md.contains(FLOPS_SVG) && md.contains(SECONDS_SVG));
    assert!(!md.contains("published figures"), "{md}");

    let json: Vec<Summary> =
        serde_json::from_str(&std::fs::read_to_string(dir.join(SUMMARY_JSON)).unwrap()).unwrap();
    assert_eq!(json, summarize(&records));
    let csv = std::fs::read_to_string(dir.join(SUMMARY_CSV)).unwrap();
    assert_eq!(csv.lines().count(), 1 + json.len());
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with("flops_prefill,flops_decode,flops_thought,flops_mix,flops_prm,flops_sample"));
    assert!(
        csv.contains("\ntiny (the policy itself)") || csv.contains(",tiny (the policy itself),")
    );

    for f in [FLOPS_SVG, SECONDS_SVG] {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("</svg>").count(), 1);
        assert!(balanced(&svg), "{svg}");
        assert!(svg.contains(">baseline@6<") && svg.contains(">rebase@3<"));
    }
    // alpha@2 has 0 FLOPs: left off the log axis and said so.
    let flops = std::fs::read_to_string(dir.join(FLOPS_SVG)).unwrap();
    assert_eq!(flops.matches("<circle").count(), json.len() - 1);
    assert!(flops.contains("Skipped 1 point(s)") && flops.contains("alpha@2 (x=0"));
    let secs = std::fs::read_to_string(dir.join(SECONDS_SVG)).unwrap();
    assert_eq!(secs.matches("<circle").count(), json.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn study_figures_only_for_the_study_subset() {
    let dir = temp_dir("seed");
    let mut records = sample();
    for r in &mut records {
        r.subset = Some("seed42-128".into());
    }
    let md = write_report(&dir, &records, None, &Sources::default()).unwrap();
    assert!(md.contains("published figures"), "{md}");
    // The study's FLOPs in the same notation as ponder's beside them.
    assert!(md.contains("| baseline | 10.16% (13/128) | 1.122e13 | 52.47 s | baseline 6 votes | 2/3 (66.67%) | 1.000e12 |"), "{md}");
    assert!(
        md.contains("| Quiet-STaR | 32.03% (41/128) | 1.273e13 | 554.66 s | not run |"),
        "{md}"
    );
    assert!(
        md.contains("| REBASE width 3 | 10.94% (14/128) | 2.350e12 | 8.47 s | rebase width 3 |"),
        "{md}"
    );
    assert!(
        md.contains("| REBASE width 16 | 12.50% (16/128) | 1.357e13 | 46.90 s | not run |"),
        "{md}"
    );
    assert!(md.contains("| Quiet-STaR + REBASE (width 6) | 9.38% (12/128) | 4.250e12 | 143.66 s |"));
    assert!(md.contains("formula"));
    assert!(
        md.contains("13/128 (width 3), 13/128 (width 6), 15/128 (width 16) and 11/128"),
        "{md}"
    );
    // A few problems of 128 are not the study's run, and the report says so.
    assert!(md.contains("**Not the study's setup**"), "{md}");
    assert!(
        md.contains("baseline 6 votes: 3 of the 128 problems"),
        "{md}"
    );
    assert!(md.contains("rebase width 3: 2 of the 128 problems"), "{md}");
    assert!(
        md.contains("ponder's policy: tiny (the study's: Mistral-7B-v0.1)"),
        "{md}"
    );

    records[0].subset = None;
    let md = write_report(&dir, &records, None, &Sources::default()).unwrap();
    assert!(!md.contains("published figures"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn study_differences_name_what_is_not_the_studys() {
    use super::study::differences;
    use crate::eval::manifest::Manifest;
    let full: Vec<Record> = (0..128)
        .map(|i| rec("baseline", 6, i, i % 8 == 0, 1.0, 10))
        .collect();
    let mut m = Manifest::default();
    for (k, v) in [
        ("protocol", "seed"),
        ("max-tokens", "384"),
        ("answer-tokens", "12"),
        ("step-tokens", "96"),
        ("path-tokens", "384"),
        ("temperature", "1.0"),
        ("rebase-temperature", "0.2"),
        ("fixed-lengths", "false"),
    ] {
        m.set(k, v);
    }
    assert!(differences(&summarize(&full), Some(&m)).is_empty());

    let mut two_votes = full.clone();
    for r in &mut two_votes {
        r.budget = 2;
    }
    two_votes.pop();
    m.set("max-tokens", 48).set("protocol", "wu");
    assert_eq!(
        differences(&summarize(&two_votes), Some(&m)),
        [
            "protocol wu (the study's: seed)",
            "max-tokens 48 (the study's: 384)",
            "baseline is shown beside baseline 2 votes",
            "baseline 2 votes: 127 of the 128 problems",
        ]
    );
}

/// report.md's text for `rs` (every row taken as run over every problem, no frontier).
fn render(rs: &[Record]) -> String {
    let sums = summarize(rs);
    let sources = Sources::default();
    let view = View {
        full: vec![true; sums.len()],
        frontiers: [vec![], vec![]],
        sources: &sources,
    };
    markdown::render(rs, &sums, None, &view)
}

#[test]
fn number_formats() {
    assert_eq!(accuracy_cell(13, 128), "13/128 (10.16%)");
    assert_eq!(accuracy_cell(0, 0), "0/0 (0.00%)");
    assert_eq!(dec2(99.999, Some(100.0)), "99.99");
    assert_eq!(dec2(100.0, Some(100.0)), "100.00");
    assert_eq!(dec2(0.0042, None), "0.0042");
    assert_eq!(dec2(52.466, None), "52.47");
    assert_eq!(sci4(1.2344e12), "1.234e12");
    assert_eq!(sci4(0.0), "0");
    assert_eq!(sig4(0.3333333), "0.3333");
    assert_eq!(sig4(12.345678), "12.35");
    assert_eq!(sig4(1.5e7), "1.500e7");
}

#[test]
fn tree_searches_are_summarised_and_a_missing_leaf_shows() {
    use crate::eval::record::TreeStats;
    use crate::methods::common::TreeNode;
    let node = |parent: Option<usize>, depth: usize, leaf: bool, dropped: bool| TreeNode {
        depth,
        parent,
        text: String::new(),
        score: Some(0.5),
        leaf,
        dropped,
        tokens: 1,
    };
    // Root, two children (one dropped), a leaf below the other.
    let tree = [
        node(None, 0, false, false),
        node(Some(0), 1, false, true),
        node(Some(0), 1, false, false),
        node(Some(2), 2, true, false),
    ];
    let t = TreeStats::of(&tree).unwrap();
    assert_eq!(
        t,
        TreeStats {
            steps: 3,
            dropped: 1,
            leaves: 1,
            depth: 2
        }
    );
    assert_eq!(TreeStats::of(&[]), None);

    let mut rs = sample();
    for (n, r) in rs.iter_mut().filter(|r| r.method == "rebase").enumerate() {
        // The first problem found a leaf, the second dropped everything at depth 1.
        r.tree = Some(if n == 0 {
            t
        } else {
            TreeStats {
                steps: 3,
                dropped: 3,
                leaves: 0,
                depth: 1,
            }
        });
    }
    let sums = summarize(&rs);
    let rebase = sums.iter().find(|s| s.method == "rebase").unwrap();
    let tree = rebase.tree.as_ref().unwrap();
    assert_eq!((tree.no_leaf, tree.problems), (1, 2));
    assert_eq!((tree.mean_steps, tree.mean_dropped), (3.0, 2.0));
    assert!(sums
        .iter()
        .filter(|s| s.method != "rebase")
        .all(|s| s.tree.is_none()));
    let md = render(&rs);
    assert!(md.contains("## Tree search"), "{md}");
    assert!(
        md.contains("| rebase | width 3 | 3.000 | 2.000 | 0.5000 | 1.500 | 1/2 |"),
        "{md}"
    );
    // Without tree statistics (older files) there is no section.
    assert!(!render(&sample()).contains("Tree search"));
}
