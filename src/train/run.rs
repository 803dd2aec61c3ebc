//! The training loop: micro-batches in a seeded order, the loss averaged over every target token of
//! an optimiser step (gradient accumulation weighs tokens, not micro-batches), global-norm clipping,
//! AdamW under a warm-up schedule, and checkpoints from which a run resumes exactly.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::examples::{batch_nll, check_examples, epoch_order, row_nll, Example};
use super::objective::{npo_forget_term, Objective};
use super::optim::{clip_grad_norm, AdamW, AdamWConfig};
use super::params::{attach, to_adapter, Method};
use super::rmu;
use super::schedule::{lr_multiplier, Decay};
use crate::model::{Adapter, Execution, Hooks, Model};
use crate::{Error, Result};

/// A training run's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// What is trained.
    pub method: Method,
    /// Passes over the examples.
    pub epochs: usize,
    /// Stop after this many optimiser steps, if fewer than the epochs give.
    pub max_steps: Option<usize>,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps (linear from 0).
    pub warmup_steps: usize,
    /// Decay after warm-up.
    pub decay: Decay,
    /// AdamW's β, ε and weight decay.
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Seed of the data order, the LoRA initialisation and dropout.
    pub seed: u64,
    /// What is minimised (fine-tuning NLL unless an unlearning objective is chosen).
    #[serde(default, skip_serializing_if = "Objective::is_nll")]
    pub objective: Objective,
}

impl TrainConfig {
    /// Checks every option's range, naming the option at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, allowed: &str| Error::OutOfRange {
            field: field.into(),
            value,
            allowed: allowed.into(),
        };
        if self.epochs == 0 {
            return Err(bad("--epochs", "0".into(), "at least 1"));
        }
        if self.batch_size == 0 {
            return Err(bad("--batch-size", "0".into(), "at least 1"));
        }
        if self.grad_accum == 0 {
            return Err(bad("--grad-accum", "0".into(), "at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("--lr", self.lr.to_string(), "a positive number"));
        }
        let wd = self.adamw.weight_decay;
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(bad(
                "--weight-decay",
                wd.to_string(),
                "a non-negative number",
            ));
        }
        if let Some(c) = self.max_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(bad("--max-grad-norm", c.to_string(), "a positive number"));
            }
        }
        if self.max_steps == Some(0) {
            return Err(bad("--max-steps", "0".into(), "at least 1"));
        }
        if let Method::Lora(spec) = &self.method {
            spec.validate()?;
        }
        self.objective.validate()
    }

    /// Optimiser steps in one epoch over `n` examples.
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size * self.grad_accum)
    }

    /// Optimiser steps of the whole run over `n` examples.
    pub fn total_steps(&self, n: usize) -> usize {
        let all = self.epochs * self.steps_per_epoch(n);
        self.max_steps.map_or(all, |m| m.min(all))
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Step index (0-based).
    pub step: usize,
    /// Epoch it belongs to.
    pub epoch: usize,
    /// The step's objective (for fine-tuning, the mean NLL per target token).
    pub loss: f64,
    /// Mean NLL per target token of the step's (forget, for unlearning) examples.
    pub nll: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens.
    pub target_tokens: usize,
    /// Tokens run through the model (padding excluded).
    pub tokens: usize,
    /// Wall time of the step.
    pub seconds: f64,
}

/// A run in progress: the configuration, the trained parameters with AdamW's state, and the step.
pub struct Trainer {
    cfg: TrainConfig,
    opt: AdamW,
    step: usize,
    data_sha: String,
    /// Retain examples of an unlearning objective.
    retain: Vec<Example>,
    /// Each example's summed NLL under the model before training (NPO's reference).
    reference: Vec<f64>,
    /// RMU's scaled control vector (d) and the frozen retain activations.
    rmu: Option<(Tensor, Vec<Tensor>)>,
    /// Every step's log so far.
    pub log: Vec<StepLog>,
}

/// What a checkpoint's `state.json` holds.
#[derive(Serialize, Deserialize)]
struct CheckpointState {
    config: TrainConfig,
    step: usize,
    data_sha256: String,
    log: Vec<StepLog>,
}

