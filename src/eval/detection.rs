//! How well a guardrail's gate tells forget prompts from benign ones, and whether it survives the
//! known bypasses.
//!
//! [`crate::stats::collect::prompt_activity`] runs the model up to the SAE's hook once per prompt (batched, by length) and
//! keeps, for each of several selected feature sets, the per-token activity the gate reads, with
//! the guardrail hook's conventions (absolute position 0 never active, padding dropped). Any gate
//! can then be scored from that activity without another model pass ([`GateEval::new`]):
//! AUROC against each negative set with a bootstrap interval, the true-positive rate at the
//! threshold, false-positive rates, and for each bypass variant of the positives the detection
//! rate and the *bypass rate*: of the positives the gate catches in plain form, the fraction it
//! misses in that variant. Gates are also compared at matched operating points: the false-positive
//! rate on each negative set at the threshold that catches a fixed share of the positives
//! ([`MATCHED_TPRS`]), so guardrails whose calibrated thresholds land at different TPRs compare.

use serde::Serialize;

use super::metrics::{auroc_with_ci, Estimate, Rate};
use crate::guard::calibrate::calibrate;
use crate::guard::gate::TokenSignal;
use crate::guard::Gate;
use crate::{Error, Result};

/// Per-token activity of one prompt set: `[prompt][token]`.
pub type Activity = Vec<Vec<bool>>;

/// The true-positive rates at which [`GateEval::matched`] reports false-positive rates.
pub const MATCHED_TPRS: [f64; 3] = [0.5, 0.7, 0.9];

/// False-positive rates at the threshold that catches `tpr` of the positives.
#[derive(Debug, Clone, Serialize)]
pub struct MatchedPoint {
    /// The share of positives caught (at least this; ties may catch more).
    pub tpr: f64,
    /// The gate score from which prompts count as caught: the `⌈tpr · n⌉`-th highest positive
    /// score (prompts scoring at least this are caught).
    pub score: f64,
    /// The share of positives actually caught at that score (more than `tpr` when positives tie
    /// at it: a gate whose score is 0 on most prompts cannot catch 90% without catching all).
    pub caught: Rate,
    /// The false-positive rate on each negative set at that score.
    pub fpr: Vec<(String, Rate)>,
}

/// [`MatchedPoint`]s of `positives` against `negatives` at each of [`MATCHED_TPRS`].
pub fn matched_points(positives: &[f64], negatives: &[ScoreSet]) -> Vec<MatchedPoint> {
    let mut sorted = positives.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    if sorted.is_empty() {
        return Vec::new();
    }
    MATCHED_TPRS
        .iter()
        .map(|&tpr| {
            let k = ((tpr * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let score = sorted[k - 1];
            let caught = Rate::new(sorted.iter().filter(|&&x| x >= score).count(), sorted.len());
            let fpr = negatives
                .iter()
                .map(|neg| {
                    let hits = neg.scores.iter().filter(|&&x| x >= score).count();
                    (neg.name.clone(), Rate::new(hits, neg.scores.len()))
                })
                .collect();
            MatchedPoint {
                tpr,
                score,
                caught,
                fpr,
            }
        })
        .collect()
}

/// A named set of gate scores.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreSet {
    /// What the prompts are.
    pub name: String,
    /// One score per prompt.
    pub scores: Vec<f64>,
}

impl ScoreSet {
    /// `gate`'s scores on each prompt's token signal (activity or probe logits).
    pub fn new<S: TokenSignal>(name: &str, gate: &Gate, signal: &[Vec<S>]) -> ScoreSet {
        ScoreSet {
            name: name.to_string(),
            scores: signal.iter().map(|a| gate.score(a)).collect(),
        }
    }
}

/// The token signal a gate is evaluated on (SAE activity by default, or probe logits):
/// positives, negatives and bypass variants of the positives (each aligned with `positives`,
/// prompt for prompt).
#[derive(Debug, Clone, Copy)]
pub struct EvalActivity<'a, S = bool> {
    /// Forget prompts (name, signal).
    pub positives: (&'a str, &'a [Vec<S>]),
    /// Benign prompt sets.
    pub negatives: &'a [(String, Vec<Vec<S>>)],
    /// Rewritten positives.
    pub variants: &'a [(String, Vec<Vec<S>>)],
}

/// A bypass variant's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct BypassResult {
    /// The variant's name, as given in [`EvalActivity::variants`].
    pub variant: String,
    /// Fraction of all positives detected in this variant.
    pub detected: Rate,
    /// Of the positives detected in plain form, the fraction missed in this variant.
    pub bypassed: Rate,
}

