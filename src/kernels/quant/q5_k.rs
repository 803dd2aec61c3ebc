//! Q5_K: Q4_K's super-blocks of 256 (f16 `d`, f16 `dmin`, eight 6-bit scales and minimums) with
//! 5-bit values (32 bytes of fifth bits, then the nibbles); sub-block `s` of 32 has
//! `w = (d·sc_s)·q − dmin·m_s`. Repacked per row into blocks of 32: all `d·sc` (f32), all `dmin·m`
//! (f32), then each block's 5-bit values in Q5_0's layout.

use candle_core::quantized::GgmlDType;

use super::parts::{dot_values, f32_at, five_bit, push_five_bits, repack_k_row, FIVE_BIT_BYTES};
#[cfg(target_arch = "x86_64")]
use super::parts::{f32_scales_mins_avx2, five_bits_avx2, sums_unsigned_avx2};
use super::{BlockFormat, QuantizedRow, BLOCK};

/// The Q5_K block format.
pub(crate) struct Q5K;

/// Bytes of a ggml super-block: `d`, `dmin`, twelve bytes of scales, 32 of fifth bits, 128 of
/// nibbles.
const SUPER_BYTES: usize = 176;

/// Sub-block `s` of a super-block: nibbles as Q4_K's, the fifth bit of value `l` in bit `s` of
/// `qh[l]`.
fn values(sb: &[u8], s: usize) -> [u8; BLOCK] {
    let (qh, qs) = (&sb[16..48], &sb[48 + 32 * (s / 2)..]);
    std::array::from_fn(|l| {
        let low = (qs[l] >> (4 * (s % 2))) & 0x0F;
        low | ((qh[l] >> s) & 1) << 4
    })
}

impl BlockFormat for Q5K {
    const DTYPE: GgmlDType = GgmlDType::Q5K;
    const BLOCK_BYTES: usize = 8 + FIVE_BIT_BYTES;
    const SCALE_BYTES: usize = 8;
    const HAS_MIN: bool = true;

    fn repack_row(row: &[u8], out: &mut Vec<u8>) {
        repack_k_row(row, SUPER_BYTES, values, push_five_bits, out)
    }

    fn dot_block(w: &[u8], nb: usize, b: usize, x: &QuantizedRow) -> f32 {
        let (scales, quants) = w.split_at(8 * nb);
        let qs = &quants[b * FIVE_BIT_BYTES..(b + 1) * FIVE_BIT_BYTES];
        let dot = dot_values(|j| five_bit(qs, j) as i32, &x.q[b * BLOCK..]);
        f32_at(scales, b) * x.d[b] * dot as f32 - f32_at(scales, nb + b) * x.s[b]
    }

    #[cfg(test)]
    fn dequantize_block(w: &[u8], nb: usize, b: usize, out: &mut [f32]) {
        let (scales, quants) = w.split_at(8 * nb);
        let (d, m) = (f32_at(scales, b), f32_at(scales, nb + b));
        let qs = &quants[b * FIVE_BIT_BYTES..(b + 1) * FIVE_BIT_BYTES];
        for (j, o) in out.iter_mut().enumerate() {
            *o = d * five_bit(qs, j) as f32 - m;
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
        // SAFETY: the trait's contract, which is `f32_scales_mins_avx2`'s: the row starts with
        // `nb` f32 scales, then `nb` f32 minimums.
        unsafe { f32_scales_mins_avx2(w, x, nb, dd) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn block_sums_avx2(
        quants: *const u8,
        b: usize,
        xv: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees `quants` holds at least `b + 1` blocks of 20 bytes.
        let wq = unsafe { five_bits_avx2(quants.add(b * FIVE_BIT_BYTES)) };
        sums_unsigned_avx2(wq, xv)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        super::super::tests::check_format::<super::Q5K>();
    }
}
