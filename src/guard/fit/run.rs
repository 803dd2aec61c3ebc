//! [`run()`]: `dsg fit` as one library call, from a [`FitRequest`] to the files it writes.

use std::path::{Path, PathBuf};

use super::super::load::{load_sae, relative_path};
use super::super::stats_files::StatsFiles;
use super::super::{Evidence, GuardrailFile, PercentileRule, SelectionRule};
use super::{collect_pair, fit_from_stats, FitConfig, FitRequest, PromptCalibration};
use crate::data::rows::{build_rows, equalize, RowOptions, DEFAULT_MAX_DOCS};
use crate::data::Split;
use crate::data::{read_documents, read_mcq, McqItem, SplitMix64};
use crate::guard::file::ArtifactIdentity;
use crate::model::LoadedModel;
use crate::sae::Sae;
use crate::stats::collect::{keep_evidence, prompt_activity};
use crate::stats::prompts::{free_form_prompt, marked_mcq_prompt, Prompt};
use crate::stats::shard::{Shard, ShardTag};
use crate::{Error, Result};

/// Prompts per forward pass when calibrating on MCQ prompts.
const PROMPT_BATCH: usize = 8;

/// Watches a fit: progress per stage, and a line per finished step. Every method has a default
/// that does nothing.
pub trait FitObserver {
    /// `done` of `total` items of `stage`: rows of `"forget"` or `"retain"`, or calibration
    /// `"prompts"`.
    fn progress(&mut self, stage: &str, done: usize, total: usize) {
        let _ = (stage, done, total);
    }

    /// A finished step, as a line for a person (rows built, statistics written, …).
    fn note(&mut self, line: &str) {
        let _ = line;
    }
}

/// The observer used when the caller gives none.
struct Silent;

impl FitObserver for Silent {}

/// What [`run()`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub enum FitOutcome {
    /// A guardrail, at the request's `out`.
    Guardrail {
        /// The guardrail as written.
        file: Box<GuardrailFile>,
        /// The statistics written beside it; `None` when fitted from earlier statistics.
        stats: Option<StatsFiles>,
    },
    /// One shard's statistics, to be merged ([`super::super::stats_files::merge_shards`]).
    Shard {
        /// Which shard.
        shard: Shard,
        /// Where its statistics are.
        stats: StatsFiles,
    },
}

fn describe(files: &[PathBuf], split: Split) -> String {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    format!("{} (MCQ split: {split:?})", names.join(", "))
}

