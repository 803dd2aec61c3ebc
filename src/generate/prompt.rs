//! A user's prompt as token ids: through the model's chat template (with an optional system
//! message), or as plain text with the tokenizer's own BOS policy.

use crate::model::{Message, Tokenizer};
use crate::Result;

/// The ids of `prompt`: plain text when `raw`, else one chat turn (after `system`, if given)
/// with the assistant's turn opened.
pub fn prompt_ids(
    tok: &Tokenizer,
    prompt: &str,
    system: Option<&str>,
    raw: bool,
) -> Result<Vec<u32>> {
    if raw {
        return tok.encode(prompt, tok.adds_bos());
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(Message::new("system", s));
    }
    msgs.push(Message::new("user", prompt));
    tok.encode_chat(&msgs, true)
}
