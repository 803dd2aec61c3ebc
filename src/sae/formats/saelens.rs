//! SAELens directories: `cfg.json` + `sae_weights.safetensors`.
//!
//! Both config generations are read. v6+ (a `sae_lens_version` ≥ 6 at the top level or in
//! `metadata`) has `architecture`, `d_in`, `d_sae`, `apply_b_dec_to_input`,
//! `normalize_activations`, `metadata.hook_name`, and topk's `k` / `rescale_acts_by_decoder_norm`.
//! Older configs are flat and are renamed as SAELens's `handle_pre_6_0_config` does: `hook_point` →
//! `hook_name`, `activation_fn_str` → `activation_fn`, a missing architecture is `standard`,
//! `activation_fn == "topk"` with `activation_fn_kwargs.k` is `topk`, and a boolean
//! `normalize_activations` means `expected_average_only_in`.
//!
//! A legacy `scaling_factor` / `finetuning_scaling_factor` tensor that is not all ones scaled the
//! latents before decoding (`(f·c)·W_dec`, SAELens ≤ 5); it is folded into `W_dec`, so `encode`
//! keeps SAELens's values and `decode` its reconstruction. `expected_average_only_in` is folded
//! when the factor is known (`cfg.json` `norm_scaling_factor` / `activation_normalization_factor`,
//! or `activation_scaler.json` `scaling_factor`); otherwise the SAE is used as SAELens uses it from
//! disk (inputs unscaled) and a warning is recorded in the metadata.

use std::path::Path;

use serde_json::Value;

use super::tensors::{all_ones, read_json, Json};
use super::TensorFile;
use crate::model::HookPoint;
use crate::sae::{
    Activation, ModelIdentity, Normalization, Sae, SaeFormat, SaeMeta, SaeParts, SaeSource,
};
use crate::{Error, Result};

/// The parts of `cfg.json` that decide how the SAE is applied, in v6 terms.
struct Config {
    d_in: usize,
    d_sae: usize,
    architecture: String,
    apply_b_dec_to_input: bool,
    normalize: String,
    k: Option<usize>,
    rescale_acts_by_decoder_norm: bool,
    hook_name: Option<String>,
    model_name: Option<String>,
    dataset: Option<String>,
    input_scale: Option<f64>,
}

/// Reads an SAELens directory.
pub(super) fn load(dir: &Path) -> Result<Sae> {
    let cfg_path = dir.join("cfg.json");
    let weights_path = dir.join("sae_weights.safetensors");
    let cfg = parse_config(&cfg_path)?;
    let mut file = TensorFile::read_safetensors(&weights_path)?;
    let (d_in, d_sae) = (cfg.d_in, cfg.d_sae);
    let activation = activation(&cfg, &cfg_path, &mut file)?;

    let w_enc = file.matrix(&["W_enc"], d_in, d_sae)?;
    let w_dec = file.matrix(&["W_dec"], d_sae, d_in)?;
    let b_enc = file.vector(&["b_enc"], d_sae)?;
    let b_dec = file.vector(&["b_dec"], d_in)?;
    let latent_scale = file.vector_opt(&["finetuning_scaling_factor", "scaling_factor"], d_sae)?;

    let mut meta = SaeMeta {
        model: cfg
            .model_name
            .clone()
            .map(|name| ModelIdentity { name, sha256: None }),
        hook_name: cfg.hook_name.clone(),
        training_data: cfg.dataset.clone(),
        source: Some(SaeSource {
            format: SaeFormat::SaeLens,
            path: dir.to_path_buf(),
        }),
        ..SaeMeta::default()
    };
    let (normalization, input_scale) = normalization(&cfg, dir, &mut meta)?;
    let hook = cfg
        .hook_name
        .as_deref()
        .and_then(|h| h.parse::<HookPoint>().ok());

    let mut sae = Sae::from_parts(SaeParts {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        activation,
        apply_b_dec_to_input: cfg.apply_b_dec_to_input,
        normalization,
        hook,
        meta,
    })?;
    if let Some(c) = latent_scale {
        if !all_ones(&c)? {
            sae.fold_latent_scale(&c)?;
        }
    }
    if let Some(s) = input_scale {
        sae.fold_input_scale(s)?;
    }
    if cfg.rescale_acts_by_decoder_norm {
        sae.fold_decoder_norm()?;
    }
    Ok(sae)
}

/// The activation function the architecture names, with its threshold tensor if any.
fn activation(cfg: &Config, cfg_path: &Path, file: &mut TensorFile) -> Result<Activation> {
    let unsupported = |what: &str| Error::Unsupported(format!("{}: {what}", cfg_path.display()));
    let has_threshold = file.has("threshold") || file.has("log_threshold");
    Ok(match cfg.architecture.as_str() {
        "standard" => Activation::Relu,
        // BatchTopK SAEs are exported for inference as JumpReLU with one global threshold.
        "jumprelu" | "batchtopk" | "matryoshka_batchtopk" if has_threshold => {
            let threshold = match file.vector_opt(&["threshold"], cfg.d_sae)? {
                Some(t) => t,
                None => file.vector(&["log_threshold"], cfg.d_sae)?.exp()?,
            };
            Activation::JumpRelu { threshold }
        }
        "topk" | "batchtopk" | "matryoshka_batchtopk" => Activation::TopK {
            k: cfg
                .k
                .ok_or_else(|| Error::missing(cfg_path, "field `k` for a topk SAE"))?,
        },
        "jumprelu" => {
            return Err(Error::missing(
                file.path(),
                "tensor `threshold` (or `log_threshold`)",
            ))
        }
        "gated" => {
            return Err(unsupported(
                "gated SAEs (b_gate, b_mag, r_mag) are not supported; convert to JumpReLU first",
            ))
        }
        other => {
            return Err(unsupported(&format!(
                "architecture `{other}` is not supported"
            )))
        }
    })
}

