//! A TopK SAE trainer (OpenAI / EleutherAI sparsify recipe) on candle autograd with hand-written
//! Adam, so that the optimiser state can be checkpointed and a run resumed exactly.
//!
//! * `pre = x̃·W_enc + b_enc` with `x̃ = x·s − b_dec`, where `s = √d_in / E‖x‖` is a constant input
//!   scale measured on the first chunk (folded into the weights when the SAE is exported);
//!   `f = TopK_k(pre)` (ReLU'd); `x̂ = f·W_dec + b_dec`.
//! * Loss: `Σ‖x̂−x‖² / Σ‖x−mean(x)‖²` (the batch FVU) + `aux_coef ·` AuxK, where AuxK reconstructs
//!   the (detached) residual `x − x̂` from the top `k_aux` pre-activations of *dead* latents (not
//!   fired for `dead_tokens` tokens), normalised the same way.
//! * `W_dec` rows are kept unit-norm: the gradient's radial component is removed and rows are
//!   renormalised after every step. `b_dec` starts at the mean activation; `W_enc = W_decᵀ`.
//! * Learning rate: linear warm-up, constant, then linear decay to 0 over the last `decay_fraction`
//!   of the steps. Adam β = (0.9, 0.999), ε = 1e-8, no weight decay.
//!
//! Data come from an [`ActivationSource`] in fixed-size chunks; batch `b` of chunk `c` is always the
//! same tokens, so `step` alone says where a run is, and resuming from a checkpoint replays exactly.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};

use super::{sparse_grad, Activation, Normalization, Sae, SaeMeta, SaeParts};
use crate::model::HookPoint;
use crate::{Error, Result};

/// Hyper-parameters of a training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Hook point the activations come from.
    pub hook: HookPoint,
    /// Number of latents.
    pub d_sae: usize,
    /// Active latents per token.
    pub k: usize,
    /// Dead latents used by the AuxK loss (at most).
    pub k_aux: usize,
    /// AuxK coefficient (1/32 in the OpenAI recipe).
    pub aux_coef: f64,
    /// A latent is dead once it has not fired for this many training tokens.
    pub dead_tokens: u64,
    /// Tokens per optimiser step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup_steps: usize,
    /// Fraction of the run over which the learning rate decays linearly to 0 at the end.
    pub decay_fraction: f64,
    /// Training tokens in all (rounded down to whole steps).
    pub total_tokens: u64,
    /// Seed for initialisation and data order.
    pub seed: u64,
}

