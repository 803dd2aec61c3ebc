//! The probe gate: a logistic-regression probe on the residual stream at the SAE's hook (or on the
//! SAE's full latent vector there) that decides which rows a guardrail clamps, in place of the
//! selected features' token activity ("probe decides, SAE clamps").
//!
//! A probe scores each token `t` by its logit `w·x_t + b`; the guardrail's [`Gate`] pools those
//! logits over the row exactly as it pools activity ([`super::gate`]): [`Gate::Paper`] is mean
//! pooling, [`Gate::Window`] max-of-rolling-mean pooling. The token at absolute position 0 (BOS,
//! whose residual is an outlier) is never scored: it is left out of training vectors and never
//! pushed to a probe's gate. Training ([`Probe::train`]) is scikit-learn's
//! `LogisticRegression(C)` on standardised features ([`super::logistic`]), one mean-pooled
//! vector per prompt; the standardisation is folded into `weights` and `bias`, so a logit is a
//! plain dot product on raw inputs. The threshold is calibrated by the same percentile rule as
//! the SAE gates ([`super::calibrate()`]) on the probe's pooled scores of the calibration prompts
//! ([`super::probe_fit`]).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::gate::Gate;
use super::logistic::{self, Solver};
use crate::sae::Sae;
use crate::{Error, Result};

/// What a probe reads at the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeInput {
    /// The raw residual stream (`d_model` wide).
    Residual,
    /// The SAE's full latent vector (`d_sae` wide): an SAE-statistics probe.
    SaeLatents,
}

impl ProbeInput {
    /// Both inputs, in report order.
    pub const ALL: [ProbeInput; 2] = [ProbeInput::Residual, ProbeInput::SaeLatents];

    /// The input's width for a model of width `d_model` and an SAE of `d_sae` latents.
    pub fn width(self, d_model: usize, d_sae: usize) -> usize {
        match self {
            ProbeInput::Residual => d_model,
            ProbeInput::SaeLatents => d_sae,
        }
    }

    /// The input at every token of the hook's activations `act` (`[batch, seq, d_model]`):
    /// `act` itself or its SAE encoding.
    pub fn features(self, sae: &Sae, act: &Tensor) -> Result<Tensor> {
        match self {
            ProbeInput::Residual => Ok(act.clone()),
            ProbeInput::SaeLatents => sae.encode(act),
        }
    }
}

impl fmt::Display for ProbeInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeInput::Residual => "residual",
            ProbeInput::SaeLatents => "sae",
        })
    }
}

impl FromStr for ProbeInput {
    type Err = Error;

    /// `residual` or `sae`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "residual" => Ok(ProbeInput::Residual),
            "sae" | "sae_latents" => Ok(ProbeInput::SaeLatents),
            _ => Err(Error::Invalid(format!(
                "probe input {s:?}: expected residual or sae"
            ))),
        }
    }
}

/// How a probe was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeTraining {
    /// Positive (forget) training prompts.
    pub n_pos: usize,
    /// Negative (benign) training prompts.
    pub n_neg: usize,
    /// Inverse L2 strength (scikit-learn's `C`) on standardised features.
    pub c: f64,
    /// Newton iterations taken.
    pub iterations: usize,
    /// Whether the solver reached its gradient tolerance.
    pub converged: bool,
    /// AUROC of the training prompts' pooled logits (positives vs negatives).
    pub train_auroc: f64,
    /// Features were standardised for training and the scaling folded into `weights` and `bias`.
    pub standardisation_folded: bool,
}

/// A trained probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// What it reads.
    pub input: ProbeInput,
    /// One weight per input dimension, on raw inputs.
    pub weights: Vec<f32>,
    /// Intercept, on raw inputs.
    pub bias: f64,
    /// The training record.
    pub training: ProbeTraining,
}

/// Whether `gate` can pool a probe's logits: mean (paper) or max of rolling means (window).
pub fn check_probe_gate(gate: &Gate) -> Result<()> {
    gate.validate()?;
    match gate {
        Gate::Paper { .. } | Gate::Window { .. } => Ok(()),
        Gate::Cusum { .. } => Err(Error::Unsupported(
            "a probe gate pools logits by mean (paper) or max of rolling means (window:W); \
             CUSUM is for 0/1 activity"
                .into(),
        )),
    }
}

