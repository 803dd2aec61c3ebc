//! SAE quality on held-out text: FVU, mean L0, dead-latent fraction, and the change in the model's
//! next-token loss when the reconstruction replaces the activation (delta CE).
//!
//! Position 0 of every row is left out of FVU/L0/dead counts and is *not* replaced when splicing
//! (the trainer never sees it either; see [`super::collect`]). Cross-entropy is the mean over every
//! predicted token of every row.

use candle_core::{DType, Tensor, D};

use super::collect::hook_activations;
use super::{Sae, SaeMetrics};
use crate::model::{Batch, FnHook, HookPoint, Model, NoHooks};
use crate::Result;

/// Running sums for FVU, L0 and firing counts over batches of activations.
#[derive(Debug, Clone)]
pub struct ReconStats {
    n: usize,
    sum_sq_err: f64,
    sum_x: Vec<f64>,
    sum_sq_x: f64,
    active: f64,
    fired: Vec<bool>,
}

impl ReconStats {
    /// Empty sums for `d_in`-wide activations and `d_sae` latents.
    pub fn new(d_in: usize, d_sae: usize) -> Self {
        ReconStats {
            n: 0,
            sum_sq_err: 0.0,
            sum_x: vec![0.0; d_in],
            sum_sq_x: 0.0,
            active: 0.0,
            fired: vec![false; d_sae],
        }
    }

    /// Adds activations `x` `(n, d_in)`, their reconstructions `x_hat` and latents `f` `(n, d_sae)`.
    pub fn add(&mut self, x: &Tensor, x_hat: &Tensor, f: &Tensor) -> Result<()> {
        let x = x.to_dtype(DType::F64)?;
        self.n += x.dim(0)?;
        let err = (&x - x_hat.to_dtype(DType::F64)?)?;
        self.sum_sq_err += err.sqr()?.sum_all()?.to_scalar::<f64>()?;
        self.sum_sq_x += x.sqr()?.sum_all()?.to_scalar::<f64>()?;
        for (s, v) in self.sum_x.iter_mut().zip(x.sum(0)?.to_vec1::<f64>()?) {
            *s += v;
        }
        let nz = f.ne(0f32)?.to_dtype(DType::F32)?;
        self.active += nz.sum_all()?.to_scalar::<f32>()? as f64;
        for (d, c) in self.fired.iter_mut().zip(nz.sum(0)?.to_vec1::<f32>()?) {
            *d |= c > 0.0;
        }
        Ok(())
    }

    /// Tokens added.
    pub fn tokens(&self) -> usize {
        self.n
    }

    /// `Σ‖x−x̂‖² / Σ‖x−mean(x)‖²`.
    pub fn fvu(&self) -> f64 {
        let n = self.n.max(1) as f64;
        let mean_sq: f64 = self.sum_x.iter().map(|s| s * s).sum::<f64>() / n;
        self.sum_sq_err / (self.sum_sq_x - mean_sq).max(f64::MIN_POSITIVE)
    }

    /// Mean number of non-zero latents per token.
    pub fn l0(&self) -> f64 {
        self.active / self.n.max(1) as f64
    }

    /// Fraction of latents that never fired.
    pub fn dead_fraction(&self) -> f64 {
        let dead = self.fired.iter().filter(|f| !**f).count();
        dead as f64 / self.fired.len().max(1) as f64
    }
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaeEval {
    /// Fraction of variance unexplained.
    pub fvu: f64,
    /// Mean active latents per token.
    pub l0: f64,
    /// Fraction of latents never active on the evaluation tokens.
    pub dead_fraction: f64,
    /// Mean next-token loss of the unmodified model (nats).
    pub clean_ce: f64,
    /// Mean next-token loss with the reconstruction spliced in at the hook (nats).
    pub spliced_ce: f64,
    /// `spliced_ce − clean_ce`.
    pub delta_ce: f64,
    /// Tokens in FVU/L0/dead (positions ≥ 1).
    pub tokens: usize,
    /// Predicted tokens in the cross-entropies.
    pub predicted: usize,
}

impl SaeEval {
    /// The measurements as [`SaeMetrics`] (clean CE and token counts go to `extra`).
    pub fn to_metrics(&self) -> SaeMetrics {
        let mut m = SaeMetrics {
            fvu: Some(self.fvu),
            l0: Some(self.l0),
            dead_fraction: Some(self.dead_fraction),
            delta_ce: Some(self.delta_ce),
            ..Default::default()
        };
        m.extra.insert("clean_ce".into(), self.clean_ce);
        m.extra.insert("eval_tokens".into(), self.tokens as f64);
        m
    }
}

/// Evaluates `sae` at `hook` on token `rows` (any lengths ≥ 2), `batch_rows` rows per pass.
pub fn evaluate(
    model: &Model,
    sae: &Sae,
    hook: HookPoint,
    rows: &[Vec<u32>],
    batch_rows: usize,
) -> Result<SaeEval> {
    let mut stats = ReconStats::new(sae.d_in(), sae.d_sae());
    let (mut clean, mut spliced, mut predicted) = (0f64, 0f64, 0usize);
    for group in rows.chunks(batch_rows.max(1)) {
        for row in group {
            let x = hook_activations(model, hook, std::slice::from_ref(row))?;
            let f = sae.encode(&x)?;
            stats.add(&x, &sae.decode(&f)?, &f)?;
        }
        let batch = Batch::new(group.to_vec(), model.device())?;
        let sum = |lp: Vec<Vec<f32>>| -> f64 { lp.iter().flatten().map(|&v| -v as f64).sum() };
        let lp = model.token_logprobs(&batch, &mut NoHooks)?;
        predicted += lp.iter().map(Vec::len).sum::<usize>();
        clean += sum(lp);
        let mut splice = FnHook::new(hook, |_, act: &Tensor| {
            let seq = act.dim(1)?;
            let recon = sae.reconstruct(&act.narrow(1, 1, seq - 1)?)?;
            Ok(Some(Tensor::cat(
                &[&act.narrow(1, 0, 1)?, &recon],
                D::Minus2,
            )?))
        });
        spliced += sum(model.token_logprobs(&batch, &mut splice)?);
    }
    let p = predicted.max(1) as f64;
    Ok(SaeEval {
        fvu: stats.fvu(),
        l0: stats.l0(),
        dead_fraction: stats.dead_fraction(),
        clean_ce: clean / p,
        spliced_ce: spliced / p,
        delta_ce: (spliced - clean) / p,
        tokens: stats.tokens(),
        predicted,
    })
}

/// Per-latent firing fraction of each document: `(docs, d_sae)` row-major, from the SAE latents
/// of positions `1..` of each document's tokens (documents of fewer than 2 tokens are skipped).
pub fn firing_fractions(
    model: &Model,
    sae: &Sae,
    hook: HookPoint,
    docs: &[Vec<u32>],
) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(docs.len());
    for d in docs.iter().filter(|d| d.len() >= 2) {
        let f = sae.encode(&hook_activations(model, hook, std::slice::from_ref(d))?)?;
        let frac = f
            .ne(0f32)?
            .to_dtype(DType::F32)?
            .mean(0)?
            .to_vec1::<f32>()?;
        out.push(frac.into_iter().map(f64::from).collect());
    }
    Ok(out)
}
