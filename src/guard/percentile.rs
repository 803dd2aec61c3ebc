//! `numpy.percentile(x, p)` with the default `method="linear"`, reproduced to the last bit.
//!
//! NumPy puts the virtual index at `h = (n - 1) · (p / 100)` in the sorted sample, takes its two
//! neighbours `a = x[⌊h⌋]`, `b = x[⌊h⌋ + 1]` and the weight `t = h - ⌊h⌋`, and interpolates as
//! `a + (b - a)·t` when `t < 0.5` but `b - (b - a)·(1 - t)` when `t ≥ 0.5`. An index at or beyond
//! `n - 1` gives the maximum. DSG uses this for the selection thresholds (§1.4 of the spec) and for τ
//! (§2.2), so both must agree with the reference exactly.
//!
//! The interpolation runs in the element type: f64 for `f64` input, f32 for `f32` input (what NumPy 2
//! does for an f32 array and a scalar `p`). Inputs are rejected if empty, if any value is NaN, or if
//! `p` is outside `[0, 100]`.

use crate::{Error, Result};

/// An element type NumPy-compatible percentiles can be taken of.
pub trait PercentileValue: Copy + PartialOrd {
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
    /// NumPy's `_lerp(a, b, t)`, computed in `Self`'s precision and widened to f64.
    fn lerp(a: Self, b: Self, t: f64) -> f64;
}

impl PercentileValue for f64 {
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn lerp(a: f64, b: f64, t: f64) -> f64 {
        let diff = b - a;
        if t >= 0.5 {
            b - diff * (1.0 - t)
        } else {
            a + diff * t
        }
    }
}

impl PercentileValue for f32 {
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn lerp(a: f32, b: f32, t: f64) -> f64 {
        let diff = b - a;
        let r = if t >= 0.5 {
            b - diff * (1.0 - t) as f32
        } else {
            a + diff * t as f32
        };
        f64::from(r)
    }
}

/// The `p`-th percentile (`p` in `[0, 100]`) of `values`, as `numpy.percentile(values, p)`.
pub fn percentile<T: PercentileValue>(values: &[T], p: f64) -> Result<f64> {
    Ok(percentiles(values, &[p])?[0])
}

/// Several percentiles of `values` with one sort, as `numpy.percentile(values, ps)` element by
/// element.
pub fn percentiles<T: PercentileValue>(values: &[T], ps: &[f64]) -> Result<Vec<f64>> {
    if values.is_empty() {
        return Err(Error::Invalid("percentile of an empty sample".into()));
    }
    if values.iter().any(|v| v.is_nan()) {
        return Err(Error::Invalid(
            "percentile of a sample containing NaN".into(),
        ));
    }
    if let Some(p) = ps.iter().find(|p| !(0.0..=100.0).contains(*p)) {
        return Err(Error::Invalid(format!(
            "percentile {p} is outside [0, 100]"
        )));
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("NaN was rejected above"));
    Ok(ps
        .iter()
        .map(|&p| percentile_of_sorted(&sorted, p))
        .collect())
}

/// The percentile of an already sorted, NaN-free, non-empty sample; `p` must be in `[0, 100]`.
fn percentile_of_sorted<T: PercentileValue>(sorted: &[T], p: f64) -> f64 {
    let last = sorted.len() - 1;
    let virtual_index = last as f64 * (p / 100.0);
    let below = virtual_index.floor();
    if virtual_index >= last as f64 {
        return T::lerp(sorted[last], sorted[last], 0.0);
    }
    let i = below as usize;
    T::lerp(sorted[i], sorted[i + 1], virtual_index - below)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_on_the_textbook_example() {
        // numpy.percentile([1, 2, 3, 4], [0, 25, 50, 95, 100])
        let got = percentiles(&[4.0, 2.0, 1.0, 3.0], &[0.0, 25.0, 50.0, 95.0, 100.0]).unwrap();
        assert_eq!(&got[..3], &[1.0, 1.75, 2.5]);
        assert_eq!(got[3].to_bits(), 0x400e_cccc_cccc_cccc); // 3.8499999999999996
        assert_eq!(got[4], 4.0);
    }

    #[test]
    fn matches_numpy_bit_for_bit_in_f64() {
        // Values printed by numpy 2.4: float(np.percentile(x, p)).hex()
        let x = [0.1, 0.7, 0.2, 0.9, 0.4, 0.33, 0.05];
        let expected: [(f64, u64); 7] = [
            (0.0, 0x3fa9_9999_9999_999a),
            (5.0, 0x3fb0_a3d7_0a3d_70a4),
            (37.5, 0x3fcd_c28f_5c28_f5c3),
            (62.2, 0x3fd8_663c_74fb_54a0),
            (95.0, 0x3fea_e147_ae14_7ae0),
            (99.9, 0x3fec_c2f8_37b4_a235),
            (100.0, 0x3fec_cccc_cccc_cccd),
        ];
        for (p, bits) in expected {
            assert_eq!(percentile(&x, p).unwrap().to_bits(), bits, "p = {p}");
        }
    }

    #[test]
    fn f32_interpolates_in_f32_like_numpy() {
        let x = [0.3f32, 0.1, 0.7, 0.2];
        let expected: [(f64, u32); 5] = [
            (10.0, 0x3e05_1eb8),
            (33.3, 0x3e4c_b296),
            (50.0, 0x3e80_0000),
            (70.0, 0x3eae_147b),
            (95.0, 0x3f23_d70a),
        ];
        for (p, bits) in expected {
            let got = percentile(&x, p).unwrap();
            assert_eq!((got as f32).to_bits(), bits, "p = {p}");
            assert_eq!(f64::from(got as f32), got, "result must be an exact f32");
        }
    }

    #[test]
    fn single_value_and_ties() {
        assert_eq!(percentile(&[7.0], 0.0).unwrap(), 7.0);
        assert_eq!(percentile(&[7.0], 63.0).unwrap(), 7.0);
        assert_eq!(percentile(&[2.0, 2.0, 2.0], 95.0).unwrap(), 2.0);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(percentile::<f64>(&[], 50.0).is_err());
        assert!(percentile(&[1.0, f64::NAN], 50.0).is_err());
        assert!(percentile(&[1.0], -0.5).is_err());
        assert!(percentile(&[1.0], 100.5).is_err());
    }
}
