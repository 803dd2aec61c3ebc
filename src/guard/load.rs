//! Loading a guardrail for a model: the file, its SAE, and the checks that refuse to apply it to
//! anything but the model and SAE it was fitted on.
//!
//! **Where the SAE is.** A guardrail file names its SAE in `sae.name`, written by `dsg fit` as a
//! path relative to the guardrail file's folder, so a guardrail and its SAE can be moved or
//! installed together. Files written before that named the SAE relative to the directory `dsg fit`
//! ran in; when the path does not resolve beside the guardrail file but does from the current
//! directory, that is used instead. An explicit SAE path (`--guard-sae`) overrides both.

use std::path::{Component, Path, PathBuf};

use candle_core::Device;

use super::file::ArtifactIdentity;
use super::hook::{artifact_sha256, listing_sha256};
use super::{Guardrail, GuardrailFile};
use crate::model::{HookPoint, LoadedModel};
use crate::sae::Sae;
use crate::{Error, Result};

/// Loads the SAE at `path` (any supported format) with its hook point settled: the one the file
/// names, else `hook`; an error when neither names one, or when both do and they differ.
pub fn load_sae(path: &Path, hook: Option<HookPoint>) -> Result<Sae> {
    let sae = Sae::load(path, &Device::Cpu)?;
    match (hook, sae.hook()) {
        (Some(h), Some(own)) if h != own => Err(Error::Mismatch(format!(
            "{}: the SAE reads {own}, but {h} was asked for",
            path.display()
        ))),
        (Some(h), None) => Ok(sae.with_hook(h)),
        (_, Some(_)) => Ok(sae),
        (None, None) => Err(Error::missing(
            path,
            "hook point (the SAE names none; pass --hook, e.g. blocks.3.hook_resid_post)",
        )),
    }
}

impl ArtifactIdentity {
    /// The identity of the model or SAE at `path`, named by `name` ([`artifact_sha256`] digest).
    pub fn of(path: &Path, name: impl Into<String>) -> Result<Self> {
        Ok(ArtifactIdentity {
            name: name.into(),
            sha256: artifact_sha256(path)?,
        })
    }

    /// The identity of a loaded model: its file's digest, or, when fine-tuned weights or adapters
    /// were applied, the digest of the base's and theirs in order.
    pub fn of_model(lm: &LoadedModel) -> Result<Self> {
        let base = artifact_sha256(&lm.path)?;
        let sha256 = if lm.modifications.is_empty() {
            base
        } else {
            let mut parts = vec![("0 base".to_string(), base)];
            for (i, m) in lm.modifications.iter().enumerate() {
                parts.push((format!("{} modification", i + 1), artifact_sha256(m)?));
            }
            listing_sha256(parts)
        };
        Ok(ArtifactIdentity {
            name: lm.name(),
            sha256,
        })
    }
}

/// The SAE path recorded in the guardrail file at `guard_path`: resolved against the file's
/// folder, else (files written before paths were relative to the guardrail) against the current
/// directory, else the folder-relative path, for an error that names it.
pub fn resolve_sae_path(guard_path: &Path, file: &GuardrailFile) -> PathBuf {
    let recorded = Path::new(&file.sae.name);
    let folder = guard_path.parent().unwrap_or(Path::new(""));
    let beside = folder.join(recorded);
    if beside.exists() || !recorded.exists() {
        beside
    } else {
        recorded.to_path_buf()
    }
}

/// `target` written relative to the folder `base` (both made absolute against the current
/// directory first); `target` itself, absolute, when they share no root.
pub fn relative_path(target: &Path, base: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    let absolute = |p: &Path| normalised(&cwd.join(p));
    let (target, base) = (absolute(target), absolute(base));
    let (t, b): (Vec<_>, Vec<_>) = (target.components().collect(), base.components().collect());
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return target;
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// `p` with `.` dropped and `..` applied lexically (no symlinks are followed).
fn normalised(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Guardrail {
    /// Loads the guardrail file at `path` for `lm`, with its SAE from `sae_override` or from the
    /// path the file records ([`resolve_sae_path`]); refuses (fail closed) a guardrail fitted on
    /// another model or SAE (sha256), or whose SAE has another width, `d_in` or hook point.
    pub fn load(path: &Path, lm: &LoadedModel, sae_override: Option<&Path>) -> Result<Guardrail> {
        let file = GuardrailFile::load(path)?;
        let sae_path = sae_override
            .map(Path::to_path_buf)
            .unwrap_or_else(|| resolve_sae_path(path, &file));
        if !sae_path.exists() {
            return Err(Error::missing(
                &sae_path,
                format!(
                    "SAE of guardrail {} (recorded as {:?}; pass --guard-sae PATH)",
                    path.display(),
                    file.sae.name
                ),
            ));
        }
        // An SAE that names its own hook keeps it, so one that reads elsewhere is refused below.
        let sae = Sae::load(&sae_path, &Device::Cpu)?;
        let sae = match sae.hook() {
            Some(_) => sae,
            None => sae.with_hook(file.hook_point),
        };
        let sae_sha = artifact_sha256(&sae_path)?;
        let model_sha = ArtifactIdentity::of_model(lm)?.sha256;
        Guardrail::new(file, &sae, &model_sha, &sae_sha, lm.model.config().d_model).map_err(|e| {
            match e {
                Error::Mismatch(m) => Error::Mismatch(format!("guardrail {}: {m}", path.display())),
                other => other,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_walk_up_to_the_common_folder() {
        assert_eq!(
            relative_path(Path::new("/a/sae/x"), Path::new("/a/guards")),
            PathBuf::from("../sae/x")
        );
        assert_eq!(
            relative_path(Path::new("/a/b/./c"), Path::new("/a/b")),
            PathBuf::from("c")
        );
        assert_eq!(
            relative_path(Path::new("/a/x/../y"), Path::new("/a/z/w")),
            PathBuf::from("../../y")
        );
    }
}