/// `dsg fit`: checks the request ([`FitRequest::validate`]), then statistics (or earlier ones),
/// selection and calibration, and writes the guardrail and its statistics. With a shard, only the
/// shard's statistics are written. The guardrail names its SAE relative to its own folder.
pub fn run(
    lm: &LoadedModel,
    req: &FitRequest,
    observer: Option<&mut dyn FitObserver>,
) -> Result<FitOutcome> {
    req.validate()?;
    let mut silent = Silent;
    let observer: &mut dyn FitObserver = match observer {
        Some(o) => o,
        None => &mut silent,
    };
    let sae = load_sae(&req.sae, req.hook)?;
    check_against_model(lm, req, &sae)?;
    let config = fit_config(lm, req, &sae)?;
    let (forget, retain, written) = match req.input_stats() {
        Some(files) => {
            let (forget, retain) = files.load()?;
            (forget, retain, None)
        }
        None => {
            let [f_rows, r_rows] = corpus_rows(lm, req)?;
            observer.note(&format!(
                "{} rows of {} tokens per corpus",
                f_rows.len(),
                req.ctx
            ));
            let shard = req.shard.unwrap_or(Shard::ALL);
            let (mut forget, mut retain) = collect_pair(
                &lm.model,
                &sae,
                &f_rows,
                &r_rows,
                &config,
                shard,
                &mut |stage, d, t| observer.progress(stage, d, t),
            )?;
            if let Some(shard) = req.shard {
                let tag = ShardTag {
                    shard,
                    pass: config.pass_digest(&f_rows, &r_rows),
                };
                forget.features.shard = Some(tag.clone());
                retain.features.shard = Some(tag);
            }
            let files = StatsFiles::beside(&req.out);
            files.save(&forget, &retain)?;
            let [f, r, a] = files.paths();
            observer.note(&format!(
                "statistics: {} {} {}",
                f.display(),
                r.display(),
                a.display()
            ));
            if req.shard.is_some() {
                return Ok(FitOutcome::Shard {
                    shard,
                    stats: files,
                });
            }
            (forget, retain, Some(files))
        }
    };
    let mut config = config;
    if written.is_none() {
        config.corpora = (
            forget.features.provenance.corpus.clone(),
            retain.features.provenance.corpus.clone(),
        );
    }
    let file = if req.calibrate_mcq.is_empty() && req.calibrate_free_form.is_empty() {
        fit_from_stats(&forget, &retain, &config, None)?
    } else {
        let (name, prompts) = calibration_prompts(lm, req)?;
        observer.note(&format!("calibrating on {}", name));
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
        let evidence: Vec<Vec<bool>> = prompts.into_iter().map(|p| p.evidence).collect();
        let hook = config.hook;
        let mut activity = |features: &[u32]| {
            let set: Vec<usize> = features.iter().map(|&i| i as usize).collect();
            let per_set = prompt_activity(
                &lm.model,
                &sae,
                hook,
                &[set],
                &ids,
                PROMPT_BATCH,
                &mut |d, t| observer.progress("prompts", d, t),
            )?;
            let all = per_set.into_iter().next().unwrap_or_default();
            match req.evidence {
                Evidence::UserText => keep_evidence(all, &evidence),
                Evidence::AllTokens => Ok(all),
            }
        };
        let calibration = PromptCalibration {
            name,
            activity: &mut activity,
        };
        fit_from_stats(&forget, &retain, &config, Some(calibration))?
    };
    if let Some(dir) = req.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    file.save(&req.out)?;
    observer.note(&format!("guardrail: {}", req.out.display()));
    Ok(FitOutcome::Guardrail {
        file: Box::new(file),
        stats: written,
    })
}

/// The fit's configuration: identities (the SAE by its path relative to the guardrail's folder),
/// the request's parameters, and the tokenizer's special tokens.
/// What can be checked against the model and the SAE before the statistics pass: the SAE reads
/// this model's residual width at a layer it has, `--n-features` fits in the SAE, and `--ctx`
/// fits in the model's context.
fn check_against_model(lm: &LoadedModel, req: &FitRequest, sae: &Sae) -> Result<()> {
    let cfg = lm.model.config();
    if sae.d_in() != cfg.d_model {
        return Err(Error::Mismatch(format!(
            "{}: the SAE reads {} dimensions but the model's residual stream has {}",
            req.sae.display(),
            sae.d_in(),
            cfg.d_model
        )));
    }
    if let Some(h) = sae.hook().filter(|h| h.layer >= cfg.n_layers) {
        return Err(Error::out_of_range(
            "--hook (or the SAE's hook)",
            h,
            format!("a layer below {} (the model's layers)", cfg.n_layers),
        ));
    }
    if req.n_features > sae.d_sae() {
        return Err(Error::out_of_range(
            "--n-features",
            req.n_features,
            format!("at most the SAE's {} features", sae.d_sae()),
        ));
    }
    if req.from_stats.is_none() {
        cfg.check_context("--ctx", req.ctx, req.ctx)?;
    }
    Ok(())
}

fn fit_config(lm: &LoadedModel, req: &FitRequest, sae: &Sae) -> Result<FitConfig> {
    // The digest identifies the model (adapters included); its folder is this machine's business.
    let model = ArtifactIdentity::of_model(lm)?;
    let folder = req.out.parent().unwrap_or(Path::new(""));
    let sae_name = relative_path(&req.sae, folder).display().to_string();
    let hook = sae
        .hook()
        .ok_or_else(|| Error::missing(&req.sae, "hook point (the SAE names none; pass --hook)"))?;
    let mut config = FitConfig::paper(model, ArtifactIdentity::of(&req.sae, sae_name)?, hook);
    config.rule = SelectionRule::Percentile(PercentileRule {
        min_forget_frequency: req.min_forget_freq,
        ..PercentileRule::official(req.p_ratio)
    });
    config.n_features = req.n_features;
    config.p_dyn = req.p_dyn;
    config.gate = req.gate;
    config.clamp = req.clamp_spec();
    config.evidence = req.evidence;
    config.batch_size = req.batch;
    let tok = &lm.tokenizer;
    config.special_ids = [tok.bos_id(), tok.eos_id(), tok.pad_id()]
        .into_iter()
        .flatten()
        .collect();
    config.starts_with_bos = tok.bos_id().is_some();
    config.corpora = (
        describe(&req.forget, req.split),
        describe(&req.retain, req.split),
    );
    config.seed = req.seed;
    config.data_fraction = req.fraction;
    Ok(config)
}

