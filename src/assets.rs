//! The default SAE and the shipped guardrail, built into the library so that an installed `dsg`
//! (`cargo install --path .`) runs `dsg demo` from any directory, with no source tree beside it.
//!
//! They are written on first use into dsg's cache (`$DSG_CACHE`, else `~/.cache/dsg`; see
//! [`crate::model::fetch::cache_dir`]) under `assets/`, in the layout of the repository's
//! `assets/` folder, so that the guardrail finds its SAE at the path it records relative to itself.
//! A file already there is kept only when its sha256 equals the built-in copy's; any other is
//! rewritten. The guardrail records the SAE's digest, and [`crate::guard::Guardrail::load`] checks
//! it against the written folder.

use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::guard::hook::{artifact_sha256, listing_sha256};
use crate::model::fetch::{cache_dir, sha256_file};
use crate::{Error, Result};

/// One built-in file, by its path under `assets/`.
struct Asset {
    rel: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($rel:literal) => {
        Asset {
            rel: $rel,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $rel)),
        }
    };
}

/// The default SAE's folder under `assets/`.
pub const DEFAULT_SAE: &str = "sae/smollm2-135m-instruct-L3";

/// The shipped guardrail under `assets/`.
pub const DEFAULT_GUARD: &str = "guards/wmdp-bio-smollm2-135m-L3.json";

/// Every file of the default SAE's folder (its digest covers them all).
const SAE_FILES: [Asset; 3] = [
    asset!("sae/smollm2-135m-instruct-L3/README.md"),
    asset!("sae/smollm2-135m-instruct-L3/sae.json"),
    asset!("sae/smollm2-135m-instruct-L3/sae.safetensors"),
];

const GUARD_FILE: Asset = asset!("guards/wmdp-bio-smollm2-135m-L3.json");

/// Where the built-in assets are written: `<cache>/assets`.
pub fn assets_dir() -> PathBuf {
    cache_dir().join("assets")
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// Writes `asset` under `root` unless an identical copy is there; through a temporary file and a
/// rename, so a concurrent reader never sees half a file.
fn materialise(root: &Path, asset: &Asset) -> Result<PathBuf> {
    let target = root.join(asset.rel);
    let want = sha256_hex(asset.bytes);
    if target.is_file() && sha256_file(&target)? == want {
        return Ok(target);
    }
    let dir = target.parent().unwrap_or(root);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = target.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&tmp, asset.bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    let got = sha256_file(&target)?;
    if got != want {
        return Err(Error::format(
            &target,
            "file",
            format!("sha256 {want}"),
            format!("sha256 {got}"),
        ));
    }
    Ok(target)
}

/// The default SAE (for SmolLM2-135M-Instruct, layer 3), written into the cache if needed. Errors
/// when the folder's digest is not the built-in one's (other files were put in it).
pub fn default_sae_dir() -> Result<PathBuf> {
    let root = assets_dir();
    for f in &SAE_FILES {
        materialise(&root, f)?;
    }
    let dir = root.join(DEFAULT_SAE);
    let (want, got) = (default_sae_sha256(), artifact_sha256(&dir)?);
    if got != want {
        return Err(Error::format(
            &dir,
            "folder",
            format!("only the built-in SAE's files (digest {want}); remove the others"),
            format!("digest {got}"),
        ));
    }
    Ok(dir)
}

/// The shipped WMDP-bio guardrail, written into the cache with its SAE if needed.
pub fn default_guard_file() -> Result<PathBuf> {
    default_sae_dir()?;
    materialise(&assets_dir(), &GUARD_FILE)
}

/// The digest [`crate::guard::hook::artifact_sha256`] gives the built-in SAE's folder.
pub fn default_sae_sha256() -> String {
    let files = SAE_FILES
        .iter()
        .map(|f| {
            let name = Path::new(f.rel).file_name().unwrap_or_default();
            (name.to_string_lossy().into_owned(), sha256_hex(f.bytes))
        })
        .collect();
    listing_sha256(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_guardrail_records_the_built_in_sae() {
        let file: serde_json::Value = serde_json::from_slice(GUARD_FILE.bytes).unwrap();
        assert_eq!(file["sae"]["sha256"], default_sae_sha256());
        let guard_dir = Path::new(DEFAULT_GUARD).parent().unwrap();
        let recorded = guard_dir.join(file["sae"]["name"].as_str().unwrap());
        assert_eq!(
            crate::guard::load::relative_path(&recorded, Path::new("")),
            Path::new(DEFAULT_SAE)
        );
    }
}
