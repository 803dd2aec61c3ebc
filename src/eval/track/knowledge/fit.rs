//! The track's guardrail, fitted on selection-split questions only: features chosen with the
//! cluster's forget questions against its retain questions and WikiText, then the gate's
//! threshold calibrated on the retain questions as the evaluation puts them to the model (cloze
//! prompts), counting the user's text ([`Evidence::UserText`]).

use std::path::PathBuf;

use serde::Serialize;

use super::measure::{cluster_questions, WIKITEXT};
use super::{KnowledgeConfig, Progress};
use crate::data::Split;
use crate::eval::mcq::{protocol, Protocol, Question};
use crate::guard::fit::run as fit_run;
use crate::guard::{
    calibrate, load_sae, Evidence, FitObserver, FitOutcome, FitRequest, GuardrailFile,
};
use crate::model::LoadedModel;
use crate::output::Overwrite;
use crate::stats::collect::prompt_activity;
use crate::{Error, Result};

/// How the guardrail was fitted.
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    /// Selection-split forget questions (the forget corpus).
    pub forget_questions: usize,
    /// Selection-split retain questions (retain corpus, with WikiText, and calibration prompts).
    pub retain_questions: usize,
    /// The calibrated threshold.
    pub threshold: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

struct Relay<'a, 'b>(&'a mut Progress<'b>);

impl FitObserver for Relay<'_, '_> {
    fn progress(&mut self, stage: &str, done: usize, total: usize) {
        (self.0)(&format!("fit: {stage}"), done, total);
    }
}

fn write_documents(path: &PathBuf, questions: &[Question]) -> Result<()> {
    let lines: String = questions
        .iter()
        .map(|q| serde_json::json!({ "text": q.item.body() }).to_string() + "\n")
        .collect();
    std::fs::write(path, lines).map_err(|e| Error::io(path, e))
}

/// The cloze contexts of `questions` (what the gate decides on in the evaluation).
pub fn cloze_contexts(lm: &LoadedModel, questions: &[Question]) -> Result<Vec<Vec<u32>>> {
    questions
        .iter()
        .map(|q| {
            let req = protocol::request(&lm.tokenizer, Protocol::Cloze, "", &q.item)?;
            Ok(match req {
                protocol::Request::Next { context, .. }
                | protocol::Request::Continuations { context, .. } => context,
            })
        })
        .collect()
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
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let summary = FitSummary {
                forget_questions: v["forget_questions"].as_u64().unwrap_or(0) as usize,
                retain_questions: v["retain_questions"].as_u64().unwrap_or(0) as usize,
                threshold: file.gate.threshold(),
                seconds: v["seconds"].as_f64().unwrap_or(0.0),
            };
            return Ok((file, summary));
        }
    }
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let forget_docs = work.join("fit-forget.jsonl");
    let retain_docs = work.join("fit-retain.jsonl");
    write_documents(&forget_docs, &forget)?;
    write_documents(&retain_docs, &retain)?;
    let req = FitRequest {
        sae: cfg.sae.clone(),
        hook: None,
        forget: vec![forget_docs],
        retain: vec![retain_docs, cfg.data.join(WIKITEXT)],
        split: Split::Selection,
        n_features: cfg.n_features,
        p_ratio: cfg.p_ratio,
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
        calibrate_limit: None,
        out: work.join("guard-corpus.json"),
        overwrite: Overwrite::Force,
    };
    let FitOutcome::Guardrail { file, .. } = fit_run(lm, &req, Some(&mut Relay(progress)))? else {
        return Err(Error::Invalid(
            "the track's fit wrote a shard, not a guardrail".into(),
        ));
    };
    let mut file = *file;
    let sae = load_sae(&cfg.sae, None)?;
    let features: Vec<usize> = file.feature_ids().iter().map(|&f| f as usize).collect();
    let contexts = cloze_contexts(lm, &retain)?;
    let n = contexts.len();
    let activity = prompt_activity(
        &lm.model,
        &sae,
        file.hook_point,
        &[features],
        &contexts,
        cfg.batch,
        &mut |d, _| progress("fit: calibration prompts", d, n),
    )?
    .remove(0);
    let calibration = calibrate(file.gate, &activity, cfg.p_dyn)?;
    file.gate = calibration.gate;
    file.calibration = Some(calibration.summary(None)?);
    file.evidence = Evidence::UserText;
    file.provenance.calibration_corpus = Some(format!(
        "{n} selection-split retain questions of cluster {cluster} as cloze prompts (Question: …\\nAnswer:), user text counted"
    ));
    file.save(&guard_path)?;
    let summary = FitSummary {
        forget_questions: forget.len(),
        retain_questions: retain.len(),
        threshold: file.gate.threshold(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string(&summary).expect("summary serialises");
    std::fs::write(&summary_path, json).map_err(|e| Error::io(&summary_path, e))?;
    Ok((file, summary))
}
