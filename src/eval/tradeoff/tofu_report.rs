//! Track T's trade-off report: every number (JSON), a table of open-unlearning's TOFU metrics per
//! point, the cost of each baseline against DSG's fit, the goals, and Pareto plots (SVG) of forget
//! ROUGE-L and of forget quality against model utility.

use serde::Serialize;

use super::report::{
    cost_cells, cost_goal, cost_ratios, costs_and_goals_markdown, front_goal, pareto_svg,
    partial_line, CostRatio, ForgetAxis, Goal,
};
use super::tofu::{TofuPoint, REFERENCES};
use crate::eval::track::TrackFiles;
use crate::Result;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct TofuTradeoffReport {
    /// The model.
    pub model: String,
    /// The command that reproduces it.
    pub command: String,
    /// Data, sets and fitted guardrails.
    pub info: serde_json::Value,
    /// Every point, the retain model and the target first.
    pub points: Vec<TofuPoint>,
    /// Training baselines' costs against DSG's.
    pub costs: Vec<CostRatio>,
    /// The goals.
    pub goals: Vec<Goal>,
    /// Points of the sweep not run yet (a report written while the run goes on).
    pub pending: Vec<String>,
    /// Wall-clock seconds of the whole command.
    pub seconds: f64,
}

fn utility(p: &TofuPoint) -> f64 {
    p.row.model_utility.unwrap_or(f64::NAN)
}

/// Forget quality, 0 where there is none (the retain model, its own reference).
fn quality(p: &TofuPoint) -> f64 {
    p.row.forget_quality.unwrap_or(0.0)
}

/// The goals: a DSG point on or beyond every baseline's front, for forget ROUGE-L and for forget
/// quality against model utility; DSG at least 20× cheaper than RMU.
pub fn tofu_goals(points: &[TofuPoint], costs: &[CostRatio]) -> Vec<Goal> {
    let mut out = vec![
        front_goal(
            points,
            "forget ROUGE-L vs model utility",
            &REFERENCES,
            |p| (p.row.forget_rouge_l, utility(p)),
        ),
        front_goal(
            points,
            "forget quality vs model utility",
            &REFERENCES,
            |p| (-quality(p), utility(p)),
        ),
    ];
    out.extend(cost_goal(costs));
    out
}

