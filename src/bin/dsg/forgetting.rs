//! `dsg forgetting …`: the evaluation tracks of issue #11, one command and one report folder each
//! (see `dsg::eval::track`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::guard_cmd::{overwrite, parse_gate, parse_split, progress_bar};
use crate::{load_model, ModelArgs};
use dsg::data::Split;
use dsg::eval::track::hazard::{self, GuardSource, HazardConfig};
use dsg::eval::track::knowledge::{self, KnowledgeConfig};
use dsg::eval::track::tofu;
use dsg::guard::recipe::{self, FREE_FORM_CALIBRATION};
use dsg::guard::{Gate, Intervention};

/// `dsg forgetting …` subcommands.
#[derive(Subcommand)]
pub enum ForgettingCommand {
    /// Track H: WMDP-bio detection on free-form and MCQ prompts, and the answer-text NLL shift.
    Hazard(HazardArgs),
    /// Track K: knowledge the model has (measure, choose a cluster, fit, evaluate).
    Knowledge(KnowledgeArgs),
    /// Track T: TOFU (fine-tune a target and a retain model, fit DSG, open-unlearning's metrics).
    Tofu(TofuArgs),
}

/// Options of `dsg forgetting tofu`.
#[derive(Args, Clone)]
pub struct TofuArgs {
    /// The shared data folder (default: DSG_SHARED_DATA, else ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The SAE (default: the built-in one).
    #[arg(long, value_parser = crate::sae_path)]
    pub sae: Option<PathBuf>,
    /// Output folder (report.md, report.json, guard.json, each model's TOFU_EVAL.json; work/ keeps
    /// adapters and evaluations for reuse).
    #[arg(long, default_value = "results/forgetting/tofu")]
    pub out: PathBuf,
    /// Replace existing reports.
    #[arg(long)]
    pub force: bool,
    /// Track T's models, data and evaluation sizes.
    #[command(flatten)]
    pub setup: TofuSetupArgs,
    /// Interventions compared (repeatable): clamp:C, farrell:C, norm:S, refuse.
    #[arg(long = "intervention", default_values = ["clamp:500", "norm:0.5", "refuse"], value_parser = parse_intervention)]
    pub interventions: Vec<Intervention>,
}

/// Track T's fine-tuning of the target and the retain model, its data and its evaluation sizes
/// (shared by `dsg forgetting tofu` and `dsg bench tradeoff tofu`).
#[derive(Args, Clone)]
pub struct TofuSetupArgs {
    /// Forget split: forget01, forget05 or forget10.
    #[arg(long, default_value = "forget01")]
    pub split: dsg::data::tofu::ForgetSplit,
    /// Retain authors (the first ones of full.json) trained on and evaluated.
    #[arg(long, default_value_t = 4)]
    pub retain_authors: usize,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// LoRA rank (alpha is twice the rank).
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// Rows per optimiser step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Real-author and world-fact rows evaluated (0: all).
    #[arg(long, default_value_t = 40)]
    pub utility_rows: usize,
    /// Greedy answers' length limit.
    #[arg(long, default_value_t = 80)]
    pub max_tokens: usize,
    /// WikiText-2 training documents in the retain corpus.
    #[arg(long, default_value_t = 200)]
    pub wikitext_docs: usize,
    /// Gate calibration percentile on the retain questions.
    #[arg(long, default_value_t = 95.0)]
    pub p_dyn: f64,
}

impl TofuSetupArgs {
    /// The track's configuration with these options.
    pub fn config(
        &self,
        model: PathBuf,
        data: PathBuf,
        sae: PathBuf,
        out: PathBuf,
        force: bool,
        interventions: Vec<Intervention>,
    ) -> tofu::TofuTrackConfig {
        tofu::TofuTrackConfig {
            model,
            data,
            sae,
            out,
            overwrite: overwrite(force),
            split: self.split,
            retain_authors: self.retain_authors,
            train: tofu::lora_training(self.lora_rank, self.epochs, self.lr, self.batch_size),
            utility_rows: (self.utility_rows > 0).then_some(self.utility_rows),
            max_new_tokens: self.max_tokens,
            wikitext_docs: self.wikitext_docs,
            p_dyn: self.p_dyn,
            interventions,
        }
    }
}

