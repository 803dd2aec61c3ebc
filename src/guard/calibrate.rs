//! Gate calibration: the threshold is a percentile of the gate's scores on retain rows (§2.2).
//!
//! The reference sets `τ_N = np.percentile(ρ over retain rows, 95)`; [`calibrate`] does this for
//! any gate kind (ρ, windowed ρ, CUSUM peak) and any percentile `p_dyn`, and keeps the retain score
//! distribution so that the false-positive rate at τ and the distribution can be reported. The
//! reference's bootstrap of the percentile is available ([`Calibration::bootstrap`]) but, as
//! there, only reported. For zero-shot use set τ by hand with [`Gate::with_threshold`].

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::gate::{Gate, TokenSignal};
use super::percentile::{percentile, percentiles};
use crate::{Error, Result};

/// The reference's `p_dyn`.
pub const DEFAULT_PERCENTILE: f64 = 95.0;

/// Percentiles of the retain score distribution recorded in a [`CalibrationSummary`].
pub const SUMMARY_PERCENTILES: [f64; 9] = [0.0, 5.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 100.0];

/// A calibrated gate and the retain scores it was calibrated on.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// The gate with its threshold set.
    pub gate: Gate,
    /// The percentile the threshold was taken at.
    pub percentile: f64,
    /// The gate's score on each retain row, in row order.
    pub retain_scores: Vec<f64>,
}

/// A seeded bootstrap estimate of the threshold's sampling variability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Number of resamples.
    pub samples: usize,
    /// RNG seed.
    pub seed: u64,
    /// Mean of the resampled percentiles (what the reference prints).
    pub mean: f64,
    /// Standard deviation of the resampled percentiles.
    pub std: f64,
}

/// What a guardrail file records about calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    /// The percentile the threshold was taken at.
    pub percentile: f64,
    /// The gate threshold `τ`: that percentile of the retain rows' scores.
    pub threshold: f64,
    /// Number of retain rows.
    pub n_rows: usize,
    /// `[p, P_p(scores)]` for each of [`SUMMARY_PERCENTILES`].
    pub score_percentiles: Vec<[f64; 2]>,
    /// Fraction of retain rows on which the gate fires.
    pub false_positive_rate: f64,
    /// Optional bootstrap of the threshold.
    pub bootstrap: Option<Bootstrap>,
}

/// Fraction of `scores` strictly above `threshold` (the gate's firing rate on those rows).
pub fn rate_above(scores: &[f64], threshold: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s > threshold).count() as f64 / scores.len() as f64
}

/// Calibrates `gate` (its own threshold is ignored) on the retain rows' token signal (SAE activity
/// or probe logits): the new threshold is the `p_dyn`-th percentile of the rows' scores.
pub fn calibrate<R: AsRef<[S]>, S: TokenSignal>(
    gate: Gate,
    retain_rows: &[R],
    p_dyn: f64,
) -> Result<Calibration> {
    gate.validate()?;
    if retain_rows.is_empty() {
        return Err(Error::Invalid(
            "calibration needs at least one retain row".into(),
        ));
    }
    let retain_scores: Vec<f64> = retain_rows.iter().map(|r| gate.score(r.as_ref())).collect();
    let threshold = percentile(&retain_scores, p_dyn)?;
    Ok(Calibration {
        gate: gate.with_threshold(threshold),
        percentile: p_dyn,
        retain_scores,
    })
}

impl Calibration {
    /// Fraction of retain rows on which the calibrated gate fires.
    pub fn false_positive_rate(&self) -> f64 {
        rate_above(&self.retain_scores, self.gate.threshold())
    }

    /// Resamples the retain scores `samples` times (with replacement, seeded) and takes the same
    /// percentile of each resample.
    pub fn bootstrap(&self, samples: usize, seed: u64) -> Result<Bootstrap> {
        if samples == 0 {
            return Err(Error::Invalid("bootstrap needs at least one sample".into()));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = self.retain_scores.len();
        let mut estimates = Vec::with_capacity(samples);
        let mut resample = vec![0.0; n];
        for _ in 0..samples {
            for slot in resample.iter_mut() {
                *slot = self.retain_scores[rng.random_range(0..n)];
            }
            estimates.push(percentile(&resample, self.percentile)?);
        }
        let mean = estimates.iter().sum::<f64>() / samples as f64;
        let var = estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / samples as f64;
        Ok(Bootstrap {
            samples,
            seed,
            mean,
            std: var.sqrt(),
        })
    }

    /// The record for a guardrail file.
    pub fn summary(&self, bootstrap: Option<Bootstrap>) -> Result<CalibrationSummary> {
        let values = percentiles(&self.retain_scores, &SUMMARY_PERCENTILES)?;
        Ok(CalibrationSummary {
            percentile: self.percentile,
            threshold: self.gate.threshold(),
            n_rows: self.retain_scores.len(),
            score_percentiles: SUMMARY_PERCENTILES
                .iter()
                .zip(values)
                .map(|(&p, v)| [p, v])
                .collect(),
            false_positive_rate: self.false_positive_rate(),
            bootstrap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 rows of length 10 whose ρ is 0.0, 0.1, …, 0.9 (twice each).
    fn rows() -> Vec<Vec<bool>> {
        (0..20)
            .map(|i| (0..10).map(|t| t < i % 10).collect())
            .collect()
    }

    #[test]
    fn threshold_is_the_linear_percentile_of_retain_scores() {
        let cal = calibrate(Gate::Paper { tau: 0.0 }, &rows(), 95.0).unwrap();
        // Sorted ρ: 0,0,0.1,0.1,…,0.9,0.9; h = 19·0.95 = 18.05 → between 0.9 and 0.9.
        assert_eq!(cal.gate, Gate::Paper { tau: 0.9 });
        assert_eq!(cal.false_positive_rate(), 0.0);
        let cal = calibrate(Gate::Paper { tau: 0.0 }, &rows(), 50.0).unwrap();
        // h = 9.5 → between sorted[9] = 0.4 and sorted[10] = 0.5.
        assert!((cal.gate.threshold() - 0.45).abs() < 1e-15);
        assert_eq!(cal.false_positive_rate(), 0.5);
    }

    #[test]
    fn other_gates_calibrate_on_their_own_scores() {
        let window = calibrate(Gate::Window { width: 4, tau: 0.0 }, &rows(), 100.0).unwrap();
        assert_eq!(window.gate, Gate::Window { width: 4, tau: 1.0 });
        let cusum = calibrate(
            Gate::Cusum {
                drift: 0.5,
                threshold: 0.0,
            },
            &rows(),
            100.0,
        )
        .unwrap();
        assert_eq!(cusum.gate.threshold(), 4.5); // nine active tokens, each adding 0.5
    }

    #[test]
    fn bootstrap_is_seeded_and_summary_is_complete() {
        let cal = calibrate(Gate::Paper { tau: 0.0 }, &rows(), 95.0).unwrap();
        let a = cal.bootstrap(200, 1).unwrap();
        assert_eq!(a, cal.bootstrap(200, 1).unwrap());
        assert!(a.mean > 0.7 && a.mean <= 0.9 && a.std >= 0.0);
        let summary = cal.summary(Some(a)).unwrap();
        assert_eq!(summary.n_rows, 20);
        assert_eq!(summary.threshold, 0.9);
        assert_eq!(summary.score_percentiles[0], [0.0, 0.0]);
        assert_eq!(summary.score_percentiles[8], [100.0, 0.9]);
        assert!(calibrate::<Vec<bool>, bool>(Gate::Paper { tau: 0.0 }, &[], 95.0).is_err());
    }
}
