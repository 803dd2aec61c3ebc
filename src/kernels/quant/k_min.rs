//! Q4_K and Q5_K, one format over two value layouts. Both are super-blocks of 256 values: an f16
//! `d`, an f16 `dmin`, eight 6-bit scales `sc` and minimums `m`, then the values (Q4_K: nibbles;
//! Q5_K: 32 bytes of fifth bits, then the nibbles); sub-block `s` of 32 has
//! `w = (d·sc_s)·q − dmin·m_s`. Repacked per row into blocks of 32: all `d·sc` (f32), all `dmin·m`
//! (f32), then each block's values in the layout's packing (nibbles; Q5_0's 5-bit layout), so a
//! block's dot product is Q4_1's or Q5_1's with its minimum subtracted.

use std::marker::PhantomData;

use candle_core::quantized::GgmlDType;

use super::parts::{
    dot_values, f32_at, five_bit, nibble, push_five_bits, push_nibbles, repack_k_row,
    FIVE_BIT_BYTES, NIBBLE_BYTES,
};
#[cfg(target_arch = "x86_64")]
use super::parts::{f32_scales_mins_avx2, five_bits_avx2, nibbles_avx2, sums_unsigned_avx2};
use super::{BlockFormat, QuantizedRow, BLOCK};

/// How a K-quant with scales and minimums stores its unsigned values, in ggml's super-block and
/// once repacked into blocks of 32.
pub(crate) trait ValueLayout: Send + Sync + 'static {
    /// The ggml type.
    const DTYPE: GgmlDType;
    /// Bytes of a ggml super-block.
    const SUPER_BYTES: usize;
    /// Bytes of one repacked block's values.
    const BYTES: usize;
    /// Sub-block `s` (< 8) of a ggml super-block.
    fn values(sb: &[u8], s: usize) -> [u8; BLOCK];
    /// Appends 32 values, repacked.
    fn push(v: &[u8], out: &mut Vec<u8>);
    /// Value `j` of a repacked block.
    fn value(qs: &[u8], j: usize) -> u8;
    /// A repacked block's 32 values at `p` as bytes, in value order.
    ///
    /// # Safety
    /// AVX2 is available and `p` holds [`ValueLayout::BYTES`] readable bytes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn unpack_avx2(p: *const u8) -> std::arch::x86_64::__m256i;
}

/// Q4_K's values: 32 bytes of nibbles hold sub-blocks `2i` (low) and `2i + 1`.
pub(crate) struct Nibbles;

impl ValueLayout for Nibbles {
    const DTYPE: GgmlDType = GgmlDType::Q4K;
    /// `d`, `dmin`, twelve bytes of scales, 128 of nibbles.
    const SUPER_BYTES: usize = 144;
    const BYTES: usize = NIBBLE_BYTES;

    fn values(sb: &[u8], s: usize) -> [u8; BLOCK] {
        let qs = &sb[16 + 32 * (s / 2)..];
        std::array::from_fn(|l| (qs[l] >> (4 * (s % 2))) & 0x0F)
    }

    fn push(v: &[u8], out: &mut Vec<u8>) {
        push_nibbles(v, out)
    }

    fn value(qs: &[u8], j: usize) -> u8 {
        nibble(qs, j)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn unpack_avx2(p: *const u8) -> std::arch::x86_64::__m256i {
        // SAFETY: the caller guarantees 16 readable bytes at `p`.
        unsafe { nibbles_avx2(p) }
    }
}

/// Q5_K's values: nibbles as Q4_K's, the fifth bit of value `l` of sub-block `s` in bit `s` of
/// `qh[l]`.
pub(crate) struct FiveBits;

impl ValueLayout for FiveBits {
    const DTYPE: GgmlDType = GgmlDType::Q5K;
    /// `d`, `dmin`, twelve bytes of scales, 32 of fifth bits, 128 of nibbles.
    const SUPER_BYTES: usize = 176;
    const BYTES: usize = FIVE_BIT_BYTES;

    fn values(sb: &[u8], s: usize) -> [u8; BLOCK] {
        let (qh, qs) = (&sb[16..48], &sb[48 + 32 * (s / 2)..]);
        std::array::from_fn(|l| {
            let low = (qs[l] >> (4 * (s % 2))) & 0x0F;
            low | ((qh[l] >> s) & 1) << 4
        })
    }

    fn push(v: &[u8], out: &mut Vec<u8>) {
        push_five_bits(v, out)
    }

    fn value(qs: &[u8], j: usize) -> u8 {
        five_bit(qs, j)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn unpack_avx2(p: *const u8) -> std::arch::x86_64::__m256i {
        // SAFETY: the caller guarantees 20 readable bytes at `p`.
        unsafe { five_bits_avx2(p) }
    }
}

/// A K-quant with an f32 scale and minimum per block of 32, over the value layout `L`.
pub(crate) struct ScaleMin<L>(PhantomData<L>);

/// The Q4_K block format.
pub(crate) type Q4K = ScaleMin<Nibbles>;
/// The Q5_K block format.
pub(crate) type Q5K = ScaleMin<FiveBits>;

impl<L: ValueLayout> BlockFormat for ScaleMin<L> {
    const DTYPE: GgmlDType = L::DTYPE;
    const BLOCK_BYTES: usize = 8 + L::BYTES;
    const SCALE_BYTES: usize = 8;
    const HAS_MIN: bool = true;

    fn repack_row(row: &[u8], out: &mut Vec<u8>) {
        repack_k_row(row, L::SUPER_BYTES, L::values, L::push, out)
    }

    fn dot_block(w: &[u8], nb: usize, b: usize, x: &QuantizedRow) -> f32 {
        let (scales, quants) = w.split_at(8 * nb);
        let qs = &quants[b * L::BYTES..(b + 1) * L::BYTES];
        let dot = dot_values(|j| L::value(qs, j) as i32, &x.q[b * BLOCK..]);
        f32_at(scales, b) * x.d[b] * dot as f32 - f32_at(scales, nb + b) * x.s[b]
    }

    #[cfg(test)]
    fn dequantize_block(w: &[u8], nb: usize, b: usize, out: &mut [f32]) {
        let (scales, quants) = w.split_at(8 * nb);
        let (d, m) = (f32_at(scales, b), f32_at(scales, nb + b));
        let qs = &quants[b * L::BYTES..(b + 1) * L::BYTES];
        for (j, o) in out.iter_mut().enumerate() {
            *o = d * L::value(qs, j) as f32 - m;
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
        // SAFETY: the caller guarantees `quants` holds at least `b + 1` blocks of `L::BYTES`.
        let wq = unsafe { L::unpack_avx2(quants.add(b * L::BYTES)) };
        sums_unsigned_avx2(wq, xv)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn q4_k_matches_dequantised_product_and_portable_kernel() {
        super::super::tests::check_format::<super::Q4K>();
    }

    #[test]
    fn q5_k_matches_dequantised_product_and_portable_kernel() {
        super::super::tests::check_format::<super::Q5K>();
    }
}
