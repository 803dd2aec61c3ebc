//! LoRA adapters in PEFT's format: a folder with `adapter_config.json` and `adapter_model.safetensors`,
//! tensors named `base_model.model.<module>.lora_A.weight` (r, in) and `….lora_B.weight` (out, r), where
//! `<module>` is the Hugging Face module path (`model.layers.3.self_attn.q_proj`). dsg writes this format
//! when it trains and reads it, so adapters made with `peft` work on the architectures dsg runs.
//!
//! An adapter is applied on the fly (the default: the base weights, quantised ones included, stay as they
//! are and each targeted map adds `scale·x·Aᵀ·Bᵀ`) or merged into the f32 weights.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::Positions;
use super::decoder::Model;
use super::layers::Linear;
use super::lora::LoraPart;
use crate::{Error, Result};

/// PEFT's prefix of every tensor name in `adapter_model.safetensors`.
const PEFT_PREFIX: &str = "base_model.model.";
/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's tensor file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The fields of PEFT's `adapter_config.json` that decide how a LoRA adapter is applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterConfig {
    /// Always `LORA`.
    pub peft_type: String,
    /// Rank (every module's; `rank_pattern` overrides are read from the tensor shapes).
    pub r: usize,
    /// Scaling numerator.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    #[serde(default)]
    pub lora_dropout: f32,
    /// Module names the adapter targets (`q_proj`, `v_proj`, …).
    pub target_modules: Vec<String>,
    /// rsLoRA: scale `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// `none` (adapters that also train biases are not supported).
    #[serde(default = "bias_none")]
    pub bias: String,
    /// Per-module alpha overrides, keyed by a module-name suffix.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// The base model's name or path, as written by whoever trained the adapter.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT's task type (`CAUSAL_LM`).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Conv1D-style weights (GPT-2); LoRA factors keep PEFT's (r, in) and (out, r) shapes either way.
    #[serde(default)]
    pub fan_in_fan_out: bool,
}

fn bias_none() -> String {
    "none".into()
}

/// A LoRA adapter: its configuration and, per module path, its `A` (r, in) and `B` (out, r).
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The configuration.
    pub config: AdapterConfig,
    /// Module path → (A, B).
    pub modules: BTreeMap<String, (Tensor, Tensor)>,
}

/// How [`Model::apply_adapter`] applies an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterMode {
    /// Kept apart: each targeted map adds its low-rank update at run time (base weights untouched).
    #[default]
    OnTheFly,
    /// Added into the f32 weights (quantised copies re-quantised to Q8_0).
    Merged,
}

impl Adapter {
    /// Reads a PEFT LoRA adapter folder, checking the configuration, every tensor's name, shape and
    /// values before anything is applied.
    pub fn load(dir: &Path, device: &Device) -> Result<Adapter> {
        let cfg_path = dir.join(CONFIG_FILE);
        if !dir.is_dir() {
            return Err(Error::missing(
                dir,
                format!("adapter folder (with {CONFIG_FILE} and {WEIGHTS_FILE})"),
            ));
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&cfg_path, "(root)", "valid JSON", e.to_string()))?;
        let config = parse_config(&value, &cfg_path)?;
        let w_path = dir.join(WEIGHTS_FILE);
        if !w_path.is_file() {
            return Err(Error::missing(dir, WEIGHTS_FILE));
        }
        let tensors = candle_core::safetensors::load(&w_path, device)
            .map_err(|e| Error::format(&w_path, "(file)", "a safetensors file", e.to_string()))?;
        let modules = pair_tensors(tensors, &w_path)?;
        Ok(Adapter { config, modules })
    }

    /// Writes the adapter as PEFT does (the folder is created; existing adapter files are replaced).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg_path = dir.join(CONFIG_FILE);
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|e| Error::Invalid(format!("adapter config does not serialise: {e}")))?;
        std::fs::write(&cfg_path, json + "\n").map_err(|e| Error::io(&cfg_path, e))?;
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.modules.len());
        for (m, (a, b)) in &self.modules {
            let cpu = |t: &Tensor| -> Result<Tensor> {
                Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
            };
            named.push((format!("{PEFT_PREFIX}{m}.lora_A.weight"), cpu(a)?));
            named.push((format!("{PEFT_PREFIX}{m}.lora_B.weight"), cpu(b)?));
        }
        let w_path = dir.join(WEIGHTS_FILE);
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        safetensors::serialize_to_file(
            named.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta),
            &w_path,
        )
        .map_err(|e| Error::io(&w_path, std::io::Error::other(e)))
    }

    /// The scale of `module`'s update: `alpha / r` (rsLoRA: `alpha / sqrt(r)`), with `alpha_pattern`.
    pub fn scale(&self, module: &str, rank: usize) -> f64 {
        let alpha = self
            .config
            .alpha_pattern
            .iter()
            .find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
            .map(|(_, a)| *a)
            .unwrap_or(self.config.lora_alpha);
        if self.config.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }
}

