//! The TOFU report: the four sets' results, forget quality and model utility, written as
//! open-unlearning writes them (`TOFU_EVAL.json`: every metric with `agg_value` and
//! `value_by_index`; `TOFU_SUMMARY.json`: the headline aggregates) plus dsg's own `report.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::metrics::{harmonic_mean, ks_2samp, KsResult, Metric, Prob, Score};
use super::set::{SetKind, SetResult};
use crate::{Error, Result};

/// The retain model's truth ratios on the forget set: the reference distribution of forget
/// quality (open-unlearning reads them from the retain model's `TOFU_EVAL.json`,
/// `forget_truth_ratio.value_by_index.*.score`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainReference {
    /// Where they came from (a file, or the report's model name).
    pub source: String,
    /// The truth ratios, in index order.
    pub truth_ratios: Vec<f64>,
}

impl RetainReference {
    /// The forget-set truth ratios of a retain model's report.
    pub fn from_report(report: &TofuReport) -> RetainReference {
        RetainReference {
            source: report.model.clone(),
            truth_ratios: report.forget.truth_ratios(),
        }
    }

    /// Reads them from a `TOFU_EVAL.json`, dsg's or open-unlearning's.
    pub fn read(path: &Path) -> Result<RetainReference> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, "file", "a TOFU_EVAL.json object", e.to_string()))?;
        let what = "forget_truth_ratio.value_by_index (the retain model's forget-set truth ratios)";
        let by_index = v
            .get("forget_truth_ratio")
            .and_then(|m| m.get("value_by_index"))
            .and_then(Value::as_object)
            .ok_or_else(|| Error::missing(path, what))?;
        let mut rows: Vec<(usize, f64)> = Vec::with_capacity(by_index.len());
        for (k, entry) in by_index {
            let field = format!("forget_truth_ratio.value_by_index.{k}.score");
            let index = k
                .parse()
                .map_err(|_| Error::format(path, &field, "an integer index", k.clone()))?;
            let score = entry
                .get("score")
                .and_then(Value::as_f64)
                .ok_or_else(|| Error::format(path, &field, "a number", entry.to_string()))?;
            rows.push((index, score));
        }
        if rows.is_empty() {
            return Err(Error::format(
                path,
                what,
                "at least one truth ratio",
                "none",
            ));
        }
        rows.sort_by_key(|r| r.0);
        Ok(RetainReference {
            source: path.display().to_string(),
            truth_ratios: rows.into_iter().map(|r| r.1).collect(),
        })
    }
}

/// Forget quality: the KS test of the evaluated model's forget-set truth ratios against the
/// retain model's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForgetQuality {
    /// The test (`pvalue` is the forget quality).
    pub ks: KsResult,
    /// The evaluated model's number of truth ratios.
    pub n_model: usize,
    /// The retain model's.
    pub n_retain: usize,
    /// Where the retain model's came from.
    pub retain_source: String,
}

/// A TOFU evaluation of one model (with or without guardrails).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TofuReport {
    /// The model's name.
    pub model: String,
    /// The guardrails' descriptions, in the order applied (empty: unguarded).
    pub guards: Vec<String>,
    /// Greedy answers' length limit.
    pub max_new_tokens: usize,
    /// The forget split.
    pub forget: SetResult,
    /// The retain set.
    pub retain: SetResult,
    /// Real authors.
    pub real_authors: SetResult,
    /// World facts.
    pub world_facts: SetResult,
    /// Forget quality, when a retain model's truth ratios were given.
    pub forget_quality: Option<ForgetQuality>,
    /// Seconds the evaluation took.
    pub seconds: f64,
}

/// The nine aggregates whose harmonic mean is model utility (`model_utility.yaml`).
pub const MODEL_UTILITY_METRICS: [&str; 9] = [
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
];

/// open-unlearning's name of a set's truth-ratio metric.
fn truth_ratio_key(kind: SetKind) -> String {
    match kind {
        SetKind::Forget => "forget_truth_ratio".into(),
        k => format!("{}_Truth_Ratio", k.prefix()),
    }
}

#[derive(Serialize)]
struct ProbList {
    prob: Vec<f64>,
    avg_loss: Vec<f64>,
}

#[derive(Serialize)]
struct RougeValue<'a> {
    rouge1_recall: f64,
    #[serde(rename = "rougeL_f1")]
    rouge_l_f1: f64,
    #[serde(rename = "rougeL_recall")]
    rouge_l_recall: f64,
    input: &'a str,
    ground_truth: &'a str,
    generation: &'a str,
}

