//! Construction, the encode/decode maths, model checks and weight folds of [`Sae`].

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};

use super::{Activation, NormState, Sae, SaeParts};
use crate::kernels::gemm;
use crate::model::HookPoint;
use crate::{Error, Result};

impl Sae {
    /// Builds an SAE from its parts, converting every tensor to f32 on `w_enc`'s device and
    /// checking that the shapes agree.
    pub fn from_parts(parts: SaeParts) -> Result<Sae> {
        let device = parts.w_enc.device().clone();
        let f32_on = |t: &Tensor| -> Result<Tensor> {
            Ok(t.to_dtype(DType::F32)?.to_device(&device)?.contiguous()?)
        };
        let w_enc = f32_on(&parts.w_enc)?;
        let (d_in, d_sae) = match *w_enc.dims() {
            [a, b] => (a, b),
            ref d => return Err(Error::Invalid(format!("W_enc must be 2-D, got {d:?}"))),
        };
        if d_in == 0 {
            return Err(Error::out_of_range("d_in", d_in, "at least 1"));
        }
        if d_sae == 0 {
            return Err(Error::out_of_range("d_sae", d_sae, "at least 1"));
        }
        let expect = |name: &str, t: &Tensor, want: &[usize]| -> Result<Tensor> {
            if t.dims() != want {
                return Err(Error::Invalid(format!(
                    "{name} has shape {:?}, expected {want:?} (d_in {d_in}, d_sae {d_sae})",
                    t.dims()
                )));
            }
            f32_on(t)
        };
        let b_enc = expect("b_enc", &parts.b_enc, &[d_sae])?;
        let w_dec = expect("W_dec", &parts.w_dec, &[d_sae, d_in])?;
        let b_dec = expect("b_dec", &parts.b_dec, &[d_in])?;
        let activation = match parts.activation {
            Activation::JumpRelu { threshold } => Activation::JumpRelu {
                threshold: expect("threshold", &threshold, &[d_sae])?,
            },
            Activation::TopK { k } | Activation::TopKSigned { k } if k == 0 || k > d_sae => {
                return Err(Error::out_of_range(
                    "k",
                    k,
                    format!("1..={d_sae} (d_sae) for a topk SAE"),
                ))
            }
            Activation::GroupMax { groups } if groups == 0 || d_sae % groups != 0 => {
                return Err(Error::Invalid(format!(
                    "groupmax: {groups} groups do not divide d_sae {d_sae}"
                )))
            }
            other => other,
        };
        Ok(Sae {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            activation,
            apply_b_dec_to_input: parts.apply_b_dec_to_input,
            normalization: parts.normalization,
            hook: parts.hook,
            meta: parts.meta,
            origin: None,
        })
    }

    /// Records the file this SAE was read from (used in error messages).
    pub(crate) fn with_origin(mut self, origin: PathBuf) -> Self {
        self.origin = Some(origin);
        self
    }

    /// A copy of this SAE on another device.
    pub fn to_device(&self, device: &Device) -> Result<Sae> {
        let mut out = self.clone();
        out.w_enc = self.w_enc.to_device(device)?;
        out.b_enc = self.b_enc.to_device(device)?;
        out.w_dec = self.w_dec.to_device(device)?;
        out.b_dec = self.b_dec.to_device(device)?;
        if let Activation::JumpRelu { threshold } = &self.activation {
            out.activation = Activation::JumpRelu {
                threshold: threshold.to_device(device)?,
            };
        }
        Ok(out)
    }

    /// Normalises `x` (`(..., d_in)`) as the SAE expects, in f32; returns the statistics to undo
    /// it.
    pub fn normalize(&self, x: &Tensor) -> Result<(Tensor, NormState)> {
        let x = self.check_width(x, self.d_in(), "input")?;
        self.normalization.apply(&x)
    }

    /// Pre-activations `x·W_enc + b_enc` after normalisation and `b_dec` subtraction:
    /// `(..., d_in) → (..., d_sae)`, f32.
    pub fn pre_activations(&self, x: &Tensor) -> Result<Tensor> {
        let (x, _) = self.normalize(x)?;
        self.pre_from_normalized(&x)
    }