/// Checks `adapter_config.json`: a LoRA adapter without options dsg cannot honour.
fn parse_config(value: &Value, path: &Path) -> Result<AdapterConfig> {
    let refuse = |key: &str, why: &str| -> Result<()> {
        let set = match value.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(Error::Unsupported(format!(
                "{}: `{key}` is set ({why})",
                path.display()
            )));
        }
        Ok(())
    };
    refuse("use_dora", "DoRA adapters are not supported")?;
    refuse(
        "modules_to_save",
        "fully trained extra modules are not supported",
    )?;
    refuse("layers_to_transform", "give target modules instead")?;
    if let Some(Value::String(s)) = value.get("target_modules") {
        return Err(Error::format(
            path,
            "target_modules",
            "a list of module names",
            format!("the pattern {s:?}"),
        ));
    }
    let config: AdapterConfig = serde_json::from_value(value.clone())
        .map_err(|e| Error::format(path, "(root)", "a PEFT LoRA adapter config", e.to_string()))?;
    if config.peft_type != "LORA" {
        return Err(Error::format(path, "peft_type", "LORA", &config.peft_type));
    }
    if config.bias != "none" {
        return Err(Error::format(path, "bias", "none", &config.bias));
    }
    if config.r == 0 || !config.lora_alpha.is_finite() {
        return Err(Error::format(
            path,
            "r, lora_alpha",
            "a positive rank and a finite alpha",
            format!("r = {}, lora_alpha = {}", config.r, config.lora_alpha),
        ));
    }
    Ok(config)
}

/// Groups `…<module>.lora_A.weight` / `lora_B.weight` into (A, B) per module, checking shapes and values.
fn pair_tensors(
    tensors: HashMap<String, Tensor>,
    path: &Path,
) -> Result<BTreeMap<String, (Tensor, Tensor)>> {
    let mut a_of = BTreeMap::new();
    let mut b_of = BTreeMap::new();
    for (name, t) in tensors {
        let rest = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name);
        let (module, kind) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, 'A')
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, 'B')
        } else {
            return Err(Error::format(
                path,
                &name,
                "only `<module>.lora_A.weight` and `<module>.lora_B.weight` tensors",
                "another tensor",
            ));
        };
        let t = t.to_dtype(DType::F32)?;
        if t.rank() != 2 {
            return Err(Error::format(
                path,
                &name,
                "a matrix",
                format!("shape {:?}", t.dims()),
            ));
        }
        let finite = t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(Error::format(
                path,
                &name,
                "finite values",
                "NaN or infinity",
            ));
        }
        let module = module.to_string();
        if kind == 'A' {
            a_of.insert(module, (name, t))
        } else {
            b_of.insert(module, (name, t))
        };
    }
    let mut modules = BTreeMap::new();
    for (module, (a_name, a)) in a_of {
        let Some((b_name, b)) = b_of.remove(&module) else {
            return Err(Error::missing(
                path,
                format!("tensor `{PEFT_PREFIX}{module}.lora_B.weight`"),
            ));
        };
        let (ra, rb) = (a.dim(0)?, b.dim(1)?);
        if ra != rb || ra == 0 {
            return Err(Error::format(
                path,
                format!("{a_name} / {b_name}"),
                "A (r, in) and B (out, r) with the same rank",
                format!("A {:?}, B {:?}", a.dims(), b.dims()),
            ));
        }
        modules.insert(module, (a, b));
    }
    if let Some(module) = b_of.keys().next() {
        return Err(Error::missing(
            path,
            format!("tensor `{PEFT_PREFIX}{module}.lora_A.weight`"),
        ));
    }
    if modules.is_empty() {
        return Err(Error::format(
            path,
            "(tensors)",
            "at least one LoRA module",
            "none",
        ));
    }
    Ok(modules)
}

