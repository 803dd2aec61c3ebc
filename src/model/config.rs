//! Model configuration: one decoder, with every architecture difference expressed as data.
//!
//! Parsed from a Hugging Face `config.json` (Llama, Mistral, Qwen2, Gemma 2, Gemma 3, GPT-2) or from
//! GGUF metadata (see `gguf.rs`).

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// The architecture family a model was loaded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 2/3, SmolLM2 and other `LlamaForCausalLM` models.
    Llama,
    /// Mistral (Llama with sliding-window attention).
    Mistral,
    /// Qwen2 / Qwen2.5 (biases on q/k/v).
    Qwen2,
    /// Gemma 2: (1+w) RMSNorm, sandwich norms, GeGLU, soft-capping, alternating local/global layers.
    Gemma2,
    /// Gemma 3 (text): Gemma 2's norms and MLP plus a (1+w) RMSNorm on each query and key head before
    /// RoPE, a pattern of sliding and global layers, and a RoPE base of its own for the sliding ones.
    Gemma3,
    /// GPT-2: learned positions, LayerNorm, fused Conv1D qkv.
    Gpt2,
}

/// Normalisation layer kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm scaled by `w`.
    Rms,
    /// RMSNorm scaled by `1 + w` (Gemma).
    RmsPlusOne,
    /// LayerNorm with weight and bias.
    Layer,
}

/// MLP nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpActivation {
    /// SiLU (SwiGLU when gated).
    Silu,
    /// GELU, tanh approximation (GeGLU when gated; GPT-2's `gelu_new`).
    GeluTanh,
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face layout: dimension i pairs with i + head_dim/2.
    HalfSplit,
    /// llama.cpp's permuted layout in GGUF files: dimension 2i pairs with 2i+1.
    Interleaved,
}

/// Positional information.
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    /// Rotary embeddings with per-pair inverse frequencies (scaling already applied).
    Rope {
        /// Inverse frequency of each dimension pair (head_dim/2 values).
        inv_freq: Vec<f32>,
        /// Inverse frequencies of the sliding-window layers where they differ from `inv_freq`
        /// (Gemma 3's `rope_local_base_freq`); `None`: every layer uses `inv_freq`.
        local_inv_freq: Option<Vec<f32>>,
        /// Pairing layout.
        style: RopeStyle,
    },
    /// Learned absolute position embeddings (GPT-2).
    Learned,
}

/// Everything the forward pass needs to know about a model's shape and variant.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture family.
    pub arch: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual stream width.
    pub d_model: usize,
    /// Number of decoder blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP hidden width.
    pub d_ff: usize,
    /// Normalisation kind.
    pub norm: NormKind,
    /// Normalisation epsilon.
    pub norm_eps: f64,
    /// MLP nonlinearity.
    pub activation: MlpActivation,
    /// Gated MLP (gate/up/down) rather than plain (fc/proj).
    pub gated_mlp: bool,
    /// Positional scheme.
    pub positions: Positions,
    /// Longest sequence the model supports.
    pub max_positions: usize,
    /// Biases on q/k/v projections.
    pub qkv_bias: bool,
    /// Biases on the attention output and MLP projections (GPT-2).
    pub out_bias: bool,
    /// Extra norms after attention and after the MLP (Gemma 2 and 3).
    pub sandwich_norms: bool,
    /// A norm of kind `norm` over each query and key head (width `head_dim`) before RoPE (Gemma 3's
    /// `q_norm` / `k_norm`).
    pub qk_norm: bool,
    /// Factor applied to token embeddings (Gemma: sqrt(d_model)).
    pub embed_scale: Option<f32>,
    /// Multiplier on q·k (usually head_dim^-0.5).
    pub attn_scale: f64,
    /// Attention logit soft-cap (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// Final logit soft-cap (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Per layer: the sliding-window size, or `None` for global attention.
    pub layer_windows: Vec<Option<usize>>,
    /// Output head shares the token embedding.
    pub tie_embeddings: bool,
}

fn get<'a>(cfg: &'a Value, path: &Path, key: &str) -> Result<&'a Value> {
    cfg.get(key)
        .filter(|v| !v.is_null())
        .ok_or_else(|| Error::missing(path, format!("config field `{key}`")))
}

fn get_usize(cfg: &Value, path: &Path, key: &str) -> Result<usize> {
    let v = get(cfg, path, key)?;
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| Error::format(path, key, "a non-negative integer", v.to_string()))
}

