//! Q6_K (Gemma-3's MLP down in the Q4_K_M file): super-blocks of 256 values, each 6-bit values
//! (128 bytes of low nibbles, 64 of high bit pairs), sixteen int8 scales `sc` and an f16 `d`;
//! sub-block `s` of 16 has `w = (d·sc_s)·(q − 32)`. Repacked per row into blocks of 32: all `d`s
//! (f16, repeated for each of a super-block's eight blocks), then per block its two scales, its
//! low nibbles and its high bit pairs. The AVX2 block sum multiplies the pair sums of each half by
//! the half's scale in integers (after `maddubs`, lanes 0–3 cover values 0–15 and 4–7 the rest),
//! so the scale phase is Q8_0's.

use candle_core::quantized::GgmlDType;

#[cfg(target_arch = "x86_64")]
use super::parts::{f16_scales_avx2, nibbles_avx2};
use super::parts::{nibble, push_nibbles, NIBBLE_BYTES};
use super::{f16_at, BlockFormat, QuantizedRow, BLOCK};

/// The Q6_K block format.
pub(crate) struct Q6K;

/// Bytes of a ggml super-block: 128 of low nibbles, 64 of high bit pairs, 16 scales, `d`.
const SUPER_BYTES: usize = 210;
/// Bytes of a repacked block's quants: two scales, the low nibbles, then eight bytes of high bit
/// pairs (bits `2t, 2t + 1` of byte `i` belong to value `i + 8t`).
const QUANT_BYTES: usize = 2 + NIBBLE_BYTES + 8;

/// Value `v` (< 256) of a super-block, as ggml's `dequantize_row_q6_K` reads it (0..64).
fn value(sb: &[u8], v: usize) -> u8 {
    let (n, t, l) = (v / 128, v % 128 / 32, v % 32);
    let ql = sb[64 * n + l + 32 * (t % 2)];
    let low = if t < 2 { ql & 0x0F } else { ql >> 4 };
    low | ((sb[128 + 32 * n + l] >> (2 * t)) & 3) << 4
}

/// Value `j` of a repacked block's quants, less 32.
fn signed(qs: &[u8], j: usize) -> i32 {
    let high = (qs[2 + NIBBLE_BYTES + j % 8] >> (2 * (j / 8))) & 3;
    (nibble(&qs[2..], j) | high << 4) as i32 - 32
}

impl BlockFormat for Q6K {
    const DTYPE: GgmlDType = GgmlDType::Q6K;
    const BLOCK_BYTES: usize = 2 + QUANT_BYTES;
    const SCALE_BYTES: usize = 2;
    const HAS_MIN: bool = false;

    fn repack_row(row: &[u8], out: &mut Vec<u8>) {
        let supers = || row.chunks_exact(SUPER_BYTES);
        supers().for_each(|sb| (0..8).for_each(|_| out.extend_from_slice(&sb[208..210])));
        for sb in supers() {
            for c in 0..8 {
                let v: [u8; BLOCK] = std::array::from_fn(|j| value(sb, 32 * c + j));
                out.extend_from_slice(&sb[192 + 2 * c..194 + 2 * c]);
                push_nibbles(&v, out);
                out.extend(
                    (0..8).map(|i| (0..4).fold(0, |h, t| h | (v[i + 8 * t] >> 4) << (2 * t))),
                );
            }
        }
    }

    fn dot_block(w: &[u8], nb: usize, b: usize, x: &QuantizedRow) -> f32 {
        let (scales, quants) = w.split_at(2 * nb);
        let qs = &quants[b * QUANT_BYTES..(b + 1) * QUANT_BYTES];
        let xq = &x.q[b * BLOCK..];
        let half = |h: usize| -> i32 {
            (16 * h..16 * h + 16)
                .map(|j| signed(qs, j) * xq[j] as i32)
                .sum()
        };
        let dot = half(0) * qs[0] as i8 as i32 + half(1) * qs[1] as i8 as i32;
        f16_at(scales, b) * x.d[b] * dot as f32
    }

    #[cfg(test)]
    fn dequantize_block(w: &[u8], nb: usize, b: usize, out: &mut [f32]) {
        let (scales, quants) = w.split_at(2 * nb);
        let d = f16_at(scales, b);
        let qs = &quants[b * QUANT_BYTES..(b + 1) * QUANT_BYTES];
        for (j, o) in out.iter_mut().enumerate() {
            *o = d * qs[j / 16] as i8 as f32 * signed(qs, j) as f32;
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

    /// The nibbles or'ed with the high bit pairs (each 64-bit lane `t` shifted by `2t`), less 32,
    /// the signed `maddubs`, then `madd` with the two halves' scales.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn block_sums_avx2(
        quants: *const u8,
        b: usize,
        xv: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees `quants` holds at least `b + 1` blocks of `QUANT_BYTES`.
        let (sc, low, high) = unsafe {
            let p = quants.add(b * QUANT_BYTES);
            let sc = (p as *const u16).read_unaligned();
            let high = (p.add(2 + NIBBLE_BYTES) as *const u64).read_unaligned();
            (sc, nibbles_avx2(p.add(2)), high)
        };
        let shifted = _mm256_srlv_epi64(
            _mm256_set1_epi64x(high as i64),
            _mm256_set_epi64x(6, 4, 2, 0),
        );
        let high = _mm256_slli_epi16(_mm256_and_si256(shifted, _mm256_set1_epi8(3)), 4);
        let q = _mm256_sub_epi8(_mm256_or_si256(low, high), _mm256_set1_epi8(32));
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q));
        let halves = _mm_set_epi8(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let scales = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(_mm_cvtsi32_si128(sc as i32), halves));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, scales))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        super::super::tests::check_format::<super::Q6K>();
    }
}
