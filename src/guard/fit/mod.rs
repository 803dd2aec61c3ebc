//! Fitting a guardrail: statistics on forget and retain rows, feature selection, gate calibration
//! on the retain rows (or on prompts, [`PromptCalibration`]), and a [`GuardrailFile`] with its
//! provenance.
//!
//! * [`FitRequest`]: everything `dsg fit` takes, checked before any work;
//! * [`run()`]: the whole command as one call, with progress through an optional [`FitObserver`].
//!
//! Defaults follow the paper's best Bio setting: the released selection rule with `p_ratio = 95`,
//! `N = 20` features, the paper gate calibrated at `p_dyn = 95`, and ClampAll at `−500`.

mod request;
mod run;

pub use request::FitRequest;
pub use run::{run, FitObserver, FitOutcome};

use sha2::{Digest, Sha256};

use super::calibrate::{calibrate, DEFAULT_PERCENTILE};
use super::file::{describe_features, ArtifactIdentity, DataProvenance, FORMAT_VERSION};
use super::{ClampSpec, Evidence, Gate, GuardrailFile, PercentileRule, SelectionRule};
use crate::model::{HookPoint, Model};
use crate::sae::Sae;
use crate::stats::collect::{collect, CollectOptions, CorpusStats};
use crate::stats::shard::Shard;
use crate::stats::StatsProvenance;
use crate::{Error, Result};

/// Everything [`fit`] needs besides the model, SAE and rows.
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Identity of the model (name, sha256).
    pub model: ArtifactIdentity,
    /// Identity of the SAE.
    pub sae: ArtifactIdentity,
    /// Where the SAE reads.
    pub hook: HookPoint,
    /// Feature selection rule.
    pub rule: SelectionRule,
    /// Number of features `N`.
    pub n_features: usize,
    /// The gate kind (its threshold is calibrated).
    pub gate: Gate,
    /// Calibration percentile `p_dyn`.
    pub p_dyn: f64,
    /// What the selected features are set to at clamped tokens.
    pub clamp: ClampSpec,
    /// Which tokens the gate counts (calibration activity must already be reduced to them).
    pub evidence: Evidence,
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Token ids excluded from the statistics (BOS, EOS, PAD).
    pub special_ids: Vec<u32>,
    /// Whether rows start with BOS.
    pub starts_with_bos: bool,
    /// Descriptions of the forget and retain corpora.
    pub corpora: (String, String),
    /// Seed used to build the rows.
    pub seed: u64,
    /// Percentage of the available rows used.
    pub data_fraction: f64,
}

impl FitConfig {
    /// The paper's Bio defaults for the given identities and hook.
    pub fn paper(model: ArtifactIdentity, sae: ArtifactIdentity, hook: HookPoint) -> Self {
        FitConfig {
            model,
            sae,
            hook,
            rule: SelectionRule::Percentile(PercentileRule::official(95.0)),
            n_features: 20,
            gate: Gate::Paper { tau: 0.0 },
            p_dyn: DEFAULT_PERCENTILE,
            clamp: ClampSpec::paper(500.0),
            evidence: Evidence::AllTokens,
            batch_size: 4,
            special_ids: Vec::new(),
            starts_with_bos: true,
            corpora: (String::new(), String::new()),
            seed: 0,
            data_fraction: 100.0,
        }
    }

    /// Collection options for one shard of one corpus.
    pub fn collect_options(&self, shard: Shard, record_activity: bool) -> CollectOptions {
        CollectOptions {
            hook: self.hook,
            batch_size: self.batch_size,
            shard,
            special_ids: self.special_ids.clone(),
            starts_with_bos: self.starts_with_bos,
            record_activity,
        }
    }

    /// Digest of what every shard of one pass over `forget_rows` and `retain_rows` shares: the
    /// model, the SAE, the hook, the token conventions and every row of both corpora (not only
    /// one shard's). Recorded in each shard's statistics so that shards of different fits are
    /// not merged; machine-specific paths do not enter it.
    pub fn pass_digest(&self, forget_rows: &[Vec<u32>], retain_rows: &[Vec<u32>]) -> String {
        let mut h = Sha256::new();
        let mut put = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        let ids = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|t| t.to_le_bytes()).collect() };
        put(self.model.sha256.as_bytes());
        put(self.sae.sha256.as_bytes());
        put(self.hook.to_string().as_bytes());
        put(&[u8::from(self.starts_with_bos)]);
        put(&ids(&self.special_ids));
        for rows in [forget_rows, retain_rows] {
            put(&(rows.len() as u64).to_le_bytes());
            for r in rows {
                put(&ids(r));
            }
        }
        format!("{:x}", h.finalize())
    }

    fn provenance(&self, corpus: &str) -> StatsProvenance {
        StatsProvenance {
            corpus: corpus.to_string(),
            hook_point: self.hook,
            sae_id: self.sae.sha256.clone(),
        }
    }
}

