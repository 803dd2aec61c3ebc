//! TOFU evaluation of a model, with or without guardrails, as open-unlearning defines it
//! (`locuslab/open-unlearning` @ d3d7cf9, Dec 2025; paths below are in that repository).
//!
//! **Data** (`configs/data/datasets/TOFU_QA_*.yaml`). Every set is a `_perturbed` file and the
//! question is always `question` (`question_key` in `configs/eval/tofu.yaml`):
//!
//! | set | file | correct answer of the truth ratio | wrong answers |
//! |---|---|---|---|
//! | forget | `forgetNN_perturbed` | `paraphrased_answer` | `perturbed_answer` (5) |
//! | retain | `retain_perturbed` (full rows 0–399) | `paraphrased_answer` | `perturbed_answer` (5) |
//! | real authors | `real_authors_perturbed` | `answer` | `perturbed_answer` (3) |
//! | world facts | `world_facts_perturbed` | `answer` | `perturbed_answer` (3) |
//!
//! **Encoding** (`src/data/utils.py`, `preprocess_chat_instance`): see [`encode`]. Greedy answers
//! (`configs/generation/default.yaml`: `do_sample: False`, `max_new_tokens: 200`) start from the
//! generation prompt, are decoded without special tokens, and are trimmed.
//!
//! **Per sample** (`src/evals/metrics/`):
//! * probability (`utils.py`, `evaluate_probability`): `avg_loss` = summed NLL of the labelled
//!   tokens (everything after the prompt) / their number; `prob = exp(−avg_loss)`. Perturbed
//!   answers give lists. Aggregate (`memorization.py`, `probability`): the mean over samples of
//!   each sample's mean.
//! * truth ratio (`memorization.py`, `truth_ratio`):
//!   `exp(−mean_i avg_loss(wrong_i)) / (exp(−avg_loss(correct)) + 1e-10)`. Aggregators
//!   (`configs/eval/tofu_metrics/*_Truth_Ratio.yaml`): forget `closer_to_1_better` =
//!   `mean(min(tr, 1/(tr + 1e-10)))`; retain, real authors, world facts `true_better` =
//!   `mean(max(0, 1 − tr))`.
//! * normalised probability (`memorization.py`, `probability_w_options`; real authors and world
//!   facts): `p(answer) / (p(answer) + Σ p(wrong) + 1e-10)`.
//! * ROUGE (`utils.py`, `eval_text_similarity`): `RougeScorer(['rouge1', 'rougeL'],
//!   use_stemmer=True).score(ground_truth, generation)`; the metric is `rougeL_recall`, each
//!   sample also keeps `rouge1_recall` and `rougeL_f1`.
//!
//! **Aggregates**:
//! * forget quality (`privacy.py`, `ks_test`; `forget_quality.yaml`): `ks_2samp` p-value of this
//!   model's forget-set truth ratios against the retain model's, read from the retain model's
//!   `TOFU_EVAL.json` (`retain_logs_path`); `null` without one. See [`RetainReference`].
//! * model utility (`utility.py`, `hm_aggregate`; `model_utility.yaml`): `scipy.stats.hmean` of
//!   the nine aggregates [`MODEL_UTILITY_METRICS`]: retain probability, ROUGE-L recall and truth
//!   ratio; real authors' and world facts' normalised probability, ROUGE-L recall and truth ratio.
//! * forget `forget_Q_A_ROUGE` and `forget_Q_A_Prob`, as above.
//!
//! **Guardrails.** Scoring passes run every guardrail's hook ([`score`]): clamping edits the
//! scored pass, a gate decides on the question's tokens. Greedy answers come from
//! [`crate::generate::answer`], so a refusing guardrail's answer is its refusal text; a refusing
//! guardrail does not change probabilities (it edits nothing), so the probability metrics measure
//! the model behind it and the refusals show in ROUGE and in `forget_refusal_rate`.
//!
//! **Beyond open-unlearning**: `forget_gibberish_rate`, the share of degenerate free answers to
//! forget questions (refusals left out) by [`crate::eval::quality::degenerate`] (open-unlearning's
//! optional `forget_Q_A_gibberish` is a classifier's mean probability instead), and
//! `forget_refusal_rate`.
//!
//! **Differences.** open-unlearning's model configs may add a system prompt (dsg: none unless
//! [`TofuOptions::system_prompt`]) and Llama 3's `date_string` (dsg renders the template's
//! default). The ROUGE ground truth is the answer text (open-unlearning decodes the labelled
//! tokens and cuts the decoded prompt out, which gives the same text up to tokenizer clean-up of
//! spaces before punctuation, which ROUGE's tokenizer drops anyway). Where a tokenizer merges
//! tokens across the prompt's end, [`encode::encode_qa`] splits the text instead of the ids.

pub mod encode;
pub mod metrics;
mod report;
pub mod score;
mod set;

use std::path::Path;

use crate::data::tofu::{read_tofu_paraphrased, read_tofu_perturbed, ForgetSplit, TofuFiles};
use crate::eval::quality::degenerate::DegenerateThresholds;
use crate::guard::Guardrail;
use crate::model::LoadedModel;
use crate::{Error, Result};

