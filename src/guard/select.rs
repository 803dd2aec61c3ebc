//! Feature selection: which SAE features the guardrail watches and clamps.
//!
//! Every rule produces a [`Ranking`], candidates best first; the selected set for `N` features is
//! its first `N` entries, so the sets for different `N` are nested, as in the reference.
//!
//! * [`SelectionRule::Percentile`] with [`PercentileRule::official`] is DSG's released rule
//!   (`get_top_features_percentile`, §1.4 of the spec): importance `s = μ²`, ratio
//!   `r = s_F / (s_R + 1e-21)`, keep `s_F ≥ P_5(s_F)`, `s_R ≤ P_100(s_R)`, `r ≥ P_{p_ratio}(r)`,
//!   order by `s_F` descending. [`PercentileRule::mean_of_squares`] swaps in `E[a²]` (the paper's
//!   Fisher wording), which ranks differently.
//! * [`SelectionRule::Frequency`] is the Farrell et al. / SAEBench static-clamp rule: drop features
//!   whose retain firing frequency is `≥ retain_threshold`, order the rest (with non-zero forget
//!   frequency) by forget frequency descending.
//! * [`SelectionRule::Manual`] is a hand-given list (zero-shot, e.g. from Neuronpedia).
//!
//! **Rounding.** The reference writes the per-feature means with `np.savetxt(fmt="%f")` and
//! selects from the re-read text, i.e. from means rounded to 6 decimals (means below 5e-7 become
//! 0). `stat_decimals: Some(6)` reproduces this; `None` uses the exact means.
//!
//! **Ties.** NumPy's default argsort is not stable, so the reference leaves the order of equal
//! scores unspecified. Here sorting is stable over ascending feature ids, giving what
//! `argsort(kind="stable")` would: the percentile rule (`argsort(-s_F)`) puts equal scores in
//! ascending id order, the frequency rule (`argsort(s)[::-1]`) in descending id order.

use serde::{Deserialize, Serialize};

use super::percentile::percentile;
use crate::stats::FeatureStats;
use crate::{Error, Result};

/// The ε in the reference's importance ratio `s_F / (s_R + ε)`.
pub const RATIO_EPSILON: f64 = 1e-21;

/// The per-feature importance a percentile rule ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// `μ²`, the square of the masked mean activation (the released code).
    SquaredMean,
    /// `E[a²]`, the masked mean of squared activations (the paper's Fisher wording).
    MeanOfSquares,
}

/// DSG's percentile-filter rule and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PercentileRule {
    /// The importance score.
    pub importance: Importance,
    /// Keep features with forget importance at or above this percentile (reference: 5).
    pub forget_percentile: f64,
    /// Keep features with retain importance at or below this percentile (reference: 100).
    pub retain_percentile: f64,
    /// Keep features with importance ratio at or above this percentile, `p_ratio` (Bio 95, Cyber 90).
    pub ratio_percentile: f64,
    /// Round the per-feature statistics to this many decimals first, as the reference's text
    /// round trip does.
    pub stat_decimals: Option<u32>,
    /// dsg's addition (absent from the reference): drop features that fire on fewer than this
    /// fraction of forget tokens, after the percentile filters. With few rows an SAE's near-silent
    /// latents that never fire on retain text get huge ratios and would otherwise be chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_forget_frequency: Option<f64>,
}

impl PercentileRule {
    /// The released rule with the given `p_ratio`: `μ²`, filters at 5 / 100, 6-decimal rounding.
    pub fn official(ratio_percentile: f64) -> Self {
        PercentileRule {
            importance: Importance::SquaredMean,
            forget_percentile: 5.0,
            retain_percentile: 100.0,
            ratio_percentile,
            stat_decimals: Some(6),
            min_forget_frequency: None,
        }
    }

    /// The same filters with `E[a²]` importance and exact statistics.
    pub fn mean_of_squares(ratio_percentile: f64) -> Self {
        PercentileRule {
            importance: Importance::MeanOfSquares,
            stat_decimals: None,
            ..PercentileRule::official(ratio_percentile)
        }
    }

    /// Per-feature importance of one corpus under this rule.
    pub fn importance_of(&self, stats: &FeatureStats) -> Vec<f64> {
        let round = |x: f64| self.stat_decimals.map_or(x, |d| round_decimals(x, d));
        match self.importance {
            Importance::SquaredMean => stats.mean().into_iter().map(|m| round(m).powi(2)).collect(),
            Importance::MeanOfSquares => stats.mean_sq().into_iter().map(round).collect(),
        }
    }
}

