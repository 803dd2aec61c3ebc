//! Attention probabilities: soft-cap, additive mask and softmax fused into one pass over the scores.
//!
//! On the CPU a custom kernel reads each score once (the unfused ops make four full passes over a
//! `(heads, queries, keys)` tensor, which dominated long prefills); elsewhere, and when gradients are
//! needed, the model runs the same maths as ordinary tensor ops. The CPU vector pass calls the
//! row kernel, [`softmax_in_place`], directly.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::vexp::exp_in_place;
use crate::Result;

struct MaskedSoftmax {
    softcap: Option<f32>,
    /// Queries per batch row in the scores' row order (`kv_heads * group * n`).
    rows_per_batch: usize,
    /// Queries per head group (rows of the mask per batch row).
    n: usize,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((a0, a1)), Some((m0, m1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("masked-softmax needs contiguous inputs")
        };
        let scores = &s1.as_slice::<f32>()?[a0..a1];
        let mask = &s2.as_slice::<f32>()?[m0..m1];
        let keys = *l1.dims().last().expect("rank >= 1");
        let mut out = vec![0f32; scores.len()];
        let (rows_per_batch, n, cap) = (self.rows_per_batch, self.n, self.softcap);
        out.par_chunks_mut(keys)
            .zip(scores.par_chunks(keys))
            .enumerate()
            .for_each(|(r, (dst, src))| {
                let (b, i) = (r / rows_per_batch, r % n);
                let m = &mask[(b * n + i) * keys..(b * n + i + 1) * keys];
                softmax_row(dst, src, m, cap);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// One row of [`MaskedSoftmax`]: `dst = softmax(softcap(src) + mask)`.
fn softmax_row(dst: &mut [f32], src: &[f32], mask: &[f32], cap: Option<f32>) {
    dst.copy_from_slice(src);
    softmax_in_place(dst, mask, cap);
}

/// `row = softmax(softcap(row) + mask)`; a row with no finite value becomes zeros.
pub(crate) fn softmax_in_place(row: &mut [f32], mask: &[f32], cap: Option<f32>) {
    if super::cpu::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe { softmax_avx2(row, mask, cap) }
    } else {
        softmax_plain(row, mask, cap)
    }
}

/// [`softmax_plain`] compiled for AVX2, where its max and sum loops vectorise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32], mask: &[f32], cap: Option<f32>) {
    softmax_plain(row, mask, cap)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn softmax_avx2(row: &mut [f32], mask: &[f32], cap: Option<f32>) {
    softmax_plain(row, mask, cap)
}

/// The row's passes, written so that they vectorise: eight running maxima and sums.
#[inline]
fn softmax_plain(row: &mut [f32], mask: &[f32], cap: Option<f32>) {
    match cap {
        Some(c) => {
            for (d, &mv) in row.iter_mut().zip(mask) {
                *d = (*d / c).tanh() * c + mv;
            }
        }
        None => {
            for (d, &mv) in row.iter_mut().zip(mask) {
                *d += mv;
            }
        }
    }
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a });
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    row.iter_mut().for_each(|d| *d -= max);
    exp_in_place(row);
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (s, &v) in sums.iter_mut().zip(c) {
            *s += v;
        }
    }
    let sum: f32 = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|d| *d *= inv);
}

/// `softmax(softcap(scores) + mask)` over the last dimension in one pass per row, for f32 scores
/// on the CPU (no backward pass); `None` elsewhere, where the caller runs the same maths as tensor
/// ops.
///
/// `scores` is `(batch, kv_heads, group * n, keys)`, `mask` is `(batch, n, keys)` (additive, shared by
/// all heads).
pub(crate) fn masked_softmax_cpu(
    scores: &Tensor,
    mask: &Tensor,
    softcap: Option<f64>,
) -> Result<Option<Tensor>> {
    if !scores.device().is_cpu() || scores.dtype() != DType::F32 {
        return Ok(None);
    }
    let (_, kvh, gn, _) = scores.dims4()?;
    let op = MaskedSoftmax {
        softcap: softcap.map(|c| c as f32),
        rows_per_batch: kvh * gn,
        n: mask.dim(1)?,
    };
    Ok(Some(
        scores
            .contiguous()?
            .apply_op2_no_bwd(&mask.contiguous()?, &op)?,
    ))
}
