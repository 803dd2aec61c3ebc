//! `dsg bench tradeoff`: DSG against the unlearning baselines on one track, with one harness.
//!
//! Every method of [`methods`] (DSG as the paper configures it and as dsg fits it, Farrell et
//! al.'s static clamp, an always-on clamp, RMU, gradient ascent, GradDiff, NPO) is fitted or
//! trained on the same data, swept over its main knob, and evaluated by the same code; [`report`]
//! writes the numbers (JSON), a table shaped like the paper's Table 1, Pareto plots of forget
//! against utility and each method's fitting cost.
//!
//! * `build` (private): how a point's guardrail or trained model is made, for every track.
//! * [`knowledge`]: Track K, ARC-Easy life science (what SmolLM2 knows).
//! * [`tofu`]: Track T, TOFU's forget authors (what the fine-tuned target was taught).

mod build;
pub mod knowledge;
pub mod methods;
pub mod report;
pub mod tofu;
pub mod tofu_report;

use serde::{Deserialize, Serialize};

use crate::eval::metrics::Rate;

/// What fitting or training a method cost: wall time and the process's peak resident memory
/// while it ran.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Peak resident memory, MiB (absent where the platform cannot say).
    pub peak_mib: Option<f64>,
}

/// One evaluated point of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    /// The method.
    pub method: String,
    /// Its knob setting.
    pub knob: String,
    /// The point's identifier.
    pub id: String,
    /// Accuracy on held-out forget questions the base model knows (lower: more forgotten).
    pub forget: Rate,
    /// Accuracy on held-out retain questions the base model knows.
    pub retain: Rate,
    /// Accuracy on held-out MMLU outside the forget domain.
    pub mmlu: Rate,
    /// For guardrails: forget questions the gate fired on.
    pub gated_forget: Option<Rate>,
    /// For guardrails: retain questions the gate fired on.
    pub gated_retain: Option<Rate>,
    /// Degenerate free answers to forget stems.
    pub gibberish: Rate,
    /// Mean next-token KL to the base model on WikiText-2 test, nats.
    pub kl: f64,
    /// WikiText-2 perplexity, base and this point.
    pub perplexity: (f64, f64),
    /// Fitting or training cost (none for the base model).
    pub cost: Option<Cost>,
    /// Seconds this point's evaluation took.
    pub eval_seconds: f64,
    /// The free answers.
    pub samples: Vec<serde_json::Value>,
}

/// What the reports read of any track's point: its method, knob and fitting cost.
pub trait Point {
    /// The method (`DSG (paper)`, `RMU`, …).
    fn method(&self) -> &str;
    /// The knob setting.
    fn knob(&self) -> &str;
    /// Fitting or training cost (none for reference models).
    fn cost(&self) -> Option<Cost>;
    /// `method knob`, as tables and goals name the point.
    fn label(&self) -> String {
        format!("{} {}", self.method(), self.knob())
    }
}

impl Point for PointResult {
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

/// Called after each finished point with the points so far, the data summary and the points still
/// to run, so that a long run leaves a readable report at every stage.
pub type OnPoint<'a, P> = dyn FnMut(&[P], &serde_json::Value, &[String]) -> crate::Result<()> + 'a;

/// Whether `a` dominates `b` on (forget ↓, utility ↑): no worse on both, better on one.
pub fn dominates(a: (f64, f64), b: (f64, f64)) -> bool {
    let (fa, ua) = a;
    let (fb, ub) = b;
    fa <= fb && ua >= ub && (fa < fb || ua > ub)
}

/// Indices of the points no other point dominates (forget ↓, utility ↑), sorted by utility.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| !points.iter().any(|&p| dominates(p, points[i])))
        .collect();
    front.sort_by(|&a, &b| points[a].1.total_cmp(&points[b].1));
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_keeps_undominated_points() {
        // (forget, utility): the second dominates the first; the third trades off.
        let pts = [
            (0.9, 0.9),
            (0.8, 0.95),
            (0.3, 0.5),
            (0.8, 0.95),
            (0.95, 0.99),
        ];
        assert!(dominates(pts[1], pts[0]));
        assert!(!dominates(pts[1], pts[3]), "equal points do not dominate");
        assert!(!dominates(pts[2], pts[1]) && !dominates(pts[1], pts[2]));
        assert_eq!(pareto_front(&pts), vec![2, 1, 3, 4]);
    }
}
