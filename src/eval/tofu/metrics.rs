//! TOFU's metrics as pure functions, each as open-unlearning writes it (paths in
//! `locuslab/open-unlearning`, `src/evals/metrics/`):
//!
//! * [`probability`]: `evaluate_probability` (`utils.py`): the mean negative log-likelihood of
//!   the answer tokens (`avg_loss`) and `prob = exp(−avg_loss)`;
//! * [`truth_ratio`]: `truth_ratio` (`memorization.py`): `exp(−mean wrong avg_loss) /
//!   (exp(−correct avg_loss) + 1e-10)`, the geometric mean of the perturbed answers' probabilities
//!   over the correct (paraphrased) answer's;
//! * [`closer_to_1_better`] (forget set) and [`true_better`] (retain and utility sets): its
//!   aggregators, `mean(min(tr, 1/(tr + 1e-10)))` and `mean(max(0, 1 − tr))`;
//! * [`normalised_probability`]: `probability_w_options` (`memorization.py`):
//!   `p_correct / (p_correct + Σ p_wrong + 1e-10)`;
//! * [`harmonic_mean`]: `hm_aggregate` (`utility.py`) = `scipy.stats.hmean`;
//! * [`ks_2samp`]: `ks_test` (`privacy.py`) = `scipy.stats.ks_2samp(...).pvalue`;
//! * [`rouge()`]: `eval_rouge_recall_batch` (`utils.py`) = `rouge-score` with the stemmer.
//!
//! [`Metric`] is the JSON shape of one entry of open-unlearning's `TOFU_EVAL.json`:
//! `{"agg_value": …, "value_by_index": {"0": …, "1": …}}`.

pub mod kolmogorov;
pub mod ks;
pub mod porter;
pub mod rouge;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use kolmogorov::{kstwo_sf, smirnov_sf};
pub use ks::{ks_2samp, KsMethod, KsResult, MAX_EXACT_N};
pub use porter::porter_stem;
pub use rouge::{rouge, rouge_tokens, Rouge, RougeScore};

/// The `1e-10` open-unlearning adds to denominators.
pub const EPS: f64 = 1e-10;

/// One answer's teacher-forced probability, open-unlearning's `{"prob", "avg_loss"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prob {
    /// `exp(−avg_loss)`: the per-token geometric mean probability.
    pub prob: f64,
    /// Mean negative log-likelihood of the answer tokens.
    pub avg_loss: f64,
}

/// The probability of an answer from its tokens' log-probabilities (natural log). An answer with
/// no tokens has `avg_loss` NaN, as `0 / 0` gives in open-unlearning.
pub fn probability(token_logprobs: &[f64]) -> Prob {
    let avg_loss = -token_logprobs.iter().sum::<f64>() / token_logprobs.len() as f64;
    Prob {
        prob: (-avg_loss).exp(),
        avg_loss,
    }
}

/// The truth ratio of one question: wrong answers' mean `avg_loss` against the correct answer's.
pub fn truth_ratio(correct_avg_loss: f64, wrong_avg_losses: &[f64]) -> f64 {
    let wrong = wrong_avg_losses.iter().sum::<f64>() / wrong_avg_losses.len() as f64;
    (-wrong).exp() / ((-correct_avg_loss).exp() + EPS)
}

/// The forget-set aggregate: best when wrong and correct answers are equally likely.
pub fn closer_to_1_better(ratios: &[f64]) -> f64 {
    mean(ratios.iter().map(|&r| r.min(1.0 / (r + EPS))))
}

/// The retain- and utility-set aggregate: best when wrong answers are much less likely.
pub fn true_better(ratios: &[f64]) -> f64 {
    mean(ratios.iter().map(|&r| (1.0 - r).max(0.0)))
}

/// The correct answer's probability normalised over it and the wrong answers'.
pub fn normalised_probability(correct: f64, wrong: &[f64]) -> f64 {
    correct / (correct + wrong.iter().sum::<f64>() + EPS)
}

/// `scipy.stats.hmean`: `n / Σ 1/x`; 0 when some value is 0, NaN when some value is negative or
/// NaN or there are none.
pub fn harmonic_mean(values: &[f64]) -> f64 {
    if values.is_empty() || values.iter().any(|v| v.is_nan() || *v < 0.0) {
        return f64::NAN;
    }
    1.0 / mean(values.iter().map(|v| 1.0 / v))
}

/// The arithmetic mean (NaN for none), as `np.mean`.
pub fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n as f64
}

/// One metric in open-unlearning's JSON shape: the aggregate (`null` when it cannot be computed,
/// as `forget_quality` without a retain model) and, for per-sample metrics, each sample's values
/// by its index in the data file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "V: Deserialize<'de>"))]
pub struct Metric<V> {
    /// The aggregate over samples.
    pub agg_value: Option<f64>,
    /// Per sample, by index (keys are written as strings, `"0"`, `"1"`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_by_index: Option<BTreeMap<usize, V>>,
}

impl<V> Metric<V> {
    /// An aggregate alone.
    pub fn aggregate(agg_value: Option<f64>) -> Metric<V> {
        Metric {
            agg_value,
            value_by_index: None,
        }
    }

    /// An aggregate and the per-sample values `(index, value)`.
    pub fn per_sample(agg_value: f64, values: impl IntoIterator<Item = (usize, V)>) -> Metric<V> {
        Metric {
            agg_value: Some(agg_value),
            value_by_index: Some(values.into_iter().collect()),
        }
    }
}

/// A truth ratio per sample, open-unlearning's `{"score"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The value.
    pub score: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_is_exp_of_minus_mean_nll() {
        let p = probability(&[-1.0, -3.0]);
        assert_eq!(p.avg_loss, 2.0);
        assert!((p.prob - (-2.0f64).exp()).abs() < 1e-15);
    }

    #[test]
    fn truth_ratio_and_aggregators() {
        let tr = truth_ratio(1.0, &[2.0, 4.0]);
        assert!((tr - (-3.0f64).exp() / ((-1.0f64).exp() + EPS)).abs() < 1e-15);
        assert!((closer_to_1_better(&[0.5, 2.0]) - 0.5).abs() < 1e-9);
        assert_eq!(true_better(&[0.25, 3.0]), 0.375);
    }

    #[test]
    fn harmonic_mean_as_scipy() {
        assert!((harmonic_mean(&[1.0, 2.0, 4.0]) - 12.0 / 7.0).abs() < 1e-15);
        assert_eq!(harmonic_mean(&[0.0, 1.0]), 0.0);
        assert!(harmonic_mean(&[-1.0, 1.0]).is_nan());
    }

    #[test]
    fn metric_json_shape() {
        let m = Metric::per_sample(0.5, [(0, Score { score: 0.5 }), (10, Score { score: 0.5 })]);
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["value_by_index"]["10"]["score"], 0.5);
        let back: Metric<Score> = serde_json::from_value(j).unwrap();
        assert_eq!(back, m);
        let fq: Metric<Score> = Metric::aggregate(None);
        assert_eq!(serde_json::to_string(&fq).unwrap(), r#"{"agg_value":null}"#);
    }
}
