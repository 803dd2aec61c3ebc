//! A vectorised `exp` for the CPU kernels that spend their time in it (the attention softmax and
//! the SiLU of gated MLPs): eight values per AVX2 instruction instead of one libm call each.
//!
//! Cephes' method: `exp(x) = 2^n · exp(r)` with `n = round(x · log2 e)` and `r = x − n · ln 2`
//! (|r| ≤ ln 2 / 2, with `ln 2` split in two for precision), `exp(r)` by a degree-6 polynomial.
//! Relative error ≤ 2e-7 over the range; inputs below −87.3 give 0 (so masked scores of −1e30
//! vanish), above 88.3 give `f32::MAX`-scale values. Without AVX2 it falls back to `f32::exp`.

/// `exp` of every value, in place.
pub fn exp_in_place(v: &mut [f32]) {
    if super::cpu::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe { exp_avx2(v) }
    } else {
        v.iter_mut().for_each(|x| *x = x.exp());
    }
}

/// `x / (1 + exp(−x)) · up` for each pair: the gated SiLU of an MLP row, into `out`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for (o, &g) in out.iter_mut().zip(gate) {
        *o = -g;
    }
    exp_in_place(out);
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + *o) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(v: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = v.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` is eight values, one vector; AVX2 and FMA are enabled here.
        unsafe {
            let x = _mm256_loadu_ps(c.as_ptr());
            _mm256_storeu_ps(c.as_mut_ptr(), exp8(x));
        }
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut buf = [0f32; 8];
        buf[..rest.len()].copy_from_slice(rest);
        // SAFETY: `buf` is eight values, one vector; AVX2 and FMA are enabled here.
        unsafe {
            let y = exp8(_mm256_loadu_ps(buf.as_ptr()));
            _mm256_storeu_ps(buf.as_mut_ptr(), y);
        }
        let n = rest.len();
        rest.copy_from_slice(&buf[..n]);
    }
}

/// `exp` of eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_66,
        0.5,
    ];
    let lo = _mm256_set1_ps(-87.3);
    let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.3));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let pow2 = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    let y = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
    // Below the clamp the true value underflows: return exactly 0 (masked attention scores).
    _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LE_OQ), y)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn exp_avx2(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.exp());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_libm_and_zeroes_masked_values() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0437).collect();
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (&x, &y) in xs.iter().zip(&got) {
            let want = x.exp();
            if x > -87.0 {
                assert!(
                    (y - want).abs() <= 4e-7 * want,
                    "exp({x}) = {y}, libm {want}"
                );
            }
        }
        let mut masked = vec![-1e30f32, -100.0, f32::NEG_INFINITY, 0.0, 1.0];
        exp_in_place(&mut masked);
        assert_eq!(&masked[..3], &[0.0, 0.0, 0.0]);
        assert_eq!(masked[3], 1.0);
        assert!((masked[4] - std::f32::consts::E).abs() < 1e-6);
    }

    #[test]
    fn silu_mul_matches_the_definition() {
        let gate: Vec<f32> = (-50..50).map(|i| i as f32 * 0.3).collect();
        let up: Vec<f32> = (0..100).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut out = vec![0f32; 100];
        silu_mul(&gate, &up, &mut out);
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (o - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{o} vs {want}"
            );
        }
    }
}
