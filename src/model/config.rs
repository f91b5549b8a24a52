//! The model configuration: read from an HF `config.json` (llama / mistral) or built in for
//! synthetic models. Every shape the forward pass uses is derived from here, and the loader
//! checks every tensor against it.
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The thought lengths ponder runs: start marker + n_ahead − 3 sampled tokens + end marker,
/// with 1 to 64 sampled (each output token owns 64 draws of its branch's stream for its
/// thought, quiet_star.rs; a longer thought would reuse the next token's).
const N_AHEAD: std::ops::RangeInclusive<usize> = 4..=67;

/// Refuses a thought length outside N_AHEAD; `what` names where it came from ("n_ahead" in a
/// config.json, "--n-ahead" on the command line).
pub fn check_n_ahead(what: &str, n: usize) -> Result<()> {
    if !N_AHEAD.contains(&n) {
        bail!(
            "{what} {n} is outside {}..={} (a thought is a start marker, 1 to 64 sampled \
             tokens and an end marker)",
            N_AHEAD.start(),
            N_AHEAD.end()
        );
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Mistral's sliding-window attention: a query at position i sees keys j with i − j < w.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// A Quiet-STaR checkpoint's thought length, when its config.json records one
    /// (`n_ahead`); `--n-ahead` overrides it, and 8 stands in when neither says.
    pub n_ahead: Option<usize>,
}

/// The raw JSON; optional fields get the defaults HF transformers uses.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    /// None when absent, Some(Null) when null: HF's defaults differ by type (`from_json`).
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<serde_json::Value>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<u32>,
    n_ahead: Option<usize>,
    rope_scaling: Option<serde_json::Value>,
    hidden_act: Option<String>,
}

