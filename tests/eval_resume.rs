//! `ponder eval` killed mid-run and resumed ends with the same results and report as an
//! uninterrupted run with the same seed; malformed data lines are reported, not fatal.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ARGS: &[&str] = &[
    "eval",
    "--model",
    "synthetic:smollm2-135m",
    "--method",
    "baseline,rebase",
    "--votes",
    "2",
    "--width",
    "2",
    "--max-tokens",
    "12",
    "--answer-tokens",
    "3",
    "--step-tokens",
    "6",
    "--path-tokens",
    "12",
    "--seed",
    "5",
];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ponder-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn ponder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ponder"))
}

/// Runs `cmd` with its output discarded and asserts that it succeeded.
fn succeeds(cmd: &mut Command) {
    let st = cmd
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd:?} failed: {st}");
}

fn lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// summary.json without its wall-time columns (they differ between runs).
fn summary(d: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    for s in v.as_array_mut().unwrap() {
        s.as_object_mut()
            .unwrap()
            .retain(|k, _| !k.contains("seconds"));
    }
    v
}

/// The results without wall times, keyed and sorted, as comparable JSON.
fn results(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let mut v: Vec<serde_json::Value> = text
        .lines()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
            r.as_object_mut().unwrap().remove("seconds");
            r
        })
        .collect();
    v.sort_by_key(|r| {
        (
            r["method"].as_str().unwrap().to_string(),
            r["index"].as_u64().unwrap(),
        )
    });
    v
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    killed_and_resumed(&[]);
}

/// The same with two problems in flight: the kill may land between them, and the resumed run
/// pairs the problems differently, yet every result and the report are the same.
#[test]
fn killed_and_resumed_with_problems_in_flight() {
    killed_and_resumed(&["--in-flight", "2"]);
}

