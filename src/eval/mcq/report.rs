//! The `dsg eval mcq` report: accuracy with Wilson 95% intervals, chance level, per-subject rows,
//! the filter's kept counts and how often each guardrail fired; `report.json`, `report.md`,
//! `questions.jsonl` (one line per question, for audits) and, after a filter, `kept.jsonl` (the
//! kept questions' ids, a question list for `--questions`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{FilterOutcome, McqConfig, Orders, QuestionResult};
use crate::eval::metrics::Rate;
use crate::{Error, Result};

/// Accuracy of a set of questions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    /// Subject, or `all`.
    pub subject: String,
    /// `acc` with its Wilson interval.
    pub acc: Rate,
    /// `acc_norm` (cloze only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<Rate>,
    /// Mean of `1 / options`: the expected accuracy of a uniform guess.
    pub chance: f64,
    /// Questions a refusing guardrail declined (counted as wrong in `acc`).
    pub refused: Rate,
}

impl Accuracy {
    fn of<'a>(subject: &str, rs: impl Iterator<Item = &'a QuestionResult> + Clone) -> Accuracy {
        let n = rs.clone().count();
        let norm: Vec<bool> = rs
            .clone()
            .filter_map(|r| r.acc_norm.as_ref().map(|j| j.correct))
            .collect();
        Accuracy {
            subject: subject.to_string(),
            acc: Rate::new(rs.clone().filter(|r| r.acc.correct).count(), n),
            acc_norm: (!norm.is_empty())
                .then(|| Rate::new(norm.iter().filter(|&&c| c).count(), norm.len())),
            chance: rs.clone().map(|r| 1.0 / r.n_choices as f64).sum::<f64>() / n.max(1) as f64,
            refused: Rate::new(rs.filter(|r| r.refused).count(), n),
        }
    }
}

/// The filter's summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterSummary {
    /// `all-orders` or `cyclic`.
    pub orders: String,
    /// Questions answered correctly under every order.
    pub kept: usize,
    /// Questions filtered.
    pub of: usize,
    /// Per subject: (kept, of).
    pub per_subject: BTreeMap<String, (usize, usize)>,
}

/// A guardrail's firing rate over the evaluated questions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardSummary {
    /// The guardrail (its file).
    pub guard: String,
    /// Questions on which it fired on at least one scored row.
    pub fired: Rate,
}

/// Everything `dsg eval mcq` reports.
#[derive(Debug, Clone, Serialize)]
pub struct McqReport {
    /// The model's name.
    pub model: String,
    /// The protocol.
    pub protocol: String,
    /// The MCQ files.
    pub files: Vec<String>,
    /// `selection`, `heldout` or `all`.
    pub split: String,
    /// The topics kept (ARC's keyword rule), if any were asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Whether every guardrail's gate was forced on.
    pub gate_on: bool,
    /// Questions selected before the filter.
    pub selected: usize,
    /// The filter, if one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSummary>,
    /// Pooled accuracy over every evaluated question.
    pub overall: Accuracy,
    /// One row per subject.
    pub per_subject: Vec<Accuracy>,
    /// One row per active guardrail.
    pub guards: Vec<GuardSummary>,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
    /// Per question.
    #[serde(skip)]
    pub questions: Vec<QuestionResult>,
    /// The ids kept by the filter.
    #[serde(skip)]
    pub kept: Option<Vec<String>>,
}

