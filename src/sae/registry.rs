//! SAE names in SAELens's `release/id` form, resolved against a local Hugging Face cache.
//!
//! `gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142` names the SAE the way
//! `SAE.from_pretrained(release, sae_id)` does. A small built-in table, following the conventions
//! of SAELens's `pretrained_saes.yaml`, maps a release to its Hugging Face repository and an id to
//! the file inside it:
//!
//! | release | repository | id → file |
//! |---|---|---|
//! | `gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att}` | `google/` + release | `{id}/params.npz` |
//! | the same + `-canonical` | the same without `-canonical` | `layer_L/width_W/canonical` → the table's `average_l0_N` |
//! | `gemma-scope-2-{size}-{pt,it}-{res,mlp,att}[-all]` | `google/gemma-scope-2-{size}-{pt,it}` | `{resid_post,mlp_out,attn_out}[_all]/{id}/params.safetensors` |
//! | `qwen-scope-{v}-{size}-w{W}-l{k}` | `Qwen/SAE-Res-Qwen{v}-{SIZE}-W{W}-L0_{k}` | `layer{n}` → `layer{n}.sae.pt` |
//! | any `{org}/{repo}` present in the cache (e.g. an EleutherAI sparsify repo) | itself | the rest of the name, e.g. `layers.10` |
//!
//! Nothing is downloaded: the cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`, laid out as `models--{org}--{repo}/snapshots/{rev}/…` with
//! `refs/main` naming the revision (without it, the first snapshot holding the file, by name).
//! Canonical ids resolve only where the table knows their folder (Gemma Scope 2B residual, width
//! 16k); otherwise the error lists the folders the cache holds.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// SAELens's `gemma-scope-2b-pt-res-canonical`: the `average_l0_N` of `layer_L/width_16k/canonical`
/// for L = 0, 1, ….
const GEMMA_2B_RES_16K_CANONICAL_L0: [u32; 26] = [
    105, 102, 141, 59, 124, 68, 70, 69, 71, 73, 77, 80, 82, 84, 84, 78, 78, 77, 74, 73, 71, 70, 72,
    75, 73, 116,
];

/// The last part of a canonical id's path when the table does not know its folder.
const UNKNOWN_CANONICAL: &str = "canonical";

/// Where a name points: a Hugging Face repository and a path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `org/repo`.
    pub repo: String,
    /// The file (or folder) inside the repository.
    pub path: String,
}

/// The Hugging Face hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    cache_dir_from(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
}

fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dir) = env("HF_HUB_CACHE") {
        return dir.into();
    }
    if let Some(home) = env("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = env("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache/huggingface/hub")
}

/// `arg` itself when it exists; else, when it is an SAE name (see the module docs), the cached
/// file it names, from [`hub_cache_dir`]; else `arg` unchanged (for the caller's "missing" error).
pub fn resolve_sae_path(arg: &Path) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    match arg.to_str() {
        Some(name) => Ok(resolve_in(name, &hub_cache_dir())?.unwrap_or_else(|| arg.to_path_buf())),
        None => Ok(arg.to_path_buf()),
    }
}

/// The cached file that SAE name `name` refers to in the hub cache `cache`; `None` when `name`
/// is not a name this table knows (nor a repository present in the cache).
pub fn resolve_in(name: &str, cache: &Path) -> Result<Option<PathBuf>> {
    let name = name.trim_matches('/');
    let Some((release, id)) = name.split_once('/') else {
        return Ok(None);
    };
    if let Some(file) = known(release, id) {
        let file = file?;
        return locate(cache, &file, name).map(Some);
    }
    // `{org}/{repo}/{path}` for a repository the cache holds.
    let Some((repo, path)) = id.split_once('/') else {
        return Ok(None);
    };
    let repo = format!("{release}/{repo}");
    if !cache.join(repo_folder(&repo)).is_dir() {
        return Ok(None);
    }
    let file = HubFile {
        repo,
        path: path.to_string(),
    };
    locate(cache, &file, name).map(Some)
}

