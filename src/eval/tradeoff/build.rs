//! How a point's guardrail or trained model is made, shared by every track's trade-off: the
//! guard-based methods' guardrail files and costs ([`Guards`]), Farrell et al.'s selection, a
//! point's guardrail bound to a model, and a baseline trained (or reused) from a base model with
//! adapters under it. Fits and trainings are timed once and their costs checkpointed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::methods::GuardKind;
use super::Cost;
use crate::eval::track::knowledge::checkpoint;
use crate::eval::track::{FitRelay, Progress};
use crate::guard::fit::{fit_from_stats, run as fit_run};
use crate::guard::select::SelectionRule;
use crate::guard::{
    ClampSpec, FitConfig, FitOutcome, FitRequest, Gate, Guardrail, GuardrailFile, Intervention,
    StatsFiles,
};
use crate::model::{self, AdapterMode, LoadedModel, NoHooks};
use crate::train::bench::{peak_rss_mib, reset_peak_rss};
use crate::train::{train_to_dir, Example, Method, RunOptions, TrainConfig};
use crate::{Error, Result};

/// Runs `fit` once, timed, with the process's peak memory reset before it; the cost is
/// checkpointed as `work/name`, so a resumed run reports the first run's cost.
pub(super) fn timed(work: &Path, name: &str, fit: impl FnOnce() -> Result<()>) -> Result<Cost> {
    checkpoint(work, name, || {
        reset_peak_rss();
        let started = Instant::now();
        fit()?;
        Ok(Cost {
            seconds: started.elapsed().as_secs_f64(),
            peak_mib: peak_rss_mib(),
        })
    })
}

/// The guardrails of the guard-based methods as files, with their fits' costs: DSG as the paper
/// configures it, dsg's fit (also the always-on clamp's features) and Farrell et al.'s static
/// selection.
pub(super) struct Guards {
    /// The paper configuration.
    pub(super) paper: (GuardrailFile, Cost),
    /// dsg's fit.
    pub(super) best: (GuardrailFile, Cost),
    /// Farrell et al.'s selection, from the paper fit's statistics.
    pub(super) farrell: GuardrailFile,
}

impl Guards {
    /// The fitting cost a guard-based method reports.
    pub(super) fn cost(&self, kind: GuardKind) -> Cost {
        match kind {
            GuardKind::DsgPaper => self.paper.1,
            GuardKind::DsgBest | GuardKind::AlwaysOn => self.best.1,
            // Farrell's selection reads the paper fit's statistics: the same pass.
            GuardKind::Static => self.paper.1,
        }
    }
}

/// Farrell et al.'s selection from the statistics beside the paper fit's guardrail at
/// `paper_path`: features firing on < 1% of retain tokens, ranked by forget frequency (SAEBench
/// rounds frequencies to 6 decimals), clamped to −500 on every input.
pub(super) fn farrell_guard(paper: &GuardrailFile, paper_path: &Path) -> Result<GuardrailFile> {
    let (forget, retain) = StatsFiles::beside(paper_path).load()?;
    let mut farrell_cfg =
        FitConfig::paper(paper.model.clone(), paper.sae.clone(), paper.hook_point);
    farrell_cfg.rule = SelectionRule::Frequency {
        retain_threshold: 0.01,
        stat_decimals: Some(6),
    };
    farrell_cfg.clamp = ClampSpec::farrell(500.0);
    farrell_cfg.corpora = (
        forget.features.provenance.corpus.clone(),
        retain.features.provenance.corpus.clone(),
    );
    fit_from_stats(&forget, &retain, &farrell_cfg, None)
}

/// Completes the guards from dsg's fit (`best`, with its cost): fits DSG as the paper configures
/// it by `req` (its own statistics pass, so its cost is what a user of the paper's recipe pays,
/// timed as `work/fit-paper.json`) and Farrell et al.'s selection from that fit's statistics.
pub(super) fn with_paper_fit(
    lm: &LoadedModel,
    req: &FitRequest,
    best: (GuardrailFile, Cost),
    work: &Path,
    progress: &mut Progress,
) -> Result<Guards> {
    let paper_cost = timed(work, "fit-paper.json", || {
        match fit_run(lm, req, Some(&mut FitRelay(progress)))? {
            FitOutcome::Guardrail { .. } => Ok(()),
            FitOutcome::Shard { .. } => Err(Error::Invalid(
                "the paper configuration's fit wrote a shard".into(),
            )),
        }
    })?;
    let paper = GuardrailFile::load(&req.out)?;
    let farrell = farrell_guard(&paper, &req.out)?;
    Ok(Guards {
        paper: (paper, paper_cost),
        best,
        farrell,
    })
}

/// The guardrail of a guard-based point, bound to `lm` and the SAE (its file saved in `work`).
pub(super) fn point_guard(
    lm: &LoadedModel,
    work: &Path,
    sae: &Path,
    guards: &Guards,
    kind: GuardKind,
    intervention: Intervention,
) -> Result<Guardrail> {
    let (file, always_on) = match kind {
        GuardKind::DsgPaper => (&guards.paper.0, false),
        GuardKind::DsgBest => (&guards.best.0, false),
        GuardKind::Static => (&guards.farrell, true),
        GuardKind::AlwaysOn => (&guards.best.0, true),
    };
    let path = work.join(format!("guard-point-{kind:?}.json").to_lowercase());
    file.save(&path)?;
    let g = Guardrail::load(&path, lm, Some(sae))?;
    // A negative threshold fires on every row: the static clamp.
    let g = if always_on {
        g.with_gate(Gate::Paper { tau: -1.0 })?
    } else {
        g
    };
    g.with_intervention(intervention)
}

/// Trains one baseline into `dir` from `model` with the LoRA adapters `under` applied (reused when
/// an earlier run finished it) and loads the result, `under` applied again.
pub(super) fn trained_model(
    model: &Path,
    under: &[PathBuf],
    config: &TrainConfig,
    examples: &(Vec<Example>, Vec<Example>),
    dir: &Path,
    name: &str,
    progress: &mut Progress,
) -> Result<(LoadedModel, Cost)> {
    let is_lora = matches!(config.method, Method::Lora(_));
    let weights = if is_lora {
        dir.join("adapter")
    } else {
        dir.join("model.safetensors")
    };
    let device = candle_core::Device::Cpu;
    let cost = timed(dir, "cost.json", || {
        let mut lm = model::load_adapted(model, None, under, AdapterMode::OnTheFly, &device)?;
        let opts = RunOptions {
            out: dir.to_path_buf(),
            checkpoint_every: 0,
            resume: false,
            force: true,
            base_model: lm.name(),
        };
        train_to_dir(
            &mut lm.model,
            &examples.0,
            &examples.1,
            config.clone(),
            &opts,
            &mut NoHooks,
            &mut |l, total| progress(&format!("train {name}"), l.step + 1, total),
        )
        .map(drop)
    })?;
    if !weights.exists() {
        return Err(Error::missing(
            &weights,
            "trained weights (delete cost.json to retrain)",
        ));
    }
    let lm = if is_lora {
        let adapters: Vec<PathBuf> = under.iter().cloned().chain([weights]).collect();
        model::load_adapted(model, None, &adapters, AdapterMode::OnTheFly, &device)?
    } else {
        model::load_adapted(model, Some(&weights), under, AdapterMode::OnTheFly, &device)?
    };
    Ok((lm, cost))
}
