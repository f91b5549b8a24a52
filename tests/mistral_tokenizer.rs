//! Mistral-7B-v0.1's own tokenizer (the study's policy, and the base of the Math-Shepherd PRM)
//! through ponder: its SentencePiece model, converted by ponder's converter
//! (src/model/import/spm.rs), must encode 91 texts to exactly the ids SentencePiece gives
//! (tests/fixtures/mistral_tokenizer.json, written by scripts/mistral-tokenizer-fixture.py),
//! decode them back, and give the PRM the ids Math-Shepherd's reference uses: '+' = 648,
//! '-' = 387, and a path ending on the step tag 12902.
//!
//! The model file is Mistral's, from the `mistral_common` wheel on PyPI, fetched with pip into
//! the cache ($PONDER_CACHE or ~/.cache/ponder) on first use, and checked against the
//! fixture's SHA-256.
use ponder::backend::cpu::Cpu;
use ponder::methods::prm::{reward_ids, Prm};
use ponder::model::import::spm::{tokenizer_json, Piece, PieceKind};
use ponder::model::source::cache_dir;
use ponder::model::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const WHEEL: &str = "mistral_common==1.13.1";
const MEMBER: &str = "mistral_common/data/tokenizer.model.v1";

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mistral_tokenizer.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    })
}

/// Mistral's tokenizer.model, fetched once into the cache (pip download, then the member
/// taken out of the wheel and its SHA-256 checked, by python, which pip needs anyway).
fn model_file() -> PathBuf {
    let dir = cache_dir(None).join("mistral-tokenizer");
    let path = dir.join("tokenizer.model.v1");
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!("download-{}", std::process::id()));
    let st = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&tmp)
        .arg(WHEEL)
        .status()
        .expect("python3 -m pip");
    assert!(st.success(), "pip download {WHEEL} failed");
    let script = "import glob, hashlib, os, sys, zipfile\n\
                  whl = glob.glob(os.path.join(sys.argv[1], '*.whl'))[0]\n\
                  data = zipfile.ZipFile(whl).read(sys.argv[2])\n\
                  got = hashlib.sha256(data).hexdigest()\n\
                  assert got == sys.argv[3], f'{sys.argv[2]} has SHA-256 {got}'\n\
                  open(sys.argv[4], 'wb').write(data)\n";
    let part = dir.join(format!("tokenizer.model.v1.{}", std::process::id()));
    let st = Command::new("python3")
        .args(["-c", script])
        .arg(&tmp)
        .arg(MEMBER)
        .arg(fixture()["sha256"].as_str().unwrap())
        .arg(&part)
        .status()
        .expect("python3");
    assert!(st.success(), "cannot take {MEMBER} out of the wheel");
    std::fs::rename(&part, &path).unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    path
}

/// Reads a protobuf varint at `*i`.
fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

/// The fields of one protobuf message: (field number, wire type, varint value or payload).
fn fields(b: &[u8]) -> Vec<(u64, u64, u64, &[u8])> {
    let (mut i, mut out) = (0, Vec::new());
    while i < b.len() {
        let key = varint(b, &mut i);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((field, wire, varint(b, &mut i), &b[i..i])),
            1 => {
                out.push((field, wire, 0, &b[i..i + 8]));
                i += 8;
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                out.push((field, wire, 0, &b[i..i + n]));
                i += n;
            }
            5 => {
                out.push((field, wire, 0, &b[i..i + 4]));
                i += 4;
            }
            w => panic!("wire type {w} in the model proto"),
        }
    }
    out
}

