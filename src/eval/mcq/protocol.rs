//! How a question is put to the model and what is read back: the three protocols' prompts and the
//! token rows they score.
//!
//! * [`Protocol::Paper`] (spec §5.1): the chat prompt of [`crate::stats::prompts::mcq_prompt`]
//!   ending in `Answer: (`; one row, read at its last position.
//! * [`Protocol::LmEval`]: lm-eval-harness's zero-shot MMLU/WMDP prompt (`description` +
//!   `doc_to_text`), no chat template, no BOS; the continuations `" A"`, `" B"`, ….
//! * [`Protocol::Cloze`]: `Question: {q}\nAnswer:` and the continuations `" {choice}"`.
//!
//! Continuations are tokenised as lm-eval does: the ids of `context + continuation` past the length
//! of the ids of `context` (lm-eval's `_encode_pair`), appended to the context's own ids.

use std::str::FromStr;

use crate::data::{letter, McqItem};
use crate::model::Tokenizer;
use crate::stats::prompts::{marked_mcq_prompt, mcq_prompt_text};
use crate::{Error, Result};

/// The scoring protocol of an MCQ evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The paper's chat prompt; the letter with the larger next-token probability.
    Paper,
    /// lm-eval-harness's MMLU prompt; the letter continuation with the larger log-likelihood.
    LmEval,
    /// The answer texts as continuations of `Question: …\nAnswer:` (`acc` and `acc_norm`).
    Cloze,
}

impl Protocol {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Paper => "paper",
            Protocol::LmEval => "lm-eval",
            Protocol::Cloze => "cloze",
        }
    }
}

impl FromStr for Protocol {
    type Err = Error;

    /// Parses `paper`, `lm-eval` or `cloze`.
    fn from_str(s: &str) -> Result<Protocol> {
        match s {
            "paper" => Ok(Protocol::Paper),
            "lm-eval" => Ok(Protocol::LmEval),
            "cloze" => Ok(Protocol::Cloze),
            _ => Err(Error::out_of_range(
                "--protocol",
                s,
                "paper, lm-eval or cloze",
            )),
        }
    }
}

/// What is scored for one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// One row; per option, the ids whose next-token probabilities are compared (the paper's
    /// letter and space-letter, or a one-token continuation).
    Next {
        /// The prompt ids.
        context: Vec<u32>,
        /// Per prompt id, whether gates count it ([`evidence`]).
        evidence: Vec<bool>,
        /// Per option, the candidate next tokens (their probabilities' maximum is the option's).
        candidates: Vec<Vec<u32>>,
    },
    /// One row per option: the prompt followed by the option's continuation.
    Continuations {
        /// The prompt ids.
        context: Vec<u32>,
        /// Per prompt id, whether gates count it ([`evidence`]); continuation ids never count, so
        /// every option of a question gets the same decision.
        evidence: Vec<bool>,
        /// Per option, the continuation's ids.
        continuations: Vec<Vec<u32>>,
    },
}

/// The prompt text of `item` under `protocol`, about `subject` (underscores read as spaces).
pub fn prompt_text(
    tok: &Tokenizer,
    protocol: Protocol,
    subject: &str,
    item: &McqItem,
) -> Result<String> {
    Ok(match protocol {
        Protocol::Paper => mcq_prompt_text(tok, subject, item)?,
        Protocol::LmEval => {
            let mut text = format!(
                "The following are multiple choice questions (with answers) about {}.\n\n{}",
                subject.replace('_', " "),
                item.question.trim()
            );
            for (i, c) in item.choices.iter().enumerate() {
                text.push_str(&format!("\n{}. {c}", letter(i)));
            }
            text + "\nAnswer:"
        }
        Protocol::Cloze => format!("Question: {}\nAnswer:", item.question),
    })
}

/// The continuation texts of `item` under a log-likelihood protocol (none for the paper's).
pub fn continuation_texts(protocol: Protocol, item: &McqItem) -> Vec<String> {
    match protocol {
        Protocol::Paper => Vec::new(),
        Protocol::LmEval => (0..item.choices.len())
            .map(|i| format!(" {}", letter(i)))
            .collect(),
        Protocol::Cloze => item.choices.iter().map(|c| format!(" {c}")).collect(),
    }
}

/// The one token `text` encodes to, or an error naming it.
fn single_token(tok: &Tokenizer, text: &str) -> Result<u32> {
    match tok.encode(text, false)?.as_slice() {
        [id] => Ok(*id),
        ids => Err(Error::Unsupported(format!(
            "the paper protocol needs {text:?} to be one token; this tokenizer gives {} tokens",
            ids.len()
        ))),
    }
}

/// The token rows of `item` under `protocol`. A log-likelihood protocol whose continuations are
/// all one token is read from the prompt's last position too (the same numbers as one row per
/// option, since the model is causal, at a quarter of the cost).
pub fn request(
    tok: &Tokenizer,
    protocol: Protocol,
    subject: &str,
    item: &McqItem,
) -> Result<Request> {
    let text = prompt_text(tok, protocol, subject, item)?;
    let context = tok.encode(&text, false)?;
    let evidence = evidence(tok, protocol, subject, item, &context)?;
    if protocol == Protocol::Paper {
        let candidates = (0..item.choices.len())
            .map(|i| {
                let l = letter(i).to_string();
                Ok(vec![
                    single_token(tok, &l)?,
                    single_token(tok, &format!(" {l}"))?,
                ])
            })
            .collect::<Result<_>>()?;
        return Ok(Request::Next {
            context,
            evidence,
            candidates,
        });
    }
    let mut continuations = Vec::with_capacity(item.choices.len());
    for cont in continuation_texts(protocol, item) {
        let whole = tok.encode(&format!("{text}{cont}"), false)?;
        let ids = whole.get(context.len()..).unwrap_or_default().to_vec();
        if ids.is_empty() {
            return Err(Error::Invalid(format!(
                "the continuation {cont:?} encodes to no tokens"
            )));
        }
        continuations.push(ids);
    }
    if continuations.iter().all(|c| c.len() == 1) {
        let candidates = continuations.into_iter().collect();
        return Ok(Request::Next {
            context,
            evidence,
            candidates,
        });
    }
    Ok(Request::Continuations {
        context,
        evidence,
        continuations,
    })
}

/// Which prompt ids are the question as the user put it, for gates that count only the user's
/// text: under the paper's protocol, the user message of the chat (not the template's tokens nor
/// the `Answer: (` after it); under lm-eval's, the question and its lettered choices (not the
/// subject line nor `Answer:`); under cloze, the question (not `Question:` nor `Answer:`). Should
/// the chat's own ids not begin the paper prompt (a template whose last token merges with
/// `Answer: (`), every id counts, as in the paper.
pub fn evidence(
    tok: &Tokenizer,
    protocol: Protocol,
    subject: &str,
    item: &McqItem,
    context: &[u32],
) -> Result<Vec<bool>> {
    if protocol == Protocol::Paper {
        return Ok(marked_mcq_prompt(tok, subject, item)?.evidence);
    }
    let text = prompt_text(tok, protocol, subject, item)?;
    let question = match protocol {
        Protocol::LmEval => item.question.trim(),
        _ => item.question.as_str(),
    };
    let start = text.find(question).unwrap_or(0);
    let end = match protocol {
        Protocol::LmEval => text.rfind("\nAnswer:").unwrap_or(text.len()),
        _ => start + question.len(),
    };
    let span = start..end;
    let (ids, marks) = tok.encode_marked(&text, std::slice::from_ref(&span))?;
    if ids != context {
        return Ok(vec![true; context.len()]);
    }
    Ok(marks)
}
