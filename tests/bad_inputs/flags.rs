//! Flag values and sizes that no run could use: each refused in one line before any work.
use super::*;

#[test]
fn unknown_synthetic_model_and_bad_flag_values() {
    assert_one_line_error(
        &["generate", "--model", "synthetic:gpt5", "--prompt", "x"],
        &["gpt5"],
    );
    assert_one_line_error(
        &[
            "generate",
            "--model",
            "synthetic:tiny",
            "--prompt",
            "x",
            "--top-p",
            "1.5",
        ],
        &["--top-p"],
    );
    // A negative value reaches the flag's own check (not clap's "unexpected argument '-1'",
    // which reads it as a short option and names no flag).
    let tiny = ["--model", "synthetic:tiny", "--question", "x"];
    for (flag, value, code) in [("--rebase-temperature", "-0.5", 1), ("--votes", "-1", 2)] {
        let mut args = vec!["solve", "--method", "rebase", flag, value];
        args.extend(tiny);
        assert_one_line_exit(&args, code, &[flag, value]);
    }
    assert_one_line_error(
        &[
            "generate",
            "--model",
            "synthetic:tiny",
            "--prompt",
            "x",
            "--temperature",
            "-1",
        ],
        &["--temperature"],
    );
    // A batch of no sequences cannot make progress: refused, not silently raised to 1.
    assert_one_line_error(
        &[
            "solve",
            "--method",
            "baseline",
            "--model",
            "synthetic:tiny",
            "--question",
            "x",
            "--max-batch",
            "0",
        ],
        &["--max-batch"],
    );
    for flag in ["--answer-tokens", "--step-tokens", "--path-tokens"] {
        assert_one_line_error(
            &[
                "solve",
                "--method",
                "rebase",
                "--model",
                "synthetic:tiny",
                "--question",
                "x",
                flag,
                "0",
            ],
            &[flag, "at least 1"],
        );
    }
}

#[test]
fn a_prompt_past_the_models_positions_is_refused_and_unused_limits_are_not_checked() {
    // synthetic:tiny has 32768 positions and a byte-level tokenizer: a question of 33000
    // bytes cannot fit, whatever the method (the flags alone do).
    let long = "x".repeat(33_000);
    for method in ["baseline", "rebase", "quiet-star"] {
        let args = [
            "solve",
            "--method",
            method,
            "--model",
            "synthetic:tiny",
            "--quick",
            "--question",
            &long,
        ];
        assert_one_line_error(&args, &["prompt of", "max_position_embeddings"]);
    }
    // A baseline never reads REBASE's limits, nor REBASE the votes': a value that only the
    // other method could not hold is no reason to refuse.
    for (method, flag) in [("baseline", "--path-tokens"), ("rebase", "--max-tokens")] {
        let (code, err) = ponder(&[
            "solve",
            "--method",
            method,
            "--model",
            "synthetic:tiny",
            "--quick",
            "--votes",
            "1",
            "--width",
            "1",
            "--step-tokens",
            "2",
            "--answer-tokens",
            "1",
            "--question",
            "x",
            flag,
            "1000000",
        ]);
        assert_eq!(code, 0, "{method} {flag}: {err}");
    }
}

#[test]
fn each_bad_flag_is_named_alone() {
    let tiny = ["--model", "synthetic:tiny"];
    let out = fresh_dir("shards");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 9] = [
        (
            &[
                "solve",
                "--method",
                "baseline",
                "--question",
                "2+2?",
                "--show-tree",
            ],
            &[
                "--show-tree draws a REBASE tree",
                "baseline prints its votes",
            ],
        ),
        (
            &["generate", "--prompt", "x", "--top-p", "1.5"],
            &["--top-p", "1.5"],
        ),
        (
            &["generate", "--prompt", "x", "--temperature", "-1"],
            &["--temperature"],
        ),
        (&["generate", "--prompt", "x", "--stop", ""], &["--stop"]),
        (
            &["bench", "attention", "--batch", "0"],
            &["--batch must be at least 1"],
        ),
        // 2^64 − 1 timed runs would never end.
        (
            &["bench", "attention", "--iters", "18446744073709551615"],
            &["--iters is at most 1000000"],
        ),
        // A merge would list every missing shard of 10^11.
        (
            &[
                "eval",
                "--method",
                "baseline",
                "--shard",
                "0/100000000000",
                "--out",
                out,
            ],
            &["--shard 0/100000000000: at most 65536 shards"],
        ),
        (
            &[
                "sweep",
                "--method",
                "baseline",
                "--budgets",
                "1,99999999999999999999",
                "--out",
                out,
            ],
            &["budget \"99999999999999999999\" is too large"],
        ),
        (
            &["eval", "--method", "all,baseline", "--out", out],
            &["--method all stands alone"],
        ),
    ];
    for (args, needles) in cases {
        let all: Vec<&str> = args.iter().chain(&tiny).copied().collect();
        assert_one_line_error(&all, needles);
        for other in ["--temperature", "--top-p", "--tokens", "--context"] {
            if !needles[0].starts_with(other) {
                let (_, err) = ponder(&all);
                assert!(!err.contains(&format!("{other} ")), "{err}");
            }
        }
    }
}

