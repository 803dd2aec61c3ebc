//! `dsg guard probe`: an existing SAE guardrail gated by a trained, calibrated logistic probe
//! (see `dsg::guard::probe_request`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::guard_cmd::{self, progress_bar, GuardArgs};
use crate::{load_model, ModelArgs};
use dsg::guard::probe::parse_pooling;
use dsg::guard::probe_request::{self, ProbeRequest};
use dsg::guard::{Gate, ProbeInput};

/// `dsg guard …` subcommands.
#[derive(Subcommand)]
pub enum GuardCommand {
    /// The guardrail gated by a logistic probe on the residual (or the SAE's latents) at its hook:
    /// the probe decides, the SAE clamps.
    Probe(ProbeArgs),
}

/// Options of `dsg guard probe`.
#[derive(Args, Clone)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub guard: GuardArgs,
    /// The forget MCQ file; its selection-split questions are the positives.
    #[arg(long)]
    pub forget: PathBuf,
    /// Subject named in the forget prompts.
    #[arg(long, default_value = "biology")]
    pub subject: String,
    /// Benign MCQ or text files (selection split; training negatives, calibration prompts left out).
    #[arg(long, num_args = 1.., required = true)]
    pub retain: Vec<PathBuf>,
    /// Benign MCQ files to calibrate the threshold on (selection split), as `dsg fit --calibrate-mcq`.
    #[arg(long, num_args = 1.., required = true)]
    pub calibrate_mcq: Vec<PathBuf>,
    /// At most this many calibration prompts (seeded sample), as `dsg fit --calibrate-limit`.
    #[arg(long)]
    pub calibrate_limit: Option<usize>,
    /// At most this many training prompts per file (seeded sample).
    #[arg(long)]
    pub limit: Option<usize>,
    /// mean or max-rolling-mean:W.
    #[arg(long, default_value = "mean", value_parser = parse_probe_pooling)]
    pub pooling: Gate,
    /// residual or sae (the SAE's latents).
    #[arg(long, default_value = "residual", value_parser = parse_probe_input)]
    pub input: ProbeInput,
    /// Calibration percentile.
    #[arg(long, default_value_t = 95.0)]
    pub p_dyn: f64,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// The probe-gated guardrail to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

fn parse_probe_pooling(s: &str) -> std::result::Result<Gate, String> {
    parse_pooling(s).map_err(|e| e.to_string())
}

fn parse_probe_input(s: &str) -> std::result::Result<ProbeInput, String> {
    s.parse().map_err(|e: dsg::Error| e.to_string())
}

/// Runs `dsg guard …`.
pub fn run(model: &ModelArgs, cmd: &GuardCommand) -> Result<()> {
    let GuardCommand::Probe(args) = cmd;
    let [guard] = args.guard.guards.as_slice() else {
        anyhow::bail!("--guard: exactly one guardrail to gate by a probe");
    };
    let req = ProbeRequest {
        guard: guard.clone(),
        forget: args.forget.clone(),
        subject: args.subject.clone(),
        retain: args.retain.clone(),
        calibrate_mcq: args.calibrate_mcq.clone(),
        calibrate_limit: args.calibrate_limit,
        limit: args.limit,
        input: args.input,
        pooling: args.pooling,
        p_dyn: args.p_dyn,
        seed: args.seed,
        batch: args.batch,
        out: args.out.clone(),
        overwrite: guard_cmd::overwrite(args.force),
    };
    req.validate()?;
    let lm = load_model(model)?;
    let loaded = guard_cmd::load_guardrails(&lm, &args.guard)?;
    let g = &loaded[0];
    let mut bar = progress_bar();
    let file = probe_request::run(&lm, g.file(), g.sae(), &req, &mut |s, d, t| bar(s, d, t))
        .with_context(|| format!("gating {} by a probe", guard.display()))?;
    let p = file.probe.as_ref().map(|p| &p.training);
    if let (Some(t), Some(c)) = (p, &file.calibration) {
        eprintln!(
            "probe on {}: {} forget vs {} benign prompts, converged {}, training AUROC {:.4}; \
             threshold {:.4} (P{} of {} calibration prompts, FPR {:.3})",
            args.input,
            t.n_pos,
            t.n_neg,
            t.converged,
            t.train_auroc,
            c.threshold,
            c.percentile,
            c.n_rows,
            c.false_positive_rate
        );
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
