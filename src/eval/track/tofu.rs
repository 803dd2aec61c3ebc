//! Track T (`dsg forgetting tofu`): TOFU (Maini et al. 2024), where the model demonstrably knows
//! what it must forget because it was taught it. The default model is fine-tuned (LoRA) on a
//! documented subset of TOFU's fictitious authors, the forget split's authors included (the
//! target), and once more without them (the retain model, TOFU's reference for forget quality).
//! DSG is then fitted on the target: features selected on the forget authors' QA against the
//! retain authors' QA plus WikiText, the gate calibrated on the retain authors' questions as chat
//! prompts, counting the user's text. Every model and every intervention is evaluated with
//! open-unlearning's metrics ([`crate::eval::tofu`]).
//!
//! TOFU's protocol unlearns the forget set itself, so the forget questions are both what the
//! guardrail is fitted on and what it is evaluated on (as for every unlearning method on TOFU);
//! the retain questions used for calibration are the retain set of the evaluation too. Real
//! authors and world facts are never seen by the fit.
//!
//! Trained adapters, fitted statistics and evaluations are kept under `<out>/work/` and reused by a
//! later run with the same options.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{check_out, to_json, Stopwatch, TrackFiles};
use crate::data::tofu::{read_tofu_qa, ForgetSplit, QA_PER_AUTHOR};
use crate::data::Split;
use crate::eval::metrics::Rate;
use crate::eval::tofu::{
    encode_qa, evaluate, RetainReference, SetSizes, TofuOptions, TofuReport, TofuSets,
};
use crate::guard::fit::run as fit_run;
use crate::guard::recipe::WIKITEXT_FILE;
use crate::guard::{
    calibrate, load_sae, Evidence, FitOutcome, FitRequest, Gate, Guardrail, GuardrailFile,
    Intervention,
};
use crate::model::{self, AdapterMode, LoadedModel, NoHooks};
use crate::output::Overwrite;
use crate::stats::collect::{keep_evidence, prompt_activity};
use crate::stats::prompts::free_form_prompt;
use crate::train::{train_to_dir, Example, RunOptions, TrainConfig};
use crate::{Error, Result};

pub use super::Progress;

/// Track T's options.
#[derive(Debug, Clone)]
pub struct TofuTrackConfig {
    /// The base model (GGUF file or Hugging Face folder).
    pub model: PathBuf,
    /// The shared data folder (TOFU in `tofu/`, WikiText in `wikitext/`).
    pub data: PathBuf,
    /// The SAE the guardrail reads.
    pub sae: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    /// Whether existing reports may be replaced.
    pub overwrite: Overwrite,
    /// The forget split (its authors are the last ones of `full.json`).
    pub split: ForgetSplit,
    /// Retain authors trained on and evaluated: the first ones of `full.json` (TOFU's
    /// `retain_perturbed` holds authors 0–19).
    pub retain_authors: usize,
    /// Fine-tuning of the target and the retain model.
    pub train: TrainConfig,
    /// Real-author and world-fact rows evaluated (`None`: all).
    pub utility_rows: Option<usize>,
    /// Greedy answers' length limit.
    pub max_new_tokens: usize,
    /// WikiText-2 training documents added to the retain corpus.
    pub wikitext_docs: usize,
    /// Calibration percentile of the gate on the retain questions.
    pub p_dyn: f64,
    /// The interventions evaluated.
    pub interventions: Vec<Intervention>,
}

/// Track T's fine-tuning of the target and the retain model: LoRA of `rank` (α twice the rank) on
/// every projection, NLL on the answers, AdamW, cosine decay after 2 warm-up steps, gradient norm
/// clipped at 1.
pub fn lora_training(rank: usize, epochs: usize, lr: f64, batch_size: usize) -> TrainConfig {
    TrainConfig {
        method: crate::train::Method::Lora(crate::train::LoraSpec::all_projections(
            rank,
            2.0 * rank as f64,
        )),
        epochs,
        max_steps: None,
        batch_size,
        grad_accum: 1,
        lr,
        warmup_steps: 2,
        decay: crate::train::Decay::Cosine,
        adamw: crate::train::AdamWConfig::default(),
        max_grad_norm: Some(1.0),
        seed: 0,
        objective: crate::train::Objective::Nll,
    }
}

