//! Q4_1, the default SmolLM2 file's format: per block of 32 an f16 scale `d`, an f16 minimum `m`
//! and 16 bytes of nibbles, `w = d·q + m`. A block's dot product with an activation block is
//! `d_w·d_x·Σ q_w q_x + m_w·s_x`. Repacked per row as all `d`s, all `m`s, then all nibbles.

use candle_core::quantized::GgmlDType;

#[cfg(target_arch = "x86_64")]
use super::f16_avx;
use super::parts::NIBBLE_BYTES;
#[cfg(target_arch = "x86_64")]
use super::parts::{nibbles_avx2, sums_unsigned_avx2};
use super::{f16_at, BlockFormat, QuantizedRow, BLOCK};

/// The Q4_1 block format.
pub(crate) struct Q4_1;

impl BlockFormat for Q4_1 {
    const DTYPE: GgmlDType = GgmlDType::Q4_1;
    const BLOCK_BYTES: usize = 20;
    const SCALE_BYTES: usize = 4;
    const HAS_MIN: bool = true;

    fn repack_row(row: &[u8], out: &mut Vec<u8>) {
        let blks = || row.chunks(Self::BLOCK_BYTES);
        blks().for_each(|b| out.extend_from_slice(&b[0..2]));
        blks().for_each(|b| out.extend_from_slice(&b[2..4]));
        blks().for_each(|b| out.extend_from_slice(&b[4..]));
    }

    fn dot_block(w: &[u8], nb: usize, b: usize, x: &QuantizedRow) -> f32 {
        let (scales, quants) = w.split_at(4 * nb);
        let qs = &quants[b * NIBBLE_BYTES..(b + 1) * NIBBLE_BYTES];
        let xq = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let mut dot = 0i32;
        for (j, &byte) in qs.iter().enumerate() {
            dot += (byte & 0x0F) as i32 * xq[j] as i32 + (byte >> 4) as i32 * xq[j + 16] as i32;
        }
        f16_at(scales, b) * x.d[b] * dot as f32 + f16_at(scales, nb + b) * x.s[b]
    }

    #[cfg(test)]
    fn dequantize_block(w: &[u8], nb: usize, b: usize, out: &mut [f32]) {
        let (scales, quants) = w.split_at(4 * nb);
        let (d, m) = (f16_at(scales, b), f16_at(scales, nb + b));
        let qs = &quants[b * NIBBLE_BYTES..(b + 1) * NIBBLE_BYTES];
        for (j, &byte) in qs.iter().enumerate() {
            out[j] = (byte & 0x0F) as f32 * d + m;
            out[j + 16] = (byte >> 4) as f32 * d + m;
        }
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
        // SAFETY: the trait's contract: F16C is available, `w` starts with `nb` f16 scales then
        // `nb` f16 minimums, `x` has `nb` blocks (`x.d`, `x.s`) and `dd` room for `nb` values;
        // every access below is at a block `b < nb` (eight at a time only while `b + 8 ≤ nb`).
        unsafe {
            let (dp, mp) = (w, w.add(2 * nb));
            let mut macc = _mm256_setzero_ps();
            let mut b = 0;
            while b + 8 <= nb {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(dp.add(2 * b) as *const __m128i));
                let dx = _mm256_loadu_ps(x.d.as_ptr().add(b));
                _mm256_storeu_ps(dd.add(b), _mm256_mul_ps(dw, dx));
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(mp.add(2 * b) as *const __m128i));
                macc = _mm256_fmadd_ps(mw, _mm256_loadu_ps(x.s.as_ptr().add(b)), macc);
                b += 8;
            }
            let mut mtail = 0f32;
            while b < nb {
                *dd.add(b) = f16_avx(dp.add(2 * b)) * *x.d.get_unchecked(b);
                mtail += f16_avx(mp.add(2 * b)) * *x.s.get_unchecked(b);
                b += 1;
            }
            (macc, mtail)
        }
    }

    /// One nibble unpack (low nibbles against the block's first 16 values, high against the last
    /// 16), then `maddubs`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn block_sums_avx2(
        quants: *const u8,
        b: usize,
        xv: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees `quants` holds at least `b + 1` blocks of 16 bytes.
        let wq = unsafe { nibbles_avx2(quants.add(b * NIBBLE_BYTES)) };
        sums_unsigned_avx2(wq, xv)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        super::super::tests::check_format::<super::Q4_1>();
    }
}
