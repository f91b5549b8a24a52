//! The llama / mistral forward pass over any Backend, on a ragged batch of sequences whose
//! K/V live in the paged pool.
use super::config::Config;
use super::weights::{DType, Weights};
use crate::backend::{AttnDims, Backend, Batch, WeightData};
use anyhow::{Context, Result};
use std::borrow::Cow;

/// One decoder layer. The projections that read the same input are stacked into one weight
/// each, as vLLM and SGLang do: q|k|v and gate|up run as one matrix product apiece (4 per
/// layer instead of 7), which on a GPU saves launches and turns the small k and v products
/// of a decode step into part of a larger one; on the CPU every output is still the same dot
/// product, so results are bit for bit those of separate products.
pub struct Layer<B: Backend> {
    pub attn_norm: B::Weight,
    /// [q_dim + 2·kv_dim, hidden]: q_proj, k_proj, v_proj stacked by rows.
    pub qkv: B::Weight,
    pub o: B::Weight,
    pub mlp_norm: B::Weight,
    /// [2·intermediate, hidden]: gate_proj, up_proj stacked by rows.
    pub gate_up: B::Weight,
    pub down: B::Weight,
}

pub struct Model<B: Backend> {
    pub cfg: Config,
    pub embed: B::Weight,
    pub layers: Vec<Layer<B>>,
    pub norm: B::Weight,
    /// None when the LM head is tied to the embedding.
    pub lm_head: Option<B::Weight>,
}

/// What a forward pass returns: for the last token of every sequence (every token of a
/// thought block, see `Batch::output_rows`), the final hidden state (after the last RMSNorm),
/// and the logits of the sequences that asked for them (`SeqSlice::logits`), in order.
pub struct Output<B: Backend> {
    pub hidden: B::Tensor,
    /// None when no sequence of the pass asked for logits.
    pub logits: Option<B::Tensor>,
}

impl<B: Backend> Output<B> {
    /// The logits rows; an error for a pass that asked for hidden states only.
    pub fn logits(&self) -> Result<&B::Tensor> {
        self.logits.as_ref().ok_or_else(hidden_only)
    }

    /// The same, by value.
    pub fn into_logits(self) -> Result<B::Tensor> {
        self.logits.ok_or_else(hidden_only)
    }
}

fn hidden_only() -> anyhow::Error {
    anyhow::anyhow!("the forward pass was asked for hidden states only")
}

/// A source of parameter values, so that real and synthetic models load the same way.
pub trait ParamSource {
    fn param(&self, name: &str, shape: &[usize]) -> Result<WeightData<'_>>;
    fn has(&self, name: &str) -> bool;
}

impl ParamSource for Weights {
    fn param(&self, name: &str, shape: &[usize]) -> Result<WeightData<'_>> {
        let t = self.get(name, shape)?;
        // Every dtype stays as stored: zero-copy where aligned, else copied (a 16-bit value
        // from its two little-endian bytes).
        if let Some(m) = t.mapped_f32() {
            return Ok(WeightData::Mapped(m));
        }
        if let Some(m) = t.mapped_bf16() {
            return Ok(WeightData::MappedBf16(m));
        }
        if let Some(m) = t.mapped_f16() {
            return Ok(WeightData::MappedF16(m));
        }
        let halves = t.bytes().chunks_exact(2);
        let halves = halves.map(|c| u16::from_le_bytes([c[0], c[1]]));
        Ok(match t.dtype {
            DType::F32 => WeightData::Host(t.to_f32()),
            DType::Bf16 => WeightData::HostBf16(Cow::Owned(halves.collect())),
            DType::F16 => {
                WeightData::HostF16(Cow::Owned(halves.map(half::f16::from_bits).collect()))
            }
        })
    }
    fn has(&self, name: &str) -> bool {
        Weights::has(self, name)
    }
}