/// One evaluated configuration's row of the report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrackRow {
    /// `target`, `retain model`, or the intervention on the target.
    pub name: String,
    /// Forget ROUGE-L recall.
    pub forget_rouge_l: f64,
    /// Forget answer probability.
    pub forget_prob: f64,
    /// Forget truth ratio (`closer_to_1_better` aggregate).
    pub forget_truth_ratio: f64,
    /// KS p-value of the forget truth ratios against the retain model's.
    pub forget_quality: Option<f64>,
    /// Harmonic mean of the nine utility aggregates.
    pub model_utility: Option<f64>,
    /// Retain ROUGE-L recall.
    pub retain_rouge_l: f64,
    /// Degenerate free answers to forget questions.
    pub forget_gibberish: Rate,
    /// Refused forget questions.
    pub forget_refused: Rate,
    /// Forget / retain / real-author / world-fact questions on which the gate fired.
    pub gated: [Rate; 4],
    /// Seconds the evaluation took.
    pub seconds: f64,
}

/// What the track measured.
#[derive(Debug, Clone, Serialize)]
pub struct TofuTrackReport {
    /// The command that reproduces it.
    pub command: String,
    /// Forget authors (indices in `full.json`) and retain authors.
    pub forget_authors: Vec<usize>,
    /// Retain authors.
    pub retain_authors: Vec<usize>,
    /// Training examples of the target and of the retain model.
    pub train_examples: [usize; 2],
    /// Fine-tuning options.
    pub train: TrainConfig,
    /// Both runs' summaries (`train.json` of each).
    pub train_runs: Vec<serde_json::Value>,
    /// sha256 of the target's and the retain model's adapter folders (training is deterministic:
    /// the command reproduces them).
    pub adapter_sha256: [String; 2],
    /// The guardrail's features, gate and threshold.
    pub guard: String,
    /// Every evaluated configuration.
    pub rows: Vec<TrackRow>,
    /// Goals and whether each was met.
    pub goals: Vec<(String, bool)>,
    /// Wall time of each stage.
    pub stages: Vec<super::Stage>,
}

/// The QA rows of `authors` from `full.json`, as training examples and as plain texts.
fn author_rows(full: &[crate::data::QaItem], authors: &[usize]) -> Vec<crate::data::QaItem> {
    authors
        .iter()
        .flat_map(|a| {
            full[a * QA_PER_AUTHOR..(a + 1) * QA_PER_AUTHOR]
                .iter()
                .cloned()
        })
        .collect()
}

pub(crate) fn examples(lm: &LoadedModel, rows: &[crate::data::QaItem]) -> Result<Vec<Example>> {
    rows.iter()
        .map(|r| {
            let e = encode_qa(&lm.tokenizer, &r.question, &r.answer)?;
            Ok(Example {
                loss_from: e.answer_start,
                ids: e.ids,
            })
        })
        .collect()
}

/// Trains (or reuses, when `<dir>/adapter` exists from a run with the same options) one LoRA run.
fn train_run(
    cfg: &TofuTrackConfig,
    dir: &Path,
    rows: &[crate::data::QaItem],
    progress: &mut Progress,
) -> Result<serde_json::Value> {
    let record = dir.join("train.json");
    if let Ok(text) = std::fs::read_to_string(&record) {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&record, "(root)", "a training record", e.to_string()))?;
        if v["config"] == serde_json::to_value(&cfg.train).expect("serialisable")
            && dir.join("adapter").is_dir()
        {
            return Ok(v);
        }
    }
    let mut lm = model::load(&cfg.model, &candle_core::Device::Cpu)?;
    let ex = examples(&lm, rows)?;
    let opts = RunOptions {
        out: dir.to_path_buf(),
        checkpoint_every: 10,
        // An unfinished run (a checkpoint, no adapter yet) continues; a finished one is redone.
        resume: dir.join("checkpoint/state.json").is_file() && !dir.join("adapter").is_dir(),
        force: true,
        base_model: lm.name(),
    };
    let name = format!(
        "train {}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    train_to_dir(
        &mut lm.model,
        &ex,
        &[],
        cfg.train.clone(),
        &opts,
        &mut NoHooks,
        &mut |l, total| progress(&name, l.step + 1, total),
    )?;
    let text = std::fs::read_to_string(&record).map_err(|e| Error::io(&record, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::format(&record, "(root)", "a training record", e.to_string()))
}

