//! dsg's own SAE format: `sae.safetensors` + `sae.json`.
//!
//! The safetensors file holds `W_enc` `(d_in, d_sae)`, `b_enc`, `W_dec` `(d_sae, d_in)`, `b_dec`
//! and, for JumpReLU, `threshold`, all in one dtype (f32, f16 or bf16); its header metadata
//! carries `format = dsg-sae` (the version lives in the JSON). The JSON file says how to apply
//! the SAE (activation, `k`, `b_dec` subtraction, normalisation, hook point, shapes) and carries
//! the descriptive [`SaeMeta`] fields at the top level. Weights round-trip exactly (f32, or values
//! already representable in the stored dtype); the JSON is self-describing so a reader never has to
//! guess.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::tensors::read_json;
use super::TensorFile;
use crate::model::HookPoint;
use crate::sae::{Activation, Normalization, Sae, SaeMeta, SaeParts};
use crate::{Error, Result};

/// The `format` tag of dsg SAE files.
pub const FORMAT_TAG: &str = "dsg-sae";
/// The current format version.
pub const FORMAT_VERSION: u32 = 1;

/// The contents of `sae.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    format_version: u32,
    d_in: usize,
    d_sae: usize,
    /// `relu`, `jumprelu`, `topk` or `groupmax`.
    activation: String,
    /// `k` for topk, the number of groups for groupmax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<usize>,
    apply_b_dec_to_input: bool,
    normalization: Normalization,
    hook: Option<HookPoint>,
    /// `f32`, `f16` or `bf16`.
    dtype: String,
    #[serde(flatten)]
    meta: SaeMeta,
}

/// The (weights, json) paths for a save/load target: a directory, or a `.safetensors`/`.json` file.
fn paths(path: &Path) -> (PathBuf, PathBuf) {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => (path.to_path_buf(), path.with_extension("json")),
        Some("json") => (path.with_extension("safetensors"), path.to_path_buf()),
        _ => (path.join("sae.safetensors"), path.join("sae.json")),
    }
}

/// Whether `path` is a JSON file written by dsg for an SAE.
pub(crate) fn is_dsg_json(path: &Path) -> bool {
    path.is_file()
        && read_json(path)
            .ok()
            .and_then(|v| {
                v.get("format")
                    .and_then(|f| f.as_str())
                    .map(|f| f == FORMAT_TAG)
            })
            .unwrap_or(false)
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::Invalid(format!(
            "SAE weights can be stored as f32, f16 or bf16, not {other:?}"
        ))),
    }
}

