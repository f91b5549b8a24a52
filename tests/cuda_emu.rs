//! The whole CUDA backend on the CUDA emulator (docs/cuda-emulator.md), through the CLI, on
//! machines without a GPU: every method end to end (`ponder solve --device cuda-emu`) and an
//! evaluation with two problems in flight (their forward passes batched on the backend).
//!
//! Both backends hold synthetic:tiny's bf16 weights, but the CUDA backend keeps KV and
//! GEMM inputs in bf16 where the CPU backend computes in f32, so the sampled tokens differ; with `--fixed-lengths` the amount of work does not: the prompt, generated
//! and thought token counts and the study's formula must equal the CPU backend's. (Exact
//! useful FLOPs of the same shapes are compared op by op in tests/backend_dual/; here the
//! texts differ, and with them e.g. the trailing whitespace the answer phase trims.)
#![cfg(feature = "cuda")]
use serde_json::Value;
use std::process::Command;

const Q: &str = "Tom has 3 apples and buys 4 more. How many apples does he have?";

fn ponder(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .output()
        .expect("run ponder");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn solve(method: &str, device: &str) -> Value {
    solve_with(
        method,
        device,
        &["--votes", "2", "--max-tokens", "12", "--answer-tokens", "4"],
    )
}

/// `ponder solve --json` on synthetic:tiny with fixed lengths and `sizes` (votes and token
/// limits).
fn solve_with(method: &str, device: &str, sizes: &[&str]) -> Value {
    let mut args = vec![
        "solve",
        "--method",
        method,
        "--model",
        "synthetic:tiny",
        "--device",
        device,
        "--fixed-lengths",
        "--width",
        "3",
        "--step-tokens",
        "6",
        "--path-tokens",
        "18",
        "--question",
        Q,
        "--json",
    ];
    args.extend_from_slice(sizes);
    let (ok, stdout, stderr) = ponder(&args);
    assert!(ok, "{method} on {device} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{method} on {device}: {e}: {stdout}"))
}

#[test]
fn every_method_runs_on_the_emulated_cuda_backend_with_the_cpu_workload() {
    for method in ["baseline", "quiet-star", "rebase", "combined"] {
        let cpu = solve(method, "cpu");
        let emu = solve(method, "cuda-emu");
        assert_eq!(emu["method"], method);
        for key in [
            "prompt_tokens",
            "generated_tokens",
            "thought_tokens",
            "study_flops",
        ] {
            assert_eq!(emu[key], cpu[key], "{method}: {key}");
        }
        let n = |v: &Value| v.as_array().map_or(0, |a| a.len());
        let (votes, leaves) = (&emu["votes"], &emu["leaves"]);
        assert_eq!(n(votes) + n(leaves), n(&cpu["votes"]) + n(&cpu["leaves"]));
        assert!(n(votes) + n(leaves) > 0, "{method}: no votes or leaves");
        for phase in ["prefill", "decode", "sample"] {
            assert!(
                emu["flops"]["useful_by_phase"][phase].as_u64().unwrap() > 0,
                "{method}: no {phase} FLOPs on the emulator"
            );
        }
        if method == "quiet-star" || method == "combined" {
            assert!(emu["thought_tokens"].as_u64().unwrap() > 0);
            assert!(emu["flops"]["useful_by_phase"]["mix"].as_u64().unwrap() > 0);
        }
        if method == "rebase" || method == "combined" {
            assert!(emu["prm_tokens"].as_u64().unwrap() > 0);
        }
    }
}

/// Quiet-STaR's parallel mode runs its depth blocks through attn_prefill's thought-diagonal
/// mask: the same thought workload as on the CPU, and a thought at every position.
#[test]
fn quiet_star_parallel_mode_runs_on_the_emulated_cuda_backend() {
    // Small: the emulator runs every position's thought of every step.
    let small = ["--votes", "1", "--max-tokens", "3", "--answer-tokens", "1"];
    let par = [&small[..], &["--quiet-mode", "parallel"]].concat();
    let cpu = solve_with("quiet-star", "cpu", &par);
    let emu = solve_with("quiet-star", "cuda-emu", &par);
    let inc = solve_with("quiet-star", "cuda-emu", &small);
    for key in ["prompt_tokens", "generated_tokens", "thought_tokens"] {
        assert_eq!(emu[key], cpu[key], "parallel: {key}");
    }
    let thought = |v: &Value| v["thought_tokens"].as_u64().unwrap();
    let prompt = emu["prompt_tokens"].as_u64().unwrap();
    assert!(
        thought(&emu) > thought(&inc) * prompt / 2,
        "parallel thinks at every position: {} vs {} thought tokens",
        thought(&emu),
        thought(&inc)
    );
}

