//! EleutherAI sparsify directories: `cfg.json` + `sae.safetensors`, one per hookpoint.
//!
//! Tensors: `encoder.weight` `(num_latents, d_in)` (nn.Linear layout), `encoder.bias`, `W_dec`
//! `(num_latents, d_in)`, `b_dec` `(d_in,)`, optionally `W_skip`. Encoding subtracts `b_dec`,
//! applies the linear map and ReLU, then keeps the top `k` (or the maximum of each of `k` groups
//! for `groupmax`). Sparsify's ReLU-then-top-k equals top-k-then-ReLU as a dense vector, so this
//! maps onto [`Activation::TopK`]. `b_dec` is always subtracted (sparsify does so for every SAE
//! that is not a transcoder; SAELens's converter instead ties it to `normalize_decoder`, which is
//! not what sparsify computes). The folder name (`layers.{L}`) gives the hook point; a
//! `config.json` one level up may name the model and data set.

use std::path::Path;

use super::tensors::{all_zeros, read_json, Json};
use super::TensorFile;
use crate::model::HookPoint;
use crate::sae::{
    Activation, ModelIdentity, Normalization, Sae, SaeFormat, SaeMeta, SaeParts, SaeSource,
};
use crate::{Error, Result};

/// Reads a sparsify hookpoint directory.
pub(super) fn load(dir: &Path) -> Result<Sae> {
    let cfg_path = dir.join("cfg.json");
    let weights_path = dir.join("sae.safetensors");
    let value = read_json(&cfg_path)?;
    let cfg = Json {
        path: &cfg_path,
        value: &value,
    };
    let unsupported = |what: &str| Error::Unsupported(format!("{}: {what}", cfg_path.display()));
    if cfg.bool_or(&["transcode"], false)? {
        return Err(unsupported(
            "transcoders predict another site's output and cannot be used as SAEs",
        ));
    }

    let mut file = TensorFile::read_safetensors(&weights_path)?;
    let d_in = match cfg.usize_opt(&["d_in"])? {
        Some(d) => d,
        None => file.len_1d("b_dec").ok_or_else(|| {
            Error::missing(&cfg_path, "field `d_in` (and no 1-D `b_dec` to infer it)")
        })?,
    };
    let d_sae = match cfg.usize_opt(&["num_latents"])? {
        Some(n) if n > 0 => n,
        _ => d_in * cfg.usize_opt(&["expansion_factor"])?.unwrap_or(32),
    };
    let k = cfg.usize_opt(&["k"])?.unwrap_or(32);
    let activation = match cfg.str_opt(&["activation"])?.unwrap_or("topk") {
        "topk" => Activation::TopK { k },
        "groupmax" => Activation::GroupMax { groups: k },
        other => {
            return Err(unsupported(&format!(
                "activation `{other}` is not supported"
            )))
        }
    };

    // `encoder.weight` is (d_sae, d_in); `matrix` orients by shape, so ask for W_enc's layout.
    let w_enc = file.matrix(&["encoder.weight", "W_enc"], d_in, d_sae)?;
    let b_enc = file.vector(&["encoder.bias", "b_enc"], d_sae)?;
    let w_dec = file.matrix(&["W_dec", "decoder.weight"], d_sae, d_in)?;
    let b_dec = file.vector(&["b_dec", "decoder.bias"], d_in)?;
    if let Some((name, skip)) = file.take_opt(&["W_skip"]) {
        let skip = super::tensors::checked_f32(file.path(), &name, &skip)?;
        if !all_zeros(&skip)? {
            return Err(Error::Unsupported(format!(
                "{}: a non-zero skip connection `W_skip` is not supported",
                weights_path.display()
            )));
        }
    }

    let folder = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut meta = SaeMeta {
        hook_name: (!folder.is_empty()).then(|| folder.to_string()),
        source: Some(SaeSource {
            format: SaeFormat::Sparsify,
            path: dir.to_path_buf(),
        }),
        ..SaeMeta::default()
    };
    let run_config = dir.parent().map(|p| p.join("config.json"));
    if let Some(run_path) = run_config.filter(|p| p.is_file()) {
        let run = read_json(&run_path)?;
        let run = Json {
            path: &run_path,
            value: &run,
        };
        // Tolerate unexpected field types here: this file describes training, not the SAE.
        if let Ok(Some(model)) = run.str_opt(&["model"]) {
            meta.model = Some(ModelIdentity {
                name: model.to_string(),
                sha256: None,
            });
        }
        if let Ok(Some(data)) = run.str_opt(&["dataset"]) {
            meta.training_data = Some(data.to_string());
        }
    }

    Sae::from_parts(SaeParts {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        activation,
        apply_b_dec_to_input: true,
        normalization: Normalization::None,
        hook: folder.parse::<HookPoint>().ok(),
        meta,
    })
}
