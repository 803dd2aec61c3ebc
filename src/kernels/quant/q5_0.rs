//! Q5_0 (Gemma-3's attention q/k and MLP gate/up in the Q4_K_M file): per block of 32 an f16
//! scale `d`, four bytes of fifth bits and 16 bytes of nibbles, `w = d·(q − 16)`. Repacked per
//! row as all scales, then all 5-bit values (ggml's own layout of them).

use candle_core::quantized::GgmlDType;

use super::parts::{dot_values, five_bit, FIVE_BIT_BYTES};
#[cfg(target_arch = "x86_64")]
use super::parts::{f16_scales_avx2, five_bits_avx2, sums_signed_avx2};
use super::{f16_at, BlockFormat, QuantizedRow, BLOCK};

/// The Q5_0 block format.
pub(crate) struct Q5_0;

impl BlockFormat for Q5_0 {
    const DTYPE: GgmlDType = GgmlDType::Q5_0;
    const BLOCK_BYTES: usize = 2 + FIVE_BIT_BYTES;
    const SCALE_BYTES: usize = 2;
    const HAS_MIN: bool = false;

    fn repack_row(row: &[u8], out: &mut Vec<u8>) {
        let blks = || row.chunks(Self::BLOCK_BYTES);
        blks().for_each(|b| out.extend_from_slice(&b[..2]));
        blks().for_each(|b| out.extend_from_slice(&b[2..]));
    }

    fn dot_block(w: &[u8], nb: usize, b: usize, x: &QuantizedRow) -> f32 {
        let (scales, quants) = w.split_at(2 * nb);
        let qs = &quants[b * FIVE_BIT_BYTES..(b + 1) * FIVE_BIT_BYTES];
        let dot = dot_values(|j| five_bit(qs, j) as i32 - 16, &x.q[b * BLOCK..]);
        f16_at(scales, b) * x.d[b] * dot as f32
    }

    #[cfg(test)]
    fn dequantize_block(w: &[u8], nb: usize, b: usize, out: &mut [f32]) {
        let (scales, quants) = w.split_at(2 * nb);
        let d = f16_at(scales, b);
        let qs = &quants[b * FIVE_BIT_BYTES..(b + 1) * FIVE_BIT_BYTES];
        for (j, o) in out.iter_mut().enumerate() {
            *o = (five_bit(qs, j) as i32 - 16) as f32 * d;
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
        // SAFETY: the trait's contract, which is `f16_scales_avx2`'s: the row starts with `nb`
        // f16 scales.
        unsafe { f16_scales_avx2(w, x, nb, dd) }
    }

    /// The 5-bit values less 16 as signed bytes, then the signed `maddubs`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn block_sums_avx2(
        quants: *const u8,
        b: usize,
        xv: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees `quants` holds at least `b + 1` blocks of 20 bytes.
        let q = unsafe { five_bits_avx2(quants.add(b * FIVE_BIT_BYTES)) };
        sums_signed_avx2(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), xv)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        super::super::tests::check_format::<super::Q5_0>();
    }
}