/// How features are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum SelectionRule {
    /// DSG's percentile filters on importance and importance ratio.
    Percentile(PercentileRule),
    /// Farrell et al.: retain-frequency cut-off, then forget frequency.
    Frequency {
        /// Drop features whose retain firing frequency is at or above this.
        retain_threshold: f64,
        /// Round the frequencies to this many decimals first (SAEBench: 6).
        stat_decimals: Option<u32>,
    },
    /// A hand-given list, in priority order.
    Manual {
        /// Feature ids.
        features: Vec<u32>,
    },
}

/// The scores a ranking was computed from, per feature (indexed by feature id).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureScores {
    /// Forget-corpus score (importance or frequency).
    pub forget: Vec<f64>,
    /// Retain-corpus score.
    pub retain: Vec<f64>,
    /// `forget / (retain + RATIO_EPSILON)`.
    pub ratio: Vec<f64>,
}

/// Candidate features, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Candidate feature ids in selection order.
    pub order: Vec<u32>,
    /// The scores behind the order; `None` for a manual list.
    pub scores: Option<FeatureScores>,
}

impl Ranking {
    /// The selected set of `n` features: the first `n` candidates.
    pub fn top(&self, n: usize) -> Result<&[u32]> {
        if n == 0 || n > self.order.len() {
            return Err(Error::out_of_range(
                "--n-features",
                n,
                format!(
                    "1..={}: only {} features pass the selection rule (lower --n-features, or \
                     --p-ratio to admit more candidates)",
                    self.order.len(),
                    self.order.len()
                ),
            ));
        }
        Ok(&self.order[..n])
    }
}

/// Errors unless `x` is a percentile in [0, 100]; `field` names it.
pub(crate) fn check_percentile(field: &str, x: f64) -> Result<()> {
    if (0.0..=100.0).contains(&x) {
        Ok(())
    } else {
        Err(Error::out_of_range(field, x, "a percentile in [0, 100]"))
    }
}

/// Decimals beyond this exceed an f64's precision; rounding to them is meaningless.
const MAX_STAT_DECIMALS: u32 = 17;

fn check_decimals(field: &str, d: Option<u32>) -> Result<()> {
    match d {
        Some(d) if d > MAX_STAT_DECIMALS => Err(Error::out_of_range(
            field,
            d,
            format!("at most {MAX_STAT_DECIMALS} decimals"),
        )),
        _ => Ok(()),
    }
}