fn get_f64(cfg: &Value, path: &Path, key: &str) -> Result<f64> {
    let v = get(cfg, path, key)?;
    v.as_f64()
        .ok_or_else(|| Error::format(path, key, "a number", v.to_string()))
}

fn opt_usize(cfg: &Value, path: &Path, key: &str) -> Result<Option<usize>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => get_usize(cfg, path, key).map(Some),
    }
}

fn opt_f64(cfg: &Value, path: &Path, key: &str) -> Result<Option<f64>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => get_f64(cfg, path, key).map(Some),
    }
}

fn opt_bool(cfg: &Value, key: &str, default: bool) -> bool {
    cfg.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// Inverse frequencies `1 / theta^(2i/dim)`, computed like transformers (f32 result).
pub fn rope_inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / dim as f64)) as f32)
        .collect()
}

/// Applies a `rope_scaling` entry of config.json to `inv_freq`.
fn apply_rope_scaling(inv_freq: &mut [f32], scaling: &Value, path: &Path) -> Result<()> {
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = || get_f64(scaling, path, "factor");
    match kind {
        "default" => {}
        "linear" => {
            let f = factor()?;
            inv_freq
                .iter_mut()
                .for_each(|x| *x = (*x as f64 / f) as f32);
        }
        "llama3" => {
            let f = factor()?;
            let low = get_f64(scaling, path, "low_freq_factor")?;
            let high = get_f64(scaling, path, "high_freq_factor")?;
            let old = get_f64(scaling, path, "original_max_position_embeddings")?;
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            for x in inv_freq.iter_mut() {
                let freq = *x as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let scaled = if wavelen > low_wavelen {
                    freq / f
                } else {
                    freq
                };
                let is_medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                *x = if is_medium {
                    let smooth = (old / wavelen - low) / (high - low);
                    ((1.0 - smooth) * scaled / f + smooth * scaled) as f32
                } else {
                    scaled as f32
                };
            }
        }
        other => {
            return Err(Error::format(
                path,
                "rope_scaling.rope_type",
                "default, linear or llama3",
                other,
            ))
        }
    }
    Ok(())
}

/// Inverse frequencies of a single-RoPE config: `rope_theta` (top level, or in transformers 5's
/// `rope_parameters`) and its `rope_scaling` / `rope_parameters` scaling.
fn rope(cfg: &Value, path: &Path, head_dim: usize) -> Result<Vec<f32>> {
    let theta = opt_f64(cfg, path, "rope_theta")?
        .or(cfg
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64))
        .unwrap_or(10000.0);
    let mut inv_freq = rope_inv_freq(theta, head_dim);
    let scaling = cfg
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .or_else(|| cfg.get("rope_parameters").filter(|v| !v.is_null()));
    if let Some(scaling) = scaling {
        apply_rope_scaling(&mut inv_freq, scaling, path)?;
    }
    Ok(inv_freq)
}

/// Gemma 3's two RoPEs, (global, local): transformers 5 nests them in `rope_parameters` under
/// `full_attention` and `sliding_attention`; 4.x configs give `rope_theta` with an optional
/// `rope_scaling` for the global layers and `rope_local_base_freq` (default RoPE) for the sliding
/// ones. Bases default to transformers' 1e6 and 1e4.
fn gemma3_rope(cfg: &Value, path: &Path, head_dim: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let one = |params: Option<&Value>,
               nested_field: &str,
               theta_key: &str,
               default: f64|
     -> Result<Vec<f32>> {
        let (theta, field) = match params {
            Some(p) => (opt_f64(p, path, "rope_theta")?, nested_field),
            None => (opt_f64(cfg, path, theta_key)?, theta_key),
        };
        let theta = theta.unwrap_or(default);
        if !(theta.is_finite() && theta > 0.0) {
            return Err(Error::format(
                path,
                field,
                "a positive RoPE base",
                theta.to_string(),
            ));
        }
        let mut inv_freq = rope_inv_freq(theta, head_dim);
        let scaling = match params {
            Some(p) => Some(p),
            None if theta_key == "rope_theta" => cfg.get("rope_scaling").filter(|v| !v.is_null()),
            None => None,
        };
        if let Some(scaling) = scaling {
            apply_rope_scaling(&mut inv_freq, scaling, path)?;
        }
        Ok(inv_freq)
    };
    let nested = |key: &str| -> Result<Option<&Value>> {
        match cfg.get("rope_parameters").filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(p) => match p.get(key).filter(|v| !v.is_null()) {
                Some(v) if v.is_object() => Ok(Some(v)),
                _ => Err(Error::format(
                    path,
                    format!("rope_parameters.{key}"),
                    "an object (Gemma 3 keeps one RoPE per layer type)",
                    p.get(key).map_or("nothing".into(), Value::to_string),
                )),
            },
        }
    };
    let global = one(
        nested("full_attention")?,
        "rope_parameters.full_attention.rope_theta",
        "rope_theta",
        1e6,
    )?;
    let local = one(
        nested("sliding_attention")?,
        "rope_parameters.sliding_attention.rope_theta",
        "rope_local_base_freq",
        1e4,
    )?;
    Ok((global, local))
}

