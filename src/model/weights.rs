//! Weight sources: Hugging Face safetensors (single or sharded, memory-mapped) and GGUF.
//!
//! Both are addressed by Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`); the GGUF
//! source translates them to llama.cpp names (`blk.0.attn_q.weight`). Every tensor comes out as f32,
//! shape-checked against what the configuration implies.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Where a model's tensors come from.
pub enum WeightSource {
    /// One or more memory-mapped safetensors files.
    Safetensors {
        /// The files, in index order.
        paths: Vec<PathBuf>,
        /// The mapped files.
        st: Box<MmapedSafetensors>,
        /// Tensor name → file that holds it.
        owner: HashMap<String, PathBuf>,
    },
    /// A GGUF file.
    Gguf {
        /// The file.
        path: PathBuf,
        /// Parsed header and tensor directory.
        content: Box<gguf_file::Content>,
    },
    /// Tensors of `top` (a fine-tuned model's weights) in place of `base`'s, the rest from `base`.
    Overlay {
        /// Where every tensor not in `top` comes from.
        base: Box<WeightSource>,
        /// The replacing tensors.
        top: Box<WeightSource>,
    },
}

/// Translates a Hugging Face Llama-style tensor name into its llama.cpp GGUF name; with
/// `sandwich_norms` (Gemma 2/3) the four norms of a block and the q/k norms take llama.cpp's Gemma
/// names (`post_attention_layernorm` is then the norm after attention, not the MLP's).
pub fn gguf_name(hf: &str, sandwich_norms: bool) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let short = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if sandwich_norms => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" if sandwich_norms => "ffn_norm",
        "post_feedforward_layernorm" if sandwich_norms => "post_ffw_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// Whether a GGUF file's architecture has Gemma's norms before and after attention and MLP.
fn sandwich_norms(content: &gguf_file::Content) -> bool {
    matches!(
        super::gguf::meta_str(content, "general.architecture"),
        Some("gemma2" | "gemma3")
    )
}

/// Where a multimodal checkpoint (Gemma 3's `Gemma3ForConditionalGeneration`) keeps the decoder's
/// tensor `hf`: transformers 5 under `model.language_model.`, 4.x under `language_model.model.` (and
/// `language_model.lm_head`).
fn language_model_names(hf: &str) -> [String; 2] {
    match hf.strip_prefix("model.") {
        Some(rest) => [
            format!("model.language_model.{rest}"),
            format!("language_model.model.{rest}"),
        ],
        None => [
            format!("language_model.{hf}"),
            format!("model.language_model.{hf}"),
        ],
    }
}

