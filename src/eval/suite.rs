//! The gate evaluation suite of a forget domain: which prompts stand for what, built from the
//! benchmark files, and their token activity under one or more guardrails.
//!
//! * positives: held-out questions of the forget MCQ file (e.g. WMDP-bio), as §5.1 prompts;
//! * negatives: held-out MMLU questions outside the domain's subjects, held-out MMLU questions of
//!   the domain's subjects (hard negatives), and benign paragraphs (WikiText-2 *valid*, which no
//!   fit reads) as chat messages;
//! * calibration: *selection-split* MMLU questions of every subject, as §5.1 prompts: benign
//!   traffic shaped like the prompts the gate will see;
//! * variants of the positives ([`Variant`]): without the subject line, padded with benign text
//!   (held-out WikiText), and split over turns.
//!
//! MMLU questions follow the same sha256 split rule as WMDP ([`Split`]), so calibration never
//! sees an evaluated question.
//!
//! Probe gates ([`crate::guard::probe`]) are trained on prompts of their own
//! ([`probe_training_prompts`]): selection-split forget questions against selection-split MMLU
//! questions outside the calibration sample and paragraphs of a benign text the suite does not
//! evaluate on; their per-token logits come from the same model pass as the activity
//! ([`PromptSuite::signals`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::detection::{Activity, EvalActivity};
use super::prompts::{detokenize_wikitext, mcq_variant, text_prompt, Filler, Variant};
use crate::data::rows::MIN_DOC_CHARS;
use crate::data::{read_mcq, McqItem, Split, SplitMix64};
use crate::guard::probe_fit::{prompt_signals, SignalRequest};
use crate::model::{HookPoint, Model, Tokenizer};
use crate::sae::Sae;
use crate::stats::prompts::mcq_prompts;
use crate::{Error, Result};

/// Where the suite's prompts come from and how many to take.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// The forget domain's MCQ file (WMDP JSON).
    pub forget_file: PathBuf,
    /// Which of its questions are the positives: `Heldout` to report; `Selection` to choose gate
    /// parameters without looking at held-out questions.
    pub positives_split: Split,
    /// Subject named in the forget prompts' preamble (`biology`).
    pub forget_subject: String,
    /// MMLU-Redux JSONL.
    pub mmlu_file: PathBuf,
    /// MMLU subjects that belong to the forget domain (hard negatives).
    pub domain_subjects: Vec<String>,
    /// Benign text (WikiText-2 valid, tokenised form), for paragraphs and padding.
    pub benign_text_file: PathBuf,
    /// Bypass variants of the positives.
    pub variants: Vec<Variant>,
    /// At most this many prompts per evaluated set (seeded sample); `None` keeps all.
    pub limit: Option<usize>,
    /// At most this many calibration prompts (seeded sample); `None` keeps all.
    pub calibration_limit: Option<usize>,
    /// Benign paragraphs to use.
    pub n_paragraphs: usize,
    /// Sampling seed.
    pub seed: u64,
}

/// The suite's prompts, as token ids.
#[derive(Debug, Clone)]
pub struct PromptSuite {
    /// Name of the positive set.
    pub positives_name: String,
    /// Forget prompts.
    pub positives: Vec<Vec<u32>>,
    /// Benign sets.
    pub negatives: Vec<(String, Vec<Vec<u32>>)>,
    /// Calibration prompts.
    pub calibration: Vec<Vec<u32>>,
    /// Variants of the positives, aligned with them.
    pub variants: Vec<(String, Vec<Vec<u32>>)>,
}

fn sampled<T>(mut items: Vec<T>, limit: Option<usize>, seed: u64) -> Vec<T> {
    if let Some(k) = limit {
        if k < items.len() {
            SplitMix64::new(seed).sample(&mut items, k);
        }
    }
    items
}

/// Prompts as token ids.
pub type Prompts = Vec<Vec<u32>>;

/// Named sets of per-prompt values.
type Named<T> = Vec<(String, Vec<T>)>;

