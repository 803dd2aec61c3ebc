//! Next-token KL divergence of a guarded model from the unguarded one.
//!
//! [`next_token_kl`] runs a token sequence through the model twice, with the base hooks and with the
//! guarded hooks, in the windows of [`perplexity`](crate::eval::perplexity) (non-overlapping chunks of
//! `window` tokens, each predicting its tokens 1.. from the ones before them in the same window), and
//! at every predicted position computes `KL(p_base ‖ p_guarded) = Σ_v p_base(v) (log p_base(v) −
//! log p_guarded(v))` over the full vocabulary. Log-softmax and the sums are computed in f64 from the
//! f32 logits.

use candle_core::{DType, IndexOp, Tensor};

use crate::eval::perplexity::{check_window, windows};
use crate::model::{Batch, ForwardOptions, Hooks, Logits, Model};
use crate::{Error, Result};

/// Next-token divergence of a guarded model from the base one over a token sequence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KlReport {
    /// Mean KL(p_base ‖ p_guarded) over predicted positions, in nats.
    pub mean_kl: f64,
    /// Largest KL at any predicted position, in nats.
    pub max_kl: f64,
    /// Fraction of predicted positions with KL > 1e-6.
    pub changed_fraction: f64,
    /// Perplexity of the sequence under the base hooks.
    pub base_perplexity: f64,
    /// Perplexity of the sequence under the guarded hooks.
    pub guarded_perplexity: f64,
    /// Number of predicted positions.
    pub n_predicted: usize,
    /// Number of windows.
    pub n_windows: usize,
    /// Per predicted position, the KL in nats, in stream order.
    pub kl: Vec<f64>,
}

/// KL at or below this counts as unchanged in [`KlReport::changed_fraction`].
pub const KL_CHANGED: f64 = 1e-6;

/// Log-softmax of one row of logits, in f64.
fn log_softmax_f64(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// KL(p ‖ q) from log-probabilities, in f64; rounding below zero is reported as 0.
fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    let kl: f64 = log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| {
            if lp == f64::NEG_INFINITY {
                0.0
            } else {
                lp.exp() * (lp - lq)
            }
        })
        .sum();
    kl.max(0.0)
}

/// Positions of logits computed per output-head call, to bound memory on long windows.
const CHUNK: usize = 256;

/// The residual stream of a one-row batch after the last block, (seq, d_model).
fn residual(model: &Model, batch: &Batch, hooks: &mut dyn Hooks) -> Result<Tensor> {
    let opts = ForwardOptions {
        logits: Logits::None,
        ..Default::default()
    };
    Ok(model.forward(batch, &opts, hooks, None)?.residual.i(0)?)
}

/// The logits of residual rows `start..start + m`, one f32 vector per position.
fn chunk_logits(model: &Model, residual: &Tensor, start: usize, m: usize) -> Result<Vec<Vec<f32>>> {
    Ok(model
        .logits_of(&residual.i(start..start + m)?, false)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?)
}

/// The windows the KL is measured in: non-overlapping chunks of `ids` of at most `window` tokens
/// (as [`perplexity`](crate::eval::perplexity::perplexity) windows them) or, with `bos`, that
/// token followed by at most `window − 1` tokens of `ids`, so that a model trained with BOS
/// (Gemma) never reads a window that starts mid-text without it.
fn kl_windows(ids: &[u32], window: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    match bos {
        Some(b) => ids
            .chunks(window - 1)
            .map(|c| std::iter::once(b).chain(c.iter().copied()).collect())
            .collect(),
        None => windows(ids, window).map(<[u32]>::to_vec).collect(),
    }
}

/// KL(p_base ‖ p_guarded) at every predicted position of `ids`, in windows of at most `window`
/// tokens (each starting with `bos` when given), with the model run under
/// `base_hooks` and under `guarded_hooks`.
pub fn next_token_kl(
    model: &Model,
    ids: &[u32],
    window: usize,
    bos: Option<u32>,
    base_hooks: &mut dyn Hooks,
    guarded_hooks: &mut dyn Hooks,
) -> Result<KlReport> {
    next_token_kl_between(
        (model, base_hooks),
        (model, guarded_hooks),
        ids,
        window,
        bos,
    )
}

/// [`next_token_kl`] between two models sharing a tokenizer (a base model and an unlearned copy of
/// it, each under its own hooks): KL(p_base ‖ p_other) at every predicted position of `ids`.
pub fn next_token_kl_between(
    base: (&Model, &mut dyn Hooks),
    other: (&Model, &mut dyn Hooks),
    ids: &[u32],
    window: usize,
    bos: Option<u32>,
) -> Result<KlReport> {
    check_window(window)?;
    if ids.len() < 2 {
        return Err(Error::Invalid(format!(
            "next-token KL needs at least 2 tokens (got {})",
            ids.len()
        )));
    }
    let (base_model, base_hooks) = base;
    let (other_model, other_hooks) = other;
    if base_model.config().vocab_size != other_model.config().vocab_size {
        return Err(Error::Mismatch(format!(
            "next-token KL between models with vocabularies of {} and {} tokens",
            base_model.config().vocab_size,
            other_model.config().vocab_size
        )));
    }
    let mut kl = Vec::with_capacity(ids.len());
    let (mut base_nll, mut guarded_nll) = (0.0f64, 0.0f64);
    let mut n_windows = 0;
    for chunk in kl_windows(ids, window, bos) {
        let batch = Batch::single(chunk.clone(), base_model.device())?;
        let base = residual(base_model, &batch, base_hooks)?;
        let guarded = residual(other_model, &batch, other_hooks)?;
        let n = chunk.len() - 1;
        for start in (0..n).step_by(CHUNK) {
            let m = CHUNK.min(n - start);
            let p = chunk_logits(base_model, &base, start, m)?;
            let q = chunk_logits(other_model, &guarded, start, m)?;
            for (i, (p, q)) in p.iter().zip(&q).enumerate() {
                let target = chunk[start + i + 1] as usize;
                let (lp, lq) = (log_softmax_f64(p), log_softmax_f64(q));
                base_nll -= lp[target];
                guarded_nll -= lq[target];
                kl.push(kl_divergence(&lp, &lq));
            }
        }
        n_windows += 1;
    }
    let n = kl.len() as f64;
    Ok(KlReport {
        mean_kl: kl.iter().sum::<f64>() / n,
        max_kl: kl.iter().copied().fold(0.0, f64::max),
        changed_fraction: kl.iter().filter(|&&x| x > KL_CHANGED).count() as f64 / n,
        base_perplexity: (base_nll / n).exp(),
        guarded_perplexity: (guarded_nll / n).exp(),
        n_predicted: kl.len(),
        n_windows,
        kl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_with_bos_when_given() {
        let ids: Vec<u32> = (1..=7).collect();
        assert_eq!(
            kl_windows(&ids, 4, Some(0)),
            [vec![0, 1, 2, 3], vec![0, 4, 5, 6], vec![0, 7]]
        );
        assert_eq!(kl_windows(&ids, 4, None), [vec![1, 2, 3, 4], vec![5, 6, 7]]);
    }

    #[test]
    fn kl_of_identical_distributions_is_zero_and_positive_otherwise() {
        let p = log_softmax_f64(&[1.0, 2.0, 3.0]);
        assert_eq!(kl_divergence(&p, &p), 0.0);
        let q = log_softmax_f64(&[3.0, 2.0, 1.0]);
        let direct: f64 = p.iter().zip(&q).map(|(a, b)| a.exp() * (a - b)).sum();
        assert!((kl_divergence(&p, &q) - direct).abs() < 1e-15);
        assert!(direct > 0.0);
    }
}
