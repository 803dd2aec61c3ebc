//! Sparse autoencoders: one [`Sae`] type that every supported file format loads into.
//!
//! An SAE maps an activation `x` (`d_in` wide) to latents `f` (`d_sae` wide) and back. The order
//! of operations follows SAELens: normalise `x` per token → subtract `b_dec` if
//! `apply_b_dec_to_input` → `pre = x·W_enc + b_enc` → activation (ReLU, JumpReLU, TopK) →
//! `f·W_dec + b_dec` → de-normalise.
//!
//! Everything runs in f32, whatever dtype the file stored. Loaders fold format-specific constants
//! into the weights so that the runtime has one code path:
//! * a constant input scale (`expected_average_only_in` with a known factor `s`):
//!   `W_enc·s`, `W_dec/s`, `b_dec/s` (SAELens's `fold_activation_norm_scaling_factor`);
//! * SAELens's legacy `finetuning_scaling_factor` `c` (decode used `(f·c)·W_dec`):
//!   `W_dec[i] · c[i]`;
//! * TopK's `rescale_acts_by_decoder_norm` (`pre·‖W_dec[i]‖`, decode `f/‖W_dec[i]‖`): SAELens's
//!   `fold_W_dec_norm`, i.e. `W_enc[:, i]·n_i`, `b_enc[i]·n_i`, `W_dec[i]/n_i`.
//!
//! Each fold leaves `encode` and `decode` equal (up to f32 rounding) to the reference
//! implementation's, so latent activations keep the units the reference reports.

mod activation;
pub mod collect;
mod core;
pub mod formats;
pub mod labels;
mod meta;
pub mod metrics;
mod norm;
pub mod registry;
pub mod run;
mod sparse_grad;
mod subset;
pub mod train;

use std::path::{Path, PathBuf};

use candle_core::Tensor;

pub use activation::Activation;
pub use formats::detect_format;
pub use labels::{FeatureLabel, FeatureLabels};
pub use meta::{ModelIdentity, SaeFormat, SaeMeta, SaeMetrics, SaeSource};
pub use norm::{NormState, Normalization};
pub use registry::resolve_sae_path;
pub use subset::SaeSubset;

use crate::model::HookPoint;

/// Loads the default SAE built into dsg (SmolLM2-135M-Instruct, dsg format, f16 storage; see
/// [`crate::assets::default_sae_dir`]) onto `device`.
pub fn default_sae(device: &candle_core::Device) -> crate::Result<Sae> {
    Sae::load(&crate::assets::default_sae_dir()?, device)
}

/// A sparse autoencoder with f32 weights on one device.
///
/// Layouts: `W_enc` is `(d_in, d_sae)`, `W_dec` is `(d_sae, d_in)`, `b_enc` `(d_sae,)`,
/// `b_dec` `(d_in,)`; JumpReLU thresholds live in [`Activation::JumpRelu`].
#[derive(Debug, Clone)]
pub struct Sae {
    w_enc: Tensor,
    b_enc: Tensor,
    w_dec: Tensor,
    b_dec: Tensor,
    activation: Activation,
    apply_b_dec_to_input: bool,
    normalization: Normalization,
    hook: Option<HookPoint>,
    meta: SaeMeta,
    origin: Option<PathBuf>,
}

/// Everything needed to build an [`Sae`] by hand (e.g. after training); see [`Sae::from_parts`].
#[derive(Debug, Clone)]
pub struct SaeParts {
    /// Encoder weights, `(d_in, d_sae)`.
    pub w_enc: Tensor,
    /// Encoder bias, `(d_sae,)`.
    pub b_enc: Tensor,
    /// Decoder weights, `(d_sae, d_in)`.
    pub w_dec: Tensor,
    /// Decoder bias, `(d_in,)`.
    pub b_dec: Tensor,
    /// Activation function (a JumpReLU threshold must be `(d_sae,)`).
    pub activation: Activation,
    /// Whether `b_dec` is subtracted from the (normalised) input before encoding.
    pub apply_b_dec_to_input: bool,
    /// Per-token input normalisation.
    pub normalization: Normalization,
    /// Where in the model the SAE reads and writes, if known.
    pub hook: Option<HookPoint>,
    /// Descriptive metadata.
    pub meta: SaeMeta,
}

