//! Matrix products with Q4_1 weights, for llama.cpp-style decoding of GGUF models such as the default
//! SmolLM2 file.
//!
//! candle has no SIMD kernel for Q4_1 on x86, so this module carries one: the activations are quantised
//! per 32-block to 8 bits (scale `d_x`, sum `s_x`), as ggml's Q8_1, and each block's dot product is
//! `d_w·d_x·Σ q_w q_x + m_w·s_x`. AVX2 when the CPU has it, portable code otherwise.

use half::f16;
use rayon::prelude::*;

use candle_core::quantized::{GgmlDType, QTensor};

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
        let data = q.data()?.into_owned();
        debug_assert_eq!(data.len(), rows * k / BLOCK * BLOCK_BYTES);
        Ok(Some(Q41Matrix { rows, k, data }))
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
        let avx2 = has_avx2();
        par_matmul(x, m, self.k, self.rows, |r, xq| {
            let w = &self.data[r * nb * BLOCK_BYTES..(r + 1) * nb * BLOCK_BYTES];
            if avx2 {
                // SAFETY: AVX2, FMA and F16C were detected at run time; `w` and `xq` hold `nb` blocks.
                unsafe { dot_avx2(w, xq.q, xq.d, xq.s, nb) }
            } else {
                dot_portable(w, xq.q, xq.d, xq.s, nb)
            }
        })
    }
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

/// `x · Wᵀ` for `m` rows of length `k` against a `rows`-row quantised matrix, `dot(r, x_i)` giving
/// weight row `r` against quantised activation row `i`; returns `m × rows`. Weight rows are shared
/// out over rayon's workers (unless there is only one); each task reads its rows once.
pub(super) fn par_matmul(
    x: &[f32],
    m: usize,
    k: usize,
    rows: usize,
    dot: impl Fn(usize, QuantizedRow) -> f32 + Sync,
) -> Vec<f32> {
    let nb = k / BLOCK;
    let xq = quantize_rows(x, m, k);
    let row = |i: usize| QuantizedRow {
        q: &xq.q[i * k..(i + 1) * k],
        d: &xq.d[i * nb..(i + 1) * nb],
        s: &xq.s[i * nb..(i + 1) * nb],
    };
    const ROWS_PER_TASK: usize = 32;
    let mut by_row = vec![0f32; rows * m];
    let task = |(task, dst): (usize, &mut [f32])| {
        for (j, chunk) in dst.chunks_mut(m).enumerate() {
            let r = task * ROWS_PER_TASK + j;
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = dot(r, row(i));
            }
        }
    };
    // With one thread, handing each product to rayon's lone worker would only add two context
    // switches.
    if rayon::current_num_threads() > 1 {
        let tasks = by_row.par_chunks_mut(ROWS_PER_TASK * m);
        tasks.enumerate().for_each(task);
    } else {
        by_row
            .chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(task);
    }
    if m == 1 {
        return by_row;
    }
    let mut out = vec![0f32; m * rows];
    for r in 0..rows {
        for i in 0..m {
            out[i * rows + r] = by_row[r * m + i];
        }
    }
    out
}

/// Whether the AVX2 kernels can run (AVX2, FMA and F16C).
pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Quantises `m` rows of length `k` per 32-block to 8 bits (as ggml's Q8_1).
pub(super) fn quantize_rows(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    let nb = k / BLOCK;
    let mut out = QuantizedRows {
        d: Vec::with_capacity(m * nb),
        s: Vec::with_capacity(m * nb),
        q: Vec::with_capacity(m * k),
    };
    for block in x[..m * k].chunks(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for &v in block {
            let q = (v * inv).round() as i8;
            sum += q as i32;
            out.q.push(q);
        }
        out.d.push(d);
        out.s.push(d * sum as f32);
    }
    out
}

fn block_scales(w: &[u8]) -> (f32, f32) {
    (
        f16::from_le_bytes([w[0], w[1]]).to_f32(),
        f16::from_le_bytes([w[2], w[3]]).to_f32(),
    )
}

fn dot_portable(w: &[u8], q: &[i8], d: &[f32], s: &[f32], nb: usize) -> f32 {
    let mut acc = 0f32;
    for b in 0..nb {
        let blk = &w[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        let (dw, mw) = block_scales(blk);
        let xq = &q[b * BLOCK..(b + 1) * BLOCK];
        let mut dot = 0i32;
        for (j, &byte) in blk[4..].iter().enumerate() {
            dot += (byte & 0x0F) as i32 * xq[j] as i32 + (byte >> 4) as i32 * xq[j + 16] as i32;
        }
        acc += dw * d[b] * dot as f32 + mw * s[b];
    }
    acc
}

/// Two blocks per iteration into independent accumulators, so consecutive blocks' multiply-adds do
/// not wait on each other (about 25% faster than one chain when the weights stream from memory).
/// The slices must hold `nb` blocks (asserted in debug builds; reads are unchecked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[u8], q: &[i8], d: &[f32], s: &[f32], nb: usize) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(w.len() >= nb * BLOCK_BYTES && q.len() >= nb * BLOCK);
    debug_assert!(d.len() >= nb && s.len() >= nb);
    let (wp, qp) = (w.as_ptr(), q.as_ptr());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut m0, mut m1) = (0f32, 0f32);
    let mut b = 0;
    while b + 2 <= nb {
        let (s0, dw0, mw0) = block_avx2(wp.add(b * BLOCK_BYTES), qp.add(b * BLOCK));
        let (s1, dw1, mw1) = block_avx2(wp.add((b + 1) * BLOCK_BYTES), qp.add((b + 1) * BLOCK));
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * *d.get_unchecked(b)), s0, a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(dw1 * *d.get_unchecked(b + 1)), s1, a1);
        m0 += mw0 * *s.get_unchecked(b);
        m1 += mw1 * *s.get_unchecked(b + 1);
        b += 2;
    }
    if b < nb {
        let (s0, dw0, mw0) = block_avx2(wp.add(b * BLOCK_BYTES), qp.add(b * BLOCK));
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * *d.get_unchecked(b)), s0, a0);
        m0 += mw0 * *s.get_unchecked(b);
    }
    let acc = _mm256_add_ps(a0, a1);
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    _mm_cvtss_f32(h) + m0 + m1
}

/// One Q4_1 block at `blk` against 32 quantised activations at `xq`: the eight partial sums of
/// `Σ q_w q_x` and the block's scale and minimum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_avx2(blk: *const u8, xq: *const i8) -> (std::arch::x86_64::__m256, f32, f32) {
    use std::arch::x86_64::*;
    // Both f16 scales converted in one instruction.
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
    let (dw, mw) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)));
    let low = _mm_set1_epi8(0x0F);
    let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
    let lo = _mm_and_si128(packed, low);
    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
    let wq = _mm256_set_m128i(hi, lo);
    let x = _mm256_loadu_si256(xq as *const __m256i);
    let pairs = _mm256_maddubs_epi16(wq, x);
    let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    (sums, dw, mw)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_avx2(w: &[u8], q: &[i8], d: &[f32], s: &[f32], nb: usize) -> f32 {
    dot_portable(w, q, d, s, nb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, 96), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let wd = q.dequantize(&dev).unwrap();
        let mat = Q41Matrix::from_qtensor(&q).unwrap().unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 96), &dev).unwrap();
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
        let xq = quantize_rows(&xs, 3, 96);
        let nb = 3;
        for ((r, wr), g) in mat.data.chunks(nb * BLOCK_BYTES).enumerate().zip(&got) {
            let p = dot_portable(wr, &xq.q[..96], &xq.d[..3], &xq.s[..3], nb);
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
