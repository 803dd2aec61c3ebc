//! Matrix products with Q4_1 weights, for llama.cpp-style decoding of GGUF models such as the default
//! SmolLM2 file.
//!
//! candle has no SIMD kernel for Q4_1 on x86, so this module carries one: the activations are quantised
//! per 32-block to 8 bits (scale `d_x`, sum `s_x`), as ggml's Q8_1, and each block's dot product is
//! `d_w·d_x·Σ q_w q_x + m_w·s_x`. AVX2 when the CPU has it, portable code otherwise. The blocks are
//! regrouped per row at load (scales first, then nibbles), and products run on the decoding
//! [`Team`].

use half::f16;

use candle_core::quantized::{GgmlDType, QTensor};

use super::cpu;
use super::team::{SharedOut, Team};
use crate::Result;

/// Values per quantisation block.
pub(super) const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 20;

/// A (rows, k) weight matrix stored as ggml Q4_1 blocks, row-major.
pub struct Q41Matrix {
    rows: usize,
    k: usize,
    data: Vec<u8>,
}

/// Activations quantised per 32-block: scales, scaled sums and 8-bit values.
pub(super) struct QuantizedRows {
    /// Per block: the scale.
    pub d: Vec<f32>,
    /// Per block: the scale times the sum of the values.
    pub s: Vec<f32>,
    /// The 8-bit values.
    pub q: Vec<i8>,
}

impl Q41Matrix {
    /// The Q4_1 blocks of a 2-D `QTensor`, or `None` for other types and shapes.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        if q.dtype() != GgmlDType::Q4_1 {
            return Ok(None);
        }
        let dims = q.shape().dims();
        let (rows, k) = match dims {
            [r, c] if c % BLOCK == 0 => (*r, *c),
            _ => return Ok(None),
        };
        let blocks = q.data()?;
        debug_assert_eq!(blocks.len(), rows * k / BLOCK * BLOCK_BYTES);
        Ok(Some(Q41Matrix {
            rows,
            k,
            data: repack(&blocks, k / BLOCK),
        }))
    }

    /// Stacks matrices with the same `k` along the output rows.
    pub fn concat(parts: &[&Q41Matrix]) -> Option<Self> {
        let k = parts.first()?.k;
        if parts.iter().any(|p| p.k != k) {
            return None;
        }
        Some(Q41Matrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            k,
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
        })
    }

    /// Number of output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x · Wᵀ` for `m` input rows of length `k` (row-major); returns `m × rows`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let nb = self.k / BLOCK;
        let avx2 = cpu::has_avx2();
        let row_bytes = nb * BLOCK_BYTES;
        par_matmul(x, m, self.k, self.rows, |r0, r1, xq, out| {
            let w = &self.data[r0 * row_bytes..r1 * row_bytes];
            if avx2 && nb <= MAX_AVX2_BLOCKS {
                // SAFETY: AVX2, FMA and F16C were detected at run time; `w` holds `r1 - r0` rows
                // of `nb` blocks, `xq` one row of `nb` blocks, `out` `r1 - r0` values.
                unsafe { rows_avx2(w, nb, xq, out) }
            } else {
                for (o, wr) in out.iter_mut().zip(w.chunks(row_bytes)) {
                    *o = dot_portable(wr, xq, nb);
                }
            }
        })
    }
}

/// Blocks per row up to which the AVX2 kernels keep their per-block scales on the stack
/// (k ≤ 16384); longer rows take the portable kernel.
pub(super) const MAX_AVX2_BLOCKS: usize = 512;

/// ggml's Q4_1 blocks (`d`, `m`, 16 bytes of nibbles each) regrouped per row as all `d`s, all `m`s,
/// then all nibbles, so the kernel converts eight scales with one instruction.
fn repack(blocks: &[u8], nb: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.len());
    for row in blocks.chunks(nb * BLOCK_BYTES) {
        let blks = || row.chunks(BLOCK_BYTES);
        blks().for_each(|b| out.extend_from_slice(&b[0..2]));
        blks().for_each(|b| out.extend_from_slice(&b[2..4]));
        blks().for_each(|b| out.extend_from_slice(&b[4..]));
    }
    out
}

/// One activation row quantised per 32-block: 8-bit values, scales and scaled sums.
pub(super) struct QuantizedRow<'a> {
    /// The 8-bit values.
    pub q: &'a [i8],
    /// Per block: the scale `d_x`.
    pub d: &'a [f32],
    /// Per block: `d_x · Σ q_x`.
    pub s: &'a [f32],
}