/// The file a known release's id names: `None` for an unknown release; an error for a known
/// release whose id has the wrong form.
fn known(release: &str, id: &str) -> Option<Result<HubFile>> {
    let bad_id = |form: &str| {
        Err(Error::Invalid(format!(
            "SAE id `{id}` of release `{release}`: expected the form {form}"
        )))
    };
    if let Some(rest) = release.strip_prefix("gemma-scope-2-") {
        let parts: Vec<&str> = rest.split('-').collect();
        let (size, kind, site, all) = match parts.as_slice() {
            [size, kind, site] => (size, kind, site, false),
            [size, kind, site, "all"] => (size, kind, site, true),
            _ => return None,
        };
        let folder = match *site {
            "res" => "resid_post",
            "mlp" => "mlp_out",
            "att" => "attn_out",
            _ => return None,
        };
        if !matches!(*kind, "pt" | "it") {
            return None;
        }
        if !id.starts_with("layer_") || id.contains('/') {
            return Some(bad_id("layer_{L}_width_{W}_l0_{small|medium|big}"));
        }
        let all = if all { "_all" } else { "" };
        return Some(Ok(HubFile {
            repo: format!("google/gemma-scope-2-{size}-{kind}"),
            path: format!("{folder}{all}/{id}/params.safetensors"),
        }));
    }
    if let Some(rest) = release.strip_prefix("gemma-scope-") {
        let (base, canonical) = match rest.strip_suffix("-canonical") {
            Some(b) => (b, true),
            None => (rest, false),
        };
        let parts: Vec<&str> = base.split('-').collect();
        if !matches!(parts.as_slice(), [_, "pt" | "it", "res" | "mlp" | "att"]) {
            return None;
        }
        let repo = format!("google/gemma-scope-{base}");
        if !canonical {
            return Some(Ok(HubFile {
                repo,
                path: format!("{id}/params.npz"),
            }));
        }
        let bits: Vec<&str> = id.split('/').collect();
        let [layer, width, "canonical"] = bits.as_slice() else {
            return Some(bad_id("layer_{L}/width_{W}/canonical"));
        };
        let l0 = layer
            .strip_prefix("layer_")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|_| base == "2b-pt-res" && *width == "width_16k")
            .and_then(|l| GEMMA_2B_RES_16K_CANONICAL_L0.get(l));
        return Some(match l0 {
            Some(n) => Ok(HubFile {
                repo,
                path: format!("{layer}/{width}/average_l0_{n}/params.npz"),
            }),
            // No such folder exists: `locate` then lists the ones the cache holds.
            None => Ok(HubFile {
                repo,
                path: format!("{layer}/{width}/{UNKNOWN_CANONICAL}"),
            }),
        });
    }
    let rest = release.strip_prefix("qwen-scope-")?;
    let (version, rest) = rest.split_once('-')?;
    let (size, rest) = rest.rsplit_once("-w")?;
    let (width, k) = rest.split_once("-l")?;
    let layer = id
        .strip_prefix("layer")
        .filter(|n| n.parse::<usize>().is_ok());
    let Some(layer) = layer else {
        return Some(bad_id("layer{n}"));
    };
    let size: Vec<String> = size
        .split('-')
        .map(|s| match s {
            "base" => "Base".to_string(),
            s => s.to_uppercase(),
        })
        .collect();
    Some(Ok(HubFile {
        repo: format!(
            "Qwen/SAE-Res-Qwen{version}-{}-W{}-L0_{k}",
            size.join("-"),
            width.to_uppercase()
        ),
        path: format!("layer{layer}.sae.pt"),
    }))
}

