//! Track T's trade-off: every method of [`super::methods`] unlearns TOFU's forget authors from the
//! target (the default model fine-tuned on them, Track T's [`prepare`]), and every point is
//! measured by Track T's harness: open-unlearning's metrics, forget quality against the retain
//! model, the gibberish rate and the gate rates.
//!
//! * DSG as dsg fits it is Track T's guardrail (N and gate chosen on the forget
//!   and retain authors' questions); DSG as the paper configures it is a fresh fit of the same
//!   corpora (N 20, p_ratio 95, the ρ gate at P95 of the retain rows); Farrell
//!   et al.'s static clamp reads the paper fit's statistics.
//! * The training baselines start from the target (its adapter applied) and read TOFU's forget
//!   set (the forget authors' 40 QA pairs, loss on the answer) and the retain authors' QA pairs;
//!   LoRA baselines add a second adapter, RMU retrains the MLP down-projections under the target's
//!   adapter.
//!
//! TOFU's protocol unlearns the forget set itself, so the forget questions are both what every
//! method is fitted or trained on and what it is evaluated on. Every stage is kept under
//! `<out>/work/`, so an interrupted run resumes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::build::{point_guard, timed, trained_model, with_paper_fit, Guards};
use super::methods::{tofu_points, MethodPoint, Recipe, Sweep};
use super::{Cost, OnPoint, Point};
use crate::eval::track::tofu::{
    check, corpus_request, evaluate_cached, examples, fit_guard, prepare, Prepared,
    TofuTrackConfig, TrackRow,
};
use crate::eval::track::{check_out, Progress, Stopwatch};
use crate::guard::FitRequest;
use crate::Result;

/// Everything `dsg bench tradeoff tofu` takes.
#[derive(Debug, Clone)]
pub struct TofuTradeoff {
    /// Track T's options (model, data, SAE, output folder, fine-tuning of the target and the
    /// retain model, evaluation sizes); its interventions are not used.
    pub track: TofuTrackConfig,
    /// Reduced (default) or full sweep.
    pub sweep: Sweep,
}

/// The figure files the track writes besides the reports.
pub const FIGURES: [&str; 2] = ["pareto-utility.svg", "pareto-quality.svg"];

/// One evaluated point: the method, its knob, Track T's row of metrics and the fitting cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TofuPoint {
    /// The method (`target` and `retain model` are the references).
    pub method: String,
    /// Its knob setting.
    pub knob: String,
    /// The point's identifier.
    pub id: String,
    /// Track T's metrics of the point.
    pub row: TrackRow,
    /// Fitting or training cost (none for the references).
    pub cost: Option<Cost>,
}

impl Point for TofuPoint {
    fn method(&self) -> &str {
        &self.method
    }
    fn knob(&self) -> &str {
        &self.knob
    }
    fn cost(&self) -> Option<Cost> {
        self.cost
    }
}

/// The reference points' methods: neither DSG nor baselines.
pub const REFERENCES: [&str; 2] = ["target", "retain model"];

impl TofuTradeoff {
    fn work(&self) -> PathBuf {
        self.track.out.join("work")
    }
}

/// Fits the three guardrails on the target: dsg's (Track T's), the paper configuration's (its own
/// statistics pass, timed) and Farrell et al.'s (from the paper fit's statistics).
fn fit_guards(cfg: &TofuTradeoff, prep: &Prepared, progress: &mut Progress) -> Result<Guards> {
    let work = cfg.work();
    let (forget, retain) = (&prep.forget_rows, &prep.retain_rows);
    let best_cost = timed(&work, "fit-dsg.json", || {
        // A guardrail left by an untimed run would be read back instead of fitted.
        let _ = std::fs::remove_file(work.join("guard.json"));
        fit_guard(&cfg.track, &prep.target, forget, retain, progress).map(drop)
    })?;
    let best = fit_guard(&cfg.track, &prep.target, forget, retain, progress)?;
    let req = FitRequest {
        out: work.join("guard-paper.json"),
        ..corpus_request(&cfg.track, forget, retain)?
    };
    with_paper_fit(&prep.target, &req, (best, best_cost), &work, progress)
}

