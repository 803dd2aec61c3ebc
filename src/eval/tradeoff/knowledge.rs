//! Track K's trade-off: every method of [`super::methods`] forgets ARC-Easy life science (the
//! knowledge SmolLM2 has, issue #11's track K) from the same selection-split questions, and is
//! measured by one harness on the same held-out questions the base model knows.
//!
//! * DSG (both configurations) is fitted by Track K's own code ([`fit_guard`]) on the 536
//!   selection-split life-science questions against the 712 other-science ones; the paper's
//!   configuration is a fresh fit from the same documents (its own statistics pass).
//! * The training baselines read `train_rows` of those questions per side, in the cloze format
//!   the evaluation scores (`Question: …\nAnswer: <right option>`, loss on the answer for the
//!   NLL-based objectives, every token for RMU).
//! * Every point is scored on the same held-out known forget and retain questions and held-out
//!   MMLU outside biology/medicine (cloze), the gibberish rate of free answers to forget stems, and
//!   next-token KL to the base model on WikiText-2 test.
//!
//! Every stage is checkpointed under `<out>/work/`, so an interrupted run resumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::build::{point_guard, timed, trained_model, with_paper_fit, Guards};
use super::methods::{sweep_points, Epochs, MethodPoint, Recipe, Sweep};
use super::{Cost, OnPoint, PointResult};
use crate::data::{read_documents, Split, SplitMix64, MMLU_BIO_SUBJECTS};
use crate::eval::mcq::{evaluate, protocol, Protocol, Question};
use crate::eval::metrics::Rate;
use crate::eval::quality::{assess, next_token_kl_between, DegenerateThresholds};
use crate::eval::track::knowledge::fit::{corpus_request, fit_guard};
use crate::eval::track::knowledge::measure::{
    base_outcomes, cluster_questions, mmlu_questions, Outcome, WIKITEXT,
};
use crate::eval::track::knowledge::{checkpoint, KnowledgeConfig};
use crate::eval::track::Progress;
use crate::generate::{answer, user_prompt, GenerateOptions};
use crate::guard::fit::FitRequest;
use crate::guard::{Gate, Guardrail, GuardrailFile, Intervention};
use crate::model::{self, LoadedModel, NoHooks};
use crate::output::Overwrite;
use crate::train::Example;
use crate::{Error, Result};

/// The forget cluster (Track K's measured choice: the knowledge the model has).
const CLUSTER: &str = "arc-life";

/// Everything `dsg bench tradeoff knowledge` takes.
#[derive(Debug, Clone)]
pub struct KnowledgeTradeoff {
    /// The base model file (trained copies are loaded from it).
    pub model: PathBuf,
    /// The shared data folder.
    pub data: PathBuf,
    /// The SAE DSG reads.
    pub sae: PathBuf,
    /// The results folder.
    pub out: PathBuf,
    /// Whether existing report files may be replaced.
    pub overwrite: Overwrite,
    /// Reduced (default) or full sweep.
    pub sweep: Sweep,
    /// Held-out questions per side scored by the base model to find known ones.
    pub candidates: usize,
    /// At most this many held-out known questions per side are evaluated.
    pub known: usize,
    /// Held-out MMLU questions per subject outside biology/medicine.
    pub mmlu_per_subject: usize,
    /// Selection-split questions per side the training baselines read.
    pub train_rows: usize,
    /// Free answers to forget stems per point (gibberish rate).
    pub generations: usize,
    /// New tokens per free answer.
    pub max_tokens: usize,
    /// WikiText windows for the KL, and tokens per window.
    pub kl_windows: usize,
    /// Tokens per KL window.
    pub kl_window_tokens: usize,
    /// Rows per forward pass.
    pub batch: usize,
    /// Seed of the question samples.
    pub seed: u64,
    /// A previous run's `report.json` whose finished points are reused (same sets required).
    pub resume_from: Option<PathBuf>,
}

/// The figure files the track writes besides the reports.
pub const FIGURES: [&str; 2] = ["pareto-retain.svg", "pareto-mmlu.svg"];

