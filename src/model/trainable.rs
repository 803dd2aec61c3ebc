//! Every weight of the model as a trainable variable, for full fine-tuning: each tensor is replaced by
//! a [`Var`] the forward pass reads (a tied output head shares the embedding's), quantised copies are
//! dropped (they would go stale), and [`Model::sync_trained`] refreshes what the CPU pass caches.

use candle_core::{Tensor, Var};

use super::config::Positions;
use super::decoder::Model;
use super::layers::{Linear, Norm};
use crate::{Error, Result};

/// The names of the weights to make trainable.
type Keep<'a> = &'a dyn Fn(&str) -> bool;

/// Wraps `t` in a variable (if `keep` names it), replaces it by the variable's tensor, and records it.
fn make_var(
    t: &mut Tensor,
    name: String,
    decay: bool,
    out: &mut Vec<(String, Var, bool)>,
    keep: Keep,
) -> Result<()> {
    if !keep(&name) {
        return Ok(());
    }
    let var = Var::from_tensor(t)?;
    *t = var.as_tensor().clone();
    out.push((name, var, decay));
    Ok(())
}

fn linear_vars(
    l: &mut Linear,
    name: &str,
    out: &mut Vec<(String, Var, bool)>,
    keep: Keep,
) -> Result<()> {
    let before = out.len();
    make_var(&mut l.weight, format!("{name}.weight"), true, out, keep)?;
    if let Some(b) = l.bias.as_mut() {
        make_var(b, format!("{name}.bias"), false, out, keep)?;
    }
    if out.len() > before {
        l.drop_quantized();
    }
    Ok(())
}

fn norm_vars(
    n: &mut Norm,
    name: &str,
    out: &mut Vec<(String, Var, bool)>,
    keep: Keep,
) -> Result<()> {
    let (scale, bias) = n.tensors_mut();
    make_var(scale, format!("{name}.scale"), false, out, keep)?;
    if let Some(b) = bias {
        make_var(b, format!("{name}.bias"), false, out, keep)?;
    }
    Ok(())
}

impl Model {
    /// Makes every weight trainable; returns (name, variable, decays?) with dsg's names for its fused
    /// maps (`blocks.3.attn.qkv.weight`). Biases, norm scales and embeddings do not decay (Hugging
    /// Face's rule for biases and norms; embeddings as PyTorch's default groups leave them, decayed,
    /// would shrink rare tokens' rows).
    pub fn full_parameters(&mut self) -> Result<Vec<(String, Var, bool)>> {
        self.parameters_where(&|_| true)
    }

    /// [`Model::full_parameters`] for the weights whose names `keep` accepts only; the others stay
    /// frozen (and quantised).
    pub fn parameters_where(&mut self, keep: Keep) -> Result<Vec<(String, Var, bool)>> {
        let mut out = Vec::new();
        let tied = self.cfg.tie_embeddings;
        make_var(&mut self.embed, "embed".into(), false, &mut out, keep)?;
        if tied && keep("embed") {
            self.lm_head.drop_quantized();
            self.lm_head.weight = self.embed.clone();
        }
        if let Some(p) = self.pos_embed.as_mut() {
            make_var(p, "pos_embed".into(), false, &mut out, keep)?;
        }
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("blocks.{i}");
            norm_vars(&mut b.attn_norm, &format!("{p}.attn_norm"), &mut out, keep)?;
            linear_vars(&mut b.attn.qkv, &format!("{p}.attn.qkv"), &mut out, keep)?;
            linear_vars(&mut b.attn.o, &format!("{p}.attn.o"), &mut out, keep)?;
            if let Some(n) = b.attn.q_norm.as_mut() {
                norm_vars(n, &format!("{p}.attn.q_norm"), &mut out, keep)?;
            }
            if let Some(n) = b.attn.k_norm.as_mut() {
                norm_vars(n, &format!("{p}.attn.k_norm"), &mut out, keep)?;
            }
            if let Some(n) = b.post_attn_norm.as_mut() {
                norm_vars(n, &format!("{p}.post_attn_norm"), &mut out, keep)?;
            }
            norm_vars(&mut b.mlp_norm, &format!("{p}.mlp_norm"), &mut out, keep)?;
            linear_vars(&mut b.mlp.up, &format!("{p}.mlp.up"), &mut out, keep)?;
            linear_vars(&mut b.mlp.down, &format!("{p}.mlp.down"), &mut out, keep)?;
            if let Some(n) = b.post_mlp_norm.as_mut() {
                norm_vars(n, &format!("{p}.post_mlp_norm"), &mut out, keep)?;
            }
        }
        norm_vars(&mut self.final_norm, "final_norm", &mut out, keep)?;
        if !tied {
            linear_vars(&mut self.lm_head, "lm_head", &mut out, keep)?;
        }
        Ok(out)
    }

    /// Refreshes the copies of norm weights the CPU pass reads, after their variables changed.
    pub fn sync_trained(&mut self) -> Result<()> {
        for b in &mut self.blocks {
            b.attn_norm.sync()?;
            b.mlp_norm.sync()?;
            if let Some(n) = b.post_attn_norm.as_mut() {
                n.sync()?;
            }
            if let Some(n) = b.post_mlp_norm.as_mut() {
                n.sync()?;
            }
            for n in [b.attn.q_norm.as_mut(), b.attn.k_norm.as_mut()]
                .into_iter()
                .flatten()
            {
                n.sync()?;
            }
        }
        self.final_norm.sync()
    }
}

