//! Which layer to put an SAE at (`dsg sae compare-layers`): at each candidate layer a short TopK
//! SAE is trained, its delta CE measured, and the separation of forget from retain questions by
//! its latents scored (latents chosen on even-indexed documents, AUROC on odd-indexed ones).

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::data::{self, Split};
use crate::eval::metrics::auroc;
use crate::model::{HookPoint, LoadedModel, Tokenizer};
use crate::sae::collect::ModelActivations;
use crate::sae::run::rows_from_files;
use crate::sae::train::{ActivationSource, TrainConfig, Trainer};
use crate::sae::{metrics, SaeMeta};
use crate::{Error, Result};

/// Tokens per row of the training and evaluation text.
const CTX: usize = 128;
/// Rows per shuffled activation chunk.
const CHUNK_ROWS: usize = 128;
/// Tokens per optimiser step.
const BATCH: usize = 1024;
/// Size of the top latent set whose summed firing is scored.
const TOP_SET: usize = 20;

/// What [`compare_layers`] trains and measures.
#[derive(Debug, Clone)]
pub struct LayerComparisonConfig {
    /// Candidate layers (an SAE at each one's `hook_resid_post`).
    pub layers: Vec<usize>,
    /// Training text files.
    pub text: Vec<PathBuf>,
    /// Forget questions (a WMDP `.json`, selection split only).
    pub forget: PathBuf,
    /// Retain questions (a `.jsonl` of questions).
    pub retain: PathBuf,
    /// Documents per side (half choose the latents, the other half measure AUROC).
    pub docs: usize,
    /// Training tokens per layer.
    pub tokens: u64,
    /// Latents of each layer's SAE (its width).
    pub d_sae: usize,
    /// Active latents per token.
    pub k: usize,
    /// Held-out text for delta CE.
    pub eval_text: PathBuf,
    /// Evaluation tokens.
    pub eval_tokens: usize,
}

impl LayerComparisonConfig {
    /// The trainer's configuration at `layer`.
    pub fn train_config(&self, layer: usize) -> TrainConfig {
        TrainConfig {
            hook: HookPoint::resid_post(layer),
            d_sae: self.d_sae,
            k: self.k,
            k_aux: 2 * self.k,
            aux_coef: 1.0 / 32.0,
            dead_tokens: self.tokens / 4,
            batch_size: BATCH,
            lr: TrainConfig::default_lr(self.d_sae),
            warmup_steps: 20,
            decay_fraction: 0.2,
            total_tokens: self.tokens,
            seed: 0,
        }
    }

    /// Checks the options against a model of `n_layers` blocks.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::out_of_range(
                "layers (--layers)",
                "(none)",
                "at least one layer",
            ));
        }
        if let Some(&l) = self.layers.iter().find(|&&l| l >= n_layers) {
            return Err(Error::out_of_range(
                "layers (--layers)",
                l,
                format!("layers below {n_layers} (the model's layers)"),
            ));
        }
        if self.docs < 2 {
            return Err(Error::out_of_range(
                "docs (--docs)",
                self.docs,
                "at least 2 (half choose latents, half score them)",
            ));
        }
        if self.eval_tokens == 0 {
            return Err(Error::out_of_range(
                "eval_tokens (--eval-tokens)",
                0,
                "at least 1",
            ));
        }
        self.train_config(self.layers[0]).validate()
    }
}

/// One layer's result.
#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    /// Decoder layer (0-based) whose residual stream the SAE was trained on.
    pub layer: usize,
    /// Fraction of variance unexplained on the held-out text.
    pub fvu: f64,
    /// Delta CE (nats) of splicing the SAE in.
    pub delta_ce: f64,
    /// The latent that best separates forget from retain on the choosing half.
    pub best_latent: usize,
    /// Its AUROC on the scoring half.
    pub best_latent_auroc: f64,
    /// AUROC on the scoring half of the summed firing of the top latents by mean difference.
    pub top_set_auroc: f64,
    /// Seconds the layer took.
    pub secs: f64,
}

/// Header of the markdown table that [`LayerResult::markdown_row`] rows fill.
pub const MARKDOWN_HEADER: &str = "| layer | FVU | delta CE (nats) | best latent AUROC | top-20 AUROC | s |\n|---|---|---|---|---|---|";

impl LayerResult {
    /// The result as a row of the markdown table under [`MARKDOWN_HEADER`].
    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {:.3} | {:.3} | {:.3} (latent {}) | {:.3} | {:.0} |",
            self.layer,
            self.fvu,
            self.delta_ce,
            self.best_latent_auroc,
            self.best_latent,
            self.top_set_auroc,
            self.secs
        )
    }
}

/// The results of every layer, in the order asked for.
#[derive(Debug, Clone, Serialize)]
pub struct LayerComparison {
    /// One result per layer.
    pub layers: Vec<LayerResult>,
}

impl LayerComparison {
    /// The whole markdown table.
    pub fn to_markdown(&self) -> String {
        let mut s = MARKDOWN_HEADER.to_string();
        for r in &self.layers {
            s.push('\n');
            s.push_str(&r.markdown_row());
        }
        s
    }

