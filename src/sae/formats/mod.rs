//! Readers for the common SAE file formats, and format detection.
//!
//! | format | layout |
//! |---|---|
//! | Gemma Scope | `…/layer_{L}/width_*/average_l0_*/params.npz` |
//! | Gemma Scope 2 | `…/resid_post*/layer_{L}_width_*/params.safetensors` (+ `config.json`) |
//! | SAELens | a directory with `cfg.json` + `sae_weights.safetensors` |
//! | sparsify | a directory (named after the hookpoint) with `cfg.json` + `sae.safetensors` |
//! | dsg | a directory with `sae.json` + `sae.safetensors`, or `X.safetensors` + `X.json` |
//! | Qwen-Scope | `…/SAE-Res-*-L0_{k}/layer{n}.sae.pt` (a `torch.save` dict, read without Python) |
//!
//! Every reader converts weights to f32 on the CPU, checks shapes against the dimensions the file
//! declares (orienting a matrix by its shape, never by a fixed transpose) and refuses NaN or
//! infinite values, naming the file and tensor at fault; the result is then moved to the device.

pub mod dsg;
mod gemma_scope;
mod pickle;
mod qwen_scope;
mod saelens;
mod sparsify;
mod tensors;
mod torch_pt;

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{Sae, SaeFormat};
use crate::{Error, Result};

pub(crate) use tensors::TensorFile;

/// Detects the format of the SAE at `path`, a file or a directory.
pub fn detect_format(path: &Path) -> Result<SaeFormat> {
    Ok(resolve(path)?.0)
}

/// The format and the path its reader expects (the directory for directory formats).
fn resolve(path: &Path) -> Result<(SaeFormat, PathBuf)> {
    if path.is_dir() {
        return detect_dir(path).ok_or_else(|| {
            Error::missing(
                path,
                "an SAE: expected sae.json (dsg), cfg.json + sae_weights.safetensors (SAELens), \
                 cfg.json + sae.safetensors (sparsify), params.npz or params.safetensors \
                 (Gemma Scope), or one layer{n}.sae.pt (Qwen-Scope)",
            )
        });
    }
    if !path.exists() {
        let named = super::registry::resolve_sae_path(path)?;
        if named.exists() {
            return resolve(&named);
        }
        return Err(Error::missing(
            path,
            "SAE file or directory (nor an SAE name such as \
             gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71)",
        ));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let dir = path.parent().unwrap_or(Path::new("."));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    // A file that belongs to a directory format stands for its directory.
    if matches!(
        name,
        "cfg.json" | "sae_weights.safetensors" | "sae.safetensors" | "sae.json"
    ) {
        if let Some(found) = detect_dir(dir) {
            return Ok(found);
        }
    }
    match ext {
        "pt" if name.ends_with(".sae.pt") => Ok((SaeFormat::QwenScope, path.to_path_buf())),
        "npz" => Ok((SaeFormat::GemmaScopeNpz, path.to_path_buf())),
        "json" if dsg::is_dsg_json(path) => Ok((SaeFormat::Dsg, path.to_path_buf())),
        "safetensors" if dsg::is_dsg_json(&path.with_extension("json")) => {
            Ok((SaeFormat::Dsg, path.to_path_buf()))
        }
        "safetensors" => Ok((SaeFormat::GemmaScopeSafetensors, path.to_path_buf())),
        _ => Err(Error::format(
            path,
            "file type",
            "an SAE directory, .npz, .safetensors, .sae.pt or dsg .json",
            format!("{name:?}"),
        )),
    }
}

/// The format of an SAE directory, by the files it holds.
fn detect_dir(dir: &Path) -> Option<(SaeFormat, PathBuf)> {
    let has = |f: &str| dir.join(f).is_file();
    let format = if has("sae.json") {
        SaeFormat::Dsg
    } else if has("cfg.json") && has("sae_weights.safetensors") {
        SaeFormat::SaeLens
    } else if has("cfg.json") && has("sae.safetensors") {
        SaeFormat::Sparsify
    } else if has("params.npz") {
        return Some((SaeFormat::GemmaScopeNpz, dir.join("params.npz")));
    } else if has("params.safetensors") {
        return Some((
            SaeFormat::GemmaScopeSafetensors,
            dir.join("params.safetensors"),
        ));
    } else if let Some(pt) = single_sae_pt(dir) {
        return Some((SaeFormat::QwenScope, pt));
    } else {
        return None;
    };
    Some((format, dir.to_path_buf()))
}

/// The one `*.sae.pt` file in `dir`, if there is exactly one (a Qwen-Scope repository holds one
/// per layer, so its folder names no single SAE).
fn single_sae_pt(dir: &Path) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dir).ok()?.filter_map(|e| {
        let p = e.ok()?.path();
        let name = p.file_name()?.to_str()?;
        name.ends_with(".sae.pt").then_some(p)
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Loads an SAE, detecting its format.
pub(crate) fn load(path: &Path, device: &Device) -> Result<Sae> {
    let (format, path) = resolve(path)?;
    load_resolved(&path, format, device)
}

/// Loads an SAE in a given format; `path` may be the directory or one of its files.
pub(crate) fn load_as(path: &Path, format: SaeFormat, device: &Device) -> Result<Sae> {
    let path = &super::registry::resolve_sae_path(path)?;
    let dir_format = matches!(format, SaeFormat::SaeLens | SaeFormat::Sparsify);
    let path = if dir_format && path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else if !dir_format && path.is_dir() {
        match detect_dir(path) {
            Some((_, p)) => p,
            None => path.to_path_buf(),
        }
    } else {
        path.to_path_buf()
    };
    load_resolved(&path, format, device)
}

/// A range error from building the SAE, with the file it was read from in the field name (the
/// format readers' own errors already name their file).
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::OutOfRange {
            field,
            value,
            allowed,
        } => Error::OutOfRange {
            field: format!("{}: {field}", path.display()),
            value,
            allowed,
        },
        other => other,
    }
}

fn load_resolved(path: &Path, format: SaeFormat, device: &Device) -> Result<Sae> {
    let sae = match format {
        SaeFormat::GemmaScopeNpz | SaeFormat::GemmaScopeSafetensors => {
            gemma_scope::load(path, format)
        }
        SaeFormat::SaeLens => saelens::load(path),
        SaeFormat::Sparsify => sparsify::load(path),
        SaeFormat::Dsg => dsg::load(path),
        SaeFormat::QwenScope => qwen_scope::load(path),
    }
    .map_err(|e| in_file(path, e))?;
    let sae = sae.with_origin(path.to_path_buf());
    if device.is_cpu() {
        Ok(sae)
    } else {
        sae.to_device(device)
    }
}
