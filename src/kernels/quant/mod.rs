//! Matrix products with ggml-quantised weights, for llama.cpp-style decoding of GGUF models.
//!
//! Every format is a [`BlockFormat`]: how ggml's blocks are regrouped per row at load into blocks
//! of 32 (scales first, then quants, so the AVX2 kernel converts eight scales with one
//! instruction; a K-quant's super-block of 256 becomes eight such blocks, their sub-block scales
//! worked out in f32 as ggml's dequantisation does, so they dequantise to the same values), and
//! the dot product of one weight block with one quantised activation block, portable and AVX2.
//! [`QuantMatrix`] is the one matrix over them: the activations are quantised per 32-block to 8
//! bits (scale `d_x`, scaled sum `s_x`, as ggml's Q8_1), and chunks of weight rows go to the
//! decoding [`Team`], each chunk's rows read once for all activation rows. A new format is a new impl, not a new copy of
//! the matrix loop; [`AnyQuantMatrix`] picks the format from a tensor's ggml type.
//!
//! candle has no SIMD kernel for Q4_1 on x86, and its kernels run on a second thread pool whose
//! workers park after each call (on two cores the decoding step then waited on a worker still
//! waking up), hence these.
//!
//! [`Team`]: super::team::Team

mod any;
mod k_min;
mod parts;
mod q4_1;
mod q5_0;
mod q6_k;
mod q8_0;

use std::marker::PhantomData;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::cpu;
use super::team::{for_row_chunks, SharedOut};
use crate::Result;

pub(crate) use any::AnyQuantMatrix;

/// Values per quantisation block (weights and activations).
pub(crate) const BLOCK: usize = 32;

/// Blocks per row up to which the AVX2 kernels keep their per-block scales on the stack
/// (k ≤ 16384); longer rows take the portable kernel.
const MAX_AVX2_BLOCKS: usize = 512;

/// One ggml block format: its layout once repacked per row, and its block dot products.
///
/// A repacked row of `nb` blocks of 32 holds `nb · SCALE_BYTES` bytes of scales (the layout is the
/// format's), then `nb · (BLOCK_BYTES − SCALE_BYTES)` bytes of quants, block after block. ggml's
/// blocks (`DTYPE`'s block size and type size) may be larger: a K-quant's 256 values repack to
/// eight blocks.
pub(crate) trait BlockFormat: Send + Sync + 'static {
    /// The ggml type whose blocks this format reads.
    const DTYPE: GgmlDType;
    /// Bytes of one repacked block of 32 values (scales included).
    const BLOCK_BYTES: usize;
    /// Bytes of a block's scales (and minimum), stored at the front of a repacked row.
    const SCALE_BYTES: usize;
    /// Whether blocks carry a minimum, whose `±m_w · s_x` term the AVX2 scale phase returns.
    const HAS_MIN: bool;

    /// Appends one row of ggml blocks (`row`, whole blocks of `DTYPE`), repacked: scales first,
    /// then quants.
    fn repack_row(row: &[u8], out: &mut Vec<u8>);

    /// Block `b` of the repacked row `w` (`nb` blocks) against the activation block `b` of `x`:
    /// its contribution to the row's dot product.
    fn dot_block(w: &[u8], nb: usize, b: usize, x: &QuantizedRow) -> f32;

    /// Block `b` of the repacked row `w` (`nb` blocks) as `BLOCK` f32 values.
    #[cfg(test)]
    fn dequantize_block(w: &[u8], nb: usize, b: usize, out: &mut [f32]);

    /// The AVX2 scale phase of the row at `w` (`nb` blocks): writes `d_w·d_x` per block to `dd`
    /// and returns the minimum terms as eight lanes plus a scalar tail (zeros without a minimum).
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available; `w` holds a repacked row of `nb` blocks, `x` `nb` blocks,
    /// `dd` room for `nb` values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn scales_avx2(
        w: *const u8,
        x: &QuantizedRow,
        nb: usize,
        dd: *mut f32,
    ) -> (std::arch::x86_64::__m256, f32);

    /// The eight partial sums of `Σ q_w q_x` of block `b` of the quants at `quants` against the
    /// activation block `xv`, as f32.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available; `quants` holds at least `b + 1` blocks of quants.
    #[cfg(target_arch = "x86_64")]
    unsafe fn block_sums_avx2(
        quants: *const u8,
        b: usize,
        xv: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256;
}

/// A (rows, k) weight matrix of `F` blocks, repacked per row (see [`BlockFormat`]).
pub(crate) struct QuantMatrix<F> {
    rows: usize,
    k: usize,
    data: Vec<u8>,
    format: PhantomData<F>,
}

