//! `dsg guard probe`: an existing SAE guardrail (features, clamp, hook, SAE) gated by a trained,
//! calibrated probe instead ([`super::probe_fit::fit_probe_gate`]).
//!
//! Prompts are built as `dsg fit` builds its calibration prompts ([`crate::stats::prompts`]), and
//! only from the *selection* split of every question file: training positives are the forget
//! file's questions as §5.1 prompts about `subject`; training negatives are the retain files'
//! questions (each about its own subject) that are not calibration prompts, and the paragraphs of
//! retain text files as chat messages; calibration prompts are `calibrate_mcq`'s questions, sampled
//! as `dsg fit --calibrate-mcq` samples them (same seed, same limit), so a probe gate is
//! calibrated on the same prompts as the SAE gate it replaces.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::file::GuardrailFile;
use super::gate::Gate;
use super::load::relative_path;
use super::logistic::Solver;
use super::probe::ProbeInput;
use super::probe_fit::{fit_probe_gate, ProbeData, ProbeGateConfig};
use crate::data::{read_documents, read_mcq, Format, McqItem, Split, SplitMix64};
use crate::model::LoadedModel;
use crate::output::{check_output, Overwrite};
use crate::sae::Sae;
use crate::stats::prompts::{free_form_prompt, mcq_prompt};
use crate::{Error, Result};

/// One `dsg guard probe`.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    /// The SAE guardrail to gate by a probe.
    pub guard: PathBuf,
    /// The forget MCQ file (its selection split are the positives).
    pub forget: PathBuf,
    /// Subject named in the forget prompts.
    pub subject: String,
    /// Benign MCQ or text files (training negatives).
    pub retain: Vec<PathBuf>,
    /// Benign MCQ files the gate is calibrated on (selection split).
    pub calibrate_mcq: Vec<PathBuf>,
    /// At most this many calibration prompts (seeded sample).
    pub calibrate_limit: Option<usize>,
    /// At most this many training prompts per file (seeded sample).
    pub limit: Option<usize>,
    /// What the probe reads.
    pub input: ProbeInput,
    /// Mean or max-of-rolling-mean pooling.
    pub pooling: Gate,
    /// Calibration percentile.
    pub p_dyn: f64,
    /// Seed of the samples (as `dsg fit --seed`).
    pub seed: u64,
    /// Prompts per forward pass.
    pub batch: usize,
    /// The probe-gated guardrail to write.
    pub out: PathBuf,
    /// Whether `out` may be replaced.
    pub overwrite: Overwrite,
}

impl ProbeRequest {
    /// Checks the options before any model work; errors name the option.
    pub fn validate(&self) -> Result<()> {
        super::probe::check_probe_gate(&self.pooling)
            .map_err(|e| Error::Invalid(format!("--pooling: {e}")))?;
        if !(0.0..=100.0).contains(&self.p_dyn) {
            return Err(Error::out_of_range("--p-dyn", self.p_dyn, "0..=100"));
        }
        for (name, v) in [
            ("--batch", Some(self.batch)),
            ("--limit", self.limit),
            ("--calibrate-limit", self.calibrate_limit),
        ] {
            if v == Some(0) {
                return Err(Error::out_of_range(name, 0, "at least 1"));
            }
        }
        if self.retain.is_empty() {
            return Err(Error::Invalid("--retain: at least one benign file".into()));
        }
        if self.calibrate_mcq.is_empty() {
            return Err(Error::Invalid(
                "--calibrate-mcq: at least one MCQ file to calibrate on".into(),
            ));
        }
        let files = std::iter::once(("--guard", &self.guard))
            .chain([("--forget", &self.forget)])
            .chain(self.retain.iter().map(|f| ("--retain", f)))
            .chain(self.calibrate_mcq.iter().map(|f| ("--calibrate-mcq", f)));
        let mut inputs = Vec::new();
        for (option, f) in files {
            if !f.is_file() {
                return Err(Error::Invalid(format!(
                    "{option}: {} is not a file",
                    f.display()
                )));
            }
            inputs.push(f.as_path());
        }
        check_output(&self.out, "--out", &inputs, self.overwrite)
    }
}