/// One gate's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct GateEval {
    /// Label of the gate (kind, parameters, where its threshold came from).
    pub label: String,
    /// The gate with its threshold.
    pub gate: Gate,
    /// AUROC of the positives against each negative set.
    pub auroc: Vec<(String, Estimate)>,
    /// True-positive rate at the threshold.
    pub tpr: Rate,
    /// False-positive rate on each negative set.
    pub fpr: Vec<(String, Rate)>,
    /// Bypass variants.
    pub bypass: Vec<BypassResult>,
    /// False-positive rates at matched true-positive rates ([`MATCHED_TPRS`]).
    pub matched: Vec<MatchedPoint>,
    /// Score sets (positives, negatives, variants) for histograms.
    #[serde(skip)]
    pub scores: Vec<ScoreSet>,
}

impl GateEval {
    /// Evaluates `gate` (with its threshold set) on `data`; AUROC intervals use `bootstrap`
    /// resamples seeded with `seed`.
    pub fn new<S: TokenSignal>(
        label: &str,
        gate: Gate,
        data: EvalActivity<S>,
        bootstrap: usize,
        seed: u64,
    ) -> Result<GateEval> {
        gate.validate()?;
        let n_pos = data.positives.1.len();
        if let Some((name, _)) = data.variants.iter().find(|(_, a)| a.len() != n_pos) {
            return Err(Error::Invalid(format!(
                "variant {name} has a different number of prompts than the positives ({n_pos})"
            )));
        }
        let threshold = gate.threshold();
        let pos = ScoreSet::new(data.positives.0, &gate, data.positives.1);
        let mut scores = vec![pos.clone()];
        let mut auroc = Vec::new();
        let mut fpr = Vec::new();
        for (name, activity) in data.negatives {
            let neg = ScoreSet::new(name, &gate, activity);
            auroc.push((
                name.clone(),
                auroc_with_ci(&pos.scores, &neg.scores, bootstrap, seed)?,
            ));
            fpr.push((name.clone(), Rate::above(&neg.scores, threshold)));
            scores.push(neg);
        }
        let matched = matched_points(&pos.scores, &scores[1..]);
        let caught: Vec<bool> = pos.scores.iter().map(|&s| s > threshold).collect();
        let mut bypass = Vec::new();
        for (name, activity) in data.variants {
            let v = ScoreSet::new(name, &gate, activity);
            let missed = caught
                .iter()
                .zip(&v.scores)
                .filter(|(&c, &s)| c && s <= threshold)
                .count();
            bypass.push(BypassResult {
                variant: name.clone(),
                detected: Rate::above(&v.scores, threshold),
                bypassed: Rate::new(missed, caught.iter().filter(|&&c| c).count()),
            });
            scores.push(v);
        }
        Ok(GateEval {
            label: label.to_string(),
            gate,
            auroc,
            tpr: Rate::above(&pos.scores, threshold),
            fpr,
            bypass,
            matched,
            scores,
        })
    }

    /// Calibrates `gate` at `p_dyn` on the `calibration` prompts' signal, then evaluates it.
    pub fn calibrated<S: TokenSignal>(
        label: &str,
        gate: Gate,
        calibration: &[Vec<S>],
        p_dyn: f64,
        data: EvalActivity<S>,
        bootstrap: usize,
        seed: u64,
    ) -> Result<GateEval> {
        let gate = calibrate(gate, calibration, p_dyn)?.gate;
        GateEval::new(label, gate, data, bootstrap, seed)
    }
}

