//! Low-rank updates on a [`Linear`](super::layers::Linear) map (LoRA, Hu et al. 2021, as PEFT applies
//! them): `y = x·Wᵀ + b + scale · dropout(x)·Aᵀ·Bᵀ`, for all of the map's outputs or for a range of them
//! (dsg fuses q/k/v and gate/up into one map, and PEFT targets each part on its own).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::Rng;

use crate::Result;

/// The random source of LoRA dropout, shared by every part of one model. `None` (the default, and
/// outside training) turns dropout off; the trainer seeds it once per step so that a resumed run draws
/// the same masks.
pub type DropoutRng = Arc<Mutex<Option<StdRng>>>;

/// One low-rank update, over the outputs `rows` of its map.
pub struct LoraPart {
    /// The outputs it adds to (all of them for an unfused map).
    pub rows: Range<usize>,
    /// `A`, (r, in).
    pub a: Tensor,
    /// `B`, (rows.len(), r).
    pub b: Tensor,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
    /// Dropout probability on the input, in training only.
    pub dropout: f32,
    /// The model's dropout source.
    pub rng: DropoutRng,
}

impl LoraPart {
    /// `scale · dropout(x)·Aᵀ·Bᵀ` for `x` (m, in): (m, rows.len()).
    fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.dropout_mask(x)? {
            Some(mask) => (x * mask)?,
            None => x.clone(),
        };
        let h = x.matmul(&self.a.t()?)?;
        Ok((h.matmul(&self.b.t()?)? * self.scale)?)
    }

    /// An inverted-dropout mask shaped like `x` when training with dropout, else `None`.
    fn dropout_mask(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.dropout <= 0.0 {
            return Ok(None);
        }
        let mut guard = self.rng.lock().expect("dropout rng poisoned");
        let Some(rng) = guard.as_mut() else {
            return Ok(None);
        };
        let keep = 1.0 - self.dropout;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f32>() < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Some(Tensor::from_vec(mask, x.shape(), x.device())?))
    }

    /// `scale · B·A`, (rows.len(), in): the part's update of the weight, for merging.
    pub fn weight_delta(&self) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * self.scale)?)
    }
}

/// Adds the updates of `parts` to `y` (m, out), the frozen output of a map of `out` outputs on `x` (m, in).
pub(super) fn add_updates(parts: &[LoraPart], x: &Tensor, y: Tensor) -> Result<Tensor> {
    let out = y.dim(1)?;
    let mut sorted: Vec<&LoraPart> = parts.iter().collect();
    sorted.sort_by_key(|p| p.rows.start);
    // Stacked adapters update the same rows: parts go into layers of disjoint row ranges, each
    // layer one add (in the order the adapters were applied, within equal starts).
    let mut layers: Vec<Vec<&LoraPart>> = Vec::new();
    for p in sorted {
        match layers
            .iter_mut()
            .find(|l| l.last().is_some_and(|q| q.rows.end <= p.rows.start))
        {
            Some(l) => l.push(p),
            None => layers.push(vec![p]),
        }
    }
    let mut y = y;
    for layer in layers {
        y = add_layer(&layer, x, y, out)?;
    }
    Ok(y)
}

/// `y` plus the updates of parts with disjoint row ranges, sorted by start.
fn add_layer(parts: &[&LoraPart], x: &Tensor, y: Tensor, out: usize) -> Result<Tensor> {
    if let [p] = parts {
        if p.rows == (0..out) {
            return Ok((y + p.delta(x)?)?);
        }
    }
    // Outputs without an update get zeros, so one add covers every part (and stays differentiable).
    let m = y.dim(0)?;
    let mut pieces = Vec::with_capacity(2 * parts.len() + 1);
    let mut at = 0;
    for p in parts {
        if p.rows.start > at {
            pieces.push(Tensor::zeros(
                (m, p.rows.start - at),
                y.dtype(),
                y.device(),
            )?);
        }
        pieces.push(p.delta(x)?);
        at = p.rows.end;
    }
    if at < out {
        pieces.push(Tensor::zeros((m, out - at), y.dtype(), y.device())?);
    }
    Ok((y + Tensor::cat(&pieces, 1)?)?)
}