/// The runtime normalisation and a constant input scale to fold, if known.
fn normalization(
    cfg: &Config,
    dir: &Path,
    meta: &mut SaeMeta,
) -> Result<(Normalization, Option<f64>)> {
    Ok(match cfg.normalize.as_str() {
        "none" => (Normalization::None, None),
        "constant_norm_rescale" => (Normalization::ConstantNormRescale, None),
        "layer_norm" => (Normalization::LayerNorm, None),
        "expected_average_only_in" => match cfg.input_scale.or(activation_scaler(dir)?) {
            Some(s) => (Normalization::None, Some(s)),
            None => {
                meta.warnings.push(
                    "normalize_activations is expected_average_only_in but no scaling factor is \
                     recorded; inputs are used unscaled (as SAELens does when loading from disk)"
                        .into(),
                );
                (Normalization::None, None)
            }
        },
        other => {
            return Err(Error::Unsupported(format!(
                "{}: normalize_activations `{other}` is not supported",
                dir.join("cfg.json").display()
            )))
        }
    })
}

/// Reads `cfg.json`, mapping legacy configs onto v6 names.
fn parse_config(path: &Path) -> Result<Config> {
    let value = read_json(path)?;
    let top = Json {
        path,
        value: &value,
    };
    let empty = Value::Object(Default::default());
    let metadata = Json {
        path,
        value: value.get("metadata").unwrap_or(&empty),
    };
    let version = top
        .str_opt(&["sae_lens_version"])?
        .or(metadata.str_opt(&["sae_lens_version"])?);
    let legacy = version
        .and_then(major_version)
        .is_none_or(|major| major < 6);

    let text = |j: &Json, keys: &[&str]| -> Result<Option<String>> {
        Ok(j.str_opt(keys)?.map(str::to_string))
    };
    let hook_name = match text(&metadata, &["hook_name"])? {
        Some(h) => Some(h),
        None => text(&top, &["hook_name", "hook_point"])?,
    };
    let head_index = metadata
        .get(&["hook_head_index"])
        .or(top.get(&["hook_head_index", "hook_point_head_index"]));
    if let Some((_, v)) = head_index {
        return Err(Error::Unsupported(format!(
            "{}: SAEs on a single attention head (hook_head_index {v}) are not supported",
            path.display()
        )));
    }

    let activation_fn = text(&top, &["activation_fn", "activation_fn_str"])?;
    let kwargs_k = value
        .get("activation_fn_kwargs")
        .and_then(|kw| kw.get("k"))
        .and_then(Value::as_u64)
        .map(|k| k as usize);
    let mut architecture = text(&top, &["architecture"])?.unwrap_or_else(|| "standard".into());
    let mut k = top.usize_opt(&["k"])?;
    if legacy {
        if activation_fn.as_deref() == Some("topk") && kwargs_k.is_some() {
            architecture = "topk".into();
            k = kwargs_k;
        }
        if architecture == "standard" {
            if let Some(f) = activation_fn.as_deref().filter(|f| *f != "relu") {
                return Err(Error::Unsupported(format!(
                    "{}: activation_fn `{f}` is not supported",
                    path.display()
                )));
            }
        }
    }
    if architecture == "topk" && k.is_none() {
        k = kwargs_k;
    }
    let normalize = match value.get("normalize_activations") {
        None | Some(Value::Null) => "none".to_string(),
        Some(Value::Bool(b)) => if *b {
            "expected_average_only_in"
        } else {
            "none"
        }
        .to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(Error::format(
                path,
                "normalize_activations",
                "a string or boolean",
                v.to_string(),
            ))
        }
    };
    let input_scale = top.f64_opt(&["norm_scaling_factor", "activation_normalization_factor"])?;
    Ok(Config {
        d_in: top.usize(&["d_in"])?,
        d_sae: top.usize(&["d_sae"])?,
        architecture,
        apply_b_dec_to_input: top.bool_or(&["apply_b_dec_to_input"], true)?,
        normalize,
        k,
        rescale_acts_by_decoder_norm: top.bool_or(&["rescale_acts_by_decoder_norm"], false)?,
        hook_name,
        model_name: match text(&metadata, &["model_name"])? {
            Some(m) => Some(m),
            None => text(&top, &["model_name"])?,
        },
        dataset: match text(&metadata, &["dataset_path"])? {
            Some(d) => Some(d),
            None => text(&top, &["dataset_path"])?,
        },
        input_scale,
    })
}

/// The major version of a version string like `6.3.1` or `6.0.0-rc.0`.
fn major_version(v: &str) -> Option<u64> {
    let digits: String = v
        .trim_start_matches('v')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The constant scale recorded by SAELens training in `activation_scaler.json`, if any.
fn activation_scaler(dir: &Path) -> Result<Option<f64>> {
    let path = dir.join("activation_scaler.json");
    if !path.is_file() {
        return Ok(None);
    }
    let value = read_json(&path)?;
    Json {
        path: &path,
        value: &value,
    }
    .f64_opt(&["scaling_factor"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_major_versions() {
        assert_eq!(major_version("6.0.0-rc.0"), Some(6));
        assert_eq!(major_version("5.11.0"), Some(5));
        assert_eq!(major_version("v10.1"), Some(10));
        assert_eq!(major_version("dev"), None);
    }
}
