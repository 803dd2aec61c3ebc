//! The `dsg eval gate` report: each guardrail's token activity on a [`suite`](mod@super::suite) (or
//! the activity saved by an earlier run), its own gate and the compared gates evaluated on it,
//! probe gates beside them, and the report files (`report.md`, `report.json`, `rho-<guard>.svg`,
//! `probe-<input>.svg`, `activity-<guard>.json`).
//!
//! Probe gates: one probe per input (residual, SAE latents) is trained on the suite's probe
//! training prompts ([`probe_training_prompts`], one model pass), and every pooling (mean, max of
//! rolling means) of its logits is calibrated at `p_dyn` on the suite's calibration prompts, by
//! the rule the SAE gates use. Their logits come from the suite's one pass with the activity.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::detection::{markdown_table, matched_table, GateEval};
use super::explain::labels_for_guards;
use super::plot::score_histograms;
use super::suite::{
    build_suite, probe_training_prompts, ProbeTrainConfig, SuiteActivity, SuiteConfig, SuiteLogits,
};
use crate::guard::logistic::Solver;
use crate::guard::probe::{check_probe_gate, ProbeTraining};
use crate::guard::probe_fit::{prompt_signals, SignalRequest};
use crate::guard::{Evidence, Gate, Guardrail, Probe, ProbeInput};
use crate::model::LoadedModel;
use crate::output::{check_output_dir, Overwrite};
use crate::sae::FeatureLabels;
use crate::{Error, Result};

/// What [`evaluate_gates`] evaluates and where it writes.
#[derive(Debug, Clone)]
pub struct GateReportConfig {
    /// The suite's prompt sources.
    pub suite: SuiteConfig,
    /// The shared data folder, as named in the report.
    pub data: PathBuf,
    /// Gates compared besides each guardrail's own, calibrated at `p_dyn` on the calibration
    /// prompts.
    pub gates: Vec<Gate>,
    /// Calibration percentile of the compared gates.
    pub p_dyn: f64,
    /// Probe poolings to compare (paper: mean, window: max of rolling means), for each of
    /// `probe_inputs`; empty: no probes.
    pub probes: Vec<Gate>,
    /// What the probes read.
    pub probe_inputs: Vec<ProbeInput>,
    /// The probes' training prompts besides the suite's files.
    pub probe_train: ProbeTrainConfig,
    /// Bootstrap resamples for AUROC intervals.
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// Prompts per forward pass.
    pub batch: usize,
    /// The SAE to compute activity with; `None`: the one the first guardrail names.
    pub sae: Option<PathBuf>,
    /// Read the activity saved in this folder instead of running the model.
    pub from_activity: Option<PathBuf>,
    /// Neuronpedia explanation exports naming the guardrails' features in `report.json`, each
    /// for the guardrails whose SAE it fits (see [`crate::sae::labels`]).
    pub labels: Vec<PathBuf>,
    /// Folder for the report files.
    pub out: PathBuf,
    /// Whether existing report files may be replaced.
    pub overwrite: Overwrite,
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn activity_path(dir: &Path, guard: &Path) -> PathBuf {
    dir.join(format!("activity-{}.json", stem(guard)))
}

impl GateReportConfig {
    /// Checks the ranges: `p_dyn` in 0..=100, `bootstrap ≥ 1`, `batch ≥ 1`, limits ≥ 1.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=100.0).contains(&self.p_dyn) {
            return Err(Error::out_of_range(
                "p_dyn (--p-dyn)",
                self.p_dyn,
                "0..=100",
            ));
        }
        if self.bootstrap == 0 {
            return Err(Error::out_of_range(
                "bootstrap (--bootstrap)",
                0,
                "at least 1",
            ));
        }
        if self.batch == 0 {
            return Err(Error::out_of_range("batch (--batch)", 0, "at least 1"));
        }
        if self.suite.limit == Some(0) {
            return Err(Error::out_of_range("limit (--limit)", 0, "at least 1"));
        }
        for g in &self.probes {
            check_probe_gate(g).map_err(|e| Error::Invalid(format!("--probe: {e}")))?;
        }
        if !self.probes.is_empty() {
            if self.probe_inputs.is_empty() {
                return Err(Error::Invalid(
                    "--probe needs at least one --probe-input (residual, sae)".into(),
                ));
            }
            if self.from_activity.is_some() {
                return Err(Error::Unsupported(
                    "--probe with --from-activity: probes need the model pass".into(),
                ));
            }
            if self.suite.positives_split != crate::data::Split::Heldout {
                return Err(Error::Invalid(
                    "--probe trains on selection-split forget questions; use --positives heldout"
                        .into(),
                ));
            }
            if self.probe_train.limit == Some(0) {
                return Err(Error::out_of_range(
                    "probe_train.limit (--probe-train-limit)",
                    0,
                    "at least 1",
                ));
            }
        }
        if self.suite.calibration_limit == Some(0) {
            return Err(Error::out_of_range(
                "calibration_limit (--calibration-limit)",
                0,
                "at least 1",
            ));
        }
        Ok(())
    }

    /// The files a run writes into `out` for these guardrail files.
    pub fn output_names(&self, guard_paths: &[PathBuf]) -> Vec<String> {
        let mut names = vec!["report.md".to_string(), "report.json".to_string()];
        for g in guard_paths {
            names.push(format!("rho-{}.svg", stem(g)));
            if self.from_activity.is_none() {
                names.push(format!("activity-{}.json", stem(g)));
            }
        }
        if self.probes.iter().any(|g| matches!(g, Gate::Paper { .. })) {
            names.extend(self.probe_inputs.iter().map(|i| format!("probe-{i}.svg")));
        }
        names
    }

    /// Checks the options and that `out` may receive the report files: not an input (a guardrail,
    /// the SAE, a data file) and no report file replaced unless forced.
    pub fn check(&self, guard_paths: &[PathBuf]) -> Result<()> {
        self.validate()?;
        let names = self.output_names(guard_paths);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut inputs: Vec<&Path> = guard_paths.iter().map(PathBuf::as_path).collect();
        inputs.extend([
            self.suite.forget_file.as_path(),
            self.suite.mmlu_file.as_path(),
            self.suite.benign_text_file.as_path(),
        ]);
        if let Some(s) = &self.sae {
            inputs.push(s);
        }
        if let Some(t) = &self.probe_train.benign_text_file {
            inputs.push(t);
        }
        check_output_dir(&self.out, "--out", &names, &inputs, self.overwrite)
    }
}

