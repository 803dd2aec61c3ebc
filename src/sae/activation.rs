//! The SAE activation functions: ReLU, JumpReLU and TopK.
//!
//! All three map pre-activations `(..., d_sae)` to latent activations of the same shape, in f32.
//! BatchTopK SAEs use [`Activation::TopK`] at inference (SAELens exports them as JumpReLU with one
//! global threshold; either way they load into one of these).

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// How latent activations are computed from pre-activations.
#[derive(Debug, Clone)]
pub enum Activation {
    /// `f = max(pre, 0)` (SAELens "standard").
    Relu,
    /// `f = relu(pre) · 1[pre > θ]` with a per-latent threshold θ (Gemma Scope, SAELens
    /// "jumprelu"). For θ ≥ 0 (every released SAE) this is `pre · 1[pre > θ]`; the explicit ReLU
    /// matches both reference implementations when a threshold is negative.
    JumpRelu {
        /// Per-latent thresholds, shape `(d_sae,)`, f32.
        threshold: Tensor,
    },
    /// Keep the `k` largest pre-activations of each row, then ReLU them; all others are 0.
    /// Ties are broken towards the lower latent index.
    TopK {
        /// Number of latents kept per row.
        k: usize,
    },
    /// Keep the `k` largest pre-activations of each row as they are, without a ReLU (a kept
    /// value may be negative); all others are 0 (Qwen-Scope's documented encode). Ties as
    /// [`Activation::TopK`].
    TopKSigned {
        /// Number of latents kept per row.
        k: usize,
    },
    /// sparsify's "groupmax": the latents form `groups` equal contiguous groups; in each, only the
    /// largest ReLU'd pre-activation is kept (lowest index among ties).
    GroupMax {
        /// Number of groups (sparsify's `k`); must divide `d_sae`.
        groups: usize,
    },
}

impl Activation {
    /// A short name: `relu`, `jumprelu`, `topk`, `topk_signed` or `groupmax`.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::JumpRelu { .. } => "jumprelu",
            Activation::TopK { .. } => "topk",
            Activation::TopKSigned { .. } => "topk_signed",
            Activation::GroupMax { .. } => "groupmax",
        }
    }

    /// Whether each latent's activation depends only on its own pre-activation (ReLU, JumpReLU),
    /// so that a subset of latents can be computed without the others.
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Activation::Relu | Activation::JumpRelu { .. })
    }

    /// Applies the activation to pre-activations of shape `(..., d_sae)`.
    pub fn apply(&self, pre: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => Ok(pre.relu()?),
            Activation::JumpRelu { threshold } => jump_relu(pre, threshold),
            Activation::TopK { k } => {
                per_row(pre, |row, out, order| top_k_row(row, *k, true, out, order))
            }
            Activation::TopKSigned { k } => {
                per_row(pre, |row, out, order| top_k_row(row, *k, false, out, order))
            }
            Activation::GroupMax { groups } => {
                let n = pre.dims().last().copied().unwrap_or(0);
                if *groups == 0 || n % groups != 0 {
                    return Err(Error::Invalid(format!(
                        "groupmax: {groups} groups do not divide {n} latents"
                    )));
                }
                per_row(pre, |row, out, _| group_max_row(row, n / groups, out))
            }
        }
    }
}

/// `relu(pre) · 1[pre > θ]`, with `threshold` broadcast along the last dimension.
pub(crate) fn jump_relu(pre: &Tensor, threshold: &Tensor) -> Result<Tensor> {
    let keep = pre.broadcast_gt(threshold)?;
    Ok(keep.where_cond(&pre.relu()?, &pre.zeros_like()?)?)
}

/// Applies a row-wise selection `f(row, out, scratch)` to every row (last dimension) of `pre`, rows
/// in parallel (rayon), each worker reusing one `scratch` buffer.
///
/// Runs on the CPU (candle has no top-k kernel, and its CUDA sort is limited to short rows); the
/// result is moved back to `pre`'s device. `out` starts zeroed.
fn per_row(pre: &Tensor, f: impl Fn(&[f32], &mut [f32], &mut Vec<usize>) + Sync) -> Result<Tensor> {
    use rayon::prelude::*;
    let dims = pre.dims().to_vec();
    let n = *dims
        .last()
        .ok_or_else(|| Error::Invalid("activation of a scalar".into()))?;
    let values: Vec<f32> = pre
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    let mut out = vec![0f32; values.len()];
    if n > 0 {
        values
            .par_chunks(n)
            .zip(out.par_chunks_mut(n))
            .for_each_init(Vec::new, |scratch, (row, out_row)| f(row, out_row, scratch));
    }
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?.to_device(pre.device())?)
}

