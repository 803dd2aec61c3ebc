//! Training and evaluating an SAE on text files, end to end: what `dsg sae train` and `dsg sae
//! eval` run. Every option is checked, and the output folder with it, before the model runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};

use super::collect::ModelActivations;
use super::metrics::{self, SaeEval};
use super::train::{ActivationSource, RunTimes, StepStats, TrainConfig, Trainer};
use super::{ModelIdentity, Sae, SaeMeta};
use crate::data::{self, Split};
use crate::model::{fetch, HookPoint, LoadedModel, Tokenizer};
use crate::output::{check_output, check_output_dir, Overwrite};
use crate::{Error, Result};

/// Token rows of `ctx` tokens from `files` (see [`data::read_documents`]), at most `limit` tokens'
/// worth; an error when no complete row fits.
pub fn rows_from_files(
    tok: &Tokenizer,
    files: &[PathBuf],
    ctx: usize,
    limit: Option<usize>,
) -> Result<Vec<Vec<u32>>> {
    let mut docs = Vec::new();
    for f in files {
        docs.extend(data::read_documents(f, Split::Selection)?);
    }
    let mut rows = data::token_rows(tok, &docs, ctx)?;
    if let Some(n) = limit {
        rows.truncate(n.div_ceil(ctx).max(1));
    }
    if rows.is_empty() {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Invalid(format!(
            "{}: no complete row of {ctx} tokens in the text",
            names.join(", ")
        )));
    }
    Ok(rows)
}

/// `ctx` must leave at least one trained position after position 0.
fn check_ctx(ctx: usize) -> Result<()> {
    if ctx < 2 {
        return Err(Error::out_of_range("ctx (--ctx)", ctx, "at least 2"));
    }
    Ok(())
}

/// Held-out text to evaluate an SAE on.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalText {
    /// The text file (plain, WMDP `.json` selection split, or question `.jsonl`).
    pub file: PathBuf,
    /// Tokens to evaluate on (rounded up to whole rows).
    pub tokens: usize,
    /// Tokens per row.
    pub ctx: usize,
}

impl EvalText {
    /// Checks the ranges: `tokens ≥ 1`, `ctx ≥ 2`.
    pub fn validate(&self) -> Result<()> {
        if self.tokens == 0 {
            return Err(Error::out_of_range(
                "tokens (--tokens, --eval-tokens)",
                0,
                "at least 1",
            ));
        }
        check_ctx(self.ctx)
    }
}

/// An SAE's metrics on a text file, printable as the `dsg sae eval` report.
#[derive(Debug, Clone)]
pub struct TextEval {
    /// The text file.
    pub file: PathBuf,
    /// Rows evaluated.
    pub rows: usize,
    /// Tokens per row.
    pub ctx: usize,
    /// The hook point.
    pub hook: HookPoint,
    /// The SAE's latents.
    pub d_sae: usize,
    /// Reconstruction quality: FVU, sparsity and the cross-entropy cost of splicing the SAE in.
    pub eval: SaeEval,
    /// Seconds the measurement took.
    pub secs: f64,
}

impl fmt::Display for TextEval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.eval;
        writeln!(
            f,
            "eval on {} ({} rows of {}) at {}",
            self.file.display(),
            self.rows,
            self.ctx,
            self.hook
        )?;
        writeln!(
            f,
            "FVU          {:.4}  ({} tokens, position 0 excluded)",
            r.fvu, r.tokens
        )?;
        writeln!(f, "L0           {:.2}", r.l0)?;
        writeln!(
            f,
            "dead         {:.2}%  (never fired on these tokens; d_sae {})",
            100.0 * r.dead_fraction,
            self.d_sae
        )?;
        writeln!(
            f,
            "clean CE     {:.4} nats  ({} predicted tokens)",
            r.clean_ce, r.predicted
        )?;
        writeln!(f, "spliced CE   {:.4} nats", r.spliced_ce)?;
        write!(
            f,
            "delta CE     {:.4} nats  ({:.1}s)",
            r.delta_ce, self.secs
        )
    }
}

/// Evaluates `sae` on `text` at `hook` (`None`: the SAE's own), after checking that the SAE fits
/// the model and the options are in range.
pub fn evaluate_on_text(
    lm: &LoadedModel,
    sae: &Sae,
    hook: Option<HookPoint>,
    text: &EvalText,
) -> Result<TextEval> {
    text.validate()?;
    let origin = sae
        .origin()
        .map_or("the SAE".into(), |p| p.display().to_string());
    let hook = hook.or(sae.hook()).ok_or_else(|| {
        Error::Invalid(format!(
            "{origin}: the SAE records no hook point; pass --hook"
        ))
    })?;
    let c = lm.model.config();
    sae.check_model(c.d_model, c.n_layers)?;
    check_hook_layer(hook, c.n_layers)?;
    let rows = rows_from_files(
        &lm.tokenizer,
        std::slice::from_ref(&text.file),
        text.ctx,
        Some(text.tokens),
    )?;
    let t = Instant::now();
    let eval = metrics::evaluate(&lm.model, sae, hook, &rows, 8)?;
    Ok(TextEval {
        file: text.file.clone(),
        rows: rows.len(),
        ctx: text.ctx,
        hook,
        d_sae: sae.d_sae(),
        eval,
        secs: t.elapsed().as_secs_f64(),
    })
}

