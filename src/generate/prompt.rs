//! A user's prompt as token ids: through the model's chat template (with an optional system
//! message), or as plain text with the tokenizer's own BOS policy; with, per id, whether the user
//! wrote it (what a [`crate::guard::Evidence::UserText`] gate counts).

use crate::model::{Message, Tokenizer};
use crate::Result;

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
