//! The one encoding of a TOFU question–answer pair that training and evaluation share, as
//! open-unlearning's `preprocess_chat_instance` (`src/data/utils.py`) builds it with
//! `apply_chat_template: True` (and, unless [`encode_chat_qa`] is given one, no system prompt):
//!
//! * the prompt is the chat `[user: question]` rendered with the model's template and the
//!   generation prompt ([`encode_question`]);
//! * the full sequence is the chat `[user: question, assistant: answer]` rendered without the
//!   generation prompt, so it ends with the template's end-of-turn text (e.g. `<|im_end|>\n`,
//!   `<|eot_id|>`, `<end_of_turn>\n`), plus the EOS token when the rendering does not already end
//!   with it;
//! * loss and answer probability are over every token after the prompt: the answer, the
//!   end-of-turn text and that EOS.
//!
//! When a tokenizer merges across the prompt's end (open-unlearning warns of this and then scores
//! whatever follows the prompt's length), dsg instead encodes the prompt and the rest of the
//! rendered text separately, so `ids[..answer_start]` is always the generation prompt.

use crate::model::{Message, Tokenizer};
use crate::{Error, Result};

/// A question–answer pair as model input: the prompt's ids followed by the answer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaExample {
    /// Prompt, answer, end of turn (and EOS).
    pub ids: Vec<u32>,
    /// Where the answer starts: the scored tokens are `ids[answer_start..]`.
    pub answer_start: usize,
}

impl QaExample {
    /// The scored tokens (answer, end of turn, EOS).
    pub fn answer_ids(&self) -> &[u32] {
        &self.ids[self.answer_start..]
    }
}

/// The chat prompt of `question` with the assistant's turn opened: what generation starts from.
pub fn encode_question(tok: &Tokenizer, question: &str) -> Result<Vec<u32>> {
    encode_chat_question(tok, None, question)
}

/// `question` and `answer` as one chat (see the [module documentation](self)).
pub fn encode_qa(tok: &Tokenizer, question: &str, answer: &str) -> Result<QaExample> {
    encode_chat_qa(tok, None, question, answer)
}

/// The chat `[system?, user: question]`.
fn chat(system: Option<&str>, question: &str) -> Vec<Message> {
    system
        .map(|s| Message::new("system", s))
        .into_iter()
        .chain([Message::new("user", question)])
        .collect()
}

/// [`encode_question`] after a system message, when given (open-unlearning's `system_prompt`
/// of some model configs).
pub fn encode_chat_question(
    tok: &Tokenizer,
    system: Option<&str>,
    question: &str,
) -> Result<Vec<u32>> {
    tok.encode_chat(&chat(system, question), true)
}

/// [`encode_qa`] after a system message, when given.
pub fn encode_chat_qa(
    tok: &Tokenizer,
    system: Option<&str>,
    question: &str,
    answer: &str,
) -> Result<QaExample> {
    let prompt = encode_chat_question(tok, system, question)?;
    let mut chat = chat(system, question);
    let turns = chat.len();
    chat.push(Message::new("assistant", answer));
    let full = tok.encode_chat(&chat, false)?;
    let mut ids = if full.len() > prompt.len() && full.starts_with(&prompt) {
        full
    } else {
        let prompt_text = tok.apply_chat_template(&chat[..turns], true)?;
        let full_text = tok.apply_chat_template(&chat, false)?;
        let rest = full_text.strip_prefix(&prompt_text).ok_or_else(|| {
            Error::Unsupported(format!(
                "the chat template renders the question with its answer as {full_text:?}, which \
                 does not start with its generation prompt {prompt_text:?}: the answer's tokens \
                 cannot be told apart"
            ))
        })?;
        let mut ids = prompt.clone();
        ids.extend(tok.encode(rest, false)?);
        ids
    };
    if let Some(eos) = tok.eos_id() {
        if ids.last() != Some(&eos) {
            ids.push(eos);
        }
    }
    if ids.len() <= prompt.len() {
        return Err(Error::Invalid(format!(
            "the answer {answer:?} to {question:?} encodes to no tokens after the prompt"
        )));
    }
    Ok(QaExample {
        ids,
        answer_start: prompt.len(),
    })
}

/// The template's end-of-turn token: the first special token after the prompt in a chat with an
/// answer (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`); generation stops on it as on EOS.
pub fn end_of_turn(tok: &Tokenizer) -> Result<Option<u32>> {
    let ex = encode_qa(tok, "Who?", "Someone.")?;
    for &id in ex.answer_ids() {
        if tok.decode(&[id], true)?.is_empty() && !tok.decode(&[id], false)?.is_empty() {
            return Ok(Some(id));
        }
    }
    Ok(None)
}
