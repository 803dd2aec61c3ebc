//! `dsg sae train` and `dsg sae eval`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use dsg::data::{self, Split};
use dsg::eval::metrics::auroc;
use dsg::model::{fetch, HookPoint, LoadedModel};
use dsg::sae::collect::ModelActivations;
use dsg::sae::train::{TrainConfig, Trainer};
use dsg::sae::{metrics, ModelIdentity, Sae, SaeMeta};

use super::{load_model, ModelArgs};

/// SAE subcommands.
#[derive(Subcommand)]
pub enum SaeCommand {
    /// Train a TopK SAE on a hook point's activations over text files.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        /// Hook point, e.g. blocks.6.hook_resid_post.
        #[arg(long)]
        hook: HookPoint,
        /// Training text: any data file `dsg::data` reads (text: a document per line); question sets
        /// give their selection split only.
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Number of latents.
        #[arg(long, default_value_t = 4096)]
        d_sae: usize,
        /// Active latents per token.
        #[arg(long, default_value_t = 32)]
        k: usize,
        /// Training tokens.
        #[arg(long, default_value_t = 1_000_000)]
        tokens: u64,
        /// Tokens per row (position 0 of each row is not trained on).
        #[arg(long, default_value_t = 128)]
        ctx: usize,
        /// Tokens per optimiser step.
        #[arg(long, default_value_t = 1024)]
        batch_size: usize,
        /// Rows per shuffled activation chunk.
        #[arg(long, default_value_t = 1024)]
        chunk_rows: usize,
        /// Peak learning rate (default 2e-4/sqrt(d_sae/16384)).
        #[arg(long)]
        lr: Option<f64>,
        /// A latent not fired for this many tokens is dead (AuxK revives it).
        #[arg(long, default_value_t = 250_000)]
        dead_tokens: u64,
        /// Seed for initialisation and data order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory (dsg SAE format; checkpoints in OUT/checkpoint).
        #[arg(long)]
        out: PathBuf,
        /// Continue from OUT/checkpoint.
        #[arg(long)]
        resume: bool,
        /// Steps between checkpoints.
        #[arg(long, default_value_t = 250)]
        checkpoint_every: usize,
        /// Storage dtype of the saved SAE: f32 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Held-out text to evaluate on at the end (metrics go into the SAE's metadata).
        #[arg(long)]
        eval_text: Option<PathBuf>,
        /// Evaluation tokens.
        #[arg(long, default_value_t = 16384)]
        eval_tokens: usize,
    },
    /// FVU, L0, dead fraction and delta CE of an SAE on a text file.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// The SAE (any supported format).
        #[arg(long)]
        sae: PathBuf,
        /// Text file (plain, WMDP .json selection split, or question .jsonl).
        #[arg(long)]
        text: PathBuf,
        /// Tokens to evaluate on.
        #[arg(long, default_value_t = 16384)]
        tokens: usize,
        /// Tokens per row.
        #[arg(long, default_value_t = 128)]
        ctx: usize,
        /// Hook point, when the SAE does not record one.
        #[arg(long)]
        hook: Option<HookPoint>,
    },
    /// Train a short SAE at several layers and compare delta CE and forget/retain separation.
    CompareLayers {
        #[command(flatten)]
        model: ModelArgs,
        /// Candidate layers (resid_post).
        #[arg(long, value_delimiter = ',', default_value = "3,6,9")]
        layers: Vec<usize>,
        /// Training text files (as for `train`).
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Forget questions: a WMDP .json (selection split only).
        #[arg(long)]
        forget: PathBuf,
        /// Retain questions: a .jsonl of questions (e.g. MMLU-Redux).
        #[arg(long)]
        retain: PathBuf,
        /// Documents per side (half choose the latents, the other half measure AUROC).
        #[arg(long, default_value_t = 120)]
        docs: usize,
        /// Training tokens per layer.
        #[arg(long, default_value_t = 65536)]
        tokens: u64,
        /// Latents.
        #[arg(long, default_value_t = 2048)]
        d_sae: usize,
        /// Active latents per token.
        #[arg(long, default_value_t = 32)]
        k: usize,
        /// Held-out text for delta CE.
        #[arg(long)]
        eval_text: PathBuf,
        /// Evaluation tokens.
        #[arg(long, default_value_t = 1024)]
        eval_tokens: usize,
    },
}