impl WeightSource {
    /// Opens the safetensors files of a Hugging Face model directory (`model.safetensors`, or the shards
    /// listed in `model.safetensors.index.json`).
    pub fn open_safetensors_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(&index, "(root)", "valid JSON", e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::missing(&index, "object `weight_map`"))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(Error::missing(
                    dir,
                    "model.safetensors or model.safetensors.index.json",
                ));
            }
            vec![single]
        };
        for p in &paths {
            if !p.exists() {
                return Err(Error::missing(p, "safetensors shard named in the index"));
            }
        }
        Self::open_safetensors(paths)
    }

    /// Memory-maps the given safetensors files.
    pub fn open_safetensors(paths: Vec<PathBuf>) -> Result<Self> {
        let mut owner = HashMap::new();
        for p in &paths {
            // SAFETY: the file is mapped read-only; it must not be modified while the model lives,
            // the usual contract of every mmap-based model loader.
            let one = unsafe { MmapedSafetensors::new(p) }.map_err(|e| {
                Error::format(p, "(header)", "a valid safetensors file", e.to_string())
            })?;
            for (name, _) in one.tensors() {
                owner.insert(name, p.clone());
            }
        }
        // SAFETY: as above.
        let st = unsafe { MmapedSafetensors::multi(&paths) }?;
        Ok(WeightSource::Safetensors {
            paths,
            st: Box::new(st),
            owner,
        })
    }

    /// Opens a GGUF file, reads its header, and checks that every tensor's data lies inside the file.
    pub fn open_gguf(path: &Path) -> Result<Self> {
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let content = gguf_file::Content::read(&mut f).map_err(|e| {
            let found = match e {
                candle_core::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    format!("the file ends after {size} bytes, inside the header (truncated?)")
                }
                e => format!("{e} (file of {size} bytes)"),
            };
            Error::format(
                path,
                "(header)",
                "a GGUF header: magic `GGUF`, version, metadata and tensor directory",
                found,
            )
        })?;
        if let Some((end, name)) = tensor_data_end(&content) {
            if end > size {
                return Err(Error::format(
                    path,
                    "(tensor data)",
                    format!("tensor data up to byte {end} (end of tensor `{name}`)"),
                    format!("a file of {size} bytes (truncated?)"),
                ));
            }
        }
        Ok(WeightSource::Gguf {
            path: path.to_path_buf(),
            content: Box::new(content),
        })
    }

    /// The file this source reads (the first shard for sharded safetensors).
    pub fn path(&self) -> &Path {
        match self {
            WeightSource::Safetensors { paths, .. } => &paths[0],
            WeightSource::Gguf { path, .. } => path,
            WeightSource::Overlay { base, .. } => base.path(),
        }
    }

    /// `base` with the tensors of `top` replacing its own; every tensor of `top` must exist in
    /// `base` (a file of another model's weights is refused).
    pub fn overlay(base: WeightSource, top: WeightSource) -> Result<Self> {
        if let Some(extra) = top.names().into_iter().find(|n| !base.has(n)) {
            return Err(Error::Mismatch(format!(
                "{}: tensor `{extra}` is not a tensor of the base model {}",
                top.path().display(),
                base.path().display()
            )));
        }
        Ok(WeightSource::Overlay {
            base: Box::new(base),
            top: Box::new(top),
        })
    }

    fn source_name(&self, hf: &str) -> Option<String> {
        match self {
            WeightSource::Safetensors { owner, .. } => std::iter::once(hf.to_string())
                .chain(language_model_names(hf))
                .find(|n| owner.contains_key(n)),
            WeightSource::Gguf { content, .. } => gguf_name(hf, sandwich_norms(content))
                .filter(|n| content.tensor_infos.contains_key(n)),
            WeightSource::Overlay { base, top } => top.source_name(hf).or(base.source_name(hf)),
        }
    }

    /// The error for an absent tensor: its name as stored, and the file(s) searched.
    fn missing_tensor(&self, hf: &str) -> Error {
        match self {
            WeightSource::Safetensors { paths, .. } if paths.len() > 1 => Error::missing(
                &paths[0],
                format!(
                    "tensor `{hf}` (in none of the {} safetensors shards)",
                    paths.len()
                ),
            ),
            WeightSource::Safetensors { paths, .. } => {
                Error::missing(&paths[0], format!("tensor `{hf}`"))
            }
            WeightSource::Gguf { path, content } => match gguf_name(hf, sandwich_norms(content)) {
                Some(g) => Error::missing(path, format!("tensor `{g}` (Hugging Face `{hf}`)")),
                None => Error::missing(
                    path,
                    format!("tensor `{hf}` (it has no llama.cpp name; GGUF files must use the llama or gemma3 layout)"),
                ),
            },
            WeightSource::Overlay { base, .. } => base.missing_tensor(hf),
        }
    }

    /// Whether the tensor `hf` exists.
    pub fn has(&self, hf: &str) -> bool {
        self.source_name(hf).is_some()
    }

    /// Names of all tensors, as stored.
    pub fn names(&self) -> Vec<String> {
        match self {
            WeightSource::Safetensors { owner, .. } => owner.keys().cloned().collect(),
            WeightSource::Gguf { content, .. } => content.tensor_infos.keys().cloned().collect(),
            WeightSource::Overlay { base, .. } => base.names(),
        }
    }

    /// Loads `hf` as f32 and checks its shape.
    pub fn tensor(&self, hf: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        if let WeightSource::Overlay { base, top } = self {
            return match top.has(hf) {
                true => top.tensor(hf, shape, device),
                false => base.tensor(hf, shape, device),
            };
        }
        let name = self
            .source_name(hf)
            .ok_or_else(|| self.missing_tensor(hf))?;
        let (t, file) = match self {
            WeightSource::Safetensors { st, owner, .. } => {
                let file = owner[&name].clone();
                let t = st
                    .load(&name, device)
                    .map_err(|e| Error::format(&file, &name, "a readable tensor", e.to_string()))?;
                (t, file)
            }
            WeightSource::Gguf { path, .. } => {
                let q = self.qtensor_by_name(&name, device)?;
                let t = q.dequantize(device).map_err(|e| {
                    Error::format(path, &name, "a dequantisable tensor", e.to_string())
                })?;
                (t, path.clone())
            }
            WeightSource::Overlay { .. } => unreachable!("overlays return above"),
        };
        if t.dims() != shape {
            return Err(Error::format(
                file,
                name,
                format!("shape {shape:?}"),
                format!("shape {:?}", t.dims()),
            ));
        }
        let t = t.to_dtype(DType::F32)?;
        check_finite(&t, &file, &name)?;
        Ok(t)
    }

    /// The quantised tensor `hf` as stored in a GGUF file (`None` for safetensors or absent names).
    pub fn qtensor(&self, hf: &str, device: &Device) -> Result<Option<QTensor>> {
        if let WeightSource::Overlay { base, top } = self {
            // A replaced tensor has no quantised copy: the base's would be the old weights.
            return match top.has(hf) {
                true => Ok(None),
                false => base.qtensor(hf, device),
            };
        }
        match (self, self.source_name(hf)) {
            (WeightSource::Gguf { .. }, Some(name)) => {
                self.qtensor_by_name(&name, device).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn qtensor_by_name(&self, name: &str, device: &Device) -> Result<QTensor> {
        let WeightSource::Gguf { path, content } = self else {
            return Err(Error::Unsupported("quantised tensors outside GGUF".into()));
        };
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        content.tensor(&mut f, name, device).map_err(|e| {
            Error::format(
                path,
                name,
                "tensor data inside the file",
                format!("{e} (truncated or corrupt file?)"),
            )
        })
    }
}

/// The byte where the last tensor's data ends, and that tensor's name (`None` without tensors).
fn tensor_data_end(content: &gguf_file::Content) -> Option<(u64, &str)> {
    content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let dtype = info.ggml_dtype;
            let bytes = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
            let end = content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(bytes as u64);
            (end, name.as_str())
        })
        .max()
}