pub(crate) fn load_adapted(cfg: &TofuTrackConfig, adapter: &Path) -> Result<LoadedModel> {
    model::load_adapted(
        &cfg.model,
        None,
        &[adapter.to_path_buf()],
        AdapterMode::OnTheFly,
        &candle_core::Device::Cpu,
    )
}

/// Evaluates one configuration into `dir` (open-unlearning's files and `report.json`), or reads its
/// row back from `<dir>/row.json` when an earlier run finished it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_cached(
    name: &str,
    lm: &LoadedModel,
    guards: &[Guardrail],
    sets: &TofuSets,
    opts: &TofuOptions,
    retain: Option<&RetainReference>,
    dir: &Path,
    progress: &mut Progress,
) -> Result<TrackRow> {
    let cached = dir.join("row.json");
    if let Ok(text) = std::fs::read_to_string(&cached) {
        if let Ok(r) = serde_json::from_str::<TrackRow>(&text) {
            return Ok(r);
        }
    }
    let report = evaluate(lm, guards, sets, opts, retain, progress)?;
    report.write(dir)?;
    let r = row(name, &report);
    let text = serde_json::to_string_pretty(&r).expect("serialisable");
    std::fs::write(&cached, text).map_err(|e| Error::io(&cached, e))?;
    Ok(r)
}

fn row(name: &str, r: &TofuReport) -> TrackRow {
    let s = r.summary();
    TrackRow {
        name: name.to_string(),
        forget_rouge_l: r.forget.rouge_l_recall(),
        forget_prob: r.forget.prob(),
        forget_truth_ratio: s.get("forget_truth_ratio").copied().unwrap_or(f64::NAN),
        forget_quality: s.get("forget_quality").copied(),
        model_utility: r.model_utility(),
        retain_rouge_l: r.retain.rouge_l_recall(),
        forget_gibberish: r.forget.gibberish(),
        forget_refused: r.forget.refusals(),
        gated: [
            r.forget.gated(),
            r.retain.gated(),
            r.real_authors.gated(),
            r.world_facts.gated(),
        ],
        seconds: r.seconds,
    }
}

/// The paper-configured fit on the target's corpora (forget authors' QA; retain authors' QA plus
/// WikiText-2 selection documents), its documents written to `<out>/work/`: N 20, p_ratio 95, the
/// ρ gate at `p_dyn` of the retain rows, every token counted; it writes `guard-corpus.json`.
pub(crate) fn corpus_request(
    cfg: &TofuTrackConfig,
    forget: &[crate::data::QaItem],
    retain: &[crate::data::QaItem],
) -> Result<FitRequest> {
    let work = cfg.out.join("work");
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let docs = |name: &str, rows: &[crate::data::QaItem], extra: &[String]| -> Result<PathBuf> {
        let p = work.join(name);
        let lines: String = rows
            .iter()
            .map(|r| format!("{} {}", r.question, r.answer))
            .chain(extra.iter().cloned())
            .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
            .collect();
        std::fs::write(&p, lines).map_err(|e| Error::io(&p, e))?;
        Ok(p)
    };
    let wiki_path = cfg.data.join(WIKITEXT_FILE);
    let wiki: Vec<String> = crate::data::read_documents(&wiki_path, Split::Selection)?
        .into_iter()
        .filter(|d| d.len() > 200)
        .take(cfg.wikitext_docs)
        .collect();
    Ok(FitRequest {
        sae: cfg.sae.clone(),
        hook: None,
        forget: vec![docs("fit-forget.jsonl", forget, &[])?],
        retain: vec![docs("fit-retain.jsonl", retain, &wiki)?],
        split: Split::Selection,
        n_features: 20,
        p_ratio: 95.0,
        min_forget_freq: None,
        p_dyn: cfg.p_dyn,
        gate: Gate::Paper { tau: 0.0 },
        clamp: 500.0,
        rows: 256,
        fraction: 100.0,
        ctx: 256,
        seed: 0,
        batch: 4,
        shard: None,
        from_stats: None,
        calibrate_mcq: Vec::new(),
        calibrate_free_form: Vec::new(),
        calibrate_limit: None,
        evidence: Evidence::AllTokens,
        out: work.join("guard-corpus.json"),
        overwrite: Overwrite::Force,
    })
}