fn check_hook_layer(hook: HookPoint, n_layers: usize) -> Result<()> {
    if hook.layer >= n_layers {
        return Err(Error::out_of_range(
            "hook (--hook)",
            hook,
            format!("a layer below {n_layers} (the model's layers)"),
        ));
    }
    Ok(())
}

/// Storage dtypes an SAE may be saved in.
pub fn storage_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        other => Err(Error::out_of_range("dtype (--dtype)", other, "f32 or f16")),
    }
}

/// A whole `dsg sae train` run: what to train on, the trainer's options, and where to write.
#[derive(Debug, Clone)]
pub struct TrainOnText {
    /// Hook point to train at.
    pub hook: HookPoint,
    /// Training text files.
    pub text: Vec<PathBuf>,
    /// Latents of the SAE to train (its width).
    pub d_sae: usize,
    /// Active latents per token.
    pub k: usize,
    /// Training tokens.
    pub tokens: u64,
    /// Tokens per row (position 0 of each row is not trained on).
    pub ctx: usize,
    /// Tokens per optimiser step.
    pub batch_size: usize,
    /// Rows per shuffled activation chunk.
    pub chunk_rows: usize,
    /// Peak learning rate; `None`: [`TrainConfig::default_lr`].
    pub lr: Option<f64>,
    /// A latent not fired for this many tokens is dead.
    pub dead_tokens: u64,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Output folder (dsg SAE format); checkpoints go to `out/checkpoint`.
    pub out: PathBuf,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Storage dtype of the saved SAE.
    pub dtype: DType,
    /// Held-out text to evaluate on at the end (metrics go into the SAE's metadata).
    pub eval: Option<EvalText>,
    /// Whether existing output files may be replaced.
    pub overwrite: Overwrite,
}

/// The SAE files [`Sae::save_as`] writes into a folder.
const SAE_FILES: [&str; 2] = ["sae.safetensors", "sae.json"];

impl TrainOnText {
    /// The trainer's configuration for a model with `d_model`-wide activations.
    pub fn train_config(&self, d_model: usize) -> TrainConfig {
        TrainConfig {
            hook: self.hook,
            d_sae: self.d_sae,
            k: self.k,
            k_aux: d_model / 2,
            aux_coef: 1.0 / 32.0,
            dead_tokens: self.dead_tokens,
            batch_size: self.batch_size,
            lr: self
                .lr
                .unwrap_or_else(|| TrainConfig::default_lr(self.d_sae)),
            warmup_steps: (self.tokens / self.batch_size.max(1) as u64 / 10).min(100) as usize,
            decay_fraction: 0.2,
            total_tokens: self.tokens,
            seed: self.seed,
        }
    }

    /// The checkpoint folder.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.out.join("checkpoint")
    }

    /// Checks every option and the output folder against `lm` (its width, layers and files), so
    /// that nothing is refused after training.
    pub fn validate(&self, lm: &LoadedModel) -> Result<()> {
        let c = lm.model.config();
        check_hook_layer(self.hook, c.n_layers)?;
        check_ctx(self.ctx)?;
        if self.chunk_rows == 0 {
            return Err(Error::out_of_range(
                "chunk_rows (--chunk-rows)",
                0,
                "at least 1",
            ));
        }
        if self.checkpoint_every == 0 {
            return Err(Error::out_of_range(
                "checkpoint_every (--checkpoint-every)",
                0,
                "at least 1",
            ));
        }
        self.train_config(c.d_model).validate()?;
        if let Some(e) = &self.eval {
            e.validate()?;
        }
        let mut inputs: Vec<&Path> = self.text.iter().map(PathBuf::as_path).collect();
        inputs.push(&lm.path);
        if let Some(e) = &self.eval {
            inputs.push(&e.file);
        }
        let ckpt = self.checkpoint_dir().join("trainer.json");
        if !self.resume && ckpt.exists() && self.overwrite == Overwrite::Refuse {
            return Err(Error::Output {
                path: ckpt,
                reason: "a checkpoint of an earlier run is there; pass --resume to continue it \
                         or --force to start over"
                    .into(),
            });
        }
        if self.out.extension().is_some_and(|e| e == "safetensors") {
            check_output(&self.out, "--out", &inputs, self.overwrite)?;
            check_output(
                &self.out.with_extension("json"),
                "--out",
                &inputs,
                self.overwrite,
            )
        } else {
            check_output_dir(&self.out, "--out", &SAE_FILES, &inputs, self.overwrite)
        }
    }
}