/// `x · Wᵀ` for `m` rows of length `k` against a `rows`-row quantised matrix, `dots(r0, r1, x_i,
/// out)` writing weight rows `r0..r1` against quantised activation row `i` into `out`; returns
/// `m × rows`. Chunks of weight rows are handed out to the decoding [`Team`] (the caller included)
/// as they finish; each chunk's rows are read once for all `m` activation rows.
pub(super) fn par_matmul(
    x: &[f32],
    m: usize,
    k: usize,
    rows: usize,
    dots: impl Fn(usize, usize, &QuantizedRow, &mut [f32]) + Sync,
) -> Vec<f32> {
    let nb = k / BLOCK;
    let xq = quantize_rows(x, m, k);
    let row = |i: usize| QuantizedRow {
        q: &xq.q[i * k..(i + 1) * k],
        d: &xq.d[i * nb..(i + 1) * nb],
        s: &xq.s[i * nb..(i + 1) * nb],
    };
    let mut out = vec![0f32; m * rows];
    let dst = SharedOut(out.as_mut_ptr());
    for_row_chunks(rows, |r0, r1| {
        for i in 0..m {
            // SAFETY: each row `r` belongs to one chunk, so `out[i·rows + r0..i·rows + r1]` is
            // this call's alone; `out` outlives the job.
            let part = unsafe { dst.slice(i * rows + r0, r1 - r0) };
            dots(r0, r1, &row(i), part);
        }
    });
    out
}

/// Weight rows per chunk of work handed to a team thread.
const ROWS_PER_CHUNK: usize = 32;

/// Runs `work(r0, r1)` over `0..rows` in chunks of at most `ROWS_PER_CHUNK` rows, on the
/// decoding [`Team`], each chunk once.
pub(super) fn for_row_chunks(rows: usize, work: impl Fn(usize, usize) + Sync) {
    let chunks = rows.div_ceil(ROWS_PER_CHUNK);
    Team::global().share(
        chunks,
        || (),
        |_, c| {
            let r0 = c * ROWS_PER_CHUNK;
            work(r0, (r0 + ROWS_PER_CHUNK).min(rows));
        },
    );
}

/// Quantises `m` rows of length `k` per 32-block to 8 bits (as ggml's Q8_1, rounding half to
/// even as its AVX2 path does).
pub(super) fn quantize_rows(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    let nb = k / BLOCK;
    let mut out = QuantizedRows {
        d: vec![0f32; m * nb],
        s: vec![0f32; m * nb],
        q: vec![0i8; m * k],
    };
    if cpu::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe { quantize_avx2(&x[..m * k], &mut out) }
    } else {
        quantize_blocks(&x[..m * k], &mut out)
    }
    out
}

/// [`quantize_blocks`] compiled for AVX2, where it vectorises.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(x: &[f32], out: &mut QuantizedRows) {
    quantize_blocks(x, out)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn quantize_avx2(x: &[f32], out: &mut QuantizedRows) {
    quantize_blocks(x, out)
}

#[inline]
fn quantize_blocks(x: &[f32], out: &mut QuantizedRows) {
    let blocks = x.chunks_exact(BLOCK).zip(out.q.chunks_exact_mut(BLOCK));
    for ((block, q), (d, s)) in blocks.zip(out.d.iter_mut().zip(out.s.iter_mut())) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (qv, &v) in q.iter_mut().zip(block) {
            let r = (v * inv).round_ties_even() as i32;
            *qv = r as i8;
            sum += r;
        }
        *d = scale;
        *s = scale * sum as f32;
    }
}

/// The f16 value at `i` of a little-endian byte slice.
pub(super) fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// One repacked row (see [`repack`]) against a quantised activation row.
fn dot_portable(w: &[u8], x: &QuantizedRow, nb: usize) -> f32 {
    let (scales, quants) = w.split_at(4 * nb);
    let mut acc = 0f32;
    for (b, qs) in quants.chunks_exact(BLOCK / 2).take(nb).enumerate() {
        let xq = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let mut dot = 0i32;
        for (j, &byte) in qs.iter().enumerate() {
            dot += (byte & 0x0F) as i32 * xq[j] as i32 + (byte >> 4) as i32 * xq[j + 16] as i32;
        }
        acc += f16_at(scales, b) * x.d[b] * dot as f32 + f16_at(scales, nb + b) * x.s[b];
    }
    acc
}