/// Fits the guardrail on the target (or reads `<work>/guard.json` back).
pub(crate) fn fit_guard(
    cfg: &TofuTrackConfig,
    lm: &LoadedModel,
    forget: &[crate::data::QaItem],
    retain: &[crate::data::QaItem],
    progress: &mut Progress,
) -> Result<GuardrailFile> {
    let work = cfg.out.join("work");
    let guard_path = work.join("guard.json");
    if let Ok(file) = GuardrailFile::load(&guard_path) {
        return Ok(file);
    }
    let req = corpus_request(cfg, forget, retain)?;
    let mut relay = super::FitRelay(progress);
    let FitOutcome::Guardrail { .. } = fit_run(lm, &req, Some(&mut relay))? else {
        return Err(Error::Invalid("the track's fit wrote a shard".into()));
    };
    // Candidates from the same statistics; each gate calibrated on the retain questions as chat
    // prompts (the user's text counted); the one gating the most forget questions is kept.
    let sae = load_sae(&cfg.sae, None)?;
    let prompts: Vec<_> = forget
        .iter()
        .chain(retain)
        .map(|r| free_form_prompt(&lm.tokenizer, &r.question))
        .collect::<Result<_>>()?;
    let (ids, evidence): (Vec<Vec<u32>>, Vec<Vec<bool>>) =
        prompts.into_iter().map(|p| (p.ids, p.evidence)).unzip();
    let mut best: Option<(usize, usize, GuardrailFile)> = None;
    for n in [10usize, 20, 40, 80] {
        let cand = FitRequest {
            n_features: n,
            from_stats: Some(req.out.clone()),
            out: work.join(format!("candidate-{n}.json")),
            ..req.clone()
        };
        let file = match fit_run(lm, &cand, None) {
            Ok(FitOutcome::Guardrail { file, .. }) => *file,
            Err(Error::OutOfRange { field, .. }) if field == "--n-features" => continue,
            Ok(_) => return Err(Error::Invalid("a candidate wrote a shard".into())),
            Err(e) => return Err(e),
        };
        let set: Vec<usize> = file.feature_ids().iter().map(|&i| i as usize).collect();
        let total = ids.len();
        let activity = prompt_activity(
            &lm.model,
            &sae,
            file.hook_point,
            &[set],
            &ids,
            8,
            &mut |d, _| progress(&format!("fit: N={n} activity"), d, total),
        )?;
        let counted = keep_evidence(activity.into_iter().next().expect("one set"), &evidence)?;
        let (f, r) = counted.split_at(forget.len());
        let gates = [
            Gate::Paper { tau: 0.0 },
            Gate::Window { width: 8, tau: 0.0 },
            Gate::Cusum {
                drift: 0.1,
                threshold: 0.0,
            },
        ];
        for gate in gates {
            let cal = calibrate(gate, r, cfg.p_dyn)?;
            let tp = f.iter().filter(|a| cal.gate.decide(a).fired).count();
            let fp = r.iter().filter(|a| cal.gate.decide(a).fired).count();
            if best.as_ref().is_none_or(|(btp, bfp, _)| {
                (tp, std::cmp::Reverse(fp)) > (*btp, std::cmp::Reverse(*bfp))
            }) {
                let mut g = file.clone();
                g.gate = cal.gate;
                g.calibration = Some(cal.summary(None)?);
                g.evidence = Evidence::UserText;
                g.provenance.calibration_corpus = Some(format!(
                    "{} retain-author questions as chat user messages (user text counted); N and gate chosen for the most \
                     forget questions gated: {tp}/{} at {fp}/{} retain",
                    r.len(),
                    f.len(),
                    r.len()
                ));
                best = Some((tp, fp, g));
            }
        }
    }
    let (_, _, file) = best.ok_or_else(|| Error::Invalid("no guardrail candidate".into()))?;
    file.save(&guard_path)?;
    Ok(file)
}