    /// `pre` from an already normalised input.
    fn pre_from_normalized(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.apply_b_dec_to_input {
            x.broadcast_sub(&self.b_dec)?
        } else {
            x.clone()
        };
        let pre = matmul_last(&x, &self.w_enc)?;
        Ok(pre.broadcast_add(&self.b_enc)?)
    }

    /// Latent activations: `(..., d_in) → (..., d_sae)`, f32.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.activation.apply(&self.pre_activations(x)?)
    }

    /// `f·W_dec + b_dec`: `(..., d_sae) → (..., d_in)`.
    ///
    /// For SAEs with per-token normalisation ([`super::Normalization::ConstantNormRescale`],
    /// [`super::Normalization::LayerNorm`]) this is the reconstruction in *normalised* space; use
    /// [`Sae::decode_with`] or [`Sae::reconstruct`] to map it back to the input's scale.
    pub fn decode(&self, f: &Tensor) -> Result<Tensor> {
        let f = self.check_width(f, self.d_sae(), "latent activations")?;
        Ok(matmul_last(&f, &self.w_dec)?.broadcast_add(&self.b_dec)?)
    }

    /// Decodes and undoes the normalisation recorded in `state` (from [`Sae::normalize`]).
    pub fn decode_with(&self, f: &Tensor, state: &NormState) -> Result<Tensor> {
        state.undo(&self.decode(f)?)
    }

    /// The full reconstruction of `x`, back in the input's scale: `(..., d_in) → (..., d_in)`.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        let (xn, state) = self.normalize(x)?;
        let f = self.activation.apply(&self.pre_from_normalized(&xn)?)?;
        self.decode_with(&f, &state)
    }

    /// The reconstruction error `x − reconstruct(x)`, f32.
    pub fn error(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        Ok((x32 - self.reconstruct(x)?)?)
    }

    /// Decoder rows for the given latents, `(n, d_in)` in the SAE's (normalised) output space.
    pub fn decoder_rows(&self, latents: &[usize]) -> Result<Tensor> {
        let idx = self.latent_index(latents)?;
        Ok(self.w_dec.index_select(&idx, 0)?)
    }

    /// Checks that this SAE fits a model with `d_model`-wide activations and `n_layers` blocks:
    /// `d_in` must equal `d_model` and the hook point must exist. An SAE whose file names a hook
    /// dsg cannot place (e.g. attention `hook_z`) is refused unless a hook was set explicitly.
    pub fn check_model(&self, d_model: usize, n_layers: usize) -> Result<()> {
        let who = self.describe();
        if self.d_in() != d_model {
            return Err(Error::Mismatch(format!(
                "{who}: d_in is {} but the model's d_model is {d_model}",
                self.d_in()
            )));
        }
        match (self.hook, &self.meta.hook_name) {
            (Some(h), _) if h.layer >= n_layers => Err(Error::Mismatch(format!(
                "{who}: hook point {h} needs layer {} but the model has {n_layers} layers",
                h.layer
            ))),
            (None, Some(name)) => Err(Error::Unsupported(format!(
                "{who}: hook point `{name}` is not a site dsg can hook; set one with Sae::with_hook"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks the hook point as well: the SAE must be for `point` (if it records one).
    pub fn check_hook(&self, point: HookPoint) -> Result<()> {
        match self.hook {
            Some(h) if h != point => Err(Error::Mismatch(format!(
                "{}: hook point is {h}, not {point}",
                self.describe()
            ))),
            _ => Ok(()),
        }
    }

    /// Folds a constant input scale `s` (inputs are multiplied by `s` before encoding and the
    /// reconstruction divided by it): `W_enc·s`, `W_dec/s`, `b_dec/s`.
    pub fn fold_input_scale(&mut self, s: f64) -> Result<()> {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::Invalid(format!(
                "input scale must be positive, got {s}"
            )));
        }
        self.w_enc = (&self.w_enc * s)?;
        self.w_dec = (&self.w_dec / s)?;
        self.b_dec = (&self.b_dec / s)?;
        Ok(())
    }

    /// Folds per-latent decode scales `c` (`(d_sae,)`; decode used `(f·c)·W_dec`) into `W_dec`.
    pub(crate) fn fold_latent_scale(&mut self, c: &Tensor) -> Result<()> {
        self.w_dec = self.w_dec.broadcast_mul(&c.unsqueeze(1)?)?;
        Ok(())
    }

    /// Folds decoder row norms into the encoder (SAELens `fold_W_dec_norm`, norms floored at
    /// 1e-8): `W_enc[:, i]·n_i`, `b_enc[i]·n_i`, θ_i·n_i, `W_dec[i]/n_i`.
    pub(crate) fn fold_decoder_norm(&mut self) -> Result<()> {
        let n = self
            .w_dec
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-8f32, f32::INFINITY)?; // (d_sae, 1)
        self.w_dec = self.w_dec.broadcast_div(&n)?;
        let n = n.squeeze(1)?;
        self.w_enc = self.w_enc.broadcast_mul(&n.unsqueeze(0)?)?;
        self.b_enc = (&self.b_enc * &n)?;
        if let Activation::JumpRelu { threshold } = &self.activation {
            self.activation = Activation::JumpRelu {
                threshold: (threshold * &n)?,
            };
        }
        Ok(())
    }

    /// A u32 index tensor for `latents` on the SAE's device, after a range check.
    pub(crate) fn latent_index(&self, latents: &[usize]) -> Result<Tensor> {
        let d_sae = self.d_sae();
        if let Some(bad) = latents.iter().find(|&&i| i >= d_sae) {
            return Err(Error::Invalid(format!(
                "{}: latent {bad} out of range (d_sae {d_sae})",
                self.describe()
            )));
        }
        let idx: Vec<u32> = latents.iter().map(|&i| i as u32).collect();
        Ok(Tensor::new(idx, self.device())?)
    }

    /// `t` in f32 after checking that its last dimension is `width`.
    pub(crate) fn check_width(&self, t: &Tensor, width: usize, what: &str) -> Result<Tensor> {
        match t.dims().last() {
            Some(&w) if w == width => Ok(t.to_dtype(DType::F32)?),
            _ => Err(Error::Mismatch(format!(
                "{}: {what} has shape {:?}, expected last dimension {width}",
                self.describe(),
                t.dims()
            ))),
        }
    }
}

/// `x·w` for `x` of shape `(..., k)` and a 2-D `w` `(k, n)`: `(..., n)`.
pub(crate) fn matmul_last(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k.max(1);
    let x = x.reshape((rows, k))?;
    // On the CPU, dsg's kernel: each output column is summed in an order that depends on nothing
    // else in the product (see `subset`).
    let y = match gemm::matmul_tensors(&x, w, gemm::Layout::Cols)? {
        Some(y) => y,
        None => x.matmul(w)?,
    };
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(w.dim(1)?);
    Ok(y.reshape(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::{Normalization, SaeMeta};

    fn parts(d_in: usize, d_sae: usize, activation: Activation) -> SaeParts {
        let z = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
        SaeParts {
            w_enc: z(&[d_in, d_sae]),
            b_enc: z(&[d_sae]),
            w_dec: z(&[d_sae, d_in]),
            b_dec: z(&[d_in]),
            activation,
            apply_b_dec_to_input: false,
            normalization: Normalization::None,
            hook: None,
            meta: SaeMeta::default(),
        }
    }

    fn refusal(p: SaeParts) -> String {
        let e = Sae::from_parts(p).unwrap_err();
        assert!(matches!(e, Error::OutOfRange { .. }), "{e:?}");
        e.to_string()
    }

    #[test]
    fn empty_widths_and_topk_k_out_of_range_are_refused() {
        assert!(Sae::from_parts(parts(4, 8, Activation::TopK { k: 8 })).is_ok());
        assert!(refusal(parts(4, 8, Activation::TopK { k: 0 })).starts_with("k: 0"));
        assert!(refusal(parts(4, 8, Activation::TopK { k: 9 })).contains("1..=8"));
        assert!(refusal(parts(4, 0, Activation::Relu)).starts_with("d_sae: 0"));
        assert!(refusal(parts(0, 8, Activation::Relu)).starts_with("d_in: 0"));
    }
}
