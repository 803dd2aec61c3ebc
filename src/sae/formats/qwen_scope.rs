//! Qwen-Scope TopK SAEs: `layer{n}.sae.pt` in repositories `Qwen/SAE-Res-{model}-W{width}-L0_{k}`.
//!
//! Each file is a `torch.save` dict (read by [`super::torch_pt`], which runs nothing) holding
//! `W_enc` `(d_sae, d_model)` and `W_dec` `(d_model, d_sae)` — both transposed relative to
//! SAELens, and oriented here by their shapes against `d_model` = `len(b_dec)` and
//! `d_sae` = `len(b_enc)` — plus `b_enc` and `b_dec`. The documented encode is
//! `pre = x·W_encᵀ + b_enc`, keep the top `k` of `pre` as they are (no ReLU, no `b_dec`
//! subtraction), and decode `f·W_decᵀ + b_dec`: [`Activation::TopKSigned`].
//!
//! The file records neither `k` nor the hook point. `k` comes from an int entry `k` (or `top_k`)
//! in the dict, else a `config.json`/`cfg.json` beside it, else the repository's folder name
//! (`…-L0_{k}`, also inside a Hugging Face cache path); the hook point from a string entry
//! `hook_name`, else the file name `layer{n}` → `blocks.{n}.hook_resid_post` (the residual stream
//! after decoder layer n, where the SAEs were trained).

use std::path::Path;

use super::pickle::Value;
use super::tensors::{read_json, Json};
use super::TensorFile;
use crate::model::HookPoint;
use crate::sae::{
    Activation, ModelIdentity, Normalization, Sae, SaeFormat, SaeMeta, SaeParts, SaeSource,
};
use crate::{Error, Result};

/// Reads a Qwen-Scope `layer{n}.sae.pt`.
pub(super) fn load(path: &Path) -> Result<Sae> {
    let (mut file, scalars) = TensorFile::read_torch(path)?;
    let d_in = file
        .len_1d("b_dec")
        .ok_or_else(|| Error::missing(path, "1-D tensor `b_dec` (gives d_model)"))?;
    let d_sae = file
        .len_1d("b_enc")
        .ok_or_else(|| Error::missing(path, "1-D tensor `b_enc` (gives d_sae)"))?;
    // Orientation is by shape; a square matrix cannot say, so it is read as documented.
    let documented = |t: candle_core::Tensor| -> Result<candle_core::Tensor> {
        Ok(if d_in == d_sae {
            t.t()?.contiguous()?
        } else {
            t
        })
    };
    let w_enc = documented(file.matrix(&["W_enc"], d_in, d_sae)?)?;
    let w_dec = documented(file.matrix(&["W_dec"], d_sae, d_in)?)?;
    let b_enc = file.vector(&["b_enc"], d_sae)?;
    let b_dec = file.vector(&["b_dec"], d_in)?;

    let k = find_k(path, &scalars)?;
    let hook_name = match scalars.get("hook_name") {
        Some(Value::Str(h)) => Some(h.clone()),
        _ => layer_of(path).map(|n| HookPoint::resid_post(n).to_string()),
    };
    let meta = SaeMeta {
        model: repo_of(path)
            .and_then(model_of_repo)
            .map(|name| ModelIdentity { name, sha256: None }),
        hook_name: hook_name.clone(),
        source: Some(SaeSource {
            format: SaeFormat::QwenScope,
            path: path.to_path_buf(),
        }),
        ..SaeMeta::default()
    };
    Sae::from_parts(SaeParts {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        activation: Activation::TopKSigned { k },
        apply_b_dec_to_input: false,
        normalization: Normalization::None,
        hook: hook_name.and_then(|h| h.parse::<HookPoint>().ok()),
        meta,
    })
}

/// `k`: from the checkpoint, a config beside it, or the repository name (see the module docs).
fn find_k(path: &Path, scalars: &std::collections::BTreeMap<String, Value>) -> Result<usize> {
    for key in ["k", "top_k"] {
        match scalars.get(key) {
            Some(Value::Int(k)) if *k > 0 => return Ok(*k as usize),
            Some(v) => return Err(Error::format(path, key, "a positive int", format!("{v:?}"))),
            None => {}
        }
    }
    for name in ["config.json", "cfg.json"] {
        let cfg_path = path.with_file_name(name);
        if cfg_path.is_file() {
            let value = read_json(&cfg_path)?;
            let cfg = Json {
                path: &cfg_path,
                value: &value,
            };
            if let Some(k) = cfg.usize_opt(&["k", "top_k"])? {
                return Ok(k);
            }
        }
    }
    repo_of(path)
        .and_then(|repo| repo.rsplit_once("-L0_")?.1.parse().ok())
        .ok_or_else(|| {
            Error::missing(
                path,
                "the TopK `k` (a Qwen-Scope file does not record it): keep the file in a folder \
                 named like its repository (`SAE-Res-…-L0_{k}`), or put {\"k\": …} in a \
                 config.json beside it",
            )
        })
}

/// The Qwen-Scope repository name in `path`: a folder `SAE-Res-…`, or a Hugging Face cache folder
/// `models--Qwen--SAE-Res-…`.
fn repo_of(path: &Path) -> Option<&str> {
    path.ancestors().skip(1).find_map(|p| {
        let name = p.file_name()?.to_str()?;
        let name = name.strip_prefix("models--Qwen--").unwrap_or(name);
        name.starts_with("SAE-Res-").then_some(name)
    })
}

/// `Qwen/{model}` from `SAE-Res-{model}-W{width}-L0_{k}`.
fn model_of_repo(repo: &str) -> Option<String> {
    let rest = repo.strip_prefix("SAE-Res-")?;
    let (model, _) = rest.rsplit_once("-W")?;
    Some(format!("Qwen/{model}"))
}

/// `n` from a file named `layer{n}.sae.pt`.
fn layer_of(path: &Path) -> Option<usize> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("layer")?
        .strip_suffix(".sae.pt")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_layer_repo_and_model() {
        let p = Path::new(
            "/hub/models--Qwen--SAE-Res-Qwen3-1.7B-Base-W32K-L0_50/snapshots/ab/layer20.sae.pt",
        );
        assert_eq!(layer_of(p), Some(20));
        assert_eq!(repo_of(p), Some("SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"));
        assert_eq!(
            model_of_repo(repo_of(p).unwrap()).as_deref(),
            Some("Qwen/Qwen3-1.7B-Base")
        );
        assert_eq!(layer_of(Path::new("/x/layer_3.sae.pt")), None);
        assert_eq!(repo_of(Path::new("/x/y/layer3.sae.pt")), None);
    }
}
