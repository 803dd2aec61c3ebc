//! Guarded free generation on a prompt set, judged by the [degenerate-output
//! detector](super::degenerate): per prompt the answer, whether it was refused, whether a gate
//! fired, and the detector's report; over the set, the rates with Wilson intervals.
//!
//! Free-form prompts are question stems sent as one user chat message, with no options and no
//! instruction, so the model answers in its own words ([`FreePrompt::chat`]).
//!
//! **Gated** means some guardrail's gate had fired on the prompt, or was on at the end of the
//! answer. A gate that switched on during the answer and off again before its end is not seen:
//! [`answer`] reports those two decisions only.
//!
//! Two gibberish rates are given, and they differ when guardrails refuse:
//! [`GenerationQuality::gibberish_answered`] counts degenerate answers among the answers the model
//! generated (refusals left out), [`GenerationQuality::gibberish_all`] counts them over every
//! prompt, a refusal counting as not degenerate. [`GenerationQuality::gibberish_gated`] is the
//! rate among generated answers whose gate fired: the damage of the intervention where it acts.

use std::path::Path;

use serde::Serialize;

use super::degenerate::{assess, DegenerateReport, DegenerateThresholds};
use crate::data::{read_mcq, Split, SplitMix64};
use crate::eval::metrics::Rate;
use crate::generate::{answer, user_prompt, GenerateOptions, Prompt};
use crate::guard::Guardrail;
use crate::model::{LoadedModel, Tokenizer};
use crate::Result;

/// A free-form prompt: the user's text and its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreePrompt {
    /// What the user wrote.
    pub text: String,
    /// Its ids, as the model receives them.
    pub prompt: Prompt,
}

impl FreePrompt {
    /// `text` as one user chat message, the assistant's turn opened.
    pub fn chat(tok: &Tokenizer, text: &str) -> Result<FreePrompt> {
        Ok(FreePrompt {
            text: text.to_string(),
            prompt: user_prompt(tok, text, None, false)?,
        })
    }
}

/// The question stems (trimmed, options left out) of the `split` questions of an MCQ file: all of
/// them in file order, or with `limit` a seeded sample of that many (so a subject-sorted file like
/// MMLU gives a spread of subjects), in draw order.
pub fn question_stems(
    path: &Path,
    split: Split,
    limit: Option<usize>,
    seed: u64,
) -> Result<Vec<String>> {
    let mut stems: Vec<String> = read_mcq(path, split)?
        .into_iter()
        .map(|q| q.question.trim().to_string())
        .collect();
    if let Some(k) = limit {
        SplitMix64::new(seed).sample(&mut stems, k);
    }
    Ok(stems)
}

/// One prompt's answer and its judgement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The user's text.
    pub prompt: String,
    /// The answer (the refusal text when refused).
    pub answer: String,
    /// Generated tokens (0 when refused).
    pub tokens: usize,
    /// Whether a refusing guardrail refused the prompt.
    pub refused: bool,
    /// Whether some guardrail's gate fired on the prompt or was on at the end of the answer.
    pub gated: bool,
    /// The degenerate-output detector on the answer.
    pub degenerate: DegenerateReport,
}

/// Guarded free generation on a prompt set (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationQuality {
    /// Per prompt, in order.
    pub samples: Vec<Sample>,
    /// Degenerate answers among the generated (not refused) answers.
    pub gibberish_answered: Rate,
    /// Degenerate answers over all prompts (a refusal is not degenerate).
    pub gibberish_all: Rate,
    /// Degenerate answers among generated answers whose gate fired.
    pub gibberish_gated: Rate,
    /// Refused prompts over all prompts.
    pub refusal: Rate,
    /// Gated prompts over all prompts.
    pub gated: Rate,
}

impl GenerationQuality {
    /// The rates of `samples`.
    pub fn new(samples: Vec<Sample>) -> GenerationQuality {
        let count = |f: &dyn Fn(&Sample) -> bool| samples.iter().filter(|s| f(s)).count();
        let answered = count(&|s| !s.refused);
        let bad = count(&|s| !s.refused && s.degenerate.degenerate);
        let gated_answered = count(&|s| !s.refused && s.gated);
        let bad_gated = count(&|s| !s.refused && s.gated && s.degenerate.degenerate);
        let n = samples.len();
        GenerationQuality {
            gibberish_answered: Rate::new(bad, answered),
            gibberish_all: Rate::new(bad, n),
            gibberish_gated: Rate::new(bad_gated, gated_answered),
            refusal: Rate::new(count(&|s| s.refused), n),
            gated: Rate::new(count(&|s| s.gated), n),
            samples,
        }
    }
}

/// Answers every prompt under `guards` ([`answer`]: refusing guardrails screen the prompt, the
/// others act during generation) and judges each answer against `thresholds`; `progress(done,
/// total)` after each prompt. With no guards this is the base model's generation.
pub fn generation_quality(
    lm: &LoadedModel,
    prompts: &[FreePrompt],
    guards: &mut [Guardrail],
    opts: &GenerateOptions,
    thresholds: &DegenerateThresholds,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GenerationQuality> {
    opts.validate()?;
    thresholds.validate()?;
    let mut samples = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let a = answer(lm, &p.prompt, opts, guards, &mut |_| {})?;
        let gated = a
            .prompt_decisions
            .iter()
            .chain(&a.final_decisions)
            .any(|d| d.fired);
        samples.push(Sample {
            prompt: p.text.clone(),
            degenerate: assess(&a.text, thresholds),
            tokens: a.tokens.len(),
            refused: a.refused_by.is_some(),
            gated,
            answer: a.text,
        });
        progress(i + 1, prompts.len());
    }
    Ok(GenerationQuality::new(samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(refused: bool, gated: bool, text: &str) -> Sample {
        Sample {
            prompt: String::new(),
            answer: text.into(),
            tokens: 0,
            refused,
            gated,
            degenerate: assess(text, &DegenerateThresholds::default()),
        }
    }

    #[test]
    fn rates_say_what_they_count() {
        let q = GenerationQuality::new(vec![
            sample(true, true, crate::guard::REFUSAL),
            sample(false, true, "virus virus virus virus"),
            sample(false, false, "Paris is the capital of France."),
            sample(false, false, ""),
        ]);
        assert_eq!((q.gibberish_answered.k, q.gibberish_answered.n), (2, 3));
        assert_eq!((q.gibberish_all.k, q.gibberish_all.n), (2, 4));
        assert_eq!((q.gibberish_gated.k, q.gibberish_gated.n), (1, 1));
        assert_eq!((q.refusal.k, q.gated.k), (1, 2));
    }
}