/// A Markdown table of several gates' results (columns from the first one's sets): threshold,
/// AUROC per negative set, TPR, FPR per negative set, bypass rate per variant; 95% intervals in
/// brackets.
pub fn markdown_table(evals: &[GateEval]) -> String {
    let Some(first) = evals.first() else {
        return String::new();
    };
    let mut head = vec!["gate".to_string(), "threshold".to_string()];
    head.extend(first.auroc.iter().map(|(n, _)| format!("AUROC vs {n}")));
    head.push("TPR".into());
    head.extend(first.fpr.iter().map(|(n, _)| format!("FPR {n}")));
    head.extend(first.bypass.iter().map(|b| format!("bypass {}", b.variant)));
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for e in evals {
        let mut cells = vec![e.label.clone(), format!("{:.4}", e.gate.threshold())];
        cells.extend(
            e.auroc
                .iter()
                .map(|(_, a)| format!("{:.3} [{:.3}, {:.3}]", a.value, a.lo, a.hi)),
        );
        cells.push(e.tpr.percent());
        cells.extend(e.fpr.iter().map(|(_, r)| r.percent()));
        cells.extend(e.bypass.iter().map(|b| b.bypassed.percent()));
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// A Markdown table of several gates' false-positive rates at the matched true-positive rates
/// (columns from the first one's negative sets); a rate is marked `*` where ties caught more than
/// the target share of positives (by over one point).
pub fn matched_table(evals: &[GateEval]) -> String {
    let Some(first) = evals.first() else {
        return String::new();
    };
    let mut head = vec!["gate".to_string()];
    for p in &first.matched {
        head.extend(
            p.fpr
                .iter()
                .map(|(n, _)| format!("FPR {n} @ TPR {:.0}%", 100.0 * p.tpr)),
        );
    }
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for e in evals {
        let mut cells = vec![e.label.clone()];
        for p in &e.matched {
            let mark = if p.caught.rate > p.tpr + 0.01 {
                " *"
            } else {
                ""
            };
            cells.extend(p.fpr.iter().map(|(_, r)| format!("{}{mark}", r.percent())));
        }
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_points_by_hand() {
        // Positives 0.9 0.8 0.7 0.6 0.5 0.4 0.3 0.2 0.1 0.0; TPR 50% → score 0.5, 70% → 0.3,
        // 90% → 0.1. Negatives: 0.55, 0.3, 0.1, 0.05.
        let pos: Vec<f64> = (0..10).map(|i| 0.9 - 0.1 * i as f64).collect();
        let neg = ScoreSet {
            name: "neg".into(),
            scores: vec![0.55, 0.3, 0.1, 0.05],
        };
        let m = matched_points(&pos, std::slice::from_ref(&neg));
        let got: Vec<(f64, usize)> = m.iter().map(|p| (p.score, p.fpr[0].1.k)).collect();
        assert_eq!(m.len(), MATCHED_TPRS.len());
        for ((score, k), (want_score, want_k)) in got.iter().zip([(0.5, 1), (0.3, 2), (0.1, 3)]) {
            assert!((score - want_score).abs() < 1e-9, "{got:?}");
            assert_eq!(*k, want_k, "{got:?}");
        }
        assert_eq!(m[0].fpr[0].1.n, 4);
        assert!(m.iter().all(|p| (p.caught.rate - p.tpr).abs() < 1e-9));
        // Nine positives tied at 0: catching 50% means catching all of them.
        let tied = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let m = matched_points(&tied, std::slice::from_ref(&neg));
        assert_eq!((m[0].score, m[0].caught.k), (0.0, 10));
        assert!(matched_points(&[], &[neg]).is_empty());
    }

    fn row(active: usize, len: usize) -> Vec<bool> {
        (0..len).map(|t| t < active).collect()
    }

    #[test]
    fn rates_and_bypass_by_hand() {
        // ρ of positives: 0.5, 0.4, 0.1; of negatives: 0.0, 0.2; τ = 0.3.
        let pos = vec![row(5, 10), row(4, 10), row(1, 10)];
        let negatives = vec![("neg".to_string(), vec![row(0, 10), row(2, 10)])];
        // Padding the first to 4x its length dilutes it to 5/40 = 0.125, below τ.
        let padded = vec![row(5, 40), row(4, 10), row(1, 40)];
        let variants = vec![("pad".to_string(), padded)];
        let data = EvalActivity {
            positives: ("pos", &pos),
            negatives: &negatives,
            variants: &variants,
        };
        let e = GateEval::new("paper", Gate::Paper { tau: 0.3 }, data, 0, 0).unwrap();
        assert_eq!((e.tpr.k, e.tpr.n), (2, 3));
        assert_eq!((e.fpr[0].1.k, e.fpr[0].1.n), (0, 2));
        // Pairs: 0.1 loses to 0.2, the other five pairs are won.
        assert!((e.auroc[0].1.value - 5.0 / 6.0).abs() < 1e-12);
        let b = &e.bypass[0];
        assert_eq!((b.detected.k, b.detected.n), (1, 3));
        assert_eq!((b.bypassed.k, b.bypassed.n), (1, 2));
        // A window gate of width 10 sees the dense stretch whatever the padding.
        let w = GateEval::new(
            "w",
            Gate::Window {
                width: 10,
                tau: 0.3,
            },
            data,
            0,
            0,
        )
        .unwrap();
        assert_eq!(w.bypass[0].bypassed.k, 0);
        let table = markdown_table(&[e, w]);
        assert_eq!(table.lines().count(), 4);
        assert!(table.contains("| paper | 0.3000 | 0.833 [0.833, 0.833] | 66.7% "));
        assert!(table.contains("| 50.0% [9.5, 90.5] (1/2) |"));
    }

    #[test]
    fn calibration_sets_the_threshold_at_the_percentile() {
        let cal: Vec<Vec<bool>> = (0..=10).map(|k| row(k, 10)).collect();
        let pos = vec![row(10, 10)];
        let negatives = vec![("neg".to_string(), vec![row(0, 10)])];
        let data = EvalActivity {
            positives: ("pos", &pos),
            negatives: &negatives,
            variants: &[],
        };
        let e =
            GateEval::calibrated("p", Gate::Paper { tau: 0.0 }, &cal, 90.0, data, 0, 0).unwrap();
        assert!((e.gate.threshold() - 0.9).abs() < 1e-12);
        assert_eq!(e.tpr.k, 1);
    }
}