impl McqReport {
    /// The report of `results`; `selected` questions were read, `filter` is what the filter found.
    pub fn new(
        cfg: &McqConfig,
        model: &str,
        guard_names: &[String],
        selected: usize,
        filter: Option<(Orders, Vec<FilterOutcome>)>,
        results: Vec<QuestionResult>,
        seconds: f64,
    ) -> McqReport {
        let mut subjects: BTreeMap<&str, Vec<&QuestionResult>> = BTreeMap::new();
        for r in &results {
            subjects.entry(&r.subject).or_default().push(r);
        }
        let per_subject = subjects
            .iter()
            .map(|(s, rs)| Accuracy::of(s, rs.iter().copied()))
            .collect();
        let guards = guard_names
            .iter()
            .enumerate()
            .map(|(g, name)| GuardSummary {
                guard: name.clone(),
                fired: Rate::new(
                    results
                        .iter()
                        .filter(|r| r.guards.get(g).is_some_and(|d| d.iter().any(|x| x.fired)))
                        .count(),
                    results.len(),
                ),
            })
            .collect();
        let (filter, kept) = match filter {
            Some((orders, outcomes)) => {
                let mut per_subject: BTreeMap<String, (usize, usize)> = BTreeMap::new();
                for o in &outcomes {
                    let e = per_subject.entry(o.subject.clone()).or_default();
                    e.0 += usize::from(o.kept());
                    e.1 += 1;
                }
                let kept: Vec<String> = outcomes
                    .iter()
                    .filter(|o| o.kept())
                    .map(|o| o.id.clone())
                    .collect();
                (
                    Some(FilterSummary {
                        orders: orders.name().into(),
                        kept: kept.len(),
                        of: outcomes.len(),
                        per_subject,
                    }),
                    Some(kept),
                )
            }
            None => (None, None),
        };
        McqReport {
            model: model.into(),
            protocol: cfg.protocol.name().into(),
            files: cfg.files.iter().map(|f| f.display().to_string()).collect(),
            split: format!("{:?}", cfg.split).to_lowercase(),
            topics: cfg.topics.iter().map(|t| t.name().to_string()).collect(),
            gate_on: cfg.gate_on,
            selected,
            filter,
            overall: Accuracy::of("all", results.iter()),
            per_subject,
            guards,
            seconds,
            questions: results,
            kept,
        }
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let pct = |r: &Rate| {
            format!(
                "{:.1} [{:.1}, {:.1}]",
                100.0 * r.rate,
                100.0 * r.lo,
                100.0 * r.hi
            )
        };
        let mut md = format!(
            "# MCQ evaluation: {} protocol, {}\n\nFiles: {} (split {}); {} questions selected",
            self.protocol,
            self.model,
            self.files.join(", "),
            self.split,
            self.selected
        );
        if !self.topics.is_empty() {
            let _ = write!(md, "; topics {}", self.topics.join(", "));
        }
        if let Some(f) = &self.filter {
            let _ = write!(md, "; filter {}: kept {} of {}", f.orders, f.kept, f.of);
        }
        let refusals = self.overall.refused.k > 0;
        let _ = write!(
            md,
            "; {} evaluated in {:.1} s.\n\nAccuracy in %, Wilson 95% interval{}.\n\n| subject | n | acc |{}{} chance |\n|---|---|---|{}{}---|\n",
            self.overall.acc.n,
            self.seconds,
            if refusals { "; a refused question counts as wrong" } else { "" },
            if self.overall.acc_norm.is_some() { " acc_norm |" } else { "" },
            if refusals { " refused |" } else { "" },
            if self.overall.acc_norm.is_some() { "---|" } else { "" },
            if refusals { "---|" } else { "" },
        );
        for a in std::iter::once(&self.overall).chain(&self.per_subject) {
            let norm = a
                .acc_norm
                .as_ref()
                .map(|r| format!(" {} |", pct(r)))
                .unwrap_or_default();
            let refused = if refusals {
                format!(" {} |", pct(&a.refused))
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} |{norm}{refused} {:.1} |",
                a.subject,
                a.acc.n,
                pct(&a.acc),
                100.0 * a.chance
            );
        }
        if let Some(f) = &self.filter {
            md.push_str("\n| subject | kept by the filter | of |\n|---|---|---|\n");
            for (s, (k, n)) in &f.per_subject {
                let _ = writeln!(md, "| {s} | {k} | {n} |");
            }
        }
        if !self.guards.is_empty() {
            md.push_str(if self.gate_on {
                "\n| guardrail (gate forced on) | fired on questions (%) |\n|---|---|\n"
            } else {
                "\n| guardrail | fired on questions (%) |\n|---|---|\n"
            });
            for g in &self.guards {
                let _ = writeln!(md, "| {} | {} |", g.guard, pct(&g.fired));
            }
        }
        md
    }

    /// Writes `report.json`, `report.md`, `questions.jsonl` and (after a filter) `kept.jsonl`
    /// into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let put = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| Error::io(p, e))
        };
        let json = serde_json::to_string_pretty(self).expect("the report serialises");
        put("report.json", json + "\n")?;
        put("report.md", self.markdown())?;
        let lines: String = self
            .questions
            .iter()
            .map(|q| serde_json::to_string(q).expect("a result serialises") + "\n")
            .collect();
        put("questions.jsonl", lines)?;
        if let Some(kept) = &self.kept {
            let lines: String = kept
                .iter()
                .map(|id| serde_json::json!({ "id": id }).to_string() + "\n")
                .collect();
            put("kept.jsonl", lines)?;
        }
        Ok(())
    }
}