/// Runs an SAE subcommand.
pub fn run(cmd: SaeCommand) -> Result<()> {
    match cmd {
        SaeCommand::Train {
            model,
            hook,
            text,
            d_sae,
            k,
            tokens,
            ctx,
            batch_size,
            chunk_rows,
            lr,
            dead_tokens,
            seed,
            out,
            resume,
            checkpoint_every,
            dtype,
            eval_text,
            eval_tokens,
        } => {
            let lm = load_model(&model)?;
            let dtype = match dtype.as_str() {
                "f32" => DType::F32,
                "f16" => DType::F16,
                other => bail!("--dtype must be f32 or f16, got {other}"),
            };
            let rows = rows_from(&lm, &text, ctx, None)?;
            eprintln!("{} training rows of {ctx} tokens", rows.len());
            let mut source = ModelActivations::new(&lm.model, hook, rows, chunk_rows, seed)?;
            let cfg = TrainConfig {
                hook,
                d_sae,
                k,
                k_aux: lm.model.config().d_model / 2,
                aux_coef: 1.0 / 32.0,
                dead_tokens,
                batch_size,
                lr: lr.unwrap_or_else(|| TrainConfig::default_lr(d_sae)),
                warmup_steps: (tokens / batch_size as u64 / 10).min(100) as usize,
                decay_fraction: 0.2,
                total_tokens: tokens,
                seed,
            };
            let ckpt = out.join("checkpoint");
            let mut trainer = if resume {
                let t = Trainer::load_checkpoint(&ckpt, &Device::Cpu)?;
                if *t.config() != cfg {
                    bail!(
                        "{}: the checkpoint's configuration differs from these arguments",
                        ckpt.display()
                    );
                }
                t
            } else {
                use dsg::sae::train::ActivationSource;
                Trainer::new(cfg, &source.chunk(0)?)?
            };
            let steps = trainer.config().total_steps();
            let bar = ProgressBar::new(steps as u64).with_style(ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps {per_sec} eta {eta} {msg}",
            )?);
            bar.set_position(trainer.step_count() as u64);
            let t0 = Instant::now();
            let first = trainer.step_count();
            let times = trainer.run(&mut source, &mut |t, s| {
                bar.inc(1);
                if bar.is_hidden() && s.step % 50 == 0 {
                    eprintln!(
                        "step {} fvu {:.3} aux {:.3} dead {:.1}% lr {:.1e} {:.0}s",
                        s.step,
                        s.fvu,
                        s.aux,
                        100.0 * s.dead_fraction,
                        s.lr,
                        t0.elapsed().as_secs_f64()
                    );
                }
                if s.step % 10 == 0 {
                    bar.set_message(format!(
                        "fvu {:.3} aux {:.3} dead {:.1}% lr {:.1e}",
                        s.fvu,
                        s.aux,
                        100.0 * s.dead_fraction,
                        s.lr
                    ));
                }
                if (s.step + 1) % checkpoint_every == 0 {
                    t.save_checkpoint(&ckpt)?;
                }
                Ok(())
            })?;
            bar.finish();
            let secs = t0.elapsed().as_secs_f64();
            let done = (trainer.step_count() - first) * batch_size;
            eprintln!(
                "{done} tokens in {secs:.1}s: {:.1}s collecting activations (unique rows, cached after), \
                 {:.1}s in {} SAE steps ({:.0} tok/s)",
                times.source_secs,
                times.step_secs,
                times.steps,
                (times.steps * batch_size) as f64 / times.step_secs.max(1e-9)
            );
            trainer.save_checkpoint(&ckpt)?;
            let files: Vec<String> = text.iter().map(|p| p.display().to_string()).collect();
            let meta = SaeMeta {
                model: Some(ModelIdentity {
                    name: lm.name(),
                    sha256: Some(fetch::sha256_file(&lm.weights_path)?),
                }),
                hook_name: Some(hook.to_string()),
                training_data: Some(format!(
                    "{} tokens (rows of {ctx}, position 0 excluded) from {}",
                    trainer.step_count() * batch_size,
                    files.join(", ")
                )),
                notes: Some(serde_json::to_string(trainer.config())?),
                ..Default::default()
            };
            let mut sae = trainer.to_sae(meta)?;
            if let Some(eval) = eval_text {
                let r = evaluate(&lm, &sae, hook, &eval, eval_tokens, ctx)?;
                let meta = sae.metadata_mut();
                meta.metrics = r.to_metrics();
                let note = format!("; metrics on {} (rows of {ctx})", eval.display());
                meta.notes.get_or_insert_with(String::new).push_str(&note);
            }
            let meta = sae.metadata().clone();
            sae.save_as(&out, &meta, dtype)?;
            eprintln!("saved {}", out.display());
        }
        SaeCommand::Eval {
            model,
            sae,
            text,
            tokens,
            ctx,
            hook,
        } => {
            let lm = load_model(&model)?;
            let s = Sae::load(&sae, &Device::Cpu)?;
            let hook = hook
                .or(s.hook())
                .context("the SAE records no hook point; pass --hook")?;
            s.check_model(lm.model.config().d_model, lm.model.config().n_layers)?;
            evaluate(&lm, &s, hook, &text, tokens, ctx)?;
        }
        SaeCommand::CompareLayers {
            model,
            layers,
            text,
            forget,
            retain,
            docs,
            tokens,
            d_sae,
            k,
            eval_text,
            eval_tokens,
        } => compare_layers(
            &load_model(&model)?,
            &layers,
            &text,
            (&forget, &retain, docs),
            (tokens, d_sae, k),
            (&eval_text, eval_tokens),
        )?,
    }
    Ok(())
}

