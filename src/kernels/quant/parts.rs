//! Pieces several block formats share: the 32-value quant layouts (nibbles; 5-bit values as high
//! bits plus nibbles) with their portable and AVX2 unpacking, the two scale layouts (an f16 scale
//! per block; an f32 scale and an f32 minimum per block) with their AVX2 scale phases, and the
//! 6-bit scales and minimums of Q4_K and Q5_K.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::f16_avx;
use super::{f16_at, QuantizedRow, BLOCK};

/// Bytes of one block's nibbles: byte `j` holds value `j` (low nibble) and value `j + 16` (high).
pub(super) const NIBBLE_BYTES: usize = BLOCK / 2;
/// Bytes of one block's 5-bit values: bit `j` of four little-endian bytes is value `j`'s fifth
/// bit (as Q5_0's `qh`), then the nibbles.
pub(super) const FIVE_BIT_BYTES: usize = 4 + NIBBLE_BYTES;

/// Appends 32 values (their low four bits) as nibbles.
pub(super) fn push_nibbles(v: &[u8], out: &mut Vec<u8>) {
    out.extend((0..NIBBLE_BYTES).map(|j| (v[j] & 0x0F) | (v[j + 16] & 0x0F) << 4));
}

/// Appends 32 values below 32 as 5-bit values.
pub(super) fn push_five_bits(v: &[u8], out: &mut Vec<u8>) {
    let qh = (0..BLOCK).fold(0u32, |h, j| h | (((v[j] >> 4) & 1) as u32) << j);
    out.extend_from_slice(&qh.to_le_bytes());
    push_nibbles(v, out);
}

/// Value `j` of a block's nibbles.
pub(super) fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < NIBBLE_BYTES {
        qs[j] & 0x0F
    } else {
        qs[j - NIBBLE_BYTES] >> 4
    }
}

/// Value `j` of a block's 5-bit values.
pub(super) fn five_bit(p: &[u8], j: usize) -> u8 {
    let qh = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    nibble(&p[4..], j) | (((qh >> j) & 1) << 4) as u8
}

/// `Σ value(j)·x[j]` over a block.
pub(super) fn dot_values(value: impl Fn(usize) -> i32, xq: &[i8]) -> i32 {
    (0..BLOCK).map(|j| value(j) * xq[j] as i32).sum()
}

/// The f32 value at `i` of a little-endian byte slice.
pub(super) fn f32_at(bytes: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([
        bytes[4 * i],
        bytes[4 * i + 1],
        bytes[4 * i + 2],
        bytes[4 * i + 3],
    ])
}

/// Scale `j` and minimum `j` (< 8) of a K-quant super-block's twelve bytes of 6-bit scales, as
/// ggml's `get_scale_min_k4`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The eight `(d·sc, dmin·m)` of a Q4_K or Q5_K super-block (f16 `d`, f16 `dmin`, twelve bytes
/// of scales), computed in f32 as ggml's dequantisation does.
fn k_scales_mins(block: &[u8]) -> [(f32, f32); 8] {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 1));
    std::array::from_fn(|j| {
        let (sc, m) = scale_min_k4(j, &block[4..16]);
        (d * sc as f32, dmin * m as f32)
    })
}

/// Appends a row's `(scale, minimum)` pairs in the f32 scale layout: all scales, then all
/// minimums.
fn push_f32_scales_mins(pairs: &[(f32, f32)], out: &mut Vec<u8>) {
    pairs.iter().for_each(|p| out.extend(p.0.to_le_bytes()));
    pairs.iter().for_each(|p| out.extend(p.1.to_le_bytes()));
}

