//! Training examples and their loss: token ids with the position from which tokens are predicted
//! (the answer of a QA pair, or everything after the first token for plain text), grouped into
//! micro-batches in a seeded order.

use candle_core::{DType, Tensor};

use crate::data::rng::SplitMix64;
use crate::model::{Batch, ForwardOptions, Hooks, Logits, Model};
use crate::{Error, Result};

/// Target positions whose logits are computed together.
const LOGIT_CHUNK: usize = 64;

/// One training sequence: the loss is the negative log-likelihood of `ids[loss_from..]`, each token
/// given those before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// First predicted position (≥ 1); `1` trains on every token but the first.
    pub loss_from: usize,
}

impl Example {
    /// A plain-text example: every token after the first is predicted.
    pub fn text(ids: Vec<u32>) -> Self {
        Example { ids, loss_from: 1 }
    }

    /// Tokens that carry loss.
    pub fn target_count(&self) -> usize {
        self.ids.len().saturating_sub(self.loss_from)
    }
}

/// Checks that every example has at least one target and fits the model's context.
pub fn check_examples(examples: &[Example], max_positions: usize) -> Result<()> {
    if examples.is_empty() {
        return Err(Error::Invalid("no training examples".into()));
    }
    for (i, e) in examples.iter().enumerate() {
        if e.loss_from == 0 || e.target_count() == 0 {
            return Err(Error::Invalid(format!(
                "training example {i} has no token to predict ({} tokens, loss from position {})",
                e.ids.len(),
                e.loss_from
            )));
        }
        if e.ids.len() > max_positions {
            return Err(Error::Invalid(format!(
                "training example {i} has {} tokens, more than the model's context of {max_positions}",
                e.ids.len()
            )));
        }
    }
    Ok(())
}

/// The order of examples in epoch `epoch` for `seed`: a seeded permutation, the same on every run.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.sample(&mut order, n);
    order
}

/// The log-probability of every target token of `examples` (one padded batch) under `model` with
/// `hooks`, as a differentiable (targets,) tensor, with the row of each target. Logits are computed
/// at target positions only, a chunk at a time: each chunk's (chunk, vocab) buffers stay small
/// enough for the allocator to reuse instead of mapping fresh pages for every one.
fn target_logprobs(
    model: &Model,
    examples: &[&Example],
    hooks: &mut dyn Hooks,
) -> Result<(Tensor, Vec<usize>)> {
    let rows: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
    let batch = Batch::new(rows, model.device())?;
    let opts = ForwardOptions {
        logits: Logits::None,
        stop_after: None,
        quantized: false,
    };
    let out = model.forward(&batch, &opts, hooks, None)?;
    let (b, l, d) = out.residual.dims3()?;
    debug_assert_eq!(b, examples.len());
    // Position t predicts token t + 1: rows r, positions loss_from - 1 .. len - 1.
    let mut at = Vec::new();
    let mut targets = Vec::new();
    let mut row_of = Vec::new();
    for (r, e) in examples.iter().enumerate() {
        for t in e.loss_from - 1..e.ids.len() - 1 {
            at.push((r * l + t) as u32);
            targets.push(e.ids[t + 1]);
            row_of.push(r);
        }
    }
    let n = targets.len();
    let dev = model.device();
    let flat = out.residual.reshape((b * l, d))?;
    let mut parts = Vec::new();
    for start in (0..n).step_by(LOGIT_CHUNK) {
        let m = LOGIT_CHUNK.min(n - start);
        let at = Tensor::new(&at[start..start + m], dev)?;
        let h = flat.index_select(&at, 0)?;
        let logits = model.logits_of(&h, false)?.to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, 1)?;
        let t = Tensor::new(&targets[start..start + m], dev)?.reshape((m, 1))?;
        parts.push(logp.gather(&t, 1)?.squeeze(1)?);
    }
    Ok((Tensor::cat(&parts, 0)?, row_of))
}

/// The summed negative log-likelihood of the targets of `examples` (one padded batch) under `model`
/// with `hooks`, as a differentiable scalar, and the number of target tokens.
pub fn batch_nll(
    model: &Model,
    examples: &[&Example],
    hooks: &mut dyn Hooks,
) -> Result<(Tensor, usize)> {
    let (logp, rows) = target_logprobs(model, examples, hooks)?;
    Ok((logp.sum_all()?.neg()?, rows.len()))
}

/// Each example's summed NLL (differentiable, (rows,)) in one padded batch.
pub fn row_nll(model: &Model, examples: &[&Example], hooks: &mut dyn Hooks) -> Result<Tensor> {
    let (logp, rows) = target_logprobs(model, examples, hooks)?;
    // Sum per row: a (rows × targets) indicator times the log-probabilities.
    let n = rows.len();
    let mut ind = vec![0f32; examples.len() * n];
    for (j, &r) in rows.iter().enumerate() {
        ind[r * n + j] = 1.0;
    }
    let ind = Tensor::from_vec(ind, (examples.len(), n), logp.device())?;
    Ok(ind.matmul(&logp.unsqueeze(1)?)?.squeeze(1)?.neg()?)
}

/// The mean per-token NLL of `examples` (no gradient), in batches of `batch_size`.
pub fn mean_nll(model: &Model, examples: &[Example], batch_size: usize) -> Result<f64> {
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (nll, n) = batch_nll(model, &refs, &mut crate::model::NoHooks)?;
        sum += nll.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += n;
    }
    Ok(sum / count.max(1) as f64)
}