/// The CUDA backend is batch-invariant (docs/cuda.md): a pool small enough to preempt and
/// one sequence per pass give the votes of the default, token for token, for a method that
/// forks (baseline) and one that prunes (REBASE).
#[test]
fn batching_and_preemption_change_no_token_on_the_emulated_cuda_backend() {
    let votes = |v: &Value| -> Vec<(Value, Value)> {
        v["votes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["text"].clone(), x["scores"].clone()))
            .collect()
    };
    for (method, small) in [("baseline", "12"), ("rebase", "10")] {
        let sizes = ["--votes", "3", "--max-tokens", "40", "--answer-tokens", "4"];
        let with = |extra: &[&str]| {
            let mut a = sizes.to_vec();
            a.extend_from_slice(extra);
            solve_with(method, "cuda-emu", &a)
        };
        let base = with(&[]);
        let preempted = with(&["--kv-pages", small]);
        let one_by_one = with(&["--max-batch", "1"]);
        assert_eq!(votes(&base), votes(&preempted), "{method}: a small pool");
        assert_eq!(votes(&base), votes(&one_by_one), "{method}: --max-batch 1");
        assert!(
            preempted["flops"]["useful"].as_u64() > base["flops"]["useful"].as_u64(),
            "{method}: the small pool recomputed nothing"
        );
    }
}

#[test]
fn an_evaluation_with_problems_in_flight_runs_on_the_emulated_cuda_backend() {
    let dir = std::env::temp_dir().join(format!("ponder-emu-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Two problems of the default data, baseline and REBASE, `in_flight` at a time; the records.
    let eval = |out: &std::path::Path, in_flight: &str| -> Vec<Value> {
        let (ok, _, stderr) = ponder(&[
            "eval",
            "--device",
            "cuda-emu",
            "--model",
            "synthetic:tiny",
            "--quick",
            "--limit",
            "2",
            "--in-flight",
            in_flight,
            "--method",
            "baseline,rebase",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "eval failed: {stderr}");
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let rows = eval(&dir, "2");
    assert_eq!(rows.len(), 4, "2 problems × 2 methods");
    for r in &rows {
        assert!(r["flops"].as_u64().unwrap_or(0) > 0, "{r}");
    }
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(
        summary.contains("cuda-emu"),
        "the summary names the backend"
    );
    // One problem at a time gives the same answers, votes and useful FLOPs (batch
    // invariance: the two problems' shared passes change no row's bits).
    let alone = eval(&dir.join("alone"), "1");
    let key = |r: &Value| {
        (
            r["method"].to_string(),
            r["index"].to_string(),
            r["prediction"].to_string(),
            r["flops"].to_string(),
            r["votes"].to_string(),
        )
    };
    let mut together: Vec<_> = rows.iter().map(key).collect();
    let mut one: Vec<_> = alone.iter().map(key).collect();
    together.sort();
    one.sort();
    assert_eq!(together, one, "--in-flight 2 against 1");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same work costs the same exact useful FLOPs on both backends, end to end: 24 greedy
/// tokens after the same prompt (the token values may differ, the shapes do not).
#[test]
fn generate_costs_the_same_useful_flops_on_both_backends() {
    let run = |device: &str| {
        let (ok, _, stderr) = ponder(&[
            "generate",
            "--model",
            "synthetic:tiny",
            "--device",
            device,
            "--prompt",
            "The answer is",
            "--max-tokens",
            "24",
            "--temperature",
            "0",
            "--flops",
        ]);
        assert!(ok, "generate on {device}: {stderr}");
        assert!(
            stderr.contains("24 generated tokens") && stderr.contains("finish Length"),
            "{device} did not run to the limit: {stderr}"
        );
        let line = stderr
            .lines()
            .find(|l| l.starts_with("exact useful FLOPs:"))
            .unwrap_or_else(|| panic!("no FLOP line: {stderr}"))
            .to_string();
        line.split(';').next().unwrap().to_string()
    };
    assert_eq!(run("cuda-emu"), run("cpu"));
}

#[test]
fn check_compares_the_emulated_cuda_forward_pass_with_the_cpus() {
    // synthetic:smollm2-135m's depth (30 layers) and GQA at a few tokens: the whole forward
    // pass, prefill and decode, within bf16's tolerance and with the CPU's useful FLOPs.
    let args = [
        "check",
        "--model",
        "synthetic:smollm2-135m",
        "--device",
        "cuda-emu",
        "--tokens",
        "20",
        "--steps",
        "2",
        "--batch",
        "2",
        "--tol",
        "0.05",
    ];
    let (ok, stdout, stderr) = ponder(&args);
    assert!(ok, "check failed: {stderr}\n{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("prefill")),
        "{stdout}"
    );
    assert!(stdout.contains("step 2"), "{stdout}");
    let flops = stdout
        .lines()
        .find(|l| l.starts_with("useful FLOPs: cpu "))
        .expect("a FLOP line");
    let nums: Vec<&str> = flops
        .split_whitespace()
        .filter(|w| w.parse::<u64>().is_ok())
        .collect();
    assert_eq!(nums.len(), 2, "{flops}");
    assert_eq!(nums[0], nums[1], "{flops}");
    assert_eq!(stdout.lines().last(), Some("ok"));
    // The check can fail: bf16 never matches f32 to 1e-6, and the error is one line.
    let (ok, _, stderr) = ponder(&[
        "check",
        "--model",
        "synthetic:tiny",
        "--device",
        "cuda-emu",
        "--tol",
        "1e-6",
    ]);
    assert!(!ok, "a 1e-6 tolerance must fail");
    assert!(stderr.contains("differs from the CPU"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // The CPU is what check compares with: not a value of its --device.
    let (ok, _, stderr) = ponder(&["check", "--device", "cpu"]);
    assert!(
        !ok && stderr.contains("invalid value 'cpu'") && stderr.contains("auto, cuda, cuda-emu"),
        "{stderr}"
    );
}