/// One guardrail's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct GuardReport {
    /// The guardrail file.
    pub guard: String,
    /// Its selected features.
    pub features: Vec<u32>,
    /// The label of each selected feature that has one (`labels`), by feature id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<u32, String>,
    /// Its own gate and the compared ones.
    pub gates: Vec<GateEval>,
}

/// A probe of the report: what it read and how it was trained (its weights are not kept).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeSummary {
    /// What it read.
    pub input: ProbeInput,
    /// The training record.
    pub training: ProbeTraining,
}

/// The whole report (`report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// The shared data folder.
    pub data: String,
    /// Each prompt set and its size.
    pub sets: Vec<(String, usize)>,
    /// Calibration percentile of the compared gates.
    pub p_dyn: f64,
    /// The probes trained for probe gates.
    pub probes: Vec<ProbeSummary>,
    /// One part per guardrail.
    pub guards: Vec<GuardReport>,
    /// `report.md`'s text.
    #[serde(skip)]
    pub markdown: String,
}

fn gate_label(g: &Gate) -> String {
    match *g {
        Gate::Paper { .. } => "paper ρ".into(),
        Gate::Window { width, .. } => format!("window {width}"),
        Gate::Cusum { drift, .. } => format!("CUSUM drift {drift}"),
    }
}