/// Writes `sae` to `path` (see [`Sae::save_as`]).
pub(crate) fn save(sae: &Sae, path: &Path, meta: &SaeMeta, dtype: DType) -> Result<()> {
    let dtype_str = dtype_name(dtype)?;
    let (weights_path, json_path) = paths(path);
    if let Some(dir) = weights_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let (activation, k) = match sae.activation() {
        Activation::Relu => ("relu", None),
        Activation::JumpRelu { .. } => ("jumprelu", None),
        Activation::TopK { k } => ("topk", Some(*k)),
        Activation::TopKSigned { k } => ("topk_signed", Some(*k)),
        Activation::GroupMax { groups } => ("groupmax", Some(*groups)),
    };
    let header = Header {
        format: FORMAT_TAG.into(),
        format_version: FORMAT_VERSION,
        d_in: sae.d_in(),
        d_sae: sae.d_sae(),
        activation: activation.into(),
        k,
        apply_b_dec_to_input: sae.apply_b_dec_to_input(),
        normalization: sae.normalization(),
        hook: sae.hook(),
        dtype: dtype_str.into(),
        meta: meta.clone(),
    };

    // A value past the storage type's range (f16: 65504, e.g. Gemma 3's b_dec) is refused by name.
    let cpu = |name: &str, t: &Tensor| -> Result<Tensor> {
        let stored = t.to_device(&candle_core::Device::Cpu)?.to_dtype(dtype)?;
        let max = stored
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        if !max.is_finite() {
            return Err(Error::Invalid(format!(
                "{}: `{name}` holds values beyond {dtype_str}'s range; save in f32 (--dtype f32)",
                weights_path.display()
            )));
        }
        Ok(stored)
    };
    let mut tensors: Vec<(&str, Tensor)> = vec![
        ("W_enc", cpu("W_enc", sae.w_enc())?),
        ("b_enc", cpu("b_enc", sae.b_enc())?),
        ("W_dec", cpu("W_dec", sae.w_dec())?),
        ("b_dec", cpu("b_dec", sae.b_dec())?),
    ];
    if let Activation::JumpRelu { threshold } = sae.activation() {
        tensors.push(("threshold", cpu("threshold", threshold)?));
    }
    // One entry only: the header's map is a HashMap; a single key keeps the bytes deterministic.
    let st_meta: HashMap<String, String> = [("format".to_string(), FORMAT_TAG.to_string())].into();
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (*n, t)),
        Some(st_meta),
        &weights_path,
    )
    .map_err(|e| Error::io(&weights_path, std::io::Error::other(e)))?;

    let json = serde_json::to_string_pretty(&header)
        .map_err(|e| Error::Invalid(format!("SAE metadata does not serialise: {e}")))?;
    std::fs::write(&json_path, json + "\n").map_err(|e| Error::io(&json_path, e))
}

/// Reads a dsg SAE from a directory or either file of a pair.
pub(crate) fn load(path: &Path) -> Result<Sae> {
    let (weights_path, json_path) = paths(path);
    let value = read_json(&json_path)?;
    let header: Header = serde_json::from_value(value)
        .map_err(|e| Error::format(&json_path, "header", "a dsg SAE description", e.to_string()))?;
    if header.format != FORMAT_TAG {
        return Err(Error::format(
            &json_path,
            "format",
            FORMAT_TAG,
            &header.format,
        ));
    }
    if header.format_version > FORMAT_VERSION {
        return Err(Error::format(
            &json_path,
            "format_version",
            format!("at most {FORMAT_VERSION}"),
            header.format_version.to_string(),
        ));
    }
    if !["f32", "f16", "bf16"].contains(&header.dtype.as_str()) {
        return Err(Error::format(
            &json_path,
            "dtype",
            "f32, f16 or bf16",
            &header.dtype,
        ));
    }
    let (d_in, d_sae) = (header.d_in, header.d_sae);
    let mut file = TensorFile::read_safetensors(&weights_path)?;
    let need_k = || {
        Error::missing(
            &json_path,
            format!("field `k` for activation {}", header.activation),
        )
    };
    let activation = match header.activation.as_str() {
        "relu" => Activation::Relu,
        "jumprelu" => Activation::JumpRelu {
            threshold: file.vector(&["threshold"], d_sae)?,
        },
        "topk" => Activation::TopK {
            k: header.k.ok_or_else(need_k)?,
        },
        "topk_signed" => Activation::TopKSigned {
            k: header.k.ok_or_else(need_k)?,
        },
        "groupmax" => Activation::GroupMax {
            groups: header.k.ok_or_else(need_k)?,
        },
        other => {
            return Err(Error::format(
                &json_path,
                "activation",
                "relu, jumprelu, topk, topk_signed or groupmax",
                other,
            ))
        }
    };
    Sae::from_parts(SaeParts {
        w_enc: file.matrix(&["W_enc"], d_in, d_sae)?,
        b_enc: file.vector(&["b_enc"], d_sae)?,
        w_dec: file.matrix(&["W_dec"], d_sae, d_in)?,
        b_dec: file.vector(&["b_dec"], d_in)?,
        activation,
        apply_b_dec_to_input: header.apply_b_dec_to_input,
        normalization: header.normalization,
        hook: header.hook,
        meta: header.meta,
    })
}
