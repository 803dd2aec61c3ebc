//! The forward pass on the CPU on plain vectors: the same blocks as the tensor path of
//! [`Model::forward`], with the residual as one `Vec` of batch · seq rows, dsg's own kernels for the
//! products and attention, and a tensor only at the hook points a caller asked for.
//!
//! A decoding step is about 120 small products, where a tensor op per norm, add and activation
//! cost more than the products; a prefill spends its time in products and attention, which here
//! run on the team without the head transposes, chunk copies and masks of the tensor path.

use candle_core::Tensor;

use super::attend::Positions;
use super::attention::RopeTables;
use super::decoder::{visit_site, Batch, ForwardOptions, ForwardOutput, Logits, Model};
use super::hooks::{HookContext, HookPoint, Hooks, Site};
use super::kv::{KvCache, LayerKv};
use super::matvec::gather_rows;
use crate::Result;

impl Model {
    /// Runs `batch` (rows right-padded to `l` tokens, at `query_pos`) through the blocks, attending
    /// over the columns `key_pos` lists (the new tokens included) and appending keys and values to
    /// `cache` if given. Called by [`Model::forward`] on the CPU with fused f32 kernels.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn cpu_pass(
        &self,
        batch: &Batch,
        opts: &ForwardOptions,
        hooks: &mut dyn Hooks,
        ctx: &HookContext,
        mut cache: Option<&mut KvCache>,
        query_pos: &[Vec<usize>],
        key_pos: &[Vec<Option<usize>>],
        rope: Option<&RopeTables>,
    ) -> Result<ForwardOutput> {
        let (b, l) = (batch.len(), batch.seq_len());
        let d = self.cfg.d_model;
        let q = opts.quantized;
        let ids = batch
            .rows()
            .iter()
            .flat_map(|r| (0..l).map(|i| r.get(i).map_or(0, |&t| t as usize)));
        let mut x = gather_rows(&self.embed, ids)?;
        if let Some(s) = self.cfg.embed_scale {
            // The tensor path multiplies in f64 and rounds once; so does this.
            x.iter_mut()
                .for_each(|v| *v = (*v as f64 * s as f64) as f32);
        }
        if let Some(pe) = &self.pos_embed {
            let pos = gather_rows(pe, query_pos.iter().flatten().copied())?;
            x.iter_mut().zip(&pos).for_each(|(v, p)| *v += p);
        }
        let device = self.device();
        let mut visit = |layer: usize, site: Site, v: Vec<f32>| -> Result<Vec<f32>> {
            if !hooks.wants(HookPoint { layer, site }) {
                return Ok(v);
            }
            let t = Tensor::from_vec(v, (b, l, d), device)?;
            Ok(visit_site(hooks, ctx, layer, site, t)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let add = |x: &mut Vec<f32>, y: &[f32]| x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        // Without a cache, one layer's keys and values at a time.
        let mut scratch = LayerKv::default();
        let last_block = opts.stop_after.unwrap_or(self.cfg.n_layers - 1);
        for (layer, blk) in self.blocks.iter().enumerate().take(last_block + 1) {
            x = visit(layer, Site::ResidPre, x)?;
            let h = blk.attn_norm.forward_rows(&x);
            let lkv = match cache.as_deref_mut() {
                Some(c) => &mut c.layers[layer],
                None => {
                    scratch.clear();
                    &mut scratch
                }
            };
            let pos = Positions {
                query: query_pos,
                key: key_pos,
                window: blk.window,
            };
            let mut a = blk.attn.forward_rows(&h, b, rope, lkv, &pos, q)?;
            if let Some(n) = &blk.post_attn_norm {
                a = n.forward_rows(&a);
            }
            let a = visit(layer, Site::AttnOut, a)?;
            add(&mut x, &a);
            x = visit(layer, Site::ResidMid, x)?;
            let mut m = blk
                .mlp
                .forward_rows(&blk.mlp_norm.forward_rows(&x), b * l, q)?;
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
                let (h, rows) = match kind {
                    Logits::All => (self.final_norm.forward_rows(&x), b * l),
                    _ => {
                        let last: Vec<f32> = (0..b)
                            .flat_map(|r| {
                                let at = (r * l + batch.lengths()[r] - 1) * d;
                                x[at..at + d].iter().copied()
                            })
                            .collect();
                        (self.final_norm.forward_rows(&last), b)
                    }
                };
                let mut logits = self.lm_head.forward_rows(&h, rows, q)?;
                if let Some(cap) = self.cfg.final_softcap {
                    let cap = cap as f32;
                    logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
                }
                let vocab = logits.len() / rows;
                Some(match kind {
                    Logits::All => Tensor::from_vec(logits, (b, l, vocab), device)?,
                    _ => Tensor::from_vec(logits, (b, vocab), device)?,
                })
            }
        };
        Ok(ForwardOutput {
            logits,
            residual: Tensor::from_vec(x, (b, l, d), device)?,
        })
    }
}
