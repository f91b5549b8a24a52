//! KV storage that does not fit: an allocation the system refuses is a one-line error (not
//! an abort), and an evaluation whose problems in flight do not fit runs fewer of them at a
//! time with unchanged results. The memory limit is the address-space rlimit (`ulimit -v`),
//! so the allocator's refusal is the same on every Linux machine.
#![cfg(target_os = "linux")]
use std::process::{Command, Output};

/// 1.5 GB of address space: ponder and synthetic:tiny need a few hundred MB.
const LIMIT_KB: &str = "1500000";

fn ponder_limited(limit_kb: Option<&str>, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_ponder");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let ulimit = limit_kb.map_or(String::new(), |l| format!("ulimit -v {l}; "));
    Command::new("sh")
        .arg("-c")
        .arg(format!("{ulimit}exec '{bin}' {}", quoted.join(" ")))
        // Bounded thread count and malloc arenas, so that the limit leaves the same room on
        // a machine with many cores.
        .env("RAYON_NUM_THREADS", "2")
        .env("MALLOC_ARENA_MAX", "2")
        .output()
        .expect("run ponder")
}

#[test]
fn a_kv_cache_the_system_refuses_is_a_one_line_error() {
    // 200000 pages of synthetic:tiny: 1.6 GB of K and V.
    let out = ponder_limited(
        Some(LIMIT_KB),
        &[
            "solve",
            "--model",
            "synthetic:tiny",
            "--method",
            "baseline",
            "--votes",
            "1",
            "--max-tokens",
            "2",
            "--kv-pages",
            "200000",
            "--question",
            "1+1?",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("cannot be allocated"),
        "{err}"
    );
}

#[test]
fn problems_in_flight_that_do_not_fit_run_fewer_at_a_time_with_the_same_results() {
    let base = std::env::temp_dir().join(format!("ponder-kv-memory-{}", std::process::id()));
    let run = |limit: Option<&str>, name: &str| -> (String, Vec<serde_json::Value>) {
        let dir = base.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        // 100000 pages per problem: 0.8 GB each, so two do not fit under the limit.
        let out = ponder_limited(
            limit,
            &[
                "eval",
                "--model",
                "synthetic:tiny",
                "--method",
                "baseline",
                "--limit",
                "2",
                "--in-flight",
                "2",
                "--kv-pages",
                "100000",
                "--votes",
                "2",
                "--max-tokens",
                "8",
                "--answer-tokens",
                "2",
                "--out",
                dir.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{name}: {err}");
        let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
        let mut recs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        recs.sort_by_key(|r| r["index"].as_u64());
        (err, recs)
    };
    let (err, limited) = run(Some(LIMIT_KB), "limited");
    assert!(err.contains("1 problem(s) in flight instead of 2"), "{err}");
    let (_, free) = run(None, "free");
    let _ = std::fs::remove_dir_all(&base);
    assert_eq!(limited.len(), 2);
    for (a, b) in limited.iter().zip(&free) {
        for key in ["index", "prediction", "flops", "votes"] {
            assert_eq!(a[key], b[key], "{key}");
        }
    }
}