impl KnowledgeTradeoff {
    /// Checks the options, the data and the output folder before any model work; errors name the
    /// option.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("--candidates", self.candidates),
            ("--known", self.known),
            ("--mmlu-per-subject", self.mmlu_per_subject),
            ("--train-rows", self.train_rows),
            ("--generations", self.generations),
            ("--max-tokens", self.max_tokens),
            ("--kl-windows", self.kl_windows),
            ("--batch", self.batch),
        ] {
            if v == 0 {
                return Err(Error::out_of_range(name, v, "at least 1"));
            }
        }
        if self.kl_window_tokens < 2 {
            return Err(Error::out_of_range(
                "--kl-window-tokens",
                self.kl_window_tokens,
                "at least 2",
            ));
        }
        if !self.model.is_file() {
            return Err(Error::missing(&self.model, "model file (--model)"));
        }
        let wikitext = self.data.join(WIKITEXT);
        if !wikitext.is_file() {
            return Err(Error::missing(&wikitext, "shared data file (--data)"));
        }
        crate::eval::track::knowledge::measure::check_files(&self.data)?;
        crate::eval::track::check_out(
            &self.out,
            &FIGURES,
            &[
                self.data.as_path(),
                self.sae.as_path(),
                self.model.as_path(),
            ],
            self.overwrite,
        )
    }

    fn work(&self) -> PathBuf {
        self.out.join("work")
    }

    /// Track K's settings for its guardrail fit (`work/` shared with this run).
    fn knowledge(&self) -> KnowledgeConfig {
        KnowledgeConfig {
            data: self.data.clone(),
            sae: self.sae.clone(),
            out: self.out.clone(),
            overwrite: Overwrite::Force,
            mmlu_per_subject: 12,
            mmlu_utility_per_subject: self.mmlu_per_subject,
            n_features: 20,
            p_ratio: 99.0,
            p_dyn: 98.0,
            gate: Gate::Cusum {
                drift: 0.1,
                threshold: 0.0,
            },
            interventions: vec![Intervention::Refuse],
            generations: self.generations,
            max_tokens: self.max_tokens,
            kl_windows: self.kl_windows,
            kl_window_tokens: self.kl_window_tokens,
            batch: self.batch,
        }
    }
}

/// A previous report's data summary and points, read before any model work.
struct Previous {
    path: PathBuf,
    sets: serde_json::Value,
    points: Vec<PointResult>,
}

/// Reads `--resume-from`'s report: its `info.sets` and `points` must parse.
fn read_previous(path: &Path) -> Result<Previous> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: &str| {
        Error::Invalid(format!(
            "{} (--resume-from): expected a `dsg bench tradeoff` report.json, {what}",
            path.display()
        ))
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("found invalid JSON: {e}")))?;
    let sets = v
        .pointer("/info/sets")
        .cloned()
        .ok_or_else(|| bad("found no info.sets"))?;
    let points = serde_json::from_value(v.get("points").cloned().unwrap_or_default())
        .map_err(|e| bad(&format!("found unreadable points: {e}")))?;
    Ok(Previous {
        path: path.to_path_buf(),
        sets,
        points,
    })
}

/// Stores the previous run's points as this run's checkpoints (where none exists yet), after
/// checking that both runs evaluate the same sets; returns the reused points' ids.
fn reuse_points(
    previous: &Previous,
    sets: &serde_json::Value,
    sweep: &[MethodPoint],
    work: &Path,
) -> Result<Vec<String>> {
    if &previous.sets != sets {
        return Err(Error::Invalid(format!(
            "{} (--resume-from): its evaluation sets {} differ from this run's {}; rerun without \
             --resume-from or with the options it was made with",
            previous.path.display(),
            previous.sets,
            sets
        )));
    }
    let mut reused = Vec::new();
    for p in &previous.points {
        if !sweep.iter().any(|s| s.id == p.id) {
            continue;
        }
        let name = format!("{}.json", p.id);
        checkpoint(work, &name, || Ok(p.clone()))?;
        reused.push(p.id.clone());
    }
    Ok(reused)
}

/// The evaluation sets, fixed for every point.
struct EvalSets {
    forget: Vec<Question>,
    retain: Vec<Question>,
    mmlu: Vec<Question>,
    stems: Vec<String>,
    wikitext: Vec<u32>,
}

fn sample<T>(mut items: Vec<T>, k: usize, seed: u64) -> Vec<T> {
    if k < items.len() {
        SplitMix64::new(seed).sample(&mut items, k);
    }
    items.truncate(k);
    items
}

