//! What a run minimises: the NLL of its examples (fine-tuning), or an unlearning objective over a
//! forget set with an optional retain set, as open-unlearning defines them
//! (`src/trainer/unlearn/{grad_ascent,grad_diff,npo}.py`, `src/trainer/utils.py`):
//!
//! * gradient ascent: `−NLL(forget)`, the mean NLL per target token negated;
//! * GradDiff: `γ·(−NLL(forget)) + α·NLL(retain)`;
//! * NPO (Zhang et al. 2024): `γ·(−(2/β)·mean_i logσ(β·(nll_i − nll_ref,i))) + α·NLL(retain)`, where
//!   `nll_i` is sequence i's summed NLL under the model being trained and `nll_ref,i` under the model
//!   before training (`compute_dpo_loss` with only the "lose" side).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A training objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Objective {
    /// Fine-tuning: the NLL of the examples.
    #[default]
    Nll,
    /// Gradient ascent on the forget examples.
    GradAscent,
    /// Gradient ascent on forget, descent on retain.
    GradDiff {
        /// Weight of the retain NLL.
        alpha: f64,
        /// Weight of the forget term.
        gamma: f64,
    },
    /// RMU: forget activations after block `layer` pushed to a random direction, retain ones held
    /// at the frozen model's ([`super::rmu`]).
    Rmu {
        /// The block whose output is steered.
        layer: usize,
        /// Steering coefficient `c` (adaptive: the multiple of the frozen mean norm).
        steering: f64,
        /// Weight of the retain term.
        alpha: f64,
        /// Adaptive RMU: `c = steering × ` the frozen model's mean activation norm on forget text.
        adaptive: bool,
    },
    /// Negative preference optimisation on forget, NLL on retain.
    Npo {
        /// Inverse temperature β.
        beta: f64,
        /// Weight of the retain NLL.
        alpha: f64,
        /// Weight of the forget term.
        gamma: f64,
    },
}

impl Objective {
    /// Whether this is plain fine-tuning.
    pub fn is_nll(&self) -> bool {
        *self == Objective::Nll
    }

    /// Whether the objective reads a retain set.
    pub fn uses_retain(&self) -> bool {
        matches!(
            self,
            Objective::GradDiff { .. } | Objective::Npo { .. } | Objective::Rmu { .. }
        )
    }

    /// Whether the objective needs the reference model's sequence NLLs.
    pub fn uses_reference(&self) -> bool {
        matches!(self, Objective::Npo { .. })
    }

    /// Checks the weights and β, naming the option at fault.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &str, v: f64, positive: bool| {
            let ok = v.is_finite() && if positive { v > 0.0 } else { v >= 0.0 };
            if ok {
                Ok(())
            } else {
                Err(Error::OutOfRange {
                    field: name.into(),
                    value: v.to_string(),
                    allowed: if positive {
                        "a positive number"
                    } else {
                        "a non-negative number"
                    }
                    .into(),
                })
            }
        };
        match *self {
            Objective::Nll | Objective::GradAscent => Ok(()),
            Objective::GradDiff { alpha, gamma } => {
                check("--alpha", alpha, false)?;
                check("--gamma", gamma, false)
            }
            Objective::Npo { beta, alpha, gamma } => {
                check("--beta", beta, true)?;
                check("--alpha", alpha, false)?;
                check("--gamma", gamma, false)
            }
            Objective::Rmu {
                steering, alpha, ..
            } => {
                check("--steering", steering, true)?;
                check("--alpha", alpha, false)
            }
        }
    }

    /// The weight of a forget micro-batch's summed NLL in the step's loss (a token-weighted mean over
    /// the step's `forget_tokens`), for the objectives whose forget term is an NLL.
    pub(super) fn forget_nll_weight(&self, forget_tokens: usize) -> f64 {
        let t = forget_tokens.max(1) as f64;
        match *self {
            Objective::Nll => 1.0 / t,
            Objective::GradAscent => -1.0 / t,
            Objective::GradDiff { gamma, .. } => -gamma / t,
            Objective::Npo { .. } | Objective::Rmu { .. } => 0.0,
        }
    }

    /// The weight of a retain micro-batch's summed NLL over the step's `retain_tokens`.
    pub(super) fn retain_nll_weight(&self, retain_tokens: usize) -> f64 {
        match *self {
            Objective::GradDiff { alpha, .. } | Objective::Npo { alpha, .. } => {
                alpha / retain_tokens.max(1) as f64
            }
            _ => 0.0,
        }
    }
}

/// NPO's forget term for one micro-batch, as its share of the step's mean over `step_rows`
/// sequences: `−(2/β)·Σ_i logσ(β·(nll_i − ref_i)) · γ / step_rows`, for `row_nll` (rows) and the
/// reference values `reference`.
pub fn npo_forget_term(
    row_nll: &Tensor,
    reference: &[f64],
    beta: f64,
    gamma: f64,
    step_rows: usize,
) -> Result<Tensor> {
    let refs = Tensor::from_vec(
        reference.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        reference.len(),
        row_nll.device(),
    )?;
    let z = ((row_nll - refs)? * beta)?;
    // log σ(z) = −softplus(−z) = −(max(−z, 0) + log(1 + exp(−|z|))), stable for large |z|.
    let neg = z.neg()?;
    let softplus = (neg.relu()? + ((z.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    let log_sigmoid_sum = softplus.neg()?.sum_all()?;
    Ok((log_sigmoid_sum * (-2.0 / beta * gamma / step_rows.max(1) as f64))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// NPO's forget term against the formula computed by hand.
    #[test]
    fn npo_term_matches_a_hand_computed_value() {
        let nll = Tensor::new(&[12.0f32, 30.0, 5.0], &Device::Cpu).unwrap();
        let reference = [10.0, 31.0, 5.0];
        let (beta, gamma) = (0.5, 1.0);
        let got = npo_forget_term(&nll, &reference, beta, gamma, 3)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let log_sigmoid = |z: f64| -(1.0 + (-z).exp()).ln();
        let want = -2.0 / beta
            * [2.0f64, -1.0, 0.0]
                .iter()
                .map(|d| log_sigmoid(beta * d))
                .sum::<f64>()
            / 3.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // At the start (model = reference) the term is (2/β)·ln 2 per sequence.
        let same = npo_forget_term(&nll, &[12.0, 30.0, 5.0], beta, gamma, 3)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((same - 2.0 / beta * 2f64.ln()).abs() < 1e-6);
        // Large gaps stay finite.
        let far = npo_forget_term(&nll, &[1e4, -1e4, 0.0], beta, gamma, 3).unwrap();
        assert!(far.to_scalar::<f32>().unwrap().is_finite());
    }

    #[test]
    fn weights_follow_the_definitions() {
        assert_eq!(Objective::GradAscent.forget_nll_weight(4), -0.25);
        let gd = Objective::GradDiff {
            alpha: 2.0,
            gamma: 0.5,
        };
        assert_eq!(gd.forget_nll_weight(2), -0.25);
        assert_eq!(gd.retain_nll_weight(4), 0.5);
        assert!(Objective::Npo {
            beta: 0.0,
            alpha: 1.0,
            gamma: 1.0
        }
        .validate()
        .is_err());
    }
}