/// What a [`train_on_text`] caller is told while it runs.
pub trait TrainProgress {
    /// Training starts: `rows` token rows, `steps` optimiser steps in all, `done` of them already
    /// taken (a resumed run).
    fn start(&mut self, rows: usize, steps: usize, done: usize);
    /// A step was taken.
    fn step(&mut self, stats: &StepStats);
}

/// What a finished [`train_on_text`] run did.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Tokens trained on in this invocation (a resumed run counts only its own).
    pub tokens_done: usize,
    /// Seconds the training took.
    pub secs: f64,
    /// Where the time went.
    pub times: RunTimes,
    /// Tokens per optimiser step.
    pub batch_size: usize,
    /// The evaluation on the held-out text, if one was asked for.
    pub eval: Option<TextEval>,
    /// Where the SAE was written.
    pub out: PathBuf,
}

/// Trains an SAE on text files, checkpointing every `checkpoint_every` steps, evaluates it on the
/// held-out text if given, and saves it to `job.out`. Everything is checked first
/// ([`TrainOnText::validate`]); a resumed run must have the checkpoint's configuration.
pub fn train_on_text(
    lm: &LoadedModel,
    job: &TrainOnText,
    progress: &mut dyn TrainProgress,
) -> Result<TrainOutcome> {
    job.validate(lm)?;
    let cfg = job.train_config(lm.model.config().d_model);
    let ckpt = job.checkpoint_dir();
    let resumed = if job.resume {
        let t = Trainer::load_checkpoint(&ckpt, &Device::Cpu)?;
        if *t.config() != cfg {
            return Err(Error::Mismatch(format!(
                "{}: the checkpoint's configuration differs from these options",
                ckpt.display()
            )));
        }
        Some(t)
    } else {
        None
    };
    let rows = rows_from_files(&lm.tokenizer, &job.text, job.ctx, None)?;
    let n_rows = rows.len();
    let mut source = ModelActivations::new(&lm.model, job.hook, rows, job.chunk_rows, job.seed)?;
    let mut trainer = match resumed {
        Some(t) => t,
        None => Trainer::new(cfg, &source.chunk(0)?)?,
    };
    let first = trainer.step_count();
    progress.start(n_rows, trainer.config().total_steps(), first);
    let t0 = Instant::now();
    let every = job.checkpoint_every;
    let times = trainer.run(&mut source, &mut |t, s| {
        progress.step(s);
        if (s.step + 1) % every == 0 {
            t.save_checkpoint(&ckpt)?;
        }
        Ok(())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    trainer.save_checkpoint(&ckpt)?;
    let files: Vec<String> = job.text.iter().map(|p| p.display().to_string()).collect();
    let meta = SaeMeta {
        model: Some(ModelIdentity {
            name: lm.name(),
            sha256: Some(fetch::sha256_file(&lm.weights_path)?),
        }),
        hook_name: Some(job.hook.to_string()),
        training_data: Some(format!(
            "{} tokens (rows of {}, position 0 excluded) from {}",
            trainer.step_count() * job.batch_size,
            job.ctx,
            files.join(", ")
        )),
        notes: Some(
            serde_json::to_string(trainer.config())
                .map_err(|e| Error::Invalid(format!("the training configuration as JSON: {e}")))?,
        ),
        ..Default::default()
    };
    let mut sae = trainer.to_sae(meta)?;
    let eval = match &job.eval {
        Some(text) => {
            let r = evaluate_on_text(lm, &sae, Some(job.hook), text)?;
            let meta = sae.metadata_mut();
            meta.metrics = r.eval.to_metrics();
            let note = format!(
                "; metrics on {} (rows of {})",
                text.file.display(),
                text.ctx
            );
            meta.notes.get_or_insert_with(String::new).push_str(&note);
            Some(r)
        }
        None => None,
    };
    let meta = sae.metadata().clone();
    sae.save_as(&job.out, &meta, job.dtype)?;
    Ok(TrainOutcome {
        tokens_done: (trainer.step_count() - first) * job.batch_size,
        secs,
        times,
        batch_size: job.batch_size,
        eval,
        out: job.out.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_out_of_range_name_themselves() {
        let e = storage_dtype("bf16").unwrap_err();
        assert!(
            e.to_string().contains("dtype") && e.to_string().contains("bf16"),
            "{e}"
        );
        let text = EvalText {
            file: "x.txt".into(),
            tokens: 0,
            ctx: 128,
        };
        let e = text.validate().unwrap_err();
        assert!(e.to_string().contains("--tokens"), "{e}");
        let e = EvalText {
            tokens: 10,
            ctx: 1,
            ..text
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("ctx (--ctx): 1"), "{e}");
        let e = check_hook_layer(HookPoint::resid_post(30), 30).unwrap_err();
        assert!(e.to_string().contains("blocks.30"), "{e}");
    }
}