/// A block's 32 nibbles at `p` as bytes, in value order.
///
/// # Safety
/// AVX2 is available and `p` holds [`NIBBLE_BYTES`] readable bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn nibbles_avx2(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let t = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// A block's 32 5-bit values at `p` as bytes, in value order (ggml's `bytes_from_bits_32` for
/// the high bits).
///
/// # Safety
/// AVX2 is available and `p` holds [`FIVE_BIT_BYTES`] readable bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn five_bits_avx2(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 20 readable bytes at `p`: four of high bits, then nibbles.
    let (qh, low) = unsafe { ((p as *const u32).read_unaligned(), nibbles_avx2(p.add(4))) };
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    // Byte `j` holds byte `j / 8` of `qh`; all bits but `j % 8` set, it is all ones iff bit `j`.
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread);
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let high = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi8(-1));
    _mm256_or_si256(low, _mm256_and_si256(high, _mm256_set1_epi8(0x10)))
}

/// The eight partial sums (as f32) of `Σ w·x` for unsigned weight bytes (below 128).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn sums_unsigned_avx2(w: __m256i, x: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(w, x);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// The eight partial sums (as f32) of `Σ w·x` for signed weight bytes: `maddubs` wants one
/// unsigned operand, so it multiplies |w| by x carrying w's sign.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn sums_signed_avx2(w: __m256i, x: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// The scale phase of formats whose row starts with one f16 scale per block and which have no
/// minimum: `dd[b] = d_w·d_x`.
///
/// # Safety
/// As [`super::BlockFormat::scales_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn f16_scales_avx2(
    w: *const u8,
    x: &QuantizedRow,
    nb: usize,
    dd: *mut f32,
) -> (__m256, f32) {
    // SAFETY: the caller guarantees `w` starts with `nb` f16 scales, `x` has `nb` blocks and
    // `dd` room for `nb` values; every access below is at a block `b < nb` (eight at a time only
    // while `b + 8 ≤ nb`).
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

/// The scale phase of formats whose row starts with an f32 scale per block, then an f32 minimum
/// per block (`w = scale·q − minimum`): `dd[b] = scale·d_x`, and `−Σ minimum·s_x`.
///
/// # Safety
/// As [`super::BlockFormat::scales_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn f32_scales_mins_avx2(
    w: *const u8,
    x: &QuantizedRow,
    nb: usize,
    dd: *mut f32,
) -> (__m256, f32) {
    // SAFETY: the caller guarantees `w` starts with `nb` f32 scales then `nb` f32 minimums, `x`
    // has `nb` blocks and `dd` room for `nb` values; every access below is at a block `b < nb`
    // (eight at a time only while `b + 8 ≤ nb`).
    unsafe {
        let (sp, mp) = (w as *const f32, w.add(4 * nb) as *const f32);
        let mut macc = _mm256_setzero_ps();
        let mut b = 0;
        while b + 8 <= nb {
            let dx = _mm256_loadu_ps(x.d.as_ptr().add(b));
            _mm256_storeu_ps(dd.add(b), _mm256_mul_ps(_mm256_loadu_ps(sp.add(b)), dx));
            let sx = _mm256_loadu_ps(x.s.as_ptr().add(b));
            macc = _mm256_fnmadd_ps(_mm256_loadu_ps(mp.add(b)), sx, macc);
            b += 8;
        }
        let mut mtail = 0f32;
        while b < nb {
            *dd.add(b) = sp.add(b).read_unaligned() * *x.d.get_unchecked(b);
            mtail -= mp.add(b).read_unaligned() * *x.s.get_unchecked(b);
            b += 1;
        }
        (macc, mtail)
    }
}

/// Repacks a row of Q4_K or Q5_K super-blocks (`super_bytes` each): the f32 scale layout of their
/// `(d·sc, dmin·m)`, then each sub-block's 32 values (`values(super_block, s)`, `s` < 8) packed
/// by `pack`.
pub(super) fn repack_k_row(
    row: &[u8],
    super_bytes: usize,
    values: impl Fn(&[u8], usize) -> [u8; BLOCK],
    pack: fn(&[u8], &mut Vec<u8>),
    out: &mut Vec<u8>,
) {
    let supers = row.chunks_exact(super_bytes);
    let pairs: Vec<(f32, f32)> = supers.clone().flat_map(k_scales_mins).collect();
    push_f32_scales_mins(&pairs, out);
    supers.for_each(|sb| (0..8).for_each(|s| pack(&values(sb, s), out)));
}
