//! Gemma Scope (`params.npz`) and Gemma Scope 2 (`params.safetensors`) JumpReLU SAEs.
//!
//! Members `W_enc` `(d_model, d_sae)`, `W_dec` `(d_sae, d_model)`, `b_enc`, `b_dec`, `threshold`,
//! matched case-insensitively (Gemma Scope 2 writes `w_enc`, `w_dec`). No `b_dec` subtraction, no
//! normalisation. The files record no hook point; it is inferred from the release's folder layout
//! when that is unambiguous, else left unset for the caller ([`Sae::with_hook`]).

use std::path::Path;

use super::tensors::{read_json, Json};
use super::TensorFile;
use crate::model::{HookPoint, Site};
use crate::sae::{
    Activation, ModelIdentity, Normalization, Sae, SaeFormat, SaeMeta, SaeParts, SaeSource,
};
use crate::{Error, Result};

/// Reads a Gemma Scope `params.npz` or Gemma Scope 2 `params.safetensors`.
pub(super) fn load(path: &Path, format: SaeFormat) -> Result<Sae> {
    let mut file = match format {
        SaeFormat::GemmaScopeNpz => TensorFile::read_npz(path)?,
        _ => TensorFile::read_safetensors(path)?,
    };
    for transcoder_key in ["affine_skip_connection", "W_skip"] {
        if file.has(transcoder_key) {
            return Err(Error::Unsupported(format!(
                "{}: `{transcoder_key}` marks a skip transcoder, not an SAE",
                path.display()
            )));
        }
    }
    let d_in = file
        .len_1d("b_dec")
        .ok_or_else(|| Error::missing(path, "1-D tensor `b_dec` (gives d_model)"))?;
    let d_sae = file
        .len_1d("b_enc")
        .ok_or_else(|| Error::missing(path, "1-D tensor `b_enc` (gives d_sae)"))?;
    let w_enc = file.matrix(&["W_enc"], d_in, d_sae)?;
    let w_dec = file.matrix(&["W_dec"], d_sae, d_in)?;
    let b_enc = file.vector(&["b_enc"], d_sae)?;
    let b_dec = file.vector(&["b_dec"], d_in)?;
    let threshold = file.vector(&["threshold"], d_sae)?;

    let mut meta = SaeMeta {
        source: Some(SaeSource {
            format,
            path: path.to_path_buf(),
        }),
        ..SaeMeta::default()
    };
    let mut hook = hook_from_path(path);
    // Gemma Scope 2 folders may hold a config.json describing the SAE.
    let config_path = path.with_file_name("config.json");
    if format == SaeFormat::GemmaScopeSafetensors && config_path.is_file() {
        let value = read_json(&config_path)?;
        let cfg = Json {
            path: &config_path,
            value: &value,
        };
        if let Some(arch) = cfg.str_opt(&["architecture"])? {
            if arch != "jump_relu" && arch != "jumprelu" {
                return Err(Error::Unsupported(format!(
                    "{}: architecture `{arch}` (only jump_relu SAEs are supported)",
                    config_path.display()
                )));
            }
        }
        if let Some(name) = cfg.str_opt(&["model_name"])? {
            meta.model = Some(ModelIdentity {
                name: name.to_string(),
                sha256: None,
            });
        }
        if let Some(h) = cfg.str_opt(&["hf_hook_point_in"])? {
            meta.hook_name = Some(h.to_string());
            let bare = h.strip_suffix(".output").unwrap_or(h);
            if let Ok(p) = bare.parse::<HookPoint>() {
                hook = hook.or(Some(p));
            }
        }
    }
    Sae::from_parts(SaeParts {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        activation: Activation::JumpRelu { threshold },
        apply_b_dec_to_input: false,
        normalization: Normalization::None,
        hook,
        meta,
    })
}

/// Infers the hook point from a Gemma Scope path.
///
/// * Gemma Scope: `…-res…/layer_{L}/width_*/average_l0_*/params.npz` → `blocks.L.hook_resid_post`
///   (`-mlp` releases → `hook_mlp_out`); the release name must appear in the path.
/// * Gemma Scope 2: `…/resid_post*/layer_{L}_width_*/params.safetensors` → resid_post
///   (`mlp_out*` → `hook_mlp_out`).
///
/// Anything else (attention SAEs, transcoders, a bare copied folder) gives `None`.
pub(crate) fn hook_from_path(path: &Path) -> Option<HookPoint> {
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    let layer_of = |s: &str| -> Option<usize> {
        let rest = s.strip_prefix("layer_")?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let tail = &rest[digits.len()..];
        (tail.is_empty() || tail.starts_with("_width_"))
            .then(|| digits.parse().ok())
            .flatten()
    };
    for (i, part) in parts.iter().enumerate() {
        let Some(layer) = layer_of(part) else {
            continue;
        };
        let ancestors = &parts[..i];
        let site = if part.contains("_width_") {
            // Gemma Scope 2: the site is the parent folder's prefix.
            let parent = ancestors.last()?;
            if parent.starts_with("resid_post") {
                Site::ResidPost
            } else if parent.starts_with("mlp_out") {
                Site::MlpOut
            } else {
                return None;
            }
        } else {
            // Gemma Scope: layer_L/width_*/average_l0_* inside a `-res` or `-mlp` release.
            let width = parts.get(i + 1)?;
            let l0 = parts.get(i + 2)?;
            if !width.starts_with("width_") || !l0.starts_with("average_l0_") {
                return None;
            }
            let release = |tag: &str| {
                ancestors
                    .iter()
                    .any(|a| a.ends_with(tag) || a.contains(&format!("{tag}-")))
            };
            match (release("-res"), release("-mlp")) {
                (true, false) => Site::ResidPost,
                (false, true) => Site::MlpOut,
                _ => return None,
            }
        };
        return Some(HookPoint { layer, site });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(p: &str) -> Option<HookPoint> {
        hook_from_path(Path::new(p))
    }

    #[test]
    fn infers_hooks_from_release_layouts() {
        let res = "/hf/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71/params.npz";
        assert_eq!(hook(res), Some(HookPoint::resid_post(3)));
        let cache = "/c/models--google--gemma-scope-9b-pt-res/snapshots/ab/\
                     layer_20/width_131k/average_l0_62/params.npz";
        assert_eq!(hook(cache), Some(HookPoint::resid_post(20)));
        let mlp = "/x/gemma-scope-2b-pt-mlp/layer_5/width_16k/average_l0_40/params.npz";
        assert_eq!(hook(mlp).map(|h| h.site), Some(Site::MlpOut));
        assert_eq!(
            hook("/x/gemma-scope-2b-pt-att/layer_5/width_16k/average_l0_40/params.npz"),
            None
        );
        assert_eq!(
            hook("/tmp/layer_5/width_16k/average_l0_40/params.npz"),
            None
        );
        let gs2 =
            "/g/gemma-scope-2-1b-pt/resid_post_all/layer_12_width_16k_l0_small/params.safetensors";
        assert_eq!(hook(gs2), Some(HookPoint::resid_post(12)));
        let gs2_attn =
            "/g/gemma-scope-2-1b-pt/attn_out_all/layer_12_width_16k_l0_small/params.safetensors";
        assert_eq!(hook(gs2_attn), None);
    }
}
