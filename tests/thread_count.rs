//! The CPU backend's results do not depend on how many threads it has: a researcher who runs
//! a method on a laptop and again on a 64-core server, same seed, gets the same answers,
//! texts, scores and FLOPs. Every op computes each output in one fixed order (the rows are
//! split among threads, a row's sum never is), so this holds by construction; this test
//! keeps it so end to end, through the CLI.
//!
//! A sampled token changes only when a draw lands within a last bit of a boundary, so the
//! baseline and Quiet-STaR runs would rarely show a changed sum; REBASE and the combined
//! method print every PRM score in full (a softmax of the logits), where any changed bit
//! shows. tests/pass_threads.rs compares the logits themselves, bit for bit, in pools of 1
//! and 3 threads.
//!
//! The model is synthetic:smollm2-135m, large enough that its matmuls and attention split
//! into many tasks (synthetic:tiny's fit in few); rayon groups the tasks differently on 1
//! thread and on 3.
use std::process::Command;

/// `ponder solve --json` with RAYON_NUM_THREADS set, less the fields a clock gives.
fn solve(method: &str, threads: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args([
            "solve",
            "--model",
            "synthetic:smollm2-135m",
            "--method",
            method,
            "--question",
            "Tom has 3 apples and buys 4 more. How many apples does he have?",
            "--seed",
            "7",
            "--answer-tokens",
            "2",
            "--json",
        ])
        .args(if method == "rebase" || method == "combined" {
            &["--width", "2", "--step-tokens", "4", "--path-tokens", "12"][..]
        } else {
            &["--votes", "2", "--max-tokens", "6"][..]
        })
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .expect("run ponder");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{method}, {threads} threads: {err}");
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("solve --json");
    strip_clock(&mut v);
    v
}

/// Removes every `seconds` field, at any depth.
fn strip_clock(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("seconds");
            m.values_mut().for_each(strip_clock);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_clock),
        _ => {}
    }
}

#[test]
fn every_method_gives_the_same_result_on_one_thread_and_on_three() {
    for method in ["baseline", "quiet-star", "rebase", "combined"] {
        let one = solve(method, "1");
        let three = solve(method, "3");
        // Not vacuous: the run generated text and counted FLOPs.
        assert!(one["generated_tokens"].as_u64().unwrap() > 0, "{one}");
        assert!(one["flops"].is_object(), "{one}");
        assert_eq!(one, three, "{method}: 1 thread against 3");
    }
}
