//! A write to results.jsonl that fails part-way (a full disk, here a file-size limit) ends the
//! eval with a one-line error and leaves only whole records behind: the part of the line it
//! wrote is cut away, so a later append cannot glue itself onto it, `report` reads the file
//! without a torn line, and `--resume` completes the run with the same results as one that
//! never failed. The limit is `ulimit -f` with SIGXFSZ ignored, so the kernel writes up to
//! the limit and then refuses, on every Linux machine.
#![cfg(target_os = "linux")]
use std::path::{Path, PathBuf};
use std::process::Command;

const ARGS: &[&str] = &[
    "eval",
    "--device",
    "cpu",
    "--model",
    "synthetic:tiny",
    "--method",
    "baseline",
    "--votes",
    "2",
    "--max-tokens",
    "12",
    "--answer-tokens",
    "3",
    "--limit",
    "5",
    "--in-flight",
    "2",
    "--out",
];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ponder-wfail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `ponder ARGS dir extra…` in bash, with a file-size limit of `limit_kb` KiB when given.
fn eval(dir: &Path, extra: &[&str], limit_kb: Option<u32>) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_ponder");
    let mut args: Vec<String> = ARGS.iter().map(|a| format!("'{a}'")).collect();
    args.push(format!("'{}'", dir.display()));
    args.extend(extra.iter().map(|a| format!("'{a}'")));
    let limit = limit_kb.map_or(String::new(), |l| format!("trap '' XFSZ; ulimit -f {l}; "));
    Command::new("bash")
        .arg("-c")
        .arg(format!("{limit}exec '{bin}' {}", args.join(" ")))
        .output()
        .expect("run ponder")
}

/// The records without their wall times, sorted by row.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let mut v: Vec<serde_json::Value> = text
        .lines()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a line that is no record ({e}): {l:?}"));
            r.as_object_mut().unwrap().remove("seconds");
            r
        })
        .collect();
    v.sort_by_key(|r| r["index"].as_u64().unwrap());
    v
}

#[test]
fn a_failed_write_leaves_whole_records_and_the_run_resumes() {
    let whole = tmp("whole");
    assert!(eval(&whole, &[], None).status.success());
    let want = records(&whole);
    assert_eq!(want.len(), 5);
    // A record of this run is about 740 bytes: 2 KiB holds two and cuts the third short.
    let line = std::fs::read_to_string(whole.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(str::len)
        .max()
        .unwrap();
    assert!((683..1024).contains(&line), "records are {line} bytes");

    let cut = tmp("cut");
    let out = eval(&cut, &[], Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.starts_with("error: cannot write") && last.contains("results.jsonl"),
        "{err}"
    );
    // Only whole lines are left, and the records that made it are the uninterrupted run's.
    let text = std::fs::read_to_string(cut.join("results.jsonl")).unwrap();
    assert!(text.ends_with('\n'), "a torn tail was left: {text:?}");
    let kept = records(&cut);
    assert!((1..5).contains(&kept.len()), "{} records kept", kept.len());
    for r in &kept {
        assert!(want.contains(r), "a kept record differs: {r}");
    }
    let report = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .arg("report")
        .arg(&cut)
        .output()
        .unwrap();
    assert!(report.status.success());
    assert!(
        !String::from_utf8_lossy(&report.stderr).contains("torn"),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );

    // With room again, --resume completes the run: the same five records.
    assert!(eval(&cut, &["--resume"], None).status.success());
    assert_eq!(records(&cut), want);
}