/// Sizes no run could hold are refused before any work (each used to allocate until the
/// machine ran out of memory, or to run for hours), and so are inputs with nothing to do.
#[test]
fn sizes_nothing_could_hold_are_refused_at_once() {
    let tiny = ["--model", "synthetic:tiny"];
    let solve = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec!["solve", "--model", "synthetic:tiny", "--method", "baseline"];
        a.extend_from_slice(extra);
        a
    };
    let t = std::time::Instant::now();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            [
                &["generate", "--prompt", "hi"][..],
                &tiny,
                &["--max-tokens", "18446744073709551615"],
            ]
            .concat(),
            vec!["--max-tokens 18446744073709551615", "4096 positions"],
        ),
        (
            [
                &["generate", "--prompt", "hi", "--temperature", "inf"][..],
                &tiny,
            ]
            .concat(),
            vec!["--temperature must be a finite number"],
        ),
        (solve(&["--question", "  "]), vec!["the question is empty"]),
        (
            solve(&["--question", "x", "--votes", "1000000000"]),
            vec![
                "--votes 1000000000 is more than ponder runs",
                "at most 4096",
            ],
        ),
        (
            solve(&["--question", "x", "--max-tokens", "4000000000"]),
            vec![
                "--max-tokens 4000000000 + --answer-tokens 12",
                "max_position_embeddings",
            ],
        ),
        (
            solve(&[
                "--question",
                "x",
                "--max-tokens",
                "100",
                "--kv-pages",
                "4",
                "--votes",
                "2",
            ]),
            vec!["KV pool of 64 tokens (--kv-pages 4 × 16)"],
        ),
        (
            [
                &[
                    "sweep",
                    "--method",
                    "baseline",
                    "--budgets",
                    "1,2,1",
                    "--out",
                    "/nonexistent/x",
                ][..],
                &tiny,
            ]
            .concat(),
            vec!["budget 1 is named twice"],
        ),
        (
            [
                &[
                    "sweep",
                    "--method",
                    "baseline",
                    "--budgets",
                    "1000000000",
                    "--out",
                    "/nonexistent/x",
                ][..],
                &tiny,
            ]
            .concat(),
            vec!["a budget of 1000000000 is more than ponder runs"],
        ),
        (
            [
                &["eval", "--offset", "1000", "--out", "/nonexistent/x"][..],
                &tiny,
            ]
            .concat(),
            vec!["--offset 1000 skips all 8 problems"],
        ),
        (
            [
                "bench",
                "attention",
                "--tokens",
                "100000000000",
                "--iters",
                "1",
            ]
            .to_vec(),
            vec!["GB of host memory"],
        ),
        (
            [
                &["generate", "--prompt", "hi", "--model"][..],
                &["/etc/hostname"],
            ]
            .concat(),
            vec!["/etc/hostname is a file"],
        ),
    ];
    for (args, needles) in &cases {
        assert_one_line_error(args, needles);
    }
    assert!(
        t.elapsed().as_secs() < 60,
        "refusing took {:?}",
        t.elapsed()
    );
    // Argument errors: one line naming what is missing, exit code 2.
    for (args, needle) in [
        (vec![], "no subcommand given"),
        (vec!["solve", "--question", "x"], "--method <METHOD>"),
        (vec!["report"], "<DIRS>"),
    ] {
        let (code, err) = ponder(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{err}"
        );
    }
}

/// Found by the adversarial pass of 2026-12-07: sums that wrapped, a file or a link to
/// nothing where a folder goes, the flag an error names, a results file of blank lines.
#[test]
fn wrapped_sums_and_odd_paths_are_one_line_errors() {
    let dir = fresh_dir("odd-paths");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("afile");
    std::fs::write(&file, "x").unwrap();
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    let (f, l) = (file.to_str().unwrap(), dangling.to_str().unwrap());
    let under_file = format!("{f}/x");
    let eval = |out: &str| -> Vec<String> { tiny_eval(out).map(String::from).to_vec() };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            [
                "check",
                "--model",
                "synthetic:tiny",
                "--tokens",
                "18446744073709551615",
                "--steps",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            vec!["do not fit the model's 4096 positions"],
        ),
        (
            ["bench", "--device", "cpu", "attention", "--depth", "0"]
                .map(String::from)
                .to_vec(),
            vec!["--depth must be at least 1"],
        ),
        (
            [
                "solve",
                "--model",
                "synthetic:tiny",
                "--method",
                "rebase",
                "--question",
                "x",
                "--prm",
                f,
            ]
            .map(String::from)
            .to_vec(),
            vec!["--prm", "is a file; a model is a directory"],
        ),
        (eval(l), vec!["is a symbolic link to nothing"]),
        (
            eval(&under_file),
            vec!["afile exists and is not a directory"],
        ),
    ];
    for (args, needles) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_error(&args, needles);
    }
    // A results file of blank lines holds no results: the folder is a fresh one.
    let blank = dir.join("blank");
    std::fs::create_dir_all(&blank).unwrap();
    std::fs::write(blank.join("results.jsonl"), "\n\n").unwrap();
    let args = eval(blank.to_str().unwrap());
    let (code, err) = ponder(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A value that is not UTF-8 is named by its flag (clap says only "in one or more
/// arguments"), in one line, exit code 2.
#[test]
fn a_value_that_is_not_utf8_names_its_flag() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    for args in [
        vec![
            OsStr::new("generate"),
            OsStr::new("--model"),
            OsStr::from_bytes(b"m\xff"),
        ],
        vec![OsStr::new("generate"), OsStr::from_bytes(b"--model=m\xff")],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: the value of --model is not valid UTF-8"),
            "{err}"
        );
    }
}