fn probe_label(input: ProbeInput, g: &Gate) -> String {
    match *g {
        Gate::Window { width, .. } => format!("probe {input} max-rolling-mean {width}"),
        _ => format!("probe {input} mean"),
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Evaluates `guards` (read from `guard_paths`, in order) on the suite of `cfg` and writes the
/// report files into `cfg.out`. Options and outputs are checked first ([`GateReportConfig::check`]);
/// all guardrails must share one SAE and hook point. `progress(name, done, total)` follows the
/// model passes.
pub fn evaluate_gates(
    lm: &LoadedModel,
    guards: &[Guardrail],
    guard_paths: &[PathBuf],
    cfg: &GateReportConfig,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<GateReport> {
    cfg.check(guard_paths)?;
    let Some(first) = guards.first() else {
        return Err(Error::Invalid(
            "dsg eval gate needs at least one --guard".into(),
        ));
    };
    let hook = first.file().hook_point;
    if guards
        .iter()
        .any(|g| g.file().hook_point != hook || g.file().sae.sha256 != first.file().sae.sha256)
    {
        return Err(Error::Mismatch(
            "all --guard files must use the same SAE at the same hook point".into(),
        ));
    }
    // The suite's prompts carry no evidence marks: scoring a user-text gate on every token would
    // apply its threshold to tokens it was not calibrated on.
    if let Some((_, path)) = guards
        .iter()
        .zip(guard_paths)
        .find(|(g, _)| g.file().evidence == Evidence::UserText)
    {
        return Err(Error::Unsupported(format!(
            "guardrail {} counts user text only; dsg eval gate scores every token of its prompts \
             (evaluate it with dsg forgetting hazard, which counts what the user wrote)",
            path.display()
        )));
    }
    let label_sets = FeatureLabels::read_all(&cfg.labels)?;
    let labels = labels_for_guards(&label_sets, guards)?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let feature_sets: Vec<Vec<u32>> = guards.iter().map(|g| g.file().feature_ids()).collect();
    let mut probes = Vec::new();
    let (activity, logits) = match &cfg.from_activity {
        Some(dir) => (load_activity(dir, guard_paths, &feature_sets)?, Vec::new()),
        None => {
            let suite = build_suite(&lm.tokenizer, &cfg.suite)?;
            // Each guardrail holds the SAE it was loaded with (`--guard-sae` or its recorded path).
            let sae = first.sae();
            if !cfg.probes.is_empty() {
                probes = train_probes(lm, sae, hook, cfg, progress)?;
            }
            let sets: Vec<Vec<usize>> = feature_sets
                .iter()
                .map(|f| f.iter().map(|&i| i as usize).collect())
                .collect();
            let req = SignalRequest {
                feature_sets: &sets,
                probes: &probes,
                ..Default::default()
            };
            let (activity, logits) =
                suite.signals(&lm.model, sae, hook, req, cfg.batch, &mut |d, t| {
                    progress("prompts", d, t)
                })?;
            for (a, path) in activity.iter().zip(guard_paths) {
                a.save(&activity_path(&cfg.out, path))?;
            }
            (activity, logits)
        }
    };
    let probe_evals = evaluate_probes(&probes, &logits, cfg)?;
    if cfg.probes.iter().any(|g| matches!(g, Gate::Paper { .. })) {
        for (probe, evals) in probes.iter().zip(probe_evals.chunks(cfg.probes.len())) {
            write_probe_histogram(&cfg.out, probe.input, evals)?;
        }
    }
    let a0 = &activity[0];
    let mut sets = vec![(a0.positives_name.clone(), a0.positives.len())];
    sets.extend(a0.negatives.iter().map(|(n, p)| (n.clone(), p.len())));
    sets.push(("calibration: MMLU selection".into(), a0.calibration.len()));
    sets.extend(a0.variants.iter().map(|(n, p)| (n.clone(), p.len())));
    let mut parts = Vec::new();
    for (((g, act), path), labels) in guards.iter().zip(&activity).zip(guard_paths).zip(&labels) {
        let view = act.eval_activity();
        let own = g.file().gate;
        let mut evals = vec![GateEval::new(
            &format!("{} (as fitted)", gate_label(&own)),
            own,
            view,
            cfg.bootstrap,
            cfg.seed,
        )?];
        for &gate in &cfg.gates {
            evals.push(GateEval::calibrated(
                &format!("{} (MMLU-calibrated)", gate_label(&gate)),
                gate,
                &act.calibration,
                cfg.p_dyn,
                view,
                cfg.bootstrap,
                cfg.seed,
            )?);
        }
        write_histogram(&cfg.out, path, &evals)?;
        evals.extend(probe_evals.iter().cloned());
        let features = g.file().feature_ids();
        let labels = features
            .iter()
            .filter_map(|&i| Some((i, (*labels)?.get(i as usize)?.description.clone())))
            .collect();
        parts.push(GuardReport {
            guard: path.display().to_string(),
            features,
            labels,
            gates: evals,
        });
    }
    let mut md = format!(
        "# Gate evaluation\n\nData: {}. Prompt counts: {}. Compared gates are calibrated at P{} of \
         their scores on the calibration prompts. Intervals: 95% (AUROC: bootstrap, {} resamples; \
         rates: Wilson). Bypass = of the forget prompts caught in plain form, the share missed in \
         the variant.\n{}",
        cfg.data.display(),
        sets.iter()
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        cfg.p_dyn,
        cfg.bootstrap,
        probe_note(&probes)
    );
    for part in &parts {
        md.push_str(&format!(
            "\n## {}\n\n{}\nFalse-positive rates at matched true-positive rates (the threshold \
             that catches that share of the forget prompts; `*`: prompts tied at that threshold catch more than \
             that share):\n\n{}",
            part.guard,
            markdown_table(&part.gates),
            matched_table(&part.gates)
        ));
    }
    let report = GateReport {
        data: cfg.data.display().to_string(),
        sets,
        p_dyn: cfg.p_dyn,
        probes: probes
            .iter()
            .map(|p| ProbeSummary {
                input: p.input,
                training: p.training.clone(),
            })
            .collect(),
        guards: parts,
        markdown: md,
    };
    write(&cfg.out.join("report.md"), &report.markdown)?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Invalid(format!("the report as JSON: {e}")))?;
    write(&cfg.out.join("report.json"), &(json + "\n"))?;
    Ok(report)
}

/// Trains one probe per `cfg.probe_inputs` on the probe training prompts (one model pass).
fn train_probes(
    lm: &LoadedModel,
    sae: &crate::sae::Sae,
    hook: crate::model::HookPoint,
    cfg: &GateReportConfig,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Vec<Probe>> {
    let (pos, neg) = probe_training_prompts(&lm.tokenizer, &cfg.suite, &cfg.probe_train)?;
    let train: Vec<Vec<u32>> = pos.iter().chain(&neg).cloned().collect();
    let req = SignalRequest {
        pooled: &cfg.probe_inputs,
        ..Default::default()
    };
    let pooled = prompt_signals(&lm.model, sae, hook, &train, cfg.batch, req, &mut |d, t| {
        progress("probe training prompts", d, t)
    })?
    .pooled;
    cfg.probe_inputs
        .iter()
        .zip(pooled)
        .map(|(&input, mut vectors)| {
            let negatives = vectors.split_off(pos.len());
            Probe::train(input, &vectors, &negatives, Solver::default())
        })
        .collect()
}

/// Each probe under each pooling, calibrated on the calibration prompts' logits and evaluated.
fn evaluate_probes(
    probes: &[Probe],
    logits: &[SuiteLogits],
    cfg: &GateReportConfig,
) -> Result<Vec<GateEval>> {
    let mut evals = Vec::new();
    for (probe, l) in probes.iter().zip(logits) {
        for gate in &cfg.probes {
            evals.push(GateEval::calibrated(
                &format!("{} (MMLU-calibrated)", probe_label(probe.input, gate)),
                *gate,
                &l.calibration,
                cfg.p_dyn,
                l.eval_activity(),
                cfg.bootstrap,
                cfg.seed,
            )?);
        }
    }
    Ok(evals)
}

fn probe_note(probes: &[Probe]) -> String {
    if probes.is_empty() {
        return String::new();
    }
    let lines: Vec<String> = probes
        .iter()
        .map(|p| {
            let t = &p.training;
            format!(
                "- probe on {}: {} forget vs {} benign training prompts, C = {}, {} Newton \
                 iterations, converged {}, training AUROC {:.4}\n",
                p.input, t.n_pos, t.n_neg, t.c, t.iterations, t.converged, t.train_auroc
            )
        })
        .collect();
    format!(
        "\nProbe gates (logistic regression on the mean-pooled input, position 0 excluded; a \
         threshold is a logit):\n\n{}",
        lines.concat()
    )
}

/// The mean-pooled logit histogram of a probe's forget and benign sets, with its threshold.
fn write_probe_histogram(out: &Path, input: ProbeInput, evals: &[GateEval]) -> Result<()> {
    let Some(mean) = evals.iter().find(|e| matches!(e.gate, Gate::Paper { .. })) else {
        return Ok(());
    };
    let sets: Vec<_> = mean.scores.iter().take(1 + mean.fpr.len()).collect();
    let svg = score_histograms(
        &format!("mean-pooled probe logit by prompt set: {input}"),
        "mean logit of the tokens after BOS",
        &sets,
        &[(format!("τ {}", mean.label), mean.gate.threshold())],
        50,
    )?;
    write(&out.join(format!("probe-{input}.svg")), &svg)
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
                return Err(Error::Mismatch(format!(
                    "{}: activity of features {:?}, but {} selects {:?}",
                    path.display(),
                    a.features,
                    g.display(),
                    f
                )));
            }
            Ok(a)
        })
        .collect()
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
    write(&out.join(format!("rho-{}.svg", stem(guard))), &svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let d = std::env::temp_dir().join(format!("dsg-gate-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config(out: PathBuf) -> GateReportConfig {
        GateReportConfig {
            suite: SuiteConfig {
                forget_file: "bio.json".into(),
                positives_split: crate::data::Split::Heldout,
                forget_subject: "biology".into(),
                mmlu_file: "mmlu.jsonl".into(),
                domain_subjects: vec![],
                benign_text_file: "wiki.txt".into(),
                variants: vec![],
                limit: None,
                calibration_limit: Some(1000),
                n_paragraphs: 300,
                seed: 0,
            },
            data: "data".into(),
            gates: vec![],
            p_dyn: 95.0,
            probes: vec![],
            probe_inputs: vec![],
            probe_train: ProbeTrainConfig {
                benign_text_file: None,
                limit: None,
                n_paragraphs: 0,
            },
            bootstrap: 1000,
            seed: 0,
            batch: 8,
            sae: None,
            from_activity: None,
            labels: vec![],
            out,
            overwrite: Overwrite::Refuse,
        }
    }

    #[test]
    fn report_files_and_inputs_are_protected_and_options_checked() {
        let d = scratch();
        let guard = d.join("guard.json");
        std::fs::write(&guard, "{}").unwrap();
        let guards = vec![guard.clone()];
        assert!(config(d.join("out")).check(&guards).is_ok());
        std::fs::write(d.join("report.md"), "old").unwrap();
        let e = config(d.clone()).check(&guards).unwrap_err().to_string();
        assert!(e.contains("report.md") && e.contains("--force"), "{e}");
        let forced = GateReportConfig {
            overwrite: Overwrite::Force,
            ..config(d.clone())
        };
        assert!(forced.check(&guards).is_ok());
        let e = config(guard.clone())
            .check(&guards)
            .unwrap_err()
            .to_string();
        assert!(e.contains("input"), "{e}");
        let e = GateReportConfig {
            batch: 0,
            ..config(d.join("out"))
        }
        .check(&guards)
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("batch (--batch): 0"), "{e}");
        let e = GateReportConfig {
            p_dyn: 101.0,
            ..config(d.join("out"))
        }
        .check(&guards)
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p_dyn (--p-dyn): 101"), "{e}");
    }
}
