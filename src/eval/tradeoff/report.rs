//! The trade-off report: every number (JSON), a table shaped like the paper's Table 1, the cost
//! of each method against DSG's, the goals, and Pareto plots (SVG) of forget accuracy against
//! each utility measure with every point labelled by its knob.

use plotters::prelude::*;
use serde::Serialize;

use super::methods::is_dsg;
use super::{dominates, pareto_front, Cost, Point, PointResult};
use crate::eval::plot::plot_err;
pub use crate::eval::track::knowledge::report::Goal;
use crate::eval::track::TrackFiles;
use crate::Result;

/// A method's cost against DSG's (the paper configuration's fit).
#[derive(Debug, Clone, Serialize)]
pub struct CostRatio {
    /// The method and knob.
    pub point: String,
    /// Its seconds.
    pub seconds: f64,
    /// Its seconds over DSG's.
    pub time_ratio: f64,
    /// Its peak memory over DSG's.
    pub memory_ratio: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct TradeoffReport {
    /// The track (`knowledge`).
    pub track: String,
    /// The model.
    pub model: String,
    /// The command that reproduces it.
    pub command: String,
    /// Data, sets and fitted guardrails.
    pub info: serde_json::Value,
    /// Every point, base first.
    pub points: Vec<PointResult>,
    /// Training baselines' costs against DSG's.
    pub costs: Vec<CostRatio>,
    /// The goals.
    pub goals: Vec<Goal>,
    /// Points of the sweep not run yet (a report written while the run goes on).
    pub pending: Vec<String>,
    /// Wall-clock seconds of the whole command.
    pub seconds: f64,
}

/// A utility measure of a point (higher is better).
type Utility = fn(&PointResult) -> f64;

/// Training costs against the DSG (paper) fit.
pub fn cost_ratios<P: Point>(points: &[P]) -> Vec<CostRatio> {
    let Some(dsg) = points
        .iter()
        .find(|p| p.method() == "DSG (paper)")
        .and_then(|p| p.cost())
    else {
        return Vec::new();
    };
    points
        .iter()
        .filter(|p| !is_dsg(p.method()) && p.method() != "base")
        .filter(|p| !p.method().contains("clamp"))
        .filter_map(|p| {
            p.cost().map(|c| CostRatio {
                point: p.label(),
                seconds: c.seconds,
                time_ratio: c.seconds / dsg.seconds.max(1e-9),
                memory_ratio: c.peak_mib.zip(dsg.peak_mib).map(|(a, b)| a / b),
            })
        })
        .collect()
}

/// The goal "a DSG point on or beyond every baseline's Pareto front" on `(forget ↓, utility ↑)`
/// coordinates `xy`; `name` says what the coordinates are. Points whose method is in `references`
/// (the base model, a retain model) are neither DSG nor baselines.
pub fn front_goal<P: Point>(
    points: &[P],
    name: &str,
    references: &[&str],
    xy: impl Fn(&P) -> (f64, f64),
) -> Goal {
    let baselines: Vec<&P> = points
        .iter()
        .filter(|p| !is_dsg(p.method()) && !references.contains(&p.method()))
        .collect();
    let mut lines = Vec::new();
    let mut any = false;
    for d in points.iter().filter(|p| is_dsg(p.method())) {
        let by: Vec<String> = baselines
            .iter()
            .filter(|b| dominates(xy(b), xy(d)))
            .map(|b| b.label())
            .collect();
        any |= by.is_empty();
        lines.push(if by.is_empty() {
            format!("{}: not dominated", d.label())
        } else {
            format!("{}: dominated by {}", d.label(), by.join(", "))
        });
    }
    Goal {
        goal: format!("a DSG point on or beyond every baseline's Pareto front ({name})"),
        measured: lines.join("; "),
        met: any,
    }
}

/// The goal "DSG at least 20× cheaper than RMU", where RMU was trained.
pub fn cost_goal(costs: &[CostRatio]) -> Option<Goal> {
    let rmu: Vec<&CostRatio> = costs
        .iter()
        .filter(|c| c.point.starts_with("RMU"))
        .collect();
    if rmu.is_empty() {
        return None;
    }
    let min = rmu
        .iter()
        .map(|c| c.time_ratio)
        .fold(f64::INFINITY, f64::min);
    Some(Goal {
        goal: "DSG's fit at least 20× cheaper than RMU's training".into(),
        measured: format!(
            "RMU takes {} DSG's fit time",
            rmu.iter()
                .map(|c| format!("{:.1}× ({})", c.time_ratio, c.point))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        met: min >= 20.0,
    })
}

/// Track K's goals: a DSG point on or beyond every baseline's front (for retain accuracy and for
/// MMLU), and DSG at least 20× cheaper than RMU.
pub fn goals(points: &[PointResult], costs: &[CostRatio]) -> Vec<Goal> {
    let utilities: [(&str, Utility); 2] = [
        ("retain accuracy", |p| p.retain.rate),
        ("MMLU outside the domain", |p| p.mmlu.rate),
    ];
    let mut out: Vec<Goal> = utilities
        .iter()
        .map(|(name, utility)| {
            front_goal(
                points,
                &format!("forget accuracy vs {name}"),
                &["base"],
                |p| (p.forget.rate, utility(p)),
            )
        })
        .collect();
    out.extend(cost_goal(costs));
    out
}

/// The line a partial report opens with, naming the points still to run (empty when none).
pub fn partial_line(pending: &[String]) -> String {
    if pending.is_empty() {
        return String::new();
    }
    format!(
        "**Partial report**: {} point(s) still to run: {}.\n\n",
        pending.len(),
        pending.join(", ")
    )
}

/// A point's fit seconds and peak MiB as table cells (`-` where unknown).
pub fn cost_cells(cost: Option<Cost>) -> (String, String) {
    match cost {
        Some(c) => (
            format!("{:.0}", c.seconds),
            c.peak_mib.map_or("-".into(), |m| format!("{m:.0}")),
        ),
        None => ("-".into(), "-".into()),
    }
}

/// The cost section (each baseline against DSG's fit) and the goals section of a report.
pub fn costs_and_goals_markdown(costs: &[CostRatio], goals: &[Goal]) -> String {
    let mut md = String::from(
        "\n## Cost against DSG's fit (the paper configuration: one statistics pass, selection, \
         calibration)\n\n| point | seconds | × DSG time | × DSG peak memory |\n|---|---|---|---|\n",
    );
    for c in costs {
        md.push_str(&format!(
            "| {} | {:.0} | {:.1} | {} |\n",
            c.point,
            c.seconds,
            c.time_ratio,
            c.memory_ratio.map_or("-".into(), |m| format!("{m:.2}"))
        ));
    }
    md.push_str("\n## Goals\n\n| goal | measured | met |\n|---|---|---|\n");
    for g in goals {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            g.goal,
            g.measured,
            if g.met { "yes" } else { "no" }
        ));
    }
    md
}

