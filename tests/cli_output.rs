//! What `ponder solve` prints for a person (the answer line, the votes or the tree, the cost
//! table) and what `ponder sweep` leaves behind (every budget in one report, both plots).
use std::process::Command;

fn ponder(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .output()
        .expect("run ponder");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {e}");
    (o, e)
}

const Q: &str = "Tom has 3 apples and buys 4 more. How many apples does he have?";

#[test]
fn solve_prints_the_answer_the_votes_and_the_cost() {
    let (out, err) = ponder(&[
        "solve",
        "--model",
        "synthetic:tiny",
        "--method",
        "baseline",
        "--votes",
        "3",
        "--max-tokens",
        "6",
        "--answer-tokens",
        "3",
        "--question",
        Q,
    ]);
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("answer: "), "{out}");
    assert!(!err.contains("note"), "every flag given is used: {err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())
                && l.contains(": answer"))
            .count(),
        3,
        "{out}"
    );
    for row in [
        "cost (baseline):",
        "useful FLOPs",
        "prefill",
        "decode",
        "study's formula FLOPs",
        "generated tokens",
    ] {
        assert!(out.contains(row), "no {row:?} in {out}");
    }
    // The tree: every node on its own line, its parent named, the root first.
    let (out, err) = ponder(&[
        "solve",
        "--model",
        "synthetic:tiny",
        "--method",
        "rebase",
        "--width",
        "2",
        "--step-tokens",
        "6",
        "--path-tokens",
        "12",
        "--show-tree",
        "--votes",
        "3",
        "--question",
        Q,
    ]);
    // A flag of another method's is said to change nothing, and the solve goes on.
    assert!(
        err.contains("note: --method rebase uses none of --votes (for baseline and quiet-star)"),
        "{err}"
    );
    let nodes: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    assert!(nodes.len() >= 3, "{out}");
    assert!(nodes[0].starts_with("#0 (root)"), "{out}");
    assert!(
        nodes[1..].iter().all(|l| l.contains("(child of #")),
        "{out}"
    );
    let n = out.lines().find(|l| l.starts_with("tree (")).unwrap();
    assert_eq!(n, format!("tree ({} nodes):", nodes.len()));
    assert!(
        out.contains("PRM") && out.contains("(the policy itself)"),
        "{out}"
    );
}

