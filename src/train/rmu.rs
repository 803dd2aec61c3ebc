//! RMU (Li et al. 2024, "The WMDP Benchmark", `rmu/unlearn.py`): the residual stream after block `l`
//! is pushed, on forget text, toward a fixed random direction `c·u` (`u` drawn uniform in [0, 1)^d
//! and normalised; `c` the steering coefficient, or with adaptive RMU `c = s·` the frozen model's mean
//! activation norm there on forget text), and held, on retain text, at the frozen model's
//! activations: `MSE(h_f, c·u) + α·MSE(h_r, h_r^frozen)`, means over real tokens and dimensions. The
//! reference trains only the MLP down-projections of blocks `l−2 … l` ([`rmu_parameters`]).

use candle_core::{DType, Tensor};

use super::examples::Example;
use crate::data::rng::SplitMix64;
use crate::model::{Batch, ForwardOptions, Logits, Model, NoHooks};
use crate::Result;

/// The weights the reference RMU trains for layer `layer`: the MLP down-projections of blocks
/// `layer−2 … layer` (dsg's names for [`super::Method::Weights`]).
pub fn rmu_parameters(layer: usize) -> Vec<String> {
    (layer.saturating_sub(2)..=layer)
        .map(|i| format!("blocks.{i}.mlp.down.weight"))
        .collect()
}

/// The unit control direction `u` for `seed`: uniform in [0, 1)^d, normalised.
pub fn control_direction(d: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ 0x0052_4D55);
    let v: Vec<f64> = (0..d)
        .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| (x / norm) as f32).collect()
}

/// The residual stream after block `layer` on `examples` (one right-padded batch, (b, L, d)), and
/// the (b, L, 1) mask of real tokens.
pub fn residual_after(
    model: &Model,
    examples: &[&Example],
    layer: usize,
) -> Result<(Tensor, Tensor)> {
    let rows: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
    let batch = Batch::new(rows, model.device())?;
    let opts = ForwardOptions {
        logits: Logits::None,
        stop_after: Some(layer),
        quantized: false,
    };
    let h = model.forward(&batch, &opts, &mut NoHooks, None)?.residual;
    let (b, l, _) = h.dims3()?;
    let mut mask = vec![0f32; b * l];
    for (r, e) in examples.iter().enumerate() {
        mask[r * l..r * l + e.ids.len()]
            .iter_mut()
            .for_each(|m| *m = 1.0);
    }
    Ok((h, Tensor::from_vec(mask, (b, l, 1), model.device())?))
}

/// `Σ mask·(h − target)²` (target broadcast to h's shape).
pub fn masked_sq_err(h: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let diff = h.broadcast_sub(target)?;
    Ok(diff.sqr()?.broadcast_mul(mask)?.sum_all()?)
}

/// Each example's frozen residual after `layer`, (len, d), in batches of `batch`.
pub fn frozen_residuals(
    model: &Model,
    examples: &[Example],
    layer: usize,
    batch: usize,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (h, _) = residual_after(model, &refs, layer)?;
        for (r, e) in chunk.iter().enumerate() {
            out.push(h.get(r)?.narrow(0, 0, e.ids.len())?.detach().contiguous()?);
        }
    }
    Ok(out)
}

/// The frozen model's mean L2 norm of the residual after `layer` over the tokens of `examples`.
pub fn mean_norm(frozen: &[Tensor]) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for h in frozen {
        let norms = h
            .sqr()?
            .sum(1)?
            .sqrt()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        n += norms.len();
        sum += norms.iter().sum::<f64>();
    }
    Ok(sum / n.max(1) as f64)
}

/// The frozen activations of `rows` (by example index) padded into one (b, L, d) tensor.
pub fn padded(frozen: &[Tensor], rows: &[usize], len: usize) -> Result<Tensor> {
    let parts = rows
        .iter()
        .map(|&i| {
            let h = &frozen[i];
            let (n, d) = h.dims2()?;
            let h = if n < len {
                Tensor::cat(
                    &[
                        h.clone(),
                        Tensor::zeros((len - n, d), h.dtype(), h.device())?,
                    ],
                    0,
                )?
            } else {
                h.clone()
            };
            Ok(h.unsqueeze(0)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}
