//! HF directories: one f32 file, bf16 shards with an index and an f16 file load to the same
//! model.
use half::{bf16, f16};
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::generate::Runner;
use ponder::methods::quiet_star::QuietStar;
use ponder::model::config::Config;
use ponder::model::llama::{Model, ParamSource, Synthetic};
use ponder::model::source::{cache_dir, ensure_default_model, load};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;

fn names(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let mut n = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        n.push((format!("{p}.input_layernorm.weight"), vec![d]));
        n.push((format!("{p}.self_attn.q_proj.weight"), vec![c.q_dim(), d]));
        n.push((format!("{p}.self_attn.k_proj.weight"), vec![c.kv_dim(), d]));
        n.push((format!("{p}.self_attn.v_proj.weight"), vec![c.kv_dim(), d]));
        n.push((format!("{p}.self_attn.o_proj.weight"), vec![d, c.q_dim()]));
        n.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        n.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        n.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        n.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
    }
    n.push(("model.norm.weight".into(), vec![d]));
    n.push(("lm_head.weight".into(), vec![v, d]));
    n
}

fn config_json() -> &'static str {
    r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":64,
        "intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"rms_norm_eps":1e-5,"rope_theta":10000.0,"vocab_size":512,
        "max_position_embeddings":4096,"tie_word_embeddings":false,"bos_token_id":1,
        "eos_token_id":2}"#
}

/// How `write_model` stores the synthetic model's values (bf16 values, so exact in f32 and
/// bf16), or the values rounded to f16, stored as f16 or as f32.
#[derive(Clone, Copy, PartialEq)]
enum Store {
    F32,
    Bf16,
    F16,
    F32OfF16,
}

fn write_dir(dir: &Path, shards: usize, store: Store) {
    write_model(dir, config_json(), shards, store, &[]);
}

/// An HF directory of the model `config` with seeded weights, the default model's tokenizer,
/// and the `extra` tensors beside the model's own.
fn write_model(dir: &Path, config: &str, shards: usize, store: Store, extra: &[(&str, &[usize])]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let default = ensure_default_model(&cache_dir(None)).unwrap();
    std::fs::copy(default.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let cfg = Config::from_json(config).unwrap();
    let syn = Synthetic { seed: 7 };
    let mut all = names(&cfg);
    all.extend(extra.iter().map(|(n, s)| (n.to_string(), s.to_vec())));
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = all
        .iter()
        .map(|(n, s)| {
            let v = syn.param(n, s).unwrap();
            let v = v.to_f32();
            let b: Vec<u8> = match store {
                Store::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Store::Bf16 => v
                    .iter()
                    .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                Store::F16 => v
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect(),
                Store::F32OfF16 => v
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_f32().to_le_bytes())
                    .collect(),
            };
            (n.clone(), s.clone(), b)
        })
        .collect();
    let dtype = match store {
        Store::F32 | Store::F32OfF16 => Dtype::F32,
        Store::Bf16 => Dtype::BF16,
        Store::F16 => Dtype::F16,
    };
    let per = bytes.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (k, chunk) in bytes.chunks(per).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", k + 1)
        };
        let views: Vec<(String, TensorView)> = chunk
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for (n, _, _) in chunk {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    if shards > 1 {
        let idx = serde_json::json!({ "metadata": {}, "weight_map": map });
        std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).unwrap();
    }
}

fn logits(be: &Cpu, m: &Model<Cpu>) -> Vec<f32> {
    let mut r = Runner::new(be, m, 8, 16).unwrap();
    let s = r.pool.create();
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 % 500) as u32).collect();
    be.to_host(r.extend(&[(s, &ids)]).unwrap().logits().unwrap())
        .unwrap()
}

/// The ledger's matmul bytes of `logits`: weights at 4 bytes a value if held as f32, 2 as bf16.
fn matmul_bytes(be: &Cpu) -> u64 {
    let l = be.ledger().lock().unwrap();
    l.by_op().get("matmul").map_or(0, |c| c.bytes)
}

