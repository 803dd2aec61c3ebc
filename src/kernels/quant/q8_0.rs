//! Q8_0 (the default model's tied output head, and the re-quantised copies of types without a
//! kernel here): per block of 32 an f16 scale `d` and 32 signed bytes, `w = d·q`. Repacked per row
//! as all scales, then all quants.

use candle_core::quantized::GgmlDType;

#[cfg(target_arch = "x86_64")]
use super::f16_avx;
use super::{f16_at, BlockFormat, QuantizedRow, BLOCK};

/// The Q8_0 block format.
pub(crate) struct Q8_0;

impl BlockFormat for Q8_0 {
    const DTYPE: GgmlDType = GgmlDType::Q8_0;
    const BLOCK_BYTES: usize = 34;
    const SCALE_BYTES: usize = 2;
    const HAS_MIN: bool = false;

    fn repack_row(row: &[u8], out: &mut Vec<u8>) {
        row.chunks(Self::BLOCK_BYTES)
            .for_each(|b| out.extend_from_slice(&b[..2]));
        row.chunks(Self::BLOCK_BYTES)
            .for_each(|b| out.extend_from_slice(&b[2..]));
    }

    fn dot_block(w: &[u8], nb: usize, b: usize, x: &QuantizedRow) -> f32 {
        let (scales, quants) = w.split_at(2 * nb);
        let qs = &quants[b * BLOCK..(b + 1) * BLOCK];
        let xq = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let dot: i32 = qs
            .iter()
            .zip(xq)
            .map(|(&w, &q)| w as i8 as i32 * q as i32)
            .sum();
        f16_at(scales, b) * x.d[b] * dot as f32
    }

    #[cfg(test)]
    fn dequantize_block(w: &[u8], nb: usize, b: usize, out: &mut [f32]) {
        let (scales, quants) = w.split_at(2 * nb);
        let d = f16_at(scales, b);
        let qs = &quants[b * BLOCK..(b + 1) * BLOCK];
        out.iter_mut()
            .zip(qs)
            .for_each(|(o, &q)| *o = q as i8 as f32 * d);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn scales_avx2(
        w: *const u8,
        x: &QuantizedRow,
        nb: usize,
        dd: *mut f32,
    ) -> (std::arch::x86_64::__m256, f32) {
        use std::arch::x86_64::*;
        // SAFETY: the trait's contract: F16C is available, `w` starts with `nb` f16 scales, `x`
        // has `nb` blocks and `dd` room for `nb` values; every access below is at a block
        // `b < nb` (eight at a time only while `b + 8 ≤ nb`).
        unsafe {
            let mut b = 0;
            while b + 8 <= nb {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * b) as *const __m128i));
                let dx = _mm256_loadu_ps(x.d.as_ptr().add(b));
                _mm256_storeu_ps(dd.add(b), _mm256_mul_ps(dw, dx));
                b += 8;
            }
            while b < nb {
                *dd.add(b) = f16_avx(w.add(2 * b)) * *x.d.get_unchecked(b);
                b += 1;
            }
        }
        (_mm256_setzero_ps(), 0.0)
    }

    /// `maddubs` wants one unsigned operand, so it multiplies |w| by x carrying w's sign.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn block_sums_avx2(
        quants: *const u8,
        b: usize,
        xv: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees `quants` holds at least `b + 1` blocks of 32 bytes.
        let wq = unsafe { _mm256_loadu_si256(quants.add(b * BLOCK) as *const __m256i) };
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv, wq));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        super::super::tests::check_format::<super::Q8_0>();
    }
}
