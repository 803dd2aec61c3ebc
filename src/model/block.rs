//! One transformer block and its schedule, written once: [`run_block`] says in which order a block's
//! norms, attention, MLP, residual adds and hook sites come, over the primitives of a [`BlockOps`].
//! Each [`Execution`] supplies those primitives for its representation of the residual stream: a
//! tensor (candle's ops, fused or differentiable) or a plain vector (the CPU vector pass).

use super::attention::Attention;
use super::hooks::Site;
use super::layers::{Mlp, Norm};
use crate::Result;

/// How a forward pass runs; set with [`Model::set_execution`](super::Model::set_execution). All
/// three agree to float rounding (the tiny-model tests run each against `transformers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Execution {
    /// The CPU's f32 vector pass: the residual stream is a plain vector, products, attention,
    /// softmax and activations run on dsg's own kernels, and a tensor is made only at the hook
    /// points a caller asked for. Where it cannot run, the pass runs as [`Execution::TensorOps`]:
    /// on a GPU, with non-f32 weights, and for more than one token per row on a CPU without AVX2
    /// and FMA. The default.
    #[default]
    VectorPass,
    /// candle's tensor ops with fused kernels (candle's and dsg's custom ops); what GPUs run. No
    /// backward pass.
    TensorOps,
    /// Plain candle tensor ops that candle can differentiate, for training through autograd
    /// (slower than the others).
    Autograd,
}

/// One decoder block: pre-norms, attention, MLP, and Gemma 2's optional post-norms.
pub(super) struct Block {
    pub(super) attn_norm: Norm,
    pub(super) attn: Attention,
    pub(super) post_attn_norm: Option<Norm>,
    pub(super) mlp_norm: Norm,
    pub(super) mlp: Mlp,
    pub(super) post_mlp_norm: Option<Norm>,
    /// Sliding-window length of this block's attention, if any.
    pub(super) window: Option<usize>,
}

/// The primitives a block is made of, over one representation of the residual stream (all rows
/// and positions of the batch at once).
pub(super) trait BlockOps {
    /// The residual stream, and every sublayer's input and output, in this execution.
    type Resid;

    /// Applies `norm`.
    fn norm(&mut self, norm: &Norm, x: &Self::Resid) -> Result<Self::Resid>;

    /// Block `layer`'s attention (its keys and values appended to the cache, if any) on the
    /// normalised `h`, output projection included.
    fn attention(&mut self, layer: usize, block: &Block, h: &Self::Resid) -> Result<Self::Resid>;

    /// Applies `mlp`.
    fn mlp(&mut self, mlp: &Mlp, h: &Self::Resid) -> Result<Self::Resid>;

    /// `x + y`.
    fn add(&mut self, x: Self::Resid, y: &Self::Resid) -> Result<Self::Resid>;

    /// Shows `x` to the hooks at `(layer, site)` if they want it; returns their replacement or `x`.
    fn visit(&mut self, layer: usize, site: Site, x: Self::Resid) -> Result<Self::Resid>;
}

/// Runs block `layer` on the residual stream `x`: norm → attention → (post-norm) → residual add →
/// norm → MLP → (post-norm) → residual add, with the hook sites `resid_pre`, `attn_out`,
/// `resid_mid`, `mlp_out` and `resid_post` visited in that order.
pub(super) fn run_block<O: BlockOps>(
    ops: &mut O,
    layer: usize,
    block: &Block,
    x: O::Resid,
) -> Result<O::Resid> {
    let x = ops.visit(layer, Site::ResidPre, x)?;
    let h = ops.norm(&block.attn_norm, &x)?;
    let mut a = ops.attention(layer, block, &h)?;
    if let Some(n) = &block.post_attn_norm {
        a = ops.norm(n, &a)?;
    }
    let a = ops.visit(layer, Site::AttnOut, a)?;
    let x = ops.add(x, &a)?;
    let x = ops.visit(layer, Site::ResidMid, x)?;
    let h = ops.norm(&block.mlp_norm, &x)?;
    let mut m = ops.mlp(&block.mlp, &h)?;
    if let Some(n) = &block.post_mlp_norm {
        m = ops.norm(n, &m)?;
    }
    let m = ops.visit(layer, Site::MlpOut, m)?;
    let x = ops.add(x, &m)?;
    ops.visit(layer, Site::ResidPost, x)
}
