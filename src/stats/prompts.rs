//! The chat-formatted MCQ prompt of §5.1: the one way a question is put to the model when its
//! token activity is measured. Gate calibration on prompts ([`crate::guard`]) and the gate
//! evaluation with its bypass variants ([`crate::eval::prompts`]) both build on it, so it sits
//! before both.

use crate::data::McqItem;
use crate::model::{Message, Tokenizer};
use crate::Result;

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
