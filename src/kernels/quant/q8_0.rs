//! Q8_0 (the default model's tied output head, and the re-quantised copies of types without a
//! kernel here): per block of 32 an f16 scale `d` and 32 signed bytes, `w = d·q`. Repacked per row
//! as all scales, then all quants.

use candle_core::quantized::GgmlDType;

#[cfg(target_arch = "x86_64")]
use super::parts::{f16_scales_avx2, sums_signed_avx2};
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
        // SAFETY: the trait's contract, which is `f16_scales_avx2`'s: the row starts with `nb`
        // f16 scales.
        unsafe { f16_scales_avx2(w, x, nb, dd) }
    }

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
        sums_signed_avx2(wq, xv)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        super::super::tests::check_format::<super::Q8_0>();
    }
}
