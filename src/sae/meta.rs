//! Descriptive metadata carried with an SAE: where it came from, which model it belongs to, how
//! well it reconstructs. The structural facts (shapes, activation, normalisation, hook point) live
//! on [`super::Sae`] itself and are written next to this metadata by [`super::Sae::save`].

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The on-disk format an SAE was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaeFormat {
    /// Gemma Scope (Gemma 2): `params.npz`.
    GemmaScopeNpz,
    /// Gemma Scope 2 (Gemma 3): `params.safetensors` with lower-case keys.
    GemmaScopeSafetensors,
    /// SAELens: `cfg.json` + `sae_weights.safetensors`.
    SaeLens,
    /// EleutherAI sparsify: `cfg.json` + `sae.safetensors`.
    Sparsify,
    /// dsg's own: `sae.json` + `sae.safetensors`.
    Dsg,
    /// Qwen-Scope: `layer{n}.sae.pt`, a `torch.save` dict of `W_enc`, `W_dec`, `b_enc`, `b_dec`.
    QwenScope,
}

/// Where an SAE was loaded from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SaeSource {
    /// The format that was read.
    pub format: SaeFormat,
    /// The file or directory that was read.
    pub path: PathBuf,
}

/// The model an SAE was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelIdentity {
    /// A human-readable name, e.g. `google/gemma-2-2b`.
    pub name: String,
    /// Hex SHA-256 of the model's weights file, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Quality measurements of an SAE on some evaluation data.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SaeMetrics {
    /// Fraction of variance unexplained by the reconstruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fvu: Option<f64>,
    /// Mean number of active latents per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l0: Option<f64>,
    /// Fraction of latents that never fired on the evaluation data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_fraction: Option<f64>,
    /// Increase in next-token cross-entropy when the reconstruction replaces the activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_ce: Option<f64>,
    /// Any other named measurement.
    #[serde(default, flatten)]
    pub extra: BTreeMap<String, f64>,
}

impl SaeMetrics {
    /// Whether no metric is recorded.
    pub fn is_empty(&self) -> bool {
        *self == SaeMetrics::default()
    }
}

/// Descriptive metadata of an SAE. All fields are optional; loaders fill in what the file records.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SaeMeta {
    /// The model the SAE was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelIdentity>,
    /// The hook name exactly as the source file wrote it (it may name a site dsg cannot hook,
    /// e.g. `blocks.5.attn.hook_z`, in which case [`super::Sae::hook`] is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_name: Option<String>,
    /// What the SAE was trained on (data set, token count, context length…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_data: Option<String>,
    /// Reconstruction and sparsity metrics.
    #[serde(default, skip_serializing_if = "SaeMetrics::is_empty")]
    pub metrics: SaeMetrics,
    /// Free-form notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// The file the SAE was converted from, if it was not trained by dsg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SaeSource>,
    /// Things a loader could not honour exactly (e.g. a constant input scale it did not know).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