/// Where a module path's map lives in dsg's decoder: the map and the range of its outputs.
pub(super) struct ModuleSite<'a> {
    pub(super) linear: &'a mut Linear,
    pub(super) rows: std::ops::Range<usize>,
}

impl Model {
    /// The module paths (PEFT's names) of every map whose short name is in `targets` (`q_proj`,
    /// `down_proj`, GPT-2's `c_attn`…), in layer order. Errors if a target names no map of this model.
    pub fn lora_modules(&self, targets: &[String]) -> Result<Vec<String>> {
        let names = self.module_names();
        for t in targets {
            if !names
                .iter()
                .any(|n| n.rsplit('.').next() == Some(t.as_str()))
            {
                let mut known: Vec<&str> = Vec::new();
                for short in names.iter().filter_map(|n| n.rsplit('.').next()) {
                    if !known.contains(&short) {
                        known.push(short);
                    }
                }
                return Err(Error::OutOfRange {
                    field: "LoRA target module".into(),
                    value: t.clone(),
                    allowed: format!("one of this model's maps: {}", known.join(", ")),
                });
            }
        }
        Ok(names
            .into_iter()
            .filter(|n| {
                targets
                    .iter()
                    .any(|t| n.rsplit('.').next() == Some(t.as_str()))
            })
            .collect())
    }

    /// Every map LoRA can target, as PEFT names it.
    fn module_names(&self) -> Vec<String> {
        let gpt2 = self.cfg.positions == Positions::Learned;
        let short: &[&str] = if gpt2 {
            &["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
        } else {
            &[
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ]
        };
        let base = if gpt2 {
            "transformer.h"
        } else {
            "model.layers"
        };
        (0..self.cfg.n_layers)
            .flat_map(|i| short.iter().map(move |s| format!("{base}.{i}.{s}")))
            .collect()
    }

    /// The map `module` (a PEFT module path) names, and which of its outputs are that module's.
    pub(super) fn module_site(&mut self, module: &str) -> Result<ModuleSite<'_>> {
        let unknown = || {
            Error::Unsupported(format!(
                "LoRA on module `{module}`: dsg applies LoRA to the attention and MLP projections \
                 of its decoder blocks only"
            ))
        };
        let gpt2 = self.cfg.positions == Positions::Learned;
        let rest = if gpt2 {
            module
                .strip_prefix("transformer.h.")
                .or_else(|| module.strip_prefix("h."))
        } else {
            module.strip_prefix("model.layers.")
        }
        .ok_or_else(unknown)?;
        let (layer, name) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        let n_layers = self.cfg.n_layers;
        if layer >= n_layers {
            return Err(Error::Mismatch(format!(
                "LoRA module `{module}` is in block {layer}, but the model has {n_layers} blocks"
            )));
        }
        let (hd, nh, nkv, dff) = (
            self.cfg.head_dim,
            self.cfg.n_heads,
            self.cfg.n_kv_heads,
            self.cfg.d_ff,
        );
        let (qd, kvd) = (nh * hd, nkv * hd);
        let block = &mut self.blocks[layer];
        let (linear, rows) = match (gpt2, name) {
            (false, "self_attn.q_proj") => (&mut block.attn.qkv, 0..qd),
            (false, "self_attn.k_proj") => (&mut block.attn.qkv, qd..qd + kvd),
            (false, "self_attn.v_proj") => (&mut block.attn.qkv, qd + kvd..qd + 2 * kvd),
            (false, "self_attn.o_proj") | (true, "attn.c_proj") => {
                let out = block.attn.o.dims()?.0;
                (&mut block.attn.o, 0..out)
            }
            (false, "mlp.gate_proj") => (&mut block.mlp.up, 0..dff),
            (false, "mlp.up_proj") => (&mut block.mlp.up, dff..2 * dff),
            (false, "mlp.down_proj") | (true, "mlp.c_proj") => {
                let out = block.mlp.down.dims()?.0;
                (&mut block.mlp.down, 0..out)
            }
            (true, "attn.c_attn") => {
                let out = block.attn.qkv.dims()?.0;
                (&mut block.attn.qkv, 0..out)
            }
            (true, "mlp.c_fc") => {
                let out = block.mlp.up.dims()?.0;
                (&mut block.mlp.up, 0..out)
            }
            _ => return Err(unknown()),
        };
        Ok(ModuleSite { linear, rows })
    }