/// `docs` documents spread evenly over `all`, tokenised without BOS.
fn spread_docs(lm: &LoadedModel, all: Vec<String>, docs: usize) -> Result<Vec<Vec<u32>>> {
    let step = (all.len() / docs.max(1)).max(1);
    all.iter()
        .step_by(step)
        .take(docs)
        .map(|d| Ok(lm.tokenizer.encode(d, false)?))
        .collect()
}

/// For each layer: a short SAE, its delta CE, and how well its latents separate forget from
/// retain questions (latents chosen on even-indexed documents, AUROC on odd-indexed ones).
fn compare_layers(
    lm: &LoadedModel,
    layers: &[usize],
    text: &[PathBuf],
    (forget, retain, docs): (&Path, &Path, usize),
    (tokens, d_sae, k): (u64, usize, usize),
    (eval_text, eval_tokens): (&Path, usize),
) -> Result<()> {
    let f_docs = spread_docs(lm, data::read_documents(forget, Split::Selection)?, docs)?;
    let r_docs = spread_docs(lm, data::read_documents(retain, Split::Selection)?, docs)?;
    let rows = rows_from(lm, text, 128, None)?;
    println!("| layer | FVU | delta CE (nats) | best latent AUROC | top-20 AUROC | s |");
    println!("|---|---|---|---|---|---|");
    for &layer in layers {
        let t = Instant::now();
        let hook = HookPoint::resid_post(layer);
        let mut source = ModelActivations::new(&lm.model, hook, rows.clone(), 128, 0)?;
        let cfg = TrainConfig {
            hook,
            d_sae,
            k,
            k_aux: 2 * k,
            aux_coef: 1.0 / 32.0,
            dead_tokens: tokens / 4,
            batch_size: 1024,
            lr: TrainConfig::default_lr(d_sae),
            warmup_steps: 20,
            decay_fraction: 0.2,
            total_tokens: tokens,
            seed: 0,
        };
        use dsg::sae::train::ActivationSource;
        let mut trainer = Trainer::new(cfg, &source.chunk(0)?)?;
        trainer.run(&mut source, &mut |_, _| Ok(()))?;
        let sae = trainer.to_sae(SaeMeta::default())?;
        let eval_rows = rows_from(lm, &[eval_text.to_path_buf()], 128, Some(eval_tokens))?;
        let e = metrics::evaluate(&lm.model, &sae, hook, &eval_rows, 8)?;
        let ff = metrics::firing_fractions(&lm.model, &sae, hook, &f_docs)?;
        let rf = metrics::firing_fractions(&lm.model, &sae, hook, &r_docs)?;
        let half = |v: &[Vec<f64>], parity: usize| -> Vec<Vec<f64>> {
            v.iter().skip(parity).step_by(2).cloned().collect()
        };
        let (fa, fb, ra, rb) = (half(&ff, 0), half(&ff, 1), half(&rf, 0), half(&rf, 1));
        let col = |v: &[Vec<f64>], i: usize| -> Vec<f64> { v.iter().map(|d| d[i]).collect() };
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let scores = (0..d_sae)
            .map(|i| auroc(&col(&fa, i), &col(&ra, i)))
            .collect::<dsg::Result<Vec<f64>>>()?;
        let best = (0..d_sae)
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .context("the SAE has no latents")?;
        let mut by_diff: Vec<usize> = (0..d_sae).collect();
        let diff = |i: usize| mean(&col(&fa, i)) - mean(&col(&ra, i));
        by_diff.sort_by(|&a, &b| diff(b).total_cmp(&diff(a)));
        let top: Vec<usize> = by_diff[..20.min(d_sae)].to_vec();
        let set_score = |v: &[Vec<f64>]| -> Vec<f64> {
            v.iter().map(|d| top.iter().map(|&i| d[i]).sum()).collect()
        };
        println!(
            "| {layer} | {:.3} | {:.3} | {:.3} (latent {best}) | {:.3} | {:.0} |",
            e.fvu,
            e.delta_ce,
            auroc(&col(&fb, best), &col(&rb, best))?,
            auroc(&set_score(&fb), &set_score(&rb))?,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Token rows from `files`, at most `limit` tokens' worth.
fn rows_from(
    lm: &LoadedModel,
    files: &[PathBuf],
    ctx: usize,
    limit: Option<usize>,
) -> Result<Vec<Vec<u32>>> {
    let mut docs = Vec::new();
    for f in files {
        docs.extend(
            data::read_documents(f, Split::Selection)
                .with_context(|| format!("reading {}", f.display()))?,
        );
    }
    let mut rows = data::token_rows(&lm.tokenizer, &docs, ctx)?;
    if let Some(n) = limit {
        rows.truncate(n.div_ceil(ctx).max(1));
    }
    if rows.is_empty() {
        bail!("no complete row of {ctx} tokens in the text");
    }
    Ok(rows)
}

/// Evaluates and prints the metrics.
fn evaluate(
    lm: &LoadedModel,
    sae: &Sae,
    hook: HookPoint,
    text: &Path,
    tokens: usize,
    ctx: usize,
) -> Result<metrics::SaeEval> {
    let rows = rows_from(lm, &[text.to_path_buf()], ctx, Some(tokens))?;
    let t = Instant::now();
    let r = metrics::evaluate(&lm.model, sae, hook, &rows, 8)?;
    println!(
        "eval on {} ({} rows of {ctx}) at {hook}",
        text.display(),
        rows.len()
    );
    println!(
        "FVU          {:.4}  ({} tokens, position 0 excluded)",
        r.fvu, r.tokens
    );
    println!("L0           {:.2}", r.l0);
    println!(
        "dead         {:.2}%  (never fired on these tokens; d_sae {})",
        100.0 * r.dead_fraction,
        sae.d_sae()
    );
    println!(
        "clean CE     {:.4} nats  ({} predicted tokens)",
        r.clean_ce, r.predicted
    );
    println!("spliced CE   {:.4} nats", r.spliced_ce);
    println!(
        "delta CE     {:.4} nats  ({:.1}s)",
        r.delta_ce,
        t.elapsed().as_secs_f64()
    );
    Ok(r)
}
