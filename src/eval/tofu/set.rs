//! One TOFU set evaluated: per sample every value open-unlearning computes for it (the answer's,
//! the paraphrase's and the perturbed answers' probabilities, the truth ratio, the normalised
//! probability, the greedy answer and its ROUGE), and the set's aggregates.

use std::path::PathBuf;

use serde::Serialize;

use super::metrics::{
    closer_to_1_better, mean, normalised_probability, rouge, true_better, truth_ratio, Prob, Rouge,
};
use super::score::score_answers;
use super::TofuOptions;
use crate::data::QaItem;
use crate::eval::metrics::Rate;
use crate::eval::quality::degenerate::{assess, DegenerateReport};
use crate::generate::{answer, user_prompt, GenerateOptions};
use crate::guard::Guardrail;
use crate::model::LoadedModel;
use crate::{Error, Result};

/// Which TOFU set, with open-unlearning's metric-name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    /// The forget split (`forgetNN_perturbed`): prefix `forget`.
    Forget,
    /// The retain set (`retain_perturbed`): prefix `retain`.
    Retain,
    /// Real authors (`real_authors_perturbed`): prefix `ra`.
    RealAuthors,
    /// World facts (`world_facts_perturbed`): prefix `wf`.
    WorldFacts,
}

impl SetKind {
    /// open-unlearning's prefix of this set's metric names.
    pub fn prefix(self) -> &'static str {
        match self {
            SetKind::Forget => "forget",
            SetKind::Retain => "retain",
            SetKind::RealAuthors => "ra",
            SetKind::WorldFacts => "wf",
        }
    }

    /// Whether the truth ratio's correct answer is the paraphrase (forget, retain) rather than
    /// the answer itself (the utility sets).
    pub fn paraphrased(self) -> bool {
        matches!(self, SetKind::Forget | SetKind::Retain)
    }
}

/// The rows of one set and the file they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct TofuSet {
    /// Which set.
    pub kind: SetKind,
    /// Its file.
    pub path: PathBuf,
    /// Its rows, in file order.
    pub items: Vec<QaItem>,
}

/// The greedy answer to a question and its ROUGE against the reference answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generated {
    /// The prompt as text (special tokens dropped), open-unlearning's `input`.
    pub input: String,
    /// The answer, trimmed ([`crate::guard::REFUSAL`] when refused).
    pub text: String,
    /// Generated tokens (0 when refused).
    pub tokens: usize,
    /// Whether a refusing guardrail refused the question.
    pub refused: bool,
    /// ROUGE-1 and ROUGE-L of the answer against the reference answer.
    pub rouge: Rouge,
    /// The degenerate-output detector on the answer (forget set only).
    pub degenerate: Option<DegenerateReport>,
}

/// Every value of one sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleResult {
    /// Row index in the file (open-unlearning's `index`).
    pub index: usize,
    /// The question.
    pub question: String,
    /// The reference answer.
    pub answer_text: String,
    /// The answer's probability (`*_Q_A_Prob`).
    pub answer: Prob,
    /// The paraphrased answer's (`*_Q_A_PARA_Prob`; forget and retain only).
    pub paraphrased: Option<Prob>,
    /// The perturbed answers' (`*_Q_A_PERT_Prob`).
    pub perturbed: Vec<Prob>,
    /// Wrong answers' geometric-mean probability over the correct one's (`*_Truth_Ratio`).
    pub truth_ratio: f64,
    /// The answer's probability normalised over it and the perturbed ones
    /// (`*_Q_A_Prob_normalised`).
    pub normalised: f64,
    /// The greedy answer (`*_Q_A_ROUGE`).
    pub generation: Generated,
    /// Whether some guardrail's gate fired on one of the scored rows or on the prompt.
    pub gated: bool,
}

/// One set's samples and aggregates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetResult {
    /// Which set.
    pub kind: SetKind,
    /// Its file.
    pub path: PathBuf,
    /// Per sample, in file order.
    pub samples: Vec<SampleResult>,
}

impl SetResult {
    /// Mean answer probability (`*_Q_A_Prob`).
    pub fn prob(&self) -> f64 {
        mean(self.samples.iter().map(|s| s.answer.prob))
    }

    /// Mean paraphrase probability (`*_Q_A_PARA_Prob`), where the set has paraphrases.
    pub fn paraphrased_prob(&self) -> Option<f64> {
        self.kind.paraphrased().then(|| {
            mean(
                self.samples
                    .iter()
                    .filter_map(|s| s.paraphrased.map(|p| p.prob)),
            )
        })
    }

    /// Mean over samples of the mean perturbed-answer probability (`*_Q_A_PERT_Prob`).
    pub fn perturbed_prob(&self) -> f64 {
        mean(
            self.samples
                .iter()
                .map(|s| mean(s.perturbed.iter().map(|p| p.prob))),
        )
    }