impl<F: BlockFormat> QuantMatrix<F> {
    /// The blocks of a 2-D `QTensor` of type `F::DTYPE` whose rows are whole blocks, or `None`
    /// for other types and shapes.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let ggml_block = F::DTYPE.block_size();
        let (rows, k) = match q.shape().dims() {
            [r, c] if q.dtype() == F::DTYPE && c % ggml_block == 0 => (*r, *c),
            _ => return Ok(None),
        };
        let blocks = q.data()?;
        let row_bytes = k / ggml_block * F::DTYPE.type_size();
        debug_assert_eq!(blocks.len(), rows * row_bytes);
        let mut data = Vec::with_capacity(rows * k / BLOCK * F::BLOCK_BYTES);
        blocks
            .chunks(row_bytes)
            .for_each(|row| F::repack_row(row, &mut data));
        Ok(Some(QuantMatrix {
            rows,
            k,
            data,
            format: PhantomData,
        }))
    }

    /// Stacks matrices with the same `k` along the output rows.
    pub fn concat(parts: &[&Self]) -> Option<Self> {
        let k = parts.first()?.k;
        if parts.iter().any(|p| p.k != k) {
            return None;
        }
        Some(QuantMatrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            k,
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
            format: PhantomData,
        })
    }

    /// Number of output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x · Wᵀ` for `m` input rows of length `k` (row-major); returns `m × rows`. Chunks of weight
    /// rows are handed out to the decoding team (the caller included) as they finish; each
    /// chunk's rows are read once for all `m` activation rows.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (k, rows) = (self.k, self.rows);
        let nb = k / BLOCK;
        let row_bytes = nb * F::BLOCK_BYTES;
        let avx2 = cpu::has_avx2() && nb <= MAX_AVX2_BLOCKS;
        let xq = quantize_rows(x, m, k);
        let mut out = vec![0f32; m * rows];
        let dst = SharedOut(out.as_mut_ptr());
        for_row_chunks(rows, |r0, r1| {
            let w = &self.data[r0 * row_bytes..r1 * row_bytes];
            for i in 0..m {
                let xi = xq.row(i, k);
                // SAFETY: each row `r` belongs to one chunk, so `out[i·rows + r0..i·rows + r1]` is
                // this call's alone; `out` outlives the job.
                let part = unsafe { dst.slice(i * rows + r0, r1 - r0) };
                if avx2 {
                    // SAFETY: AVX2, FMA and F16C were detected at run time; `w` holds `r1 - r0`
                    // rows of `nb ≤ MAX_AVX2_BLOCKS` blocks, `xi` one row of `nb` blocks.
                    unsafe { rows_avx2::<F>(w, nb, &xi, part) }
                } else {
                    for (o, wr) in part.iter_mut().zip(w.chunks(row_bytes)) {
                        *o = dot_portable::<F>(wr, &xi, nb);
                    }
                }
            }
        });
        out
    }
}

/// Activations quantised per 32-block: scales, scaled sums and 8-bit values.
pub(crate) struct QuantizedRows {
    /// Per block: the scale.
    pub d: Vec<f32>,
    /// Per block: the scale times the sum of the values.
    pub s: Vec<f32>,
    /// The 8-bit values.
    pub q: Vec<i8>,
}

impl QuantizedRows {
    /// Row `i` of rows of length `k`.
    pub fn row(&self, i: usize, k: usize) -> QuantizedRow<'_> {
        let nb = k / BLOCK;
        QuantizedRow {
            q: &self.q[i * k..(i + 1) * k],
            d: &self.d[i * nb..(i + 1) * nb],
            s: &self.s[i * nb..(i + 1) * nb],
        }
    }
}

/// One activation row quantised per 32-block: 8-bit values, scales and scaled sums.
pub(crate) struct QuantizedRow<'a> {
    /// The 8-bit values.
    pub q: &'a [i8],
    /// Per block: the scale `d_x`.
    pub d: &'a [f32],
    /// Per block: `d_x · Σ q_x`.
    pub s: &'a [f32],
}

