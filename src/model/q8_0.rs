//! Matrix products with Q8_0 weights (the default model's tied output head, and the re-quantised
//! copies of types without a kernel here), on the same quantised activations and rayon driver as
//! [`super::q4_1`]. candle's own Q8_0 kernel runs on a second thread pool whose workers park after
//! each call; on two cores the decoding step then waited on a worker still waking up.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::q4_1::{has_avx2, par_matmul, QuantizedRow, BLOCK};
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
        let data = q.data()?.into_owned();
        debug_assert_eq!(data.len(), rows * k / BLOCK * BLOCK_BYTES);
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
        par_matmul(x, m, self.k, self.rows, |r, xq| {
            let w = &self.data[r * nb * BLOCK_BYTES..(r + 1) * nb * BLOCK_BYTES];
            if avx2 {
                // SAFETY: AVX2, FMA and F16C were detected at run time; `w` and `xq` hold `nb` blocks.
                unsafe { dot_avx2(w, &xq, nb) }
            } else {
                dot_portable(w, &xq, nb)
            }
        })
    }
}

fn dot_portable(w: &[u8], x: &QuantizedRow, nb: usize) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(BLOCK_BYTES).take(nb).enumerate() {
        let dw = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let xq = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let dot: i32 = blk[2..]
            .iter()
            .zip(xq)
            .map(|(&w, &q)| w as i8 as i32 * q as i32)
            .sum();
        acc += dw * x.d[b] * dot as f32;
    }
    acc
}

/// Two blocks per iteration into independent accumulators; the slices must hold `nb` blocks
/// (asserted in debug builds; reads are unchecked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[u8], x: &QuantizedRow, nb: usize) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(w.len() >= nb * BLOCK_BYTES && x.q.len() >= nb * BLOCK && x.d.len() >= nb);
    let blk = |b: usize| w.as_ptr().add(b * BLOCK_BYTES);
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    while b + 2 <= nb {
        let (s0, d0) = block_avx2(blk(b), x, b);
        let (s1, d1) = block_avx2(blk(b + 1), x, b + 1);
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), s0, a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), s1, a1);
        b += 2;
    }
    if b < nb {
        let (s0, d0) = block_avx2(blk(b), x, b);
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), s0, a0);
    }
    let acc = _mm256_add_ps(a0, a1);
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    _mm_cvtss_f32(h)
}

/// Block `b` of a weight row at `blk` against the activations: eight f32 partial sums of `Σ w·x` and
/// the product of the two scales. maddubs wants one unsigned operand, so it multiplies |w| by x
/// carrying w's sign.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_avx2(
    blk: *const u8,
    x: &QuantizedRow,
    b: usize,
) -> (std::arch::x86_64::__m256, f32) {
    use std::arch::x86_64::*;
    let dw = f16::from_bits((blk as *const u16).read_unaligned()).to_f32();
    let wq = _mm256_loadu_si256(blk.add(2) as *const __m256i);
    let xq = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
    let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
    let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    (sums, dw * *x.d.get_unchecked(b))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_avx2(w: &[u8], x: &QuantizedRow, nb: usize) -> f32 {
    dot_portable(w, x, nb)
}

#[cfg(test)]
mod tests {
    use super::super::q4_1::quantize_rows;
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_dequantised_product_and_portable_kernel() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, 96), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let wd = q.dequantize(&dev).unwrap();
        let mat = Q80Matrix::from_qtensor(&q).unwrap().unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 96), &dev).unwrap();
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
        let xq = quantize_rows(&xs, 1, 96);
        let row = QuantizedRow {
            q: &xq.q,
            d: &xq.d,
            s: &xq.s,
        };
        for (r, wr) in mat.data.chunks(3 * BLOCK_BYTES).enumerate() {
            let p = dot_portable(wr, &row, 3);
            assert!(
                (p - got[r]).abs() <= 1e-4 * scale,
                "row {r}: {p} vs {}",
                got[r]
            );
        }
    }
}