/// Track T's trained models and reference evaluations: what both `dsg forgetting tofu` and the
/// trade-off on TOFU ([`crate::eval::tradeoff::tofu`]) build on.
pub struct Prepared {
    /// The target (base model with its TOFU adapter, applied on the fly).
    pub target: LoadedModel,
    /// The evaluation sets.
    pub sets: TofuSets,
    /// The evaluation options every configuration is measured with.
    pub opts: TofuOptions,
    /// The retain model's forget truth ratios (forget quality's reference).
    pub reference: RetainReference,
    /// Forget authors' QA rows (TOFU's forget set).
    pub forget_rows: Vec<crate::data::QaItem>,
    /// Retain authors' QA rows.
    pub retain_rows: Vec<crate::data::QaItem>,
    /// Forget authors (indices in `full.json`).
    pub forget_authors: Vec<usize>,
    /// Retain authors.
    pub retain_authors: Vec<usize>,
    /// Training examples of the target and of the retain model.
    pub train_examples: [usize; 2],
    /// Both training runs' records (`train.json`).
    pub train_runs: Vec<serde_json::Value>,
    /// The retain model's and the target's rows.
    pub rows: Vec<TrackRow>,
}

/// Checks Track T's inputs (SAE, model, data, options) before any training.
pub fn check(cfg: &TofuTrackConfig) -> Result<()> {
    cfg.train.validate()?;
    let sae = load_sae(&cfg.sae, None)?;
    let base = model::load(&cfg.model, &candle_core::Device::Cpu)?;
    sae.check_model(base.model.config().d_model, base.model.config().n_layers)?;
    if !(0.0..=100.0).contains(&cfg.p_dyn) {
        return Err(Error::out_of_range("--p-dyn", cfg.p_dyn, "0 to 100"));
    }
    if !cfg.data.join(WIKITEXT_FILE).is_file() {
        return Err(Error::missing(&cfg.data, WIKITEXT_FILE));
    }
    if cfg.retain_authors == 0 || cfg.retain_authors > 20 {
        return Err(Error::out_of_range(
            "--retain-authors",
            cfg.retain_authors,
            "1 to 20 (TOFU's retain_perturbed holds authors 0-19)",
        ));
    }
    Ok(())
}

/// Trains the target and the retain model (or reuses them from `<out>/work/`) and evaluates both;
/// [`check`] must have passed.
pub fn prepare(
    cfg: &TofuTrackConfig,
    clock: &mut Stopwatch,
    progress: &mut Progress,
) -> Result<Prepared> {
    let tofu = cfg.data.join("tofu");
    let full = read_tofu_qa(&tofu.join("full.json"))?;
    let forget_authors: Vec<usize> = cfg.split.author_range().collect();
    let retain_authors: Vec<usize> = (0..cfg.retain_authors).collect();
    let forget_rows = author_rows(&full, &forget_authors);
    let retain_rows = author_rows(&full, &retain_authors);
    let target_rows: Vec<_> = retain_rows.iter().chain(&forget_rows).cloned().collect();
    let sets = TofuSets::read_dir(&tofu, cfg.split)?;
    let opts = TofuOptions {
        sizes: SetSizes {
            forget: None,
            retain: Some(retain_rows.len()),
            real_authors: cfg.utility_rows,
            world_facts: cfg.utility_rows,
        },
        max_new_tokens: cfg.max_new_tokens,
        ..TofuOptions::default()
    };
    let work = cfg.out.join("work");
    let target_run = train_run(cfg, &work.join("target"), &target_rows, progress)?;
    clock.lap("train target");
    let retain_run = train_run(cfg, &work.join("retain"), &retain_rows, progress)?;
    clock.lap("train retain model");

    let retain_lm = load_adapted(cfg, &work.join("retain/adapter"))?;
    let retain_dir = work.join("eval-retain");
    let mut p = |s: &str, d: usize, t: usize| progress(&format!("eval retain model: {s}"), d, t);
    let retain_row = evaluate_cached(
        "retain model",
        &retain_lm,
        &[],
        &sets,
        &opts,
        None,
        &retain_dir,
        &mut p,
    )?;
    drop(retain_lm);
    let reference = RetainReference::read(&retain_dir.join("TOFU_EVAL.json"))?;
    clock.lap("evaluate retain model");
    let target = load_adapted(cfg, &work.join("target/adapter"))?;
    let mut p = |s: &str, d: usize, t: usize| progress(&format!("eval target: {s}"), d, t);
    let target_row = evaluate_cached(
        "target",
        &target,
        &[],
        &sets,
        &opts,
        Some(&reference),
        &work.join("eval-target"),
        &mut p,
    )?;
    clock.lap("evaluate target");
    Ok(Prepared {
        target,
        sets,
        opts,
        reference,
        train_examples: [target_rows.len(), retain_rows.len()],
        forget_rows,
        retain_rows,
        forget_authors,
        retain_authors,
        train_runs: vec![target_run, retain_run],
        rows: vec![retain_row, target_row],
    })
}