fn sampled<T>(mut items: Vec<T>, limit: Option<usize>, seed: u64) -> Vec<T> {
    if let Some(k) = limit {
        SplitMix64::new(seed).sample(&mut items, k);
    }
    items
}

fn own_subject(q: &McqItem) -> &str {
    q.subject.as_deref().unwrap_or("general knowledge")
}

/// The request's training and calibration prompts, and the calibration prompts' description.
pub fn probe_prompts(lm: &LoadedModel, req: &ProbeRequest) -> Result<[(Vec<Vec<u32>>, String); 3]> {
    let tok = &lm.tokenizer;
    let forget = sampled(
        read_mcq(&req.forget, Split::Selection)?,
        req.limit,
        req.seed,
    );
    let positives = forget
        .iter()
        .map(|q| mcq_prompt(tok, &req.subject, q))
        .collect::<Result<Vec<_>>>()?;
    let mut cal_items = Vec::new();
    for f in &req.calibrate_mcq {
        cal_items.extend(read_mcq(f, Split::Selection)?.into_iter().map(|q| (f, q)));
    }
    let cal_items = sampled(cal_items, req.calibrate_limit, req.seed);
    let held: HashSet<(PathBuf, usize)> = cal_items
        .iter()
        .map(|(f, q)| ((*f).clone(), q.index))
        .collect();
    let calibration = cal_items
        .iter()
        .map(|(_, q)| mcq_prompt(tok, own_subject(q), q))
        .collect::<Result<Vec<_>>>()?;
    let mut negatives = Vec::new();
    for f in &req.retain {
        if Format::detect(f)?.is_mcq() {
            let items: Vec<McqItem> = read_mcq(f, Split::Selection)?
                .into_iter()
                .filter(|q| !held.contains(&(f.clone(), q.index)))
                .collect();
            for q in sampled(items, req.limit, req.seed) {
                negatives.push(mcq_prompt(tok, own_subject(&q), &q)?);
            }
        } else {
            for d in sampled(read_documents(f, Split::Selection)?, req.limit, req.seed) {
                negatives.push(free_form_prompt(tok, &d)?.ids);
            }
        }
    }
    let names = |files: &[PathBuf]| {
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n_cal = calibration.len();
    Ok([
        (positives, req.forget.display().to_string()),
        (negatives, names(&req.retain)),
        (
            calibration,
            format!(
                "{} (MCQ split: Selection) as chat MCQ prompts ({n_cal} prompts)",
                names(&req.calibrate_mcq)
            ),
        ),
    ])
}

/// Runs the request on `guard` (loaded from `req.guard`) with its `sae`, writes the probe-gated
/// guardrail to `req.out` and returns it. `progress(stage, done, total)` follows the passes.
pub fn run(
    lm: &LoadedModel,
    guard: &GuardrailFile,
    sae: &Sae,
    req: &ProbeRequest,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<GuardrailFile> {
    req.validate()?;
    let [(positives, _), (negatives, _), (calibration, cal_name)] = probe_prompts(lm, req)?;
    let data = ProbeData {
        positives: &positives,
        negatives: &negatives,
        calibration: &calibration,
        calibration_name: &cal_name,
    };
    let cfg = ProbeGateConfig {
        input: req.input,
        pooling: req.pooling,
        p_dyn: req.p_dyn,
        solver: Solver::default(),
        batch: req.batch,
    };
    let mut file = fit_probe_gate(&lm.model, sae, guard, data, &cfg, progress)?;
    // The SAE path is relative to the guardrail's own folder, as `dsg fit` writes it.
    if let Some(origin) = sae.origin() {
        let folder = req.out.parent().unwrap_or(Path::new(""));
        file.sae.name = relative_path(origin, folder).display().to_string();
    }
    file.save(&req.out)?;
    Ok(file)
}
