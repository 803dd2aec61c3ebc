//! `dsg eval gate`: how well guardrails' gates separate held-out forget questions from benign
//! prompts, and whether padding or multi-turn splitting bypasses them (see `dsg::eval::suite`).
//! `dsg eval mcq`: multiple-choice accuracy with guardrails active (see `dsg::eval::mcq`).
//! `dsg eval quality`: gibberish, refusal and gate rates of guarded free generation, and KL to the
//! unguarded model (see `dsg::eval::quality`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::guard_cmd::{self, parse_gate, progress_bar, GuardArgs};
use crate::{load_model, ModelArgs};
use dsg::data::Split;
use dsg::data::MMLU_BIO_SUBJECTS;
use dsg::eval::gate_report::{evaluate_gates, GateReportConfig};
use dsg::eval::mcq::{self, McqConfig, Orders, Protocol};
use dsg::eval::prompts::Variant;
use dsg::eval::quality::{self, DegenerateThresholds, QualityConfig, WikiWindows};
use dsg::eval::suite::{ProbeTrainConfig, SuiteConfig};
use dsg::eval::track::topics::Topic;
use dsg::guard::probe::parse_pooling;
use dsg::guard::{Gate, ProbeInput};

/// `dsg eval …` subcommands.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Gate quality: AUROC, TPR/FPR at the threshold, bypass rates, ρ histograms.
    Gate(GateArgs),
    /// Multiple-choice accuracy (paper, lm-eval or cloze protocol), optionally option-order filtered.
    Mcq(McqArgs),
    /// Output quality: gibberish rate of free answers (base vs guarded), refusals, KL on WikiText.
    Quality(QualityArgs),
}

/// Options of `dsg eval mcq`.
#[derive(Args, Clone)]
pub struct McqArgs {
    #[command(flatten)]
    pub guard: GuardArgs,
    /// MCQ files: WMDP JSON, MMLU CSV, MMLU-Redux JSONL, ARC JSONL (repeatable).
    #[arg(long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Which split of each file.
    #[arg(long, default_value = "heldout", value_parser = guard_cmd::parse_split)]
    pub split: Split,
    /// Keep only these subjects (repeatable).
    #[arg(long = "subject")]
    pub subjects: Vec<String>,
    /// Keep only questions of this science topic by dsg's keyword rule: life, other or mixed
    /// (repeatable; for ARC, whose questions carry no subject).
    #[arg(long = "topic", value_parser = parse_topic)]
    pub topics: Vec<Topic>,
    /// Keep only the questions listed in this JSONL file (`kept.jsonl` of an earlier run).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// At most this many questions per file (in file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// paper (spec §5.1), lm-eval or cloze.
    #[arg(long, default_value = "paper", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Keep only questions the base model answers under all-orders (the paper's 24) or cyclic
    /// orders of their options.
    #[arg(long, value_parser = parse_orders)]
    pub filter: Option<Orders>,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Force every guardrail's gate on (τ < 0): every question is scored under the intervention.
    #[arg(long)]
    pub gate_on: bool,
    /// Folder for report.json, report.md, questions.jsonl, kept.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace report files already in --out.
    #[arg(long)]
    pub force: bool,
}

fn parse_probe_pooling(s: &str) -> std::result::Result<Gate, String> {
    parse_pooling(s).map_err(|e| e.to_string())
}

fn parse_probe_input(s: &str) -> std::result::Result<ProbeInput, String> {
    s.parse().map_err(|e: dsg::Error| e.to_string())
}

fn parse_protocol(s: &str) -> std::result::Result<Protocol, String> {
    s.parse().map_err(|e: dsg::Error| e.to_string())
}

fn parse_topic(s: &str) -> std::result::Result<Topic, String> {
    s.parse().map_err(|e: dsg::Error| e.to_string())
}

fn parse_orders(s: &str) -> std::result::Result<Orders, String> {
    s.parse().map_err(|e: dsg::Error| e.to_string())
}