impl Model {
    /// Every weight under its Hugging Face name and layout (fused maps split, Gemma's norm offset
    /// removed), as a fine-tuned model's `model.safetensors` holds them; [`WeightSource::overlay`]
    /// reads them back over the base model. Llama-family layouts only.
    ///
    /// [`WeightSource::overlay`]: super::WeightSource::overlay
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        if self.cfg.positions == Positions::Learned {
            return Err(Error::Unsupported(
                "writing GPT-2 weights after full fine-tuning (train a LoRA adapter instead)"
                    .into(),
            ));
        }
        let c = &self.cfg;
        let (qd, kvd, dff) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.d_ff);
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        let norm = |out: &mut Vec<(String, Tensor)>, n: &Norm, name: String| -> Result<()> {
            let (w, b) = n.hf_tensors()?;
            if let Some(b) = b {
                out.push((format!("{name}.bias"), b));
            }
            out.push((format!("{name}.weight"), w));
            Ok(())
        };
        let split =
            |out: &mut Vec<(String, Tensor)>, l: &Linear, parts: &[(&str, usize)]| -> Result<()> {
                let mut at = 0;
                for (name, n) in parts {
                    out.push((format!("{name}.weight"), l.weight.narrow(0, at, *n)?));
                    if let Some(b) = &l.bias {
                        out.push((format!("{name}.bias"), b.narrow(0, at, *n)?));
                    }
                    at += n;
                }
                Ok(())
            };
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            norm(&mut out, &b.attn_norm, format!("{p}.input_layernorm"))?;
            let (q, k, v) = (
                format!("{p}.self_attn.q_proj"),
                format!("{p}.self_attn.k_proj"),
                format!("{p}.self_attn.v_proj"),
            );
            split(&mut out, &b.attn.qkv, &[(&q, qd), (&k, kvd), (&v, kvd)])?;
            let o = format!("{p}.self_attn.o_proj");
            split(&mut out, &b.attn.o, &[(&o, c.d_model)])?;
            if let Some(n) = &b.attn.q_norm {
                norm(&mut out, n, format!("{p}.self_attn.q_norm"))?;
            }
            if let Some(n) = &b.attn.k_norm {
                norm(&mut out, n, format!("{p}.self_attn.k_norm"))?;
            }
            match (&b.post_attn_norm, &b.post_mlp_norm) {
                (Some(pa), Some(pm)) => {
                    norm(&mut out, pa, format!("{p}.post_attention_layernorm"))?;
                    norm(
                        &mut out,
                        &b.mlp_norm,
                        format!("{p}.pre_feedforward_layernorm"),
                    )?;
                    norm(&mut out, pm, format!("{p}.post_feedforward_layernorm"))?;
                }
                _ => norm(
                    &mut out,
                    &b.mlp_norm,
                    format!("{p}.post_attention_layernorm"),
                )?,
            }
            let (g, u, d) = (
                format!("{p}.mlp.gate_proj"),
                format!("{p}.mlp.up_proj"),
                format!("{p}.mlp.down_proj"),
            );
            split(&mut out, &b.mlp.up, &[(&g, dff), (&u, dff)])?;
            split(&mut out, &b.mlp.down, &[(&d, c.d_model)])?;
        }
        norm(&mut out, &self.final_norm, "model.norm".into())?;
        if !c.tie_embeddings {
            out.push(("lm_head.weight".into(), self.lm_head.weight.clone()));
        }
        out.into_iter()
            .map(|(n, t)| Ok((n, t.detach().contiguous()?)))
            .collect()
    }
}
