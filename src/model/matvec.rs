//! f32 products of activation rows with a weight matrix (`x · Wᵀ`) on the [`Team`]: dot products for
//! the few rows of a decoding step (each weight read once), and for longer inputs the `gemm` crate's
//! single-threaded kernel on a share of the weight rows per team thread. candle's own product runs
//! `gemm` on rayon, which on two cores scaled to only 1.3–1.5× one thread here.
//!
//! [`Team`]: super::team::Team

use candle_core::{Storage, Tensor};

use std::sync::atomic::{AtomicUsize, Ordering};

use super::q4_1::for_row_chunks;
use super::team::{SharedOut, Team};
use crate::{Error, Result};

/// Rows from which [`matmul_f32`] switches from dot products to `gemm`.
const GEMM_ROWS: usize = 4;

/// A multiple of every row-tile size of `gemm`'s f32 kernels.
const GEMM_ROW_TILE: usize = 24;

/// `x · Wᵀ` for `m` rows `x` (m × k, row-major) and a contiguous f32 CPU tensor `weight` (rows × k);
/// returns `m × rows`. With `always_gemm`, even a few rows go through `gemm`, so that each row's
/// result does not depend on how many rows came with it (batch invariance of the forward pass);
/// otherwise fewer than `GEMM_ROWS` rows take dot products, which is faster.
pub(super) fn matmul_f32(
    weight: &Tensor,
    x: &[f32],
    m: usize,
    always_gemm: bool,
) -> Result<Vec<f32>> {
    let (rows, k) = weight.dims2()?;
    let (storage, layout) = weight.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Err(Error::Invalid(
            "f32 products on the team need contiguous CPU weights".into(),
        ));
    };
    let w = &cpu.as_slice::<f32>()?[start..end];
    debug_assert_eq!(w.len(), rows * k);
    debug_assert_eq!(x.len(), m * k);
    if always_gemm {
        // `gemm` tiles the rows by a few (6 with AVX2, 8 with AVX-512) and the last, partial tile
        // takes another kernel that sums in another order; padding to full tiles keeps each row's
        // result the same whatever the number of rows.
        let padded = m.next_multiple_of(GEMM_ROW_TILE);
        if padded == m {
            return Ok(gemm_f32(x, m, k, w, rows));
        }
        let mut xp = x.to_vec();
        xp.resize(padded * k, 0.0);
        let mut y = gemm_f32(&xp, padded, k, w, rows);
        y.truncate(m * rows);
        return Ok(y);
    }
    if m >= GEMM_ROWS {
        return Ok(gemm_f32(x, m, k, w, rows));
    }
    let mut out = vec![0f32; m * rows];
    let dst = SharedOut(out.as_mut_ptr());
    let avx2 = super::q4_1::has_avx2();
    for_row_chunks(rows, |r0, r1| {
        for r in r0..r1 {
            let wr = &w[r * k..(r + 1) * k];
            for i in 0..m {
                let xi = &x[i * k..(i + 1) * k];
                let v = if avx2 {
                    // SAFETY: AVX2 and FMA were detected at run time.
                    unsafe { dot_avx2(wr, xi) }
                } else {
                    dot(wr, xi)
                };
                // SAFETY: row `r` belongs to one chunk only; `out` outlives the job.
                unsafe { dst.write(i * rows + r, v) };
            }
        }
    });
    Ok(out)
}

/// `x · Wᵀ` with `gemm`: each team thread takes chunks of `W`'s rows (output columns).
fn gemm_f32(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    let dst = SharedOut(out.as_mut_ptr());
    let team = Team::global();
    // A few chunks per thread balance the threads when one is slowed; 16 columns keep the
    // kernel's register tiles whole.
    let chunk = n.div_ceil(team.size() * 4).next_multiple_of(16).min(n);
    let chunks = n.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let work = |c: usize| {
        let (j0, j1) = (c * chunk, ((c + 1) * chunk).min(n));
        // SAFETY: dst has m × n elements, of which this call writes columns j0..j1 only (row
        // stride n); lhs is m × k row-major; rhs = W[j0..j1]ᵀ is k × (j1 - j0) with column stride k.
        unsafe {
            gemm::gemm(
                m,
                j1 - j0,
                k,
                dst.at(j0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr().add(j0 * k),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    if team.size() == 1 || chunks == 1 {
        (0..chunks).for_each(work);
    } else {
        team.run(&|_| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= chunks {
                break;
            }
            work(c);
        });
    }
    out
}

/// Rows `ids` of a contiguous f32 CPU matrix `table` (an embedding), concatenated.
pub(super) fn gather_rows(table: &Tensor, ids: impl Iterator<Item = usize>) -> Result<Vec<f32>> {
    let (_, d) = table.dims2()?;
    let (storage, layout) = table.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Err(Error::Invalid(
            "the single-token step needs a contiguous CPU embedding".into(),
        ));
    };
    let t = &cpu.as_slice::<f32>()?[start..end];
    let mut out = Vec::new();
    for id in ids {
        out.extend_from_slice(&t[id * d..(id + 1) * d]);
    }
    Ok(out)
}

/// [`dot`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b)
}

/// Dot product with eight independent accumulators, so it vectorises.
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        let (x, y): (&[f32; 8], &[f32; 8]) = (x.try_into().expect("8"), y.try_into().expect("8"));
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (77, 45), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 45), &dev).unwrap();
        let expected = x.matmul(&w.t().unwrap()).unwrap();
        let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = matmul_f32(&w, &xs, 3, false).unwrap();
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }
        // Enough rows for gemm, and an output width that is not a multiple of the chunk.
        let x = Tensor::randn(0f32, 1.0, (37, 45), &dev).unwrap();
        let expected = x.matmul(&w.t().unwrap()).unwrap();
        let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = matmul_f32(&w, &xs, 37, false).unwrap();
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }
        // A non-contiguous weight is refused, not read wrongly.
        assert!(matmul_f32(&w.t().unwrap(), &xs[..77], 1, false).is_err());
    }
}