/// Per-prompt values cut into the suite's layout: positives, negatives, calibration, variants.
type Layout<T> = (Vec<T>, Named<T>, Vec<T>, Named<T>);

/// Where the probes' training prompts come from, besides the suite's own files.
#[derive(Debug, Clone)]
pub struct ProbeTrainConfig {
    /// Benign text whose paragraphs are training negatives (never the suite's `benign_text_file`):
    /// WikiText-2 *test* here, which the suite never evaluates on.
    pub benign_text_file: Option<PathBuf>,
    /// At most this many prompts per training source (seeded sample); `None` keeps all.
    pub limit: Option<usize>,
    /// Benign paragraphs to use.
    pub n_paragraphs: usize,
}

/// Benign paragraphs of a WikiText-style file: detokenised, longer than [`MIN_DOC_CHARS`],
/// headings dropped.
fn paragraphs_of(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .map(detokenize_wikitext)
        .filter(|l| l.len() > MIN_DOC_CHARS && !l.starts_with('='))
        .collect())
}

/// The probes' training prompts `(positives, negatives)`: *selection-split* forget questions as
/// the suite's forget prompts; selection-split MMLU questions that are not in the suite's
/// calibration sample, and paragraphs of `probe.benign_text_file` as chat messages. Errors when
/// the suite's positives are the selection split (the probes would be trained on them).
pub fn probe_training_prompts(
    tok: &Tokenizer,
    cfg: &SuiteConfig,
    probe: &ProbeTrainConfig,
) -> Result<(Prompts, Prompts)> {
    if cfg.positives_split != Split::Heldout {
        return Err(Error::Invalid(
            "probe gates train on the selection split's forget questions; evaluate them on              held-out positives (--positives heldout)"
                .into(),
        ));
    }
    let forget = sampled(
        read_mcq(&cfg.forget_file, Split::Selection)?,
        probe.limit,
        cfg.seed,
    );
    let selection = read_mcq(&cfg.mmlu_file, Split::Selection)?;
    let calibration: std::collections::HashSet<usize> =
        sampled(selection.clone(), cfg.calibration_limit, cfg.seed)
            .iter()
            .map(|q| q.index)
            .collect();
    let benign_mcq: Vec<McqItem> = selection
        .into_iter()
        .filter(|q| !calibration.contains(&q.index))
        .collect();
    let mut negatives = mcq_prompts(tok, &sampled(benign_mcq, probe.limit, cfg.seed), None)?;
    if let Some(path) = &probe.benign_text_file {
        for p in paragraphs_of(path)?.iter().take(probe.n_paragraphs) {
            negatives.push(text_prompt(tok, p)?);
        }
    }
    let subject = Some(cfg.forget_subject.as_str());
    Ok((mcq_prompts(tok, &forget, subject)?, negatives))
}

/// Builds the prompts of the suite.
pub fn build_suite(tok: &Tokenizer, cfg: &SuiteConfig) -> Result<PromptSuite> {
    let forget = sampled(
        read_mcq(&cfg.forget_file, cfg.positives_split)?,
        cfg.limit,
        cfg.seed,
    );
    let in_domain = |q: &McqItem| {
        q.subject
            .as_ref()
            .is_some_and(|s| cfg.domain_subjects.contains(s))
    };
    let heldout = read_mcq(&cfg.mmlu_file, Split::Heldout)?;
    if heldout.iter().any(|q| q.subject.is_none()) {
        return Err(Error::format(
            &cfg.mmlu_file,
            "subject",
            "a subject on every MMLU item",
            "an item without one",
        ));
    }
    let (domain, other): (Vec<McqItem>, Vec<McqItem>) = heldout.into_iter().partition(in_domain);
    let calibration = sampled(
        read_mcq(&cfg.mmlu_file, Split::Selection)?,
        cfg.calibration_limit,
        cfg.seed,
    );
    let paragraphs = paragraphs_of(&cfg.benign_text_file)?;
    let filler = Filler::new(tok, &paragraphs.join("\n"), 4096)?;
    let benign: Vec<Vec<u32>> = paragraphs
        .iter()
        .take(cfg.n_paragraphs)
        .map(|p| text_prompt(tok, p))
        .collect::<Result<_>>()?;
    let subject = Some(cfg.forget_subject.as_str());
    let variants = cfg
        .variants
        .iter()
        .map(|&v| {
            let prompts = forget
                .iter()
                .map(|q| mcq_variant(tok, &cfg.forget_subject, q, v, Some(&filler)))
                .collect::<Result<Vec<_>>>()?;
            Ok((v.name(), prompts))
        })
        .collect::<Result<Vec<_>>>()?;
    let forget_name = cfg
        .forget_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "forget".into());
    Ok(PromptSuite {
        positives_name: format!("{forget_name} {:?}", cfg.positives_split).to_lowercase(),
        positives: mcq_prompts(tok, &forget, subject)?,
        negatives: vec![
            (
                "MMLU other held-out".into(),
                mcq_prompts(tok, &sampled(other, cfg.limit, cfg.seed), None)?,
            ),
            (
                "MMLU domain held-out".into(),
                mcq_prompts(tok, &sampled(domain, cfg.limit, cfg.seed), None)?,
            ),
            ("WikiText valid".into(), benign),
        ],
        calibration: mcq_prompts(tok, &calibration, None)?,
        variants,
    })
}

