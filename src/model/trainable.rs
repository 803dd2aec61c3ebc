//! Every weight of the model as a trainable variable, for full fine-tuning: each tensor is replaced by
//! a [`Var`] the forward pass reads (a tied output head shares the embedding's), quantised copies are
//! dropped (they would go stale), and [`Model::sync_trained`] refreshes what the CPU pass caches.

use candle_core::{Tensor, Var};

use super::decoder::Model;
use super::layers::{Linear, Norm};
use crate::Result;

/// Wraps `t` in a variable, replaces it by the variable's tensor, and records it.
fn make_var(
    t: &mut Tensor,
    name: String,
    decay: bool,
    out: &mut Vec<(String, Var, bool)>,
) -> Result<()> {
    let var = Var::from_tensor(t)?;
    *t = var.as_tensor().clone();
    out.push((name, var, decay));
    Ok(())
}

fn linear_vars(l: &mut Linear, name: &str, out: &mut Vec<(String, Var, bool)>) -> Result<()> {
    l.drop_quantized();
    make_var(&mut l.weight, format!("{name}.weight"), true, out)?;
    if let Some(b) = l.bias.as_mut() {
        make_var(b, format!("{name}.bias"), false, out)?;
    }
    Ok(())
}

fn norm_vars(n: &mut Norm, name: &str, out: &mut Vec<(String, Var, bool)>) -> Result<()> {
    let (scale, bias) = n.tensors_mut();
    make_var(scale, format!("{name}.scale"), false, out)?;
    if let Some(b) = bias {
        make_var(b, format!("{name}.bias"), false, out)?;
    }
    Ok(())
}

impl Model {
    /// Makes every weight trainable; returns (name, variable, decays?) with dsg's names for its fused
    /// maps (`blocks.3.attn.qkv.weight`). Biases, norm scales and embeddings do not decay (Hugging
    /// Face's rule for biases and norms; embeddings as PyTorch's default groups leave them, decayed,
    /// would shrink rare tokens' rows).
    pub fn full_parameters(&mut self) -> Result<Vec<(String, Var, bool)>> {
        let mut out = Vec::new();
        let tied = self.cfg.tie_embeddings;
        make_var(&mut self.embed, "embed".into(), false, &mut out)?;
        if tied {
            self.lm_head.drop_quantized();
            self.lm_head.weight = self.embed.clone();
        }
        if let Some(p) = self.pos_embed.as_mut() {
            make_var(p, "pos_embed".into(), false, &mut out)?;
        }
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("blocks.{i}");
            norm_vars(&mut b.attn_norm, &format!("{p}.attn_norm"), &mut out)?;
            linear_vars(&mut b.attn.qkv, &format!("{p}.attn.qkv"), &mut out)?;
            linear_vars(&mut b.attn.o, &format!("{p}.attn.o"), &mut out)?;
            if let Some(n) = b.post_attn_norm.as_mut() {
                norm_vars(n, &format!("{p}.post_attn_norm"), &mut out)?;
            }
            norm_vars(&mut b.mlp_norm, &format!("{p}.mlp_norm"), &mut out)?;
            linear_vars(&mut b.mlp.up, &format!("{p}.mlp.up"), &mut out)?;
            linear_vars(&mut b.mlp.down, &format!("{p}.mlp.down"), &mut out)?;
            if let Some(n) = b.post_mlp_norm.as_mut() {
                norm_vars(n, &format!("{p}.post_mlp_norm"), &mut out)?;
            }
        }
        norm_vars(&mut self.final_norm, "final_norm", &mut out)?;
        if !tied {
            linear_vars(&mut self.lm_head, "lm_head", &mut out)?;
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
        }
        self.final_norm.sync()
    }
}