/// SentencePiece's ModelProto: pieces (field 1: piece 1, score 2, type 3) and the
/// normalizer's add_dummy_prefix (field 3, its field 3; true unless set).
fn read_model(bytes: &[u8]) -> (Vec<(String, f32, i64)>, bool) {
    let (mut pieces, mut dummy) = (Vec::new(), true);
    for (field, _, _, body) in fields(bytes) {
        match field {
            1 => {
                let (mut text, mut score, mut kind) = (String::new(), 0.0, 1);
                for (f, _, v, p) in fields(body) {
                    match f {
                        1 => text = String::from_utf8(p.to_vec()).unwrap(),
                        2 => score = f32::from_le_bytes(p.try_into().unwrap()),
                        3 => kind = v as i64,
                        _ => {}
                    }
                }
                pieces.push((text, score, kind));
            }
            3 => {
                for (f, _, v, _) in fields(body) {
                    if f == 3 {
                        dummy = v != 0;
                    }
                }
            }
            _ => {}
        }
    }
    (pieces, dummy)
}

/// The converted tokenizer as ponder loads a model folder's.
fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let (raw, dummy) = read_model(&std::fs::read(model_file()).unwrap());
        assert_eq!(raw.len() as u64, fixture()["pieces"].as_u64().unwrap());
        let pieces: Vec<Piece> = raw
            .iter()
            .map(|(t, s, k)| Piece {
                text: t,
                score: *s,
                kind: PieceKind::from_code(*k).unwrap(),
            })
            .collect();
        let json = tokenizer_json(&pieces, dummy).unwrap();
        let dir = std::env::temp_dir().join(format!("ponder-mistral-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), json).unwrap();
        let t = Tokenizer::from_dir(&dir, Some(1), vec![2]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        t
    })
}

fn cases() -> Vec<(String, Vec<u32>)> {
    fixture()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap();
            let ids = ids.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            (c["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

#[test]
fn encodes_as_sentencepiece_does() {
    let t = tokenizer();
    let cases = cases();
    assert_eq!(cases.len(), 91);
    let mut wrong = Vec::new();
    for (text, want) in &cases {
        let got = t.encode(text).unwrap();
        if &got != want {
            wrong.push(format!("{text:?}: ponder {got:?}, SentencePiece {want:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} texts differ:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn decodes_back_and_across_every_seam() {
    let t = tokenizer();
    for (text, ids) in cases() {
        assert_eq!(t.decode(&ids, false).unwrap(), text, "{ids:?}");
        // Generated text arrives after the prompt's tokens: every split of a text must decode
        // to its own remainder (where the head is whole characters), spaces included.
        for k in 1..ids.len() {
            let head = t.decode(&ids[..k], false).unwrap();
            let Some(rest) = text.strip_prefix(&head) else {
                continue;
            };
            let got = t.decode_continuation(&ids[..k], &ids[k..], false).unwrap();
            assert_eq!(got, rest, "{text:?} cut after {k} tokens");
        }
    }
}

#[test]
fn the_prm_reads_math_shepherds_ids() {
    let t = tokenizer();
    let f = fixture();
    let (plus, minus) = reward_ids(t).unwrap();
    assert_eq!(
        (plus, minus),
        (648, 387),
        "Math-Shepherd's '+' and '-' (its code: encode(\"+ -\")[1:] = [648, 387])"
    );
    assert_eq!(u64::from(plus), f["plus"].as_u64().unwrap());
    assert_eq!(u64::from(minus), f["minus"].as_u64().unwrap());
    // The PRM scores a path at its last token, which must be the step tag the reference
    // looks for (encode("ки")[-1] = 12902), once per step.
    let tag = f["step_tag"].as_u64().unwrap() as u32;
    assert_eq!(tag, 12902);
    let steps: Vec<String> = ["Janet has 3 apples.", "3 + 4 = 7.", "The answer is: 7"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for n in 1..=steps.len() {
        let text = Prm::<Cpu>::path_text("How many apples?", &steps[..n]);
        let ids = t.encode(&text).unwrap();
        assert_eq!(ids.last(), Some(&tag), "{text:?} → {ids:?}");
        assert_eq!(ids.iter().filter(|&&i| i == tag).count(), n, "{text:?}");
    }
}
