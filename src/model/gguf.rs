//! GGUF metadata: the model configuration and the tokenizer that a llama.cpp file carries.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use super::config::{
    implied_head_dim, rope_inv_freq, Architecture, MlpActivation, ModelConfig, NormKind, Positions,
    RopeStyle,
};
use crate::{Error, Result};

fn meta<'a>(c: &'a Content, path: &Path, key: &str) -> Result<&'a Value> {
    c.metadata
        .get(key)
        .ok_or_else(|| Error::missing(path, format!("GGUF metadata `{key}`")))
}

fn meta_usize(c: &Content, path: &Path, key: &str) -> Result<usize> {
    let v = meta(c, path, key)?;
    v.to_u64()
        .or_else(|_| v.to_u32().map(u64::from))
        .or_else(|_| v.to_i32().map(|x| x as u64))
        .map(|x| x as usize)
        .map_err(|_| Error::format(path, key, "an integer", format!("{v:?}")))
}

fn meta_f64(c: &Content, path: &Path, key: &str) -> Result<Option<f64>> {
    match c.metadata.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map(Some)
            .map_err(|_| Error::format(path, key, "a float", format!("{v:?}"))),
    }
}

/// A string metadata value, if present.
pub fn meta_str<'a>(c: &'a Content, key: &str) -> Option<&'a str> {
    c.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

/// Reads the model configuration from GGUF metadata (llama architecture).
pub fn config_from_gguf(c: &Content, path: &Path) -> Result<ModelConfig> {
    let arch = meta(c, path, "general.architecture")?
        .to_string()
        .map_err(|_| Error::format(path, "general.architecture", "a string", "another type"))?;
    if arch != "llama" {
        return Err(Error::format(
            path,
            "general.architecture",
            "llama (other GGUF architectures: load the Hugging Face safetensors instead)",
            arch.as_str(),
        ));
    }
    let k = |s: &str| format!("llama.{s}");
    let d_model = meta_usize(c, path, &k("embedding_length"))?;
    let n_heads = meta_usize(c, path, &k("attention.head_count"))?;
    let n_kv_heads = match c.metadata.get(&k("attention.head_count_kv")) {
        Some(_) => meta_usize(c, path, &k("attention.head_count_kv"))?,
        None => n_heads,
    };
    let head_dim = match c.metadata.get(&k("rope.dimension_count")) {
        Some(_) => meta_usize(c, path, &k("rope.dimension_count"))?,
        None => implied_head_dim(
            path,
            &k("embedding_length"),
            d_model,
            &k("attention.head_count"),
            n_heads,
        )?,
    };
    let n_layers = meta_usize(c, path, &k("block_count"))?;
    let vocab_size = match c.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims()[0],
        None => return Err(Error::missing(path, "tensor `token_embd.weight`")),
    };
    let theta = meta_f64(c, path, &k("rope.freq_base"))?.unwrap_or(10000.0);
    if c.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(Error::Unsupported(format!(
            "{}: GGUF rope frequency factors (`rope_freqs.weight`, Llama 3.1 scaling); load the \
             Hugging Face checkpoint instead",
            path.display()
        )));
    }
    let cfg = ModelConfig {
        arch: Architecture::Llama,
        vocab_size,
        d_model,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        d_ff: meta_usize(c, path, &k("feed_forward_length"))?,
        norm: NormKind::Rms,
        norm_eps: meta_f64(c, path, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        activation: MlpActivation::Silu,
        gated_mlp: true,
        // llama.cpp stores Q and K permuted so that rotary pairs are adjacent.
        positions: Positions::Rope {
            inv_freq: rope_inv_freq(theta, head_dim),
            local_inv_freq: None,
            style: RopeStyle::Interleaved,
        },
        max_positions: meta_usize(c, path, &k("context_length")).unwrap_or(4096),
        qkv_bias: false,
        out_bias: false,
        sandwich_norms: false,
        qk_norm: false,
        embed_scale: None,
        attn_scale: (head_dim as f64).powf(-0.5),
        attn_softcap: None,
        final_softcap: None,
        layer_windows: vec![None; n_layers],
        tie_embeddings: !c.tensor_infos.contains_key("output.weight"),
    };
    cfg.validate(path)?;
    Ok(cfg)
}

fn string_array(c: &Content, path: &Path, key: &str) -> Result<Vec<String>> {
    let arr = meta(c, path, key)?
        .to_vec()
        .map_err(|_| Error::format(path, key, "an array of strings", "another type"))?;
    arr.iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| Error::format(path, key, "strings", format!("{v:?}")))
        })
        .collect()
}

/// The pre-tokenizer that llama.cpp's `tokenizer.ggml.pre` name stands for, as tokenizer.json.
fn pre_tokenizer(pre: &str, path: &Path) -> Result<serde_json::Value> {
    use serde_json::json;
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "gpt2" | "default" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
        other => {
            return Err(Error::format(
                path,
                "tokenizer.ggml.pre",
                "one of smollm, starcoder, gpt2, default, llama-bpe, qwen2",
                other,
            ))
        }
    })
}

/// Rebuilds the Hugging Face `tokenizer.json` of a GGUF file's byte-level BPE tokenizer.
pub fn tokenizer_json_from_gguf(c: &Content, path: &Path) -> Result<serde_json::Value> {
    use serde_json::json;
    let model = meta_str(c, "tokenizer.ggml.model").unwrap_or("(absent)");
    if model != "gpt2" {
        return Err(Error::format(
            path,
            "tokenizer.ggml.model",
            "gpt2 (byte-level BPE)",
            model,
        ));
    }
    let tokens = string_array(c, path, "tokenizer.ggml.tokens")?;
    let merges = string_array(c, path, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match c.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| Error::format(path, "tokenizer.ggml.token_type", "an array", "other"))?
            .iter()
            .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let pre = meta_str(c, "tokenizer.ggml.pre").unwrap_or("default");
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // Control (3) and user-defined (4) tokens are matched whole in input text.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == 3 || **ty == 4)
        .map(|(i, (t, ty))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *ty == 3})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre, path)?,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre == "llama-bpe" || pre == "llama3",
            "vocab": vocab, "merges": merges
        }
    }))
}

/// Special token ids recorded in GGUF metadata: (bos, eos, pad).
pub fn special_ids(c: &Content) -> (Option<u32>, Option<u32>, Option<u32>) {
    let id = |k: &str| c.metadata.get(k).and_then(|v| v.to_u32().ok());
    (
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
        id("tokenizer.ggml.padding_token_id"),
    )
}
