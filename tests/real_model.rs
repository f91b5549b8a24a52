//! The bundled default model (SmolLM2-135M-Instruct) against an independent numpy reference
//! (scripts/reference.py → tests/fixtures/): tokenizer ids, last-position logits, 32 greedy
//! tokens; and tokenizer round trips over the GSM8K training set. The model is fetched and
//! imported into the cache on first use (needs pip and the network the first time).
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::flops::Phase;
use ponder::generate::{generate, GenParams, Runner};
use ponder::model::source::{cache_dir, load, Loaded};
use ponder::sample::Sampling;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

fn fixture() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn model() -> &'static (Cpu, Loaded<Cpu>) {
    static M: OnceLock<(Cpu, Loaded<Cpu>)> = OnceLock::new();
    M.get_or_init(|| {
        let be = Cpu::new();
        let m = load(&be, None, &cache_dir(None)).expect("the default model (fetched via pip)");
        (be, m)
    })
}

fn last_logits(ids: &[u32]) -> Vec<f32> {
    let (be, m) = model();
    let mut r = Runner::new(be, &m.model, ids.len().div_ceil(16) + 1, 16).unwrap();
    let s = r.pool.create();
    be.set_phase(Phase::Prefill);
    be.to_host(r.extend(&[(s, ids)]).unwrap().logits().unwrap())
        .unwrap()
}

#[test]
fn tokenizer_ids_match_the_reference() {
    let (_, m) = model();
    for case in fixture()["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(m.tok.encode(text).unwrap(), ids(&case["ids"]), "{text:?}");
    }
}

#[test]
fn last_position_logits_match_the_reference() {
    let f = fixture();
    let case = &f["logits_case"];
    let got = last_logits(&ids(&case["ids"]));
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(case["file"].as_str().unwrap()),
    )
    .unwrap();
    let want: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(got.len(), want.len());
    // Both sides compute in f32 with different summation orders; the reference itself moves
    // by 3e-5 between f32 and f64. 2e-3 absolute on logits of magnitude ~35 is ~6e-5 relative.
    let max_abs = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("max |Δlogit| against the reference: {max_abs}");
    assert!(max_abs < 2e-3, "max |Δlogit| = {max_abs}");
    assert_eq!(
        ponder::sample::argmax(&got) as u64,
        case["argmax"].as_u64().unwrap()
    );

    let short = &f["logits_case_short"];
    let got = last_logits(&ids(&short["ids"]));
    for pair in short["top5"].as_array().unwrap() {
        let (id, l) = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_f64().unwrap() as f32,
        );
        assert!((got[id] - l).abs() < 2e-3, "id {id}: {} vs {l}", got[id]);
    }
}

#[test]
fn thirty_two_greedy_tokens_match_the_reference() {
    let (be, m) = model();
    let f = fixture();
    let case = &f["greedy_case"];
    let prompt = ids(&case["prompt_ids"]);
    let want = ids(&case["greedy_ids"]);
    let mut r = Runner::new(be, &m.model, 8, 16).unwrap();
    let p = GenParams {
        max_tokens: 32,
        sampling: Sampling::GREEDY,
        seed: 0,
        stop: vec![],
        ignore_eos: true,
    };
    let out = generate(&mut r, &m.tok, &[prompt], &p, |_, _| Ok(())).unwrap();
    assert_eq!(out[0].ids, want, "got text {:?}", out[0].text);
    assert_eq!(out[0].text, case["text"].as_str().unwrap());
}

#[test]
fn tokenizer_round_trips_all_of_gsm8k_train() {
    let (_, m) = model();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/train.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        panic!(
            "{} is missing: the GSM8K training set ships beside the repo",
            path.display()
        );
    };
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for field in ["question", "answer"] {
            let s = v[field].as_str().unwrap();
            let ids = m.tok.encode(s).unwrap();
            assert_eq!(m.tok.decode(&ids, false).unwrap(), s);
            n += 1;
        }
    }
    assert_eq!(n, 2 * 7473);
}

#[test]
fn chat_template_renders_like_the_reference_prompt() {
    let (_, m) = model();
    let f = fixture();
    let prompt = m.tok.chat_prompt("What is 12 times 7?").unwrap();
    assert_eq!(
        m.tok.encode(&prompt).unwrap(),
        ids(&f["greedy_case"]["prompt_ids"])
    );
}