fn pct(r: &crate::eval::metrics::Rate) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        100.0 * r.rate,
        100.0 * r.lo,
        100.0 * r.hi
    )
}

impl TradeoffReport {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Forget–utility trade-off, track {} ({})\n\nCommand: `{}`\n\nTotal time on this \
             machine: {:.0} s.\n\n",
            self.track, self.model, self.command, self.seconds
        );
        md.push_str(&partial_line(&self.pending));
        md.push_str(&format!(
            "Data: `{}`\n\n",
            serde_json::to_string(&self.info["sets"]).unwrap_or_default()
        ));
        md.push_str(
            "## Table 1 (accuracy %, Wilson 95% intervals)\n\n| method | knob | forget (known, \
             held-out) ↓ | retain (known, held-out) ↑ | MMLU outside the domain ↑ | gibberish on \
             forget prompts ↓ | KL to base, WikiText (nats) ↓ | gated forget / retain | fit (s) | \
             peak MiB |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for p in &self.points {
            let gated = match (&p.gated_forget, &p.gated_retain) {
                (Some(f), Some(r)) => format!("{:.0}% / {:.0}%", 100.0 * f.rate, 100.0 * r.rate),
                _ => "-".into(),
            };
            let (secs, mib) = cost_cells(p.cost);
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {} |\n",
                p.method,
                p.knob,
                pct(&p.forget),
                pct(&p.retain),
                pct(&p.mmlu),
                pct(&p.gibberish),
                p.kl,
                gated,
                secs,
                mib
            ));
        }
        md.push_str(&costs_and_goals_markdown(&self.costs, &self.goals));
        md.push_str(
            "\nFigures: `pareto-retain.svg`, `pareto-mmlu.svg` (each method's points and its own \
             front; labels are knob settings). Every free answer is in report.json \
             (`points[].samples`).\n",
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
                    "pareto-retain.svg".into(),
                    pareto_svg(
                        &self.points,
                        "retain accuracy (known, held-out)",
                        FORGET_ACCURACY,
                        |p| (p.retain.rate, p.forget.rate),
                    )?,
                ),
                (
                    "pareto-mmlu.svg".into(),
                    pareto_svg(
                        &self.points,
                        "MMLU outside the domain",
                        FORGET_ACCURACY,
                        |p| (p.mmlu.rate, p.forget.rate),
                    )?,
                ),
            ],
        })
    }
}

const COLORS: [RGBColor; 9] = [
    RGBColor(90, 90, 90),
    RGBColor(200, 30, 30),
    RGBColor(240, 110, 60),
    RGBColor(30, 90, 200),
    RGBColor(120, 60, 170),
    RGBColor(20, 150, 60),
    RGBColor(230, 170, 0),
    RGBColor(0, 160, 170),
    RGBColor(160, 90, 40),
];

