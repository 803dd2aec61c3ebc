//! The track's guardrail, fitted on selection-split questions only: features chosen with the
//! cluster's forget questions against its retain questions, then the gate's
//! threshold calibrated on the retain questions as the evaluation puts them to the model (cloze
//! prompts), counting the user's text ([`Evidence::UserText`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::measure::cluster_questions;
use super::{KnowledgeConfig, Progress};
use crate::data::Split;
use crate::eval::mcq::{protocol, Protocol, Question};
use crate::eval::metrics::Rate;
use crate::guard::fit::run as fit_run;
use crate::guard::{calibrate, load_sae, Evidence, FitOutcome, FitRequest, Gate, GuardrailFile};
use crate::model::LoadedModel;
use crate::output::Overwrite;
use crate::stats::collect::{keep_evidence, prompt_activity};
use crate::stats::prompts::Prompt;
use crate::{Error, Result};

/// How the guardrail was fitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitSummary {
    /// Selection-split forget questions (the forget corpus).
    pub forget_questions: usize,
    /// Selection-split retain questions (the retain corpus, and the calibration prompts).
    pub retain_questions: usize,
    /// The calibrated threshold.
    pub threshold: f64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Every candidate of the selection-split sweep; the chosen one is marked.
    pub sweep: Vec<Candidate>,
}

/// One candidate configuration, scored on the selection split: its gate calibrated at `p_dyn`
/// on the retain questions, and the share of forget questions it gates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    /// Selected features.
    pub n_features: usize,
    /// Importance-ratio percentile.
    pub p_ratio: f64,
    /// The gate, calibrated.
    pub gate: Gate,
    /// Selection-split forget questions gated.
    pub tpr: Rate,
    /// Selection-split retain questions gated.
    pub fpr: Rate,
    /// Whether this candidate was chosen (the highest TPR; ties: the lower FPR, then fewer
    /// features).
    pub chosen: bool,
}

/// The candidates' (N, p_ratio), each with every gate of [`sweep_gates`]; a pair whose p_ratio
/// admits fewer than N features is left out.
const SWEEP_SIZES: [(usize, f64); 7] = [
    (10, 95.0),
    (20, 95.0),
    (40, 95.0),
    (80, 95.0),
    (10, 99.0),
    (20, 99.0),
    (40, 99.0),
];

fn sweep_gates(cfg: &KnowledgeConfig) -> Vec<Gate> {
    let mut gates = vec![
        Gate::Paper { tau: 0.0 },
        Gate::Window { width: 8, tau: 0.0 },
        Gate::Cusum {
            drift: 0.1,
            threshold: 0.0,
        },
        Gate::Cusum {
            drift: 0.2,
            threshold: 0.0,
        },
    ];
    if !gates
        .iter()
        .any(|g| std::mem::discriminant(g) == std::mem::discriminant(&cfg.gate) && *g == cfg.gate)
    {
        gates.push(cfg.gate);
    }
    gates
}