impl SelectionRule {
    /// Checks the parameters: percentiles in [0, 100], a retain frequency threshold in [0, 1], a
    /// non-empty manual list without repeats. Errors name the field (`selection.ratio_percentile`, …).
    pub fn validate(&self) -> Result<()> {
        match self {
            SelectionRule::Percentile(rule) => {
                check_percentile("selection.forget_percentile", rule.forget_percentile)?;
                check_percentile("selection.retain_percentile", rule.retain_percentile)?;
                check_percentile("selection.ratio_percentile", rule.ratio_percentile)?;
                if let Some(f) = rule.min_forget_frequency {
                    if !(0.0..=1.0).contains(&f) {
                        return Err(Error::out_of_range(
                            "selection.min_forget_frequency",
                            f,
                            "a firing frequency in [0, 1]",
                        ));
                    }
                }
                check_decimals("selection.stat_decimals", rule.stat_decimals)
            }
            SelectionRule::Frequency {
                retain_threshold,
                stat_decimals,
            } => {
                if !(0.0..=1.0).contains(retain_threshold) {
                    return Err(Error::out_of_range(
                        "selection.retain_threshold",
                        retain_threshold,
                        "a firing frequency in [0, 1]",
                    ));
                }
                check_decimals("selection.stat_decimals", *stat_decimals)
            }
            SelectionRule::Manual { features } => {
                if features.is_empty() {
                    return Err(Error::out_of_range(
                        "selection.features",
                        "[]",
                        "at least one feature id",
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                match features.iter().find(|&&f| !seen.insert(f)) {
                    Some(f) => Err(Error::out_of_range(
                        "selection.features",
                        format!("{f} twice"),
                        "distinct feature ids",
                    )),
                    None => Ok(()),
                }
            }
        }
    }

    /// Ranks features from forget- and retain-corpus statistics.
    pub fn rank(&self, forget: &FeatureStats, retain: &FeatureStats) -> Result<Ranking> {
        if forget.d_sae() != retain.d_sae() {
            return Err(Error::Mismatch(format!(
                "forget statistics have {} features, retain statistics {}",
                forget.d_sae(),
                retain.d_sae()
            )));
        }
        match self {
            SelectionRule::Percentile(rule) => {
                let mut ranking = rank_by_ratio(
                    &rule.importance_of(forget),
                    &rule.importance_of(retain),
                    rule,
                )?;
                if let Some(floor) = rule.min_forget_frequency {
                    let freq = forget.freq();
                    ranking.order.retain(|&i| freq[i as usize] >= floor);
                }
                Ok(ranking)
            }
            SelectionRule::Frequency {
                retain_threshold,
                stat_decimals,
            } => {
                let round = |v: Vec<f64>| -> Vec<f64> {
                    let d = *stat_decimals;
                    v.into_iter()
                        .map(|x| d.map_or(x, |d| round_decimals(x, d)))
                        .collect()
                };
                rank_by_frequency(
                    &round(forget.freq()),
                    &round(retain.freq()),
                    *retain_threshold,
                )
            }
            SelectionRule::Manual { features } => manual(features, forget.d_sae()),
        }
    }
}

/// `x` after printing with `decimals` decimals and parsing back (`np.savetxt(fmt="%.{d}f")` then
/// `np.loadtxt`; ties round to even on the exact binary value, as C's `printf` does).
pub fn round_decimals(x: f64, decimals: u32) -> f64 {
    format!("{:.*}", decimals as usize, x)
        .parse()
        .expect("a formatted float parses")
}

fn ratios(forget: &[f64], retain: &[f64]) -> Vec<f64> {
    forget
        .iter()
        .zip(retain)
        .map(|(f, r)| f / (r + RATIO_EPSILON))
        .collect()
}

fn check_lengths(forget: &[f64], retain: &[f64]) -> Result<()> {
    if forget.len() != retain.len() || forget.is_empty() {
        return Err(Error::Invalid(format!(
            "forget and retain scores must be non-empty and equally long ({} vs {})",
            forget.len(),
            retain.len()
        )));
    }
    Ok(())
}

/// The percentile rule on per-feature importances (indexed by feature id).
pub fn rank_by_ratio(forget: &[f64], retain: &[f64], rule: &PercentileRule) -> Result<Ranking> {
    check_lengths(forget, retain)?;
    let ratio = ratios(forget, retain);
    let forget_min = percentile(forget, rule.forget_percentile)?;
    let retain_max = percentile(retain, rule.retain_percentile)?;
    let ratio_min = percentile(&ratio, rule.ratio_percentile)?;
    let order: Vec<u32> = (0..forget.len())
        .filter(|&i| forget[i] >= forget_min && retain[i] <= retain_max && ratio[i] >= ratio_min)
        .map(|i| i as u32)
        .collect();
    Ok(ranked_by_forget(order, forget, retain, ratio))
}

/// `candidates` sorted by forget score, descending (stable), with the scores that ranked them.
fn ranked_by_forget(
    mut candidates: Vec<u32>,
    forget: &[f64],
    retain: &[f64],
    ratio: Vec<f64>,
) -> Ranking {
    candidates.sort_by(|&a, &b| forget[b as usize].total_cmp(&forget[a as usize]));
    Ranking {
        order: candidates,
        scores: Some(FeatureScores {
            forget: forget.to_vec(),
            retain: retain.to_vec(),
            ratio,
        }),
    }
}

/// The Farrell et al. rule on per-feature firing frequencies (indexed by feature id).
pub fn rank_by_frequency(forget: &[f64], retain: &[f64], retain_threshold: f64) -> Result<Ranking> {
    check_lengths(forget, retain)?;
    if forget.iter().chain(retain).any(|x| x.is_nan()) || retain_threshold.is_nan() {
        return Err(Error::Invalid("firing frequencies contain NaN".into()));
    }
    let order: Vec<u32> = (0..forget.len() as u32)
        .rev()
        .filter(|&i| retain[i as usize] < retain_threshold && forget[i as usize] != 0.0)
        .collect();
    Ok(ranked_by_forget(
        order,
        forget,
        retain,
        ratios(forget, retain),
    ))
}

/// A hand-given feature list, checked against the SAE width and for duplicates.
pub fn manual(features: &[u32], d_sae: usize) -> Result<Ranking> {
    let mut seen = vec![false; d_sae];
    for &f in features {
        let slot = seen.get_mut(f as usize).ok_or_else(|| {
            Error::Invalid(format!("feature {f} is out of range for d_sae = {d_sae}"))
        })?;
        if *slot {
            return Err(Error::Invalid(format!("feature {f} is listed twice")));
        }
        *slot = true;
    }
    Ok(Ranking {
        order: features.to_vec(),
        scores: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HookPoint;
    use crate::stats::StatsProvenance;

    /// The official rule without rounding, with the given forget and ratio percentiles.
    fn exact(forget_percentile: f64, ratio_percentile: f64) -> PercentileRule {
        PercentileRule {
            forget_percentile,
            stat_decimals: None,
            ..PercentileRule::official(ratio_percentile)
        }
    }

    #[test]
    fn official_rule_by_hand() {
        let mu_f: [f64; 6] = [0.0, 3.0, 1.0, 2.0, 0.5, 2.0];
        let mu_r: [f64; 6] = [0.1, 0.0, 1.0, 0.1, 0.0, 0.1];
        let s_f: Vec<f64> = mu_f.iter().map(|m| m * m).collect();
        let s_r: Vec<f64> = mu_r.iter().map(|m| m * m).collect();
        // P5(s_F) = 0.0625 drops feature 0; P50(r) = r_3 = r_5 ≈ 400 drops feature 2 (r = 1);
        // 3 and 5 tie on s_F = 4 and keep ascending id order.
        let ranking = rank_by_ratio(&s_f, &s_r, &exact(5.0, 50.0)).unwrap();
        assert_eq!(ranking.order, vec![1, 3, 5, 4]);
        assert_eq!(ranking.top(2).unwrap(), &[1, 3]);
        // P70(r) lies between 400 and 2.5e20: only the retain-silent features 1 and 4 remain.
        let ranking = rank_by_ratio(&s_f, &s_r, &exact(5.0, 70.0)).unwrap();
        assert_eq!(ranking.order, vec![1, 4]);
        assert!(ranking.top(3).is_err());
        // A retain filter at P50(s_R) = 0.01 removes feature 2 (s_R = 1) even with no other filter.
        let rule = PercentileRule {
            retain_percentile: 50.0,
            ..exact(0.0, 0.0)
        };
        assert_eq!(
            rank_by_ratio(&s_f, &s_r, &rule).unwrap().order,
            vec![1, 3, 5, 4, 0]
        );
    }

    #[test]
    fn six_decimal_rounding_like_savetxt() {
        assert_eq!(round_decimals(0.0078125, 6), 0.007812);
        assert_eq!(round_decimals(0.0234375, 6), 0.023438);
        assert_eq!(round_decimals(4e-7, 6), 0.0);
        assert_eq!(round_decimals(6e-7, 6), 1e-6);
        // Means 1.0000004 and 1.0000001 both round to 1.0: the tie falls back to feature order.
        let stats = |means: &[f32]| {
            let mut s = FeatureStats::new(2, provenance());
            s.add_row(means, &[true]).unwrap();
            s
        };
        let forget = stats(&[1.000_000_1, 1.000_000_4]);
        let retain = stats(&[0.0, 0.0]);
        let rule = |stat_decimals| {
            SelectionRule::Percentile(PercentileRule {
                stat_decimals,
                ..exact(0.0, 0.0)
            })
        };
        assert_eq!(
            rule(Some(6)).rank(&forget, &retain).unwrap().order,
            vec![0, 1]
        );
        assert_eq!(rule(None).rank(&forget, &retain).unwrap().order, vec![1, 0]);
    }

    fn provenance() -> StatsProvenance {
        StatsProvenance {
            corpus: "synthetic".into(),
            hook_point: HookPoint::resid_post(3),
            sae_id: "sae".into(),
        }
    }

    #[test]
    fn mean_of_squares_ranks_differently() {
        // Feature 0 fires rarely but strongly, feature 1 steadily; feature 2 only on retain.
        let mut forget = FeatureStats::new(3, provenance());
        let mut retain = FeatureStats::new(3, provenance());
        for (a0, a1) in [(10.0, 3.0), (0.0, 3.0), (0.0, 3.0), (0.0, 3.0)] {
            forget.add_row(&[a0, a1, 0.0], &[true]).unwrap();
            retain.add_row(&[0.0, 0.0, 1.0], &[true]).unwrap();
        }
        let by_mean = SelectionRule::Percentile(exact(0.0, 0.0));
        assert_eq!(by_mean.rank(&forget, &retain).unwrap().order, vec![1, 0, 2]);
        let by_square = SelectionRule::Percentile(PercentileRule {
            forget_percentile: 0.0,
            ..PercentileRule::mean_of_squares(0.0)
        });
        let ranking = by_square.rank(&forget, &retain).unwrap();
        assert_eq!(ranking.order, vec![0, 1, 2]);
        assert_eq!(ranking.scores.unwrap().forget, vec![25.0, 9.0, 0.0]);
    }

    #[test]
    fn a_forget_frequency_floor_drops_rarely_firing_features() {
        // Feature 0 fires on 1 of 4 forget tokens (strongly), feature 1 on all, feature 3 on 2;
        // none fires on retain text except feature 2.
        let mut forget = FeatureStats::new(4, provenance());
        let mut retain = FeatureStats::new(4, provenance());
        for (a0, a3) in [(40.0, 1.0), (0.0, 1.0), (0.0, 0.0), (0.0, 0.0)] {
            forget.add_row(&[a0, 3.0, 0.0, a3], &[true]).unwrap();
            retain.add_row(&[0.0, 0.0, 1.0, 0.0], &[true]).unwrap();
        }
        let rule = |floor| {
            SelectionRule::Percentile(PercentileRule {
                min_forget_frequency: floor,
                ..exact(0.0, 0.0)
            })
        };
        assert_eq!(
            rule(None).rank(&forget, &retain).unwrap().order,
            vec![0, 1, 3, 2]
        );
        // Frequencies 0.25, 1, 0, 0.5: a floor of 0.5 keeps features 1 and 3, in the same order.
        assert_eq!(
            rule(Some(0.5)).rank(&forget, &retain).unwrap().order,
            vec![1, 3]
        );
        assert_eq!(
            rule(Some(0.25)).rank(&forget, &retain).unwrap().order,
            vec![0, 1, 3]
        );
        let err = rule(Some(1.5)).validate().unwrap_err().to_string();
        assert!(err.contains("selection.min_forget_frequency"), "{err}");
        // Absent from the file when unset, so guardrails fitted by the reference rule are unchanged.
        let json = serde_json::to_string(&rule(None)).unwrap();
        assert!(!json.contains("min_forget_frequency"), "{json}");
        let back: SelectionRule =
            serde_json::from_str(&serde_json::to_string(&rule(Some(0.01))).unwrap()).unwrap();
        assert_eq!(back, rule(Some(0.01)));
    }

    #[test]
    fn farrell_frequency_rule_by_hand() {
        let forget = [0.5, 0.2, 0.2, 0.0, 0.9];
        let retain = [0.0, 0.001, 0.0, 0.0, 0.5];
        // Feature 4 is too frequent on retain, feature 3 never fires on forget; 1 and 2 tie and
        // come out in descending id order, as `argsort()[::-1]` gives.
        let ranking = rank_by_frequency(&forget, &retain, 0.01).unwrap();
        assert_eq!(ranking.order, vec![0, 2, 1]);
        // At threshold 0.001 feature 1 (retain frequency exactly 0.001) is dropped too.
        assert_eq!(
            rank_by_frequency(&forget, &retain, 0.001).unwrap().order,
            vec![0, 2]
        );
    }

    #[test]
    fn manual_lists_are_validated() {
        assert_eq!(manual(&[5, 2, 9], 10).unwrap().order, vec![5, 2, 9]);
        assert!(manual(&[5, 5], 10).is_err());
        assert!(manual(&[10], 10).is_err());
    }

    #[test]
    fn rules_serialise_with_a_tag() {
        let rule = SelectionRule::Percentile(PercentileRule::official(95.0));
        let json = serde_json::to_string(&rule).unwrap();
        assert!(json.contains(r#""rule":"percentile""#), "{json}");
        assert_eq!(serde_json::from_str::<SelectionRule>(&json).unwrap(), rule);
        let manual = SelectionRule::Manual {
            features: vec![3, 1],
        };
        let json = serde_json::to_string(&manual).unwrap();
        assert_eq!(
            serde_json::from_str::<SelectionRule>(&json).unwrap(),
            manual
        );
    }
}