/// A key's value when the key is there, null included (`Option`'s own rule reads null as
/// absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// `eos_token_id` as HF writes it: absent, null, one id or a list of ids.
fn eos_ids(v: Option<&serde_json::Value>) -> Result<Vec<u32>> {
    let id = |v: &serde_json::Value| v.as_u64().and_then(|v| u32::try_from(v).ok());
    Ok(match v {
        None | Some(serde_json::Value::Null) => vec![],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| id(v).context("eos_token_id holds a non-id"))
            .collect::<Result<_>>()?,
        Some(v) => vec![id(v)
            .with_context(|| format!("eos_token_id {v} is neither an id nor a list of ids"))?],
    })
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::input::refuse_non_regular(path, "")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("bad model config {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let model_type = raw
            .model_type
            .clone()
            .or_else(|| {
                raw.architectures.as_ref().and_then(|a| {
                    a.first()
                        .map(|s| s.trim_end_matches("ForCausalLM").to_lowercase())
                })
            })
            .unwrap_or_default();
        if model_type != "llama" && model_type != "mistral" {
            bail!("unsupported model_type {model_type:?} (ponder runs llama and mistral)");
        }
        // A llama body under another head (ForSequenceClassification, ForTokenClassification:
        // a `score` layer where the LM head should be) is no language model; with tied
        // embeddings it would load and generate without complaint.
        if let Some(a) = raw
            .architectures
            .iter()
            .flatten()
            .find(|a| !a.ends_with("ForCausalLM"))
        {
            bail!("architecture {a:?} is not a causal language model (ponder runs *ForCausalLM)");
        }
        if let Some(rs) = &raw.rope_scaling {
            if !rs.is_null() {
                bail!("rope_scaling {rs} is not supported");
            }
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                bail!("hidden_act {act:?} is not supported (only silu)");
            }
        }
        // Biases ponder's layers do not have: loading without them would be another model.
        for (key, on) in [
            ("attention_bias", raw.attention_bias),
            ("mlp_bias", raw.mlp_bias),
        ] {
            if on == Some(true) {
                bail!("{key} true is not supported (ponder's llama layers have no biases)");
            }
        }
        let eos_token_ids = eos_ids(raw.eos_token_id.as_ref())?;
        let mistral = model_type == "mistral";
        // HF's defaults: Mistral's attention window is 4096 unless the key says otherwise
        // (null: none); Llama has no window and ignores the key.
        let sliding_window = match &raw.sliding_window {
            _ if !mistral => None,
            None => Some(4096),
            Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|w| usize::try_from(w).ok())
                    .with_context(|| format!("sliding_window {v} is not a token count"))?,
            ),
        };
        let heads = raw.num_attention_heads;
        let cfg = Config {
            model_type,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size.checked_div(heads).unwrap_or(0)),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10000.0),
            vocab_size: raw.vocab_size,
            // HF's defaults: LlamaConfig 2048, MistralConfig 4096 * 32.
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(if mistral {
                131_072
            } else {
                2048
            }),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            sliding_window,
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
            pad_token_id: raw.pad_token_id,
            n_ahead: raw.n_ahead,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Adds the end-of-sequence ids of a `generation_config.json` beside the config (HF's
    /// `generate` stops at those: a chat model's end-of-turn token is often only there).
    pub fn add_generation_eos(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(());
        }
        crate::input::refuse_non_regular(&path, "")?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("malformed {}: {e}", path.display()))?;
        let ids =
            eos_ids(v.get("eos_token_id")).with_context(|| format!("bad {}", path.display()))?;
        for id in ids {
            if !self.eos_token_ids.contains(&id) {
                self.eos_token_ids.push(id);
            }
        }
        self.validate()
            .with_context(|| format!("bad {}", path.display()))
    }

    /// Checks the relations the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.hidden_size == 0 || c.num_hidden_layers == 0 || c.vocab_size == 0 {
            bail!("hidden_size, num_hidden_layers and vocab_size must be positive");
        }
        if let Some(n) = c.n_ahead {
            check_n_ahead("n_ahead", n)?;
        }
        if c.num_attention_heads == 0 || c.num_key_value_heads == 0 {
            bail!("attention head counts must be positive");
        }
        if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                c.num_attention_heads,
                c.num_key_value_heads
            );
        }
        if c.head_dim == 0 || !c.head_dim.is_multiple_of(2) {
            bail!(
                "head_dim {} must be even and positive (RoPE rotates pairs)",
                c.head_dim
            );
        }
        if c.intermediate_size == 0 {
            bail!("intermediate_size must be positive");
        }
        // Finite too: an eps past f32's range reads as infinity, and RMSNorm would then
        // scale every hidden state to zero.
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(c.rms_norm_eps) || !positive(c.rope_theta) {
            bail!(
                "rms_norm_eps ({}) and rope_theta ({}) must be positive and finite",
                c.rms_norm_eps,
                c.rope_theta
            );
        }
        if c.sliding_window == Some(0) {
            bail!("sliding_window 0 would hide every key");
        }
        if c.max_position_embeddings == 0 {
            bail!("max_position_embeddings 0 leaves no position for a token");
        }
        // Sizes far past any real model are a corrupt config: refused here, before anything
        // is allocated from them.
        for (name, v, max) in [
            ("num_hidden_layers", c.num_hidden_layers, 1 << 12),
            ("hidden_size", c.hidden_size, 1 << 18),
            ("intermediate_size", c.intermediate_size, 1 << 20),
            ("num_attention_heads", c.num_attention_heads, 1 << 12),
            ("head_dim", c.head_dim, 1 << 12),
            ("vocab_size", c.vocab_size, 1 << 24),
            // 16M positions (Llama-4 Scout's 10M context is the largest published).
            (
                "max_position_embeddings",
                c.max_position_embeddings,
                1 << 24,
            ),
        ] {
            if v > max {
                bail!("{name} {v} is larger than any model ponder can hold (at most {max})");
            }
        }
        let widest = c.q_dim().max(c.kv_dim()).max(c.intermediate_size);
        if widest > 1 << 20 {
            bail!(
                "a layer {widest} wide (heads × head_dim) is larger than any model ponder can hold"
            );
        }
        for id in c.bos_token_id.iter().chain(&c.eos_token_ids) {
            if *id as usize >= c.vocab_size {
                bail!(
                    "special token id {id} (bos/eos_token_id) is outside the vocabulary of {}",
                    c.vocab_size
                );
            }
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
    /// The attention geometry the backends' attention and RoPE kernels take.
    pub fn attn_dims(&self) -> crate::backend::AttnDims {
        crate::backend::AttnDims {
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
        }
    }

    /// Parameter count (embedding and LM head counted once each when untied).
    pub fn n_params(&self) -> u64 {
        let (d, f, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let attn = d * (self.q_dim() as u64) * 2 + d * (self.kv_dim() as u64) * 2;
        let layer = attn + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + head + d + self.num_hidden_layers as u64 * layer
    }

    /// Built-in architectures for synthetic weights.
    pub fn builtin(name: &str) -> Result<Self> {
        let base = |d, f, l, h, kv, v, theta: f32, tie, win| Config {
            model_type: "llama".into(),
            hidden_size: d,
            intermediate_size: f,
            num_hidden_layers: l,
            num_attention_heads: h,
            num_key_value_heads: kv,
            head_dim: d / h,
            rms_norm_eps: 1e-5,
            rope_theta: theta,
            vocab_size: v,
            max_position_embeddings: 32768,
            tie_word_embeddings: tie,
            sliding_window: win,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
            n_ahead: None,
        };
        let mut c = match name {
            "mistral-7b" => {
                let mut c = base(4096, 14336, 32, 32, 8, 32000, 10000.0, false, Some(4096));
                c.model_type = "mistral".into();
                c
            }
            "smollm2-135m" => base(576, 1536, 30, 9, 3, 49152, 100000.0, true, None),
            "tiny" => base(64, 160, 2, 4, 2, 512, 10000.0, false, None),
            _ => bail!("unknown synthetic model {name:?} (known: mistral-7b, smollm2-135m, tiny)"),
        };
        if name == "tiny" {
            c.max_position_embeddings = 4096;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_params_match_the_published_count() {
        // Mistral-7B-v0.1 has 7,241,732,096 parameters.
        assert_eq!(
            Config::builtin("mistral-7b").unwrap().n_params(),
            7_241_732_096
        );
    }

    #[test]
    fn smollm2_params_match_the_published_count() {
        // SmolLM2-135M: 134,515,008 parameters (tied embeddings).
        assert_eq!(
            Config::builtin("smollm2-135m").unwrap().n_params(),
            134_515_008
        );
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let e = Config::from_json("{").unwrap_err();
        assert!(format!("{e:#}").contains("EOF"), "{e:#}");
        let j = r#"{"model_type":"llama","hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":3,"num_key_value_heads":2,"vocab_size":10}"#;
        let e = Config::from_json(j).unwrap_err();
        assert!(format!("{e:#}").contains("multiple"), "{e:#}");
        let j = r#"{"model_type":"gpt2","hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":4,"vocab_size":10}"#;
        assert!(format!("{:#}", Config::from_json(j).unwrap_err()).contains("gpt2"));
        // Sizes no model has, and ids outside the vocabulary, are refused before anything is
        // allocated from them.
        let base: serde_json::Value = serde_json::from_str(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":8,
            "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":10}"#,
        )
        .unwrap();
        for (key, value, says) in [
            (
                "num_hidden_layers",
                "4000000000",
                "num_hidden_layers 4000000000",
            ),
            ("vocab_size", "100000000000", "vocab_size 100000000000"),
            ("max_position_embeddings", "0", "max_position_embeddings 0"),
            (
                "max_position_embeddings",
                "18446744073709551615",
                "max_position_embeddings 18446744073709551615 is larger",
            ),
            ("eos_token_id", "[2,99999]", "special token id 99999"),
            ("bos_token_id", "10", "special token id 10"),
            ("n_ahead", "2", "n_ahead 2"),
            ("n_ahead", "3", "n_ahead 3 is outside 4..=67"),
            ("n_ahead", "68", "n_ahead 68"),
            (
                "attention_bias",
                "true",
                "attention_bias true is not supported",
            ),
            ("mlp_bias", "true", "mlp_bias true is not supported"),
            (
                "architectures",
                r#"["LlamaForSequenceClassification"]"#,
                "\"LlamaForSequenceClassification\" is not a causal language model",
            ),
        ] {
            let mut j = base.clone();
            j[key] = serde_json::from_str(value).unwrap();
            let e = Config::from_json(&j.to_string()).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{key}: {e:#}");
        }
        assert!(Config::from_json(&base.to_string()).is_ok());
        let mut j = base.clone();
        j["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        assert!(Config::from_json(&j.to_string()).is_ok());
    }

    /// HF's per-type defaults: Mistral's window is 4096 unless the key says otherwise, Llama
    /// has none whatever the key says.
    #[test]
    fn defaults_follow_the_model_type() {
        let cfg = |ty: &str, extra: &str| {
            Config::from_json(&format!(
                r#"{{"model_type":"{ty}","hidden_size":64,"intermediate_size":8,
                "num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10{extra}}}"#
            ))
            .unwrap()
        };
        let window = |ty, extra| cfg(ty, extra).sliding_window;
        assert_eq!(window("mistral", ""), Some(4096));
        assert_eq!(window("mistral", r#","sliding_window":null"#), None);
        assert_eq!(window("mistral", r#","sliding_window":512"#), Some(512));
        assert_eq!(window("llama", r#","sliding_window":512"#), None);
        assert_eq!(cfg("llama", "").max_position_embeddings, 2048);
        assert_eq!(cfg("mistral", "").max_position_embeddings, 131_072);
        assert_eq!(cfg("llama", r#","attention_bias":false"#).hidden_size, 64);
    }

    #[test]
    fn generation_config_adds_its_end_of_sequence_ids() {
        let dir = std::env::temp_dir().join(format!("ponder-gencfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Config::from_json(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,"eos_token_id":2}"#,
        )
        .unwrap();
        c.add_generation_eos(&dir).unwrap();
        assert_eq!(c.eos_token_ids, [2]);
        let file = dir.join("generation_config.json");
        std::fs::write(&file, r#"{"eos_token_id":[2,7]}"#).unwrap();
        c.add_generation_eos(&dir).unwrap();
        assert_eq!(c.eos_token_ids, [2, 7]);
        std::fs::write(&file, r#"{"eos_token_id":12}"#).unwrap();
        let e = format!("{:#}", c.clone().add_generation_eos(&dir).unwrap_err());
        assert!(e.contains("special token id 12"), "{e}");
        std::fs::write(&file, "{").unwrap();
        let e = format!("{:#}", c.add_generation_eos(&dir).unwrap_err());
        assert!(e.contains("malformed") && !e.contains('\n'), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