impl TofuTradeoffReport {
    /// Builds the report of `points`: costs and goals follow from them.
    pub fn new(
        model: String,
        command: String,
        info: serde_json::Value,
        points: Vec<TofuPoint>,
        pending: Vec<String>,
        seconds: f64,
    ) -> TofuTradeoffReport {
        let costs = cost_ratios(&points);
        let goals = tofu_goals(&points, &costs);
        TofuTradeoffReport {
            model,
            command,
            info,
            points,
            costs,
            goals,
            pending,
            seconds,
        }
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Forget–utility trade-off, track tofu ({})\n\nCommand: `{}`\n\nTotal time on this \
             machine: {:.0} s (a rerun reuses `work/`).\n\n",
            self.model, self.command, self.seconds
        );
        md.push_str(&partial_line(&self.pending));
        md.push_str(&format!(
            "Data: `{}`\n\nThe target is the default model fine-tuned (LoRA) on the retain and \
             forget authors' QA pairs; the retain model had the retain authors only (TOFU's \
             reference: forget quality is the KS p-value of a point's forget truth ratios \
             against the retain model's). Every baseline starts from the target and reads the \
             forget authors' QA pairs (TOFU's forget set) and the retain authors'; every point \
             is evaluated on the same sets by open-unlearning's metrics.\n\n",
            serde_json::to_string(&self.info["sets"]).unwrap_or_default()
        ));
        md.push_str(
            "## Table\n\n| method | knob | forget ROUGE-L ↓ | forget prob ↓ | forget truth \
             ratio | forget quality ↑ | model utility ↑ | retain ROUGE-L ↑ | gibberish (forget) ↓ \
             | gated forget / retain | fit (s) | peak MiB |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for p in &self.points {
            let r = &p.row;
            let gated = if p.method.starts_with("DSG") || p.method.contains("clamp") {
                format!(
                    "{:.0}% / {:.0}%",
                    100.0 * r.gated[0].rate,
                    100.0 * r.gated[1].rate
                )
            } else {
                "-".into()
            };
            let (secs, mib) = cost_cells(p.cost);
            let opt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
            md.push_str(&format!(
                "| {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {:.3} | {} | {} | {} | {} |\n",
                p.method,
                p.knob,
                r.forget_rouge_l,
                r.forget_prob,
                r.forget_truth_ratio,
                opt(r.forget_quality),
                opt(r.model_utility),
                r.retain_rouge_l,
                r.forget_gibberish.percent(),
                gated,
                secs,
                mib
            ));
        }
        md.push_str(&costs_and_goals_markdown(&self.costs, &self.goals));
        md.push_str(
            "\nFigures: `pareto-utility.svg` (forget ROUGE-L against model utility), \
             `pareto-quality.svg` (forget quality against model utility); each method's points \
             and its own front, labels are knob settings. Each point's open-unlearning files \
             (`TOFU_EVAL.json`, `TOFU_SUMMARY.json`, every answer) are under `work/eval/<id>/`, \
             not committed.\n",
        );
        md
    }

    /// The report's files.
    pub fn files(&self) -> Result<TrackFiles> {
        Ok(TrackFiles {
            json: crate::eval::track::to_json(self)?,
            markdown: self.markdown(),
            figures: vec![
                (
                    "pareto-utility.svg".into(),
                    pareto_svg(
                        &self.points,
                        "model utility",
                        ForgetAxis {
                            label: "forget ROUGE-L recall",
                            lower_is_better: true,
                        },
                        |p| (utility(p), p.row.forget_rouge_l),
                    )?,
                ),
                (
                    "pareto-quality.svg".into(),
                    pareto_svg(
                        &self.points,
                        "model utility",
                        ForgetAxis {
                            label: "forget quality (KS p-value vs the retain model)",
                            lower_is_better: false,
                        },
                        |p| (utility(p), quality(p)),
                    )?,
                ),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::Rate;
    use crate::eval::track::tofu::TrackRow;
    use crate::eval::tradeoff::Cost;

    fn point(method: &str, knob: &str, rouge: f64, fq: f64, mu: f64, secs: f64) -> TofuPoint {
        TofuPoint {
            method: method.into(),
            knob: knob.into(),
            id: format!("{method}-{knob}"),
            row: TrackRow {
                name: format!("{method} {knob}"),
                forget_rouge_l: rouge,
                forget_prob: 0.5,
                forget_truth_ratio: 0.6,
                forget_quality: (method != "retain model").then_some(fq),
                model_utility: Some(mu),
                retain_rouge_l: 0.9,
                forget_gibberish: Rate::new(0, 40),
                forget_refused: Rate::new(0, 40),
                gated: [
                    Rate::new(0, 40),
                    Rate::new(0, 80),
                    Rate::new(0, 40),
                    Rate::new(0, 40),
                ],
                seconds: 1.0,
            },
            cost: (secs > 0.0).then_some(Cost {
                seconds: secs,
                peak_mib: Some(100.0),
            }),
        }
    }

    #[test]
    fn goals_compare_dsg_with_baselines_only() {
        let points = vec![
            point("retain model", "-", 0.3, 0.0, 0.40, 0.0),
            point("target", "-", 0.96, 0.003, 0.35, 0.0),
            point("DSG (paper)", "clamp:500", 0.10, 0.3, 0.34, 10.0),
            point("RMU", "s=5 α=10", 0.05, 0.5, 0.33, 100.0),
            point("NPO", "β=0.1", 0.20, 0.1, 0.30, 50.0),
        ];
        let report = TofuTradeoffReport::new(
            "m".into(),
            "dsg bench tradeoff tofu".into(),
            serde_json::json!({"sets": {}}),
            points,
            vec![],
            1.0,
        );
        // RMU forgets more at lower utility: not dominating; the retain model (higher utility,
        // lower ROUGE) is a reference and does not count.
        assert!(report.goals[0].met, "{:?}", report.goals[0]);
        assert!(report.goals[1].met);
        // Cost: RMU 10×, NPO is not RMU.
        assert_eq!(report.costs.len(), 2);
        assert!(!report.goals[2].met && report.goals[2].measured.contains("10.0×"));
        let files = report.files().unwrap();
        assert!(files.markdown.contains("| RMU | s=5 α=10 | 0.050 |"));
        assert!(files
            .markdown
            .contains("| retain model | - | 0.300 | 0.500 | 0.600 | – |"));
        for (name, svg) in &files.figures {
            assert!(svg.starts_with("<svg") && svg.contains("NPO"), "{name}");
        }
        assert!(files.figures[1].1.contains("upper right is better"));
    }

    #[test]
    fn a_baseline_better_on_both_axes_dominates() {
        let points = vec![
            point("target", "-", 0.96, 0.003, 0.35, 0.0),
            point("DSG (dsg)", "norm:0.5", 0.10, 0.3, 0.34, 10.0),
            point("GradDiff", "lr=5e-4", 0.05, 0.6, 0.345, 100.0),
        ];
        let goals = tofu_goals(&points, &cost_ratios(&points));
        assert!(!goals[0].met && goals[0].measured.contains("dominated by GradDiff lr=5e-4"));
        assert!(!goals[1].met);
    }
}
