//! What a run trains: LoRA factors attached to the model's maps (PEFT's initialisation: `A` uniform
//! in ±1/√in, as `kaiming_uniform_(a=√5)` gives, `B` zero), or every weight of the model.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::data::rng::SplitMix64;
use crate::model::{Adapter, AdapterConfig, AdapterMode, Model};
use crate::{Error, Result};

/// A LoRA configuration, as PEFT's `LoraConfig` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Rank `r`.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`.
    pub dropout: f32,
    /// Short names of the maps to adapt (`q_proj`, `v_proj`, …).
    pub targets: Vec<String>,
    /// rsLoRA scaling (`alpha / sqrt(r)`).
    pub use_rslora: bool,
}

impl LoraSpec {
    /// Rank `rank`, alpha `alpha`, no dropout, every projection of a Llama-style block.
    pub fn all_projections(rank: usize, alpha: f64) -> Self {
        LoraSpec {
            rank,
            alpha,
            dropout: 0.0,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
            use_rslora: false,
        }
    }

    /// The scale `alpha / r` (rsLoRA: `alpha / sqrt(r)`).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Checks ranges, naming the option at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, allowed: &str| Error::OutOfRange {
            field: field.into(),
            value,
            allowed: allowed.into(),
        };
        if self.rank == 0 {
            return Err(bad("--lora-rank", "0".into(), "at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(bad(
                "--lora-alpha",
                self.alpha.to_string(),
                "a positive number",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad(
                "--lora-dropout",
                self.dropout.to_string(),
                "0 <= p < 1",
            ));
        }
        if self.targets.is_empty() {
            return Err(bad(
                "--lora-targets",
                "(none)".into(),
                "at least one module name",
            ));
        }
        Ok(())
    }
}

/// What is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every weight of the model.
    Full,
    /// LoRA factors only; the model stays frozen.
    Lora(LoraSpec),
    /// These weights only (dsg's names, as [`Model::full_parameters`] gives them:
    /// `blocks.5.mlp.down.weight`); the rest stays frozen.
    Weights(Vec<String>),
}

/// The trained parameters as (name, variable, decays?): PEFT tensor names for LoRA.
pub(super) fn attach(
    model: &mut Model,
    method: &Method,
    seed: u64,
) -> Result<Vec<(String, Var, bool)>> {
    match method {
        Method::Full => model.full_parameters(),
        Method::Weights(names) => {
            let params = model.parameters_where(&|n| names.iter().any(|k| k == n))?;
            if let Some(missing) = names
                .iter()
                .find(|k| !params.iter().any(|(n, _, _)| n == *k))
            {
                return Err(Error::OutOfRange {
                    field: "trained weight".into(),
                    value: missing.clone(),
                    allowed: "a weight of this model (e.g. blocks.0.mlp.down.weight)".into(),
                });
            }
            Ok(params)
        }
        Method::Lora(spec) => {
            spec.validate()?;
            let modules = model.lora_modules(&spec.targets)?;
            let mut rng = SplitMix64::new(seed);
            let dev = model.device().clone();
            let mut out = Vec::with_capacity(2 * modules.len());
            for m in modules {
                let (rows, inputs) = model.lora_dims(&m)?;
                let bound = 1.0 / (inputs as f64).sqrt();
                let a: Vec<f32> = (0..spec.rank * inputs)
                    .map(|_| {
                        ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * bound
                    })
                    .map(|v| v as f32)
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (spec.rank, inputs), &dev)?)?;
                let b = Var::from_tensor(&Tensor::zeros(
                    (rows, spec.rank),
                    candle_core::DType::F32,
                    &dev,
                )?)?;
                model.attach_lora(
                    &m,
                    a.as_tensor().clone(),
                    b.as_tensor().clone(),
                    spec.scale(),
                    spec.dropout,
                    AdapterMode::OnTheFly,
                )?;
                out.push((format!("base_model.model.{m}.lora_A.weight"), a, true));
                out.push((format!("base_model.model.{m}.lora_B.weight"), b, true));
            }
            Ok(out)
        }
    }
}

/// The PEFT adapter holding the current values of LoRA parameters `params` (from [`attach`]).
pub(super) fn to_adapter(
    spec: &LoraSpec,
    params: &[(String, &Var)],
    base_model: &str,
) -> Result<Adapter> {
    let mut modules: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (name, var) in params {
        let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
        let t = var.as_tensor().detach().copy()?;
        if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            modules.entry(m.to_string()).or_default().0 = Some(t);
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            modules.entry(m.to_string()).or_default().1 = Some(t);
        }
    }
    let modules = modules
        .into_iter()
        .map(|(m, (a, b))| match (a, b) {
            (Some(a), Some(b)) => Ok((m, (a, b))),
            _ => Err(Error::Invalid(format!("LoRA module `{m}` lacks A or B"))),
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(Adapter {
        config: AdapterConfig {
            peft_type: "LORA".into(),
            r: spec.rank,
            lora_alpha: spec.alpha,
            lora_dropout: spec.dropout,
            target_modules: spec.targets.clone(),
            use_rslora: spec.use_rslora,
            bias: "none".into(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: Some(base_model.to_string()),
            task_type: Some("CAUSAL_LM".into()),
            fan_in_fan_out: false,
        },
        modules,
    })
}
