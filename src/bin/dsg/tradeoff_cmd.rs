//! `dsg bench tradeoff`: DSG against the unlearning baselines on one track (see
//! `dsg::eval::tradeoff`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::forgetting::{command_line, TofuSetupArgs};
use crate::guard_cmd::{overwrite, progress_bar};
use crate::ModelArgs;
use dsg::eval::tradeoff::knowledge::{self, KnowledgeTradeoff};
use dsg::eval::tradeoff::methods::Sweep;
use dsg::eval::tradeoff::report::{cost_ratios, goals, TradeoffReport};
use dsg::eval::tradeoff::tofu::{self as tofu_tradeoff, TofuTradeoff};
use dsg::eval::tradeoff::tofu_report::TofuTradeoffReport;

/// `dsg bench …` subcommands.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Fit DSG and train every baseline (RMU, gradient ascent, GradDiff, NPO, static clamps) on
    /// one track's data, sweep each method's knob, evaluate all with one harness, and write
    /// results/tradeoff/<track>/ (JSON, a Markdown table, Pareto SVGs, costs).
    #[command(subcommand)]
    Tradeoff(TradeoffTrack),
}

/// The tracks `dsg bench tradeoff` runs on.
#[derive(Subcommand)]
pub enum TradeoffTrack {
    /// Track K: ARC-Easy life science, what the default model knows (Table 1's accuracies).
    Knowledge(TradeoffArgs),
    /// Track T: TOFU's forget authors, taught to the target by fine-tuning (open-unlearning's
    /// metrics: ROUGE-L, forget quality, model utility).
    Tofu(TofuTradeoffArgs),
}

/// Options of `dsg bench tradeoff tofu`.
#[derive(Args, Clone)]
pub struct TofuTradeoffArgs {
    /// The base model: a GGUF file, a Hugging Face folder, or a name dsg fetches
    /// (smollm2-135m-instruct, gemma-3-270m); default: smollm2-135m-instruct. Baselines train
    /// from it, so no adapter or weights are taken.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The shared data folder (default: DSG_SHARED_DATA, else ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The SAE (default: the built-in one).
    #[arg(long, value_parser = crate::sae_path)]
    pub sae: Option<PathBuf>,
    /// Output folder (work/ keeps adapters, fits and every evaluation for reuse).
    #[arg(long, default_value = "results/tradeoff/tofu")]
    pub out: PathBuf,
    /// Replace existing reports.
    #[arg(long)]
    pub force: bool,
    /// The full sweep (every knob value of Track K's full grid) instead of one setting per
    /// baseline.
    #[arg(long)]
    pub full: bool,
    /// Track T's models, data and evaluation sizes (as `dsg forgetting tofu`).
    #[command(flatten)]
    pub setup: TofuSetupArgs,
}

/// Options of `dsg bench tradeoff knowledge`.
#[derive(Args, Clone)]
pub struct TradeoffArgs {
    /// The base model: a GGUF file, a Hugging Face folder, or a name dsg fetches
    /// (smollm2-135m-instruct, gemma-3-270m); default: smollm2-135m-instruct. Baselines train
    /// from it, so no adapter or weights are taken.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The shared data folder (default: DSG_SHARED_DATA, else ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The SAE (default: the built-in one).
    #[arg(long, value_parser = crate::sae_path)]
    pub sae: Option<PathBuf>,
    /// Output folder (work/ keeps every stage for reuse).
    #[arg(long, default_value = "results/tradeoff/knowledge")]
    pub out: PathBuf,
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
pub fn run(command: &BenchCommand) -> Result<()> {
    let BenchCommand::Tradeoff(track) = command;
    let base = |model: &Option<PathBuf>| ModelArgs {
        model: model.clone(),
        adapter: Vec::new(),
        merge_adapter: false,
        weights: None,
    };
    match track {
        TradeoffTrack::Knowledge(a) => run_knowledge(&base(&a.model), a),
        TradeoffTrack::Tofu(a) => run_tofu(&base(&a.model), a),
    }
}

fn model_name(path: &std::path::Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn run_tofu(model: &ModelArgs, a: &TofuTradeoffArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let sae = match &a.sae {
        Some(p) => p.clone(),
        None => dsg::assets::default_sae_dir()?,
    };
    let cfg = TofuTradeoff {
        track: a.setup.config(
            crate::model_path(model)?,
            dsg::runtime::shared_data_dir(a.data.as_deref())?,
            sae,
            a.out.clone(),
            a.force,
            Vec::new(),
        ),
        sweep: if a.full { Sweep::Full } else { Sweep::Reduced },
    };
    let name = model_name(&cfg.track.model);
    let report =
        |points: &[tofu_tradeoff::TofuPoint], info: &serde_json::Value, pending: &[String]| {
            TofuTradeoffReport::new(
                name.clone(),
                command_line(),
                info.clone(),
                points.to_vec(),
                pending.to_vec(),
                started.elapsed().as_secs_f64(),
            )
        };
    let mut bar = progress_bar();
    let (points, info) =
        tofu_tradeoff::run(&cfg, &mut |s, d, t| bar(s, d, t), &mut |p, i, pending| {
            report(p, i, pending).files()?.write(&cfg.track.out)
        })?;
    let files = report(&points, &info, &[]).files()?;
    files.write(&cfg.track.out)?;
    print!("{}", files.markdown);
    eprintln!(
        "wrote {}/report.md, report.json, {}",
        cfg.track.out.display(),
        tofu_tradeoff::FIGURES.join(", ")
    );
    Ok(())
}

fn run_knowledge(model: &ModelArgs, a: &TradeoffArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let cfg = KnowledgeTradeoff {
        model: crate::model_path(model)?,
        data: dsg::runtime::shared_data_dir(a.data.as_deref())?,
        sae: match &a.sae {
            Some(p) => p.clone(),
            None => dsg::assets::default_sae_dir()?,
        },
        out: a.out.clone(),
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
    let model_name = model_name(&cfg.model);
    let report = |points: &[dsg::eval::tradeoff::PointResult],
                  info: &serde_json::Value,
                  pending: &[String]| {
        let costs = cost_ratios(points);
        TradeoffReport {
            track: "knowledge".into(),
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
