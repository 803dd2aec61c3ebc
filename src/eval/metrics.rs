//! Detection metrics with their uncertainty: AUROC (Mann–Whitney, ties count one half) with a
//! seeded bootstrap interval, and rates with Wilson score intervals.
//!
//! [`auroc`] is dsg's one AUROC: gate evaluation and the SAE layer comparison (how well a latent
//! separates forget from retain documents) both use it; an empty class or a non-finite score is an
//! error, never a silent 0.5.
//!
//! A score is "positive" when it is larger; a gate fires when its score is strictly above its
//! threshold, so [`Rate::above`] counts `score > threshold`, as the gate does.

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{Error, Result};

/// `z` of a two-sided 95% normal interval.
const Z95: f64 = 1.959_963_984_540_054;

/// A proportion `k / n` with its 95% Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Rate {
    /// Number of hits.
    pub k: usize,
    /// Number of trials.
    pub n: usize,
    /// `k / n` (0 when `n` is 0).
    pub rate: f64,
    /// Lower end of the 95% interval.
    pub lo: f64,
    /// Upper end of the 95% interval.
    pub hi: f64,
}

impl Rate {
    /// `k` of `n` with its Wilson interval (`[0, 1]` when `n` is 0).
    pub fn new(k: usize, n: usize) -> Rate {
        if n == 0 {
            return Rate {
                k,
                n,
                rate: 0.0,
                lo: 0.0,
                hi: 1.0,
            };
        }
        let (nf, p) = (n as f64, k as f64 / n as f64);
        let z2 = Z95 * Z95;
        let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
        let half = Z95 / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
        Rate {
            k,
            n,
            rate: p,
            lo: (centre - half).max(0.0),
            hi: (centre + half).min(1.0),
        }
    }

    /// The rate in percent with its interval and counts, as reports print it:
    /// `12.5% [5.5, 26.1] (5/40)`.
    pub fn percent(&self) -> String {
        format!(
            "{:.1}% [{:.1}, {:.1}] ({}/{})",
            100.0 * self.rate,
            100.0 * self.lo,
            100.0 * self.hi,
            self.k,
            self.n
        )
    }

    /// The fraction of `scores` strictly above `threshold`.
    pub fn above(scores: &[f64], threshold: f64) -> Rate {
        Rate::new(
            scores.iter().filter(|&&s| s > threshold).count(),
            scores.len(),
        )
    }
}

/// The area under the ROC curve of `positives` against `negatives`: the probability that a random
/// positive scores above a random negative, ties counting one half. Exact, `O((m + n) log(m + n))`.
pub fn auroc(positives: &[f64], negatives: &[f64]) -> Result<f64> {
    if positives.is_empty() || negatives.is_empty() {
        return Err(Error::Invalid(format!(
            "AUROC needs positives and negatives ({} and {} given)",
            positives.len(),
            negatives.len()
        )));
    }
    if positives.iter().chain(negatives).any(|s| !s.is_finite()) {
        return Err(Error::Invalid("AUROC of non-finite scores".into()));
    }
    let mut all: Vec<(f64, bool)> = positives
        .iter()
        .map(|&s| (s, true))
        .chain(negatives.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' mid-ranks (1-based), then the Mann–Whitney U.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mid_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mid_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (m, n) = (positives.len() as f64, negatives.len() as f64);
    Ok((rank_sum - m * (m + 1.0) / 2.0) / (m * n))
}

/// An estimate with a 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The point estimate on the full samples.
    pub value: f64,
    /// 2.5th percentile of the bootstrap distribution.
    pub lo: f64,
    /// 97.5th percentile of the bootstrap distribution.
    pub hi: f64,
}

/// [`auroc`] with a percentile-bootstrap 95% interval: `samples` resamplings (seeded) of the
/// positives and the negatives, each with replacement and separately.
pub fn auroc_with_ci(
    positives: &[f64],
    negatives: &[f64],
    samples: usize,
    seed: u64,
) -> Result<Estimate> {
    let value = auroc(positives, negatives)?;
    if samples == 0 {
        return Ok(Estimate {
            value,
            lo: value,
            hi: value,
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draw = |xs: &[f64]| -> Vec<f64> {
        (0..xs.len())
            .map(|_| xs[rng.random_range(0..xs.len())])
            .collect()
    };
    let mut values = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (p, n) = (draw(positives), draw(negatives));
        values.push(auroc(&p, &n)?);
    }
    Ok(Estimate {
        value,
        lo: crate::guard::percentile(&values, 2.5)?,
        hi: crate::guard::percentile(&values, 97.5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_pairs_and_half_ties() {
        // Pairs (p, n): 3>1, 3>2, 2=2 (½), 2>1 → 3.5 of 4.
        assert_eq!(auroc(&[3.0, 2.0], &[1.0, 2.0]).unwrap(), 3.5 / 4.0);
        assert_eq!(auroc(&[1.0], &[2.0]).unwrap(), 0.0);
        assert_eq!(auroc(&[5.0, 5.0], &[5.0]).unwrap(), 0.5);
        assert!(auroc(&[], &[1.0]).is_err());
        assert!(auroc(&[f64::NAN], &[1.0]).is_err());
    }

    #[test]
    fn auroc_equals_brute_force_on_a_tied_sample() {
        let p = [0.1, 0.4, 0.4, 0.9, 0.0, 0.4];
        let n = [0.0, 0.0, 0.4, 0.2, 0.3];
        let mut wins = 0.0;
        for a in p {
            for b in n {
                wins += if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let brute = wins / (p.len() * n.len()) as f64;
        assert!((auroc(&p, &n).unwrap() - brute).abs() < 1e-12);
    }

    #[test]
    fn wilson_interval_matches_hand_computed_values() {
        // 8 of 10: centre (0.8 + 1.92/10) / 1.384, half-width as in Wilson (1927).
        let r = Rate::new(8, 10);
        assert!((r.lo - 0.4902).abs() < 1e-4, "{r:?}");
        assert!((r.hi - 0.9433).abs() < 1e-4, "{r:?}");
        let zero = Rate::new(0, 50);
        assert_eq!(zero.lo, 0.0);
        assert!((zero.hi - 0.0714).abs() < 1e-4, "{zero:?}");
        assert_eq!(Rate::above(&[0.1, 0.2, 0.3], 0.2).k, 1);
    }

    #[test]
    fn bootstrap_interval_brackets_the_estimate_and_is_seeded() {
        let p: Vec<f64> = (0..40).map(|i| (i % 7) as f64).collect();
        let n: Vec<f64> = (0..50).map(|i| (i % 5) as f64).collect();
        let a = auroc_with_ci(&p, &n, 200, 3).unwrap();
        assert!(a.lo <= a.value && a.value <= a.hi, "{a:?}");
        assert!(a.hi - a.lo > 0.01);
        assert_eq!(a, auroc_with_ci(&p, &n, 200, 3).unwrap());
    }
}
