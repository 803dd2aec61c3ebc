//! Computing only a few latents: the encoder columns of the selected latents, kept together so a
//! guardrail can watch its features without paying for the full `d_in × d_sae` product.
//!
//! Exactness. The result should equal the full encode's columns bit for bit, so that a latent never
//! fires in one path and not in the other. On CPUs with AVX2 both products run on dsg's kernel
//! (`kernels::gemm`), which sums each output column in an order fixed by `d_in` alone, so the
//! columns agree whatever else is in the product. Elsewhere candle's `gemm` chooses its reduction
//! blocking from the shape (a matrix-vector path for one column, another blocking when both
//! `m ≤ 64` and `n ≤ 64`), so the selected columns are padded with zero columns to at least
//! `min(d_sae, 65)` (and 2), which puts the product in the same regime as the full one. Tests check
//! bit equality on the CPU. On CUDA, cuBLAS picks kernels per shape, so the two agree only up to
//! f32 rounding of the dot products.

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
    /// The same columns followed by zero columns, `(d_in, width ≥ n)`; see the module docs.
    w_enc_padded: Tensor,
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
        let pre = matmul_last(&x, &self.w_enc_padded)?;
        let last = pre.rank() - 1;
        Ok(pre
            .narrow(last, 0, self.latents.len())?
            .broadcast_add(&self.b_enc)?)
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
        let w_enc = self.w_enc.index_select(&idx, 1)?.contiguous()?;
        let width = latents.len().max(self.d_sae().min(65)).max(2);
        let w_enc_padded = if width > latents.len() {
            let pad = Tensor::zeros(
                (self.d_in(), width - latents.len()),
                w_enc.dtype(),
                w_enc.device(),
            )?;
            Tensor::cat(&[&w_enc, &pad], 1)?
        } else {
            w_enc.clone()
        };
        Ok(SaeSubset {
            latents: latents.to_vec(),
            w_enc,
            w_enc_padded,
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::sae::{Activation, Normalization, Sae, SaeMeta, SaeParts};

    /// A random SAE with positive thresholds; `seed` varies the draw.
    pub(crate) fn random_sae(
        d_in: usize,
        d_sae: usize,
        activation: &str,
        norm: Normalization,
    ) -> Sae {
        let dev = Device::Cpu;
        let r = |shape: &[usize], scale: f64| {
            (Tensor::randn(0f32, 1f32, shape, &dev).unwrap() * scale).unwrap()
        };
        let activation = match activation {
            "relu" => Activation::Relu,
            "jumprelu" => Activation::JumpRelu {
                threshold: Tensor::rand(0.05f32, 0.5f32, d_sae, &dev).unwrap(),
            },
            _ => Activation::TopK { k: 5 },
        };
        Sae::from_parts(SaeParts {
            w_enc: r(&[d_in, d_sae], 1.0 / (d_in as f64).sqrt()),
            b_enc: r(&[d_sae], 0.1),
            w_dec: r(&[d_sae, d_in], 0.3),
            b_dec: r(&[d_in], 0.2),
            activation,
            apply_b_dec_to_input: true,
            normalization: norm,
            hook: None,
            meta: SaeMeta::default(),
        })
        .unwrap()
    }

    #[test]
    fn encode_subset_equals_encode_gathered_exactly() {
        let dev = Device::Cpu;
        let norms = [
            Normalization::None,
            Normalization::ConstantNormRescale,
            Normalization::LayerNorm,
        ];
        for (act, norm) in ["relu", "jumprelu"]
            .into_iter()
            .flat_map(|a| norms.map(|n| (a, n)))
        {
            // Widths like real SAEs' (large K and N) as well as tiny ones.
            // K > 512 with few rows is where an unpadded product would round differently.
            for (d_in, d_sae, rows) in [(16, 48, 7), (16, 48, 30), (640, 2048, 7), (640, 2048, 30)]
            {
                let sae = random_sae(d_in, d_sae, act, norm);
                let batch = Tensor::randn(0f32, 1f32, (3, rows, d_in), &dev).unwrap();
                let single = Tensor::randn(0f32, 1f32, d_in, &dev).unwrap();
                for (x, latents) in [&batch, &single].into_iter().flat_map(|x| {
                    [
                        vec![0],
                        vec![d_sae - 1, 3, 3, 17],
                        (0..d_sae).step_by(7).collect(),
                    ]
                    .map(|l| (x, l))
                }) {
                    let full = sae.encode(x).unwrap();
                    let last = full.rank() - 1;
                    let idx =
                        Tensor::new(latents.iter().map(|&i| i as u32).collect::<Vec<_>>(), &dev)
                            .unwrap();
                    let want = full.index_select(&idx, last).unwrap();
                    let got = sae.encode_subset(x, &latents).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    let (a, b) = (
                        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    );
                    let max = a
                        .iter()
                        .zip(&b)
                        .map(|(p, q)| (p - q).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        a == b,
                        "{act} {norm:?} {d_in}x{d_sae} {latents:?}: max diff {max}"
                    );
                }
            }
        }
    }

    #[test]
    fn top_k_subset_needs_full_encode() {
        let sae = random_sae(8, 24, "topk", Normalization::None);
        let err = sae.subset(&[1, 2]).unwrap_err().to_string();
        assert!(err.contains("full encode"), "{err}");
        let x = Tensor::randn(0f32, 1f32, (4, 8), &Device::Cpu).unwrap();
        let full = sae.encode(&x).unwrap();
        let got = sae.encode_subset(&x, &[2, 1]).unwrap();
        let idx = Tensor::new(&[2u32, 1], &Device::Cpu).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            full.index_select(&idx, 1)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        assert!(sae.encode_subset(&x, &[24]).is_err());
    }
}
