//! Broken inputs (tests/bad_inputs/, written by scripts/make_bad_inputs.py): each must end
//! the CLI with exit code 1 and one line on stderr naming the problem — never a panic.
use std::path::Path;
use std::process::Command;

fn ponder(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .env(
            "PONDER_CACHE",
            std::env::temp_dir().join("ponder-bad-inputs-cache"),
        )
        .output()
        .expect("run ponder");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An empty folder of this process under the temp dir (`tag` names the test).
fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ponder-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn case(dir: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bad_inputs")
        .join(dir)
        .display()
        .to_string()
}

fn assert_one_line_error(args: &[&str], needles: &[&str]) {
    assert_one_line_exit(args, 1, needles)
}

/// As assert_one_line_error, for an exit code other than 1 (2: clap's usage errors).
fn assert_one_line_exit(args: &[&str], want: i32, needles: &[&str]) {
    let (code, err) = ponder(args);
    assert_eq!(code, want, "exit code for {args:?}; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line for {args:?}, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
    }
}

fn generate_with(model: &str, needles: &[&str]) {
    generate_at(&case(model), needles)
}

/// `generate` on the model directory `m` must fail with one line holding `needles`.
fn generate_at(m: &str, needles: &[&str]) {
    assert_one_line_error(
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
        ],
        needles,
    );
}

#[test]
fn truncated_safetensors() {
    generate_with("truncated_safetensors", &["model.safetensors"]);
}

#[test]
fn header_whose_offsets_lie() {
    generate_with(
        "lying_offsets",
        &["corrupt safetensors", "model.safetensors"],
    );
}

#[test]
fn missing_tensor() {
    generate_with("missing_tensor", &["missing tensor model.norm.weight"]);
}

#[test]
fn wrong_shape() {
    generate_with("wrong_shape", &["q_proj.weight", "shape [8, 4]", "[8, 8]"]);
}

#[test]
fn malformed_config() {
    generate_with("malformed_config", &["config.json"]);
}

#[test]
fn missing_weights() {
    generate_with("missing_weights", &["model.safetensors"]);
}

/// A shard index that is no regular file (/dev/zero never ends, a FIFO blocks forever) is
/// refused by name before it is read.
#[cfg(unix)]
#[test]
fn a_shard_index_that_is_no_file() {
    let dir = fresh_dir("index");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        Path::new(&case("missing_tensor")).join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("model.safetensors.index.json")).unwrap();
    generate_at(
        &dir.display().to_string(),
        &["model.safetensors.index.json is not a regular file"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_model_directory() {
    generate_with("no_such_model", &["does not exist"]);
}

#[test]
fn prompt_file_not_utf8() {
    let f = case("prompt_not_utf8.txt");
    assert_one_line_error(
        &[
            "generate",
            "--model",
            "synthetic:tiny",
            "--prompt-file",
            &f,
            "--max-tokens",
            "2",
        ],
        &["not UTF-8", "prompt_not_utf8.txt"],
    );
}

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
    let cases: [(&[&str], &[&str]); 6] = [
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

#[test]
fn a_folder_with_results_is_refused_in_one_line() {
    let dir = fresh_dir("held");
    let d = dir.to_str().unwrap();
    let args = [
        "eval",
        "--model",
        "synthetic:tiny",
        "--method",
        "baseline",
        "--limit",
        "1",
        "--votes",
        "1",
        "--max-tokens",
        "2",
        "--answer-tokens",
        "1",
        "--out",
        d,
    ];
    let (code, err) = ponder(&args);
    assert_eq!(code, 0, "{err}");
    // No banner before the refusal: the error is the whole of stderr.
    assert_one_line_error(&args, &["already holds results", "--resume"]);
    // A record of a row the data does not have (the default data has 8) is refused on resume.
    let path = dir.join("results.jsonl");
    let mut rec: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
    rec["index"] = serde_json::json!(99);
    std::fs::write(&path, format!("{rec}\n")).unwrap();
    let resume: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    assert_one_line_error(&resume, &["row 99 of baseline", "the data has 8 rows"]);
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

#[test]
fn gguf_import_of_a_missing_file() {
    let out = std::env::temp_dir().join("ponder-bad-gguf-out");
    assert_one_line_error(
        &[
            "import-gguf",
            "/nonexistent/model.gguf",
            "--out",
            out.to_str().unwrap(),
        ],
        &["/nonexistent/model.gguf"],
    );
    let dir = std::env::temp_dir();
    assert_one_line_error(
        &[
            "import-gguf",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["is a directory"],
    );
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