/// Runs Track T (see the module documentation) and returns its files; `command` is recorded.
pub fn run(cfg: &TofuTrackConfig, command: &str, progress: &mut Progress) -> Result<TrackFiles> {
    check_out(
        &cfg.out,
        &["guard.json"],
        &[&cfg.data, &cfg.model],
        cfg.overwrite,
    )?;
    // Every input is checked before the first (long) training run.
    check(cfg)?;
    let mut clock = Stopwatch::new();
    let Prepared {
        target,
        sets,
        opts,
        reference,
        forget_rows,
        retain_rows,
        forget_authors,
        retain_authors,
        train_examples,
        train_runs,
        rows,
    } = prepare(cfg, &mut clock, progress)?;
    let work = cfg.out.join("work");
    let file = fit_guard(cfg, &target, &forget_rows, &retain_rows, progress)?;
    clock.lap("fit guardrail");
    let guard_out = cfg.out.join("guard.json");
    file.save(&guard_out)?;
    let guard = Guardrail::load(&guard_out, &target, Some(&cfg.sae))?;
    let mut rows = rows;
    for iv in &cfg.interventions {
        let g = guard.with_intervention(*iv)?;
        let name = format!("target + DSG {iv}");
        let dir = work.join(format!("eval-{}", iv.to_string().replace(':', "_")));
        let mut p = |s: &str, d: usize, t: usize| progress(&format!("eval {name}: {s}"), d, t);
        rows.push(evaluate_cached(
            &name,
            &target,
            &[g],
            &sets,
            &opts,
            Some(&reference),
            &dir,
            &mut p,
        )?);
        clock.lap(&format!("evaluate {iv}"));
    }
    // open-unlearning's summary files of every configuration beside the report.
    for entry in std::fs::read_dir(&work).map_err(|e| Error::io(&work, e))? {
        let dir = entry.map_err(|e| Error::io(&work, e))?.path();
        let Some(name) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("eval-"))
        else {
            continue;
        };
        for f in ["TOFU_EVAL.json", "TOFU_SUMMARY.json"] {
            let dst = cfg.out.join(name);
            std::fs::create_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
            std::fs::copy(dir.join(f), dst.join(f)).map_err(|e| Error::io(dir.join(f), e))?;
        }
    }
    let t = &rows[1];
    let mut goals = vec![(
        format!(
            "target knows the forget set: ROUGE-L recall {:.3} >= 0.8",
            t.forget_rouge_l
        ),
        t.forget_rouge_l >= 0.8,
    )];
    for r in &rows[2..] {
        let u = r.model_utility.unwrap_or(0.0);
        let tu = t.model_utility.unwrap_or(f64::NAN);
        goals.push((
            format!(
                "{}: forget ROUGE-L {:.3} <= half the target's ({:.3}) at utility {:.3} >= 95% of {:.3}",
                r.name,
                r.forget_rouge_l,
                t.forget_rouge_l / 2.0,
                u,
                tu
            ),
            r.forget_rouge_l <= t.forget_rouge_l / 2.0 && u >= 0.95 * tu,
        ));
    }
    let report = TofuTrackReport {
        command: command.to_string(),
        forget_authors,
        retain_authors,
        train_examples,
        train: cfg.train.clone(),
        train_runs,
        adapter_sha256: [
            crate::guard::hook::artifact_sha256(&work.join("target/adapter"))?,
            crate::guard::hook::artifact_sha256(&work.join("retain/adapter"))?,
        ],
        guard: format!(
            "{} features at {}, gate {:?}, evidence {:?}",
            file.feature_ids().len(),
            file.hook_point,
            file.gate,
            file.evidence
        ),
        rows,
        goals,
        stages: clock.stages().to_vec(),
    };
    Ok(TrackFiles {
        json: to_json(&report)?,
        markdown: markdown(&report),
        figures: Vec::new(),
    })
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

