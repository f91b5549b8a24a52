//! HF directories: one f32 file and bf16 shards with an index load to the same model.
use half::bf16;
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::generate::Runner;
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

fn write_dir(dir: &Path, shards: usize, bf: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config_json()).unwrap();
    let default = ensure_default_model(&cache_dir(None)).unwrap();
    std::fs::copy(default.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let cfg = Config::from_json(config_json()).unwrap();
    let syn = Synthetic { seed: 7 };
    let all = names(&cfg);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = all
        .iter()
        .map(|(n, s)| {
            let v = syn.param(n, s).unwrap();
            let b: Vec<u8> = if bf {
                v.as_slice()
                    .iter()
                    .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                    .collect()
            } else {
                v.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            (n.clone(), s.clone(), b)
        })
        .collect();
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
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(if bf { Dtype::BF16 } else { Dtype::F32 }, s.clone(), b)
                        .unwrap(),
                )
            })
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

#[test]
fn f32_file_and_bf16_shards_load_the_same_model() {
    let root = std::env::temp_dir().join(format!("ponder-loading-{}", std::process::id()));
    let (a, b) = (root.join("f32"), root.join("bf16-sharded"));
    write_dir(&a, 1, false);
    write_dir(&b, 3, true);
    let be = Cpu::new();
    let cache = cache_dir(None);
    let direct = Model::load(
        &be,
        Config::from_json(config_json()).unwrap(),
        &Synthetic { seed: 7 },
    )
    .unwrap();
    let la = load(&be, Some(a.to_str().unwrap()), &cache).unwrap();
    let lb = load(&be, Some(b.to_str().unwrap()), &cache).unwrap();
    let (x, y, z) = (
        logits(&be, &direct),
        logits(&be, &la.model),
        logits(&be, &lb.model),
    );
    assert_eq!(x, y, "an f32 file must load bit for bit");
    let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = x
        .iter()
        .zip(&z)
        .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()))
        / scale;
    assert!(err < 0.05, "bf16 shards differ by {err} relative");
    assert!(err > 0.0, "bf16 rounding should show");
    let _ = std::fs::remove_dir_all(&root);
}
