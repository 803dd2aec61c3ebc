//! Computing only a few latents: the encoder columns of the selected latents, kept together so a
//! guardrail can watch its features without paying for the full `d_in × d_sae` product.

use candle_core::Tensor;

use super::core::matmul_last;
use super::{activation, Activation, Normalization, Sae};
use crate::{Error, Result};

/// The encoder restricted to some latents (ReLU and JumpReLU SAEs only: under TopK a latent's
/// activation depends on all the others).
#[derive(Debug, Clone)]
pub struct SaeSubset {
    latents: Vec<usize>,
    /// Encoder columns, `(d_in, n)`.
    w_enc: Tensor,
    /// Encoder biases, `(n,)`.
    b_enc: Tensor,
    /// JumpReLU thresholds, `(n,)`; `None` for ReLU.
    threshold: Option<Tensor>,
    /// `b_dec`, if it is subtracted from the input.
    b_dec: Option<Tensor>,
    normalization: Normalization,
    d_in: usize,
}

impl SaeSubset {
    /// The selected latents, in column order.
    pub fn latents(&self) -> &[usize] {
        &self.latents
    }

    /// Encoder columns of the selected latents, `(d_in, n)`.
    pub fn w_enc(&self) -> &Tensor {
        &self.w_enc
    }

    /// Encoder biases of the selected latents, `(n,)`.
    pub fn b_enc(&self) -> &Tensor {
        &self.b_enc
    }

    /// JumpReLU thresholds of the selected latents, `(n,)`; `None` for ReLU.
    pub fn threshold(&self) -> Option<&Tensor> {
        self.threshold.as_ref()
    }

    /// Pre-activations of the selected latents: `(..., d_in) → (..., n)`.
    pub fn pre_activations(&self, x: &Tensor) -> Result<Tensor> {
        if x.dims().last() != Some(&self.d_in) {
            return Err(Error::Mismatch(format!(
                "input has shape {:?}, expected last dimension {}",
                x.dims(),
                self.d_in
            )));
        }
        let x = x.to_dtype(candle_core::DType::F32)?;
        let (x, _) = self.normalization.apply(&x)?;
        let x = match &self.b_dec {
            Some(b) => x.broadcast_sub(b)?,
            None => x,
        };
        Ok(matmul_last(&x, &self.w_enc)?.broadcast_add(&self.b_enc)?)
    }

    /// Activations of the selected latents: `(..., d_in) → (..., n)`, the same operations as
    /// [`Sae::encode`] on fewer columns.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let pre = self.pre_activations(x)?;
        match &self.threshold {
            Some(t) => activation::jump_relu(&pre, t),
            None => Ok(pre.relu()?),
        }
    }
}

impl Sae {
    /// The encoder restricted to `latents` (any order, repeats allowed). Errors for TopK and
    /// groupmax SAEs, whose activations need the full encode.
    pub fn subset(&self, latents: &[usize]) -> Result<SaeSubset> {
        let idx = self.latent_index(latents)?;
        let threshold = match &self.activation {
            Activation::Relu => None,
            Activation::JumpRelu { threshold } => Some(threshold.index_select(&idx, 0)?),
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: {} activations depend on all latents; a full encode is needed",
                    self.describe(),
                    other.name()
                )))
            }
        };
        Ok(SaeSubset {
            latents: latents.to_vec(),
            w_enc: self.w_enc.index_select(&idx, 1)?.contiguous()?,
            b_enc: self.b_enc.index_select(&idx, 0)?,
            threshold,
            b_dec: self.apply_b_dec_to_input.then(|| self.b_dec.clone()),
            normalization: self.normalization,
            d_in: self.d_in(),
        })
    }

    /// Activations of the given latents only: `(..., d_in) → (..., n)`. For ReLU/JumpReLU this
    /// computes just those columns (see [`Sae::subset`] to reuse the selection); for TopK and
    /// groupmax it runs the full encode and gathers the columns.
    pub fn encode_subset(&self, x: &Tensor, latents: &[usize]) -> Result<Tensor> {
        if self.activation.is_elementwise() {
            return self.subset(latents)?.encode(x);
        }
        let idx = self.latent_index(latents)?;
        let f = self.encode(x)?;
        let last = f.rank() - 1;
        Ok(f.index_select(&idx, last)?)
    }
}
