//! The track's report: every number as JSON, tables as Markdown, accuracy bars as SVG, and the
//! goals of the issue each with its measured value.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::evaluate::{FreeAnswers, SetResult};
use super::fit::FitSummary;
use super::measure::Measurement;
use crate::eval::metrics::Rate;
use crate::eval::quality::KlReport;
use crate::{Error, Result};

/// One goal of the issue and what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// The goal.
    pub goal: String,
    /// The measured value, in words.
    pub measured: String,
    /// Whether it is met.
    pub met: bool,
}

/// Everything `dsg forgetting knowledge` reports.
#[derive(Debug, Clone, Serialize)]
pub struct KnowledgeReport {
    /// The model.
    pub model: String,
    /// The command that reproduces the report.
    pub command: String,
    /// What the base model knows, and the cluster chosen.
    pub measurement: Measurement,
    /// The guardrail's fit.
    pub fit: FitSummary,
    /// The selected features.
    pub features: Vec<u32>,
    /// The gate, with its threshold.
    pub gate: String,
    /// AUROC of the gate's score, held-out known forget against known retain questions.
    pub detection_auroc: f64,
    /// Held-out forget questions the base model knows, held-out retain ones, and MMLU outside
    /// the cluster.
    pub sets: Vec<SetResult>,
    /// Free answers (samples in `samples.jsonl`).
    pub free_answers: Vec<FreeAnswers>,
    /// Next-token KL to the base model on WikiText, per clamping intervention.
    pub wikitext_kl: Vec<(String, KlReport)>,
    /// The goals.
    pub goals: Vec<Goal>,
    /// Wall time per stage, seconds.
    pub seconds: Vec<(String, f64)>,
}

fn pct(r: &Rate) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        100.0 * r.rate,
        100.0 * r.lo,
        100.0 * r.hi
    )
}

