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

/// Reads the model configuration from GGUF metadata: `general.architecture` llama or gemma3.
pub fn config_from_gguf(c: &Content, path: &Path) -> Result<ModelConfig> {
    let arch = meta(c, path, "general.architecture")?
        .to_string()
        .map_err(|_| Error::format(path, "general.architecture", "a string", "another type"))?;
    let gemma3 = match arch.as_str() {
        "llama" => false,
        "gemma3" => true,
        other => return Err(Error::format(
            path,
            "general.architecture",
            "llama or gemma3 (other GGUF architectures: load the Hugging Face safetensors instead)",
            other,
        )),
    };
    let k = |s: &str| format!("{arch}.{s}");
    let d_model = meta_usize(c, path, &k("embedding_length"))?;
    let n_heads = meta_usize(c, path, &k("attention.head_count"))?;
    let n_kv_heads = match c.metadata.get(&k("attention.head_count_kv")) {
        Some(_) => meta_usize(c, path, &k("attention.head_count_kv"))?,
        None => n_heads,
    };
    let head_dim = match ["attention.key_length", "rope.dimension_count"]
        .into_iter()
        .find(|s| c.metadata.contains_key(&k(s)))
    {
        Some(s) => meta_usize(c, path, &k(s))?,
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
    if c.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(Error::Unsupported(format!(
            "{}: GGUF rope frequency factors (`rope_freqs.weight`, Llama 3.1 scaling); load the \
             Hugging Face checkpoint instead",
            path.display()
        )));
    }
    let default_theta = if gemma3 { 1e6 } else { 1e4 };
    let mut inv_freq = rope_inv_freq(
        meta_f64(c, path, &k("rope.freq_base"))?.unwrap_or(default_theta),
        head_dim,
    );
    if gemma3 {
        linear_rope_scaling(c, path, &k("rope.scaling"), &mut inv_freq)?;
    }
    let max_positions = meta_usize(c, path, &k("context_length")).unwrap_or(4096);
    let mut cfg = ModelConfig {
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
            inv_freq,
            local_inv_freq: None,
            style: RopeStyle::Interleaved,
        },
        max_positions,
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
    if gemma3 {
        gemma3_settings(c, path, &mut cfg)?;
    }
    cfg.validate(path)?;
    Ok(cfg)
}

