//! Fitting a probe-gated guardrail: one model pass over prompts gives what probes read (each
//! prompt's mean input vector, or its per-token logits) beside the SAE gates' token activity; a
//! probe is trained on the pooled vectors of forget and benign prompts and calibrated, by the same
//! percentile rule as the SAE gates ([`calibrate`]), on its pooled logits over the calibration
//! prompts.
//!
//! Only per-prompt pooled vectors and per-token logits are kept, never whole residual tensors.

use super::calibrate::calibrate;
use super::file::{Evidence, GuardrailFile};
use super::gate::Gate;
use super::logistic::Solver;
use super::probe::{check_probe_gate, pooled_means, Probe, ProbeInput};
use crate::model::{Batch, HookPoint, Model};
use crate::sae::Sae;
use crate::stats::collect::activations_at;
use crate::stats::token_activity;
use crate::{Error, Result};

/// What [`prompt_signals`] computes in its one pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignalRequest<'a> {
    /// SAE feature sets whose token activity to record (hook conventions: position 0 inactive).
    pub feature_sets: &'a [Vec<usize>],
    /// Inputs whose per-prompt mean vector to record ([`pooled_means`]).
    pub pooled: &'a [ProbeInput],
    /// Probes whose per-token logits to record (position 0 left out, as the hook does).
    pub probes: &'a [Probe],
}

/// [`prompt_signals`]' result, each in prompt order.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSignals {
    /// `[set][prompt][token]` activity.
    pub activity: Vec<Vec<Vec<bool>>>,
    /// `[input][prompt]` mean input vector.
    pub pooled: Vec<Vec<Vec<f32>>>,
    /// `[probe][prompt][token]` logits of tokens 1.. of each prompt.
    pub logits: Vec<Vec<Vec<f64>>>,
}

/// Runs `model` up to `hook` once over `prompts` (each starting at position 0; batched
/// `batch_size` at a time in order of length) and records what `req` asks for.
/// `progress(done, total)` counts prompts.
pub fn prompt_signals(
    model: &Model,
    sae: &Sae,
    hook: HookPoint,
    prompts: &[Vec<u32>],
    batch_size: usize,
    req: SignalRequest,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PromptSignals> {
    sae.check_model(model.config().d_model, model.config().n_layers)?;
    let d_model = model.config().d_model;
    for p in req.probes {
        p.validate(p.input.width(d_model, sae.d_sae()))?;
    }
    let n = prompts.len();
    let mut out = PromptSignals {
        activity: vec![vec![Vec::new(); n]; req.feature_sets.len()],
        pooled: vec![vec![Vec::new(); n]; req.pooled.len()],
        logits: vec![vec![Vec::new(); n]; req.probes.len()],
    };
    let needs_latents = req
        .pooled
        .iter()
        .chain(req.probes.iter().map(|p| &p.input))
        .any(|&i| i == ProbeInput::SaeLatents);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut done = 0;
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = Batch::new(
            chunk.iter().map(|&i| prompts[i].clone()).collect(),
            model.device(),
        )?;
        let h = activations_at(model, &batch, hook)?;
        let latents = if needs_latents {
            Some(sae.encode(&h)?)
        } else {
            None
        };
        let input = |i: ProbeInput| match i {
            ProbeInput::Residual => &h,
            ProbeInput::SaeLatents => latents.as_ref().unwrap_or(&h),
        };
        for (set, features) in req.feature_sets.iter().enumerate() {
            let selected = sae.encode_subset(&h, features)?;
            let flags = token_activity(&selected, batch.lengths(), true)?;
            for (&i, f) in chunk.iter().zip(flags) {
                out.activity[set][i] = f;
            }
        }
        for (k, &inp) in req.pooled.iter().enumerate() {
            for (&i, v) in chunk.iter().zip(pooled_means(input(inp), batch.lengths())?) {
                out.pooled[k][i] = v;
            }
        }
        for (k, probe) in req.probes.iter().enumerate() {
            let rows = probe.token_logits(input(probe.input), batch.lengths())?;
            for (&i, row) in chunk.iter().zip(rows) {
                out.logits[k][i] = row.into_iter().skip(1).collect();
            }
        }
        done += chunk.len();
        progress(done, n);
    }
    Ok(out)
}