fn value<T: Serialize>(m: &Metric<T>) -> Value {
    serde_json::to_value(m).expect("metrics serialise")
}

/// An aggregate, `None` for an empty set.
fn agg(set: &SetResult, f: impl Fn(&SetResult) -> f64) -> Option<f64> {
    (!set.samples.is_empty()).then(|| f(set))
}

fn set_metrics(set: &SetResult, logs: &mut BTreeMap<String, Value>) {
    let p = set.kind.prefix();
    let by_index = |f: &dyn Fn(&super::set::SampleResult) -> Value| -> BTreeMap<usize, Value> {
        set.samples.iter().map(|s| (s.index, f(s))).collect()
    };
    let metric = |agg_value: Option<f64>, values: BTreeMap<usize, Value>| Metric {
        agg_value,
        value_by_index: Some(values),
    };
    let prob = |x: &Prob| json!({"prob": x.prob, "avg_loss": x.avg_loss});
    logs.insert(
        format!("{p}_Q_A_Prob"),
        value(&metric(
            agg(set, SetResult::prob),
            by_index(&|s| prob(&s.answer)),
        )),
    );
    if set.kind.paraphrased() {
        let m = metric(
            agg(set, |s| s.paraphrased_prob().unwrap_or(f64::NAN)),
            by_index(&|s| s.paraphrased.as_ref().map(prob).unwrap_or(Value::Null)),
        );
        logs.insert(format!("{p}_Q_A_PARA_Prob"), value(&m));
    }
    let pert = metric(
        agg(set, SetResult::perturbed_prob),
        by_index(&|s| {
            json!(ProbList {
                prob: s.perturbed.iter().map(|x| x.prob).collect(),
                avg_loss: s.perturbed.iter().map(|x| x.avg_loss).collect(),
            })
        }),
    );
    logs.insert(format!("{p}_Q_A_PERT_Prob"), value(&pert));
    let tr = metric(
        agg(set, SetResult::truth_ratio),
        by_index(&|s| {
            json!(Score {
                score: s.truth_ratio
            })
        }),
    );
    logs.insert(truth_ratio_key(set.kind), value(&tr));
    if !set.kind.paraphrased() {
        let m = metric(
            agg(set, SetResult::normalised_prob),
            by_index(&|s| json!({ "prob": s.normalised })),
        );
        logs.insert(format!("{p}_Q_A_Prob_normalised"), value(&m));
    }
    let rouge = metric(
        agg(set, SetResult::rouge_l_recall),
        by_index(&|s| {
            let g = &s.generation;
            json!(RougeValue {
                rouge1_recall: g.rouge.rouge1.recall,
                rouge_l_f1: g.rouge.rouge_l.fmeasure,
                rouge_l_recall: g.rouge.rouge_l.recall,
                input: &g.input,
                ground_truth: &s.answer_text,
                generation: &g.text,
            })
        }),
    );
    logs.insert(format!("{p}_Q_A_ROUGE"), value(&rouge));
}

impl TofuReport {
    /// The four sets, forget first.
    pub fn sets(&self) -> [&SetResult; 4] {
        [
            &self.forget,
            &self.retain,
            &self.real_authors,
            &self.world_facts,
        ]
    }

    /// Computes forget quality against `retain` (the retain model's forget-set truth ratios).
    pub fn set_forget_quality(&mut self, retain: &RetainReference) -> Result<()> {
        let mine = self.forget.truth_ratios();
        let ks = ks_2samp(&mine, &retain.truth_ratios)?;
        self.forget_quality = Some(ForgetQuality {
            ks,
            n_model: mine.len(),
            n_retain: retain.truth_ratios.len(),
            retain_source: retain.source.clone(),
        });
        Ok(())
    }

