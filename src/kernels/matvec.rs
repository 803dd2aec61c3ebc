//! f32 products of the few activation rows of a decoding step with a weight matrix (`x · Wᵀ`), on
//! the decoding [`Team`]: the f32 counterpart of the quantised kernels. Each weight row is read once
//! and dotted with every activation row while it is in cache.
//!
//! [`Team`]: super::team::Team

use candle_core::{Storage, Tensor};

use super::team::{for_row_chunks, SharedOut};
use crate::{Error, Result};

/// `x · Wᵀ` for `m` rows `x` (m × k, row-major) and a contiguous f32 CPU tensor `weight` (rows × k);
/// returns `m × rows`.
pub(crate) fn matmul_f32(weight: &Tensor, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let (rows, k) = weight.dims2()?;
    debug_assert_eq!(x.len(), m * k);
    with_f32_slice(weight, |w| {
        let mut out = vec![0f32; m * rows];
        let dst = SharedOut(out.as_mut_ptr());
        for_row_chunks(rows, |r0, r1| {
            for r in r0..r1 {
                let wr = &w[r * k..(r + 1) * k];
                for i in 0..m {
                    let v = dot_f32(wr, &x[i * k..(i + 1) * k]);
                    // SAFETY: row `r` belongs to one chunk only; `out` outlives the job.
                    unsafe { dst.write(i * rows + r, v) };
                }
            }
        });
        out
    })
}

/// Runs `f` on the values of a contiguous f32 CPU tensor, without copying them.
pub(crate) fn with_f32_slice<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Err(Error::Invalid(
            "dsg's f32 kernels need contiguous CPU tensors".into(),
        ));
    };
    Ok(f(&cpu.as_slice::<f32>()?[start..end]))
}

/// Rows `ids` of a contiguous f32 CPU matrix `table` (an embedding), concatenated.
pub(crate) fn gather_rows(table: &Tensor, ids: impl Iterator<Item = usize>) -> Result<Vec<f32>> {
    let (_, d) = table.dims2()?;
    with_f32_slice(table, |t| {
        let mut out = Vec::new();
        for id in ids {
            out.extend_from_slice(&t[id * d..(id + 1) * d]);
        }
        out
    })
}

/// [`dot`], with AVX2 when the CPU has it.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    if super::cpu::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe { dot_avx2(a, b) }
    } else {
        dot(a, b)
    }
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
fn dot(a: &[f32], b: &[f32]) -> f32 {
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
        let got = matmul_f32(&w, &xs, 3).unwrap();
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }
        // More rows than one chunk of work.
        let x = Tensor::randn(0f32, 1.0, (37, 45), &dev).unwrap();
        let expected = x.matmul(&w.t().unwrap()).unwrap();
        let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = matmul_f32(&w, &xs, 37).unwrap();
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }
        // A non-contiguous weight is refused, not read wrongly.
        assert!(matmul_f32(&w.t().unwrap(), &xs[..77], 1).is_err());
    }
}