/// The scale phase of the AVX2 kernel for the row at `w`: writes `d_w·d_x` per block to `dd`
/// (eight per instruction) and returns the `m_w·s_x` terms as eight lanes plus a scalar tail.
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

/// Block `b` of the row whose nibbles start at `qp`, against the activation block `xv`: the eight
/// partial sums of `Σ q_w q_x`, as f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_sums(
    qp: *const u8,
    b: usize,
    xv: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let t = _mm_loadu_si128(qp.add(b * BLOCK / 2) as *const __m128i);
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    let wq = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
    let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xv), _mm256_set1_epi16(1));
    _mm256_cvtepi32_ps(sums)
}

/// The AVX2 kernel over consecutive rows `w` (each `nb` repacked blocks) against one activation
/// row, into `out` (one value per row): per row the scale phase, then per block one nibble unpack,
/// `maddubs` and multiply-add, in two independent chains. (Four rows interleaved were faster from
/// cache but slower streaming from memory, which is what decoding does.) `nb` ≤
/// [`MAX_AVX2_BLOCKS`]; the slices must hold what they claim (asserted in debug builds; reads are
/// unchecked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &[u8], nb: usize, x: &QuantizedRow, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let row_bytes = nb * BLOCK_BYTES;
    debug_assert!(w.len() >= out.len() * row_bytes && x.q.len() >= nb * BLOCK);
    debug_assert!(x.d.len() >= nb && x.s.len() >= nb && nb <= MAX_AVX2_BLOCKS);
    // Written by the scale phase for every block before the block phase reads it.
    let mut scratch = std::mem::MaybeUninit::<[f32; MAX_AVX2_BLOCKS]>::uninit();
    let dd = scratch.as_mut_ptr() as *mut f32;
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.as_ptr().add(r * row_bytes);
        let (m, t) = scales_avx2(row, x, nb, dd);
        let qp = row.add(4 * nb);
        let (mut a0, mut a1) = (m, _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= nb {
            let x0 = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
            let x1 = _mm256_loadu_si256(x.q.as_ptr().add((b + 1) * BLOCK) as *const __m256i);
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(*dd.add(b)), block_sums(qp, b, x0), a0);
            a1 = _mm256_fmadd_ps(
                _mm256_set1_ps(*dd.add(b + 1)),
                block_sums(qp, b + 1, x1),
                a1,
            );
            b += 2;
        }
        if b < nb {
            let x0 = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(*dd.add(b)), block_sums(qp, b, x0), a0);
        }
        *o = hsum(_mm256_add_ps(a0, a1)) + t;
    }
}

/// The f16 at `p` (unaligned), converted with F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_avx(p: *const u8) -> f32 {
    use std::arch::x86_64::*;
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn rows_avx2(w: &[u8], nb: usize, x: &QuantizedRow, out: &mut [f32]) {
    for (o, wr) in out.iter_mut().zip(w.chunks(nb * BLOCK_BYTES)) {
        *o = dot_portable(wr, x, nb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        // 3 blocks per row (scales all in the tail) and 19 (two groups of eight, then a tail).
        for k in [96, 608] {
            check_against_dequantised(k);
        }
    }

    fn check_against_dequantised(k: usize) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, k), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let wd = q.dequantize(&dev).unwrap();
        let mat = Q41Matrix::from_qtensor(&q).unwrap().unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, k), &dev).unwrap();
        let expected = x
            .matmul(&wd.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = mat.matmul(&xs, 3);
        let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in got.iter().zip(&expected) {
            // 8-bit activations: error well under 1% of the output range.
            assert!((a - b).abs() <= 0.01 * scale, "{a} vs {b}");
        }
        let xq = quantize_rows(&xs, 3, k);
        let nb = k / BLOCK;
        let row = QuantizedRow {
            q: &xq.q[..k],
            d: &xq.d[..nb],
            s: &xq.s[..nb],
        };
        for ((r, wr), g) in mat.data.chunks(nb * BLOCK_BYTES).enumerate().zip(&got) {
            let p = dot_portable(wr, &row, nb);
            assert!(
                (p - g).abs() <= 1e-4 * scale.max(1.0),
                "row {r}: {p} vs {g}"
            );
        }
        let both = Q41Matrix::concat(&[&mat, &mat]).unwrap();
        assert_eq!(both.rows(), 140);
        assert_eq!(both.matmul(&xs, 1)[70..], got[..70]);
    }
}
