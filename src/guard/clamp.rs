//! The intervention: overwrite selected SAE features at chosen tokens, as an exact residual edit
//! (§3 of the spec).
//!
//! The reference encodes `a = SAE(h)`, keeps the error `e = h − decode(a)`, overwrites selected
//! features and returns `decode(a') + e`. Decoding is affine, so this equals
//! `h + Σ_j (a'_j − a_j)·W_dec[j]`, which is what [`clamp_residual`] computes: it needs only the
//! selected features' activations and decoder rows, and leaves every unclamped token's residual
//! bit for bit as it was (the reference's round trip perturbs them by rounding).
//!
//! Clamp specs ([`ClampSpec`]), at each clamped token:
//! * `ClampAll { value }`: every selected feature becomes `value`, active or not (DSG; the paper's
//!   `value = −c`, c = 500).
//! * `PerFeature { value }`: only features with `a_j > 0` become `value` (Farrell et al.).
//! * `NormRelative { scale }`: like `ClampAll`, with `value_j = −scale · ‖h_t‖ / ‖W_dec[j]‖`, so that
//!   feature `j`'s clamped contribution has norm `scale · ‖h_t‖`. An absolute −500 is tuned to one
//!   model's residual norms (Gemma-2-2B layer 3) and does not carry over to models with far larger
//!   norms; a scale does.
//!
//! Which tokens are clamped is the caller's mask; [`clamp_mask`] gives the paper's: in rows the
//! gate fired on, the tokens where some selected feature is active (never position 0 of a BOS row,
//! whose activity is already off).

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What selected features are set to at clamped tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClampSpec {
    /// All selected features set to `value` (DSG).
    ClampAll {
        /// The clamp value, `−c` in the paper.
        value: f64,
    },
    /// Active selected features (`a_j > 0`) set to `value` (Farrell et al.).
    PerFeature {
        /// The clamp value, `−c`.
        value: f64,
    },
    /// All selected features set to `−scale · ‖h_t‖ / ‖W_dec[j]‖`.
    NormRelative {
        /// Norm of each feature's clamped contribution, in units of the token's residual norm.
        scale: f64,
    },
}

impl ClampSpec {
    /// DSG's clamp with strength `c`: all selected features to `−c`.
    pub fn paper(c: f64) -> Self {
        ClampSpec::ClampAll { value: -c }
    }

    /// Farrell et al.'s clamp with multiplier `c`: active selected features to `−c`.
    pub fn farrell(c: f64) -> Self {
        ClampSpec::PerFeature { value: -c }
    }

    /// Checks the parameter's sign: a clamp value (`−c`) must be finite and negative, since a
    /// clamp suppresses features (a positive value would steer towards them); a norm-relative
    /// scale must be finite and positive. Errors name the field (`clamp.value`, `clamp.scale`).
    pub fn validate(&self) -> Result<()> {
        match *self {
            ClampSpec::ClampAll { value } | ClampSpec::PerFeature { value }
                if !(value.is_finite() && value < 0.0) =>
            {
                Err(Error::out_of_range(
                    "clamp.value",
                    value,
                    "a finite negative number (the features are set to −c, c > 0)",
                ))
            }
            ClampSpec::NormRelative { scale } if !(scale.is_finite() && scale > 0.0) => Err(
                Error::out_of_range("clamp.scale", scale, "a finite positive number"),
            ),
            _ => Ok(()),
        }
    }
}

/// The paper's clamp mask for one row: its active tokens if the gate fired, none otherwise.
pub fn clamp_mask(activity: &[bool], fired: bool) -> Vec<bool> {
    activity.iter().map(|&a| a && fired).collect()
}