#[test]
fn f32_file_and_bf16_shards_load_the_same_model() {
    let root = std::env::temp_dir().join(format!("ponder-loading-{}", std::process::id()));
    let (a, b) = (root.join("f32"), root.join("bf16-sharded"));
    write_dir(&a, 1, Store::F32);
    write_dir(&b, 3, Store::Bf16);
    let cache = cache_dir(None);
    let (be0, be1, be2) = (Cpu::new(), Cpu::new(), Cpu::new());
    let direct = Model::load(
        &be0,
        Config::from_json(config_json()).unwrap(),
        &Synthetic { seed: 7 },
    )
    .unwrap();
    let la = load(&be1, Some(a.to_str().unwrap()), &cache).unwrap();
    let lb = load(&be2, Some(b.to_str().unwrap()), &cache).unwrap();
    let (x, y, z) = (
        logits(&be0, &direct),
        logits(&be1, &la.model),
        logits(&be2, &lb.model),
    );
    // Synthetic weights are bf16 values, so the f32 file holds them exactly: the f32 file
    // (held as f32), the bf16 shards and the synthetic model (both held as bf16 and widened
    // just before use) give the same logits bit for bit.
    assert_eq!(x, y, "an f32 file must load bit for bit");
    assert_eq!(y, z, "bf16 shards must load bit for bit");
    // …and the bf16 model really is held as bf16: half the weight bytes.
    let (f32_bytes, bf16_bytes) = (matmul_bytes(&be1), matmul_bytes(&be2));
    assert_eq!(matmul_bytes(&be0), bf16_bytes);
    assert_eq!(
        f32_bytes - bf16_bytes,
        2 * matrix_values(),
        "2 bytes fewer a weight value"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// The weight values one forward pass reads: every layer's four projections and the LM head,
/// each matrix once.
fn matrix_values() -> u64 {
    let c = Config::from_json(config_json()).unwrap();
    let (d, f) = (c.hidden_size, c.intermediate_size);
    let layer = (c.q_dim() + 2 * c.kv_dim()) * d + d * c.q_dim() + 2 * f * d + d * f;
    (c.num_hidden_layers * layer + c.vocab_size * d) as u64
}

#[test]
fn an_f16_file_loads_as_its_f32_copy_at_half_the_bytes() {
    let root = std::env::temp_dir().join(format!("ponder-loading-f16-{}", std::process::id()));
    let (a, b) = (root.join("f32"), root.join("f16"));
    write_dir(&a, 1, Store::F32OfF16);
    write_dir(&b, 2, Store::F16);
    let cache = cache_dir(None);
    let (be1, be2) = (Cpu::new(), Cpu::new());
    let la = load(&be1, Some(a.to_str().unwrap()), &cache).unwrap();
    let lb = load(&be2, Some(b.to_str().unwrap()), &cache).unwrap();
    // f16 widens exactly, so the f16 file (held as f16, widened just before use) gives the
    // logits of the f32 file of the same values bit for bit…
    assert_eq!(logits(&be1, &la.model), logits(&be2, &lb.model));
    // …while its matrices stream at two bytes a value.
    assert_eq!(
        matmul_bytes(&be1) - matmul_bytes(&be2),
        2 * matrix_values(),
        "2 bytes fewer a weight value"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_quiet_star_checkpoint_loads_its_markers_head_and_thought_length() {
    // Vocabulary 8192 so that "---" (id 5583 in the default tokenizer) has an embedding row.
    let config = config_json()
        .replace("\"vocab_size\":512", "\"vocab_size\":8192")
        .replace("\"eos_token_id\":2}", "\"eos_token_id\":2,\"n_ahead\":6}");
    let d = 64;
    let extra: [(&str, &[usize]); 7] = [
        ("start_embedding", &[2, d]),
        ("end_embedding", &[2, d]),
        ("talk_head.0.0.weight", &[d, 2 * d]),
        ("talk_head.0.0.bias", &[d]),
        ("talk_head.0.2.weight", &[d, d]),
        ("talk_head.0.2.bias", &[d]),
        ("talk_head.0.4.weight", &[1, d]),
    ];
    let dir = std::env::temp_dir().join(format!("ponder-quiet-ckpt-{}", std::process::id()));
    write_model(&dir, &config, 1, Store::F32, &extra);
    let be = Cpu::new();
    let m = load(&be, Some(dir.to_str().unwrap()), &cache_dir(None)).unwrap();
    assert_eq!(
        m.model.cfg.n_ahead,
        Some(6),
        "n_ahead comes from config.json"
    );
    let syn = Synthetic { seed: 7 };
    let row0_x100 = |name: &str| -> Vec<f32> {
        let v = syn.param(name, &[2, d]).unwrap();
        v.to_f32()[..d].iter().map(|x| x * 100.0).collect()
    };
    let trained = QuietStar::new(&be, &m.model, &m.tok, Some(&dir), false, 6).unwrap();
    assert_eq!(trained.origin, "checkpoint");
    assert_eq!(trained.start, row0_x100("start_embedding"));
    assert_eq!(trained.end, row0_x100("end_embedding"));
    assert_eq!(trained.sampled, 3, "n_ahead 6: start, 3 sampled, end");
    // The reference eval's "---" re-initialisation replaces the markers, keeps the head.
    let reinit = QuietStar::new(&be, &m.model, &m.tok, Some(&dir), true, 6).unwrap();
    let dash = m.tok.encode("---").unwrap()[0];
    let dash_row = be
        .to_host(&be.embed(&m.model.embed, &[dash]).unwrap())
        .unwrap();
    assert_eq!(reinit.start, dash_row);
    assert_eq!(reinit.end, dash_row);
    assert!(
        reinit.origin.contains("checkpoint talk head"),
        "{}",
        reinit.origin
    );
    // The head's last layer is the checkpoint's (non-zero), so mixing is on: the trained
    // head and a plain model's zero head give different output logits for the same thought.
    let plain = QuietStar::new(&be, &m.model, &m.tok, None, true, 6).unwrap();
    assert_eq!(plain.start, dash_row);
    let h = be.tensor(1, d, &vec![0.5; d]).unwrap();
    let e = be.tensor(1, d, &vec![-0.25; d]).unwrap();
    let mixed = |q: &QuietStar<Cpu>| be.to_host(&be.talk_mix(&h, &e, &q.head).unwrap()).unwrap();
    assert_eq!(
        mixed(&plain),
        vec![0.5; d],
        "a zero last layer mixes nothing in"
    );
    assert_ne!(mixed(&trained), vec![0.5; d]);
    // A checkpoint without one of the head's tensors is refused, naming it.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    write_model(&dir, &config, 1, Store::F32, &extra[..6]);
    let err = QuietStar::new(&be, &m.model, &m.tok, Some(&dir), false, 6)
        .err()
        .expect("a missing talk_head.0.4.weight is an error");
    assert!(
        format!("{err:#}").contains("talk_head.0.4.weight"),
        "{err:#}"
    );
    // So is one with the head but no markers (it used to fall back to the untrained head).
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    write_model(&dir, &config, 1, Store::F32, &extra[1..]);
    let err = QuietStar::new(&be, &m.model, &m.tok, Some(&dir), false, 6)
        .err()
        .expect("a missing start_embedding is an error");
    assert!(format!("{err:#}").contains("start_embedding"), "{err:#}");
    // Also when the "---" re-initialisation (the default) would not use the markers.
    let err = QuietStar::new(&be, &m.model, &m.tok, Some(&dir), true, 6)
        .err()
        .expect("a missing start_embedding is an error under the re-initialisation too");
    assert!(format!("{err:#}").contains("start_embedding"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A NaN or an infinity in a checkpoint, in any dtype, is refused at load by tensor name:
/// otherwise every logit it reaches is NaN and sampling picks tokens from nothing.
#[test]
fn a_non_finite_weight_is_a_corrupt_checkpoint() {
    let root = std::env::temp_dir().join(format!("ponder-loading-nan-{}", std::process::id()));
    let cache = cache_dir(None);
    // The last value of the file's last tensor, in each dtype: NaN, +inf, -inf.
    let cases: [(Store, &[u8]); 4] = [
        (Store::F32, &f32::NAN.to_le_bytes()),
        (Store::F32, &f32::INFINITY.to_le_bytes()),
        (Store::Bf16, &bf16::NEG_INFINITY.to_le_bytes()),
        (Store::F16, &f16::NAN.to_le_bytes()),
    ];
    for (k, (store, last)) in cases.into_iter().enumerate() {
        let dir = root.join(k.to_string());
        write_dir(&dir, 1, store);
        let file = dir.join("model.safetensors");
        let mut bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        bytes[n - last.len()..].copy_from_slice(last);
        std::fs::write(&file, bytes).unwrap();
        let err = load(&Cpu::new(), Some(dir.to_str().unwrap()), &cache)
            .err()
            .map(|e| format!("{e:#}"))
            .expect("a non-finite weight must be refused");
        assert!(
            err.contains("holds a NaN or infinite value") && err.contains("corrupt"),
            "case {k}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A sharded checkpoint whose index names a tensor no shard holds (a shard from another
/// download, a partial copy) is refused at load, naming the tensor and its listed shard.
#[test]
fn an_index_listing_a_tensor_no_shard_holds_is_refused() {
    let dir = std::env::temp_dir().join(format!("ponder-loading-index-{}", std::process::id()));
    write_model(&dir, config_json(), 2, Store::F32, &[]);
    let be = Cpu::new();
    load(&be, Some(dir.to_str().unwrap()), &cache_dir(None)).expect("the intact checkpoint");
    let path = dir.join("model.safetensors.index.json");
    let mut idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    idx["weight_map"]["talk_head.0.0.weight"] = "model-00002-of-00002.safetensors".into();
    std::fs::write(&path, idx.to_string()).unwrap();
    let err = load(&be, Some(dir.to_str().unwrap()), &cache_dir(None))
        .err()
        .expect("a listed tensor that is absent is an error");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("1 tensor(s) that no shard holds")
            && msg.contains("talk_head.0.0.weight in model-00002-of-00002.safetensors"),
        "{msg}"
    );
    // A shard named outside the folder (another model's, any file) is never read.
    for outside in ["../other/model.safetensors", "/etc/passwd"] {
        idx["weight_map"]["talk_head.0.0.weight"] = outside.into();
        std::fs::write(&path, idx.to_string()).unwrap();
        let err = load(&be, Some(dir.to_str().unwrap()), &cache_dir(None))
            .err()
            .expect("a shard outside the folder is an error");
        assert!(
            format!("{err:#}").contains(&format!("outside the model folder: {outside:?}")),
            "{err:#}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tokenizer with Quiet-STaR's thought markers over weights without its tensors is refused:
/// the untrained head would run the baseline under Quiet-STaR's name.
#[test]
fn thought_markers_without_quiet_star_tensors_are_refused() {
    let dir = std::env::temp_dir().join(format!("ponder-loading-markers-{}", std::process::id()));
    // Vocabulary 8192 so that "---" (id 5583) has an embedding row.
    let config = config_json().replace("\"vocab_size\":512", "\"vocab_size\":8192");
    write_model(&dir, &config, 1, Store::F32, &[]);
    let path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let added = tok["added_tokens"].as_array_mut().unwrap();
    // Past every id (the tokenizers crate numbers added tokens from the vocabulary's end),
    // in the release's order: the end marker first.
    let next = 1 << 20;
    for (k, content) in ["<|endthought|>", "<|startthought|>"].iter().enumerate() {
        added.push(
            serde_json::json!({"id": next + k as u64, "content": content,
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false,
            "special": true}),
        );
    }
    std::fs::write(&path, tok.to_string()).unwrap();
    let be = Cpu::new();
    let m = load(&be, Some(dir.to_str().unwrap()), &cache_dir(None)).unwrap();
    let (start, end) = m
        .tok
        .thought_markers()
        .expect("both markers are single tokens");
    assert_eq!(start, end + 1);
    let err = QuietStar::new(&be, &m.model, &m.tok, Some(&dir), true, 8)
        .err()
        .expect("markers without the tensors are an error");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("<|startthought|>") && msg.contains("talk_head.*"),
        "{msg}"
    );
    // The same model with no folder (synthetic weights) initialises the head as before.
    assert!(QuietStar::new(&be, &m.model, &m.tok, None, true, 8).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
