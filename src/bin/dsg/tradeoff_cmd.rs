//! `dsg bench tradeoff`: DSG against the unlearning baselines on one track (see
//! `dsg::eval::tradeoff`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::forgetting::command_line;
use crate::guard_cmd::{overwrite, progress_bar};
use crate::ModelArgs;
use dsg::eval::tradeoff::knowledge::{self, KnowledgeTradeoff};
use dsg::eval::tradeoff::methods::Sweep;
use dsg::eval::tradeoff::report::{cost_ratios, goals, TradeoffReport};

/// `dsg bench …` subcommands.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Fit DSG and train every baseline (RMU, gradient ascent, GradDiff, NPO, static clamps) on
    /// one track's data, sweep each method's knob, evaluate all with one harness, and write
    /// results/tradeoff/<track>/ (JSON, a Table-1 Markdown, Pareto SVGs, costs).
    Tradeoff(TradeoffArgs),
}

/// Options of `dsg bench tradeoff`.
#[derive(Args, Clone)]
pub struct TradeoffArgs {
    /// The track: `knowledge` (Track K: ARC-Easy life science, what the default model knows).
    #[arg(value_parser = ["knowledge"])]
    pub track: String,
    /// The shared data folder (default: DSG_SHARED_DATA, else ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The SAE (default: the built-in one).
    #[arg(long, value_parser = crate::sae_path)]
    pub sae: Option<PathBuf>,
    /// Output folder (default: results/tradeoff/<track>; work/ keeps every stage for reuse).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace existing reports.
    #[arg(long)]
    pub force: bool,
    /// The full sweep (several hours on 2 cores) instead of the reduced default (under an hour).
    #[arg(long)]
    pub full: bool,
    /// Held-out questions per side the base model is scored on to find the ones it knows.
    #[arg(long, default_value_t = 200)]
    pub candidates: usize,
    /// At most this many held-out known questions per side are evaluated.
    #[arg(long, default_value_t = 60)]
    pub known: usize,
    /// Held-out MMLU questions per subject outside biology/medicine.
    #[arg(long, default_value_t = 1)]
    pub mmlu_per_subject: usize,
    /// Selection-split questions per side the training baselines read.
    #[arg(long, default_value_t = 128)]
    pub train_rows: usize,
    /// Free answers to forget stems per point (gibberish rate).
    #[arg(long, default_value_t = 16)]
    pub generations: usize,
    /// New tokens per free answer.
    #[arg(long, default_value_t = 40)]
    pub max_tokens: usize,
    /// WikiText-2 test windows for the KL to the base model.
    #[arg(long, default_value_t = 4)]
    pub kl_windows: usize,
    /// Tokens per KL window.
    #[arg(long, default_value_t = 256)]
    pub kl_window_tokens: usize,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Seed of the question samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Reuse the finished points of a previous run's report.json (its evaluation sets must equal
    /// this run's); the report lists the reused points under info.reused_from.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
}

/// Runs `dsg bench tradeoff`.
pub fn run(model: &ModelArgs, command: &BenchCommand) -> Result<()> {
    let BenchCommand::Tradeoff(a) = command;
    if !model.adapter.is_empty() || model.weights.is_some() {
        anyhow::bail!("dsg bench tradeoff trains and fits from the base model: give --model only");
    }
    let started = std::time::Instant::now();
    let cfg = KnowledgeTradeoff {
        model: crate::model_path(model)?,
        data: dsg::runtime::shared_data_dir(a.data.as_deref())?,
        sae: match &a.sae {
            Some(p) => p.clone(),
            None => dsg::assets::default_sae_dir()?,
        },
        out: a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("results/tradeoff").join(&a.track)),
        overwrite: overwrite(a.force),
        sweep: if a.full { Sweep::Full } else { Sweep::Reduced },
        candidates: a.candidates,
        known: a.known,
        mmlu_per_subject: a.mmlu_per_subject,
        train_rows: a.train_rows,
        generations: a.generations,
        max_tokens: a.max_tokens,
        kl_windows: a.kl_windows,
        kl_window_tokens: a.kl_window_tokens,
        batch: a.batch,
        seed: a.seed,
        resume_from: a.resume_from.clone(),
    };
    let model_name = cfg
        .model
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let report = |points: &[dsg::eval::tradeoff::PointResult],
                  info: &serde_json::Value,
                  pending: &[String]| {
        let costs = cost_ratios(points);
        TradeoffReport {
            track: a.track.clone(),
            model: model_name.clone(),
            command: command_line(),
            info: info.clone(),
            goals: goals(points, &costs),
            points: points.to_vec(),
            costs,
            pending: pending.to_vec(),
            seconds: started.elapsed().as_secs_f64(),
        }
    };
    let mut bar = progress_bar();
    let (points, info) =
        knowledge::run(&cfg, &mut |s, d, t| bar(s, d, t), &mut |p, i, pending| {
            report(p, i, pending).files()?.write(&cfg.out)
        })?;
    let files = report(&points, &info, &[]).files()?;
    files.write(&cfg.out)?;
    print!("{}", files.markdown);
    eprintln!(
        "wrote {}/report.md, report.json, pareto-retain.svg, pareto-mmlu.svg",
        cfg.out.display()
    );
    Ok(())
}
