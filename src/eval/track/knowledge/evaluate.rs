//! The held-out evaluation of the track's guardrail under each intervention.
//!
//! Rows a gate does not fire on come out of the guarded model bit for bit as from the base model,
//! so a question's guarded outcome is its base outcome unless the gate fires on its prompt. The
//! gate decides on the cloze context (continuations never count), so the decisions come from one
//! pass to the hook layer over the contexts, and only gated questions are scored again.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::fit::cloze_prompts;
use super::measure::{base_outcomes, Outcome, WIKITEXT};
use super::{checkpoint, KnowledgeConfig, Progress};
use crate::data::read_documents;
use crate::eval::mcq::{evaluate, Protocol, Question};
use crate::eval::metrics::Rate;
use crate::eval::quality::{assess, next_token_kl, DegenerateThresholds, KlReport};
use crate::generate::{answer, user_prompt, GenerateOptions};
use crate::guard::{Guardrail, Intervention};
use crate::model::{LoadedModel, NoHooks};
use crate::stats::collect::{keep_evidence, prompt_activity};
use crate::Result;

/// Accuracy of one question set under one intervention.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    /// The intervention (`none` for the base model).
    pub intervention: String,
    /// `acc` (a refused question counts as wrong).
    pub acc: Rate,
    /// `acc_norm`.
    pub acc_norm: Rate,
    /// Questions refused.
    pub refused: Rate,
}