/// Gemma 3 as llama.cpp runs it (llama-model.cpp, `LLM_ARCH_GEMMA3`): the converter stores the
/// norms' `1 + w` (so plain RMSNorm here), and Q/K unpermuted (half-split RoPE); the sliding
/// layers use base 10000, unscaled, and every 6th layer is global, both fixed in llama.cpp rather
/// than stored (a `sliding_window_pattern` key is honoured if a file has one); the query scale is
/// `head_dim^-½`, except for the 62-layer 27B, `(d_model / n_heads)^-½`; GELU (tanh) gated MLP,
/// embeddings scaled by √d_model, no soft-caps.
fn gemma3_settings(c: &Content, path: &Path, cfg: &mut ModelConfig) -> Result<()> {
    let window = meta_usize(c, path, "gemma3.attention.sliding_window")?;
    let pattern = match c.metadata.get("gemma3.attention.sliding_window_pattern") {
        Some(_) => meta_usize(c, path, "gemma3.attention.sliding_window_pattern")?,
        None => 6,
    };
    if pattern == 0 {
        return Err(Error::format(
            path,
            "gemma3.attention.sliding_window_pattern",
            "a positive integer (every N-th layer global)",
            "0",
        ));
    }
    cfg.arch = Architecture::Gemma3;
    cfg.norm_eps = meta_f64(c, path, "gemma3.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6);
    cfg.activation = MlpActivation::GeluTanh;
    if let Positions::Rope {
        local_inv_freq,
        style,
        ..
    } = &mut cfg.positions
    {
        *local_inv_freq = Some(rope_inv_freq(1e4, cfg.head_dim));
        *style = RopeStyle::HalfSplit;
    }
    cfg.sandwich_norms = true;
    cfg.qk_norm = true;
    cfg.embed_scale = Some((cfg.d_model as f32).sqrt());
    let query_scalar = if cfg.n_layers == 62 {
        cfg.d_model / cfg.n_heads
    } else {
        cfg.head_dim
    };
    cfg.attn_scale = (query_scalar as f64).powf(-0.5);
    cfg.layer_windows = (0..cfg.n_layers)
        .map(|i| ((i + 1) % pattern != 0).then_some(window))
        .collect();
    Ok(())
}

/// `{prefix}.type` = linear with `{prefix}.factor`: the global RoPE's frequencies divided by the
/// factor (Gemma 3 4B and up); any other scaling type is refused by name.
fn linear_rope_scaling(c: &Content, path: &Path, prefix: &str, inv_freq: &mut [f32]) -> Result<()> {
    let kind = meta_str(c, &format!("{prefix}.type")).unwrap_or("none");
    match kind {
        "none" => Ok(()),
        "linear" => {
            let key = format!("{prefix}.factor");
            match meta_f64(c, path, &key)? {
                Some(f) if f.is_finite() && f > 0.0 => {
                    inv_freq.iter_mut().for_each(|v| *v /= f as f32);
                    Ok(())
                }
                other => Err(Error::format(
                    path,
                    key,
                    "a positive scaling factor",
                    format!("{other:?}"),
                )),
            }
        }
        other => Err(Error::format(
            path,
            format!("{prefix}.type"),
            "none or linear",
            other,
        )),
    }
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

/// Rebuilds the Hugging Face `tokenizer.json` of a GGUF file's tokenizer: byte-level BPE
/// (`tokenizer.ggml.model` gpt2) or SentencePiece BPE (llama, e.g. Gemma's).
pub fn tokenizer_json_from_gguf(c: &Content, path: &Path) -> Result<serde_json::Value> {
    use serde_json::json;
    let model = meta_str(c, "tokenizer.ggml.model").unwrap_or("(absent)");
    let tokens = string_array(c, path, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match c.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| Error::format(path, "tokenizer.ggml.token_type", "an array", "other"))?
            .iter()
            .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    match model {
        "gpt2" => {}
        "llama" => return sentencepiece_json(c, path, &tokens, &types),
        other => {
            return Err(Error::format(
                path,
                "tokenizer.ggml.model",
                "gpt2 (byte-level BPE) or llama (SentencePiece BPE)",
                other,
            ))
        }
    }
    let merges = string_array(c, path, "tokenizer.ggml.merges")?;
    let pre = meta_str(c, "tokenizer.ggml.pre").unwrap_or("default");
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added = added_tokens(&tokens, &types);
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

/// Control (3) and user-defined (4) tokens, matched whole in input text.
fn added_tokens(tokens: &[String], types: &[i64]) -> Vec<serde_json::Value> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == 3 || **ty == 4)
        .map(|(i, (t, ty))| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == 3})
        })
        .collect()
}

/// A SentencePiece BPE vocabulary (`tokenizer.ggml.model` llama) as a `tokenizer.json` BPE model
/// that tokenises as llama.cpp's SPM tokenizer does: spaces become `▁` (plus one in front when
/// `add_space_prefix`), then the adjacent pair whose merged piece scores highest is merged first;
/// characters outside the vocabulary fall back to `<0xNN>` byte tokens. The merges are those
/// transformers' `SentencePieceExtractor` derives: every split of a normal piece into two normal
/// pieces, ranked by the merged piece's score (ties by id).
fn sentencepiece_json(
    c: &Content,
    path: &Path,
    tokens: &[String],
    types: &[i64],
) -> Result<serde_json::Value> {
    use serde_json::json;
    let key = "tokenizer.ggml.scores";
    let scores: Vec<f32> = meta(c, path, key)?
        .to_vec()
        .map_err(|_| Error::format(path, key, "an array of floats", "another type"))?
        .iter()
        .map(|v| {
            v.to_f32()
                .map_err(|_| Error::format(path, key, "floats", format!("{v:?}")))
        })
        .collect::<Result<_>>()?;
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(Error::format(
            path,
            key,
            format!("{} scores and token types, one per token", tokens.len()),
            format!("{} scores, {} types", scores.len(), types.len()),
        ));
    }
    let normal: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == 1)
        .map(|(i, (t, _))| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, usize)> = Vec::new();
    for (piece, &id) in &normal {
        let mut local: Vec<(usize, usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((id, *normal.get(l)?, *normal.get(r)?))
            })
            .collect();
        merges.append(&mut local);
    }
    merges.sort_by(|a, b| {
        scores[b.0]
            .total_cmp(&scores[a.0])
            .then((a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)))
    });
    let merges: Vec<[&str; 2]> = merges
        .iter()
        .map(|&(_, l, r)| [tokens[l].as_str(), tokens[r].as_str()])
        .collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let prefix = c
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let mut normalizers = Vec::new();
    if prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    let unk = c
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|i| tokens.get(i as usize));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges
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