/// `h` with the selected features clamped at the tokens where `mask` is true.
///
/// * `h`: residual, `(seq, d_model)` or `(batch, seq, d_model)`;
/// * `selected`: the selected features' activations at `h`, `(seq, N)` or `(batch, seq, N)`;
/// * `decoder_rows`: their decoder rows `W_dec[j]`, `(N, d_model)`;
/// * `mask`: one flag per token, row-major over the leading dimensions (padding: `false`).
///
/// The edit is computed in f32 and added in `h`'s dtype; unmasked tokens are copied unchanged.
pub fn clamp_residual(
    h: &Tensor,
    selected: &Tensor,
    decoder_rows: &Tensor,
    mask: &[bool],
    spec: &ClampSpec,
) -> Result<Tensor> {
    spec.validate()?;
    let d_model = h.dim(D::Minus1)?;
    let tokens = h.elem_count() / d_model.max(1);
    let n = decoder_rows.dim(0)?;
    let leading = &h.dims()[..h.rank() - 1];
    if decoder_rows.dims() != [n, d_model]
        || selected.dims() != [leading, &[n]].concat()
        || mask.len() != tokens
    {
        return Err(Error::Invalid(format!(
            "clamp shapes disagree: h {:?}, selected {:?}, decoder rows {:?}, mask of {}",
            h.dims(),
            selected.dims(),
            decoder_rows.dims(),
            mask.len()
        )));
    }
    if !mask.contains(&true) {
        return Ok(h.clone());
    }
    let h2 = h.reshape((tokens, d_model))?;
    let a = selected.reshape((tokens, n))?.to_dtype(DType::F32)?;
    let w = decoder_rows.to_dtype(DType::F32)?.contiguous()?;
    let diff = match *spec {
        ClampSpec::ClampAll { value } => a.affine(-1.0, value)?,
        ClampSpec::PerFeature { value } => a
            .gt(0f32)?
            .where_cond(&a.affine(-1.0, value)?, &a.zeros_like()?)?,
        ClampSpec::NormRelative { scale } => {
            let w_norm = w.sqr()?.sum(1)?.sqrt()?;
            if w_norm.to_vec1::<f32>()?.contains(&0.0) {
                return Err(Error::Invalid(
                    "a norm-relative clamp needs non-zero decoder rows".into(),
                ));
            }
            let h_norm = h2.to_dtype(DType::F32)?.sqr()?.sum_keepdim(1)?.sqrt()?;
            let target = h_norm
                .broadcast_div(&w_norm.unsqueeze(0)?)?
                .affine(-scale, 0.0)?;
            (target - a)?
        }
    };
    let edited = (h2.to_dtype(DType::F32)? + diff.matmul(&w)?)?.to_dtype(h.dtype())?;
    let keep = Tensor::from_iter(mask.iter().map(|&m| u8::from(m)), h.device())?
        .reshape((tokens, 1))?
        .broadcast_as((tokens, d_model))?;
    Ok(keep.where_cond(&edited, &h2)?.reshape(h.shape())?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(values: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
    }

    /// 3 tokens, d_model 2, 2 selected features; token 0 holds a −0.0 that must survive.
    fn setup() -> (Tensor, Tensor, Tensor) {
        let h = t(&[-0.0, 1.5, 2.0, -1.0, 0.25, 4.0], (3, 2));
        let a = t(&[3.0, 0.0, 1.0, 0.0, 0.0, 2.0], (3, 2));
        let w = t(&[1.0, 0.0, 0.5, 0.5], (2, 2));
        (h, a, w)
    }

    fn rows(x: &Tensor) -> Vec<Vec<f32>> {
        x.to_vec2().unwrap()
    }

    #[test]
    fn clamp_all_equals_decode_plus_error_and_spares_unmasked_rows() {
        let (h, a, w) = setup();
        let out =
            clamp_residual(&h, &a, &w, &[false, true, true], &ClampSpec::paper(10.0)).unwrap();
        let out = rows(&out);
        let h_rows = rows(&h);
        assert_eq!(out[0][0].to_bits(), (-0.0f32).to_bits());
        assert_eq!(out[0][1].to_bits(), h_rows[0][1].to_bits());
        // Token 1: a = (1, 0) → (−10, −10): Δ = −11·(1, 0) − 10·(0.5, 0.5) = (−16, −5).
        assert_eq!(out[1], vec![2.0 - 16.0, -1.0 - 5.0]);
        // Token 2: a = (0, 2) → Δ = −10·(1, 0) − 12·(0.5, 0.5) = (−16, −6).
        assert_eq!(out[2], vec![0.25 - 16.0, 4.0 - 6.0]);
    }

    #[test]
    fn per_feature_touches_only_active_features() {
        let (h, a, w) = setup();
        let out =
            clamp_residual(&h, &a, &w, &[true, true, true], &ClampSpec::farrell(10.0)).unwrap();
        let out = rows(&out);
        // Token 0: only feature 0 (a = 3) → Δ = −13·(1, 0).
        assert_eq!(out[0], vec![-13.0, 1.5]);
        // Token 1: feature 0 (a = 1) → Δ = −11·(1, 0).
        assert_eq!(out[1], vec![2.0 - 11.0, -1.0]);
        // Token 2: feature 1 (a = 2) → Δ = −12·(0.5, 0.5).
        assert_eq!(out[2], vec![0.25 - 6.0, 4.0 - 6.0]);
    }

    #[test]
    fn norm_relative_contribution_has_the_requested_norm() {
        // One feature with decoder row of norm 2, a token with residual norm 5 and a = 0.
        let h = t(&[3.0, 4.0], (1, 2));
        let a = t(&[0.0], (1, 1));
        let w = t(&[0.0, 2.0], (1, 2));
        let out =
            clamp_residual(&h, &a, &w, &[true], &ClampSpec::NormRelative { scale: 0.5 }).unwrap();
        // value = −0.5·5/2 = −1.25 → Δ = −1.25·(0, 2) = (0, −2.5), of norm 0.5·‖h‖.
        assert_eq!(rows(&out), vec![vec![3.0, 1.5]]);
    }

    #[test]
    fn batched_input_and_shape_errors() {
        let (h, a, w) = setup();
        let hb = h.reshape((1, 3, 2)).unwrap();
        let ab = a.reshape((1, 3, 2)).unwrap();
        let mask = [false, true, false];
        let batched = clamp_residual(&hb, &ab, &w, &mask, &ClampSpec::paper(1.0)).unwrap();
        let flat = clamp_residual(&h, &a, &w, &mask, &ClampSpec::paper(1.0)).unwrap();
        assert_eq!(batched.dims(), &[1, 3, 2]);
        assert_eq!(rows(&batched.squeeze(0).unwrap()), rows(&flat));
        assert!(clamp_residual(&h, &a, &w, &[true], &ClampSpec::paper(1.0)).is_err());
        let nothing = clamp_residual(&h, &a, &w, &[false; 3], &ClampSpec::paper(1.0)).unwrap();
        assert_eq!(rows(&nothing), rows(&h));
    }

    #[test]
    fn paper_mask_and_serde() {
        assert_eq!(
            clamp_mask(&[false, true, true], true),
            vec![false, true, true]
        );
        assert_eq!(clamp_mask(&[false, true, true], false), vec![false; 3]);
        let json = serde_json::to_string(&ClampSpec::paper(500.0)).unwrap();
        assert_eq!(json, r#"{"kind":"clamp_all","value":-500.0}"#);
        assert_eq!(
            serde_json::from_str::<ClampSpec>(&json).unwrap(),
            ClampSpec::paper(500.0)
        );
    }
}