/// sha256 of the examples (ids and loss starts), so a run resumes only on the data it began with.
fn examples_sha(examples: &[Example], retain: &[Example]) -> String {
    let mut h = Sha256::new();
    for e in examples.iter().chain(retain) {
        h.update((e.ids.len() as u64).to_le_bytes());
        h.update((e.loss_from as u64).to_le_bytes());
        for t in &e.ids {
            h.update(t.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

impl Trainer {
    /// Starts a run on `model` (LoRA factors are attached to it, or its weights made trainable) over
    /// `examples`, which are checked first.
    pub fn new(model: &mut Model, cfg: TrainConfig, examples: &[Example]) -> Result<Self> {
        Trainer::unlearn(model, cfg, examples, &[])
    }

    /// Starts a run whose objective may read a retain set besides `examples` (the forget set of an
    /// unlearning objective); NPO's reference NLLs are computed here, on the model as given.
    pub fn unlearn(
        model: &mut Model,
        cfg: TrainConfig,
        examples: &[Example],
        retain: &[Example],
    ) -> Result<Self> {
        cfg.validate()?;
        check_examples(examples, model.config().max_positions)?;
        if cfg.objective.uses_retain() {
            check_examples(retain, model.config().max_positions).map_err(|e| {
                Error::Invalid(format!(
                    "the {:?} objective needs retain examples: {e}",
                    cfg.objective
                ))
            })?;
        }
        let reference = if cfg.objective.uses_reference() {
            let mut out = Vec::with_capacity(examples.len());
            for chunk in examples.chunks(cfg.batch_size) {
                let refs: Vec<&Example> = chunk.iter().collect();
                let r = row_nll(model, &refs, &mut crate::model::NoHooks)?;
                out.extend(r.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?);
            }
            out
        } else {
            Vec::new()
        };
        let rmu = match cfg.objective {
            Objective::Rmu {
                layer,
                steering,
                adaptive,
                ..
            } => {
                if layer >= model.config().n_layers {
                    return Err(Error::OutOfRange {
                        field: "--rmu-layer".into(),
                        value: layer.to_string(),
                        allowed: format!("a block below {}", model.config().n_layers),
                    });
                }
                let c = if adaptive {
                    let forget = rmu::frozen_residuals(model, examples, layer, cfg.batch_size)?;
                    steering * rmu::mean_norm(&forget)?
                } else {
                    steering
                };
                let u = rmu::control_direction(model.config().d_model, cfg.seed);
                let control = (Tensor::new(u, model.device())? * c)?;
                let frozen = rmu::frozen_residuals(model, retain, layer, cfg.batch_size)?;
                Some((control, frozen))
            }
            _ => None,
        };
        let params = attach(model, &cfg.method, cfg.seed)?;
        let opt = AdamW::new(cfg.adamw, params)?;
        Ok(Trainer {
            cfg,
            opt,
            step: 0,
            data_sha: examples_sha(examples, retain),
            retain: retain.to_vec(),
            reference,
            rmu,
            log: Vec::new(),
        })
    }

    /// Continues the run saved in `dir` on a freshly loaded `model` and the same `examples`.
    pub fn resume(model: &mut Model, dir: &Path, examples: &[Example]) -> Result<Self> {
        Trainer::resume_unlearning(model, dir, examples, &[])
    }

    /// [`Trainer::resume`] for a run started with [`Trainer::unlearn`] (the same retain examples).
    pub fn resume_unlearning(
        model: &mut Model,
        dir: &Path,
        examples: &[Example],
        retain: &[Example],
    ) -> Result<Self> {
        let json = dir.join("state.json");
        let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
        let state: CheckpointState = serde_json::from_str(&text).map_err(|e| {
            Error::format(&json, "(root)", "a dsg training checkpoint", e.to_string())
        })?;
        let mut t = Trainer::unlearn(model, state.config, examples, retain)?;
        if t.data_sha != state.data_sha256 {
            return Err(Error::Mismatch(format!(
                "{}: the checkpoint was trained on other examples (sha256 {}, these are {})",
                json.display(),
                state.data_sha256,
                t.data_sha
            )));
        }
        let st = dir.join("trainer.safetensors");
        let mut tensors = candle_core::safetensors::load(&st, model.device())
            .map_err(|e| Error::format(&st, "(file)", "a safetensors file", e.to_string()))?;
        for slot in &t.opt.slots {
            let v = tensors
                .remove(&slot.name)
                .ok_or_else(|| Error::missing(&st, format!("tensor `{}`", slot.name)))?;
            if v.dims() != slot.var.dims() {
                return Err(Error::Mismatch(format!(
                    "{}: `{}` has shape {:?}, the model needs {:?}",
                    st.display(),
                    slot.name,
                    v.dims(),
                    slot.var.dims()
                )));
            }
            slot.var.set(&v)?;
        }
        t.opt.restore(state.step, &mut tensors, |k| {
            Error::missing(&st, format!("tensor `{k}`"))
        })?;
        t.step = state.step;
        t.log = state.log;
        Ok(t)
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimiser steps taken.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Writes the parameters, AdamW's moments and the step into `dir` (replacing an earlier
    /// checkpoint there; written to a temporary folder first, so a crash leaves the old one whole).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let tmp = dir.with_extension("partial");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut tensors = self.opt.state_tensors();
        for s in &self.opt.slots {
            tensors.insert(s.name.clone(), s.var.as_tensor().clone());
        }
        let st = tmp.join("trainer.safetensors");
        candle_core::safetensors::save(&tensors, &st)?;
        let state = CheckpointState {
            config: self.cfg.clone(),
            step: self.step,
            data_sha256: self.data_sha.clone(),
            log: self.log.clone(),
        };
        let json = tmp.join("state.json");
        let text = serde_json::to_string_pretty(&state).expect("serialisable");
        std::fs::write(&json, text).map_err(|e| Error::io(&json, e))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
    }

    /// Whether the run has taken all its steps.
    pub fn finished(&self, n_examples: usize) -> bool {
        self.step >= self.cfg.total_steps(n_examples)
    }

    /// One optimiser step over the micro-batches the step's index selects.
    pub fn step(
        &mut self,
        model: &Model,
        examples: &[Example],
        hooks: &mut dyn Hooks,
    ) -> Result<StepLog> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let n = examples.len();
        let spe = cfg.steps_per_epoch(n);
        let (epoch, within) = (self.step / spe, self.step % spe);
        let order = epoch_order(n, cfg.seed, epoch);
        let per_step = cfg.batch_size * cfg.grad_accum;
        let chosen: Vec<usize> =
            order[within * per_step..((within + 1) * per_step).min(n)].to_vec();
        let target_tokens: usize = chosen.iter().map(|&i| examples[i].target_count()).sum();
        let mut tokens: usize = chosen.iter().map(|&i| examples[i].ids.len()).sum();
        let forget_tokens = tokens;
        model.set_lora_dropout_seed(Some(
            cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ self.step as u64,
        ));
        let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.slots.len()];
        let (mut loss_sum, mut nll_sum) = (0f64, 0f64);
        let scalar =
            |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        let backward = |loss: Tensor, grads: &mut Vec<Option<Tensor>>| -> Result<f64> {
            let store = loss.backward()?;
            for (acc, slot) in grads.iter_mut().zip(&self.opt.slots) {
                if let Some(g) = store.get(slot.var.as_tensor()) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    });
                }
            }
            scalar(&loss)
        };
        for micro in chosen.chunks(cfg.batch_size) {
            let rows: Vec<&Example> = micro.iter().map(|&i| &examples[i]).collect();
            let loss = match cfg.objective {
                Objective::Rmu { layer, .. } => {
                    let (control, _) = self.rmu.as_ref().expect("set for RMU");
                    let (h, mask) = rmu::residual_after(model, &rows, layer)?;
                    let d = h.dim(2)?;
                    let err = rmu::masked_sq_err(&h, control, &mask)?;
                    (err / (forget_tokens * d) as f64)?
                }
                Objective::Npo { beta, gamma, .. } => {
                    let per_row = row_nll(model, &rows, hooks)?;
                    nll_sum += scalar(&per_row.sum_all()?)?;
                    let refs: Vec<f64> = micro.iter().map(|&i| self.reference[i]).collect();
                    npo_forget_term(&per_row, &refs, beta, gamma, chosen.len())?
                }
                objective => {
                    let (nll, _) = batch_nll(model, &rows, hooks)?;
                    nll_sum += scalar(&nll)?;
                    (nll * objective.forget_nll_weight(target_tokens))?
                }
            };
            loss_sum += backward(loss, &mut grads)?;
        }
        if cfg.objective.uses_retain() {
            // The retain set is walked in its own seeded order, per_step examples a step.
            let r = self.retain.len();
            let mut orders: Vec<(usize, Vec<usize>)> = Vec::new();
            let picked: Vec<usize> = (0..per_step)
                .map(|j| {
                    let k = self.step * per_step + j;
                    let epoch = k / r;
                    if orders.last().is_none_or(|(e, _)| *e != epoch) {
                        orders.push((epoch, epoch_order(r, cfg.seed ^ 0xA5A5_A5A5, epoch)));
                    }
                    orders.last().expect("pushed above").1[k % r]
                })
                .collect();
            let retain_tokens: usize = picked.iter().map(|&i| self.retain[i].target_count()).sum();
            let retain_len: usize = picked.iter().map(|&i| self.retain[i].ids.len()).sum();
            tokens += retain_len;
            for micro in picked.chunks(cfg.batch_size) {
                let rows: Vec<&Example> = micro.iter().map(|&i| &self.retain[i]).collect();
                let loss = match (cfg.objective, &self.rmu) {
                    (Objective::Rmu { layer, alpha, .. }, Some((_, frozen))) => {
                        let (h, mask) = rmu::residual_after(model, &rows, layer)?;
                        let (_, len, d) = h.dims3()?;
                        let target = rmu::padded(frozen, micro, len)?;
                        let err = rmu::masked_sq_err(&h, &target, &mask)?;
                        (err * (alpha / (retain_len * d) as f64))?
                    }
                    _ => {
                        let (nll, _) = batch_nll(model, &rows, hooks)?;
                        (nll * cfg.objective.retain_nll_weight(retain_tokens))?
                    }
                };
                loss_sum += backward(loss, &mut grads)?;
            }
        }
        model.set_lora_dropout_seed(None);
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        let total = cfg.total_steps(n);
        let lr = cfg.lr * lr_multiplier(cfg.decay, self.step, cfg.warmup_steps, total);
        self.opt.step(&grads, lr)?;
        let log = StepLog {
            step: self.step,
            epoch,
            loss: loss_sum,
            nll: nll_sum / target_tokens.max(1) as f64,
            lr,
            grad_norm,
            target_tokens,
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.step += 1;
        self.log.push(log.clone());
        Ok(log)
    }

    /// Runs the remaining steps on `model` (set to its differentiable execution for the run),
    /// calling `after_step` after each (progress, checkpoints: return an error to stop).
    pub fn run(
        &mut self,
        model: &mut Model,
        examples: &[Example],
        hooks: &mut dyn Hooks,
        after_step: &mut dyn FnMut(&Trainer, &StepLog) -> Result<()>,
    ) -> Result<()> {
        let previous = model.execution();
        model.set_execution(Execution::Autograd);
        let result = (|| {
            while !self.finished(examples.len()) {
                let log = self.step(model, examples, hooks)?;
                after_step(self, &log)?;
            }
            Ok(())
        })();
        model.set_execution(previous);
        model.sync_trained()?;
        result
    }

    /// The LoRA adapter as trained so far, in PEFT's format (`None` for full fine-tuning).
    pub fn adapter(&self, base_model: &str) -> Result<Option<Adapter>> {
        let Method::Lora(spec) = &self.cfg.method else {
            return Ok(None);
        };
        let params: Vec<(String, &candle_core::Var)> = self
            .opt
            .slots
            .iter()
            .map(|s| (s.name.clone(), &s.var))
            .collect();
        to_adapter(spec, &params, base_model).map(Some)
    }

    /// The trained parameters by name (model weights for full fine-tuning, LoRA factors otherwise).
    pub fn parameters(&self) -> Vec<(&str, &Tensor)> {
        self.opt
            .slots
            .iter()
            .map(|s| (s.name.as_str(), s.var.as_tensor()))
            .collect()
    }
}