    /// The results as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain numbers serialise")
    }
}

/// `docs` documents spread evenly over `all`, tokenised without BOS.
fn spread_docs(tok: &Tokenizer, all: Vec<String>, docs: usize) -> Result<Vec<Vec<u32>>> {
    let step = (all.len() / docs.max(1)).max(1);
    all.iter()
        .step_by(step)
        .take(docs)
        .map(|d| tok.encode(d, false))
        .collect()
}

/// Trains and measures an SAE at each layer of `cfg` (see the module docs), calling `on_layer`
/// with each result as it is done.
pub fn compare_layers(
    lm: &LoadedModel,
    cfg: &LayerComparisonConfig,
    on_layer: &mut dyn FnMut(&LayerResult),
) -> Result<LayerComparison> {
    cfg.validate(lm.model.config().n_layers)?;
    let f_docs = spread_docs(
        &lm.tokenizer,
        data::read_documents(&cfg.forget, Split::Selection)?,
        cfg.docs,
    )?;
    let r_docs = spread_docs(
        &lm.tokenizer,
        data::read_documents(&cfg.retain, Split::Selection)?,
        cfg.docs,
    )?;
    let rows = rows_from_files(&lm.tokenizer, &cfg.text, CTX, None)?;
    let mut out = Vec::new();
    for &layer in &cfg.layers {
        let t = Instant::now();
        let tc = cfg.train_config(layer);
        let hook = tc.hook;
        let mut source = ModelActivations::new(&lm.model, hook, rows.clone(), CHUNK_ROWS, 0)?;
        let mut trainer = Trainer::new(tc, &source.chunk(0)?)?;
        trainer.run(&mut source, &mut |_, _| Ok(()))?;
        let sae = trainer.to_sae(SaeMeta::default())?;
        let eval_rows = rows_from_files(
            &lm.tokenizer,
            std::slice::from_ref(&cfg.eval_text),
            CTX,
            Some(cfg.eval_tokens),
        )?;
        let e = metrics::evaluate(&lm.model, &sae, hook, &eval_rows, 8)?;
        let ff = metrics::firing_fractions(&lm.model, &sae, hook, &f_docs)?;
        let rf = metrics::firing_fractions(&lm.model, &sae, hook, &r_docs)?;
        let half = |v: &[Vec<f64>], parity: usize| -> Vec<Vec<f64>> {
            v.iter().skip(parity).step_by(2).cloned().collect()
        };
        let (fa, fb, ra, rb) = (half(&ff, 0), half(&ff, 1), half(&rf, 0), half(&rf, 1));
        let col = |v: &[Vec<f64>], i: usize| -> Vec<f64> { v.iter().map(|d| d[i]).collect() };
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let scores = (0..cfg.d_sae)
            .map(|i| auroc(&col(&fa, i), &col(&ra, i)))
            .collect::<Result<Vec<f64>>>()?;
        let best = (0..cfg.d_sae)
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap_or(0);
        let mut by_diff: Vec<usize> = (0..cfg.d_sae).collect();
        let diff = |i: usize| mean(&col(&fa, i)) - mean(&col(&ra, i));
        by_diff.sort_by(|&a, &b| diff(b).total_cmp(&diff(a)));
        let top: Vec<usize> = by_diff[..TOP_SET.min(cfg.d_sae)].to_vec();
        let set_score = |v: &[Vec<f64>]| -> Vec<f64> {
            v.iter().map(|d| top.iter().map(|&i| d[i]).sum()).collect()
        };
        let r = LayerResult {
            layer,
            fvu: e.fvu,
            delta_ce: e.delta_ce,
            best_latent: best,
            best_latent_auroc: auroc(&col(&fb, best), &col(&rb, best))?,
            top_set_auroc: auroc(&set_score(&fb), &set_score(&rb))?,
            secs: t.elapsed().as_secs_f64(),
        };
        on_layer(&r);
        out.push(r);
    }
    Ok(LayerComparison { layers: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LayerComparisonConfig {
        LayerComparisonConfig {
            layers: vec![3, 6],
            text: vec!["train.txt".into()],
            forget: "forget.json".into(),
            retain: "retain.jsonl".into(),
            docs: 120,
            tokens: 65536,
            d_sae: 2048,
            k: 32,
            eval_text: "eval.txt".into(),
            eval_tokens: 1024,
        }
    }

    #[test]
    fn layers_docs_and_trainer_options_are_checked() {
        assert!(config().validate(30).is_ok());
        let e = config().validate(5).unwrap_err().to_string();
        assert!(e.starts_with("layers (--layers): 6"), "{e}");
        let e = LayerComparisonConfig {
            layers: vec![],
            ..config()
        }
        .validate(30)
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least one layer"), "{e}");
        let e = LayerComparisonConfig {
            docs: 1,
            ..config()
        }
        .validate(30)
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("docs (--docs): 1"), "{e}");
        let e = LayerComparisonConfig { k: 0, ..config() }
            .validate(30)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("k (--k): 0"), "{e}");
    }
}
