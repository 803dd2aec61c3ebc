//! `dsg train`: fine-tune the model (LoRA or full) on question–answer pairs or plain text.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use dsg::train::{
    train_to_dir, AdamWConfig, Decay, Example, LoraSpec, Method, Objective, RunOptions, TrainConfig,
};

use crate::{load_model, ModelArgs};

/// The options of `dsg train`.
#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSON Lines of `{"question", "answer"}` (TOFU's format); chat-formatted, loss on the answer
    /// (and end of turn) only. Repeatable.
    #[arg(long)]
    qa: Vec<PathBuf>,
    /// Retain QA pairs (JSON Lines) for the grad-diff and npo objectives. Repeatable.
    #[arg(long)]
    retain_qa: Vec<PathBuf>,
    /// What to minimise: nll (fine-tuning), grad-ascent, grad-diff or npo (unlearning the --qa/--text
    /// examples, as open-unlearning defines them).
    /// rmu trains the MLP down-projections of blocks L-2..L, as the reference does.
    #[arg(long, default_value = "nll", value_parser = ["nll", "grad-ascent", "grad-diff", "npo", "rmu"])]
    objective: String,
    /// RMU's layer L (the block whose output is steered).
    #[arg(long, default_value_t = 7)]
    rmu_layer: usize,
    /// RMU's steering coefficient (with --adaptive, the multiple of the frozen mean norm).
    #[arg(long, default_value_t = 6.5)]
    steering: f64,
    /// Adaptive RMU: steering proportional to the frozen model's activation norm at the layer.
    #[arg(long)]
    adaptive: bool,
    /// NPO's beta.
    #[arg(long, default_value_t = 0.1)]
    npo_beta: f64,
    /// Weight of the retain term (grad-diff, npo).
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Weight of the forget term (grad-diff, npo).
    #[arg(long, default_value_t = 1.0)]
    gamma: f64,
    /// Plain text, cut into rows of --seq tokens, loss on every token. Repeatable.
    #[arg(long)]
    text: Vec<PathBuf>,
    /// Tokens per plain-text row.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// The run's folder (adapter/ or model.safetensors, train_log.jsonl, train.json, checkpoint/).
    #[arg(long)]
    out: PathBuf,
    /// Train every weight instead of a LoRA adapter.
    #[arg(long)]
    full: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// LoRA dropout.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// Modules LoRA adapts.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    lora_targets: Vec<String>,
    /// rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long)]
    rslora: bool,
    /// Passes over the data.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Stop after this many optimiser steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// Decay after warm-up: constant, linear or cosine.
    #[arg(long, default_value = "cosine")]
    schedule: Decay,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Clip the global gradient norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Seed of the data order, LoRA initialisation and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every this many steps (0: at the end only).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue the unfinished run in --out.
    #[arg(long)]
    resume: bool,
    /// Replace a finished run in --out.
    #[arg(long)]
    force: bool,
}

/// Runs `dsg train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    if args.qa.is_empty() && args.text.is_empty() {
        bail!("dsg train: give the training data with --qa FILE or --text FILE");
    }
    let method = if args.objective == "rmu" {
        Method::Weights(dsg::train::rmu::rmu_parameters(args.rmu_layer))
    } else if args.full {
        Method::Full
    } else {
        Method::Lora(LoraSpec {
            rank: args.lora_rank,
            alpha: args.lora_alpha,
            dropout: args.lora_dropout,
            targets: args.lora_targets.clone(),
            use_rslora: args.rslora,
        })
    };
    let cfg = TrainConfig {
        method,
        epochs: args.epochs,
        max_steps: args.max_steps,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        decay: args.schedule,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        seed: args.seed,
        objective: match args.objective.as_str() {
            "grad-ascent" => Objective::GradAscent,
            "grad-diff" => Objective::GradDiff {
                alpha: args.alpha,
                gamma: args.gamma,
            },
            "npo" => Objective::Npo {
                beta: args.npo_beta,
                alpha: args.alpha,
                gamma: args.gamma,
            },
            "rmu" => Objective::Rmu {
                layer: args.rmu_layer,
                steering: args.steering,
                alpha: args.alpha,
                adaptive: args.adaptive,
            },
            _ => Objective::Nll,
        },
    };
    cfg.validate()?;
    if args.seq < 2 {
        bail!(
            "--seq: {} is not allowed; expected at least 2 tokens",
            args.seq
        );
    }
    if cfg.objective.uses_retain() && args.retain_qa.is_empty() {
        bail!(
            "--objective {}: give the retain set with --retain-qa FILE",
            args.objective
        );
    }
    let mut qa = Vec::new();
    for p in &args.qa {
        qa.extend(dsg::data::tofu::read_tofu_qa(p)?);
    }
    let mut retain_qa = Vec::new();
    for p in &args.retain_qa {
        retain_qa.extend(dsg::data::tofu::read_tofu_qa(p)?);
    }
    let text = args
        .text
        .iter()
        .map(|p| {
            std::fs::read_to_string(p).with_context(|| format!("reading --text {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut lm = load_model(&args.model)?;
    let encode = |items: &[dsg::data::QaItem]| -> Result<Vec<Example>> {
        let mut out = Vec::new();
        for item in items {
            let e = dsg::eval::tofu::encode_qa(&lm.tokenizer, &item.question, &item.answer)?;
            out.push(Example {
                loss_from: e.answer_start,
                ids: e.ids,
            });
        }
        Ok(out)
    };
    let mut examples = encode(&qa)?;
    let retain = encode(&retain_qa)?;
    for t in &text {
        let ids = lm.tokenizer.encode(t, false)?;
        examples.extend(
            ids.chunks(args.seq)
                .filter(|c| c.len() >= 2)
                .map(|c| Example::text(c.to_vec())),
        );
    }
    let opts = RunOptions {
        out: args.out.clone(),
        checkpoint_every: args.checkpoint_every,
        resume: args.resume,
        force: args.force,
        base_model: lm.name(),
    };
    let tokens: usize = examples.iter().map(|e| e.ids.len()).sum();
    eprintln!(
        "{} examples, {tokens} tokens, {} steps",
        examples.len(),
        cfg.total_steps(examples.len())
    );
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("train {bar:40} {pos}/{len} {elapsed}<{eta} {msg}")
            .expect("valid template"),
    );
    let mut seen = (0usize, 0f64);
    let summary = train_to_dir(
        &mut lm.model,
        &examples,
        &retain,
        cfg,
        &opts,
        &mut dsg::model::NoHooks,
        &mut |log, total| {
            seen.0 += log.tokens;
            seen.1 += log.seconds;
            bar.set_length(total as u64);
            bar.set_position(log.step as u64 + 1);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                log.loss,
                log.lr,
                seen.0 as f64 / seen.1.max(1e-9)
            ));
        },
    )?;
    bar.finish();
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