pub use encode::{encode_chat_qa, encode_chat_question, encode_qa, encode_question, QaExample};
pub use report::{ForgetQuality, RetainReference, TofuReport, MODEL_UTILITY_METRICS};
pub use set::{Generated, SampleResult, SetKind, SetResult, TofuSet};

/// The four sets of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct TofuSets {
    /// The forget split.
    pub forget: TofuSet,
    /// The retain set.
    pub retain: TofuSet,
    /// Real authors.
    pub real_authors: TofuSet,
    /// World facts.
    pub world_facts: TofuSet,
}

impl TofuSets {
    /// Reads the four files (forget and retain need paraphrases; the utility sets perturbed
    /// answers).
    pub fn read(files: &TofuFiles) -> Result<TofuSets> {
        let set = |kind, path: &Path, paraphrased: bool| -> Result<TofuSet> {
            let items = if paraphrased {
                read_tofu_paraphrased(path)?
            } else {
                read_tofu_perturbed(path)?
            };
            Ok(TofuSet {
                kind,
                path: path.to_path_buf(),
                items,
            })
        };
        Ok(TofuSets {
            forget: set(SetKind::Forget, &files.forget, true)?,
            retain: set(SetKind::Retain, &files.retain, true)?,
            real_authors: set(SetKind::RealAuthors, &files.real_authors, false)?,
            world_facts: set(SetKind::WorldFacts, &files.world_facts, false)?,
        })
    }

    /// The sets of `split` in a TOFU folder (the shared data's `tofu/`).
    pub fn read_dir(dir: &Path, split: ForgetSplit) -> Result<TofuSets> {
        TofuSets::read(&TofuFiles::in_dir(dir, split))
    }
}

/// How many rows of each set to evaluate (the first ones; `None`: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetSizes {
    /// Forget rows.
    pub forget: Option<usize>,
    /// Retain rows.
    pub retain: Option<usize>,
    /// Real-author rows.
    pub real_authors: Option<usize>,
    /// World-fact rows.
    pub world_facts: Option<usize>,
}

impl SetSizes {
    /// Every row of every set.
    pub fn all() -> SetSizes {
        SetSizes::default()
    }

    /// The first `n` rows of each set.
    pub fn each(n: usize) -> SetSizes {
        SetSizes {
            forget: Some(n),
            retain: Some(n),
            real_authors: Some(n),
            world_facts: Some(n),
        }
    }
}

/// Options of a TOFU evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct TofuOptions {
    /// Rows of each set.
    pub sizes: SetSizes,
    /// Scored rows per forward pass (open-unlearning's default is 32).
    pub batch_size: usize,
    /// Greedy answers' length limit (open-unlearning's generation default is 200).
    pub max_new_tokens: usize,
    /// A system message before each question (none by default; some of open-unlearning's model
    /// configs set one, e.g. `Llama-3.2-1B-Instruct.yaml`: "You are a helpful assistant.").
    pub system_prompt: Option<String>,
    /// The degenerate-output detector's thresholds (forget answers).
    pub degenerate: DegenerateThresholds,
}

impl Default for TofuOptions {
    fn default() -> Self {
        TofuOptions {
            sizes: SetSizes::all(),
            batch_size: 8,
            max_new_tokens: 200,
            system_prompt: None,
            degenerate: DegenerateThresholds::default(),
        }
    }
}

impl TofuOptions {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::out_of_range("batch_size", 0, "at least 1 row"));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::out_of_range("max_new_tokens", 0, "at least 1 token"));
        }
        self.degenerate.validate()
    }
}

/// Evaluates `lm` under `guards` (empty: unguarded) on `sets`; forget quality is computed when
/// `retain` (the retain model's forget-set truth ratios) is given. `progress` is told
/// (step, done, total).
pub fn evaluate(
    lm: &LoadedModel,
    guards: &[Guardrail],
    sets: &TofuSets,
    opts: &TofuOptions,
    retain: Option<&RetainReference>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<TofuReport> {
    opts.validate()?;
    let started = std::time::Instant::now();
    let mut guards: Vec<Guardrail> = guards
        .iter()
        .map(|g| g.with_intervention(g.intervention()))
        .collect::<Result<_>>()?;
    let mut run = |set: &TofuSet, size: Option<usize>| {
        let mut set = set.clone();
        set.items.truncate(size.unwrap_or(usize::MAX));
        set::evaluate_set(lm, &mut guards, &set, opts, progress)
    };
    let s = &opts.sizes;
    let forget = run(&sets.forget, s.forget)?;
    let retain_set = run(&sets.retain, s.retain)?;
    let real_authors = run(&sets.real_authors, s.real_authors)?;
    let world_facts = run(&sets.world_facts, s.world_facts)?;
    let mut report = TofuReport {
        model: lm.name(),
        guards: guards.iter().map(describe).collect(),
        max_new_tokens: opts.max_new_tokens,
        forget,
        retain: retain_set,
        real_authors,
        world_facts,
        forget_quality: None,
        seconds: 0.0,
    };
    if let Some(r) = retain {
        if !report.forget.samples.is_empty() {
            report.set_forget_quality(r)?;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A guardrail's hook point, feature count and intervention, for the report.
fn describe(g: &Guardrail) -> String {
    let f = g.file();
    format!(
        "{} features at {} ({:?})",
        f.feature_ids().len(),
        f.hook_point,
        g.intervention()
    )
}