impl TrainConfig {
    /// Checks every field against its allowed range (each error names the field, the value and
    /// what is allowed); [`Trainer::new`] and [`Trainer::load_checkpoint`] call it before any work.
    pub fn validate(&self) -> Result<()> {
        if self.d_sae == 0 {
            return Err(Error::out_of_range(
                "d_sae (--d-sae)",
                self.d_sae,
                "at least 1",
            ));
        }
        if self.k == 0 || self.k > self.d_sae {
            return Err(Error::out_of_range(
                "k (--k)",
                self.k,
                format!("1..={} (d_sae)", self.d_sae),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::out_of_range(
                "batch_size (--batch-size)",
                0,
                "at least 1",
            ));
        }
        if self.total_tokens < self.batch_size as u64 {
            return Err(Error::out_of_range(
                "total_tokens (--tokens)",
                self.total_tokens,
                format!("at least one batch ({} tokens)", self.batch_size),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::out_of_range(
                "lr (--lr)",
                self.lr,
                "a finite number > 0",
            ));
        }
        if !(self.aux_coef.is_finite() && self.aux_coef >= 0.0) {
            return Err(Error::out_of_range(
                "aux_coef",
                self.aux_coef,
                "a finite number ≥ 0",
            ));
        }
        if self.aux_coef > 0.0 && self.k_aux == 0 {
            return Err(Error::out_of_range(
                "k_aux",
                0,
                "at least 1 when aux_coef > 0",
            ));
        }
        if self.dead_tokens == 0 {
            return Err(Error::out_of_range(
                "dead_tokens (--dead-tokens)",
                0,
                "at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.decay_fraction) {
            return Err(Error::out_of_range(
                "decay_fraction",
                self.decay_fraction,
                "0..=1",
            ));
        }
        Ok(())
    }

    /// The sparsify default learning rate, `2e-4 / √(d_sae / 2¹⁴)`.
    pub fn default_lr(d_sae: usize) -> f64 {
        2e-4 / (d_sae as f64 / 16384.0).sqrt()
    }

    /// Number of optimiser steps in the run.
    pub fn total_steps(&self) -> usize {
        (self.total_tokens / self.batch_size as u64) as usize
    }

    /// The learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let total = self.total_steps().max(1);
        let warm = if self.warmup_steps > 0 {
            ((step + 1) as f64 / self.warmup_steps as f64).min(1.0)
        } else {
            1.0
        };
        let decay_steps = (self.decay_fraction * total as f64).round() as usize;
        let decay_start = total - decay_steps.min(total);
        let decay = if step >= decay_start && decay_steps > 0 {
            (total - step) as f64 / decay_steps as f64
        } else {
            1.0
        };
        self.lr * warm * decay
    }
}

/// Where training activations come from: chunk `index` is a fixed `(chunk_tokens, d_in)` f32
/// tensor, already shuffled; the same index must always give the same rows.
pub trait ActivationSource {
    /// Tokens per chunk (a multiple of the batch size is not required; the tail is unused).
    fn chunk_tokens(&self) -> usize;
    /// The activations of chunk `index`.
    fn chunk(&mut self, index: usize) -> Result<Tensor>;
}

/// Losses and health of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// The step just taken (0-based).
    pub step: usize,
    /// Batch FVU (the main loss).
    pub fvu: f64,
    /// Normalised AuxK loss (0 when no latent is dead).
    pub aux: f64,
    /// Fraction of latents that are dead after this step.
    pub dead_fraction: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// Where the time of [`Trainer::run`] went.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTimes {
    /// Seconds spent producing activation chunks.
    pub source_secs: f64,
    /// Seconds spent in optimiser steps.
    pub step_secs: f64,
    /// Steps taken.
    pub steps: usize,
}

/// One parameter with its Adam moments.
struct Param {
    var: Var,
    m: Tensor,
    v: Tensor,
}

impl Param {
    fn new(t: Tensor) -> Result<Self> {
        Ok(Param {
            m: t.zeros_like()?,
            v: t.zeros_like()?,
            var: Var::from_tensor(&t)?,
        })
    }
}

const NAMES: [&str; 4] = ["w_enc_t", "b_enc", "w_dec", "b_dec"];

/// The state of a training run: weights, Adam moments, step count, per-latent firing clocks.
pub struct Trainer {
    cfg: TrainConfig,
    params: Vec<Param>, // in NAMES order; the encoder is stored transposed, (d_sae, d_in)
    input_scale: f64,
    step: usize,
    since_fired: Vec<u64>,
}

impl Trainer {
    /// A fresh trainer for `d_in`-wide activations. `first` (a sample of activations, e.g. the
    /// first chunk) sets the input scale and `b_dec`'s initial value.
    pub fn new(cfg: TrainConfig, first: &Tensor) -> Result<Self> {
        cfg.validate()?;
        let (_, d_in) = first.dims2()?;
        let dev = first.device();
        let norms = first
            .sqr()?
            .sum(1)?
            .sqrt()?
            .mean_all()?
            .to_scalar::<f32>()? as f64;
        let input_scale = (d_in as f64).sqrt() / norms.max(1e-12);
        let b_dec = (first.mean(0)? * input_scale)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        let gauss: Vec<f32> = (0..cfg.d_sae * d_in)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        let w_dec = unit_rows(&Tensor::from_vec(gauss, (cfg.d_sae, d_in), dev)?)?;
        let b_enc = Tensor::zeros(cfg.d_sae, DType::F32, dev)?;
        let params = [w_dec.clone(), b_enc, w_dec, b_dec]
            .into_iter()
            .map(Param::new)
            .collect::<Result<_>>()?;
        Ok(Trainer {
            since_fired: vec![0; cfg.d_sae],
            cfg,
            params,
            input_scale,
            step: 0,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// One optimiser step on a batch `x` `(batch, d_in)` of raw activations.
    ///
    /// Only the full `pre` matrix is dense (and computed without gradient); it picks the latents,
    /// and the loss and gradients touch only the picked ones: on the CPU by hand
    /// (`sae::sparse_grad`), elsewhere by autograd over gathered rows.
    pub fn step(&mut self, x: &Tensor) -> Result<StepStats> {
        let x = (x.to_dtype(DType::F32)? * self.input_scale)?;
        let n = x.dim(0)?;
        let (d_sae, k) = (self.cfg.d_sae, self.cfg.k);
        let [w_enc_t, b_enc, _, b_dec] = [0, 1, 2, 3].map(|i| self.params[i].var.as_tensor());
        let xc = x.broadcast_sub(b_dec)?;
        let pre_d = xc.detach().matmul(&w_enc_t.t()?)?.broadcast_add(b_enc)?;
        let pre_v: Vec<f32> = pre_d.flatten_all()?.to_vec1()?;
        let idx = top_k_indices(&pre_v, d_sae, k, None);
        // Firing clocks, then the dead set used by AuxK.
        let mut fired = vec![false; d_sae];
        for (p, &i) in idx.iter().enumerate() {
            fired[i as usize] |= pre_v[(p / k) * d_sae + i as usize] > 0.0;
        }
        for (clock, f) in self.since_fired.iter_mut().zip(&fired) {
            *clock = if *f { 0 } else { *clock + n as u64 };
        }
        let dead: Vec<bool> = self
            .since_fired
            .iter()
            .map(|&c| c >= self.cfg.dead_tokens)
            .collect();
        let n_dead = dead.iter().filter(|&&d| d).count();
        let k_aux = (n_dead > 0 && self.cfg.aux_coef > 0.0).then(|| self.cfg.k_aux.min(n_dead));
        let step = StepInput {
            x: &x,
            xc: &xc,
            pre: &pre_v,
            idx: &idx,
            dead: &dead,
            k_aux,
        };
        let (mut grads, fvu, aux) = if x.device().is_cpu() {
            self.sparse_grads(&step)?
        } else {
            self.autograd_grads(&step)?
        };
        // Remove the decoder gradient's component along each (unit) row.
        if let Some(g) = &grads[2] {
            let wd = self.params[2].var.as_tensor();
            let radial = (g * wd)?.sum_keepdim(D::Minus1)?;
            grads[2] = Some((g - wd.broadcast_mul(&radial)?)?);
        }
        let lr = self.cfg.lr_at(self.step);
        let t = (self.step + 1) as i32;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else {
                continue;
            };
            // Detached: the decoder's radial projection ties its gradient to the step's graph, and
            // moments that kept that link would hold every step's graph alive (≈ 100 MB a step).
            let g = g.detach();
            p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?.detach();
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
            let m_hat = (&p.m / (1.0 - b1.powi(t)))?;
            let v_hat = (&p.v / (1.0 - b2.powi(t)))?;
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            p.var.set(&(p.var.as_tensor() - (update * lr)?)?)?;
        }
        self.params[2]
            .var
            .set(&unit_rows(self.params[2].var.as_tensor())?)?;
        self.step += 1;
        Ok(StepStats {
            step: self.step - 1,
            fvu,
            aux,
            dead_fraction: self.dead_fraction(),
            lr,
        })
    }

    /// The loss's gradients (in `NAMES` order), FVU and AuxK loss, by hand on the CPU.
    fn sparse_grads(&self, s: &StepInput) -> Result<StepGrads> {
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let [w_enc_t, _, w_dec, b_dec] = [0, 1, 2, 3].map(|i| self.params[i].var.as_tensor());
        let (w_enc_v, w_dec_v, b_dec_v) = (flat(w_enc_t)?, flat(w_dec)?, flat(b_dec)?);
        let (x, xc) = (flat(s.x)?, flat(s.xc)?);
        let weights = sparse_grad::Weights {
            w_enc_t: &w_enc_v,
            w_dec: &w_dec_v,
            b_dec: &b_dec_v,
            d_in: b_dec_v.len(),
        };
        let main = sparse_grad::Selection {
            idx: s.idx,
            k: self.cfg.k,
        };
        let aux_idx = s
            .k_aux
            .map(|k_aux| top_k_indices(s.pre, self.cfg.d_sae, k_aux, Some(s.dead)));
        let aux = s
            .k_aux
            .zip(aux_idx.as_deref())
            .map(|(k, idx)| (sparse_grad::Selection { idx, k }, self.cfg.aux_coef));
        let g = sparse_grad::loss_and_grads(&weights, &x, &xc, s.pre, main, aux);
        let dev = s.x.device();
        let shaped = |v: Vec<f32>, like: &Tensor| Tensor::from_vec(v, like.shape(), dev);
        let grads = [
            Some(shaped(g.w_enc_t, w_enc_t)?),
            Some(shaped(g.b_enc, self.params[1].var.as_tensor())?),
            Some(shaped(g.w_dec, w_dec)?),
            Some(shaped(g.b_dec, b_dec)?),
        ];
        Ok((grads, g.fvu, g.aux))
    }

    /// The same as [`Trainer::sparse_grads`] by candle autograd (any device).
    fn autograd_grads(&self, s: &StepInput) -> Result<StepGrads> {
        let k = self.cfg.k;
        let [w_enc_t, b_enc, w_dec, b_dec] = [0, 1, 2, 3].map(|i| self.params[i].var.as_tensor());
        let f = selected_pre(s.xc, w_enc_t, b_enc, s.idx, k)?.relu()?;
        let recon = sparse_decode(&f, w_dec, s.idx, k)?.broadcast_add(b_dec)?;
        let fvu = normalized_sq_err(&recon, s.x)?;
        let (loss, aux) = if let Some(k_aux) = s.k_aux {
            // The input is detached so that AuxK moves only the dead latents' own weights, not b_dec.
            let e_hat = aux_decode(
                &s.xc.detach(),
                [w_enc_t, b_enc, w_dec],
                s.pre,
                s.dead,
                k_aux,
            )?;
            let err = (s.x - &recon)?.detach();
            let aux = normalized_sq_err(&e_hat, &err)?;
            ((&fvu + (&aux * self.cfg.aux_coef)?)?, scalar(&aux)?)
        } else {
            (fvu.clone(), 0.0)
        };
        let grads = loss.backward()?;
        let grads = [0, 1, 2, 3].map(|i| grads.get(self.params[i].var.as_tensor()).cloned());
        Ok((grads, scalar(&fvu)?, aux))
    }

    /// Fraction of latents that have not fired for `dead_tokens` tokens.
    pub fn dead_fraction(&self) -> f64 {
        let dead = self
            .since_fired
            .iter()
            .filter(|&&c| c >= self.cfg.dead_tokens)
            .count();
        dead as f64 / self.cfg.d_sae as f64
    }

    /// The SAE as trained, with the input scale folded into the weights (it takes raw activations).
    pub fn to_sae(&self, meta: SaeMeta) -> Result<Sae> {
        let t = |i: usize| self.params[i].var.as_tensor().clone();
        let mut sae = Sae::from_parts(SaeParts {
            w_enc: t(0).t()?,
            b_enc: t(1),
            w_dec: t(2),
            b_dec: t(3),
            activation: Activation::TopK { k: self.cfg.k },
            apply_b_dec_to_input: true,
            normalization: Normalization::None,
            hook: Some(self.cfg.hook),
            meta,
        })?;
        sae.fold_input_scale(self.input_scale)?;
        Ok(sae)
    }

    /// Writes `trainer.safetensors` (weights, Adam moments, firing clocks) and `trainer.json`
    /// (config, step, input scale) into `dir`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors = std::collections::HashMap::new();
        for (name, p) in NAMES.iter().zip(&self.params) {
            tensors.insert(name.to_string(), p.var.as_tensor().clone());
            tensors.insert(format!("{name}.m"), p.m.clone());
            tensors.insert(format!("{name}.v"), p.v.clone());
        }
        let clocks: Vec<i64> = self.since_fired.iter().map(|&c| c as i64).collect();
        tensors.insert(
            "since_fired".into(),
            Tensor::new(clocks, &Device::Cpu)?.to_device(self.params[0].m.device())?,
        );
        let st = dir.join("trainer.safetensors");
        candle_core::safetensors::save(&tensors, &st)?;
        let state = CheckpointState {
            config: self.cfg.clone(),
            step: self.step,
            input_scale: self.input_scale,
        };
        let json = dir.join("trainer.json");
        let text = serde_json::to_string_pretty(&state).expect("serialisable");
        std::fs::write(&json, text).map_err(|e| Error::io(&json, e))
    }

    /// Loads a checkpoint written by [`Trainer::save_checkpoint`] onto `device`.
    pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<Self> {
        let json = dir.join("trainer.json");
        let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
        let state: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| Error::format(&json, "checkpoint", "trainer state", e.to_string()))?;
        state.config.validate().map_err(|e| {
            Error::format(
                &json,
                "config",
                "a valid training configuration",
                e.to_string(),
            )
        })?;
        let st = dir.join("trainer.safetensors");
        let mut t = candle_core::safetensors::load(&st, device)?;
        let mut take = |name: String| t.remove(&name).ok_or_else(|| Error::missing(&st, name));
        let mut params = Vec::new();
        for name in NAMES {
            params.push(Param {
                var: Var::from_tensor(&take(name.to_string())?)?,
                m: take(format!("{name}.m"))?,
                v: take(format!("{name}.v"))?,
            });
        }
        let since_fired = take("since_fired".into())?
            .to_vec1::<i64>()?
            .into_iter()
            .map(|c| c as u64)
            .collect();
        Ok(Trainer {
            cfg: state.config,
            params,
            input_scale: state.input_scale,
            step: state.step,
            since_fired,
        })
    }

    /// Trains from the current step to the end of the run, calling `on_step` after each step
    /// (progress, periodic [`Trainer::save_checkpoint`]).
    pub fn run(
        &mut self,
        source: &mut dyn ActivationSource,
        on_step: &mut dyn FnMut(&Trainer, &StepStats) -> Result<()>,
    ) -> Result<RunTimes> {
        let mut times = RunTimes::default();
        let bs = self.cfg.batch_size;
        let per_chunk = source.chunk_tokens() / bs;
        if per_chunk == 0 {
            return Err(Error::Invalid(format!(
                "a chunk of {} tokens holds no batch of {bs}",
                source.chunk_tokens()
            )));
        }
        let mut loaded: Option<(usize, Tensor)> = None;
        while self.step < self.cfg.total_steps() {
            let c = self.step / per_chunk;
            if loaded.as_ref().map(|(i, _)| *i) != Some(c) {
                let t = std::time::Instant::now();
                loaded = Some((c, source.chunk(c)?));
                times.source_secs += t.elapsed().as_secs_f64();
            }
            let chunk = &loaded.as_ref().expect("loaded").1;
            let x = chunk.narrow(0, (self.step % per_chunk) * bs, bs)?;
            let t = std::time::Instant::now();
            let stats = self.step(&x)?;
            times.step_secs += t.elapsed().as_secs_f64();
            times.steps += 1;
            on_step(self, &stats)?;
        }
        Ok(times)
    }
}

/// What one step's gradient computation reads.
struct StepInput<'a> {
    /// The scaled batch `(n, d_in)`.
    x: &'a Tensor,
    /// `x − b_dec` (with gradient to `b_dec`).
    xc: &'a Tensor,
    /// The full pre-activations, row-major `(n, d_sae)`.
    pre: &'a [f32],
    /// The top-k latents per row, `(n, k)`.
    idx: &'a [u32],
    /// Which latents are dead.
    dead: &'a [bool],
    /// AuxK's latents per row, when AuxK is on this step.
    k_aux: Option<usize>,
}

/// Gradients in `NAMES` order (`None` where a parameter got none), FVU and AuxK loss.
type StepGrads = ([Option<Tensor>; 4], f64, f64);

#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointState {
    config: TrainConfig,
    step: usize,
    input_scale: f64,
}