fn killed_and_resumed(extra: &[&str]) {
    let tag = if extra.is_empty() { "" } else { "-inflight" };
    let whole = tmp(&format!("whole{tag}"));
    succeeds(
        ponder()
            .args(ARGS)
            .args(["--limit", "4", "--out"])
            .arg(&whole),
    );
    assert_eq!(lines(&whole), 8);

    let cut = tmp(&format!("cut{tag}"));
    let mut child = ponder()
        .args(ARGS)
        .args(extra)
        .args(["--limit", "4", "--out"])
        .arg(&cut)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while lines(&cut) < 2 && t0.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = lines(&cut);
    assert!(
        (2..8).contains(&partial),
        "the kill came too late ({partial} results)"
    );
    // A report of the stopped folder says so, rather than reporting it as finished.
    let rep = ponder()
        .args(["report"])
        .arg(&cut)
        .arg("--out")
        .arg(cut.with_extension("report"))
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&rep.stdout);
    assert!(
        md.contains("never finished") && md.contains("planned"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(cut.with_extension("report"));

    // Without --resume the folder is refused; with it the run completes.
    let out = ponder()
        .args(ARGS)
        .args(["--limit", "4", "--out"])
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    succeeds(
        ponder()
            .args(ARGS)
            .args(extra)
            .args(["--limit", "4", "--resume", "--out"])
            .arg(&cut),
    );
    assert_eq!(results(&cut), results(&whole));
    // The report agrees too, but for wall times.
    assert_eq!(summary(&cut), summary(&whole));
    let _ = std::fs::remove_dir_all(&whole);
    let _ = std::fs::remove_dir_all(&cut);
}

/// Problems in flight together (shared forward passes, per-problem KV ranges) give every
/// problem the same answers, texts, tokens and exact FLOPs as one problem at a time, for all
/// four methods (Quiet-STaR's thought markers go through the shared passes as embeddings).
#[test]
fn problems_in_flight_match_one_at_a_time() {
    let run = |k: &str| {
        let dir = tmp(&format!("inflight{k}"));
        let out = ponder()
            .args([
                "eval",
                "--model",
                "synthetic:tiny",
                "--method",
                "all",
                "--votes",
                "3",
                "--width",
                "3",
                "--max-tokens",
                "24",
                "--answer-tokens",
                "3",
                "--step-tokens",
                "8",
                "--path-tokens",
                "24",
                "--limit",
                "4",
                "--kv-pages",
                "40",
                "--in-flight",
                k,
                "--out",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = results(&dir);
        let s = summary(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        (r, s, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (one, s1, _) = run("1");
    let (three, s3, said) = run("3");
    assert_eq!(one.len(), 16);
    assert!(one.iter().all(|r| r["flops"].as_u64().unwrap() > 0));
    assert_eq!(one, three);
    assert_eq!(s1, s3);
    // And the three did share passes: the equality above is not that of three runs in turn.
    let most = said
        .split_once("ran several problems together (up to ")
        .and_then(|(_, t)| t.split(' ').next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no sharing line in: {said}"));
    assert!(most >= 2, "{said}");
}

#[test]
fn a_torn_last_line_is_dropped_on_resume() {
    let dir = tmp("torn");
    let mut a = ARGS.to_vec();
    a[4] = "baseline";
    succeeds(ponder().args(&a).args(["--limit", "1", "--out"]).arg(&dir));
    let path = dir.join("results.jsonl");
    let resume = || {
        succeeds(
            ponder()
                .args(&a)
                .args(["--limit", "2", "--resume", "--out"])
                .arg(&dir),
        );
    };
    let report = || ponder().arg("report").arg(&dir).output().unwrap();
    let whole = std::fs::read_to_string(&path).unwrap();
    let mut text = whole.clone();
    text.push_str("{\"method\":\"baseline\",\"bud");
    std::fs::write(&path, &text).unwrap();
    // The report counts the one whole record and says what it leaves out.
    let rep = report();
    let err = String::from_utf8_lossy(&rep.stderr);
    assert!(rep.status.success(), "{err}");
    assert!(
        err.contains("ignoring a torn last line") && err.contains("(25 bytes"),
        "{err}"
    );
    assert_eq!(summary(&dir)[0]["n"], 1);
    resume();
    assert_eq!(lines(&dir), 2);
    // A whole record whose newline never reached the disk still counts: the report keeps
    // it, and a resume adds the newline instead of rerunning the problem.
    let two = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, two.trim_end_matches('\n')).unwrap();
    let rep = report();
    assert!(rep.status.success());
    assert!(!String::from_utf8_lossy(&rep.stderr).contains("torn"));
    assert_eq!(summary(&dir)[0]["n"], 2);
    resume();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        two,
        "nothing rerun, newline back"
    );
    assert!(two.starts_with(&whole));
    // A record ponder never writes (edited by hand, or by another tool) is refused by name.
    let rec: serde_json::Value = serde_json::from_str(whole.trim_end()).unwrap();
    for (field, value, says) in [
        ("method", serde_json::json!("zzz"), "unknown method \"zzz\""),
        // It would parse, but key and group as a method of its own: counted twice.
        ("method", serde_json::json!("baseline "), "not written as"),
        ("budget", serde_json::json!(0), "budget 0"),
        ("seconds", serde_json::json!(-1.0), "seconds -1"),
        // The report counts `correct` as written: it must agree with prediction and gold.
        (
            "correct",
            serde_json::json!(!rec["correct"].as_bool().unwrap()),
            "grades",
        ),
        (
            "gold",
            serde_json::json!("abc"),
            "gold \"abc\" is not a number",
        ),
        // The phases split the total: a total edited alone no longer adds up.
        (
            "flops",
            serde_json::json!(u64::MAX),
            "is not the sum of flops_by_phase",
        ),
    ] {
        let mut bad = rec.clone();
        bad[field] = value;
        std::fs::write(&path, format!("{bad}\n")).unwrap();
        let rep = report();
        let err = String::from_utf8_lossy(&rep.stderr);
        assert_eq!(rep.status.code(), Some(1), "{field}: {err}");
        assert!(
            err.contains("line 1 is not a result record") && err.contains(says),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_data_lines_are_reported_with_line_numbers() {
    let dir = tmp("malformed");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        "{\"question\":\"What is 2 plus 2?\",\"answer\":\"#### 4\"}\n{oops\n",
    )
    .unwrap();
    let out = ponder()
        .args([
            "eval",
            "--model",
            "synthetic:tiny",
            "--method",
            "baseline",
            "--votes",
            "1",
            "--max-tokens",
            "4",
            "--answer-tokens",
            "2",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 malformed line(s)") && err.contains("2 ("),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shards_merge_into_the_unsharded_report_and_overlaps_are_refused() {
    let base = [
        "eval",
        "--model",
        "synthetic:tiny",
        "--method",
        "baseline,rebase",
        "--votes",
        "2",
        "--width",
        "2",
        "--max-tokens",
        "8",
        "--answer-tokens",
        "2",
        "--step-tokens",
        "4",
        "--path-tokens",
        "8",
        "--seed",
        "9",
    ];
    let whole = tmp("shard-whole");
    succeeds(ponder().args(base).arg("--out").arg(&whole));
    let (s0, s1) = (tmp("shard0"), tmp("shard1"));
    for (i, d) in [(0, &s0), (1, &s1)] {
        succeeds(
            ponder()
                .args(base)
                .args(["--shard", &format!("{i}/2"), "--out"])
                .arg(d),
        );
    }
    let merged = tmp("shard-merged");
    let out = ponder()
        .arg("report")
        .arg(&s0)
        .arg(&s1)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&merged), summary(&whole));
    let out = ponder()
        .arg("report")
        .arg(&s0)
        .arg(&whole)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("both hold") && err.lines().count() == 1,
        "{err}"
    );
    // A merged report never lands on a run it did not read.
    let before = std::fs::read_to_string(whole.join("report.md")).unwrap();
    let out = ponder()
        .arg("report")
        .arg(&s0)
        .arg("--out")
        .arg(&whole)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("holds results that are not among the folders read"));
    assert_eq!(
        std::fs::read_to_string(whole.join("report.md")).unwrap(),
        before
    );
    for d in [whole, s0, s1, merged] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `--resume` continues one experiment: other settings (the seed, the KV pool, the data) are
/// refused with the field named, and nothing is added to the results; a new method or a
/// larger --limit with the same settings goes on. `ponder report` refuses to merge folders of
/// different runs the same way.
#[test]
fn resume_with_other_settings_is_refused() {
    let dir = tmp("other-settings");
    let d = dir.to_str().unwrap();
    let base = [
        "eval",
        "--model",
        "synthetic:tiny",
        "--max-tokens",
        "4",
        "--answer-tokens",
        "2",
    ];
    let run = |extra: &[&str]| {
        let out = ponder()
            .args(base)
            .args(["--out", d])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--method", "baseline", "--limit", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(dir.join("run.json").exists());
    // The report says which settings produced it.
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("- Settings: answer-tokens 2 · data 8 rows") && md.contains("max-tokens 4"),
        "{md}"
    );
    let (code, err) = run(&[
        "--method", "baseline", "--limit", "2", "--seed", "9", "--resume",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("seed was 0, now 9"), "{err}");
    // A smaller KV pool can make the scheduler recompute sequences: the same answers, more
    // prefill FLOPs, so it is a setting of the run too.
    let (code, err) = run(&[
        "--method",
        "baseline",
        "--limit",
        "2",
        "--kv-pages",
        "12",
        "--resume",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("kv-pages was 4096, now 12"), "{err}");
    let data = dir.with_extension("jsonl");
    std::fs::write(&data, "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n").unwrap();
    let data_arg = data.to_str().unwrap();
    let (code, err) = run(&["--method", "baseline", "--data", data_arg, "--resume"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("data was 8 rows"), "{err}");
    assert_eq!(lines(&dir), 1, "a refused resume adds nothing");
    let (code, err) = run(&["--method", "baseline,rebase", "--limit", "2", "--resume"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines(&dir), 4);
    let other = tmp("other-settings-b");
    let out = ponder()
        .args(base)
        .args(["--method", "baseline", "--data", data_arg, "--out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = ponder()
        .arg("report")
        .arg(&dir)
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("come from different runs: data is"), "{err}");
    // Without run.json the records' settings cannot be checked (they name their model and
    // seed, not their token limits): a resume, even with the same settings, is refused and
    // adds nothing, and so is a report merging the folder.
    std::fs::remove_file(dir.join("run.json")).unwrap();
    let (code, err) = run(&["--method", "baseline,rebase", "--limit", "3", "--resume"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("holds results but no run.json"), "{err}");
    assert_eq!(lines(&dir), 4);
    assert!(!dir.join("run.json").exists());
    let out = ponder()
        .arg("report")
        .arg(&other)
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("holds results but no run.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
    let _ = std::fs::remove_file(&data);
}