/// The prompts a probe gate is fitted on: disjoint training sets and the calibration prompts.
#[derive(Debug, Clone, Copy)]
pub struct ProbeData<'a> {
    /// Forget prompts to train on.
    pub positives: &'a [Vec<u32>],
    /// Benign prompts to train on (none of them a calibration prompt).
    pub negatives: &'a [Vec<u32>],
    /// Benign prompts the threshold is calibrated on.
    pub calibration: &'a [Vec<u32>],
    /// A description of the calibration prompts, for the file's provenance.
    pub calibration_name: &'a str,
}

/// How a probe gate is fitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeGateConfig {
    /// What the probe reads.
    pub input: ProbeInput,
    /// The pooling: [`Gate::Paper`] (mean) or [`Gate::Window`] (max of rolling means); its
    /// threshold is calibrated.
    pub pooling: Gate,
    /// Calibration percentile of the pooled logits over the calibration prompts.
    pub p_dyn: f64,
    /// The logistic regression's settings.
    pub solver: Solver,
    /// Prompts per forward pass.
    pub batch: usize,
}

/// Trains a probe on `data`'s training prompts and calibrates its gate on their calibration
/// prompts: `progress(stage, done, total)` follows the two passes (`"train"`, `"calibration"`).
pub fn train_and_calibrate(
    model: &Model,
    sae: &Sae,
    hook: HookPoint,
    data: ProbeData,
    cfg: &ProbeGateConfig,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(Probe, super::Calibration)> {
    check_probe_gate(&cfg.pooling)?;
    if data.positives.is_empty() || data.negatives.is_empty() || data.calibration.is_empty() {
        return Err(Error::Invalid(format!(
            "a probe gate needs forget, benign and calibration prompts ({}, {} and {} given)",
            data.positives.len(),
            data.negatives.len(),
            data.calibration.len()
        )));
    }
    let train: Vec<Vec<u32>> = data
        .positives
        .iter()
        .chain(data.negatives)
        .cloned()
        .collect();
    let req = SignalRequest {
        pooled: &[cfg.input],
        ..Default::default()
    };
    let mut pooled = prompt_signals(model, sae, hook, &train, cfg.batch, req, &mut |d, t| {
        progress("train", d, t)
    })?
    .pooled
    .remove(0);
    let negatives = pooled.split_off(data.positives.len());
    let probe = Probe::train(cfg.input, &pooled, &negatives, cfg.solver)?;
    let probes = [probe];
    let req = SignalRequest {
        probes: &probes,
        ..Default::default()
    };
    let logits = prompt_signals(
        model,
        sae,
        hook,
        data.calibration,
        cfg.batch,
        req,
        &mut |d, t| progress("calibration", d, t),
    )?
    .logits
    .remove(0);
    let calibration = calibrate(cfg.pooling, &logits, cfg.p_dyn)?;
    let [probe] = probes;
    Ok((probe, calibration))
}

/// `guard` (its features, clamp, hook and SAE) gated by a probe trained and calibrated on `data`
/// ([`train_and_calibrate`]): the probe decides, the SAE clamps.
pub fn fit_probe_gate(
    model: &Model,
    sae: &Sae,
    guard: &GuardrailFile,
    data: ProbeData,
    cfg: &ProbeGateConfig,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<GuardrailFile> {
    if guard.evidence == Evidence::UserText {
        return Err(Error::Unsupported(
            "a probe gate over user text only (the guardrail counts user text); fit it on a \
             guardrail that counts all tokens"
                .into(),
        ));
    }
    let (probe, calibration) =
        train_and_calibrate(model, sae, guard.hook_point, data, cfg, progress)?;
    let mut file = guard.clone();
    file.gate = calibration.gate;
    file.calibration = Some(calibration.summary(None)?);
    file.provenance.calibration_corpus = Some(data.calibration_name.to_string());
    file.probe = Some(probe);
    file.validate()?;
    Ok(file)
}