/// Rows of `w` scaled to unit L2 norm.
fn unit_rows(w: &Tensor) -> Result<Tensor> {
    let n = w
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::INFINITY)?;
    Ok(w.broadcast_div(&n)?)
}

/// For each row of `pre` (`n` wide), the indices of its `k` largest entries (among `allowed`
/// ones, if given), ties towards the lower index; `k` per row, row-major.
fn top_k_indices(pre: &[f32], n: usize, k: usize, allowed: Option<&[bool]>) -> Vec<u32> {
    let cand: Vec<usize> = (0..n).filter(|&i| allowed.is_none_or(|a| a[i])).collect();
    let k = k.min(cand.len());
    let mut out = Vec::with_capacity(pre.len() / n * k);
    for row in pre.chunks(n) {
        let mut order = cand.clone();
        let cmp = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by(k - 1, cmp);
        }
        out.extend(order[..k].iter().map(|&i| i as u32));
    }
    out
}

/// The pre-activations `xc·W_enc[:, i] + b_enc[i]` of the latents `idx` (`k` per row), `(n, k)`,
/// differentiable in every input.
fn selected_pre(
    xc: &Tensor,
    w_enc_t: &Tensor,
    b_enc: &Tensor,
    idx: &[u32],
    k: usize,
) -> Result<Tensor> {
    let (n, d) = xc.dims2()?;
    let ids = Tensor::new(idx, xc.device())?;
    let rows = w_enc_t.index_select(&ids, 0)?.reshape((n, k, d))?;
    let dot = rows.broadcast_mul(&xc.unsqueeze(1)?)?.sum(2)?;
    Ok((dot + b_enc.index_select(&ids, 0)?.reshape((n, k))?)?)
}