impl KnowledgeReport {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Track K: forgetting knowledge the model has ({})\n\nCommand: `{}`\n\n",
            self.model, self.command
        );
        md.push_str("## What the base model knows (selection split)\n\n");
        md.push_str("| protocol | MMLU all (n, acc %) | MMLU biology/medicine pooled | chance |\n|---|---|---|---|\n");
        for ((p, rows), (_, bio)) in self.measurement.mmlu.iter().zip(&self.measurement.mmlu_bio) {
            let _ = writeln!(
                md,
                "| {p} | {} ({}) | {} ({}) | {:.1} |",
                pct(&rows[0].acc),
                rows[0].acc.n,
                pct(&bio.acc),
                bio.acc.n,
                100.0 * rows[0].chance
            );
        }
        md.push_str("\nARC-Easy, cloze, by topic (known = right under `acc` and `acc_norm`):\n\n| split | topic | n | acc | acc_norm | known | chance |\n|---|---|---|---|---|---|---|\n");
        for (split, rows) in [
            ("selection", &self.measurement.arc_selection),
            ("heldout", &self.measurement.arc_heldout),
        ] {
            for a in rows {
                let _ = writeln!(
                    md,
                    "| {split} | {} | {} | {} | {} | {} | {:.1} |",
                    a.subject,
                    a.acc.n,
                    pct(&a.acc),
                    a.acc_norm.as_ref().map(pct).unwrap_or_default(),
                    pct(&a.known),
                    100.0 * a.chance
                );
            }
        }
        let _ = write!(
            md,
            "\nCluster: **{}**. {}\n\nPer-subject MMLU tables for each protocol are in report.json (`measurement.mmlu`).\n\n",
            self.measurement.cluster.name, self.measurement.cluster.why
        );
        let _ = write!(
            md,
            "## The guardrail\n\nFitted on {} selection-split forget questions against {} retain questions in {:.0} s; {} features {:?}; gate {}.\n\n",
            self.fit.forget_questions,
            self.fit.retain_questions,
            self.fit.seconds,
            self.features.len(),
            self.features,
            self.gate
        );
        let _ = write!(
            md,
            "Gate score AUROC, held-out known forget vs known retain questions: {:.3}. The (N, p_ratio, gate) sweep on the selection split is in report.json (`fit.sweep`).\n\n",
            self.detection_auroc
        );
        md.push_str("## Held-out accuracy (cloze), % with Wilson 95% intervals\n\n| set | n | gated | intervention | acc | acc_norm | refused |\n|---|---|---|---|---|---|---|\n");
        for s in &self.sets {
            for sc in &s.scored {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    s.name,
                    s.n,
                    pct(&s.gated),
                    sc.intervention,
                    pct(&sc.acc),
                    pct(&sc.acc_norm),
                    pct(&sc.refused)
                );
            }
        }
        md.push_str("\n## Free answers (question stem as a chat message, greedy)\n\n| side | intervention | n | gibberish | refused | gated |\n|---|---|---|---|---|---|\n");
        for f in &self.free_answers {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                f.side,
                f.intervention,
                f.gibberish.n,
                pct(&f.gibberish),
                pct(&f.refused),
                pct(&f.gated)
            );
        }
        md.push_str("\n## Next-token KL to the base model, WikiText-2 test\n\n| intervention | tokens | mean KL (nats) | changed positions | perplexity base → guarded |\n|---|---|---|---|---|\n");
        for (i, k) in &self.wikitext_kl {
            let _ = writeln!(
                md,
                "| {i} | {} | {:.2e} | {:.2}% | {:.2} → {:.2} |",
                k.n_predicted,
                k.mean_kl,
                100.0 * k.changed_fraction,
                k.base_perplexity,
                k.guarded_perplexity
            );
        }
        md.push_str("\n## Goals\n\n| goal | measured | met |\n|---|---|---|\n");
        for g in &self.goals {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                g.goal,
                g.measured,
                if g.met { "yes" } else { "no" }
            );
        }
        md.push_str("\n## Time (2 cores)\n\n| stage | seconds |\n|---|---|\n");
        for (s, t) in &self.seconds {
            let _ = writeln!(md, "| {s} | {t:.0} |");
        }
        md
    }

    /// Accuracy per set and intervention, as grouped bars with Wilson intervals (SVG).
    pub fn svg(&self) -> Result<String> {
        let err =
            |e: &dyn std::fmt::Display| Error::Invalid(format!("drawing the figure failed: {e}"));
        let labels: Vec<String> = self.sets[0]
            .scored
            .iter()
            .map(|s| s.intervention.clone())
            .collect();
        let k = labels.len().max(1) as f64;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(&e))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "Held-out cloze accuracy by intervention",
                    ("sans-serif", 20),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..self.sets.len() as f64, 0f64..1.05f64)
                .map_err(|e| err(&e))?;
            let names: Vec<String> = self.sets.iter().map(|s| s.name.clone()).collect();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(names.len() * 2 + 1)
                .x_label_formatter(&|x| {
                    let i = x.floor() as usize;
                    if (x - x.floor() - 0.5).abs() < 1e-6 {
                        names.get(i).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_desc("accuracy")
                .draw()
                .map_err(|e| err(&e))?;
            let palette = [
                RGBColor(90, 90, 90),
                RGBColor(200, 30, 30),
                RGBColor(30, 90, 200),
                RGBColor(20, 150, 60),
                RGBColor(230, 140, 0),
                RGBColor(120, 60, 170),
            ];
            for (j, label) in labels.iter().enumerate() {
                let color = palette[j % palette.len()];
                let bars: Vec<(f64, f64, f64, f64)> = self
                    .sets
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        s.scored.get(j).map(|sc| {
                            let x0 = i as f64 + 0.1 + 0.8 * j as f64 / k;
                            (x0, sc.acc.rate, sc.acc.lo, sc.acc.hi)
                        })
                    })
                    .collect();
                chart
                    .draw_series(bars.iter().map(|&(x0, y, _, _)| {
                        Rectangle::new([(x0, 0.0), (x0 + 0.8 / k * 0.9, y)], color.filled())
                    }))
                    .map_err(|e| err(&e))?
                    .label(label.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
                chart
                    .draw_series(bars.iter().map(|&(x0, _, lo, hi)| {
                        let xm = x0 + 0.4 / k * 0.9;
                        PathElement::new(vec![(xm, lo), (xm, hi)], BLACK)
                    }))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
            root.present().map_err(|e| err(&e))?;
        }
        Ok(svg)
    }

    /// Writes report.json, report.md, accuracy.svg and samples.jsonl into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let put = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| Error::io(p, e))
        };
        let mut slim = self.clone();
        for f in &mut slim.free_answers {
            f.samples.clear();
        }
        put(
            "report.json",
            serde_json::to_string_pretty(&slim).expect("the report serialises") + "\n",
        )?;
        put("report.md", self.markdown())?;
        put("accuracy.svg", self.svg()?)?;
        let lines: String = self
            .free_answers
            .iter()
            .flat_map(|f| {
                f.samples.iter().map(move |s| {
                    serde_json::json!({ "side": f.side, "intervention": f.intervention, "sample": s })
                        .to_string()
                        + "\n"
                })
            })
            .collect();
        put("samples.jsonl", lines)
    }
}