impl McqArgs {
    /// The library's configuration of these options.
    pub fn config(&self) -> McqConfig {
        McqConfig {
            files: self.files.clone(),
            split: self.split,
            subjects: self.subjects.clone(),
            topics: self.topics.clone(),
            questions: self.questions.clone(),
            limit: self.limit,
            protocol: self.protocol,
            filter: self.filter,
            batch: self.batch,
            gate_on: self.gate_on,
            out: self.out.clone(),
            overwrite: crate::guard_cmd::overwrite(self.force),
        }
    }
}

/// Runs `dsg eval mcq`.
fn run_mcq(model: &ModelArgs, args: &McqArgs) -> Result<()> {
    let cfg = args.config();
    cfg.check(&args.guard.guards)?;
    let lm = load_model(model)?;
    let mut guards = guard_cmd::load_guardrails(&lm, &args.guard)?;
    let names: Vec<String> = args
        .guard
        .guards
        .iter()
        .map(|g| g.display().to_string())
        .collect();
    let mut bar = progress_bar();
    let report = mcq::run(&lm, &mut guards, &names, &cfg, &mut |s, d, t| bar(s, d, t))?;
    print!("{}", report.markdown());
    eprintln!(
        "wrote {}/report.md, report.json, questions.jsonl",
        args.out.display()
    );
    Ok(())
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
    /// Probe gates beside the SAE gates, by pooling of a logistic probe's per-token logits: mean
    /// or max-rolling-mean:W (repeatable; each for every --probe-input).
    #[arg(long = "probe", value_parser = parse_probe_pooling)]
    pub probes: Vec<Gate>,
    /// What the probes read: residual or sae (the SAE's latents); repeatable, default both.
    #[arg(long = "probe-input", value_parser = parse_probe_input)]
    pub probe_inputs: Vec<ProbeInput>,
    /// At most this many probe training prompts per source (forget, MMLU; seeded sample).
    #[arg(long)]
    pub probe_train_limit: Option<usize>,
    /// WikiText-2 *test* paragraphs among the probes' training negatives.
    #[arg(long, default_value_t = 300)]
    pub probe_paragraphs: usize,
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
    /// Feature labels for report.json: Neuronpedia explanations exports (.jsonl), each for the
    /// guardrails whose SAE it fits (repeatable).
    #[arg(long)]
    pub labels: Vec<PathBuf>,
    /// Folder for report.md, report.json, the histograms and the activity
    /// (`activity-<guard>.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace report files already in --out.
    #[arg(long)]
    pub force: bool,
}

impl GateArgs {
    /// The library's configuration of these options.
    pub fn config(&self) -> Result<GateReportConfig> {
        let data = dsg::runtime::shared_data_dir(self.data.as_deref())?;
        let suite = SuiteConfig {
            forget_file: self
                .forget
                .clone()
                .unwrap_or_else(|| data.join("wmdp/bio_questions.json")),
            positives_split: self.positives,
            forget_subject: self.subject.clone(),
            mmlu_file: data.join("mmlu_redux/mmlu_redux_all.jsonl"),
            domain_subjects: MMLU_BIO_SUBJECTS.iter().map(|s| s.to_string()).collect(),
            benign_text_file: data.join("wikitext/wikitext-2-tokenized.valid.txt"),
            variants: vec![
                Variant::Unlabelled,
                Variant::Padded { factor: 2.0 },
                Variant::Padded { factor: 5.0 },
                Variant::Turns { turns: 3 },
            ],
            limit: self.limit,
            calibration_limit: Some(self.calibration_limit),
            n_paragraphs: self.paragraphs,
            seed: self.seed,
        };
        let probe_text = data.join("wikitext/wikitext-2-tokenized.test.txt");
        let probe_inputs = if self.probe_inputs.is_empty() {
            ProbeInput::ALL.to_vec()
        } else {
            self.probe_inputs.clone()
        };
        Ok(GateReportConfig {
            suite,
            gates: self.gates.clone(),
            p_dyn: self.p_dyn,
            probes: self.probes.clone(),
            probe_inputs,
            probe_train: ProbeTrainConfig {
                benign_text_file: Some(probe_text).filter(|p| p.exists()),
                limit: self.probe_train_limit,
                n_paragraphs: self.probe_paragraphs,
            },
            data,
            bootstrap: self.bootstrap,
            seed: self.seed,
            batch: self.batch,
            sae: self.guard.sae.clone(),
            from_activity: self.from_activity.clone(),
            labels: self.labels.clone(),
            out: self.out.clone(),
            overwrite: crate::guard_cmd::overwrite(self.force),
        })
    }
}