/// Held-out known questions: a seeded sample of candidates per side scored by the base model, the
/// first `known` it gets right under `acc` and `acc_norm`.
fn eval_sets(
    lm: &LoadedModel,
    cfg: &KnowledgeTradeoff,
    progress: &mut Progress,
) -> Result<(EvalSets, serde_json::Value)> {
    let (forget, retain) = cluster_questions(&cfg.data, CLUSTER, Split::Heldout, 1)?;
    let forget = sample(forget, cfg.candidates, cfg.seed);
    let retain = sample(retain, cfg.candidates, cfg.seed ^ 1);
    let all: Vec<Question> = forget.iter().chain(&retain).cloned().collect();
    let n = all.len();
    let outcomes: Vec<Outcome> = checkpoint(
        &cfg.work(),
        &format!("base-candidates-{}-{}.json", cfg.candidates, cfg.seed),
        || {
            base_outcomes(lm, &all, Protocol::Cloze, cfg.batch, &mut |d| {
                progress("base model on held-out candidates (cloze)", d, n)
            })
        },
    )?;
    let known = |qs: &[Question], os: &[Outcome]| -> Vec<Question> {
        qs.iter()
            .zip(os)
            .filter(|(_, o)| o.known())
            .map(|(q, _)| q.clone())
            .take(cfg.known)
            .collect()
    };
    let (fo, ro) = outcomes.split_at(forget.len());
    let forget_known = known(&forget, fo);
    let retain_known = known(&retain, ro);
    let mmlu: Vec<Question> = mmlu_questions(&cfg.data, Split::Heldout, cfg.mmlu_per_subject)?
        .into_iter()
        .filter(|q| !MMLU_BIO_SUBJECTS.contains(&q.item.subject.as_deref().unwrap_or("")))
        .collect();
    let stems = forget_known
        .iter()
        .take(cfg.generations)
        .map(|q| q.item.question.clone())
        .collect();
    let docs = read_documents(&cfg.data.join(WIKITEXT), Split::All)?;
    let mut wikitext = lm.tokenizer.encode(&docs.join("\n"), false)?;
    wikitext.truncate(cfg.kl_windows * cfg.kl_window_tokens);
    let info = serde_json::json!({
        "forget_candidates": forget.len(),
        "forget_known": forget_known.len(),
        "retain_candidates": retain.len(),
        "retain_known": retain_known.len(),
        "mmlu_outside": mmlu.len(),
        "free_answer_stems": cfg.generations.min(forget_known.len()),
        "wikitext_tokens": wikitext.len(),
    });
    Ok((
        EvalSets {
            forget: forget_known,
            retain: retain_known,
            mmlu,
            stems,
            wikitext,
        },
        info,
    ))
}

/// The guardrails of Track K's guard-based methods, fitted (or read back) with their costs.
fn fit_guards(
    lm: &LoadedModel,
    cfg: &KnowledgeTradeoff,
    progress: &mut Progress,
) -> Result<Guards> {
    let work = cfg.work();
    let kcfg = cfg.knowledge();
    let best_cost = timed(&work, "fit-dsg.json", || {
        fit_guard(lm, &kcfg, CLUSTER, progress).map(drop)
    })?;
    let best = GuardrailFile::load(work.join("guard.json"))?;
    let req = FitRequest {
        n_features: 20,
        p_ratio: 95.0,
        p_dyn: 95.0,
        gate: Gate::Paper { tau: 0.0 },
        out: work.join("guard-paper.json"),
        ..corpus_request(&kcfg)
    };
    with_paper_fit(lm, &req, (best, best_cost), &work, progress)
}

/// The baselines' training examples: `train_rows` selection-split questions per side in the cloze
/// format, the right option as the answer.
fn training_examples(
    lm: &LoadedModel,
    cfg: &KnowledgeTradeoff,
) -> Result<(Vec<Example>, Vec<Example>)> {
    let (forget, retain) = cluster_questions(&cfg.data, CLUSTER, Split::Selection, 1)?;
    let encode = |qs: Vec<Question>| -> Result<Vec<Example>> {
        qs.iter()
            .map(|q| {
                let context = protocol::prompt_text(&lm.tokenizer, Protocol::Cloze, "", &q.item)?;
                let answer = &q.item.choices[q.item.answer];
                let ids = lm.tokenizer.encode(&format!("{context} {answer}"), false)?;
                let loss_from = lm.tokenizer.encode(&context, false)?.len();
                Ok(Example { ids, loss_from })
            })
            .collect()
    };
    Ok((
        encode(sample(forget, cfg.train_rows, cfg.seed ^ 2))?,
        encode(sample(retain, cfg.train_rows, cfg.seed ^ 3))?,
    ))
}