/// `models--{org}--{repo}`.
fn repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// The cached copy of `file`, or an error naming the cache and what it holds instead.
fn locate(cache: &Path, file: &HubFile, name: &str) -> Result<PathBuf> {
    let repo_dir = cache.join(repo_folder(&file.repo));
    let download = format!(
        "(download it with `huggingface-cli download {} {}`, or pass a path)",
        file.repo, file.path
    );
    if !repo_dir.is_dir() {
        let present = listing(cache, |n| n.starts_with("models--"));
        return Err(Error::missing(
            cache,
            format!(
                "{} for SAE `{name}` (repository {}) in the Hugging Face cache; it holds {present} \
                 {download}",
                repo_folder(&file.repo),
                file.repo
            ),
        ));
    }
    let snapshots = repo_dir.join("snapshots");
    let main = std::fs::read_to_string(repo_dir.join("refs/main")).ok();
    let revisions: Vec<String> = match main.as_deref().map(str::trim) {
        Some(rev) if !rev.is_empty() => vec![rev.to_string()],
        _ => sorted_names(&snapshots),
    };
    for rev in &revisions {
        let p = snapshots.join(rev).join(&file.path);
        if p.exists() {
            return Ok(p);
        }
    }
    // Say what the nearest existing folder holds.
    let mut near = match revisions.first() {
        Some(rev) => snapshots.join(rev),
        None => snapshots.clone(),
    };
    for part in Path::new(&file.path).components() {
        let next = near.join(part);
        if !next.is_dir() {
            break;
        }
        near = next;
    }
    let what = match file.path.strip_suffix(UNKNOWN_CANONICAL) {
        Some(folder) => format!(
            "the canonical SAE of {folder} for `{name}`: dsg's table does not know which \
             average_l0_N folder is canonical here (it knows gemma-scope-2b-pt-res-canonical \
             width_16k), so name one"
        ),
        None => format!("{} for SAE `{name}`", file.path),
    };
    Err(Error::missing(
        &near,
        format!(
            "{what} (revision {}); this folder holds {} {download}",
            revisions.first().map(String::as_str).unwrap_or("none"),
            listing(&near, |_| true)
        ),
    ))
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Up to 20 entries of `dir` passing `keep`, as `[a, b, …]`.
fn listing(dir: &Path, keep: impl Fn(&str) -> bool) -> String {
    let names: Vec<String> = sorted_names(dir).into_iter().filter(|n| keep(n)).collect();
    match names.len() {
        0 => "nothing".to_string(),
        n if n > 20 => format!("{:?} and {} more", &names[..20], n - 20),
        _ => format!("{names:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(release: &str, id: &str) -> HubFile {
        known(release, id).unwrap().unwrap()
    }

    #[test]
    fn table_maps_releases_to_repositories_and_paths() {
        let f = file("gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_142");
        assert_eq!(f.repo, "google/gemma-scope-2b-pt-res");
        assert_eq!(f.path, "layer_3/width_16k/average_l0_142/params.npz");
        let f = file(
            "gemma-scope-2b-pt-res-canonical",
            "layer_3/width_16k/canonical",
        );
        assert_eq!(f.path, "layer_3/width_16k/average_l0_59/params.npz");
        let f = file(
            "gemma-scope-9b-pt-res-canonical",
            "layer_3/width_16k/canonical",
        );
        assert_eq!(f.repo, "google/gemma-scope-9b-pt-res");
        assert_eq!(f.path, "layer_3/width_16k/canonical");
        let f = file("gemma-scope-2-1b-it-res", "layer_13_width_16k_l0_medium");
        assert_eq!(f.repo, "google/gemma-scope-2-1b-it");
        assert_eq!(
            f.path,
            "resid_post/layer_13_width_16k_l0_medium/params.safetensors"
        );
        let f = file(
            "gemma-scope-2-270m-pt-res-all",
            "layer_10_width_16k_l0_small",
        );
        assert_eq!(
            f.path,
            "resid_post_all/layer_10_width_16k_l0_small/params.safetensors"
        );
        let f = file("qwen-scope-3-1.7b-base-w32k-l50", "layer20");
        assert_eq!(f.repo, "Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50");
        assert_eq!(f.path, "layer20.sae.pt");
        let f = file("qwen-scope-3.5-35b-a3b-base-w128k-l100", "layer0");
        assert_eq!(f.repo, "Qwen/SAE-Res-Qwen3.5-35B-A3B-Base-W128K-L0_100");
        let f = file("qwen-scope-3.5-27b-w80k-l100", "layer38");
        assert_eq!(f.repo, "Qwen/SAE-Res-Qwen3.5-27B-W80K-L0_100");
        assert!(known("qwen-scope-3-1.7b-base-w32k-l50", "layer_20")
            .unwrap()
            .is_err());
        assert!(known("gpt2-small-res-jb", "blocks.0.hook_resid_pre").is_none());
    }

    #[test]
    fn cache_dir_follows_the_hub_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into())
        };
        assert_eq!(
            cache_dir_from(env(&[("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b")])),
            PathBuf::from("/a")
        );
        assert_eq!(
            cache_dir_from(env(&[("HF_HOME", "/b")])),
            PathBuf::from("/b/hub")
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.cache/huggingface/hub")
        );
    }
}
