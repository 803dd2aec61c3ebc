//! The single-token decoding step on the CPU: the same blocks as [`Model::forward`], on plain
//! vectors instead of tensors. A step is about 120 small products; a tensor op per norm, add and
//! activation around them cost more than the products at this size, so here the residual stays one
//! `Vec` and only the hook points a caller asked for see a tensor.

use candle_core::Tensor;

use super::attention::RopeTables;
use super::decoder::{visit_site, Batch, ForwardOptions, ForwardOutput, Logits, Model};
use super::hooks::{HookContext, HookPoint, Hooks, Site};
use super::kv::KvCache;
use super::matvec::gather_rows;
use crate::Result;

impl Model {
    /// One new token per row of `batch`, attending over `cache` (extended here), with the keys each
    /// window in `windows` may see from `visibility` (same order). Called by [`Model::forward`] for decoding steps.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step(
        &self,
        batch: &Batch,
        opts: &ForwardOptions,
        hooks: &mut dyn Hooks,
        ctx: &HookContext,
        cache: &mut KvCache,
        windows: &[Option<usize>],
        visibility: &[Vec<Vec<bool>>],
        rope: Option<&RopeTables>,
    ) -> Result<ForwardOutput> {
        let b = batch.len();
        let d = self.cfg.d_model;
        let q = opts.quantized;
        let ids = batch.rows().iter().map(|r| r[0] as usize);
        let mut x = gather_rows(&self.embed, ids)?;
        if let Some(s) = self.cfg.embed_scale {
            // The tensor path multiplies in f64 and rounds once; so does this.
            x.iter_mut()
                .for_each(|v| *v = (*v as f64 * s as f64) as f32);
        }
        if let Some(pe) = &self.pos_embed {
            let pos = gather_rows(pe, ctx.start_positions.iter().copied())?;
            x.iter_mut().zip(&pos).for_each(|(v, p)| *v += p);
        }
        let device = self.device();
        let mut visit = |layer: usize, site: Site, v: Vec<f32>| -> Result<Vec<f32>> {
            if !hooks.wants(HookPoint { layer, site }) {
                return Ok(v);
            }
            let t = Tensor::from_vec(v, (b, 1, d), device)?;
            Ok(visit_site(hooks, ctx, layer, site, t)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let add = |x: &mut Vec<f32>, y: &[f32]| x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        let last_block = opts.stop_after.unwrap_or(self.cfg.n_layers - 1);
        for (layer, blk) in self.blocks.iter().enumerate().take(last_block + 1) {
            x = visit(layer, Site::ResidPre, x)?;
            let h = blk.attn_norm.forward_rows(&x);
            let lkv = &mut cache.layers[layer];
            let wi = windows
                .iter()
                .position(|w| *w == blk.window)
                .expect("listed");
            let mut a = blk.attn.step(&h, b, rope, lkv, &visibility[wi], q)?;
            if let Some(n) = &blk.post_attn_norm {
                a = n.forward_rows(&a);
            }
            let a = visit(layer, Site::AttnOut, a)?;
            add(&mut x, &a);
            x = visit(layer, Site::ResidMid, x)?;
            let mut m = blk.mlp.forward_rows(&blk.mlp_norm.forward_rows(&x), b, q)?;
            if let Some(n) = &blk.post_mlp_norm {
                m = n.forward_rows(&m);
            }
            let m = visit(layer, Site::MlpOut, m)?;
            add(&mut x, &m);
            x = visit(layer, Site::ResidPost, x)?;
        }
        let logits = match (opts.logits, opts.stop_after) {
            (Logits::None, _) | (_, Some(_)) => None,
            (kind, None) => {
                let h = self.final_norm.forward_rows(&x);
                let mut logits = self.lm_head.forward_rows(&h, b, q)?;
                if let Some(cap) = self.cfg.final_softcap {
                    let cap = cap as f32;
                    logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
                }
                let vocab = logits.len() / b;
                Some(match kind {
                    Logits::All => Tensor::from_vec(logits, (b, 1, vocab), device)?,
                    _ => Tensor::from_vec(logits, (b, vocab), device)?,
                })
            }
        };
        Ok(ForwardOutput {
            logits,
            residual: Tensor::from_vec(x, (b, 1, d), device)?,
        })
    }
}
