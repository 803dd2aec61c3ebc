//! Perplexity of a token stream, in non-overlapping windows (llama.cpp's `perplexity` with one window
//! when the stream fits, transformers' strided evaluation with stride = window).

use crate::model::{Batch, Hooks, Model};
use crate::{Error, Result};

/// Result of a perplexity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub perplexity: f64,
    /// Mean negative log-likelihood in nats.
    pub mean_nll: f64,
    /// Number of predicted tokens.
    pub n_predicted: usize,
    /// Number of windows.
    pub n_windows: usize,
    /// Per-position negative log-likelihoods, in stream order.
    pub nll: Vec<f32>,
}

/// Scores `tokens` in windows of at most `window` tokens; each window predicts its tokens 1.. from the
/// ones before them in the same window.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    window: usize,
    hooks: &mut dyn Hooks,
) -> Result<Perplexity> {
    if tokens.len() < 2 || window < 2 {
        return Err(Error::Invalid(format!(
            "perplexity needs at least 2 tokens and a window of at least 2 (got {} tokens, window {window})",
            tokens.len()
        )));
    }
    let mut nll = Vec::with_capacity(tokens.len());
    let mut n_windows = 0;
    for chunk in tokens.chunks(window).filter(|c| c.len() >= 2) {
        let batch = Batch::single(chunk.to_vec(), model.device())?;
        let lp = model.token_logprobs(&batch, hooks)?;
        nll.extend(lp[0].iter().map(|x| -x));
        n_windows += 1;
    }
    let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
    Ok(Perplexity {
        perplexity: mean.exp(),
        mean_nll: mean,
        n_predicted: nll.len(),
        n_windows,
        nll,
    })
}
