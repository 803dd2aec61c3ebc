//! `dsg eval gate`: how well guardrails' gates separate held-out forget questions from benign
//! prompts, and whether padding or multi-turn splitting bypasses them (see `dsg::eval::suite`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::demo::data_dir;
use crate::guard_cmd::{self, parse_gate, progress_bar, GuardArgs};
use dsg::data::Split;
use dsg::eval::detection::{markdown_table, GateEval};
use dsg::eval::plot::score_histograms;
use dsg::eval::prompts::{Variant, MMLU_BIO_SUBJECTS};
use dsg::eval::suite::{build_suite, SuiteActivity, SuiteConfig};
use dsg::guard::{Gate, Guardrail};
use dsg::model::LoadedModel;

/// `dsg eval …` subcommands.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Gate quality: AUROC, TPR/FPR at the threshold, bypass rates, ρ histograms.
    Gate(GateArgs),
}

/// Options of `dsg eval gate`.
#[derive(Args, Clone)]
pub struct GateArgs {
    #[command(flatten)]
    pub guard: GuardArgs,
    /// The shared data folder (default: $DSG_SHARED_DATA or ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The forget domain's MCQ file (default: WMDP-bio); its held-out split are the positives.
    #[arg(long)]
    pub forget: Option<PathBuf>,
    /// Subject named in the forget prompts.
    #[arg(long, default_value = "biology")]
    pub subject: String,
    /// Gates to compare besides each guardrail's own, calibrated at --p-dyn on selection-split MMLU
    /// prompts: paper, window:W, cusum:DRIFT.
    #[arg(long = "gate", value_parser = parse_gate, default_values = ["paper", "window:32", "cusum:0.25"])]
    pub gates: Vec<Gate>,
    /// Calibration percentile for the compared gates.
    #[arg(long, default_value_t = 95.0)]
    pub p_dyn: f64,
    /// At most this many prompts per evaluated set (seeded sample); default: all.
    #[arg(long)]
    pub limit: Option<usize>,
    /// At most this many calibration prompts (seeded sample); default: all.
    #[arg(long, default_value_t = 1000)]
    pub calibration_limit: usize,
    /// Benign WikiText paragraphs.
    #[arg(long, default_value_t = 300)]
    pub paragraphs: usize,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Bootstrap resamples for AUROC intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of sampling and bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which forget questions are the positives: heldout (to report) or selection (to choose gate
    /// parameters without looking at held-out questions).
    #[arg(long, default_value = "heldout", value_parser = guard_cmd::parse_split)]
    pub positives: Split,
    /// Read the activity saved by an earlier run in this folder instead of running the model.
    #[arg(long)]
    pub from_activity: Option<PathBuf>,
    /// Folder for report.md, report.json, the histograms and the activity
    /// (`activity-<guard>.json`).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct GuardReport<'a> {
    guard: String,
    features: Vec<u32>,
    gates: &'a [GateEval],
}

#[derive(Serialize)]
struct Report<'a> {
    data: String,
    sets: Vec<(String, usize)>,
    p_dyn: f64,
    guards: Vec<GuardReport<'a>>,
}