/// The token activity of one feature set on every prompt of a suite, in the suite's layout.
/// Stored as JSON ([`SuiteActivity::save`]) with one `0`/`1` string per prompt, so that gates can
/// be compared later without another model pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteActivity {
    /// The selected features the activity is of.
    pub features: Vec<u32>,
    /// Name of the positive set.
    pub positives_name: String,
    /// On the positives.
    #[serde(with = "flags")]
    pub positives: Activity,
    /// On each benign set.
    #[serde(with = "named_flags")]
    pub negatives: Vec<(String, Activity)>,
    /// On the calibration prompts.
    #[serde(with = "flags")]
    pub calibration: Activity,
    /// On each variant.
    #[serde(with = "named_flags")]
    pub variants: Vec<(String, Activity)>,
}

mod flags {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn encode(a: &[Vec<bool>]) -> Vec<String> {
        a.iter()
            .map(|row| row.iter().map(|&f| if f { '1' } else { '0' }).collect())
            .collect()
    }

    pub fn decode(rows: Vec<String>) -> Result<Vec<Vec<bool>>, String> {
        rows.iter()
            .map(|r| {
                r.chars()
                    .map(|c| match c {
                        '0' => Ok(false),
                        '1' => Ok(true),
                        _ => Err(format!("activity flag {c:?}, expected 0 or 1")),
                    })
                    .collect()
            })
            .collect()
    }

    pub fn serialize<S: Serializer>(a: &[Vec<bool>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(encode(a))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<bool>>, D::Error> {
        decode(Vec::<String>::deserialize(d)?).map_err(D::Error::custom)
    }
}

mod named_flags {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    type Named = Vec<(String, Vec<Vec<bool>>)>;

    pub fn serialize<S: Serializer>(a: &Named, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(a.iter().map(|(n, rows)| (n, super::flags::encode(rows))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Named, D::Error> {
        Vec::<(String, Vec<String>)>::deserialize(d)?
            .into_iter()
            .map(|(n, rows)| Ok((n, super::flags::decode(rows).map_err(D::Error::custom)?)))
            .collect()
    }
}

impl SuiteActivity {
    /// Writes the activity as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string(self)
            .map_err(|e| Error::Invalid(format!("cannot serialise activity: {e}")))?;
        std::fs::write(path, json).map_err(|e| Error::io(path, e))
    }

    /// Reads activity written by [`SuiteActivity::save`].
    pub fn load(path: &Path) -> Result<SuiteActivity> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::format(
                path,
                "file",
                "suite activity JSON (dsg eval gate --save-activity)",
                e.to_string(),
            )
        })
    }

    /// The view [`super::detection::GateEval`] reads.
    pub fn eval_activity(&self) -> EvalActivity<'_> {
        EvalActivity {
            positives: (&self.positives_name, &self.positives),
            negatives: &self.negatives,
            variants: &self.variants,
        }
    }
}

