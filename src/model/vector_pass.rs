//! The forward pass on the CPU on plain vectors ([`Execution::VectorPass`]): the same blocks as the
//! tensor pass, with the residual as one `Vec` of batch · seq rows, dsg's own kernels for the
//! products and attention, and a tensor only at the hook points a caller asked for.
//!
//! A decoding step is about 120 small products, where a tensor op per norm, add and activation
//! cost more than the products; a prefill spends its time in products and attention, which here
//! run on the team without the head transposes, chunk copies and masks of the tensor pass.
//!
//! [`Execution::VectorPass`]: super::Execution::VectorPass

use candle_core::{Device, Tensor};

use super::block::{run_block, Block, BlockOps};
use super::decoder::{visit_site, ForwardOutput, Logits, Model, PassInputs};
use super::hooks::{HookContext, HookPoint, Hooks, Site};
use super::kv::KvCache;
use super::layers::{Mlp, Norm};
use crate::kernels::attend::Positions;
use crate::kernels::kv::LayerKv;
use crate::kernels::matvec::gather_rows;
use crate::Result;

/// [`BlockOps`] on plain vectors of `b · l` rows of `d` values.
struct VectorOps<'a, 'h> {
    inputs: &'a PassInputs<'a>,
    hooks: &'h mut dyn Hooks,
    cache: Option<&'h mut KvCache>,
    /// Without a cache, one layer's keys and values at a time.
    scratch: LayerKv,
    device: &'a Device,
    shape: (usize, usize, usize),
}

impl BlockOps for VectorOps<'_, '_> {
    type Resid = Vec<f32>;

    fn norm(&mut self, norm: &Norm, x: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(norm.forward_rows(x))
    }

    fn attention(&mut self, layer: usize, block: &Block, h: &Vec<f32>) -> Result<Vec<f32>> {
        let lkv = match self.cache.as_deref_mut() {
            Some(c) => &mut c.layers[layer],
            None => {
                self.scratch.clear();
                &mut self.scratch
            }
        };
        let pos = Positions {
            query: self.inputs.query_pos,
            key: self.inputs.key_pos,
            window: block.window,
        };
        let (b, q) = (self.shape.0, self.inputs.opts.quantized);
        let rope = self.inputs.rope.for_window(block.window);
        block.attn.forward_rows(h, b, rope, lkv, &pos, q)
    }

    fn mlp(&mut self, mlp: &Mlp, h: &Vec<f32>) -> Result<Vec<f32>> {
        let (b, l, _) = self.shape;
        mlp.forward_rows(h, b * l, self.inputs.opts.quantized)
    }

    fn add(&mut self, mut x: Vec<f32>, y: &Vec<f32>) -> Result<Vec<f32>> {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        Ok(x)
    }

    fn visit(&mut self, layer: usize, site: Site, x: Vec<f32>) -> Result<Vec<f32>> {
        if !self.hooks.wants(HookPoint { layer, site }) {
            return Ok(x);
        }
        let t = Tensor::from_vec(x, self.shape, self.device)?;
        let ctx: &HookContext = self.inputs.ctx;
        Ok(visit_site(self.hooks, ctx, layer, site, t)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

impl Model {
    /// Runs the pass `inputs` describes on plain vectors, visiting `hooks`, appending keys and
    /// values to `cache` if given. Called by [`Model::forward`] on the CPU with f32 weights.
    pub(super) fn vector_pass(
        &self,
        inputs: &PassInputs,
        hooks: &mut dyn Hooks,
        cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        let PassInputs {
            batch,
            opts,
            query_pos,
            ..
        } = *inputs;
        let (b, l) = (batch.len(), batch.seq_len());
        let d = self.cfg.d_model;
        let q = opts.quantized;
        let ids = batch
            .rows()
            .iter()
            .flat_map(|r| (0..l).map(|i| r.get(i).map_or(0, |&t| t as usize)));
        let mut x = gather_rows(&self.embed, ids)?;
        if let Some(s) = self.cfg.embed_scale {
            // The tensor pass multiplies in f64 and rounds once; so does this.
            x.iter_mut()
                .for_each(|v| *v = (*v as f64 * s as f64) as f32);
        }
        if let Some(pe) = &self.pos_embed {
            let pos = gather_rows(pe, query_pos.iter().flatten().copied())?;
            x.iter_mut().zip(&pos).for_each(|(v, p)| *v += p);
        }
        let device = self.device();
        let mut ops = VectorOps {
            inputs,
            hooks,
            cache,
            scratch: LayerKv::default(),
            device,
            shape: (b, l, d),
        };
        let last_block = opts.stop_after.unwrap_or(self.cfg.n_layers - 1);
        for (layer, blk) in self.blocks.iter().enumerate().take(last_block + 1) {
            x = run_block(&mut ops, layer, blk, x)?;
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