/// Whether a checkpoint tensor is one ponder's llama reads, or harmlessly ignores (a stored
/// RoPE table; Quiet-STaR's own top-level tensors, which `methods::quiet_star` reads). Any
/// other `model.*` tensor (a bias, a q/k norm) belongs to a layer ponder does not compute:
/// running without it would be another model.
pub fn is_llama_tensor(name: &str) -> bool {
    const LAYER: [&str; 10] = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "self_attn.rotary_emb.inv_freq",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ];
    if let Some(rest) = name.strip_prefix("model.layers.") {
        return rest.split_once('.').is_some_and(|(i, part)| {
            i.bytes().all(|b| b.is_ascii_digit()) && LAYER.contains(&part)
        });
    }
    if name.starts_with("model.") || name.starts_with("lm_head.") {
        return matches!(
            name,
            "model.embed_tokens.weight"
                | "model.norm.weight"
                | "model.rotary_emb.inv_freq"
                | "lm_head.weight"
        );
    }
    true
}

impl<B: Backend> Model<B> {
    /// Builds the model from `src`, checking every tensor's shape against `cfg`.
    pub fn load(be: &B, cfg: Config, src: &dyn ParamSource) -> Result<Self> {
        let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let w = |name: &str, shape: &[usize]| -> Result<B::Weight> {
            let data = src.param(name, shape)?;
            be.weight(shape, data)
                .with_context(|| format!("cannot place tensor {name}"))
        };
        // Parameters of one input width stacked by rows into one weight.
        let stacked = |parts: &[(String, usize)]| -> Result<B::Weight> {
            let data = parts
                .iter()
                .map(|(name, r)| Ok((*r, src.param(name, &[*r, d])?)))
                .collect::<Result<Vec<_>>>()?;
            be.stacked_weight(d, data)
                .with_context(|| format!("cannot place tensor {} (stacked)", parts[0].0))
        };
        let embed = w("model.embed_tokens.weight", &[v, d])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: w(&format!("{p}.input_layernorm.weight"), &[d])?,
                qkv: stacked(&[
                    (format!("{p}.self_attn.q_proj.weight"), cfg.q_dim()),
                    (format!("{p}.self_attn.k_proj.weight"), cfg.kv_dim()),
                    (format!("{p}.self_attn.v_proj.weight"), cfg.kv_dim()),
                ])?,
                o: w(&format!("{p}.self_attn.o_proj.weight"), &[d, cfg.q_dim()])?,
                mlp_norm: w(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
                gate_up: stacked(&[
                    (format!("{p}.mlp.gate_proj.weight"), f),
                    (format!("{p}.mlp.up_proj.weight"), f),
                ])?,
                down: w(&format!("{p}.mlp.down_proj.weight"), &[d, f])?,
            });
        }
        let norm = w("model.norm.weight", &[d])?;
        // A checkpoint may ship lm_head even when tied; untied models must ship it.
        let lm_head = if src.has("lm_head.weight") || !cfg.tie_word_embeddings {
            Some(w("lm_head.weight", &[v, d])?)
        } else {
            None
        };
        Ok(Model {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    pub fn dims(&self) -> AttnDims {
        self.cfg.attn_dims()
    }

    pub fn lm_head(&self) -> &B::Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Runs the new tokens `ids` (concatenated in batch order) through the model, writing
    /// their K/V into `kv`, and returns hidden states and logits of each sequence's last token.
    pub fn forward(&self, be: &B, kv: &mut B::Kv, batch: &Batch, ids: &[u32]) -> Result<Output<B>> {
        be.run_pass(|| {
            let x = be.embed(&self.embed, ids)?;
            self.layers_and_head(be, kv, batch, x)
        })
    }

    /// The same, from input embeddings (Quiet-STaR feeds its thought markers this way).
    pub fn forward_embedded(
        &self,
        be: &B,
        kv: &mut B::Kv,
        batch: &Batch,
        x: B::Tensor,
    ) -> Result<Output<B>> {
        be.run_pass(|| self.layers_and_head(be, kv, batch, x))
    }

    fn layers_and_head(
        &self,
        be: &B,
        kv: &mut B::Kv,
        batch: &Batch,
        mut x: B::Tensor,
    ) -> Result<Output<B>> {
        anyhow::ensure!(
            be.shape(&x).0 == batch.n_tokens(),
            "forward: batch and inputs differ"
        );
        let eps = self.cfg.rms_norm_eps;
        let dims = self.dims();
        let mut h = be.rms_norm(&x, &self.layers[0].attn_norm, eps)?;
        for (i, l) in self.layers.iter().enumerate() {
            let qkv = be.linear(&h, &l.qkv)?;
            let q = be.rope_store_kv(&qkv, kv, i, batch, dims)?;
            drop(qkv);
            let a = be.attention(&q, kv, i, batch, dims)?;
            let o = be.linear(&a, &l.o)?;
            h = be.add_rms_norm(&mut x, &o, &l.mlp_norm, eps)?;
            let gate_up = be.linear(&h, &l.gate_up)?;
            let m = be.silu_mul(&gate_up)?;
            drop(gate_up);
            let dn = be.linear(&m, &l.down)?;
            let next_norm = match self.layers.get(i + 1) {
                Some(n) => &n.attn_norm,
                None => &self.norm,
            };
            h = be.add_rms_norm(&mut x, &dn, next_norm, eps)?;
        }
        // Only each sequence's last token is returned (every token of a thought block), and
        // only the rows whose caller reads logits go through the LM head.
        let last = batch.output_rows();
        let hidden = if last.len() == batch.n_tokens() {
            h
        } else {
            be.gather_rows(&h, &last)?
        };
        let with_logits = batch.logit_rows();
        let logits = if with_logits.is_empty() {
            None
        } else if with_logits.len() == last.len() {
            Some(be.linear(&hidden, self.lm_head())?)
        } else {
            // Some output rows with logits, not all: those rows of `hidden` alone.
            let part = be.gather_rows(&hidden, &with_logits)?;
            Some(be.linear(&part, self.lm_head())?)
        };
        Ok(Output { hidden, logits })
    }
}

/// Seeded random parameters for synthetic models: uniform in ±sqrt(3/fan_in) (unit variance
/// activations through each linear) rounded to bf16, norms at 1. Deterministic for a given
/// seed and name.
pub struct Synthetic {
    pub seed: u64,
}

impl ParamSource for Synthetic {
    fn param(&self, name: &str, shape: &[usize]) -> Result<WeightData<'_>> {
        let n: usize = shape.iter().product();
        if shape.len() == 1 {
            return Ok(WeightData::Host(Cow::Owned(vec![1.0; n])));
        }
        let fan_in = shape[1] as f32;
        let bound = (3.0 / fan_in).sqrt();
        let h = crate::rng::fnv1a(crate::rng::FNV_OFFSET ^ self.seed, name.as_bytes());
        let data = crate::rng::fill_uniform(h, n, bound);
        // Rounded to bf16, as a real checkpoint's weights are: every backend then holds the
        // same values (the CUDA backend holds bf16, the CPU widens exactly).
        let bits = crate::backend::round_to_bf16_bits(&data);
        Ok(WeightData::HostBf16(Cow::Owned(bits)))
    }
    fn has(&self, _name: &str) -> bool {
        false
    }
}