/// Errors, naming the tensor and its file, if the f32 tensor `t` holds a NaN or an infinity; such a
/// weight would otherwise surface much later as NaN logits with no culprit named.
fn check_finite(t: &Tensor, file: &Path, name: &str) -> Result<()> {
    let finite = if t.device().is_cpu() && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            unreachable!("a CPU tensor has CPU storage")
        };
        let all = cpu.as_slice::<f32>()?;
        all_finite(&all[layout.start_offset()..layout.start_offset() + t.elem_count()])
    } else {
        // 0 * x is 0 for finite x and NaN otherwise, so the sum is NaN exactly when one is not finite.
        let sum = (t * 0.0)?.sum_all()?.to_scalar::<f32>()?;
        !sum.is_nan()
    };
    if finite {
        Ok(())
    } else {
        Err(Error::format(
            file,
            name,
            "finite weights",
            "NaN or infinite values (corrupt or badly converted checkpoint)",
        ))
    }
}

/// Whether every value is finite: adding one to the exponent field carries into the sign bit exactly
/// when the exponent is all ones (NaN or infinity). One branch-free pass, fast even in dev builds.
fn all_finite(xs: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    const EXPONENT_ONE: u32 = 0x0080_0000;
    const SIGN: u32 = 0x8000_0000;
    let carries = xs.iter().fold(0u32, |acc, x| {
        acc | ((x.to_bits() & EXPONENT).wrapping_add(EXPONENT_ONE) & SIGN)
    });
    carries == 0
}