    /// The truth ratios, in sample order.
    pub fn truth_ratios(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.truth_ratio).collect()
    }

    /// The truth-ratio aggregate: `closer_to_1_better` on the forget set, `true_better` elsewhere.
    pub fn truth_ratio(&self) -> f64 {
        let r = self.truth_ratios();
        match self.kind {
            SetKind::Forget => closer_to_1_better(&r),
            _ => true_better(&r),
        }
    }

    /// Mean normalised answer probability (`*_Q_A_Prob_normalised`).
    pub fn normalised_prob(&self) -> f64 {
        mean(self.samples.iter().map(|s| s.normalised))
    }

    /// Mean ROUGE-L recall of the greedy answers (`*_Q_A_ROUGE`).
    pub fn rouge_l_recall(&self) -> f64 {
        mean(
            self.samples
                .iter()
                .map(|s| s.generation.rouge.rouge_l.recall),
        )
    }

    /// Questions refused by a refusing guardrail.
    pub fn refusals(&self) -> Rate {
        let k = self.samples.iter().filter(|s| s.generation.refused).count();
        Rate::new(k, self.samples.len())
    }

    /// Degenerate answers among the generated (not refused) ones (forget set; elsewhere 0 of 0).
    pub fn gibberish(&self) -> Rate {
        let answered: Vec<&SampleResult> = self
            .samples
            .iter()
            .filter(|s| !s.generation.refused && s.generation.degenerate.is_some())
            .collect();
        let bad = answered
            .iter()
            .filter(|s| {
                s.generation
                    .degenerate
                    .as_ref()
                    .is_some_and(|d| d.degenerate)
            })
            .count();
        Rate::new(bad, answered.len())
    }

    /// Samples on which some gate fired.
    pub fn gated(&self) -> Rate {
        let k = self.samples.iter().filter(|s| s.gated).count();
        Rate::new(k, self.samples.len())
    }
}

/// Evaluates `set` under `guards` (see the [module documentation](self)); `progress` is told
/// (step, done, total) as scoring and generation proceed.
pub(super) fn evaluate_set(
    lm: &LoadedModel,
    guards: &mut [Guardrail],
    set: &TofuSet,
    opts: &TofuOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<SetResult> {
    let para = set.kind.paraphrased();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in &set.items {
        pairs.push((&item.question, &item.answer));
        if para {
            let p = item.paraphrased_answer.as_deref().ok_or_else(|| {
                Error::format(
                    &set.path,
                    format!("row {}: paraphrased_answer", item.index),
                    "a string (the truth ratio's correct answer)",
                    "none",
                )
            })?;
            pairs.push((&item.question, p));
        }
        for w in &item.perturbed_answers {
            pairs.push((&item.question, w));
        }
    }
    let total = pairs.len();
    let step = format!("{} scoring", set.kind.prefix());
    let system = opts.system_prompt.as_deref();
    let scored = score_answers(lm, &pairs, system, opts.batch_size, guards, &mut |done| {
        progress(&step, done, total)
    })?;
    let mut gen_opts = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        stop_tokens: lm.tokenizer.eos_id().into_iter().collect(),
        quantized_decode: false,
        ..Default::default()
    };
    if let Some(eot) = super::encode::end_of_turn(&lm.tokenizer)? {
        if !gen_opts.stop_tokens.contains(&eot) {
            gen_opts.stop_tokens.push(eot);
        }
    }
    let step = format!("{} answers", set.kind.prefix());
    let mut scored = scored.into_iter();
    let mut samples = Vec::with_capacity(set.items.len());
    for (done, item) in set.items.iter().enumerate() {
        let answer_prob = scored.next().expect("one score per pair");
        let para_prob = if para { scored.next() } else { None };
        let pert: Vec<_> = scored.by_ref().take(item.perturbed_answers.len()).collect();
        let mut gated = [&answer_prob]
            .into_iter()
            .chain(para_prob.as_ref())
            .chain(&pert)
            .any(|s| s.decisions.iter().any(|d| d.fired));
        let prompt = user_prompt(&lm.tokenizer, &item.question, system, false)?;
        let reply = answer(lm, &prompt, &gen_opts, guards, &mut |_| {})?;
        gated |= reply
            .prompt_decisions
            .iter()
            .chain(&reply.final_decisions)
            .any(|d| d.fired);
        let text = reply.text.trim().to_string();
        let wrong_losses: Vec<f64> = pert.iter().map(|s| s.prob.avg_loss).collect();
        let correct = para_prob.as_ref().unwrap_or(&answer_prob).prob;
        let wrong_probs: Vec<f64> = pert.iter().map(|s| s.prob.prob).collect();
        samples.push(SampleResult {
            index: item.index,
            question: item.question.clone(),
            answer_text: item.answer.clone(),
            answer: answer_prob.prob,
            paraphrased: para_prob.map(|s| s.prob),
            truth_ratio: truth_ratio(correct.avg_loss, &wrong_losses),
            normalised: normalised_probability(answer_prob.prob.prob, &wrong_probs),
            perturbed: pert.into_iter().map(|s| s.prob).collect(),
            generation: Generated {
                input: lm.tokenizer.decode(&prompt.ids, true)?,
                tokens: reply.tokens.len(),
                refused: reply.refused_by.is_some(),
                rouge: rouge(&item.answer, &text),
                degenerate: (set.kind == SetKind::Forget && reply.refused_by.is_none())
                    .then(|| assess(&text, &opts.degenerate)),
                text,
            },
            gated,
        });
        progress(&step, done + 1, set.items.len());
    }
    Ok(SetResult {
        kind: set.kind,
        path: set.path.clone(),
        samples,
    })
}
