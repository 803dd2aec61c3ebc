//! The chat-formatted MCQ prompt of §5.1: the one way a question is put to the model when its
//! token activity is measured. Gate calibration on prompts ([`crate::guard`]) and the gate
//! evaluation with its bypass variants ([`crate::eval::prompts`]) both build on it, so it sits
//! before both. [`Prompt`]s also say which tokens are the user's text ([`user_prompt`],
//! [`free_form_prompt`], [`marked_mcq_prompt`]), so a guardrail that counts user text
//! ([`crate::guard::Evidence::UserText`]) is scored on the tokens it counts when deployed.

use crate::data::McqItem;
use crate::model::{Message, Tokenizer};
use crate::{Error, Result};

/// The chat-formatted MCQ prompt of §5.1: "The following are multiple choice questions (with
/// answers) about {subject}." + question + lettered choices as the user message, rendered with the
/// model's chat template (generation prompt on), followed by `Answer: (`. No extra BOS is added.
pub fn mcq_prompt(tokenizer: &Tokenizer, subject: &str, item: &McqItem) -> Result<Vec<u32>> {
    tokenizer.encode(&mcq_prompt_text(tokenizer, subject, item)?, false)
}

/// The text [`mcq_prompt`] encodes: the rendered chat followed by `Answer: (`.
pub fn mcq_prompt_text(tokenizer: &Tokenizer, subject: &str, item: &McqItem) -> Result<String> {
    let text = tokenizer.apply_chat_template(&[mcq_user_message(subject, item)], true)?;
    Ok(text + "Answer: (")
}

/// The user message of [`mcq_prompt`]: the subject line, the question and its lettered choices.
pub fn mcq_user_message(subject: &str, item: &McqItem) -> Message {
    let user = format!(
        "The following are multiple choice questions (with answers) about {}.\n{}",
        subject.replace('_', " "),
        item.body()
    );
    Message::new("user", &user)
}

/// [`mcq_prompt`] for each item, about `subject` when given, else about the item's own subject
/// (or "general knowledge" when it has none).
pub fn mcq_prompts(
    tokenizer: &Tokenizer,
    items: &[McqItem],
    subject: Option<&str>,
) -> Result<Vec<Vec<u32>>> {
    items
        .iter()
        .map(|q| {
            let s = subject
                .or(q.subject.as_deref())
                .unwrap_or("general knowledge");
            mcq_prompt(tokenizer, s, q)
        })
        .collect()
}

/// A prompt's ids and which of them are the user's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The ids, template applied.
    pub ids: Vec<u32>,
    /// Per id, whether it is the user's text (false for the template's tokens and a system
    /// message; all true for a raw prompt).
    pub evidence: Vec<bool>,
}

/// The ids of `prompt`: plain text when `raw`, else one chat turn (after `system`, if given)
/// with the assistant's turn opened.
pub fn user_prompt(
    tok: &Tokenizer,
    prompt: &str,
    system: Option<&str>,
    raw: bool,
) -> Result<Prompt> {
    if raw {
        let ids = tok.encode(prompt, tok.adds_bos())?;
        let evidence = vec![true; ids.len()];
        return Ok(Prompt { ids, evidence });
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(Message::new("system", s));
    }
    msgs.push(Message::new("user", prompt));
    let enc = tok.encode_chat_sources(&msgs, true)?;
    let evidence = enc.written_by(&msgs, "user");
    Ok(Prompt {
        ids: enc.ids,
        evidence,
    })
}

/// `text` (a question's stem, say) as the one user message of a chat under the model's own
/// template (which may add a default system prompt), with the generation prompt: the request a
/// user of a deployed model sends. Evidence: the tokens of `text`.
pub fn free_form_prompt(tok: &Tokenizer, text: &str) -> Result<Prompt> {
    let messages = [Message::new("user", text.trim())];
    let enc = tok.encode_chat_sources(&messages, true)?;
    let evidence = enc.written_by(&messages, "user");
    Ok(Prompt {
        ids: enc.ids,
        evidence,
    })
}

/// The §5.1 prompt of `item` about `subject` ([`mcq_prompt`], the ids unchanged), with its user
/// message's tokens (preamble, question, choices) as evidence; the template and the trailing
/// `Answer: (` are not.
pub fn marked_mcq_prompt(tok: &Tokenizer, subject: &str, item: &McqItem) -> Result<Prompt> {
    let ids = mcq_prompt(tok, subject, item)?;
    let messages = [mcq_user_message(subject, item)];
    let enc = tok.encode_chat_sources(&messages, true)?;
    if !ids.starts_with(&enc.ids) {
        return Err(Error::Invalid(format!(
            "question {}: the MCQ prompt's ids do not start with its chat's ids, so its user text \
             cannot be marked",
            item.index
        )));
    }
    let mut evidence = enc.written_by(&messages, "user");
    evidence.resize(ids.len(), false);
    Ok(Prompt { ids, evidence })
}