/// Collects this shard's forget statistics and retain statistics with activity.
/// `progress(corpus, done, total)` reports rows per corpus (`"forget"`, `"retain"`).
pub fn collect_pair(
    model: &Model,
    sae: &Sae,
    forget_rows: &[Vec<u32>],
    retain_rows: &[Vec<u32>],
    config: &FitConfig,
    shard: Shard,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(CorpusStats, CorpusStats)> {
    let forget = collect(
        model,
        sae,
        forget_rows,
        &config.collect_options(shard, false),
        config.provenance(&config.corpora.0),
        &mut |d, t| progress("forget", d, t),
    )?;
    let retain = collect(
        model,
        sae,
        retain_rows,
        &config.collect_options(shard, true),
        config.provenance(&config.corpora.1),
        &mut |d, t| progress("retain", d, t),
    )?;
    Ok((forget, retain))
}

/// Computes prompts' token activity (one flag per token) for a set of selected feature ids.
pub type ActivityFn<'a> = dyn FnMut(&[u32]) -> Result<Vec<Vec<bool>>> + 'a;

/// Prompts to calibrate the gate on instead of the retain rows: benign traffic shaped like what
/// the gate will see (e.g. chat-formatted questions), which 1024-token corpus rows are not. For a
/// guardrail that counts user text, the activity is of the user's tokens only
/// ([`crate::stats::collect::keep_evidence`]).
pub struct PromptCalibration<'a> {
    /// What the prompts are (recorded in the file's provenance).
    pub name: String,
    /// The prompts' token activity for the given selected features (one flag per token).
    pub activity: &'a mut ActivityFn<'a>,
}

/// Selects features from the statistics and calibrates the gate on the retain rows' activity, or
/// on `prompts` when given.
pub fn fit_from_stats(
    forget: &CorpusStats,
    retain: &CorpusStats,
    config: &FitConfig,
    prompts: Option<PromptCalibration>,
) -> Result<GuardrailFile> {
    let ranking = config.rule.rank(&forget.features, &retain.features)?;
    let ids = ranking.top(config.n_features)?.to_vec();
    let (activity, calibration_corpus) = match prompts {
        Some(p) => ((p.activity)(&ids)?, Some(p.name)),
        None => {
            let rows = retain.activity.as_ref().ok_or_else(|| {
                Error::Invalid("calibration needs the retain corpus's token activity".into())
            })?;
            (rows.activity(&ids)?, None)
        }
    };
    let calibration = calibrate(config.gate, &activity, config.p_dyn)?;
    let file = GuardrailFile {
        format_version: FORMAT_VERSION,
        model: config.model.clone(),
        sae: config.sae.clone(),
        d_sae: forget.features.d_sae(),
        hook_point: config.hook,
        features: describe_features(
            &ids,
            Some((&forget.features, &retain.features)),
            ranking.scores.as_ref(),
        ),
        selection: config.rule.clone(),
        clamp: config.clamp,
        gate: calibration.gate,
        calibration: Some(calibration.summary(None)?),
        evidence: config.evidence,
        provenance: DataProvenance {
            forget_corpus: Some(config.corpora.0.clone()),
            retain_corpus: Some(config.corpora.1.clone()),
            forget_rows: forget.features.n_rows(),
            retain_rows: retain.features.n_rows(),
            seed: Some(config.seed),
            data_fraction: config.data_fraction,
            calibration_corpus,
        },
        probe: None,
    };
    file.validate()?;
    Ok(file)
}

/// Fits a guardrail end to end: statistics over all rows, selection, calibration. Returns the
/// guardrail and the forget and retain statistics it was fitted on.
pub fn fit(
    model: &Model,
    sae: &Sae,
    forget_rows: &[Vec<u32>],
    retain_rows: &[Vec<u32>],
    config: &FitConfig,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(GuardrailFile, CorpusStats, CorpusStats)> {
    let (forget, retain) = collect_pair(
        model,
        sae,
        forget_rows,
        retain_rows,
        config,
        Shard::ALL,
        progress,
    )?;
    let file = fit_from_stats(&forget, &retain, config, None)?;
    Ok((file, forget, retain))
}