impl PromptSuite {
    /// Number of prompts in all sets together.
    pub fn len(&self) -> usize {
        self.groups().map(|g| g.len()).sum()
    }

    /// Whether the suite has no prompts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn groups(&self) -> impl Iterator<Item = &Vec<Vec<u32>>> {
        std::iter::once(&self.positives)
            .chain(self.negatives.iter().map(|n| &n.1))
            .chain(std::iter::once(&self.calibration))
            .chain(self.variants.iter().map(|v| &v.1))
    }

    /// Runs every prompt once (batched by length across sets) and returns each feature set's
    /// activity in the suite's layout.
    pub fn activity(
        &self,
        model: &Model,
        sae: &Sae,
        hook: HookPoint,
        feature_sets: &[Vec<usize>],
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<SuiteActivity>> {
        let req = SignalRequest {
            feature_sets,
            ..Default::default()
        };
        let (activity, _) = self.signals(model, sae, hook, req, batch_size, progress)?;
        Ok(activity)
    }

    /// Each of `req.feature_sets`' activity and, from the same pass, each of `req.probes`'
    /// per-token logits (position 0 left out), in the suite's layout.
    pub fn signals(
        &self,
        model: &Model,
        sae: &Sae,
        hook: HookPoint,
        req: SignalRequest,
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Vec<SuiteActivity>, Vec<SuiteLogits>)> {
        let all: Vec<Vec<u32>> = self.groups().flatten().cloned().collect();
        let feature_sets = req.feature_sets;
        let signals = prompt_signals(model, sae, hook, &all, batch_size, req, progress)?;
        let activity = signals
            .activity
            .into_iter()
            .zip(feature_sets)
            .map(|(flat, features)| {
                let (positives, negatives, calibration, variants) = self.split(flat);
                SuiteActivity {
                    features: features.iter().map(|&f| f as u32).collect(),
                    positives_name: self.positives_name.clone(),
                    positives,
                    negatives,
                    calibration,
                    variants,
                }
            })
            .collect();
        let logits = signals
            .logits
            .into_iter()
            .map(|flat| {
                let (positives, negatives, calibration, variants) = self.split(flat);
                SuiteLogits {
                    positives_name: self.positives_name.clone(),
                    positives,
                    negatives,
                    calibration,
                    variants,
                }
            })
            .collect();
        Ok((activity, logits))
    }

    /// Cuts per-prompt values in [`PromptSuite::groups`] order into positives, negatives,
    /// calibration and variants.
    fn split<T>(&self, flat: Vec<T>) -> Layout<T> {
        let mut rest = flat.into_iter();
        let mut take = |n: usize| -> Vec<T> { rest.by_ref().take(n).collect() };
        let positives = take(self.positives.len());
        let negatives = self
            .negatives
            .iter()
            .map(|(name, p)| (name.clone(), take(p.len())))
            .collect();
        let calibration = take(self.calibration.len());
        let variants = self
            .variants
            .iter()
            .map(|(name, p)| (name.clone(), take(p.len())))
            .collect();
        (positives, negatives, calibration, variants)
    }
}

/// A probe's per-token logits on every prompt of a suite, in the suite's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteLogits {
    /// Name of the positive set.
    pub positives_name: String,
    /// On the positives.
    pub positives: Vec<Vec<f64>>,
    /// On each benign set.
    pub negatives: Vec<(String, Vec<Vec<f64>>)>,
    /// On the calibration prompts.
    pub calibration: Vec<Vec<f64>>,
    /// On each variant.
    pub variants: Vec<(String, Vec<Vec<f64>>)>,
}

impl SuiteLogits {
    /// The view [`super::detection::GateEval`] reads.
    pub fn eval_activity(&self) -> EvalActivity<'_, f64> {
        EvalActivity {
            positives: (&self.positives_name, &self.positives),
            negatives: &self.negatives,
            variants: &self.variants,
        }
    }
}
