//! Perplexity of a token stream, in non-overlapping windows (llama.cpp's `perplexity` with one window
//! when the stream fits, transformers' strided evaluation with stride = window).

use std::path::PathBuf;

use crate::model::{Batch, Hooks, Model, Tokenizer};
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
    check_window(window)?;
    if tokens.len() < 2 {
        return Err(Error::Invalid(format!(
            "perplexity needs at least 2 tokens (got {})",
            tokens.len()
        )));
    }
    let mut nll = Vec::with_capacity(tokens.len());
    let mut n_windows = 0;
    for chunk in windows(tokens, window) {
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

/// The windows of `tokens`: consecutive non-overlapping chunks of `window` tokens, dropping a last
/// chunk of one token (it predicts nothing).
pub(super) fn windows(tokens: &[u32], window: usize) -> impl Iterator<Item = &[u32]> {
    tokens.chunks(window).filter(|c| c.len() >= 2)
}

/// A window must hold a token and the one it predicts.
pub(super) fn check_window(window: usize) -> Result<()> {
    if window < 2 {
        return Err(Error::out_of_range(
            "window (--window)",
            window,
            "at least 2 tokens",
        ));
    }
    Ok(())
}

/// `dsg perplexity`: which text to score and how.
#[derive(Debug, Clone)]
pub struct TextPerplexity {
    /// The text file (read as UTF-8, unchanged).
    pub file: PathBuf,
    /// Score only the first this many tokens.
    pub max_tokens: Option<usize>,
    /// Tokens scored per forward pass.
    pub window: usize,
    /// Prepend BOS to the text.
    pub bos: bool,
}

impl TextPerplexity {
    /// Checks the ranges: `window ≥ 2`, `max_tokens ≥ 2`.
    pub fn validate(&self) -> Result<()> {
        check_window(self.window)?;
        match self.max_tokens {
            Some(n) if n < 2 => Err(Error::out_of_range(
                "max_tokens (--max-tokens)",
                n,
                "at least 2",
            )),
            _ => Ok(()),
        }
    }

    /// Reads, tokenises and scores the text with `model` and `tok`.
    pub fn run(&self, model: &Model, tok: &Tokenizer, hooks: &mut dyn Hooks) -> Result<Perplexity> {
        self.validate()?;
        let text = std::fs::read_to_string(&self.file).map_err(|e| Error::io(&self.file, e))?;
        let mut ids = tok.encode(&text, self.bos)?;
        if let Some(m) = self.max_tokens {
            ids.truncate(m);
        }
        model.config().check_context(
            "window (--window)",
            self.window,
            self.window.min(ids.len()),
        )?;
        perplexity(model, &ids, self.window, hooks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_windows_and_token_limits_are_refused_by_name() {
        let cfg = TextPerplexity {
            file: "wiki.txt".into(),
            max_tokens: None,
            window: 4096,
            bos: false,
        };
        assert!(cfg.validate().is_ok());
        let e = TextPerplexity {
            window: 0,
            ..cfg.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("window (--window): 0"), "{e}");
        let e = TextPerplexity {
            max_tokens: Some(1),
            ..cfg
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string().starts_with("max_tokens (--max-tokens): 1"),
            "{e}"
        );
    }
}