/// Fits each candidate from the corpus statistics (no model pass), measures every candidate's
/// token activity on the selection questions in one pass to the hook layer, calibrates each gate
/// on the retain questions and picks the candidate that gates the most forget questions.
#[allow(clippy::too_many_arguments)]
fn sweep(
    lm: &LoadedModel,
    cfg: &KnowledgeConfig,
    req: &FitRequest,
    corpus: GuardrailFile,
    forget: &[Question],
    retain: &[Question],
    progress: &mut Progress,
) -> Result<(GuardrailFile, Vec<Candidate>)> {
    let mut files = Vec::new();
    let mut sizes: Vec<(usize, f64)> = SWEEP_SIZES.to_vec();
    if !sizes.contains(&(cfg.n_features, cfg.p_ratio)) {
        sizes.push((cfg.n_features, cfg.p_ratio));
    }
    let mut kept = Vec::new();
    for &(n, p) in &sizes {
        let cand = FitRequest {
            n_features: n,
            p_ratio: p,
            from_stats: Some(req.out.clone()),
            out: req.out.with_file_name(format!("candidate-{n}-{p}.json")),
            ..req.clone()
        };
        match fit_run(lm, &cand, None) {
            Ok(FitOutcome::Guardrail { file, .. }) => {
                files.push(*file);
                kept.push((n, p));
            }
            // Fewer than N features pass this p_ratio: the candidate does not exist.
            Err(Error::OutOfRange { field, .. }) if field == "--n-features" => {}
            Ok(FitOutcome::Shard { .. }) => {
                return Err(Error::Invalid("a sweep candidate wrote a shard".into()))
            }
            Err(e) => return Err(e),
        }
    }
    let sizes = kept;
    let sae = load_sae(&cfg.sae, None)?;
    let sets: Vec<Vec<usize>> = files
        .iter()
        .map(|f| f.feature_ids().iter().map(|&i| i as usize).collect())
        .collect();
    let (contexts, evidence): (Vec<Vec<u32>>, Vec<Vec<bool>>) =
        cloze_prompts(lm, forget.iter().chain(retain))?
            .into_iter()
            .map(|p| (p.ids, p.evidence))
            .unzip();
    let n_forget = forget.len();
    let total = contexts.len();
    let activity = prompt_activity(
        &lm.model,
        &sae,
        corpus.hook_point,
        &sets,
        &contexts,
        cfg.batch,
        &mut |d, _| progress("fit: selection sweep", d, total),
    )?;
    let mut best: Option<(usize, Candidate)> = None;
    let mut all = Vec::new();
    let counted: Vec<Vec<Vec<bool>>> = activity
        .into_iter()
        .map(|per_prompt| keep_evidence(per_prompt, &evidence))
        .collect::<Result<_>>()?;
    for (k, per_prompt) in counted.iter().enumerate() {
        let (f, r) = per_prompt.split_at(n_forget);
        for gate in sweep_gates(cfg) {
            let cal = calibrate(gate, r, cfg.p_dyn)?;
            let fired =
                |rows: &[Vec<bool>]| rows.iter().filter(|a| cal.gate.decide(a).fired).count();
            let c = Candidate {
                n_features: sizes[k].0,
                p_ratio: sizes[k].1,
                gate: cal.gate,
                tpr: Rate::new(fired(f), f.len()),
                fpr: Rate::new(fired(r), r.len()),
                chosen: false,
            };
            let better = best.as_ref().is_none_or(|(_, b)| {
                (
                    c.tpr.k,
                    std::cmp::Reverse(c.fpr.k),
                    std::cmp::Reverse(c.n_features),
                ) > (
                    b.tpr.k,
                    std::cmp::Reverse(b.fpr.k),
                    std::cmp::Reverse(b.n_features),
                )
            });
            if better {
                best = Some((k, c.clone()));
            }
            all.push(c);
        }
    }
    let (k, b) = best.ok_or_else(|| Error::Invalid("the sweep has no candidate".into()))?;
    for c in &mut all {
        c.chosen = c.n_features == b.n_features && c.p_ratio == b.p_ratio && c.gate == b.gate;
    }
    let calibration = calibrate(b.gate, &counted[k][n_forget..], cfg.p_dyn)?;
    let mut file = files.swap_remove(k);
    file.gate = calibration.gate;
    file.calibration = Some(calibration.summary(None)?);
    file.evidence = Evidence::UserText;
    Ok((file, all))
}

/// The cloze context of each question (`Question: …\nAnswer:`, what the gate decides on in the
/// evaluation) with the tokens the gate counts marked (the question's).
pub fn cloze_prompts<'a>(
    lm: &LoadedModel,
    questions: impl Iterator<Item = &'a Question>,
) -> Result<Vec<Prompt>> {
    questions
        .map(|q| {
            let ids = match protocol::request(&lm.tokenizer, Protocol::Cloze, "", &q.item)? {
                protocol::Request::Next { context, .. }
                | protocol::Request::Continuations { context, .. } => context,
            };
            let evidence = protocol::evidence(&lm.tokenizer, Protocol::Cloze, "", &q.item, &ids)?;
            Ok(Prompt { ids, evidence })
        })
        .collect()
}

fn write_documents(path: &PathBuf, questions: &[Question]) -> Result<()> {
    let lines: String = questions
        .iter()
        .map(|q| serde_json::json!({ "text": q.item.body() }).to_string() + "\n")
        .collect();
    std::fs::write(path, lines).map_err(|e| Error::io(path, e))
}

