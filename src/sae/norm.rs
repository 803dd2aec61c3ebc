//! Per-token input normalisation, as SAELens's `normalize_activations` defines it.
//!
//! A constant scale (`expected_average_only_in` with a known factor) is folded into the weights
//! at load time and never appears here. The two per-token kinds rescale each input row before
//! encoding; the statistics are kept in a [`NormState`] so that a reconstruction can be mapped
//! back.

use candle_core::{DType, Tensor, D};

use crate::Result;

/// Epsilon SAELens adds to the standard deviation in `layer_norm` normalisation.
const LAYER_NORM_EPS: f64 = 1e-5;

/// How inputs are normalised per token before encoding (and the reconstruction de-normalised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Inputs are used as they are.
    #[default]
    None,
    /// Each row is scaled to norm √d_in; the reconstruction is scaled back.
    ConstantNormRescale,
    /// Each row is standardised: `(x − mean) / (std + 1e-5)` with the unbiased (n − 1) std;
    /// the reconstruction is mapped back by `y · std + mean` (SAELens leaves out the epsilon
    /// there).
    LayerNorm,
}

impl Normalization {
    /// The SAELens name (`none`, `constant_norm_rescale`, `layer_norm`).
    pub fn name(self) -> &'static str {
        match self {
            Normalization::None => "none",
            Normalization::ConstantNormRescale => "constant_norm_rescale",
            Normalization::LayerNorm => "layer_norm",
        }
    }

    /// Normalises `x` (`(..., d_in)`, f32) and returns the statistics needed to undo it.
    pub fn apply(self, x: &Tensor) -> Result<(Tensor, NormState)> {
        match self {
            Normalization::None => Ok((x.clone(), NormState::Identity)),
            Normalization::ConstantNormRescale => {
                let d_in = x.dim(D::Minus1)? as f64;
                // A zero row would give an infinite coefficient; a floored norm keeps it at 0.
                let norm = x
                    .sqr()?
                    .sum_keepdim(D::Minus1)?
                    .sqrt()?
                    .clamp(f32::MIN_POSITIVE, f32::INFINITY)?;
                let coeff = (norm.recip()? * d_in.sqrt())?;
                Ok((x.broadcast_mul(&coeff)?, NormState::Scale { coeff }))
            }
            Normalization::LayerNorm => {
                let n = x.dim(D::Minus1)?;
                let mean = x.mean_keepdim(D::Minus1)?;
                let centred = x.broadcast_sub(&mean)?;
                let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / (n.max(2) - 1) as f64)?;
                let std = var.sqrt()?;
                let normed = centred.broadcast_div(&(&std + LAYER_NORM_EPS)?)?;
                Ok((normed, NormState::Standardised { mean, std }))
            }
        }
    }
}

/// Per-row statistics from [`Normalization::apply`], needed to map a reconstruction back.
#[derive(Debug, Clone)]
pub enum NormState {
    /// No normalisation.
    Identity,
    /// Rows were multiplied by `coeff` (`(..., 1)`).
    Scale {
        /// √d_in / ‖x‖ per row.
        coeff: Tensor,
    },
    /// Rows were standardised.
    Standardised {
        /// Row means, `(..., 1)`.
        mean: Tensor,
        /// Row standard deviations (unbiased), `(..., 1)`.
        std: Tensor,
    },
}

impl NormState {
    /// Maps `y` (`(..., d_in)`, in normalised space) back to the input space.
    pub fn undo(&self, y: &Tensor) -> Result<Tensor> {
        Ok(match self {
            NormState::Identity => y.clone(),
            NormState::Scale { coeff } => y.broadcast_div(coeff)?,
            NormState::Standardised { mean, std } => y.broadcast_mul(std)?.broadcast_add(mean)?,
        })
    }

    /// Per-row factor that maps a *direction* in normalised space to input space (`(..., 1)`), or
    /// `None` for the identity: `1/coeff` or `std`. Turns decoder rows into residual edits.
    pub fn direction_scale(&self) -> Result<Option<Tensor>> {
        Ok(match self {
            NormState::Identity => None,
            NormState::Scale { coeff } => Some(coeff.recip()?),
            NormState::Standardised { std, .. } => Some(std.to_dtype(DType::F32)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn row(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, (1, v.len()), &Device::Cpu).unwrap()
    }

    #[test]
    fn constant_norm_rescale_by_hand() {
        // ‖(3, 4)‖ = 5; scaled to norm √2.
        let (y, state) = Normalization::ConstantNormRescale
            .apply(&row(&[3.0, 4.0]))
            .unwrap();
        let s = 2f32.sqrt() / 5.0;
        let got = y.to_vec2::<f32>().unwrap();
        assert!((got[0][0] - 3.0 * s).abs() < 1e-6 && (got[0][1] - 4.0 * s).abs() < 1e-6);
        let back = state.undo(&y).unwrap().to_vec2::<f32>().unwrap();
        assert!((back[0][0] - 3.0).abs() < 1e-5 && (back[0][1] - 4.0).abs() < 1e-5);
        // A zero row stays zero instead of becoming NaN.
        let (z, _) = Normalization::ConstantNormRescale
            .apply(&row(&[0.0, 0.0]))
            .unwrap();
        assert_eq!(z.to_vec2::<f32>().unwrap(), [[0.0, 0.0]]);
    }

    #[test]
    fn layer_norm_by_hand() {
        // mean 2, centred (-1, 0, 1), unbiased var 1, std 1.
        let (y, state) = Normalization::LayerNorm
            .apply(&row(&[1.0, 2.0, 3.0]))
            .unwrap();
        let d = 1.0 / (1.0 + 1e-5);
        let got = y.to_vec2::<f32>().unwrap();
        for (g, want) in got[0].iter().zip([-d, 0.0, d]) {
            assert!((g - want).abs() < 1e-6, "{got:?}");
        }
        let back = state
            .undo(&row(&[-1.0, 0.0, 1.0]))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(back, [[1.0, 2.0, 3.0]]);
        let scale = state.direction_scale().unwrap().unwrap();
        assert_eq!(scale.to_vec2::<f32>().unwrap(), [[1.0]]);
        assert!(NormState::Identity.direction_scale().unwrap().is_none());
    }
}
