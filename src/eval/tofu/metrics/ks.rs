//! The two-sample Kolmogorov–Smirnov test as `scipy.stats.ks_2samp(a, b)` computes it with its
//! defaults (`alternative='two-sided'`, `method='auto'`; SciPy 1.17, `scipy/stats/_stats_py.py`):
//!
//! * D = max over the pooled values of |F₁ − F₂|, the empirical CDFs counted with
//!   `searchsorted(side='right')`, so ties are handled as SciPy does;
//! * `auto` is exact when max(n₁, n₂) ≤ 10000: D is rounded to h / lcm(n₁, n₂) and the p-value is
//!   the proportion of lattice paths leaving the band |x/n₁ − y/n₂| < h / lcm, by
//!   `_compute_prob_outside_square` (n₁ = n₂) or `_compute_outer_prob_inside_method` (Hodges' inside
//!   method with Viehmann's recursion for 1 − p, `_stats_pythran.py`);
//! * otherwise asymptotic: `kstwo.sf(D, round(n₁n₂ / (n₁ + n₂)))`, the exact one-sample two-sided
//!   distribution ([`super::kolmogorov::kstwo_sf`]);
//! * the p-value is clipped to [0, 1].

use super::kolmogorov::kstwo_sf;
use crate::{Error, Result};

/// `ks_2samp`'s largest sample size for the exact p-value under `method='auto'`.
pub const MAX_EXACT_N: usize = 10000;

/// How the p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KsMethod {
    /// The exact distribution of D under the null.
    Exact,
    /// The large-sample approximation.
    Asymp,
}

/// The test's statistic and p-value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KsResult {
    /// D (for the exact method, rounded to a multiple of 1 / lcm(n₁, n₂) as SciPy returns it).
    pub statistic: f64,
    /// The two-sided p-value.
    pub pvalue: f64,
    /// Which method gave it.
    pub method: KsMethod,
}

/// `scipy.stats.ks_2samp(a, b).pvalue` and its statistic (see the [module documentation](self)).
/// Errors when a sample is empty; a NaN in either gives NaN (SciPy's `nan_policy='propagate'`).
pub fn ks_2samp(a: &[f64], b: &[f64]) -> Result<KsResult> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::Invalid(format!(
            "the KS test needs two non-empty samples, got sizes {} and {}",
            a.len(),
            b.len()
        )));
    }
    let (n1, n2) = (a.len(), b.len());
    let exact = n1.max(n2) <= MAX_EXACT_N;
    let method = if exact {
        KsMethod::Exact
    } else {
        KsMethod::Asymp
    };
    if a.iter().chain(b).any(|x| x.is_nan()) {
        return Ok(KsResult {
            statistic: f64::NAN,
            pvalue: f64::NAN,
            method,
        });
    }
    let d = statistic(a, b);
    if exact {
        if let Some((d, p)) = exact_pvalue(n1, n2, d) {
            return Ok(KsResult {
                statistic: d,
                pvalue: p.clamp(0.0, 1.0),
                method,
            });
        }
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = (m * n / (m + n)).round_ties_even();
    Ok(KsResult {
        statistic: d,
        pvalue: kstwo_sf(d, en as u64).clamp(0.0, 1.0),
        method: KsMethod::Asymp,
    })
}

/// max(max(F₁ − F₂), clip(−min(F₁ − F₂), 0, 1)) over the pooled values.
fn statistic(a: &[f64], b: &[f64]) -> f64 {
    let sort = |x: &[f64]| {
        let mut v = x.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (a, b) = (sort(a), sort(b));
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let right = |v: &[f64], x: f64| v.partition_point(|&y| y <= x) as f64;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &x in a.iter().chain(&b) {
        let diff = right(&a, x) / n1 - right(&b, x) / n2;
        lo = lo.min(diff);
        hi = hi.max(diff);
    }
    let min_s = (-lo).clamp(0.0, 1.0);
    if min_s > hi {
        min_s
    } else {
        hi
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `_attempt_exact_2kssamp` (two-sided): the rounded statistic and the exact p-value, or `None`
/// where SciPy falls back to the asymptotic one.
fn exact_pvalue(n1: usize, n2: usize, d: f64) -> Option<(f64, f64)> {
    let g = gcd(n1, n2);
    let lcm = (n1 / g) * n2;
    let h = (d * lcm as f64).round_ties_even() as i64;
    let d = h as f64 / lcm as f64;
    if h == 0 {
        return Some((d, 1.0));
    }
    let p = if n1 == n2 {
        prob_outside_square(n1 as i64, h)
    } else {
        outer_prob_inside(n1 as i64, n2 as i64, g as i64, h)
    };
    (p.is_finite() && (0.0..=1.0).contains(&p)).then_some((d, p))
}

/// `_compute_prob_outside_square(n, h)`: Pr(D_{n,n} ≥ h/n), by Horner on the alternating sum.
fn prob_outside_square(n: i64, h: i64) -> f64 {
    let mut p = 0.0;
    let mut k = n / h;
    while k >= 0 {
        let mut p1 = 1.0;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// `_compute_outer_prob_inside_method(m, n, g, h)`: the proportion of lattice paths from (0, 0) to
/// (m, n) that leave the band |nx/g − my/g| < h, one sliding column at a time.
fn outer_prob_inside(m: i64, n: i64, g: i64, h: i64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (mg, ng) = (m / g, n / g);
    let ceil_div = |a: i64, b: i64| -(-a).div_euclid(b);
    let mut minj: i64 = 0;
    let mut maxj: i64 = ceil_div(h, mg).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len_a];
    for x in a.iter_mut().take(maxj as usize) {
        *x = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = ((ng * i - h).div_euclid(mg) + 1).max(0).min(n);
        maxj = ceil_div(ng * i + h, mg).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..maxj - minj {
            let j = jj + minj;
            val = (a[(jj + minj - lastminj) as usize] * i as f64 + val * j as f64) / (i + j) as f64;
            a[jj as usize] = val;
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let from = (maxj - minj) as usize;
            let to = (from + (lastlen - curlen) as usize).min(len_a);
            for x in &mut a[from.min(len_a)..to] {
                *x = 1.0;
            }
        }
    }
    a[(maxj - minj - 1) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_samples_are_not_different() {
        let r = ks_2samp(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap();
        assert_eq!(
            (r.statistic, r.pvalue, r.method),
            (0.0, 1.0, KsMethod::Exact)
        );
    }

    #[test]
    fn disjoint_small_samples() {
        // scipy.stats.ks_2samp([1, 2, 3], [4, 5, 6]).pvalue == 0.1 (2 / C(6, 3)).
        let r = ks_2samp(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
        assert_eq!(r.statistic, 1.0);
        assert!((r.pvalue - 0.1).abs() < 1e-15, "{}", r.pvalue);
        // Unequal sizes: 2 / C(5, 2) = 0.2.
        let r = ks_2samp(&[1.0, 2.0], &[4.0, 5.0, 6.0]).unwrap();
        assert!((r.pvalue - 0.2).abs() < 1e-15, "{}", r.pvalue);
    }

    #[test]
    fn empty_samples_are_refused() {
        assert!(ks_2samp(&[], &[1.0]).is_err());
        assert!(ks_2samp(&[f64::NAN], &[1.0]).unwrap().pvalue.is_nan());
    }
}