    /// Every metric in open-unlearning's `TOFU_EVAL.json` shape, by name (sorted, as it saves
    /// them), plus dsg's `forget_gibberish_rate` and `forget_refusal_rate`.
    pub fn eval_logs(&self) -> BTreeMap<String, Value> {
        let mut logs = BTreeMap::new();
        for set in self.sets() {
            set_metrics(set, &mut logs);
        }
        let fq = self.forget_quality.as_ref().map(|f| f.ks.pvalue);
        logs.insert("forget_quality".into(), value(&Metric::<()>::aggregate(fq)));
        logs.insert(
            "model_utility".into(),
            value(&Metric::<()>::aggregate(self.model_utility())),
        );
        let gib = self.forget.gibberish();
        let gib_values: BTreeMap<usize, Value> = self
            .forget
            .samples
            .iter()
            .map(|s| {
                let d = s.generation.degenerate.as_ref();
                let v = json!({
                    "degenerate": d.map(|d| d.degenerate),
                    "reason": d.and_then(|d| d.reason),
                    "refused": s.generation.refused,
                });
                (s.index, v)
            })
            .collect();
        let gib_metric = Metric {
            agg_value: (gib.n > 0).then_some(gib.rate),
            value_by_index: Some(gib_values),
        };
        logs.insert("forget_gibberish_rate".into(), value(&gib_metric));
        let refusals = self.forget.refusals();
        let refusal_rate = (refusals.n > 0).then_some(refusals.rate);
        logs.insert(
            "forget_refusal_rate".into(),
            value(&Metric::<()>::aggregate(refusal_rate)),
        );
        logs
    }

    /// The harmonic mean of [`MODEL_UTILITY_METRICS`]; `None` when a utility set is empty.
    pub fn model_utility(&self) -> Option<f64> {
        let parts = self.model_utility_parts()?;
        Some(harmonic_mean(
            &parts.iter().map(|p| p.1).collect::<Vec<_>>(),
        ))
    }

    /// The nine aggregates model utility is the harmonic mean of, by name.
    pub fn model_utility_parts(&self) -> Option<Vec<(&'static str, f64)>> {
        let (r, ra, wf) = (&self.retain, &self.real_authors, &self.world_facts);
        let values = [
            agg(r, SetResult::prob)?,
            agg(r, SetResult::rouge_l_recall)?,
            agg(r, SetResult::truth_ratio)?,
            agg(ra, SetResult::normalised_prob)?,
            agg(ra, SetResult::rouge_l_recall)?,
            agg(ra, SetResult::truth_ratio)?,
            agg(wf, SetResult::normalised_prob)?,
            agg(wf, SetResult::rouge_l_recall)?,
            agg(wf, SetResult::truth_ratio)?,
        ];
        Some(MODEL_UTILITY_METRICS.into_iter().zip(values).collect())
    }

    /// open-unlearning's `TOFU_SUMMARY.json`: the aggregates of its default TOFU metrics that
    /// could be computed (`forget_quality`, `forget_Q_A_Prob`, `forget_Q_A_ROUGE`,
    /// `forget_truth_ratio`, `model_utility`), plus dsg's gibberish and refusal rates.
    pub fn summary(&self) -> BTreeMap<String, f64> {
        let logs = self.eval_logs();
        [
            "forget_quality",
            "forget_Q_A_Prob",
            "forget_Q_A_ROUGE",
            "forget_truth_ratio",
            "model_utility",
            "forget_gibberish_rate",
            "forget_refusal_rate",
        ]
        .into_iter()
        .filter_map(|k| Some((k.to_string(), logs.get(k)?.get("agg_value")?.as_f64()?)))
        .collect()
    }

    /// Writes `TOFU_EVAL.json`, `TOFU_SUMMARY.json` and `report.json` (this report: every
    /// sample, forget quality's test, and per set the refusal and gate rates) into `dir`;
    /// returns the files written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut written = Vec::new();
        let mut put = |name: &str, v: Value| -> Result<()> {
            let p = dir.join(name);
            let text = serde_json::to_string_pretty(&v).expect("a value serialises") + "\n";
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
            written.push(p);
            Ok(())
        };
        put("TOFU_EVAL.json", json!(self.eval_logs()))?;
        put("TOFU_SUMMARY.json", json!(self.summary()))?;
        let rates: BTreeMap<&str, Value> = self
            .sets()
            .iter()
            .map(|s| {
                let r =
                    json!({"rows": s.samples.len(), "refused": s.refusals(), "gated": s.gated()});
                (s.kind.prefix(), r)
            })
            .collect();
        let extra = json!({
            "forget_gibberish": self.forget.gibberish(),
            "model_utility_parts": self.model_utility_parts().map(|p| p.into_iter().collect::<BTreeMap<_, _>>()),
            "rates": rates,
        });
        put("report.json", json!({ "report": self, "summary": extra }))?;
        Ok(written)
    }
}