/// Quantises `m` rows of length `k` per 32-block to 8 bits (as ggml's Q8_1, rounding half to
/// even as its AVX2 path does).
pub(crate) fn quantize_rows(x: &[f32], m: usize, k: usize) -> QuantizedRows {
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

/// One repacked row against a quantised activation row, block by block.
fn dot_portable<F: BlockFormat>(w: &[u8], x: &QuantizedRow, nb: usize) -> f32 {
    let mut acc = 0f32;
    for b in 0..nb {
        acc += F::dot_block(w, nb, b, x);
    }
    acc
}

/// The AVX2 kernel over consecutive rows `w` (each `nb` repacked blocks) against one activation
/// row, into `out` (one value per row): per row the scale phase, then per block one unpack,
/// `maddubs` and multiply-add, in two independent chains. (Four rows interleaved were faster from
/// cache but slower streaming from memory, which is what decoding does.) `nb` ≤
/// [`MAX_AVX2_BLOCKS`]; the slices must hold what they claim (asserted in debug builds; reads are
/// unchecked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<F: BlockFormat>(w: &[u8], nb: usize, x: &QuantizedRow, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let row_bytes = nb * F::BLOCK_BYTES;
    debug_assert!(w.len() >= out.len() * row_bytes && x.q.len() >= nb * BLOCK);
    debug_assert!(x.d.len() >= nb && x.s.len() >= nb && nb <= MAX_AVX2_BLOCKS);
    // Written by the scale phase for every block before the block phase reads it.
    let mut scratch = std::mem::MaybeUninit::<[f32; MAX_AVX2_BLOCKS]>::uninit();
    let dd = scratch.as_mut_ptr() as *mut f32;
    let xp = x.q.as_ptr();
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: AVX2, FMA and F16C are enabled here. The caller guarantees `w` holds
        // `out.len()` repacked rows of `nb` blocks (`F::SCALE_BYTES · nb` of scales, then the
        // quants) and `x` `nb` blocks, so `row`, `qp` and every block `b < nb` read below are in
        // bounds, as `F::scales_avx2` and `F::block_sums_avx2` require; `dd` has room for
        // `nb ≤ MAX_AVX2_BLOCKS` values, each written by the scale phase before it is read.
        unsafe {
            let row = w.as_ptr().add(r * row_bytes);
            let (m, t) = F::scales_avx2(row, x, nb, dd);
            let qp = row.add(F::SCALE_BYTES * nb);
            let (mut a0, mut a1) = (m, _mm256_setzero_ps());
            let mut b = 0;
            while b + 2 <= nb {
                let x0 = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
                let x1 = _mm256_loadu_si256(xp.add((b + 1) * BLOCK) as *const __m256i);
                let s0 = F::block_sums_avx2(qp, b, x0);
                let s1 = F::block_sums_avx2(qp, b + 1, x1);
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(*dd.add(b)), s0, a0);
                a1 = _mm256_fmadd_ps(_mm256_set1_ps(*dd.add(b + 1)), s1, a1);
                b += 2;
            }
            if b < nb {
                let x0 = _mm256_loadu_si256(xp.add(b * BLOCK) as *const __m256i);
                let s0 = F::block_sums_avx2(qp, b, x0);
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(*dd.add(b)), s0, a0);
            }
            let sum = hsum(_mm256_add_ps(a0, a1));
            *o = if F::HAS_MIN { sum + t } else { sum };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn rows_avx2<F: BlockFormat>(w: &[u8], nb: usize, x: &QuantizedRow, out: &mut [f32]) {
    for (o, wr) in out.iter_mut().zip(w.chunks(nb * F::BLOCK_BYTES)) {
        *o = dot_portable::<F>(wr, x, nb);
    }
}

/// The f16 value at `i` of a little-endian byte slice.
fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// The f16 at `p` (unaligned), converted with F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_avx(p: *const u8) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let bits = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Checks `F`'s matrix against candle's dequantised product, the portable kernel against the
    /// one `matmul` ran, the repacked blocks' dequantisation against candle's (bit for bit), and
    /// `concat`: for 3 blocks per row (scales all in the tail) and 19 (two groups of eight, then a
    /// tail); K-quants (super-blocks of 256) for 8, 40 and 64 blocks per row.
    pub(super) fn check_format<F: BlockFormat>() {
        let ks: &[usize] = match F::DTYPE.block_size() {
            BLOCK => &[96, 608],
            _ => &[256, 1280, 2048],
        };
        for &k in ks {
            check_against_dequantised::<F>(k);
        }
    }

    fn check_against_dequantised<F: BlockFormat>(k: usize) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, k), &dev).unwrap();
        let q = QTensor::quantize(&w, F::DTYPE).unwrap();
        let wd = q.dequantize(&dev).unwrap();
        let mat = QuantMatrix::<F>::from_qtensor(&q).unwrap().unwrap();
        assert_eq!(mat.rows(), 70);
        let x = Tensor::randn(0f32, 1.0, (3, k), &dev).unwrap();
        let expected = x.matmul(&wd.t().unwrap()).unwrap().flatten_all().unwrap();
        let expected = expected.to_vec1::<f32>().unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = mat.matmul(&xs, 3);
        let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in got.iter().zip(&expected) {
            // 8-bit activations: error well under 1% of the output range.
            assert!((a - b).abs() <= 0.01 * scale, "{a} vs {b}");
        }
        let xq = quantize_rows(&xs, 3, k);
        let nb = k / BLOCK;
        let rows = mat.data.chunks(nb * F::BLOCK_BYTES);
        for ((r, wr), g) in rows.enumerate().zip(&got) {
            let p = dot_portable::<F>(wr, &xq.row(0, k), nb);
            assert!(
                (p - g).abs() <= 1e-4 * scale.max(1.0),
                "row {r}: {p} vs {g}"
            );
        }
        let wd = wd.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut block = [0f32; BLOCK];
        for (r, wr) in mat.data.chunks(nb * F::BLOCK_BYTES).enumerate() {
            for b in 0..nb {
                F::dequantize_block(wr, nb, b, &mut block);
                let at = r * k + b * BLOCK;
                assert_eq!(block[..], wd[at..at + BLOCK], "row {r}, block {b}");
            }
        }
        let both = QuantMatrix::concat(&[&mat, &mat]).unwrap();
        assert_eq!(both.rows(), 140);
        assert_eq!(both.matmul(&xs, 1)[70..], got[..70]);
    }
}