/// One question set: its gate firing rate and accuracy under each intervention.
#[derive(Debug, Clone, Serialize)]
pub struct SetResult {
    /// What the set is.
    pub name: String,
    /// Questions.
    pub n: usize,
    /// Questions the gate fired on.
    pub gated: Rate,
    /// The gate's score on each question (for AUROC; not written to the report).
    #[serde(skip)]
    pub scores: Vec<f64>,
    /// The base model first, then each intervention.
    pub scored: Vec<Scored>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rescored {
    id: String,
    correct: bool,
    correct_norm: Option<bool>,
}

/// Whether the gate of `guard` (a [`crate::guard::Evidence::UserText`] guardrail) fires on each
/// question's cloze context, counting the question's tokens.
pub fn gate_decisions(
    lm: &LoadedModel,
    guard: &Guardrail,
    questions: &[Question],
    batch: usize,
) -> Result<Vec<bool>> {
    Ok(gate_scores(lm, guard, questions, batch)?
        .iter()
        .map(|&s| s > guard.file().gate.threshold())
        .collect())
}

/// The gate's score on each question's cloze context (the question's tokens counted); it fires
/// where the score exceeds the threshold.
pub fn gate_scores(
    lm: &LoadedModel,
    guard: &Guardrail,
    questions: &[Question],
    batch: usize,
) -> Result<Vec<f64>> {
    let (contexts, evidence): (Vec<Vec<u32>>, Vec<Vec<bool>>) =
        cloze_prompts(lm, questions.iter())?
            .into_iter()
            .map(|p| (p.ids, p.evidence))
            .unzip();
    let features: Vec<usize> = guard
        .file()
        .feature_ids()
        .iter()
        .map(|&f| f as usize)
        .collect();
    let activity = prompt_activity(
        &lm.model,
        guard.sae(),
        guard.file().hook_point,
        &[features],
        &contexts,
        batch,
        &mut |_, _| {},
    )?
    .remove(0);
    Ok(keep_evidence(activity, &evidence)?
        .iter()
        .map(|counted| guard.file().gate.decide(counted).score)
        .collect())
}

/// Scores `questions` (with their base outcomes) under each intervention of `cfg`.
#[allow(clippy::too_many_arguments)]
pub fn score_set(
    lm: &LoadedModel,
    cfg: &KnowledgeConfig,
    guard: &Guardrail,
    name: &str,
    key: &str,
    questions: &[Question],
    base: &[Outcome],
    progress: &mut Progress,
) -> Result<SetResult> {
    let scores = checkpoint(&cfg.work(), &format!("gate-scores-{key}.json"), || {
        gate_scores(lm, guard, questions, cfg.batch)
    })?;
    let tau = guard.file().gate.threshold();
    let fired: Vec<bool> = scores.iter().map(|&s| s > tau).collect();
    let gated_qs: Vec<Question> = questions
        .iter()
        .zip(&fired)
        .filter(|(_, &f)| f)
        .map(|(q, _)| q.clone())
        .collect();
    let rate =
        |f: &dyn Fn(&Outcome) -> bool| Rate::new(base.iter().filter(|o| f(o)).count(), base.len());
    let mut scored = vec![Scored {
        intervention: "none".into(),
        acc: rate(&|o| o.correct),
        acc_norm: rate(&|o| o.correct_norm.unwrap_or(o.correct)),
        refused: Rate::new(0, base.len()),
    }];
    for &i in &cfg.interventions {
        let new: HashMap<String, Rescored> = if i == Intervention::Refuse {
            HashMap::new()
        } else {
            let file = format!("rescored-{key}-{}.json", i.to_string().replace(':', "_"));
            let n = gated_qs.len();
            checkpoint(&cfg.work(), &file, || {
                let mut g = [guard.with_intervention(i)?];
                let results = evaluate(
                    lm,
                    &gated_qs,
                    Protocol::Cloze,
                    cfg.batch,
                    &mut g,
                    &mut |d| progress(&format!("{name}: gated questions under {i}"), d, n),
                )?;
                Ok(results
                    .iter()
                    .map(|r| Rescored {
                        id: r.id.clone(),
                        correct: r.acc.correct,
                        correct_norm: r.acc_norm.as_ref().map(|j| j.correct),
                    })
                    .collect::<Vec<_>>())
            })?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect()
        };
        let outcome = |o: &Outcome, f: bool| -> (bool, bool) {
            match (f, i, new.get(&o.id)) {
                (false, _, _) => (o.correct, o.correct_norm.unwrap_or(o.correct)),
                (true, Intervention::Refuse, _) => (false, false),
                (true, _, Some(r)) => (r.correct, r.correct_norm.unwrap_or(r.correct)),
                (true, _, None) => (o.correct, o.correct_norm.unwrap_or(o.correct)),
            }
        };
        let pairs: Vec<(bool, bool)> = base
            .iter()
            .zip(&fired)
            .map(|(o, &f)| outcome(o, f))
            .collect();
        let n = base.len();
        scored.push(Scored {
            intervention: i.to_string(),
            acc: Rate::new(pairs.iter().filter(|p| p.0).count(), n),
            acc_norm: Rate::new(pairs.iter().filter(|p| p.1).count(), n),
            refused: Rate::new(
                if i == Intervention::Refuse {
                    fired.iter().filter(|&&f| f).count()
                } else {
                    0
                },
                n,
            ),
        });
    }
    Ok(SetResult {
        name: name.into(),
        n: questions.len(),
        gated: Rate::new(fired.iter().filter(|&&f| f).count(), fired.len()),
        scores,
        scored,
    })
}

/// The base outcomes of the MMLU utility sample, checkpointed.
pub fn mmlu_base(
    lm: &LoadedModel,
    cfg: &KnowledgeConfig,
    questions: &[Question],
    progress: &mut Progress,
) -> Result<Vec<Outcome>> {
    let n = questions.len();
    checkpoint(
        &cfg.work(),
        &format!("base-mmlu-utility-{}.json", cfg.mmlu_utility_per_subject),
        || {
            base_outcomes(lm, questions, Protocol::Cloze, cfg.batch, &mut |d| {
                progress("base model on the MMLU utility sample (cloze)", d, n)
            })
        },
    )
}

/// One free answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// The question stem (the user's message).
    pub prompt: String,
    /// The answer.
    pub answer: String,
    /// Whether the answer was refused.
    pub refused: bool,
    /// Whether a gate fired (on the prompt or during the answer).
    pub gated: bool,
    /// Whether the detector calls the answer degenerate (assessed when the report is built, so
    /// checkpointed answers are judged by the current detector).
    #[serde(default)]
    pub degenerate: bool,
}