fn gate_label(g: &Gate) -> String {
    match *g {
        Gate::Paper { .. } => "paper ρ".into(),
        Gate::Window { width, .. } => format!("window {width}"),
        Gate::Cusum { drift, .. } => format!("CUSUM drift {drift}"),
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs `dsg eval gate`.
pub fn run(lm: &LoadedModel, cmd: &EvalCommand) -> Result<()> {
    let EvalCommand::Gate(args) = cmd;
    let guards = guard_cmd::load_guardrails(lm, &args.guard)?;
    let Some(first) = guards.first() else {
        bail!("dsg eval gate needs at least one --guard");
    };
    let hook = first.file().hook_point;
    if guards
        .iter()
        .any(|g| g.file().hook_point != hook || g.file().sae.sha256 != first.file().sae.sha256)
    {
        bail!("all --guard files must use the same SAE at the same hook point");
    }
    let data = data_dir(args.data.as_ref());
    let cfg = SuiteConfig {
        forget_file: args
            .forget
            .clone()
            .unwrap_or_else(|| data.join("wmdp/bio_questions.json")),
        positives_split: args.positives,
        forget_subject: args.subject.clone(),
        mmlu_file: data.join("mmlu_redux/mmlu_redux_all.jsonl"),
        domain_subjects: MMLU_BIO_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        benign_text_file: data.join("wikitext/wikitext-2-tokenized.valid.txt"),
        variants: vec![
            Variant::Unlabelled,
            Variant::Padded { factor: 2.0 },
            Variant::Padded { factor: 5.0 },
            Variant::Turns { turns: 3 },
        ],
        limit: args.limit,
        calibration_limit: Some(args.calibration_limit),
        n_paragraphs: args.paragraphs,
        seed: args.seed,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let feature_sets: Vec<Vec<u32>> = guards.iter().map(|g| g.file().feature_ids()).collect();
    let activity = match &args.from_activity {
        Some(dir) => load_activity(dir, &args.guard.guards, &feature_sets)?,
        None => {
            let activity = compute_activity(lm, args, &cfg, first, &feature_sets)?;
            for (a, path) in activity.iter().zip(&args.guard.guards) {
                a.save(&activity_path(&args.out, path))?;
            }
            activity
        }
    };
    let a0 = &activity[0];
    let mut sets = vec![(a0.positives_name.clone(), a0.positives.len())];
    sets.extend(a0.negatives.iter().map(|(n, p)| (n.clone(), p.len())));
    sets.push(("calibration: MMLU selection".into(), a0.calibration.len()));
    sets.extend(a0.variants.iter().map(|(n, p)| (n.clone(), p.len())));
    for (name, n) in &sets {
        eprintln!("{n:>6} prompts  {name}");
    }
    let mut results = Vec::new();
    for ((g, act), path) in guards.iter().zip(&activity).zip(&args.guard.guards) {
        let view = act.eval_activity();
        let own = g.file().gate;
        let mut evals = vec![GateEval::new(
            &format!("{} (as fitted)", gate_label(&own)),
            own,
            view,
            args.bootstrap,
            args.seed,
        )?];
        for &gate in &args.gates {
            evals.push(GateEval::calibrated(
                &format!("{} (MMLU-calibrated)", gate_label(&gate)),
                gate,
                &act.calibration,
                args.p_dyn,
                view,
                args.bootstrap,
                args.seed,
            )?);
        }
        write_histogram(&args.out, path, &evals)?;
        results.push((path.display().to_string(), g.file().feature_ids(), evals));
    }
    let mut md = format!(
        "# Gate evaluation\n\nData: {}. Prompt counts: {}. Compared gates are calibrated at P{} of \
         their scores on the calibration prompts. Intervals: 95% (AUROC: bootstrap, {} resamples; \
         rates: Wilson). Bypass = of the forget prompts caught in plain form, the share missed in \
         the variant.\n",
        data.display(),
        sets.iter()
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.p_dyn,
        args.bootstrap
    );
    for (guard, _, evals) in &results {
        md.push_str(&format!("\n## {guard}\n\n{}", markdown_table(evals)));
    }
    let report = Report {
        data: data.display().to_string(),
        sets,
        p_dyn: args.p_dyn,
        guards: results
            .iter()
            .map(|(guard, features, gates)| GuardReport {
                guard: guard.clone(),
                features: features.clone(),
                gates,
            })
            .collect(),
    };
    std::fs::write(args.out.join("report.md"), &md)?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    print!("{md}");
    eprintln!("wrote {}/report.md, report.json", args.out.display());
    Ok(())
}

fn activity_path(dir: &Path, guard: &Path) -> PathBuf {
    dir.join(format!("activity-{}.json", stem(guard)))
}

fn load_activity(
    dir: &Path,
    guards: &[PathBuf],
    features: &[Vec<u32>],
) -> Result<Vec<SuiteActivity>> {
    guards
        .iter()
        .zip(features)
        .map(|(g, f)| {
            let path = activity_path(dir, g);
            let a = SuiteActivity::load(&path)?;
            if &a.features != f {
                bail!(
                    "{}: activity of features {:?}, but {} selects {:?}",
                    path.display(),
                    a.features,
                    g.display(),
                    f
                );
            }
            Ok(a)
        })
        .collect()
}

/// Builds the suite's prompts and runs them once through the model.
fn compute_activity(
    lm: &LoadedModel,
    args: &GateArgs,
    cfg: &SuiteConfig,
    first: &Guardrail,
    feature_sets: &[Vec<u32>],
) -> Result<Vec<SuiteActivity>> {
    let suite = build_suite(&lm.tokenizer, cfg)?;
    eprintln!("{} prompts in all", suite.len());
    let hook = first.file().hook_point;
    let sae = first.sae();
    let sets: Vec<Vec<usize>> = feature_sets
        .iter()
        .map(|f| f.iter().map(|&i| i as usize).collect())
        .collect();
    let mut bar = progress_bar();
    Ok(
        suite.activity(&lm.model, sae, hook, &sets, args.batch, &mut |d, t| {
            bar("prompts", d, t)
        })?,
    )
}

/// The paper-ρ histogram of the forget and benign sets (scores of the first paper gate among
/// `evals`), with the thresholds of the ρ gates.
fn write_histogram(out: &Path, guard: &Path, evals: &[GateEval]) -> Result<()> {
    let Some(paper) = evals.iter().find(|e| matches!(e.gate, Gate::Paper { .. })) else {
        return Ok(());
    };
    let thresholds: Vec<(String, f64)> = evals
        .iter()
        .filter(|e| matches!(e.gate, Gate::Paper { .. }))
        .map(|e| (format!("τ {}", e.label), e.gate.threshold()))
        .collect();
    // The forget prompts and the benign sets (the variants would crowd the figure).
    let sets: Vec<_> = paper.scores.iter().take(1 + paper.fpr.len()).collect();
    let svg = score_histograms(
        &format!("ρ by prompt set: {}", stem(guard)),
        "ρ (fraction of tokens with a selected feature active)",
        &sets,
        &thresholds,
        50,
    )?;
    let path = out.join(format!("rho-{}.svg", stem(guard)));
    std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