/// `Σ_j f[r, j] · W_dec[idx[r, j]]` for each row `r`: `(n, k) → (n, d_in)`.
fn sparse_decode(f: &Tensor, w_dec: &Tensor, idx: &[u32], k: usize) -> Result<Tensor> {
    let n = f.dim(0)?;
    let ids = Tensor::new(idx, f.device())?;
    let rows = w_dec
        .index_select(&ids, 0)?
        .reshape((n, k, w_dec.dim(1)?))?;
    Ok(rows.broadcast_mul(&f.unsqueeze(2)?)?.sum(1)?)
}

/// AuxK's reconstruction `TopK_{k_aux}(ReLU(pre))·W_dec` over the `dead` latents only.
///
/// Dense over the dead subset (`m` latents): `(n, m)` products with a constant top-`k_aux` mask, so
/// its cost grows with `m`, not with `n · k_aux · d_in` gathered rows; gathering rows as the main
/// path does made late steps, when `k_aux` reaches hundreds, several times slower than early ones.
/// `pre` is the full `(n, d_sae)` pre-activation matrix, row-major, used only to pick the latents.
fn aux_decode(
    xc: &Tensor,
    [w_enc_t, b_enc, w_dec]: [&Tensor; 3],
    pre: &[f32],
    dead: &[bool],
    k_aux: usize,
) -> Result<Tensor> {
    let d_sae = dead.len();
    let ids: Vec<u32> = (0..d_sae as u32).filter(|&i| dead[i as usize]).collect();
    let m = ids.len();
    let mut mask = vec![0f32; pre.len() / d_sae * m];
    let mut row = vec![0f32; m];
    for (r, full) in pre.chunks(d_sae).enumerate() {
        for (v, &i) in row.iter_mut().zip(&ids) {
            *v = full[i as usize];
        }
        for j in top_k_indices(&row, m, k_aux, None) {
            mask[r * m + j as usize] = 1.0;
        }
    }
    let n = mask.len() / m;
    let mask = Tensor::from_vec(mask, (n, m), xc.device())?;
    let ids = Tensor::new(ids, xc.device())?;
    let pre = xc
        .matmul(&w_enc_t.index_select(&ids, 0)?.t()?)?
        .broadcast_add(&b_enc.index_select(&ids, 0)?)?;
    let f = (pre.relu()? * mask)?;
    Ok(f.matmul(&w_dec.index_select(&ids, 0)?)?)
}