/// Accuracy (`acc`, a refusal counting as wrong) and the fraction of questions a gate fired on.
fn accuracy(
    lm: &LoadedModel,
    qs: &[Question],
    guards: &mut [Guardrail],
    batch: usize,
    label: &str,
    progress: &mut Progress,
) -> Result<(Rate, Option<Rate>)> {
    let n = qs.len();
    let results = evaluate(lm, qs, Protocol::Cloze, batch, guards, &mut |d| {
        progress(label, d, n)
    })?;
    guards.iter_mut().for_each(|g| drop(g.take_records()));
    let correct = results.iter().filter(|r| r.acc.correct).count();
    let gated = (!guards.is_empty()).then(|| {
        Rate::new(
            results
                .iter()
                .filter(|r| r.guards.first().is_some_and(|d| d.iter().any(|d| d.fired)))
                .count(),
            n,
        )
    });
    Ok((Rate::new(correct, n), gated))
}

/// Measures one point: accuracy on the three sets, gibberish of free answers, KL to the base.
#[allow(clippy::too_many_arguments)]
fn measure(
    base: &LoadedModel,
    lm: &LoadedModel,
    mut guard: Option<Guardrail>,
    sets: &EvalSets,
    cfg: &KnowledgeTradeoff,
    point: &MethodPoint,
    cost: Option<Cost>,
    progress: &mut Progress,
) -> Result<PointResult> {
    let started = Instant::now();
    let mut guards: Vec<Guardrail> = guard.take().into_iter().collect();
    let label = |set: &str| format!("{} {}: {set}", point.method, point.knob);
    let (forget, gated_forget) = accuracy(
        lm,
        &sets.forget,
        &mut guards,
        cfg.batch,
        &label("forget"),
        progress,
    )?;
    let (retain, gated_retain) = accuracy(
        lm,
        &sets.retain,
        &mut guards,
        cfg.batch,
        &label("retain"),
        progress,
    )?;
    let (mmlu, _) = accuracy(
        lm,
        &sets.mmlu,
        &mut guards,
        cfg.batch,
        &label("MMLU"),
        progress,
    )?;
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_tokens,
        stop_tokens: lm.tokenizer.eos_id().into_iter().collect(),
        ..GenerateOptions::default()
    };
    let thresholds = DegenerateThresholds::default();
    let mut samples = Vec::new();
    let mut degenerate = 0;
    for (k, stem) in sets.stems.iter().enumerate() {
        progress(&label("free answers"), k, sets.stems.len());
        let prompt = user_prompt(&lm.tokenizer, stem, None, false)?;
        let a = answer(lm, &prompt, &opts, &mut guards, &mut |_| {})?;
        guards.iter_mut().for_each(|g| drop(g.take_records()));
        let refused = a.refused_by.is_some();
        let bad = !refused && assess(&a.text, &thresholds).degenerate;
        degenerate += usize::from(bad);
        samples.push(serde_json::json!({"prompt": stem, "answer": a.text, "refused": refused, "degenerate": bad}));
    }
    let kl = match guards.first_mut() {
        Some(g) => next_token_kl_between(
            (&base.model, &mut NoHooks),
            (&lm.model, g),
            &sets.wikitext,
            cfg.kl_window_tokens,
            lm.tokenizer.leading_bos(),
        )?,
        None => next_token_kl_between(
            (&base.model, &mut NoHooks),
            (&lm.model, &mut NoHooks),
            &sets.wikitext,
            cfg.kl_window_tokens,
            lm.tokenizer.leading_bos(),
        )?,
    };
    Ok(PointResult {
        method: point.method.clone(),
        knob: point.knob.clone(),
        id: point.id.clone(),
        forget,
        retain,
        mmlu,
        gated_forget,
        gated_retain,
        gibberish: Rate::new(degenerate, sets.stems.len()),
        kl: kl.mean_kl,
        perplexity: (kl.base_perplexity, kl.guarded_perplexity),
        cost,
        eval_seconds: started.elapsed().as_secs_f64(),
        samples,
    })
}

