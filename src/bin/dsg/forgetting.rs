//! `dsg forgetting …`: the forgetting tracks, each one command writing a results folder (see
//! `dsg::eval::track`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::guard_cmd::{parse_gate, progress_bar};
use crate::{load_model, ModelArgs};
use dsg::eval::track::knowledge::{self, KnowledgeConfig};
use dsg::guard::{Gate, Intervention};

/// `dsg forgetting …` subcommands.
#[derive(Subcommand)]
pub enum ForgettingCommand {
    /// Track K: knowledge the model has (measure, choose a cluster, fit, evaluate).
    Knowledge(KnowledgeArgs),
}

/// Options of `dsg forgetting knowledge`.
#[derive(Args, Clone)]
pub struct KnowledgeArgs {
    /// The shared data folder (default: DSG_SHARED_DATA, else ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The SAE (default: the built-in one).
    #[arg(long)]
    pub sae: Option<PathBuf>,
    /// Results folder.
    #[arg(long, default_value = "results/forgetting/knowledge")]
    pub out: PathBuf,
    /// Replace report files already in --out (stage checkpoints in <out>/work are always reused).
    #[arg(long)]
    pub force: bool,
    /// Selection-split MMLU questions per subject for the knowledge measurement.
    #[arg(long, default_value_t = 12)]
    pub mmlu_per_subject: usize,
    /// Held-out MMLU questions per subject outside biology/medicine, for utility.
    #[arg(long, default_value_t = 10)]
    pub mmlu_utility_per_subject: usize,
    /// Selected features.
    #[arg(long, default_value_t = 20)]
    pub n_features: usize,
    /// Importance-ratio percentile.
    #[arg(long, default_value_t = 95.0)]
    pub p_ratio: f64,
    /// Calibration percentile (retain-topic selection questions as cloze prompts).
    #[arg(long, default_value_t = 98.0)]
    pub p_dyn: f64,
    /// Gate: paper, window:W or cusum:DRIFT (threshold calibrated).
    #[arg(long, default_value = "paper", value_parser = parse_gate)]
    pub gate: Gate,
    /// Interventions compared (repeatable): clamp:C, farrell:C, norm:S, refuse.
    #[arg(long = "intervention", default_values = ["clamp:500", "norm:0.5", "refuse"], value_parser = parse_intervention)]
    pub interventions: Vec<Intervention>,
    /// Free answers per side (forget, retain) for the gibberish rate.
    #[arg(long, default_value_t = 40)]
    pub generations: usize,
    /// New tokens per free answer.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// WikiText windows for next-token KL.
    #[arg(long, default_value_t = 4)]
    pub kl_windows: usize,
    /// Tokens per KL window.
    #[arg(long, default_value_t = 256)]
    pub kl_window_tokens: usize,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

fn parse_intervention(s: &str) -> std::result::Result<Intervention, String> {
    s.parse().map_err(|e: dsg::Error| e.to_string())
}

/// Runs `dsg forgetting …`.
pub fn run(model: &ModelArgs, cmd: &ForgettingCommand) -> Result<()> {
    let ForgettingCommand::Knowledge(a) = cmd;
    let sae = match &a.sae {
        Some(p) => p.clone(),
        None => dsg::assets::default_sae_dir()?,
    };
    let cfg = KnowledgeConfig {
        data: dsg::runtime::shared_data_dir(a.data.as_deref())?,
        sae,
        out: a.out.clone(),
        overwrite: crate::overwrite(a.force),
        mmlu_per_subject: a.mmlu_per_subject,
        mmlu_utility_per_subject: a.mmlu_utility_per_subject,
        n_features: a.n_features,
        p_ratio: a.p_ratio,
        p_dyn: a.p_dyn,
        gate: a.gate,
        interventions: a.interventions.clone(),
        generations: a.generations,
        max_tokens: a.max_tokens,
        kl_windows: a.kl_windows,
        kl_window_tokens: a.kl_window_tokens,
        batch: a.batch,
    };
    cfg.check()?;
    let lm = load_model(model)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut bar = progress_bar();
    let report = knowledge::run(&lm, &cfg, &command, &mut |s, d, t| bar(s, d, t))?;
    print!("{}", report.markdown());
    eprintln!(
        "wrote {}/report.md, report.json, accuracy.svg, samples.jsonl, guard.json",
        cfg.out.display()
    );
    Ok(())
}