    /// Attaches one low-rank update (A (r, in), B (out, r)) to `module`, after checking its shapes.
    pub(crate) fn attach_lora(
        &mut self,
        module: &str,
        a: Tensor,
        b: Tensor,
        scale: f64,
        dropout: f32,
        mode: AdapterMode,
    ) -> Result<()> {
        let rng = self.lora_rng.clone();
        let site = self.module_site(module)?;
        let (_, in_dim) = site.linear.dims()?;
        let (ra, ia) = a.dims2()?;
        let (ob, rb) = b.dims2()?;
        if ia != in_dim || ob != site.rows.len() || ra != rb {
            return Err(Error::Mismatch(format!(
                "LoRA module `{module}`: A {:?} and B {:?} do not fit a map of {} outputs and {in_dim} \
                 inputs",
                a.dims(),
                b.dims(),
                site.rows.len()
            )));
        }
        let part = LoraPart {
            rows: site.rows,
            a,
            b,
            scale,
            dropout,
            rng,
        };
        match mode {
            AdapterMode::OnTheFly => site.linear.lora.push(part),
            AdapterMode::Merged => site.linear.merge(&part)?,
        }
        Ok(())
    }

    /// Applies `adapter` to the model, every module checked before any is changed.
    pub fn apply_adapter(&mut self, adapter: &Adapter, mode: AdapterMode) -> Result<()> {
        for (module, (a, b)) in &adapter.modules {
            let site = self.module_site(module)?;
            let (_, in_dim) = site.linear.dims()?;
            if a.dim(1)? != in_dim || b.dim(0)? != site.rows.len() {
                return Err(Error::Mismatch(format!(
                    "adapter module `{module}` has A {:?} and B {:?}, but this model's map has {} \
                     outputs and {in_dim} inputs (an adapter for another model?)",
                    a.dims(),
                    b.dims(),
                    site.rows.len()
                )));
            }
        }
        let device = self.device().clone();
        for (module, (a, b)) in &adapter.modules {
            let scale = adapter.scale(module, a.dim(0)?);
            let (a, b) = (a.to_device(&device)?, b.to_device(&device)?);
            self.attach_lora(module, a, b, scale, adapter.config.lora_dropout, mode)?;
        }
        Ok(())
    }
}

impl Model {
    /// The (outputs, inputs) of the part of a map that `module` names, as LoRA's B and A see it.
    pub fn lora_dims(&mut self, module: &str) -> Result<(usize, usize)> {
        let site = self.module_site(module)?;
        Ok((site.rows.len(), site.linear.dims()?.1))
    }

    /// Removes every LoRA update applied on the fly (merged ones stay in the weights).
    pub fn clear_lora(&mut self) {
        for b in &mut self.blocks {
            for l in [
                &mut b.attn.qkv,
                &mut b.attn.o,
                &mut b.mlp.up,
                &mut b.mlp.down,
            ] {
                l.lora.clear();
            }
        }
    }
}
