//! The hookable decoder: configuration, weights, forward pass, tokenizer, and loading from local files.

pub mod adapter;
pub mod attention;
mod block;
pub mod config;
pub mod decoder;
pub mod fetch;
pub mod gguf;
pub mod hooks;
pub mod kv;
pub mod layers;
pub mod lora;
mod summary;
mod tensor_pass;
pub mod tokenizer;
mod train_ops;
mod trainable;
mod vector_pass;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::Device;

pub use adapter::{Adapter, AdapterConfig, AdapterMode};
pub use block::Execution;
pub use config::{Architecture, ModelConfig};
pub use decoder::{Batch, ForwardOptions, ForwardOutput, Logits, Model};
pub use hooks::{Capture, FnHook, HookContext, HookList, HookPoint, Hooks, NoHooks, Site};
pub use kv::KvCache;
pub use summary::ModelSummary;
pub use tokenizer::{ChatEncoding, Message, Tokenizer};
pub use weights::WeightSource;

use crate::{Error, Result};

/// A model with its tokenizer and where it came from.
pub struct LoadedModel {
    /// The hookable decoder with its weights.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The file (GGUF) or directory (Hugging Face) it was loaded from.
    pub path: PathBuf,
    /// The file holding the weights (the GGUF file, or the first safetensors shard).
    pub weights_path: PathBuf,
    /// What changed the base model after loading, in order: a fine-tuned weights file, then adapter
    /// folders. Part of the model's identity (a guardrail fitted on an adapted model refuses the
    /// base model, and the reverse).
    pub modifications: Vec<PathBuf>,
}

impl LoadedModel {
    /// A short name: the file or directory name, with the names of its weights file and adapters.
    pub fn name(&self) -> String {
        let short = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        };
        let mut name = short(&self.path);
        for m in &self.modifications {
            let what = if m.is_dir() {
                short(m.parent().unwrap_or(m)) + "/" + &short(m)
            } else {
                short(m)
            };
            name.push_str(&format!(" + {what}"));
        }
        name
    }
}

/// Loads a model from a GGUF file or a Hugging Face directory (`config.json`, safetensors,
/// `tokenizer.json`).
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_with(path, None, device)
}

/// [`load`], with the tensors of `weights` (a safetensors file in Hugging Face naming, as full
/// fine-tuning writes it) in place of the base model's.
pub fn load_with(path: &Path, weights: Option<&Path>, device: &Device) -> Result<LoadedModel> {
    let overlay = |src: WeightSource| -> Result<WeightSource> {
        match weights {
            None => Ok(src),
            Some(w) => {
                let top = WeightSource::open_safetensors(vec![w.to_path_buf()])?;
                WeightSource::overlay(src, top)
            }
        }
    };
    if let Some(w) = weights.filter(|w| !w.is_file()) {
        return Err(Error::missing(w, "fine-tuned weights file (safetensors)"));
    }
    if !path.exists() {
        return Err(Error::missing(
            path,
            "model file or directory (no such path)",
        ));
    }
    let (model, tokenizer, weights_path) = if path.is_dir() {
        let cfg = ModelConfig::from_hf_json(&path.join("config.json")).map_err(|e| match e {
            Error::Io { .. } => Error::missing(path, "config.json"),
            e => e,
        })?;
        let src = WeightSource::open_safetensors_dir(path)?;
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        let weights_path = src.path().to_path_buf();
        let model = Model::load(cfg, &overlay(src)?, device)?;
        (model, tokenizer, weights_path)
    } else {
        let src = WeightSource::open_gguf(path)?;
        let WeightSource::Gguf { content, .. } = &src else {
            unreachable!("open_gguf returns a GGUF source")
        };
        let cfg = gguf::config_from_gguf(content, path)?;
        let json = gguf::tokenizer_json_from_gguf(content, path)?;
        let inner = Tokenizer::from_json_value(&json, path)?;
        let (bos, eos, pad) = gguf::special_ids(content);
        let template = gguf::meta_str(content, "tokenizer.chat_template").map(String::from);
        let add_bos = content
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let tokenizer = Tokenizer::new(inner, bos, eos, pad, template, add_bos);
        let model = Model::load(cfg, &overlay(src)?, device)?;
        (model, tokenizer, path.to_path_buf())
    };
    let vocab = model.config().vocab_size;
    if tokenizer.vocab_size() > vocab {
        return Err(Error::Mismatch(format!(
            "{}: the tokenizer has {} tokens but the model's embedding has {vocab} rows",
            path.display(),
            tokenizer.vocab_size()
        )));
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        path: path.to_path_buf(),
        weights_path,
        modifications: weights.map(Path::to_path_buf).into_iter().collect(),
    })
}

/// [`load_with`] (`weights` over the base's), then each PEFT LoRA adapter in `adapters` applied in
/// order as `mode` says. Every adapter folder is read and checked before the model is loaded.
pub fn load_adapted(
    path: &Path,
    weights: Option<&Path>,
    adapters: &[PathBuf],
    mode: AdapterMode,
    device: &Device,
) -> Result<LoadedModel> {
    let read = adapters
        .iter()
        .map(|a| Adapter::load(a, device))
        .collect::<Result<Vec<_>>>()?;
    let mut lm = load_with(path, weights, device)?;
    lm.modifications.extend(adapters.iter().cloned());
    for (adapter, dir) in read.iter().zip(adapters) {
        lm.model.apply_adapter(adapter, mode).map_err(|e| match e {
            Error::Mismatch(m) => Error::Mismatch(format!("{}: {m}", dir.display())),
            e => e,
        })?;
    }
    Ok(lm)
}