#[test]
fn sweep_reports_every_budget_and_draws_the_frontier() {
    let dir = std::env::temp_dir().join(format!("ponder-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (out, err) = ponder(&[
        "sweep",
        "--model",
        "synthetic:tiny",
        "--method",
        "baseline,rebase",
        "--budgets",
        "1,2",
        "--limit",
        "2",
        "--max-tokens",
        "4",
        "--answer-tokens",
        "2",
        "--step-tokens",
        "4",
        "--path-tokens",
        "8",
        "--out",
        dir.to_str().unwrap(),
    ]);
    // Two methods × two budgets × two problems.
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 8, "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let mut runs: Vec<(String, u64, u64)> = summary
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["method"].as_str().unwrap().to_string(),
                s["budget"].as_u64().unwrap(),
                s["n"].as_u64().unwrap(),
            )
        })
        .collect();
    runs.sort();
    let want: Vec<(String, u64, u64)> = [
        ("baseline", 1),
        ("baseline", 2),
        ("rebase", 1),
        ("rebase", 2),
    ]
    .iter()
    .map(|(m, b)| (m.to_string(), *b, 2))
    .collect();
    assert_eq!(runs, want);
    for plot in ["accuracy_vs_flops.svg", "accuracy_vs_seconds.svg"] {
        let svg = std::fs::read_to_string(dir.join(plot)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("rebase"), "{plot}");
    }
    assert!(
        out.contains("baseline") && out.contains("rebase"),
        "the report is printed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--top-k 1` keeps only the most likely token (and its ties, which random logits do not
/// have): sampling at temperature 1 then gives the greedy text, for `generate` and for a
/// method's votes, while without it the draws differ.
#[test]
fn top_k_one_samples_what_greedy_picks() {
    let gen = |extra: &[&str]| {
        let base = [
            "generate",
            "--model",
            "synthetic:tiny",
            "--prompt",
            "2+2=",
            "--max-tokens",
            "12",
        ];
        ponder(&[&base[..], extra].concat()).0
    };
    let greedy = gen(&["--temperature", "0"]);
    assert_eq!(
        gen(&["--temperature", "1", "--top-k", "1", "--seed", "5"]),
        greedy
    );
    assert_ne!(gen(&["--temperature", "1", "--seed", "5"]), greedy);
    let solve = |extra: &[&str]| {
        let base = [
            "solve",
            "--method",
            "baseline",
            "--model",
            "synthetic:tiny",
            "--question",
            "2+2?",
            "--votes",
            "2",
            "--max-tokens",
            "8",
            "--answer-tokens",
            "2",
            "--json",
        ];
        let out: serde_json::Value =
            serde_json::from_str(&ponder(&[&base[..], extra].concat()).0).unwrap();
        let votes = out["votes"].as_array().unwrap().clone();
        votes
            .iter()
            .map(|v| v["text"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (a, b) = (
        solve(&["--top-k", "1", "--seed", "1"]),
        solve(&["--top-k", "1", "--seed", "2"]),
    );
    assert_eq!(a, b, "one token to choose from: the seed does not matter");
    assert_eq!(a[0], a[1], "nor the vote");
    let c = solve(&["--seed", "1"]);
    assert_ne!(c, a, "without --top-k the votes are drawn");
}

/// A job array larger than the data: the shards with nothing to run succeed, leaving their
/// folders empty, and `ponder report` merges every folder into the report of the whole.
#[test]
fn an_array_larger_than_the_data_still_merges() {
    let root = std::env::temp_dir().join(format!("ponder-array-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let base = [
        "eval",
        "--model",
        "synthetic:tiny",
        "--method",
        "baseline",
        "--votes",
        "1",
        "--max-tokens",
        "2",
        "--answer-tokens",
        "1",
        "--limit",
        "2",
    ];
    let mut dirs = Vec::new();
    for i in 0..4 {
        let d = root.join(format!("s{i}"));
        let shard = format!("{i}/4");
        let (_, err) = ponder(
            &[
                &base[..],
                &["--shard", &shard, "--out", d.to_str().unwrap()],
            ]
            .concat(),
        );
        if i >= 2 {
            assert!(
                err.contains("none of them") && err.contains("stays empty"),
                "{err}"
            );
            assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "nothing written");
        }
        dirs.push(d.to_str().unwrap().to_string());
    }
    // A shard with nothing to run refuses a folder that holds a run (it checks nothing
    // against it, and a merge would take its results).
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args([&base[..], &["--shard", "3/4", "--out", &dirs[0]]].concat())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("exists: give this shard an empty --out"),
        "{err}"
    );
    let merged = root.join("merged");
    let mut args = vec!["report"];
    args.extend(dirs.iter().map(String::as_str));
    args.extend(["--out", merged.to_str().unwrap()]);
    ponder(&args);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary[0]["n"], 2, "{summary}");
    let md = std::fs::read_to_string(merged.join("report.md")).unwrap();
    assert!(
        md.contains(&format!("- Merged from: {}", dirs.join(", "))),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A prompt file's byte-order mark is no part of the prompt: with and without one, generate
/// reads the same prompt and writes the same text.
#[test]
fn generate_drops_a_prompt_files_byte_order_mark() {
    let dir = std::env::temp_dir().join(format!("ponder-bom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |bytes: &[u8], name: &str| {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        let (out, err) = ponder(&[
            "generate",
            "--model",
            "synthetic:tiny",
            "--prompt-file",
            f.to_str().unwrap(),
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ]);
        let prompt = err
            .split(": ")
            .nth(1)
            .and_then(|t| t.split(" prompt").next())
            .map(str::to_string);
        (out, prompt, err)
    };
    let plain = run(b"The capital of France is", "plain.txt");
    let bom = run(b"\xef\xbb\xbfThe capital of France is", "bom.txt");
    assert_eq!(plain.0, bom.0);
    assert!(plain.1.is_some(), "{}", plain.2);
    assert_eq!(plain.1, bom.1, "{}", bom.2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `solve --json` says, for Quiet-STaR, where its thought markers came from (as the text
/// output's "thought markers" line does), and the baseline's has no such field.
#[test]
fn solve_json_names_the_thought_markers_origin() {
    let json = |method: &str| -> serde_json::Value {
        let (out, _) = ponder(&[
            "solve",
            "--method",
            method,
            "--model",
            "synthetic:tiny",
            "--question",
            Q,
            "--votes",
            "1",
            "--max-tokens",
            "3",
            "--answer-tokens",
            "1",
            "--json",
        ]);
        serde_json::from_str(&out).unwrap()
    };
    let q = json("quiet-star");
    assert!(
        q["thought_markers"]
            .as_str()
            .unwrap()
            .starts_with("initialised"),
        "{q}"
    );
    assert_eq!(q["method"], "quiet-star");
    assert!(json("baseline").get("thought_markers").is_none());
}