/// A probe gate's pooling, by name: `mean` ([`Gate::Paper`]) or `max-rolling-mean:W`
/// ([`Gate::Window`] of `W` tokens); the threshold is left at 0 for calibration.
pub fn parse_pooling(s: &str) -> Result<Gate> {
    let bad = || {
        Error::Invalid(format!(
            "probe pooling {s:?}: expected mean or max-rolling-mean:W (W ≥ 1 tokens)"
        ))
    };
    match s.split_once(':') {
        None if s == "mean" => Ok(Gate::Paper { tau: 0.0 }),
        Some(("max-rolling-mean", w)) => match w.parse::<usize>() {
            Ok(width) if width >= 1 => Ok(Gate::Window { width, tau: 0.0 }),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// The probability that a random positive scores above a random negative, ties one half.
fn auroc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&s| (s, true))
        .chain(neg.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < all.len() {
        let j = i + all[i..].iter().take_while(|x| x.0 == all[i].0).count();
        let hits = all[i..j].iter().filter(|x| x.1).count();
        rank_sum += (i + 1 + j) as f64 / 2.0 * hits as f64;
        i = j;
    }
    let (m, n) = (pos.len() as f64, neg.len() as f64);
    (rank_sum - m * (m + 1.0) / 2.0) / (m * n)
}

impl Probe {
    /// Trains a probe on one pooled vector per prompt: `positives` (forget) against `negatives`
    /// (benign), all of one width.
    pub fn train(
        input: ProbeInput,
        positives: &[Vec<f32>],
        negatives: &[Vec<f32>],
        solver: Solver,
    ) -> Result<Probe> {
        let x: Vec<Vec<f32>> = positives.iter().chain(negatives).cloned().collect();
        let y: Vec<bool> = (0..x.len()).map(|i| i < positives.len()).collect();
        let fitted = logistic::fit(&x, &y, solver)?;
        let mut probe = Probe {
            input,
            weights: fitted.weights.iter().map(|&w| w as f32).collect(),
            bias: fitted.bias,
            training: ProbeTraining {
                n_pos: positives.len(),
                n_neg: negatives.len(),
                c: solver.c,
                iterations: fitted.iterations,
                converged: fitted.converged,
                train_auroc: 0.0,
                standardisation_folded: true,
            },
        };
        let scores = |set: &[Vec<f32>]| set.iter().map(|v| probe.logit(v)).collect::<Vec<_>>();
        probe.training.train_auroc = auroc(&scores(positives), &scores(negatives));
        probe.validate(x[0].len())?;
        Ok(probe)
    }

    /// Checks that there is one finite weight per input dimension (`width`) and a finite bias.
    pub fn validate(&self, width: usize) -> Result<()> {
        if self.weights.len() != width {
            return Err(Error::Mismatch(format!(
                "probe on {} has {} weights; its input is {width} wide",
                self.input,
                self.weights.len()
            )));
        }
        if !self.bias.is_finite() || self.weights.iter().any(|w| !w.is_finite()) {
            return Err(Error::Invalid(format!(
                "probe on {}: a non-finite weight or bias",
                self.input
            )));
        }
        Ok(())
    }

    /// The logit `w·x + b` of one input vector, summed in f64.
    pub fn logit(&self, x: &[f32]) -> f64 {
        self.bias
            + self
                .weights
                .iter()
                .zip(x)
                .map(|(&w, &v)| f64::from(w) * f64::from(v))
                .sum::<f64>()
    }

    /// The logit of every real token of each row of `features` (`[batch, seq, width]`, the input
    /// of [`ProbeInput::features`]; row `b` has `lengths[b]` real tokens).
    pub fn token_logits(&self, features: &Tensor, lengths: &[usize]) -> Result<Vec<Vec<f64>>> {
        let (_, seq, width) = features.dims3()?;
        self.validate(width)?;
        let flat = features
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(b, &len)| {
                (0..len)
                    .map(|t| {
                        let at = (b * seq + t) * width;
                        self.logit(&flat[at..at + width])
                    })
                    .collect()
            })
            .collect())
    }
}

/// Each row's mean input vector over its real tokens, the token at position 0 excluded (rows of
/// `features` start at position 0; row `b` has `lengths[b]` real tokens, at least 2).
pub fn pooled_means(features: &Tensor, lengths: &[usize]) -> Result<Vec<Vec<f32>>> {
    let (_, seq, width) = features.dims3()?;
    if let Some(&len) = lengths.iter().find(|&&l| l < 2) {
        return Err(Error::Invalid(format!(
            "a probe pools a prompt's tokens after BOS; a prompt has {len} token(s)"
        )));
    }
    let flat = features
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(lengths
        .iter()
        .enumerate()
        .map(|(b, &len)| {
            let mut sum = vec![0.0f64; width];
            for t in 1..len {
                let at = (b * seq + t) * width;
                for (s, &v) in sum.iter_mut().zip(&flat[at..at + width]) {
                    *s += f64::from(v);
                }
            }
            sum.iter().map(|s| (s / (len - 1) as f64) as f32).collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_parse_and_cusum_is_refused() {
        assert_eq!("sae".parse::<ProbeInput>().unwrap(), ProbeInput::SaeLatents);
        assert_eq!(ProbeInput::Residual.to_string(), "residual");
        assert!("dense".parse::<ProbeInput>().is_err());
        assert_eq!(parse_pooling("mean").unwrap(), Gate::Paper { tau: 0.0 });
        assert_eq!(
            parse_pooling("max-rolling-mean:96").unwrap(),
            Gate::Window {
                width: 96,
                tau: 0.0
            }
        );
        for bad in ["max", "max-rolling-mean:0", "max-rolling-mean:x", "mean:3"] {
            assert!(parse_pooling(bad).is_err(), "{bad}");
        }
        assert!(check_probe_gate(&Gate::Window {
            width: 8,
            tau: -3.0
        })
        .is_ok());
        let cusum = Gate::Cusum {
            drift: 0.1,
            threshold: 1.0,
        };
        assert!(check_probe_gate(&cusum).is_err());
    }

    #[test]
    fn auroc_counts_ties_half() {
        assert_eq!(auroc(&[1.0, 2.0], &[0.0, 2.0]), 0.625);
    }
}