/// The report's tables.
fn markdown(r: &TofuTrackReport) -> String {
    let mut s = String::from("# Track T: TOFU\n\n");
    s += &format!("Command: `{}`\n\n", r.command);
    s += &format!(
        "Target: the base model with a LoRA adapter trained on {} QA pairs (retain authors {:?} and forget authors {:?}); \
         retain model: the same training on the {} retain pairs only. Forget quality is the KS p-value of each model's \
         forget truth ratios against the retain model's (the reference itself, so none for its own row).\n\n",
        r.train_examples[0], r.retain_authors, r.forget_authors, r.train_examples[1]
    );
    s += &format!("Guardrail: {}.\n\n", r.guard);
    s += &format!(
        "Adapters (not committed, about 20 MB each; the command reproduces them, bit for bit on this machine class): target sha256 `{}`, \
         retain model `{}`.\n\n",
        r.adapter_sha256[0], r.adapter_sha256[1]
    );
    for run in &r.train_runs {
        let s2 = &run["summary"];
        s += &format!(
            "- training run: {} steps in {:.0} s ({:.0} tokens/s), loss {:.3} -> {:.3}, peak memory {:.0} MiB\n",
            s2["steps"], s2["seconds"].as_f64().unwrap_or(f64::NAN), s2["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            s2["first_loss"].as_f64().unwrap_or(f64::NAN), s2["last_loss"].as_f64().unwrap_or(f64::NAN),
            s2["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        );
    }
    s += "\n";
    s += "| model | forget ROUGE-L | forget prob | forget truth ratio | forget quality | model utility | retain ROUGE-L | gibberish (forget) | refused (forget) | gated forget / retain / real / world |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for row in &r.rows {
        s += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {} | {} | {:.3} | {} | {} | {} / {} / {} / {} |\n",
            row.name,
            row.forget_rouge_l,
            row.forget_prob,
            row.forget_truth_ratio,
            opt(row.forget_quality),
            opt(row.model_utility),
            row.retain_rouge_l,
            row.forget_gibberish.percent(),
            row.forget_refused.percent(),
            row.gated[0].percent(),
            row.gated[1].percent(),
            row.gated[2].percent(),
            row.gated[3].percent(),
        );
    }
    s += "\n## Goals\n\n";
    for (g, met) in &r.goals {
        s += &format!("- {} {g}\n", if *met { "met:" } else { "missed:" });
    }
    s += "\n## Time (2 cores)\n\nEach stage as first computed (a rerun reuses `work/`):\n\n| stage | seconds |\n|---|---|\n";
    for (name, run) in ["train target", "train retain model"]
        .iter()
        .zip(&r.train_runs)
    {
        let secs = run["summary"]["seconds"].as_f64().unwrap_or(f64::NAN);
        s += &format!("| {name} | {secs:.0} |\n");
    }
    for row in &r.rows {
        s += &format!("| evaluate {} | {:.0} |\n", row.name, row.seconds);
    }
    if let Some(fit) = r.stages.iter().find(|st| st.name == "fit guardrail") {
        s += &format!("| fit guardrail (this run) | {:.0} |\n", fit.seconds);
    }
    s
}
