//! The forward pass as candle tensor ops ([`Execution::TensorOps`] and [`Execution::Autograd`]): the
//! residual is a (batch, seq, d_model) tensor, attention reads an additive mask per distinct window,
//! and the cache's keys and values come back as tensors.

use candle_core::{IndexOp, Tensor};

use super::attention::attention_mask;
use super::block::{run_block, Block, BlockOps, Execution};
use super::decoder::{visit_site, ForwardOutput, Logits, Model, PassInputs};
use super::hooks::{HookContext, Hooks, Site};
use super::kv::KvCache;
use super::layers::{Mlp, Norm};
use crate::Result;

/// [`BlockOps`] on tensors.
struct TensorOps<'a, 'h> {
    model: &'a Model,
    exec: Execution,
    quantized: bool,
    hooks: &'h mut dyn Hooks,
    ctx: &'a HookContext<'a>,
    cache: Option<&'h mut KvCache>,
    rope: super::attention::Ropes<'a>,
    /// The distinct windows of the blocks, and one mask for each.
    windows: Vec<Option<usize>>,
    masks: Vec<Tensor>,
}

impl BlockOps for TensorOps<'_, '_> {
    type Resid = Tensor;

    fn norm(&mut self, norm: &Norm, x: &Tensor) -> Result<Tensor> {
        norm.forward(x, self.exec)
    }

    fn attention(&mut self, layer: usize, block: &Block, h: &Tensor) -> Result<Tensor> {
        let (k, q) = (self.exec, self.quantized);
        let wi = self
            .windows
            .iter()
            .position(|w| *w == block.window)
            .expect("listed");
        let mask = &self.masks[wi];
        let rope = self.rope.for_window(block.window);
        let (qh, kh, vh) = block.attn.qkv(h, rope, k, q)?;
        match self.cache.as_deref_mut() {
            Some(c) => {
                let lkv = &mut c.layers[layer];
                let earlier = lkv.len() > 0;
                lkv.append_tensors(&kh, &vh)?;
                let (kh, vh) = if earlier {
                    lkv.tensors(self.model.device())?
                } else {
                    (kh, vh)
                };
                block.attn.attend(&qh, &kh, &vh, mask, k, q)
            }
            None => block.attn.attend(&qh, &kh, &vh, mask, k, q),
        }
    }

    fn mlp(&mut self, mlp: &Mlp, h: &Tensor) -> Result<Tensor> {
        mlp.forward(h, self.exec, self.quantized)
    }

    fn add(&mut self, x: Tensor, y: &Tensor) -> Result<Tensor> {
        Ok((x + y)?)
    }

    fn visit(&mut self, layer: usize, site: Site, x: Tensor) -> Result<Tensor> {
        visit_site(self.hooks, self.ctx, layer, site, x)
    }
}

impl Model {
    /// Runs the pass `inputs` describes as tensor ops, visiting `hooks`, appending keys and values
    /// to `cache` if given. Called by [`Model::forward`] when the vector pass does not run.
    pub(super) fn tensor_pass(
        &self,
        inputs: &PassInputs,
        hooks: &mut dyn Hooks,
        cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        let PassInputs {
            batch,
            opts,
            query_pos,
            key_pos,
            ..
        } = *inputs;
        let (b, l) = (batch.len(), batch.seq_len());
        let device = self.device();
        let mut windows: Vec<Option<usize>> = vec![None];
        for w in self.blocks.iter().map(|blk| blk.window) {
            if !windows.contains(&w) {
                windows.push(w);
            }
        }
        let masks = windows
            .iter()
            .map(|&w| attention_mask(query_pos, key_pos, w, device))
            .collect::<Result<Vec<_>>>()?;

        let mut x = self
            .embed
            .embedding(&batch.ids().flatten_all()?)?
            .reshape((b, l, ()))?;
        if let Some(s) = self.cfg.embed_scale {
            x = (x * s as f64)?;
        }
        if let Some(pe) = &self.pos_embed {
            let pos: Vec<u32> = query_pos.iter().flatten().map(|&p| p as u32).collect();
            let pos = Tensor::from_vec(pos, b * l, device)?;
            x = (x + pe.embedding(&pos)?.reshape((b, l, ()))?)?;
        }
        let mut ops = TensorOps {
            model: self,
            exec: self.execution(),
            quantized: opts.quantized,
            hooks,
            ctx: inputs.ctx,
            cache,
            rope: inputs.rope,
            windows,
            masks,
        };
        let last_block = opts.stop_after.unwrap_or(self.cfg.n_layers - 1);
        for (layer, blk) in self.blocks.iter().enumerate().take(last_block + 1) {
            x = run_block(&mut ops, layer, blk, x)?;
        }
        let q = opts.quantized;
        let logits = match (opts.logits, opts.stop_after) {
            (Logits::None, _) | (_, Some(_)) => None,
            (Logits::All, None) => Some(self.logits_of(&x, q)?),
            (Logits::Last, None) => {
                let rows = (0..b)
                    .map(|r| x.i((r, batch.lengths()[r] - 1)))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(self.logits_of(&Tensor::stack(&rows, 0)?, q)?)
            }
        };
        Ok(ForwardOutput {
            logits,
            residual: x,
        })
    }
}