/// Track K's corpus fit: the documents `fit_guard` writes to `<work>/fit-{forget,retain}.jsonl`,
/// `cfg`'s N, p_ratio, gate and p_dyn, clamp −500, written to `<work>/guard-corpus.json`.
pub fn corpus_request(cfg: &KnowledgeConfig) -> FitRequest {
    let work = cfg.work();
    FitRequest {
        sae: cfg.sae.clone(),
        hook: None,
        forget: vec![work.join("fit-forget.jsonl")],
        // The retain corpus is the cluster's retain questions only, in the same format as the
        // forget ones: with WikiText beside them, features of the question format itself rank
        // first (a first run chose such features, firing on ~20% of forget tokens and ~4% of
        // retain ones, and gated 7% of held-out forget questions at 2% FPR).
        retain: vec![work.join("fit-retain.jsonl")],
        split: Split::Selection,
        n_features: cfg.n_features,
        p_ratio: cfg.p_ratio,
        min_forget_freq: None,
        p_dyn: cfg.p_dyn,
        gate: cfg.gate,
        clamp: 500.0,
        rows: 64,
        fraction: 100.0,
        ctx: 512,
        seed: 0,
        batch: 2,
        shard: None,
        from_stats: None,
        calibrate_mcq: Vec::new(),
        calibrate_free_form: Vec::new(),
        calibrate_limit: None,
        evidence: Evidence::AllTokens,
        out: work.join("guard-corpus.json"),
        overwrite: Overwrite::Force,
    }
}

/// Fits the guardrail of `cluster` and writes it to `<work>/guard.json` (kept: a later run reuses
/// it); returns it with its summary.
pub fn fit_guard(
    lm: &LoadedModel,
    cfg: &KnowledgeConfig,
    cluster: &str,
    progress: &mut Progress,
) -> Result<(GuardrailFile, FitSummary)> {
    let work = cfg.work();
    let guard_path = work.join("guard.json");
    let summary_path = work.join("fit-summary.json");
    let (forget, retain) = cluster_questions(
        &cfg.data,
        cluster,
        Split::Selection,
        cfg.mmlu_utility_per_subject,
    )?;
    if let (Ok(file), Ok(text)) = (
        GuardrailFile::load(&guard_path),
        std::fs::read_to_string(&summary_path),
    ) {
        if let Ok(summary) = serde_json::from_str::<FitSummary>(&text) {
            return Ok((file, summary));
        }
    }
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let forget_docs = work.join("fit-forget.jsonl");
    let retain_docs = work.join("fit-retain.jsonl");
    write_documents(&forget_docs, &forget)?;
    write_documents(&retain_docs, &retain)?;
    let req = corpus_request(cfg);
    let FitOutcome::Guardrail { file, .. } =
        fit_run(lm, &req, Some(&mut super::super::FitRelay(progress)))?
    else {
        return Err(Error::Invalid(
            "the track's fit wrote a shard, not a guardrail".into(),
        ));
    };
    let corpus = *file;
    let (mut file, sweep) = sweep(lm, cfg, &req, corpus, &forget, &retain, progress)?;
    let chosen = sweep
        .iter()
        .find(|c| c.chosen)
        .expect("one candidate is chosen");
    file.provenance.calibration_corpus = Some(format!(
        "{} selection-split retain questions of cluster {cluster} as cloze prompts (the question's tokens counted); \
         N, p_ratio and gate chosen on the selection split (TPR {:.1}% on {} forget questions at FPR {:.1}%)",
        retain.len(),
        100.0 * chosen.tpr.rate,
        chosen.tpr.n,
        100.0 * chosen.fpr.rate
    ));
    file.save(&guard_path)?;
    let summary = FitSummary {
        forget_questions: forget.len(),
        retain_questions: retain.len(),
        threshold: file.gate.threshold(),
        seconds: started.elapsed().as_secs_f64(),
        sweep,
    };
    let json = serde_json::to_string(&summary).expect("summary serialises");
    std::fs::write(&summary_path, json).map_err(|e| Error::io(&summary_path, e))?;
    Ok((file, summary))
}