/// Runs the trade-off on Track K and returns every point (base first) with the data summary; the
/// caller writes the report ([`super::report`]), also after each point through `on_point`.
pub fn run(
    cfg: &KnowledgeTradeoff,
    progress: &mut Progress,
    on_point: &mut OnPoint<PointResult>,
) -> Result<(Vec<PointResult>, serde_json::Value)> {
    cfg.check()?;
    let previous = cfg.resume_from.as_deref().map(read_previous).transpose()?;
    let device = candle_core::Device::Cpu;
    let base = model::load(&cfg.model, &device)?;
    let (sets, info) = eval_sets(&base, cfg, progress)?;
    let guards = fit_guards(&base, cfg, progress)?;
    let examples = training_examples(&base, cfg)?;
    let layer = guards.best.0.hook_point.layer;
    let info = serde_json::json!({
        "sets": info,
        "train_rows_per_side": examples.0.len(),
        "dsg_features": guards.best.0.feature_ids(),
        "dsg_gate": guards.best.0.gate,
        "paper_features": guards.paper.0.feature_ids(),
        "paper_gate": guards.paper.0.gate,
        "farrell_features": guards.farrell.feature_ids(),
    });
    let points = sweep_points(cfg.sweep, layer, Epochs::KNOWLEDGE);
    let mut info = info;
    if let Some(p) = &previous {
        let reused = reuse_points(p, &info["sets"], &points, &cfg.work().join("points"))?;
        info["reused_from"] = serde_json::json!({
            "report": p.path.display().to_string(),
            "points": reused,
        });
    }
    let mut results = Vec::new();
    for (k, point) in points.iter().enumerate() {
        let r = checkpoint(
            &cfg.work().join("points"),
            &format!("{}.json", point.id),
            || match &point.recipe {
                Recipe::Base => measure(&base, &base, None, &sets, cfg, point, None, progress),
                Recipe::Guard {
                    guard,
                    intervention,
                } => {
                    let g =
                        point_guard(&base, &cfg.work(), &cfg.sae, &guards, *guard, *intervention)?;
                    let cost = Some(guards.cost(*guard));
                    measure(&base, &base, Some(g), &sets, cfg, point, cost, progress)
                }
                Recipe::Train { config } => {
                    let dir = cfg.work().join("train").join(&point.id);
                    let name = format!("{} {}", point.method, point.knob);
                    let (lm, cost) =
                        trained_model(&cfg.model, &[], config, &examples, &dir, &name, progress)?;
                    measure(&base, &lm, None, &sets, cfg, point, Some(cost), progress)
                }
            },
        )?;
        results.push(r);
        let pending: Vec<String> = points[k + 1..]
            .iter()
            .map(|p| format!("{} {}", p.method, p.knob))
            .collect();
        on_point(&results, &info, &pending)?;
    }
    Ok((results, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> Previous {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("results/tradeoff/knowledge/report.json");
        read_previous(&path).expect("the committed Track K report parses")
    }

    #[test]
    fn a_previous_report_seeds_the_checkpoints_of_its_points() {
        let previous = committed();
        let work = std::env::temp_dir().join(format!("dsg-reuse-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let sweep = sweep_points(Sweep::Reduced, 3, Epochs::KNOWLEDGE);
        let reused = reuse_points(&previous, &previous.sets, &sweep, &work).unwrap();
        assert_eq!(reused.len(), previous.points.len());
        for p in &previous.points {
            let text = std::fs::read_to_string(work.join(format!("{}.json", p.id))).unwrap();
            let back: PointResult = serde_json::from_str(&text).unwrap();
            assert_eq!(&back, p);
        }
        std::fs::remove_dir_all(&work).unwrap();
    }

    #[test]
    fn a_previous_report_on_other_sets_is_refused() {
        let previous = committed();
        let mut sets = previous.sets.clone();
        sets["forget_known"] = serde_json::json!(1);
        let work = std::env::temp_dir().join(format!("dsg-reuse-bad-{}", std::process::id()));
        let err = reuse_points(
            &previous,
            &sets,
            &sweep_points(Sweep::Reduced, 3, Epochs::KNOWLEDGE),
            &work,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--resume-from") && err.contains("differ"),
            "{err}"
        );
        assert!(!work.exists(), "nothing written on a mismatch");
    }
}