/// The vertical axis of a Pareto plot: its label, and whether lower is better.
#[derive(Debug, Clone, Copy)]
pub struct ForgetAxis<'a> {
    /// The axis label.
    pub label: &'a str,
    /// Lower is better (forget accuracy, ROUGE); else higher is (forget quality).
    pub lower_is_better: bool,
}

/// Track K's vertical axis.
pub const FORGET_ACCURACY: ForgetAxis<'static> = ForgetAxis {
    label: "forget accuracy (known questions)",
    lower_is_better: true,
};

/// A forget measure (y) against a utility (x, higher is better), `xy` giving (utility, forget) in
/// [0, 1]: one colour per method, each point labelled by its knob, each method's own front as a
/// line.
pub fn pareto_svg<P: Point>(
    points: &[P],
    x_label: &str,
    y: ForgetAxis,
    xy: impl Fn(&P) -> (f64, f64),
) -> Result<String> {
    let mut methods: Vec<&str> = Vec::new();
    for p in points {
        if !methods.contains(&p.method()) {
            methods.push(p.method());
        }
    }
    let xs: Vec<f64> = points.iter().map(|p| xy(p).0).collect();
    let (x_lo, x_hi) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let pad = ((x_hi - x_lo) * 0.08).max(0.02);
    // The front's (forget ↓, utility ↑) coordinates.
    let oriented = |f: f64| if y.lower_is_better { f } else { -f };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let better = if y.lower_is_better { "lower" } else { "upper" };
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("forget vs {x_label} ({better} right is better)"),
                ("sans-serif", 18),
            )
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d((x_lo - pad).max(0.0)..(x_hi + pad).min(1.0), 0f64..1.05f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y.label)
            .draw()
            .map_err(plot_err)?;
        for (m, method) in methods.iter().enumerate() {
            let color = COLORS[m % COLORS.len()];
            let mine: Vec<&P> = points.iter().filter(|p| p.method() == *method).collect();
            let pts: Vec<(f64, f64)> = mine.iter().map(|p| xy(p)).collect();
            let front: Vec<(f64, f64)> = pareto_front(
                &pts.iter()
                    .map(|&(u, f)| (oriented(f), u))
                    .collect::<Vec<_>>(),
            )
            .into_iter()
            .map(|i| pts[i])
            .collect();
            if front.len() > 1 {
                chart
                    .draw_series(LineSeries::new(front, color.stroke_width(1)))
                    .map_err(plot_err)?;
            }
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(plot_err)?
                .label(*method)
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
            chart
                .draw_series(mine.iter().zip(&pts).map(|(p, &xy)| {
                    Text::new(
                        p.knob().to_string(),
                        xy,
                        ("sans-serif", 11).into_font().color(&color),
                    )
                }))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::Rate;
    use crate::eval::tradeoff::Cost;

    fn point(method: &str, knob: &str, forget: usize, retain: usize, secs: f64) -> PointResult {
        PointResult {
            method: method.into(),
            knob: knob.into(),
            id: format!("{method}-{knob}"),
            forget: Rate::new(forget, 100),
            retain: Rate::new(retain, 100),
            mmlu: Rate::new(30, 100),
            gated_forget: None,
            gated_retain: None,
            gibberish: Rate::new(0, 10),
            kl: 0.0,
            perplexity: (10.0, 10.0),
            cost: (secs > 0.0).then_some(Cost {
                seconds: secs,
                peak_mib: Some(100.0),
            }),
            eval_seconds: 1.0,
            samples: Vec::new(),
        }
    }

    #[test]
    fn goals_and_costs_follow_the_points() {
        let points = vec![
            point("base", "-", 100, 100, 0.0),
            point("DSG (paper)", "c=500", 60, 95, 10.0),
            point("RMU", "s=2", 50, 97, 300.0),
            point("NPO", "β=0.1", 70, 90, 100.0),
        ];
        let costs = cost_ratios(&points);
        assert_eq!(costs.len(), 2);
        assert!((costs[0].time_ratio - 30.0).abs() < 1e-12);
        let g = goals(&points, &costs);
        // RMU dominates the DSG point on retain; MMLU is equal for all, so RMU dominates there too.
        assert!(!g[0].met && g[0].measured.contains("dominated by RMU s=2"));
        assert!(!g[1].met);
        assert!(g[2].met, "30× ≥ 20×");
        let report = TradeoffReport {
            track: "knowledge".into(),
            model: "m".into(),
            command: "dsg bench tradeoff knowledge".into(),
            info: serde_json::json!({"sets": {}}),
            points,
            costs,
            goals: g,
            pending: vec!["GA lr=1e-3".into()],
            seconds: 1.0,
        };
        let files = report.files().unwrap();
        assert!(files.markdown.contains("| RMU | s=2 | 50.0 ["));
        assert!(files
            .markdown
            .contains("Partial report**: 1 point(s) still to run: GA lr=1e-3"));
        for (_, svg) in &files.figures {
            assert!(svg.starts_with("<svg") && svg.contains("NPO") && svg.contains("s=2"));
        }
    }
}