/// Writes `row[i]` (`max(row[i], 0)` when `relu`) into `out[i]` for the `k` largest entries of
/// `row` (others stay 0); `order` is scratch space.
fn top_k_row(row: &[f32], k: usize, relu: bool, out: &mut [f32], order: &mut Vec<usize>) {
    let n = row.len();
    let k = k.min(n);
    if k == 0 {
        return;
    }
    order.clear();
    order.extend(0..n);
    // Descending by value, ascending by index among equal values: a total, deterministic order.
    let cmp = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    if k < n {
        order.select_nth_unstable_by(k - 1, cmp);
    }
    for &i in &order[..k] {
        out[i] = if relu { row[i].max(0.0) } else { row[i] };
    }
}

/// Keeps the (ReLU'd) maximum of each contiguous group of `size` entries.
fn group_max_row(row: &[f32], size: usize, out: &mut [f32]) {
    for (g, group) in row.chunks(size).enumerate() {
        let mut best = 0;
        for (i, v) in group.iter().enumerate() {
            if *v > group[best] {
                best = i;
            }
        }
        out[g * size + best] = group[best].max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn v2(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    #[test]
    fn relu_by_hand() {
        let pre = t(&[-1.0, 0.0, 0.5, 2.0], &[1, 4]);
        assert_eq!(
            v2(&Activation::Relu.apply(&pre).unwrap()),
            [[0.0, 0.0, 0.5, 2.0]]
        );
    }

    #[test]
    fn jump_relu_is_strict_and_per_latent() {
        let threshold = t(&[0.5, 0.5, 1.0, -1.0], &[4]);
        let act = Activation::JumpRelu { threshold };
        // 0.5 is not > 0.5; 0.9 is not > 1.0; above a negative threshold the ReLU still applies.
        let pre = t(&[0.5, 0.6, 0.9, -0.5, 3.0, -2.0, 1.5, 0.25], &[2, 4]);
        assert_eq!(
            v2(&act.apply(&pre).unwrap()),
            [[0.0, 0.6, 0.0, 0.0], [3.0, 0.0, 1.5, 0.25]]
        );
    }

    #[test]
    fn top_k_keeps_k_largest_then_relus() {
        let act = Activation::TopK { k: 2 };
        let pre = t(&[0.1, 3.0, -1.0, 2.0, -5.0, -0.5, -2.0, 0.0], &[2, 4]);
        // Row 2: the two largest are 0.0 and -0.5; ReLU makes both 0.
        assert_eq!(
            v2(&act.apply(&pre).unwrap()),
            [[0.0, 3.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
        );
    }

    #[test]
    fn signed_top_k_keeps_negative_values() {
        let act = Activation::TopKSigned { k: 2 };
        let pre = t(&[0.1, 3.0, -1.0, 2.0, -5.0, -0.5, -2.0, 0.0], &[2, 4]);
        assert_eq!(
            v2(&act.apply(&pre).unwrap()),
            [[0.0, 3.0, 0.0, 2.0], [0.0, -0.5, 0.0, 0.0]]
        );
    }

    #[test]
    fn top_k_ties_prefer_lower_index_and_k_beyond_width_is_relu() {
        let pre = t(&[1.0, 2.0, 2.0, 2.0], &[1, 4]);
        let two = Activation::TopK { k: 2 }.apply(&pre).unwrap();
        assert_eq!(v2(&two), [[0.0, 2.0, 2.0, 0.0]]);
        let all = Activation::TopK { k: 10 }.apply(&pre).unwrap();
        assert_eq!(v2(&all), [[1.0, 2.0, 2.0, 2.0]]);
        let none = Activation::TopK { k: 0 }.apply(&pre).unwrap();
        assert_eq!(v2(&none), [[0.0; 4]]);
    }

    #[test]
    fn group_max_keeps_one_per_group() {
        let act = Activation::GroupMax { groups: 2 };
        let pre = t(&[0.1, 3.0, -1.0, -2.0, -5.0, -0.5], &[1, 6]);
        assert_eq!(
            v2(&act.apply(&pre).unwrap()),
            [[0.0, 3.0, 0.0, 0.0, 0.0, 0.0]]
        );
        let bad = Activation::GroupMax { groups: 4 }.apply(&pre).unwrap_err();
        assert!(bad.to_string().contains("4 groups"), "{bad}");
    }

    #[test]
    fn top_k_keeps_leading_dims() {
        let pre = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 2, 2]);
        let f = Activation::TopK { k: 1 }.apply(&pre).unwrap();
        assert_eq!(f.dims(), &[2, 2, 2]);
        assert_eq!(
            f.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0.0, 2.0, 0.0, 4.0, 0.0, 6.0, 0.0, 8.0]
        );
    }
}