/// Options of `dsg forgetting hazard`.
#[derive(Args, Clone)]
pub struct HazardArgs {
    /// The guardrail to evaluate; default: fit the free-form recipe into --out (guard.json).
    #[arg(long)]
    pub guard: Option<PathBuf>,
    /// Guardrails evaluated beside it on the same prompts (detection only); default: the shipped one.
    #[arg(long, num_args = 1..)]
    pub compare: Option<Vec<PathBuf>>,
    /// The SAE to fit with; default: the shipped SAE.
    #[arg(long, value_parser = crate::sae_path)]
    pub sae: Option<PathBuf>,
    /// Which split the evaluated questions come from: heldout to report, selection to choose.
    #[arg(long, default_value = "heldout", value_parser = parse_split)]
    pub split: Split,
    /// At most this many prompts per evaluated set (seeded sample).
    #[arg(long, default_value_t = 300)]
    pub limit: usize,
    /// Free-form calibration prompts for the recalibrated gates (the fit's own number by default).
    #[arg(long, default_value_t = FREE_FORM_CALIBRATION)]
    pub calibration_limit: usize,
    /// Held-out WMDP-bio questions for the answer-text NLL shift (0 skips it; each costs 8
    /// full-model rows: 4 options, unguarded and guarded).
    #[arg(long, default_value_t = 100)]
    pub nll_limit: usize,
    /// Extra gates recalibrated on the free-form calibration prompts: paper, window:W, cusum:D.
    #[arg(long = "gate", value_parser = parse_gate)]
    pub gates: Vec<Gate>,
    /// Calibration percentile of the extra gates.
    #[arg(long, default_value_t = 95.0)]
    pub p_dyn: f64,
    /// AUROC bootstrap resamples.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Shared data folder; default: $DSG_SHARED_DATA, else ../shared/data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Report folder (report.json, report.md, SVGs; guard.json when fitted).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace existing report files.
    #[arg(long)]
    pub force: bool,
}

/// Options of `dsg forgetting knowledge`.
#[derive(Args, Clone)]
pub struct KnowledgeArgs {
    /// The shared data folder (default: DSG_SHARED_DATA, else ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The SAE (default: the built-in one).
    #[arg(long, value_parser = crate::sae_path)]
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

/// Runs a `dsg forgetting` subcommand.
pub fn run(model: &ModelArgs, command: &ForgettingCommand) -> Result<()> {
    match command {
        ForgettingCommand::Hazard(args) => {
            let lm = load_model(model)?;
            let compare = match &args.compare {
                Some(c) => c.clone(),
                None => vec![dsg::assets::default_guard_file()?],
            };
            let data = dsg::runtime::shared_data_dir(args.data.as_deref())?;
            let guard = match &args.guard {
                Some(g) => GuardSource::File(g.clone()),
                None => {
                    let sae = match &args.sae {
                        Some(s) => s.clone(),
                        None => dsg::assets::default_sae_dir()?,
                    };
                    let mut req = recipe::wmdp_bio_free_form(
                        &data,
                        sae,
                        args.out.join(hazard::FITTED_GUARD),
                    )?;
                    req.overwrite = overwrite(args.force);
                    GuardSource::Fit(Box::new(req))
                }
            };
            let cfg = HazardConfig {
                data,
                guard,
                compare,
                split: args.split,
                limit: Some(args.limit),
                calibration_limit: args.calibration_limit,
                nll_limit: args.nll_limit,
                gates: args.gates.clone(),
                p_dyn: args.p_dyn,
                bootstrap: args.bootstrap,
                seed: args.seed,
                batch: args.batch,
                out: args.out.clone(),
                overwrite: overwrite(args.force),
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let report = hazard::run(&lm, &cfg, &mut progress_bar())
                .with_context(|| format!("dsg forgetting hazard --out {}", args.out.display()))?;
            let g = &report.goal;
            println!(
                "free-form TPR {:.1}% at benign FPR {:.1}%; MCQ AUROC {:.3}; goal {} ({:.0} s); report: {}",
                100.0 * g.free_form_tpr.rate,
                100.0 * g.free_form_fpr.rate,
                g.mcq_auroc.value,
                if g.met { "met" } else { "not met" },
                report.total_seconds,
                args.out.join("report.md").display()
            );
        }
        ForgettingCommand::Knowledge(a) => {
            let sae = match &a.sae {
                Some(p) => p.clone(),
                None => dsg::assets::default_sae_dir()?,
            };
            let cfg = KnowledgeConfig {
                data: dsg::runtime::shared_data_dir(a.data.as_deref())?,
                sae,
                out: a.out.clone(),
                overwrite: overwrite(a.force),
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
            let command = command_line();
            let mut bar = progress_bar();
            let report = knowledge::run(&lm, &cfg, &command, &mut |s, d, t| bar(s, d, t))?;
            print!("{}", report.markdown());
            eprintln!(
                "wrote {}/report.md, report.json, accuracy.svg, samples.jsonl, guard.json",
                cfg.out.display()
            );
        }
        ForgettingCommand::Tofu(a) => {
            if !model.adapter.is_empty() || model.weights.is_some() {
                anyhow::bail!("dsg forgetting tofu trains its own adapters: give --model only");
            }
            let sae = match &a.sae {
                Some(p) => p.clone(),
                None => dsg::assets::default_sae_dir()?,
            };
            let cfg = a.setup.config(
                crate::model_path(model)?,
                dsg::runtime::shared_data_dir(a.data.as_deref())?,
                sae,
                a.out.clone(),
                a.force,
                a.interventions.clone(),
            );
            let mut bar = progress_bar();
            let files = tofu::run(&cfg, &command_line(), &mut |s, d, t| bar(s, d, t))?;
            files.write(&cfg.out)?;
            print!("{}", files.markdown);
            eprintln!(
                "wrote {}/report.md, report.json, guard.json",
                cfg.out.display()
            );
        }
    }
    Ok(())
}

/// The command line, as recorded in reports (the binary's path shortened to `dsg`).
pub(crate) fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = "dsg".into();
    }
    args.join(" ")
}