impl Sae {
    /// Loads an SAE, detecting the format from `path` (a file or a directory); see
    /// [`detect_format`]. A `path` that does not exist is tried as an SAELens-style name
    /// (`release/id`) in the local Hugging Face cache ([`resolve_sae_path`]).
    pub fn load(path: &Path, device: &candle_core::Device) -> crate::Result<Sae> {
        formats::load(path, device)
    }

    /// Loads an SAE in a given format (for paths whose format detection is ambiguous).
    pub fn load_as(
        path: &Path,
        format: SaeFormat,
        device: &candle_core::Device,
    ) -> crate::Result<Sae> {
        formats::load_as(path, format, device)
    }

    /// Saves in dsg's own format with f32 weights; see [`Sae::save_as`].
    pub fn save(&self, path: &Path, meta: &SaeMeta) -> crate::Result<()> {
        self.save_as(path, meta, candle_core::DType::F32)
    }

    /// Saves in dsg's own format, storing weights as `dtype` (f32, f16 or bf16).
    ///
    /// `path` ending in `.safetensors` writes that file plus a `.json` beside it; any other path
    /// is a directory that receives `sae.safetensors` and `sae.json`. The shapes, activation,
    /// normalisation and hook come from `self`; everything descriptive comes from `meta`.
    pub fn save_as(
        &self,
        path: &Path,
        meta: &SaeMeta,
        dtype: candle_core::DType,
    ) -> crate::Result<()> {
        formats::dsg::save(self, path, meta, dtype)
    }

    /// Descriptive metadata (model, data, metrics, source file, warnings).
    pub fn metadata(&self) -> &SaeMeta {
        &self.meta
    }

    /// Mutable access to the descriptive metadata.
    pub fn metadata_mut(&mut self) -> &mut SaeMeta {
        &mut self.meta
    }

    /// The file or directory this SAE was loaded from, if any.
    pub fn origin(&self) -> Option<&Path> {
        self.origin.as_deref()
    }

    /// The hook point recorded in (or inferred from) the file, if any.
    pub fn hook(&self) -> Option<HookPoint> {
        self.hook
    }

    /// The same SAE attached to another hook point.
    pub fn with_hook(mut self, hook: HookPoint) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The activation function.
    pub fn activation(&self) -> &Activation {
        &self.activation
    }

    /// The per-token input normalisation.
    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// Whether `b_dec` is subtracted from the input before encoding.
    pub fn apply_b_dec_to_input(&self) -> bool {
        self.apply_b_dec_to_input
    }

    /// Encoder weights, `(d_in, d_sae)`.
    pub fn w_enc(&self) -> &Tensor {
        &self.w_enc
    }

    /// Encoder bias, `(d_sae,)`.
    pub fn b_enc(&self) -> &Tensor {
        &self.b_enc
    }

    /// Decoder weights, `(d_sae, d_in)`.
    pub fn w_dec(&self) -> &Tensor {
        &self.w_dec
    }

    /// Decoder bias, `(d_in,)`.
    pub fn b_dec(&self) -> &Tensor {
        &self.b_dec
    }

    /// The device holding the weights.
    pub fn device(&self) -> &candle_core::Device {
        self.w_enc.device()
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.w_enc.dims()[0]
    }

    /// Number of latents.
    pub fn d_sae(&self) -> usize {
        self.w_enc.dims()[1]
    }

    /// A short description for error messages: the origin path, or "SAE".
    fn describe(&self) -> String {
        match &self.origin {
            Some(p) => p.display().to_string(),
            None => "SAE".to_string(),
        }
    }
}