/// transformers' `Gemma3TextConfig` defaults under the fields `cfg` gives (`where_` names the
/// object in errors).
fn gemma3_defaults(cfg: &Value, path: &Path, where_: &str) -> Result<Value> {
    let Some(fields) = cfg.as_object() else {
        return Err(Error::format(
            path,
            where_,
            "an object (the Gemma 3 decoder's settings)",
            cfg.to_string(),
        ));
    };
    let mut out = serde_json::json!({
        "vocab_size": 262_208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131_072,
        "rms_norm_eps": 1e-6,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
        "tie_word_embeddings": true,
    });
    let map = out.as_object_mut().expect("an object");
    for (k, v) in fields {
        map.insert(k.clone(), v.clone());
    }
    if opt_bool(cfg, "use_bidirectional_attention", false) {
        return Err(Error::format(
            path,
            "use_bidirectional_attention",
            "false (dsg runs causal decoders)",
            "true",
        ));
    }
    Ok(out)
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, "(root)", "valid JSON", e.to_string()))?;
        Self::from_hf_value(&cfg, path)
    }

    /// Validates `self` as read from `path`, so that bad shapes are blamed on the configuration file
    /// rather than on the weights read later.
    fn checked(self, path: &Path) -> Result<Self> {
        self.validate(path)?;
        Ok(self)
    }

    /// Builds the configuration from a parsed `config.json`; `path` is used in error messages. A
    /// multimodal Gemma 3 (`model_type: gemma3`) is read from its `text_config`.
    pub fn from_hf_value(cfg: &Value, path: &Path) -> Result<Self> {
        let model_type = get(cfg, path, "model_type")?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let arch = match model_type.as_str() {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "gemma2" => Architecture::Gemma2,
            "gemma3_text" | "gemma3" => Architecture::Gemma3,
            "gpt2" => Architecture::Gpt2,
            other => {
                return Err(Error::format(
                    path,
                    "model_type",
                    "one of llama, mistral, qwen2, gemma2, gemma3_text, gemma3, gpt2",
                    other,
                ))
            }
        };
        // Gemma 3's configs leave out what equals transformers' defaults (a multimodal one keeps
        // only a few fields in `text_config`), so those defaults are filled in first.
        let filled;
        let cfg = match model_type.as_str() {
            "gemma3" => {
                let text = get(cfg, path, "text_config")?;
                let mut f = gemma3_defaults(text, path, "text_config")?;
                // The tie lives on the outer config of a multimodal checkpoint.
                if let (Some(tie), None) = (
                    cfg.get("tie_word_embeddings"),
                    text.get("tie_word_embeddings"),
                ) {
                    f["tie_word_embeddings"] = tie.clone();
                }
                filled = f;
                &filled
            }
            "gemma3_text" => {
                filled = gemma3_defaults(cfg, path, "(root)")?;
                &filled
            }
            _ => cfg,
        };
        if arch == Architecture::Gpt2 {
            return Self::gpt2(cfg, path)?.checked(path);
        }
        let d_model = get_usize(cfg, path, "hidden_size")?;
        let n_layers = get_usize(cfg, path, "num_hidden_layers")?;
        let n_heads = get_usize(cfg, path, "num_attention_heads")?;
        let n_kv_heads = opt_usize(cfg, path, "num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = match opt_usize(cfg, path, "head_dim")? {
            Some(h) => h,
            None => implied_head_dim(path, "hidden_size", d_model, "num_attention_heads", n_heads)?,
        };
        let (inv_freq, local_inv_freq) = if arch == Architecture::Gemma3 {
            let (global, local) = gemma3_rope(cfg, path, head_dim)?;
            (global, Some(local))
        } else {
            (rope(cfg, path, head_dim)?, None)
        };
        let gemma = matches!(arch, Architecture::Gemma2 | Architecture::Gemma3);
        let hidden_act = cfg
            .get("hidden_activation")
            .or_else(|| cfg.get("hidden_act"))
            .and_then(Value::as_str)
            .unwrap_or("silu");
        let activation = match hidden_act {
            "silu" | "swish" => MlpActivation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" => MlpActivation::GeluTanh,
            other => {
                return Err(Error::format(
                    path,
                    "hidden_act",
                    "silu or gelu_pytorch_tanh",
                    other,
                ))
            }
        };
        let window = opt_usize(cfg, path, "sliding_window")?;
        let layer_windows = layer_windows(cfg, path, arch, n_layers, window)?;
        let attn_scale = match opt_f64(cfg, path, "query_pre_attn_scalar")? {
            Some(s) if gemma => s.powf(-0.5),
            _ => (head_dim as f64).powf(-0.5),
        };
        ModelConfig {
            arch,
            vocab_size: get_usize(cfg, path, "vocab_size")?,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ff: get_usize(cfg, path, "intermediate_size")?,
            norm: if gemma {
                NormKind::RmsPlusOne
            } else {
                NormKind::Rms
            },
            norm_eps: opt_f64(cfg, path, "rms_norm_eps")?.unwrap_or(1e-6),
            activation,
            gated_mlp: true,
            positions: Positions::Rope {
                inv_freq,
                local_inv_freq,
                style: RopeStyle::HalfSplit,
            },
            max_positions: opt_usize(cfg, path, "max_position_embeddings")?.unwrap_or(8192),
            qkv_bias: arch == Architecture::Qwen2 || opt_bool(cfg, "attention_bias", false),
            out_bias: opt_bool(cfg, "attention_bias", false) && arch == Architecture::Llama,
            sandwich_norms: gemma,
            qk_norm: arch == Architecture::Gemma3,
            embed_scale: gemma.then(|| (d_model as f32).sqrt()),
            attn_scale,
            attn_softcap: if gemma {
                opt_f64(cfg, path, "attn_logit_softcapping")?
            } else {
                None
            },
            final_softcap: if gemma {
                opt_f64(cfg, path, "final_logit_softcapping")?
            } else {
                None
            },
            layer_windows,
            tie_embeddings: opt_bool(cfg, "tie_word_embeddings", gemma),
        }
        .checked(path)
    }

    fn gpt2(cfg: &Value, path: &Path) -> Result<Self> {
        let d_model = get_usize(cfg, path, "n_embd")?;
        let n_heads = get_usize(cfg, path, "n_head")?;
        let n_layers = get_usize(cfg, path, "n_layer")?;
        let head_dim = implied_head_dim(path, "n_embd", d_model, "n_head", n_heads)?;
        let act = cfg
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(Error::format(path, "activation_function", "gelu_new", act));
        }
        Ok(ModelConfig {
            arch: Architecture::Gpt2,
            vocab_size: get_usize(cfg, path, "vocab_size")?,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads: n_heads,
            head_dim,
            d_ff: opt_usize(cfg, path, "n_inner")?.unwrap_or(4 * d_model),
            norm: NormKind::Layer,
            norm_eps: opt_f64(cfg, path, "layer_norm_epsilon")?.unwrap_or(1e-5),
            activation: MlpActivation::GeluTanh,
            gated_mlp: false,
            positions: Positions::Learned,
            max_positions: get_usize(cfg, path, "n_positions")?,
            qkv_bias: true,
            out_bias: true,
            sandwich_norms: false,
            qk_norm: false,
            embed_scale: None,
            attn_scale: if opt_bool(cfg, "scale_attn_weights", true) {
                (head_dim as f64).powf(-0.5)
            } else {
                1.0
            },
            attn_softcap: None,
            final_softcap: None,
            layer_windows: vec![None; n_layers],
            tie_embeddings: opt_bool(cfg, "tie_word_embeddings", true),
        })
    }

    /// Checks that a sequence reaching `len` positions (0..len) fits the model's context
    /// (`max_positions`), for every architecture: past it, learned positions do not exist and rotary
    /// models were never trained. The error names `field` (an option, or what the length is of)
    /// with `value` (how the caller arrived at `len`).
    pub fn check_context(
        &self,
        field: &str,
        value: impl std::fmt::Display,
        len: usize,
    ) -> Result<()> {
        if len > self.max_positions {
            return Err(Error::out_of_range(
                field,
                value,
                format!(
                    "at most the model's context of {} positions (max_position_embeddings / \
                     context_length)",
                    self.max_positions
                ),
            ));
        }
        Ok(())
    }

    /// Checks internal consistency (head counts divide, dimensions positive).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let check = |ok: bool, field: &str, expected: &str, found: String| {
            if ok {
                Ok(())
            } else {
                Err(Error::format(path, field, expected, found))
            }
        };
        check(
            self.n_heads > 0 && self.n_kv_heads > 0 && self.n_heads.is_multiple_of(self.n_kv_heads),
            "num_key_value_heads",
            "a positive divisor of num_attention_heads",
            format!("{} kv heads for {} heads", self.n_kv_heads, self.n_heads),
        )?;
        check(
            self.d_model > 0 && self.n_layers > 0 && self.vocab_size > 0,
            "hidden_size/num_hidden_layers/vocab_size",
            "positive",
            format!("{}/{}/{}", self.d_model, self.n_layers, self.vocab_size),
        )?;
        check(
            self.head_dim > 0 && self.d_ff > 0,
            "head_dim/intermediate_size",
            "positive",
            format!("{}/{}", self.head_dim, self.d_ff),
        )?;
        check(
            self.max_positions > 0,
            "max_position_embeddings",
            "a positive context length",
            self.max_positions.to_string(),
        )?;
        check(
            self.layer_windows.len() == self.n_layers,
            "layer_types",
            &format!("one entry per layer ({})", self.n_layers),
            self.layer_windows.len().to_string(),
        )?;
        check(
            self.head_dim.is_multiple_of(2) || self.positions == Positions::Learned,
            "head_dim",
            "even (rotary embeddings rotate pairs)",
            self.head_dim.to_string(),
        )
    }
}

