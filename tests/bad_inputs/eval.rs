//! Results folders and output: eval, sweep and report refuse what would mix, double-count
//! or lose results, in one line.
use super::*;

#[test]
fn a_folder_with_results_is_refused_in_one_line() {
    let dir = fresh_dir("held");
    let d = dir.to_str().unwrap();
    let args = tiny_eval(d);
    let (code, err) = ponder(&args);
    assert_eq!(code, 0, "{err}");
    // No banner before the refusal: the error is the whole of stderr.
    assert_one_line_error(&args, &["already holds results", "--resume"]);
    // A file where the results folder should be is named as such, for eval and report.
    let file = dir.join("results.jsonl");
    let f = file.to_str().unwrap();
    let mut into_file: Vec<&str> = args.to_vec();
    *into_file.last_mut().unwrap() = f;
    assert_one_line_error(&into_file, &[f, "exists and is not a directory"]);
    assert_one_line_error(
        &["report", d, "--out", f],
        &[f, "exists and is not a directory"],
    );
    // A record of a row the data does not have (the default data has 8) is refused on resume.
    let path = dir.join("results.jsonl");
    let mut rec: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
    rec["index"] = serde_json::json!(99);
    std::fs::write(&path, format!("{rec}\n")).unwrap();
    let resume: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    assert_one_line_error(&resume, &["row 99 of baseline", "the data has 8 rows"]);
    // A line of another run's results (another seed) is refused on resume, not skipped as
    // done; report names the two lines of the one folder.
    rec["index"] = serde_json::json!(0);
    let mut other = rec.clone();
    other["index"] = serde_json::json!(1);
    other["seed"] = serde_json::json!(5);
    std::fs::write(&path, format!("{rec}\n{other}\n")).unwrap();
    let mut two = resume.clone();
    two[6] = "2";
    assert_one_line_error(&two, &["another run", "baseline row 1: seed 5"]);
    assert_one_line_error(&["report", d], &["mixes results of different runs", "seed"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unused_prm_must_still_name_a_model() {
    let base = [
        "solve",
        "--method",
        "baseline",
        "--model",
        "synthetic:tiny",
        "--question",
        "x",
    ];
    for (prm, needle) in [
        ("/nonexistent", "--prm /nonexistent"),
        ("synthetic:gpt5", "gpt5"),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(["--prm", prm]).collect();
        assert_one_line_error(&args, &[needle]);
    }
}

#[test]
fn a_sweep_refuses_votes_beside_its_budgets() {
    for flag in ["--votes", "--width"] {
        let args = [
            "sweep",
            "--model",
            "synthetic:tiny",
            "--method",
            "baseline",
            "--budgets",
            "1,2",
            flag,
            "3",
            "--out",
            "/nonexistent/never-written",
        ];
        assert_one_line_error(&args, &["--budgets", flag]);
    }
}

/// A method named twice would solve and count every problem twice; a results file holding one
/// problem twice (two runs concatenated by hand) would count it twice in the report. Both
/// are refused, the second naming both lines; so is a line of a row the data lacks.
#[test]
fn a_problem_is_never_counted_twice() {
    let dir = fresh_dir("twice");
    let d = dir.to_str().unwrap();
    let tiny = [
        "--model",
        "synthetic:tiny",
        "--limit",
        "1",
        "--max-tokens",
        "4",
        "--answer-tokens",
        "2",
        "--out",
        d,
    ];
    let mut args = vec!["eval", "--method", "baseline,rebase,baseline"];
    args.extend(tiny);
    assert_one_line_error(&args, &["--method names baseline twice"]);
    assert!(!dir.join("results.jsonl").exists(), "nothing ran");
    let mut args = vec!["eval", "--method", "baseline"];
    args.extend(tiny);
    let (code, err) = ponder(&args);
    assert_eq!(code, 0, "{err}");
    let path = dir.join("results.jsonl");
    let line = std::fs::read_to_string(&path).unwrap();
    assert_eq!(line.lines().count(), 1);
    std::fs::write(&path, format!("{line}{line}")).unwrap();
    assert_one_line_error(
        &["report", d],
        &["line 2 repeats the result of line 1", "baseline", "index 0"],
    );
    let mut resume = args.clone();
    resume.push("--resume");
    // (eval announces its run on stderr first.)
    let (code, err) = ponder(&resume);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines().last().unwrap().contains("line 2 repeats"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A line whose row the run's data does not have (run.json records the row count).
    assert!(line.contains("\"index\":0,"), "{line}");
    let forged = line.replace("\"index\":0,", "\"index\":999,");
    std::fs::write(&path, format!("{line}{forged}")).unwrap();
    assert_one_line_error(&["report", d], &["names row 999", "rows (run.json)"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Output that cannot be written (stdout on a full disk or a closed pipe) is a one-line error
/// and exit 1, not `println!`'s panic; the files `solve` and `generate` had nothing to keep,
/// and eval/report write theirs before printing.
#[cfg(target_os = "linux")]
#[test]
fn stdout_that_cannot_be_written_is_a_one_line_error() {
    for args in [
        &[
            "solve",
            "--method",
            "baseline",
            "--model",
            "synthetic:tiny",
            "--question",
            "x",
            "--quick",
        ][..],
        &[
            "generate",
            "--model",
            "synthetic:tiny",
            "--prompt",
            "x",
            "--max-tokens",
            "3",
        ][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
            .args(args)
            .args(["--device", "cpu"])
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap();
        assert!(last.starts_with("error: cannot write to stdout"), "{err}");
    }
}

/// A problem too long for the model's positions is skipped with a line naming its row, as a
/// malformed data line is, and the others run (with problems in flight, too); a resume meets
/// it again and adds nothing. Data with no problem that fits is an error.
#[test]
fn a_problem_too_long_for_the_model_is_skipped() {
    let dir = fresh_dir("too-long");
    std::fs::create_dir_all(&dir).unwrap();
    let ok = |q: &str| format!("{{\"question\":\"{q}\",\"answer\":\"#### 4\"}}\n");
    // synthetic:tiny reads bytes and has 4096 positions.
    let long = ok(&"word ".repeat(2000));
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        [ok("2+2?"), ok("3+1?"), long.clone(), ok("1+3?")].concat(),
    )
    .unwrap();
    let out = dir.join("out");
    let args = |data: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
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
            "--in-flight",
            "2",
            "--data",
        ]
        .map(String::from)
        .to_vec();
        a.push(data.to_str().unwrap().into());
        a.extend(["--out".into(), out.to_str().unwrap().into()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for extra in [&[][..], &["--resume"]] {
        let a = args(&data, extra);
        let (code, err) = ponder(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{err}");
        let skips: Vec<&str> = err.lines().filter(|l| l.contains("skipping row")).collect();
        assert_eq!(skips.len(), 1, "{err}");
        assert!(skips[0].contains("row 2: the problem's prompt of"), "{err}");
        // …and said again at the end, beside the report.
        let closing = "(no record, not in the report): baseline@1 row(s) 2";
        assert!(err.contains(closing), "{err}");
        let mut rows = result_rows(&out);
        rows.sort();
        assert_eq!(rows, [0, 1, 3], "{extra:?}");
    }
    let only_long = dir.join("long.jsonl");
    std::fs::write(&only_long, long).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let a = args(&only_long, &[]);
    let (code, err) = ponder(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("error: no problem fits"),
        "{err}"
    );
    // A problem whose sequence the KV pool cannot hold (it fits the model's positions) is
    // skipped the same way, and the closing line says a larger pool needs a new folder.
    let _ = std::fs::remove_dir_all(&out);
    let pool = dir.join("pool.jsonl");
    let mid = ok(&"word ".repeat(60));
    std::fs::write(&pool, [ok("2+2?"), mid, ok("1+3?")].concat()).unwrap();
    let a = args(&pool, &["--kv-pages", "8"]);
    let (code, err) = ponder(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("skipping row 1: one sequence of"), "{err}");
    assert!(
        err.contains("a larger --kv-pages is another run: give it a new --out"),
        "{err}"
    );
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
