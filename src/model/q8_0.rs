//! Matrix products with Q8_0 weights (the default model's tied output head, and the re-quantised
//! copies of types without a kernel here), on the same quantised activations and team driver as
//! [`super::q4_1`]. candle's own Q8_0 kernel runs on a second thread pool whose workers park after
//! each call; on two cores the decoding step then waited on a worker still waking up.

use candle_core::quantized::{GgmlDType, QTensor};

use super::cpu::has_avx2;
use super::q4_1::{f16_at, par_matmul, QuantizedRow, BLOCK, MAX_AVX2_BLOCKS};
#[cfg(target_arch = "x86_64")]
use super::q4_1::{f16_avx, hsum};
use crate::Result;

const BLOCK_BYTES: usize = 34;

/// A (rows, k) weight matrix stored as ggml Q8_0 blocks (f16 scale, 32 signed bytes), row-major.
pub struct Q80Matrix {
    rows: usize,
    k: usize,
    data: Vec<u8>,
}

impl Q80Matrix {
    /// The Q8_0 blocks of a 2-D `QTensor`, or `None` for other types and shapes.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let (rows, k) = match q.shape().dims() {
            [r, c] if q.dtype() == GgmlDType::Q8_0 && c % BLOCK == 0 => (*r, *c),
            _ => return Ok(None),
        };
        let blocks = q.data()?;
        debug_assert_eq!(blocks.len(), rows * k / BLOCK * BLOCK_BYTES);
        // Per row: all f16 scales, then all quants, so the kernel converts eight scales at once.
        let mut data = Vec::with_capacity(blocks.len());
        for row in blocks.chunks(k / BLOCK * BLOCK_BYTES) {
            row.chunks(BLOCK_BYTES)
                .for_each(|b| data.extend_from_slice(&b[..2]));
            row.chunks(BLOCK_BYTES)
                .for_each(|b| data.extend_from_slice(&b[2..]));
        }
        Ok(Some(Q80Matrix { rows, k, data }))
    }

    /// Number of output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x · Wᵀ` for `m` input rows of length `k` (row-major); returns `m × rows`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let nb = self.k / BLOCK;
        let avx2 = has_avx2();
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

fn dot_portable(w: &[u8], x: &QuantizedRow, nb: usize) -> f32 {
    let (scales, quants) = w.split_at(2 * nb);
    let mut acc = 0f32;
    for (b, qs) in quants.chunks_exact(BLOCK).take(nb).enumerate() {
        let xq = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let dot: i32 = qs
            .iter()
            .zip(xq)
            .map(|(&w, &q)| w as i8 as i32 * q as i32)
            .sum();
        acc += f16_at(scales, b) * x.d[b] * dot as f32;
    }
    acc
}

/// The scale phase for the row at `w`: `d_w·d_x` per block into `dd`, eight per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scales_avx2(w: *const u8, x: &QuantizedRow, nb: usize, dd: *mut f32) {
    use std::arch::x86_64::*;
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

/// Eight partial sums of `Σ w·x` for the weight block at `wp` against `xv`. `maddubs` wants one
/// unsigned operand, so it multiplies |w| by x carrying w's sign.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_sums(wp: *const u8, xv: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let wq = _mm256_loadu_si256(wp as *const __m256i);
    let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv, wq));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Consecutive rows `w` (each `nb` repacked blocks) against one activation row, into `out`: per
/// row the scale phase, then the blocks in two independent chains. `nb` ≤ [`MAX_AVX2_BLOCKS`]; the
/// slices must hold what they claim (asserted in debug builds; reads are unchecked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &[u8], nb: usize, x: &QuantizedRow, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let row_bytes = nb * BLOCK_BYTES;
    debug_assert!(w.len() >= out.len() * row_bytes && x.q.len() >= nb * BLOCK);
    debug_assert!(x.d.len() >= nb && nb <= MAX_AVX2_BLOCKS);
    // Written by the scale phase for every block before the block phase reads it.
    let mut scratch = std::mem::MaybeUninit::<[f32; MAX_AVX2_BLOCKS]>::uninit();
    let dd = scratch.as_mut_ptr() as *mut f32;
    let xp = x.q.as_ptr();
    macro_rules! xq {
        ($b:expr) => {
            _mm256_loadu_si256(xp.add($b * BLOCK) as *const __m256i)
        };
    }
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.as_ptr().add(r * row_bytes);
        scales_avx2(row, x, nb, dd);
        let qp = row.add(2 * nb);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= nb {
            let s0 = block_sums(qp.add(b * BLOCK), xq!(b));
            let s1 = block_sums(qp.add((b + 1) * BLOCK), xq!(b + 1));
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(*dd.add(b)), s0, a0);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(*dd.add(b + 1)), s1, a1);
            b += 2;
        }
        if b < nb {
            let s0 = block_sums(qp.add(b * BLOCK), xq!(b));
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(*dd.add(b)), s0, a0);
        }
        *o = hsum(_mm256_add_ps(a0, a1));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn rows_avx2(w: &[u8], nb: usize, x: &QuantizedRow, out: &mut [f32]) {
    for (o, wr) in out.iter_mut().zip(w.chunks(nb * BLOCK_BYTES)) {
        *o = dot_portable(wr, x, nb);
    }
}

#[cfg(test)]
mod tests {
    use super::super::q4_1::quantize_rows;
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
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let wd = q.dequantize(&dev).unwrap();
        let mat = Q80Matrix::from_qtensor(&q).unwrap().unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, k), &dev).unwrap();
        let expected = x.matmul(&wd.t().unwrap()).unwrap().flatten_all().unwrap();
        let expected = expected.to_vec1::<f32>().unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = mat.matmul(&xs, 3);
        assert_eq!(mat.rows(), 70);
        let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
        // 8-bit activations (candle's kernel also rounds their scales to f16, dsg keeps f32).
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() <= 0.01 * scale, "{a} vs {b}");
        }
        let xq = quantize_rows(&xs, 1, k);
        let row = QuantizedRow {
            q: &xq.q,
            d: &xq.d,
            s: &xq.s,
        };
        let nb = k / BLOCK;
        for (r, wr) in mat.data.chunks(nb * BLOCK_BYTES).enumerate() {
            let p = dot_portable(wr, &row, nb);
            assert!(
                (p - got[r]).abs() <= 1e-4 * scale,
                "row {r}: {p} vs {}",
                got[r]
            );
        }
    }
}