/// `width / heads`, the head width a config implies when it gives none; an error on `heads_key` unless
/// the heads divide the width.
pub(super) fn implied_head_dim(
    path: &Path,
    width_key: &str,
    width: usize,
    heads_key: &str,
    heads: usize,
) -> Result<usize> {
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(Error::format(
            path,
            heads_key,
            format!("a positive divisor of {width_key} ({width})"),
            heads.to_string(),
        ));
    }
    Ok(width / heads)
}

/// Per-layer sliding windows: `layer_types` when present, else the architecture's convention.
fn layer_windows(
    cfg: &Value,
    path: &Path,
    arch: Architecture,
    n_layers: usize,
    window: Option<usize>,
) -> Result<Vec<Option<usize>>> {
    if let Some(types) = cfg.get("layer_types").and_then(Value::as_array) {
        if types.len() != n_layers {
            return Err(Error::format(
                path,
                "layer_types",
                format!("{n_layers} entries"),
                types.len().to_string(),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => window.map(Some).ok_or_else(|| {
                    Error::missing(path, "config field `sliding_window` for sliding layers")
                }),
                Some("full_attention") => Ok(None),
                _ => Err(Error::format(
                    path,
                    "layer_types[]",
                    "sliding_attention or full_attention",
                    t.to_string(),
                )),
            })
            .collect();
    }
    // Gemma 3's 4.x configs: every `sliding_window_pattern`-th layer is global.
    let pattern = match arch {
        Architecture::Gemma3 => match get_usize(cfg, path, "sliding_window_pattern")? {
            0 => {
                return Err(Error::format(
                    path,
                    "sliding_window_pattern",
                    "a positive integer (every N-th layer global)",
                    "0",
                ))
            }
            n => n,
        },
        _ => 1,
    };
    Ok((0..n_layers)
        .map(|i| match arch {
            Architecture::Gemma2 => window.filter(|_| i % 2 == 0),
            Architecture::Gemma3 => window.filter(|_| (i + 1) % pattern != 0),
            Architecture::Mistral => window,
            Architecture::Qwen2 if opt_bool(cfg, "use_sliding_window", false) => window,
            _ => None,
        })
        .collect())
}
