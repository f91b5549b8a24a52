//! Broken inputs (tests/bad_inputs/, written by scripts/make_bad_inputs.py): each must end
//! the CLI with exit code 1 and one line on stderr naming the problem — never a panic.
use std::path::Path;
use std::process::Command;

mod crafted;
mod eval;
mod flags;

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

/// `eval` of one problem, one 2-token vote, on synthetic:tiny into `out` (its limit is
/// argument 6).
fn tiny_eval(out: &str) -> [&str; 15] {
    [
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
        out,
    ]
}

/// An empty folder of this process under the temp dir (`tag` names the test).
fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ponder-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The rows (`index`) of the records in `out`'s results.jsonl, in file order.
fn result_rows(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect()
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
    generate_with_flags(m, &[], needles)
}

/// `generate --prompt hi --max-tokens 2` on `m`, with `flags` added, must fail with one line
/// holding `needles`.
fn generate_with_flags(m: &str, flags: &[&str], needles: &[&str]) {
    let mut args = vec![
        "generate",
        "--model",
        m,
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ];
    args.extend_from_slice(flags);
    assert_one_line_error(&args, needles);
}

#[test]
fn truncated_safetensors() {
    generate_with(
        "truncated_safetensors",
        &[
            "corrupt safetensors",
            "not fully covered",
            "model.safetensors",
        ],
    );
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
fn tensor_of_a_layer_ponder_does_not_compute() {
    generate_with(
        "unknown_tensor",
        &["model.layers.0.self_attn.q_proj.bias", "another model"],
    );
}

#[test]
fn malformed_config() {
    generate_with("malformed_config", &["config.json"]);
}

#[test]
fn missing_weights() {
    generate_with(
        "missing_weights",
        &["has neither model.safetensors nor model.safetensors.index.json"],
    );
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

/// A device (read until memory runs out) or a named pipe where ponder reads or maps a file it
/// owns: refused in one line, before anything opens it.
#[test]
fn devices_and_pipes_are_refused_where_a_file_is_read() {
    let dev = "/dev/zero";
    let tiny = ["--model", "synthetic:tiny"];
    let prompt = [
        &["generate", "--prompt-file", dev, "--max-tokens", "1"][..],
        &tiny,
    ]
    .concat();
    assert_one_line_error(&prompt, &["/dev/zero is not a regular file or a pipe"]);
    let eval = [
        &["eval", "--data", dev, "--out", "/nonexistent/x"][..],
        &tiny,
    ]
    .concat();
    assert_one_line_error(&eval, &["/dev/zero is not a regular file or a pipe"]);
    let dir = fresh_dir("devices");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.map(|s| s.success()).unwrap_or(false) {
        let f = fifo.to_str().unwrap();
        assert_one_line_error(
            &["import-gguf", f, "--out", dir.join("m").to_str().unwrap()],
            &["not a regular file"],
        );
        // A results folder whose files are a pipe and a link to a device.
        let rd = dir.join("results");
        std::fs::create_dir_all(&rd).unwrap();
        std::fs::rename(&fifo, rd.join("run.json")).unwrap();
        std::os::unix::fs::symlink(dev, rd.join("results.jsonl")).unwrap();
        let r = rd.to_str().unwrap();
        assert_one_line_error(&["report", r], &["is not a regular file"]);
        // An eval into that folder is refused before it writes run.json (which would block).
        let eval = [&["eval", "--out", r, "--limit", "1"][..], &tiny].concat();
        assert_one_line_error(&eval, &["run.json is not a regular file"]);
        std::fs::remove_file(rd.join("run.json")).unwrap();
        assert_one_line_error(&["report", r], &["results.jsonl is not a regular file"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
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