/// Runs `dsg eval gate`.
pub fn run(model: &ModelArgs, cmd: &EvalCommand) -> Result<()> {
    let args = match cmd {
        EvalCommand::Gate(args) => args,
        EvalCommand::Mcq(args) => return run_mcq(model, args),
        EvalCommand::Quality(args) => return run_quality(model, args),
    };
    let cfg = args.config()?;
    cfg.check(&args.guard.guards)?;
    let lm = load_model(model)?;
    let guards = guard_cmd::load_guardrails(&lm, &args.guard)?;
    let mut bar = progress_bar();
    let report = evaluate_gates(&lm, &guards, &args.guard.guards, &cfg, &mut |name, d, t| {
        bar(name, d, t)
    })?;
    for (name, n) in &report.sets {
        eprintln!("{n:>6} prompts  {name}");
    }
    print!("{}", report.markdown);
    eprintln!("wrote {}/report.md, report.json", args.out.display());
    Ok(())
}

/// Options of `dsg eval quality`.
#[derive(Args, Clone)]
pub struct QualityArgs {
    #[command(flatten)]
    pub guard: GuardArgs,
    /// The forget domain's MCQ file; its question stems are the forget prompts.
    #[arg(long)]
    pub forget: PathBuf,
    /// Benign MCQ files; their question stems are the benign prompts.
    #[arg(long, num_args = 1.., required = true)]
    pub benign: Vec<PathBuf>,
    /// Which split of each file.
    #[arg(long, default_value = "heldout", value_parser = guard_cmd::parse_split)]
    pub split: Split,
    /// At most this many prompts per file (a seeded sample).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of that sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// New tokens per answer (greedy decoding).
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// Force every gate on (τ < 0), to measure the intervention on every prompt.
    #[arg(long)]
    pub gate_on: bool,
    /// A text file for next-token KL and perplexity, base vs guarded (e.g. WikiText-2 raw test).
    #[arg(long)]
    pub wikitext: Option<PathBuf>,
    /// Windows of --wikitext, from its start.
    #[arg(long, default_value_t = 8, requires = "wikitext")]
    pub windows: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 256, requires = "wikitext")]
    pub window_tokens: usize,
    /// Folder for report.json, report.md, samples.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace report files already in --out.
    #[arg(long)]
    pub force: bool,
}

impl QualityArgs {
    /// The library's configuration of these options.
    pub fn config(&self) -> QualityConfig {
        QualityConfig {
            forget: self.forget.clone(),
            benign: self.benign.clone(),
            split: self.split,
            limit: self.limit,
            seed: self.seed,
            max_new_tokens: self.max_tokens,
            gate_on: self.gate_on,
            thresholds: DegenerateThresholds::default(),
            wikitext: self.wikitext.clone().map(|file| WikiWindows {
                file,
                windows: self.windows,
                window_tokens: self.window_tokens,
            }),
            out: self.out.clone(),
            overwrite: crate::guard_cmd::overwrite(self.force),
        }
    }
}

/// Runs `dsg eval quality`.
fn run_quality(model: &ModelArgs, args: &QualityArgs) -> Result<()> {
    let cfg = args.config();
    cfg.check(&args.guard.guards)?;
    let lm = load_model(model)?;
    let guards = guard_cmd::load_guardrails(&lm, &args.guard)?;
    let names: Vec<String> = args
        .guard
        .guards
        .iter()
        .map(|g| g.display().to_string())
        .collect();
    let mut bar = progress_bar();
    let report = quality::report::run(&lm, &guards, &names, &cfg, &mut |s, d, t| bar(s, d, t))?;
    print!("{}", report.markdown());
    eprintln!(
        "wrote {}/report.md, report.json, samples.jsonl",
        args.out.display()
    );
    Ok(())
}
