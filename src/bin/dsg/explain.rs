//! `dsg explain`: what the guardrails decided on a prompt, and which features fired on which tokens
//! (see `dsg::eval::explain`); shared with `dsg demo`.

use anyhow::Result;

use dsg::eval::explain::{explain, record_text, TokenProb};
use dsg::guard::{Guardrail, RowRecord};
use dsg::model::LoadedModel;

/// Runs the prompt through the guardrails and returns each guardrail's record of the prompt row,
/// with the top next token without and with them.
pub fn run(
    lm: &LoadedModel,
    guards: &mut [Guardrail],
    ids: &[u32],
) -> Result<(Vec<RowRecord>, TokenProb, TokenProb)> {
    let e = explain(lm, guards, ids, None)?;
    Ok((e.records, e.plain, e.guarded))
}

/// Prints a guardrail's decision and the first `max_tokens` tokens where its features fired.
pub fn print_record(
    lm: &LoadedModel,
    guard: &Guardrail,
    name: &str,
    r: &RowRecord,
    max_tokens: usize,
) {
    print!(
        "{}",
        record_text(&lm.tokenizer, guard, name, r, max_tokens, None)
    );
}
