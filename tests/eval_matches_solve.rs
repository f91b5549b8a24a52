//! An evaluation's record of a problem is what `ponder solve` gives for that question with the
//! problem's seed: the same answer, votes, tree, token counts and FLOPs, phase by phase —
//! alone and with problems in flight (their shared passes split among them). This ties the
//! per-problem accounts of eval (a thread-local each worker installs, carried to wherever a
//! pass runs) to solve's plain ledger: a pass whose costs went to the wrong ledger would make
//! a record's FLOPs differ from solve's.
use std::process::Command;

/// Every method's settings, small enough for synthetic:tiny to run in seconds.
const SETTINGS: &[&str] = &[
    "--model",
    "synthetic:tiny",
    "--votes",
    "2",
    "--width",
    "2",
    "--max-tokens",
    "10",
    "--answer-tokens",
    "3",
    "--step-tokens",
    "5",
    "--path-tokens",
    "15",
];
const METHODS: [&str; 4] = ["baseline", "quiet-star", "rebase", "combined"];
const SEED: u64 = 3;

/// stdout and stderr of a run that must succeed.
fn ponder(args: &[&str]) -> (Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .output()
        .expect("run ponder");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {err}");
    (out.stdout, err)
}

/// The default data's first rows' questions.
fn questions(n: usize) -> Vec<String> {
    let data = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/default-problems.jsonl"),
    )
    .unwrap();
    data.lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["question"].as_str().unwrap().to_string()
        })
        .collect()
}

/// What solve says for row `index`'s question, with the seed eval gives that row.
fn solved(method: &str, question: &str, index: u64) -> serde_json::Value {
    let seed = ponder::rng::mix64(SEED ^ ponder::rng::mix64(index)).to_string();
    let mut args = vec!["solve", "--method", method, "--question", question];
    args.extend_from_slice(&["--seed", &seed, "--json"]);
    args.extend_from_slice(SETTINGS);
    serde_json::from_slice(&ponder(&args).0).expect("solve --json")
}

/// eval's records, keyed by (method, row).
fn evaluated(in_flight: &str) -> Vec<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!(
        "ponder-eval-matches-solve-{in_flight}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let seed = SEED.to_string();
    let mut args = vec!["eval", "--method", "all", "--limit", "2", "--seed", &seed];
    args.extend_from_slice(&["--in-flight", in_flight, "--out", dir.to_str().unwrap()]);
    args.extend_from_slice(SETTINGS);
    let (_, said) = ponder(&args);
    if in_flight != "1" {
        // The problems did share passes: otherwise this is one at a time again.
        let shared = said
            .lines()
            .find(|l| l.contains("ran several problems together"))
            .and_then(|l| {
                l.strip_prefix("ponder: ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no sharing line in: {said}"));
        assert!(shared >= 1, "{said}");
    }
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What a record keeps of solve's tree: its depth, steps (nodes but the root), leaves and
/// dropped steps.
fn tree_summary(tree: &serde_json::Value) -> serde_json::Value {
    let nodes = tree.as_array().unwrap();
    let count = |f: &str| nodes.iter().filter(|n| n[f] == true).count();
    serde_json::json!({
        "depth": nodes.iter().map(|n| n["depth"].as_u64().unwrap()).max(),
        "steps": nodes.len() - 1,
        "leaves": count("leaf"),
        "dropped": count("dropped"),
    })
}

#[test]
fn an_eval_record_is_what_solve_gives_for_its_question_and_seed() {
    let qs = questions(2);
    let want: Vec<(&str, u64, serde_json::Value)> = METHODS
        .iter()
        .flat_map(|&m| (0..2u64).map(move |i| (m, i)))
        .map(|(m, i)| (m, i, solved(m, &qs[i as usize], i)))
        .collect();
    for in_flight in ["1", "2"] {
        let records = evaluated(in_flight);
        assert_eq!(records.len(), want.len(), "in flight {in_flight}");
        for (method, index, s) in &want {
            let r = records
                .iter()
                .find(|r| r["method"] == *method && r["index"] == *index)
                .unwrap_or_else(|| panic!("no record of {method} row {index}"));
            let at = format!("{method} row {index}, in flight {in_flight}");
            assert_eq!(r["prediction"], s["answer"], "{at}");
            assert_eq!(r["votes"], s["votes"], "{at}");
            if method.contains("rebase") || *method == "combined" {
                assert_eq!(r["tree"], tree_summary(&s["tree"]), "{at}");
            } else {
                assert!(r["tree"].is_null() && s.get("tree").is_none(), "{at}");
            }
            for f in [
                "prompt_tokens",
                "generated_tokens",
                "thought_tokens",
                "prm_tokens",
                "study_flops",
            ] {
                assert_eq!(r[f], s[f], "{at}: {f}");
            }
            assert_eq!(r["flops"], s["flops"]["useful"], "{at}");
            assert_eq!(r["flops_executed"], s["flops"]["executed"], "{at}");
            assert_eq!(r["flops_by_phase"], s["flops"]["useful_by_phase"], "{at}");
            // Not vacuous: the passes themselves were counted, not only the sampling.
            let phases = &r["flops_by_phase"];
            assert!(phases["prefill"].as_u64().unwrap() > 0, "{at}: {phases}");
            assert!(phases["decode"].as_u64().unwrap() > 0, "{at}: {phases}");
        }
    }
}
