//! A training run written to a folder: `adapter/` (PEFT LoRA) or `model.safetensors` (full
//! fine-tuning, Hugging Face names, loaded with `--weights` over the base model), `train_log.jsonl`
//! (one line per step), `train.json` (configuration and summary) and `checkpoint/`, from which an
//! interrupted run resumes exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::bench::peak_rss_mib;
use super::examples::Example;
use super::run::{StepLog, TrainConfig, Trainer};
use crate::model::{Hooks, Model};
use crate::{Error, Result};

/// Where and how often a run writes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run's folder.
    pub out: PathBuf,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Continue the run whose checkpoint is in `out` (refused if there is none).
    pub resume: bool,
    /// Replace a finished run's outputs in `out`.
    pub force: bool,
    /// The base model's name, recorded in the adapter.
    pub base_model: String,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Optimiser steps of the whole run.
    pub steps: usize,
    /// Steps this invocation ran (fewer when resumed).
    pub steps_run: usize,
    /// Wall time of this invocation's steps, seconds.
    pub seconds: f64,
    /// Tokens through the model per second in this invocation.
    pub tokens_per_s: f64,
    /// Loss of the first and last logged step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Trained parameters.
    pub trainable_params: usize,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: Option<f64>,
    /// The trained weights: the adapter folder or the weights file.
    pub output: PathBuf,
}

/// The trained weights' path in `out`.
fn weights_out(out: &Path, cfg: &TrainConfig) -> PathBuf {
    match cfg.method {
        super::Method::Lora(_) => out.join("adapter"),
        super::Method::Full | super::Method::Weights(_) => out.join("model.safetensors"),
    }
}

/// Trains `model` on `examples` (with `retain`, for an unlearning objective) as `cfg` says and writes the run into `opts.out` (see the module
/// docs); `progress` sees every step and the run's total. A finished run in `out` is refused unless
/// `force`; an unfinished one (a checkpoint) unless `resume`.
#[allow(clippy::too_many_arguments)]
pub fn train_to_dir(
    model: &mut Model,
    examples: &[Example],
    retain: &[Example],
    cfg: TrainConfig,
    opts: &RunOptions,
    hooks: &mut dyn Hooks,
    progress: &mut dyn FnMut(&StepLog, usize),
) -> Result<RunSummary> {
    cfg.validate()?;
    let ckpt = opts.out.join("checkpoint");
    let weights = weights_out(&opts.out, &cfg);
    if weights.exists() && !opts.force {
        return Err(Error::Output {
            path: weights,
            reason: "a finished run is there; pass --force to train again".into(),
        });
    }
    if ckpt.exists() && !opts.resume && !opts.force {
        return Err(Error::Output {
            path: ckpt,
            reason:
                "an unfinished run is there; pass --resume to continue it or --force to restart"
                    .into(),
        });
    }
    if opts.resume && !ckpt.exists() {
        return Err(Error::missing(
            &opts.out,
            "checkpoint/ to resume from (--resume)",
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let mut trainer = if opts.resume {
        let t = Trainer::resume_unlearning(model, &ckpt, examples, retain)?;
        if t.config() != &cfg {
            return Err(Error::Mismatch(format!(
                "{}: the checkpoint's training options differ from this command's; resume with the \
                 options it was started with",
                ckpt.display()
            )));
        }
        t
    } else {
        Trainer::unlearn(model, cfg, examples, retain)?
    };
    let total = trainer.config().total_steps(examples.len());
    let started_at = trainer.step_count();
    let every = opts.checkpoint_every;
    let log_path = opts.out.join("train_log.jsonl");
    let started = Instant::now();
    let mut tokens = 0usize;
    trainer.run(model, examples, hooks, &mut |t, log| {
        tokens += log.tokens;
        progress(log, total);
        if every > 0 && t.step_count() % every == 0 && !t.finished(examples.len()) {
            t.save_checkpoint(&ckpt)?;
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    trainer.save_checkpoint(&ckpt)?;
    let mut f = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    for l in &trainer.log {
        writeln!(f, "{}", serde_json::to_string(l).expect("serialisable"))
            .map_err(|e| Error::io(&log_path, e))?;
    }
    match trainer.adapter(&opts.base_model)? {
        Some(adapter) => adapter.save(&weights)?,
        None => {
            let named = model.hf_tensors()?;
            candle_core::safetensors::save(&named.into_iter().collect(), &weights)?;
        }
    }
    let summary = RunSummary {
        steps: trainer.step_count(),
        steps_run: trainer.step_count() - started_at,
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        first_loss: trainer.log.first().map_or(f64::NAN, |l| l.loss),
        last_loss: trainer.log.last().map_or(f64::NAN, |l| l.loss),
        trainable_params: trainer
            .parameters()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum(),
        peak_rss_mib: peak_rss_mib(),
        output: weights,
    };
    let json = opts.out.join("train.json");
    let record = serde_json::json!({ "config": trainer.config(), "summary": &summary });
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&record).expect("serialisable") + "\n",
    )
    .map_err(|e| Error::io(&json, e))?;
    Ok(summary)
}