/// Evaluates one point of the sweep (or reads it back from `work/eval/<id>/`).
fn measure_point(
    cfg: &TofuTradeoff,
    prep: &Prepared,
    guards: &Guards,
    train: &(Vec<crate::train::Example>, Vec<crate::train::Example>),
    point: &MethodPoint,
    progress: &mut Progress,
) -> Result<TofuPoint> {
    let work = cfg.work();
    let name = format!("{} {}", point.method, point.knob);
    let dir = work.join("eval").join(&point.id);
    let mut p = |s: &str, d: usize, t: usize| progress(&format!("{name}: {s}"), d, t);
    let target_adapter = work.join("target/adapter");
    // The model and guardrails a point is evaluated with, and what making them cost.
    let (trained, guard, cost) = match &point.recipe {
        Recipe::Base => (None, None, None),
        Recipe::Guard {
            guard,
            intervention,
        } => {
            let g = point_guard(
                &prep.target,
                &work,
                &cfg.track.sae,
                guards,
                *guard,
                *intervention,
            )?;
            (None, Some(g), Some(guards.cost(*guard)))
        }
        Recipe::Train { config } => {
            let train_dir = work.join("train").join(&point.id);
            let (lm, cost) = trained_model(
                &cfg.track.model,
                std::slice::from_ref(&target_adapter),
                config,
                train,
                &train_dir,
                &name,
                &mut p,
            )?;
            (Some(lm), None, Some(cost))
        }
    };
    let row = if matches!(point.recipe, Recipe::Base) {
        prep.rows[1].clone()
    } else {
        evaluate_cached(
            &name,
            trained.as_ref().unwrap_or(&prep.target),
            guard.as_slice(),
            &prep.sets,
            &prep.opts,
            Some(&prep.reference),
            &dir,
            &mut p,
        )?
    };
    let method = match point.recipe {
        Recipe::Base => "target".to_string(),
        _ => point.method.clone(),
    };
    Ok(TofuPoint {
        method,
        knob: point.knob.clone(),
        id: point.id.clone(),
        row,
        cost,
    })
}

/// Runs the trade-off on Track T and returns every point (the retain model and the target first)
/// with a summary of the data and the fits; the caller writes the report
/// ([`super::tofu_report`]), also after each point through `on_point`.
pub fn run(
    cfg: &TofuTradeoff,
    progress: &mut Progress,
    on_point: &mut OnPoint<TofuPoint>,
) -> Result<(Vec<TofuPoint>, serde_json::Value)> {
    let t = &cfg.track;
    check_out(
        &t.out,
        &FIGURES,
        &[t.data.as_path(), t.sae.as_path(), t.model.as_path()],
        t.overwrite,
    )?;
    check(t)?;
    let mut clock = Stopwatch::new();
    let prep = prepare(t, &mut clock, progress)?;
    let guards = fit_guards(cfg, &prep, progress)?;
    let train = (
        examples(&prep.target, &prep.forget_rows)?,
        examples(&prep.target, &prep.retain_rows)?,
    );
    let layer = guards.best.0.hook_point.layer;
    let info = serde_json::json!({
        "sets": {
            "forget_authors": prep.forget_authors,
            "retain_authors": prep.retain_authors,
            "target_train_examples": prep.train_examples[0],
            "retain_model_train_examples": prep.train_examples[1],
            "baseline_forget_examples": train.0.len(),
            "baseline_retain_examples": train.1.len(),
            "retain_rows_evaluated": prep.opts.sizes.retain,
            "utility_rows_evaluated": t.utility_rows,
            "max_new_tokens": t.max_new_tokens,
        },
        "target_training": t.train,
        "train_runs": prep.train_runs,
        "dsg_features": guards.best.0.feature_ids(),
        "dsg_gate": guards.best.0.gate,
        "dsg_evidence": guards.best.0.evidence,
        "paper_features": guards.paper.0.feature_ids(),
        "paper_gate": guards.paper.0.gate,
        "farrell_features": guards.farrell.feature_ids(),
        "stages": clock.stages(),
    });
    let retain = TofuPoint {
        method: "retain model".into(),
        knob: "-".into(),
        id: "retain".into(),
        row: prep.rows[0].clone(),
        cost: None,
    };
    let points = tofu_points(cfg.sweep, layer);
    let mut results = vec![retain];
    for (k, point) in points.iter().enumerate() {
        results.push(measure_point(cfg, &prep, &guards, &train, point, progress)?);
        let pending: Vec<String> = points[k + 1..]
            .iter()
            .map(|p| format!("{} {}", p.method, p.knob))
            .collect();
        on_point(&results, &info, &pending)?;
    }
    Ok((results, info))
}