/// Token rows of the forget and retain corpora, equalised (§1.2).
fn corpus_rows(lm: &LoadedModel, req: &FitRequest) -> Result<[Vec<Vec<u32>>; 2]> {
    let docs = |files: &[PathBuf]| -> Result<Vec<String>> {
        let mut all = Vec::new();
        for f in files {
            all.extend(read_documents(f, req.split)?);
        }
        Ok(all)
    };
    let opts = |max_docs| RowOptions {
        ctx: req.ctx,
        seed: req.seed,
        max_docs,
    };
    let mut forget = build_rows(
        &lm.tokenizer,
        &docs(&req.forget)?,
        &opts(Some(DEFAULT_MAX_DOCS)),
    )?;
    let mut retain = build_rows(&lm.tokenizer, &docs(&req.retain)?, &opts(None))?;
    equalize(&mut forget, &mut retain, req.rows, req.fraction)?;
    Ok([forget, retain])
}

/// The `split` questions of `files`, sampled down to `calibrate_limit`.
fn calibration_items(req: &FitRequest, files: &[PathBuf]) -> Result<Vec<McqItem>> {
    let mut items = Vec::new();
    for f in files {
        items.extend(read_mcq(f, req.split)?);
    }
    if let Some(k) = req.calibrate_limit {
        SplitMix64::new(req.seed).sample(&mut items, k);
    }
    Ok(items)
}

/// The calibration prompts and their description: the chat-formatted MCQ prompts of
/// `calibrate_mcq` (each question under its own subject, or "general knowledge") and the stems of
/// `calibrate_free_form` as user messages, each shape sampled down to `calibrate_limit`, with
/// their user text marked.
fn calibration_prompts(lm: &LoadedModel, req: &FitRequest) -> Result<(String, Vec<Prompt>)> {
    let tok = &lm.tokenizer;
    let mut prompts = Vec::new();
    let mut parts = Vec::new();
    if !req.calibrate_mcq.is_empty() {
        let items = calibration_items(req, &req.calibrate_mcq)?;
        for q in &items {
            let subject = q.subject.as_deref().unwrap_or("general knowledge");
            prompts.push(marked_mcq_prompt(tok, subject, q)?);
        }
        parts.push(format!(
            "{} as chat MCQ prompts ({} prompts)",
            describe(&req.calibrate_mcq, req.split),
            items.len()
        ));
    }
    if !req.calibrate_free_form.is_empty() {
        let items = calibration_items(req, &req.calibrate_free_form)?;
        for q in &items {
            prompts.push(free_form_prompt(tok, &q.question)?);
        }
        let files = if req.calibrate_free_form.len() > 3 {
            format!(
                "{} files under {} (MCQ split: {:?})",
                req.calibrate_free_form.len(),
                req.calibrate_free_form[0]
                    .parent()
                    .unwrap_or(Path::new(""))
                    .display(),
                req.split
            )
        } else {
            describe(&req.calibrate_free_form, req.split)
        };
        parts.push(format!(
            "{files}: question stems alone as chat user messages ({} prompts)",
            items.len()
        ));
    }
    if prompts.is_empty() {
        return Err(Error::Invalid(format!(
            "no calibration questions in the {:?} split of the --calibrate-mcq/--calibrate-free-form files",
            req.split
        )));
    }
    let mut name = parts.join(" + ");
    if req.evidence == Evidence::UserText {
        name.push_str(", counting the user's text only");
    }
    Ok((name, prompts))
}