/// Another source's parameters rounded to bf16 (nearest even), as the CUDA backend holds them;
/// bf16 values pass unchanged.
pub struct RoundedToBf16<'a>(pub &'a dyn ParamSource);

impl ParamSource for RoundedToBf16<'_> {
    fn param(&self, name: &str, shape: &[usize]) -> Result<WeightData<'_>> {
        let data = self.0.param(name, shape)?;
        if data.bf16_bits().is_some() {
            return Ok(data);
        }
        let bits = data.to_bf16_bits().into_owned();
        Ok(WeightData::HostBf16(Cow::Owned(bits)))
    }
    fn has(&self, name: &str) -> bool {
        self.0.has(name)
    }
}

#[cfg(test)]
mod tests {
    use super::is_llama_tensor;

    #[test]
    fn tensors_of_other_layers_are_told_apart() {
        for ok in [
            "model.embed_tokens.weight",
            "model.layers.31.mlp.down_proj.weight",
            "model.layers.0.self_attn.rotary_emb.inv_freq",
            "model.rotary_emb.inv_freq",
            "lm_head.weight",
            "start_embedding",
            "talk_head.0.0.bias",
        ] {
            assert!(is_llama_tensor(ok), "{ok}");
        }
        for other in [
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.mlp.down_proj.bias",
            "model.layers.0.self_attn.q_norm.weight",
            "model.layers.x.mlp.up_proj.weight",
            "model.rotary_emb.weight",
            "lm_head.bias",
        ] {
            assert!(!is_llama_tensor(other), "{other}");
        }
    }
}
