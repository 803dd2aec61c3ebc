//! Activations from a model's hook point, served to the trainer as shuffled fixed-size chunks.
//!
//! Token rows (see [`crate::data::token_rows`]) are visited in epochs, each epoch in a seeded random
//! order; chunk `c` takes the next `rows_per_chunk` rows of that endless sequence, runs the model up
//! to the hook, drops position 0 of every row and shuffles the tokens with a seed derived from `c`.
//! Position 0 is excluded because the first token of a sequence is an attention sink whose
//! residual norm is tens of times the others'; it would dominate the reconstruction loss, and DSG
//! never gates on it.
//!
//! Each row's activations are computed once and kept for later epochs, in f16 when they fit its
//! range, else in f32 (Gemma 3's residual stream holds values past f16's 65504 from its middle
//! layers on, which f16 would turn into infinities): memory is `rows · (ctx − 1) · d_model · 2` bytes
//! (about 0.15 MB per 128-token row of SmolLM2-135M), twice that in f32.

use candle_core::{DType, Tensor, D};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::train::ActivationSource;
use crate::model::{Batch, Capture, HookPoint, Model};
use crate::{Error, Result};

/// Largest magnitude stored in f16 (its maximum finite value is 65504).
const F16_LIMIT: f32 = 65000.0;

/// `acts` in f16 when every value fits its range, else unchanged (f32).
fn compact(acts: Tensor) -> Result<Tensor> {
    let max = acts.abs()?.max_all()?.to_scalar::<f32>()?;
    if max.is_finite() && max <= F16_LIMIT {
        Ok(acts.to_dtype(DType::F16)?)
    } else {
        Ok(acts)
    }
}

/// Streams a hook point's activations over token rows; see the module docs.
pub struct ModelActivations<'a> {
    model: &'a Model,
    hook: HookPoint,
    rows: Vec<Vec<u32>>,
    rows_per_chunk: usize,
    batch_rows: usize,
    seed: u64,
    cache: Vec<Option<Tensor>>,
}

impl<'a> ModelActivations<'a> {
    /// Serves `rows` (all of one length ≥ 2) in chunks of `rows_per_chunk` rows, running the model
    /// `batch_rows` rows at a time.
    pub fn new(
        model: &'a Model,
        hook: HookPoint,
        rows: Vec<Vec<u32>>,
        rows_per_chunk: usize,
        seed: u64,
    ) -> Result<Self> {
        let ctx = rows.first().map(Vec::len).unwrap_or(0);
        if ctx < 2 || rows.iter().any(|r| r.len() != ctx) || rows_per_chunk == 0 {
            return Err(Error::Invalid(
                "activation rows must be non-empty, of one length ≥ 2, with rows_per_chunk > 0"
                    .into(),
            ));
        }
        Ok(ModelActivations {
            cache: vec![None; rows.len()],
            model,
            hook,
            rows,
            rows_per_chunk,
            batch_rows: 8,
            seed,
        })
    }

    /// The order of the rows in epoch `epoch`.
    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ ((epoch as u64 + 1) * 0x9E37));
        order.shuffle(&mut rng);
        order
    }
}

/// The activations at `hook` for `rows` (all one length), positions `1..` of each row, as
/// `(rows · (len − 1), d_model)`.
pub fn hook_activations(model: &Model, hook: HookPoint, rows: &[Vec<u32>]) -> Result<Tensor> {
    let batch = Batch::new(rows.to_vec(), model.device())?;
    let mut cap = Capture::new([hook]);
    model.forward_until(&batch, hook.layer, &mut cap)?;
    let act = cap
        .get(hook)
        .ok_or_else(|| Error::Invalid(format!("hook point {hook} was not reached")))?;
    let seq = act.dim(1)?;
    let act = act.narrow(1, 1, seq - 1)?;
    Ok(act.reshape(((), act.dim(D::Minus1)?))?)
}

impl ActivationSource for ModelActivations<'_> {
    fn chunk_tokens(&self) -> usize {
        self.rows_per_chunk * (self.rows[0].len() - 1)
    }

    fn chunk(&mut self, index: usize) -> Result<Tensor> {
        let n = self.rows.len();
        let first = index * self.rows_per_chunk;
        let mut order = self.epoch_order(first / n);
        let mut picked = Vec::with_capacity(self.rows_per_chunk);
        for g in first..first + self.rows_per_chunk {
            if g % n == 0 && g != first {
                order = self.epoch_order(g / n);
            }
            picked.push(order[g % n]);
        }
        let missing: Vec<usize> = picked
            .iter()
            .copied()
            .filter(|&r| self.cache[r].is_none())
            .collect();
        for group in missing.chunks(self.batch_rows) {
            let rows: Vec<Vec<u32>> = group.iter().map(|&r| self.rows[r].clone()).collect();
            let acts = compact(hook_activations(self.model, self.hook, &rows)?)?;
            let per = self.rows[0].len() - 1;
            for (j, &r) in group.iter().enumerate() {
                self.cache[r] = Some(acts.narrow(0, j * per, per)?.contiguous()?);
            }
        }
        // Rows may be cached in f16 or f32 (see `compact`): each is widened before joining.
        let parts = picked
            .iter()
            .map(|&r| self.cache[r].as_ref().expect("cached").to_dtype(DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let acts = Tensor::cat(&parts, 0)?;
        let mut perm: Vec<u32> = (0..acts.dim(0)? as u32).collect();
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(self.seed.wrapping_add(index as u64) ^ 0xA5);
        perm.shuffle(&mut rng);
        let perm = Tensor::new(perm, acts.device())?;
        Ok(acts.index_select(&perm, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activations_past_f16_range_stay_f32() {
        let dev = Device::Cpu;
        let small = Tensor::new(&[[1.5f32, -65000.0]], &dev).unwrap();
        assert_eq!(compact(small).unwrap().dtype(), DType::F16);
        let big = Tensor::new(&[[1.5f32, 70000.0]], &dev).unwrap();
        let kept = compact(big).unwrap();
        assert_eq!(kept.dtype(), DType::F32);
        assert_eq!(kept.to_vec2::<f32>().unwrap(), [[1.5, 70000.0]]);
    }
}