/// Free answers of one side under one intervention.
#[derive(Debug, Clone, Serialize)]
pub struct FreeAnswers {
    /// `forget` or `retain`.
    pub side: String,
    /// The intervention (`none`: the base model).
    pub intervention: String,
    /// Degenerate answers among all (a refusal is not degenerate).
    pub gibberish: Rate,
    /// Refused answers.
    pub refused: Rate,
    /// Answers on which a gate fired.
    pub gated: Rate,
    /// Every answer.
    pub samples: Vec<Sample>,
}

/// Free answers to `stems` (one user chat message each), greedy, under `intervention`
/// (`None`: the base model), checkpointed.
pub fn free_answers(
    lm: &LoadedModel,
    cfg: &KnowledgeConfig,
    guard: &Guardrail,
    side: &str,
    stems: &[String],
    intervention: Option<Intervention>,
    progress: &mut Progress,
) -> Result<FreeAnswers> {
    let label = intervention.map_or("none".to_string(), |i| i.to_string());
    let name = format!(
        "answers-{side}-{}-{}.json",
        label.replace(':', "_"),
        cfg.max_tokens
    );
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_tokens,
        stop_tokens: lm.tokenizer.eos_id().into_iter().collect(),
        ..GenerateOptions::default()
    };
    let thresholds = DegenerateThresholds::default();
    let mut samples: Vec<Sample> = checkpoint(&cfg.work(), &name, || {
        let mut guards = match intervention {
            Some(i) => vec![guard.with_intervention(i)?],
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for (k, stem) in stems.iter().enumerate() {
            progress(&format!("free answers ({side}, {label})"), k, stems.len());
            let prompt = user_prompt(&lm.tokenizer, stem, None, false)?;
            let a = answer(lm, &prompt, &opts, &mut guards, &mut |_| {})?;
            let gated = a
                .prompt_decisions
                .iter()
                .chain(&a.final_decisions)
                .any(|d| d.fired);
            let refused = a.refused_by.is_some();
            out.push(Sample {
                prompt: stem.clone(),
                answer: a.text,
                refused,
                gated,
                degenerate: false,
            });
        }
        Ok(out)
    })?;
    for s in &mut samples {
        s.degenerate = !s.refused && assess(&s.answer, &thresholds).degenerate;
    }
    let n = samples.len();
    let count = |f: &dyn Fn(&Sample) -> bool| Rate::new(samples.iter().filter(|s| f(s)).count(), n);
    Ok(FreeAnswers {
        side: side.into(),
        intervention: label,
        gibberish: count(&|s| s.degenerate),
        refused: count(&|s| s.refused),
        gated: count(&|s| s.gated),
        samples,
    })
}

/// Next-token KL of the guarded model (clamping interventions) to the base model on WikiText.
pub fn wikitext_kl(
    lm: &LoadedModel,
    cfg: &KnowledgeConfig,
    guard: &Guardrail,
) -> Result<Vec<(String, KlReport)>> {
    let docs = read_documents(&cfg.data.join(WIKITEXT), crate::data::Split::All)?;
    let text: String = docs.join("\n");
    let mut ids = lm.tokenizer.encode(&text, false)?;
    ids.truncate(cfg.kl_windows * cfg.kl_window_tokens);
    let mut out = Vec::new();
    for &i in cfg
        .interventions
        .iter()
        .filter(|&&i| i != Intervention::Refuse)
    {
        let mut g = guard.with_intervention(i)?;
        let mut report = next_token_kl(
            &lm.model,
            &ids,
            cfg.kl_window_tokens,
            lm.tokenizer.leading_bos(),
            &mut NoHooks,
            &mut g,
        )?;
        report.kl.clear();
        out.push((i.to_string(), report));
    }
    Ok(out)
}