/// `Σ‖a−b‖² / Σ‖b−mean(b)‖²` over the rows of `(n, d)` tensors (differentiable in `a`).
fn normalized_sq_err(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let err = (a - b)?.sqr()?.sum_all()?;
    let var = b.broadcast_sub(&b.mean_keepdim(0)?)?.sqr()?.sum_all()?;
    let var = var.detach().clamp(1e-12f32, f32::INFINITY)?;
    Ok(err.div(&var)?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_scalar::<f32>()? as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TrainConfig {
        TrainConfig {
            hook: HookPoint::resid_post(0),
            d_sae: 64,
            k: 4,
            k_aux: 8,
            aux_coef: 1.0 / 32.0,
            dead_tokens: 2048,
            batch_size: 256,
            lr: 1e-3,
            warmup_steps: 10,
            decay_fraction: 0.2,
            total_tokens: 1024,
            seed: 0,
        }
    }

    fn refused(c: TrainConfig, field: &str, value: &str) {
        let e = c.validate().unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::OutOfRange { .. }), "{e:?}");
        assert!(msg.starts_with(field), "{msg}");
        assert!(msg.contains(&format!(": {value} is not allowed")), "{msg}");
    }

    #[test]
    fn every_out_of_range_option_is_named() {
        assert!(config().validate().is_ok());
        refused(
            TrainConfig {
                d_sae: 0,
                ..config()
            },
            "d_sae",
            "0",
        );
        refused(TrainConfig { k: 0, ..config() }, "k", "0");
        refused(TrainConfig { k: 65, ..config() }, "k", "65");
        refused(
            TrainConfig {
                batch_size: 0,
                ..config()
            },
            "batch_size",
            "0",
        );
        refused(
            TrainConfig {
                total_tokens: 0,
                ..config()
            },
            "total_tokens",
            "0",
        );
        refused(
            TrainConfig {
                lr: 0.0,
                ..config()
            },
            "lr",
            "0",
        );
        refused(
            TrainConfig {
                lr: f64::NAN,
                ..config()
            },
            "lr",
            "NaN",
        );
        refused(
            TrainConfig {
                aux_coef: -1.0,
                ..config()
            },
            "aux_coef",
            "-1",
        );
        refused(
            TrainConfig {
                k_aux: 0,
                ..config()
            },
            "k_aux",
            "0",
        );
        refused(
            TrainConfig {
                dead_tokens: 0,
                ..config()
            },
            "dead_tokens",
            "0",
        );
        refused(
            TrainConfig {
                decay_fraction: 1.5,
                ..config()
            },
            "decay_fraction",
            "1.5",
        );
        // No AuxK loss: k_aux is unused and may be anything.
        assert!(TrainConfig {
            aux_coef: 0.0,
            k_aux: 0,
            ..config()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn hand_written_gradients_equal_autograd_with_and_without_auxk() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (256, 16), &dev).unwrap();
        let tr = Trainer::new(config(), &x).unwrap();
        // Perturb the tied initialisation and the biases so that every term is exercised.
        for (i, sd) in [(0, 0.3f32), (1, 0.2), (3, 0.2)] {
            let t = tr.params[i].var.as_tensor();
            let noisy = (t + Tensor::randn(0f32, sd, t.shape(), &dev).unwrap()).unwrap();
            tr.params[i].var.set(&noisy).unwrap();
        }
        let x = (x * tr.input_scale).unwrap();
        let [w_enc_t, b_enc, _, b_dec] = [0, 1, 2, 3].map(|i| tr.params[i].var.as_tensor());
        let xc = x.broadcast_sub(b_dec).unwrap();
        let pre = xc.matmul(&w_enc_t.t().unwrap()).unwrap();
        let pre: Vec<f32> = pre
            .broadcast_add(b_enc)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let idx = top_k_indices(&pre, 64, 4, None);
        let dead: Vec<bool> = (0..64).map(|i| i % 3 != 0).collect();
        for k_aux in [None, Some(8)] {
            let s = StepInput {
                x: &x,
                xc: &xc,
                pre: &pre,
                idx: &idx,
                dead: &dead,
                k_aux,
            };
            let (hand, fvu_h, aux_h) = tr.sparse_grads(&s).unwrap();
            let (auto, fvu_a, aux_a) = tr.autograd_grads(&s).unwrap();
            assert!((fvu_h - fvu_a).abs() < 1e-5, "{fvu_h} vs {fvu_a}");
            assert!((aux_h - aux_a).abs() < 1e-5, "{aux_h} vs {aux_a}");
            assert_eq!(k_aux.is_some(), aux_h > 0.0);
            for (name, (h, a)) in NAMES.iter().zip(hand.iter().zip(&auto)) {
                let (h, a) = (h.as_ref().unwrap(), a.as_ref().unwrap());
                let scale = a
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let diff = (h - a).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(
                    scale > 0.0 && diff <= 1e-4 * scale,
                    "{name}: {diff} of {scale}"
                );
            }
        }
    }

    #[test]
    fn a_fresh_trainer_checks_its_config_first() {
        let x = Tensor::ones((8, 4), DType::F32, &Device::Cpu).unwrap();
        let e = Trainer::new(TrainConfig { k: 0, ..config() }, &x)
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("k (--k): 0"), "{e}");
    }
}
