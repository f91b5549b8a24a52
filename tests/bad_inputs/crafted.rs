//! Models crafted from a good one (tests/bad_inputs/gguf/ok_tiny_llama.gguf, imported): a
//! PRM tokenizer whose '+' is past the model's vocabulary, a chat template that writes
//! without end, an `rms_norm_eps` past f32's range. Each is one line naming the problem.
use super::*;

/// ok_tiny_llama.gguf imported into a fresh folder, with `edit` applied to its JSON file
/// `file` (config.json, tokenizer.json or tokenizer_config.json).
fn crafted(tag: &str, file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = fresh_dir(tag);
    let gguf = case("gguf/ok_tiny_llama.gguf");
    let (code, err) = ponder(&["import-gguf", &gguf, "--out", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let path = dir.join(file);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    dir.display().to_string()
}

#[test]
fn a_prm_whose_reward_token_is_past_its_vocabulary() {
    let prm = crafted("prm-plus", "tokenizer.json", |t| {
        t["model"]["vocab"]["+"] = 5000.into();
    });
    for model in ["synthetic:tiny", prm.as_str()] {
        assert_one_line_error(
            &[
                "solve",
                "--model",
                model,
                "--prm",
                &prm,
                "--method",
                "rebase",
                "--question",
                "What is 2 and 3?",
                "--width",
                "2",
                "--step-tokens",
                "4",
                "--path-tokens",
                "8",
            ],
            &["'+' the id 5000", "262-token vocabulary"],
        );
    }
}

#[test]
fn a_chat_template_that_writes_without_end() {
    chat_fails(
        "chat-flood",
        "{% for i in range(1000) %}{{ 'a' * 5000 }}{% endfor %}",
        &["chat template failed", "passed 1048576 bytes"],
    );
}

/// `generate --chat` on ok_tiny_llama with `template` must fail with one line of `needles`.
fn chat_fails(tag: &str, template: &str, needles: &[&str]) {
    let m = crafted(tag, "tokenizer_config.json", |t| {
        t["chat_template"] = template.into();
    });
    generate_with_flags(&m, &["--chat"], needles);
}

#[test]
fn an_eps_past_f32() {
    let m = crafted("eps-inf", "config.json", |c| {
        c["rms_norm_eps"] = serde_json::json!(1e39);
    });
    assert_one_line_error(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
        ],
        &["rms_norm_eps (inf)", "positive and finite"],
    );
}

/// Two problems in flight share their passes; one whose question holds a token its model has
/// no embedding for fails that shared pass. The pass reruns each problem alone, so the
/// failure is that problem's own: the other finishes and is kept, and the error names the
/// row that caused it (before, both failed, and the error named whichever arrived first).
#[test]
fn one_problems_bad_input_in_a_shared_pass_is_its_own() {
    let m = crafted("shared-bad", "tokenizer.json", |t| {
        t["model"]["vocab"]["Z"] = 5000.into();
    });
    let dir = fresh_dir("shared-bad-run");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"What is 2 and 3?\", \"answer\": \"#### 5\"}\n\
         {\"question\": \"Zed has 4 cats. How many?\", \"answer\": \"#### 4\"}\n",
    )
    .unwrap();
    let out = dir.join("out");
    let (code, err) = ponder(&[
        "eval",
        "--model",
        &m,
        "--method",
        "baseline",
        "--votes",
        "1",
        "--max-tokens",
        "4",
        "--answer-tokens",
        "2",
        "--in-flight",
        "2",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: baseline on row 1") && last.contains("5000"),
        "{err}"
    );
    assert_eq!(result_rows(&out), [0], "{err}");
}

/// tokenizer.json files the tokenizers crate panics on, or would abort the process for
/// (gigabytes asked for a 12-byte charsmap), or would take minutes to load: each one line.
#[test]
fn tokenizer_files_the_tokenizers_crate_cannot_take() {
    use serde_json::json;
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &[&str]); 5] = [
        // Panics while encoding, contained.
        (
            "tok-fixedlen",
            |t| t["pre_tokenizer"] = json!({"type": "FixedLength", "length": 0}),
            &[
                "the model's tokenizer failed",
                "chunk size must be non-zero",
            ],
        ),
        // Panics while loading, contained.
        (
            "tok-csp",
            |t| t["model"]["continuing_subword_prefix"] = "\u{2581}".into(),
            &["cannot load tokenizer", "out of bounds"],
        ),
        (
            "tok-charsmap-oom",
            |t| {
                t["normalizer"] =
                    json!({"type": "Precompiled", "precompiled_charsmap": "/////wAAAAA="})
            },
            &["a Precompiled charsmap of 8 bytes whose trie claims 4294967295"],
        ),
        (
            "tok-long-added",
            |t| {
                let long = "a".repeat(100_000);
                t["added_tokens"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"id": 300,
                    "content": long, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": true, "special": false}));
            },
            &["an added token of 100000 bytes (at most 1024)"],
        ),
        (
            "tok-charsmap-short",
            |t| t["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"}),
            &["not base64 of at least 4 bytes"],
        ),
    ];
    for (tag, edit, needles) in cases {
        let m = crafted(tag, "tokenizer.json", edit);
        generate_at(&m, needles);
    }
}

/// A chat template that repeats a list 2^63 times spends no fuel inside the one operator:
/// it is stopped by the deadline instead of spinning forever.
#[test]
fn a_chat_template_that_never_finishes() {
    chat_fails(
        "chat-hang",
        "{{ [0] * 9223372036854775807 }}",
        &["chat template failed: it did not finish in 10 s"],
    );
}

/// A prompt far longer than the model's positions is refused before it is tokenized (which
/// took about 140 bytes of memory per byte, and aborted on a 64 MiB file).
#[test]
fn a_prompt_file_too_long_for_any_tokenization() {
    let m = crafted("long-prompt", "config.json", |_| {});
    let dir = fresh_dir("long-prompt-file");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompt.txt");
    std::fs::write(&file, "x".repeat(1 << 20)).unwrap();
    assert_one_line_error(
        &[
            "generate",
            "--model",
            &m,
            "--prompt-file",
            file.to_str().unwrap(),
            "--max-tokens",
            "2",
        ],
        &["the prompt of 1048576 bytes is longer than ponder takes for the model's 512 positions"],
    );
}

/// A GGUF whose control token is 5 KB (one took the tokenizers crate minutes at 70 KB) is
/// refused at import. The token's string grows by a multiple of 32 bytes, so the tensor
/// data keeps its alignment and only the vocabulary changed.
#[test]
fn a_gguf_control_token_too_long() {
    let good = std::fs::read(case("gguf/ok_tiny_llama.gguf")).unwrap();
    let tok = b"<|endoftext|>";
    let mut pat = (tok.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(tok);
    let at = good
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .expect("the token list holds <|endoftext|>");
    let n = tok.len() + 32 * 157;
    let mut bad = good[..at].to_vec();
    bad.extend_from_slice(&(n as u64).to_le_bytes());
    bad.extend(std::iter::repeat_n(b'a', n));
    bad.extend_from_slice(&good[at + pat.len()..]);
    let dir = fresh_dir("gguf-long-control");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("long.gguf");
    std::fs::write(&file, bad).unwrap();
    assert_one_line_error(
        &[
            "import-gguf",
            file.to_str().unwrap(),
            "--out",
            dir.join("out").to_str().unwrap(),
        ],
        &["tokenizer.json: an added token of 5037 bytes (at most 1024)"],
    );
}
