//! Statistics collection: run the model up to the SAE's hook over token rows, encode with the SAE
//! and accumulate [`FeatureStats`] (and, optionally, [`RowActivity`] for gate calibration).
//!
//! Rows go through the model in batches (right-padded; a row's activations do not depend on its
//! batch), only blocks `0..=layer` run, and each batch's latents are reduced before the next one
//! is computed, so feature statistics take `O(d_sae)` memory whatever the corpus length. The
//! activity record grows with the corpus (about `4·ℓ0 + 8` bytes per token).
//!
//! [`Shard`] `i/n` processes rows `i, i+n, i+2n, …`; merging the shards' statistics
//! ([`FeatureStats::merge`], [`RowActivity::append`]) gives the one-pass feature statistics, and
//! the same per-row activity up to row order (which calibration does not depend on).
//!
//! [`prompt_activity`] is the same pass over prompts of any length, for a fixed set of features;
//! [`keep_evidence`] reduces its result to the tokens a guardrail that counts user text counts, so
//! a threshold calibrated or evaluated on prompts sees what the hook sees.

use super::shard::Shard;
use super::{counted_tokens, token_activity, FeatureStats, RowActivity, StatsProvenance};
use crate::model::{Batch, Capture, HookPoint, Model};
use crate::sae::Sae;
use crate::{Error, Result};

/// How [`collect`] runs.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Where the SAE reads.
    pub hook: HookPoint,
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Which rows to process.
    pub shard: Shard,
    /// Token ids excluded from the feature statistics (BOS, EOS, PAD).
    pub special_ids: Vec<u32>,
    /// Whether rows start with BOS (position 0 is then never active in the activity record).
    pub starts_with_bos: bool,
    /// Whether to record per-token feature activity (needed to calibrate a gate on this corpus).
    pub record_activity: bool,
}

/// What [`collect`] produces for one corpus.
#[derive(Debug, Clone)]
pub struct CorpusStats {
    /// Per-feature statistics over counted tokens.
    pub features: FeatureStats,
    /// Per-token active features, when asked for.
    pub activity: Option<RowActivity>,
}

impl CorpusStats {
    /// Adds another shard's statistics and activity.
    pub fn merge(&mut self, other: &CorpusStats) -> Result<()> {
        self.features.merge(&other.features)?;
        match (&mut self.activity, &other.activity) {
            (Some(mine), Some(theirs)) => mine.append(theirs),
            (None, None) => Ok(()),
            _ => Err(Error::Mismatch(
                "cannot merge a shard with activity and one without".into(),
            )),
        }
    }
}

/// The residual stream at `hook` for a batch, running only the blocks up to the hook.
pub fn activations_at(
    model: &Model,
    batch: &Batch,
    hook: HookPoint,
) -> Result<candle_core::Tensor> {
    let mut capture = Capture::new([hook]);
    model.forward_until(batch, hook.layer, &mut capture)?;
    capture
        .get(hook)
        .cloned()
        .ok_or_else(|| Error::Invalid(format!("the forward pass never reached {hook}")))
}

/// Runs `model` over this shard's `rows`, encodes the activations at `opts.hook` with `sae`, and
/// accumulates statistics. `progress(done, total)` is called after every batch with this shard's
/// row counts.
pub fn collect(
    model: &Model,
    sae: &Sae,
    rows: &[Vec<u32>],
    opts: &CollectOptions,
    provenance: StatsProvenance,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CorpusStats> {
    sae.check_model(model.config().d_model, model.config().n_layers)?;
    let mine: Vec<&Vec<u32>> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| opts.shard.contains(*i))
        .map(|(_, r)| r)
        .collect();
    let mut features = FeatureStats::new(sae.d_sae(), provenance);
    let mut activity = if opts.record_activity {
        Some(RowActivity::new(sae.d_sae(), None)?)
    } else {
        None
    };
    let mut done = 0;
    for chunk in mine.chunks(opts.batch_size.max(1)) {
        let batch = Batch::new(chunk.iter().map(|r| r.to_vec()).collect(), model.device())?;
        let h = activations_at(model, &batch, opts.hook)?;
        let latents = sae.encode(&h)?;
        let counted: Vec<Vec<bool>> = chunk
            .iter()
            .map(|r| counted_tokens(r, &opts.special_ids))
            .collect();
        features.add_batch(&latents, &counted)?;
        if let Some(activity) = &mut activity {
            activity.push_batch(&latents, batch.lengths(), opts.starts_with_bos)?;
        }
        done += chunk.len();
        progress(done, mine.len());
    }
    Ok(CorpusStats { features, activity })
}

/// Token activity of each feature set in `feature_sets` on each prompt: `[set][prompt][token]`,
/// with the guardrail hook's conventions (absolute position 0 never active, padding dropped), so
/// any gate can be scored from it without another model pass. Prompts are batched `batch_size` at a time in order of length; `progress(done, total)` counts
/// prompts.
pub fn prompt_activity(
    model: &Model,
    sae: &Sae,
    hook: HookPoint,
    feature_sets: &[Vec<usize>],
    prompts: &[Vec<u32>],
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<Vec<bool>>>> {
    sae.check_model(model.config().d_model, model.config().n_layers)?;
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut out = vec![vec![Vec::new(); prompts.len()]; feature_sets.len()];
    let mut done = 0;
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = Batch::new(
            chunk.iter().map(|&i| prompts[i].clone()).collect(),
            model.device(),
        )?;
        let h = activations_at(model, &batch, hook)?;
        for (set, features) in feature_sets.iter().enumerate() {
            let selected = sae.encode_subset(&h, features)?;
            let flags = token_activity(&selected, batch.lengths(), true)?;
            for (&i, f) in chunk.iter().zip(flags) {
                out[set][i] = f;
            }
        }
        done += chunk.len();
        progress(done, prompts.len());
    }
    Ok(out)
}

/// Each prompt's token activity reduced to its evidence tokens (`evidence[p][t]`), in order: what
/// the gate of a guardrail that counts user text sees ([`crate::guard::Evidence::UserText`]; the
/// hook pushes only evidence tokens to its gate). Errors when the shapes differ.
pub fn keep_evidence(activity: Vec<Vec<bool>>, evidence: &[Vec<bool>]) -> Result<Vec<Vec<bool>>> {
    if activity.len() != evidence.len() {
        return Err(Error::Mismatch(format!(
            "activity of {} prompts but evidence marks for {}",
            activity.len(),
            evidence.len()
        )));
    }
    activity
        .into_iter()
        .zip(evidence)
        .enumerate()
        .map(|(p, (a, e))| {
            if a.len() != e.len() {
                return Err(Error::Mismatch(format!(
                    "prompt {p}: activity of {} tokens but evidence marks for {}",
                    a.len(),
                    e.len()
                )));
            }
            Ok(a.into_iter()
                .zip(e)
                .filter(|(_, &e)| e)
                .map(|(a, _)| a)
                .collect())
        })
        .collect()
}
