//! AdamW (Loshchilov & Hutter 2019) as PyTorch's `torch.optim.AdamW` computes it, with its state in
//! plain tensors so that a checkpoint holds it and a resumed run continues exactly; and clipping of
//! the global gradient norm as `torch.nn.utils.clip_grad_norm_` does it.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::Result;

/// AdamW's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε, added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (applied to parameters marked for decay only).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's and Hugging Face's defaults, with weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One trained parameter: its name, variable, whether it decays, and its two moments.
pub struct Slot {
    /// Name (a PEFT tensor name, or a model tensor name).
    pub name: String,
    /// The variable the model reads.
    pub var: Var,
    /// Whether weight decay applies (Hugging Face exempts biases and norm scales).
    pub decay: bool,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named parameters.
pub struct AdamW {
    /// Hyperparameters.
    pub config: AdamWConfig,
    /// The parameters and their moments, in a fixed order.
    pub slots: Vec<Slot>,
    /// Steps taken (the bias corrections use `steps + 1` on the next step).
    pub steps: usize,
}

impl AdamW {
    /// A fresh optimiser over `params` (name, variable, decays?), moments zero.
    pub fn new(config: AdamWConfig, params: Vec<(String, Var, bool)>) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var, decay)| {
                Ok(Slot {
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                    name,
                    var,
                    decay,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            config,
            slots,
            steps: 0,
        })
    }

    /// One update at learning rate `lr` with the gradients `grads` (by slot; a missing one skips it).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        let AdamWConfig {
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
        } = self.config;
        self.steps += 1;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            slot.m = ((&slot.m * b1)? + (g * (1.0 - b1))?)?;
            slot.v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let p = slot.var.as_tensor();
            let p = if slot.decay && wd > 0.0 {
                (p * (1.0 - lr * wd))?
            } else {
                p.clone()
            };
            let denom = ((slot.v.sqrt()? / bc2.sqrt())? + eps)?;
            let update = ((&slot.m / denom)? * (lr / bc1))?;
            slot.var.set(&(p - update)?)?;
        }
        Ok(())
    }

    /// The moments by name (`<name>.exp_avg`, `<name>.exp_avg_sq`), for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("{}.exp_avg", s.name), s.m.clone());
            out.insert(format!("{}.exp_avg_sq", s.name), s.v.clone());
        }
        out
    }

    /// Restores the moments from [`AdamW::state_tensors`]' output; `missing` names what is absent.
    pub fn restore(
        &mut self,
        steps: usize,
        tensors: &mut HashMap<String, Tensor>,
        missing: impl Fn(&str) -> crate::Error,
    ) -> Result<()> {
        for s in &mut self.slots {
            for (suffix, dst) in [("exp_avg", &mut s.m), ("exp_avg_sq", &mut s.v)] {
                let key = format!("{}.{suffix}", s.name);
                let t = tensors.remove(&key).ok_or_else(|| missing(&key))?;
                if t.dims() != dst.dims() {
                    return Err(crate::Error::Mismatch(format!(
                        "checkpoint tensor `{key}` has shape {:?}, the run needs {:?}",
                        t.dims(),
                        dst.dims()
                    )));
                }
                *dst = t.to_device(dst.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm` (PyTorch's rule:
/// factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: Option<f64>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps of AdamW on one scalar, against the formula PyTorch documents, written out.
    #[test]
    fn adamw_matches_the_written_out_update() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(cfg, vec![("p".into(), var.clone(), true)]).unwrap();
        let (lr, grads) = (0.01, [[0.5f64, -1.0], [0.25, 2.0]]);
        let mut p = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for (t, g) in grads.iter().enumerate() {
            let gt = Tensor::new(&[g[0] as f32, g[1] as f32], &Device::Cpu).unwrap();
            opt.step(&[Some(gt)], lr).unwrap();
            let t = (t + 1) as i32;
            for i in 0..2 {
                p[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
                let denom = (v[i] / (1.0 - 0.99f64.powi(t))).sqrt() + 1e-8;
                p[i] -= lr / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![
            Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()),
            None,
            Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
        ];
        let norm = clip_grad_norm(&mut g, Some(1.0)).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let a = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5, "{a}");
        let norm = clip_grad_norm(&mut g, Some(10.0)).unwrap();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
