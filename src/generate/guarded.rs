//! A guarded answer to one prompt: refusing guardrails screen the prompt first (a pass that stops
//! at the deepest of their hook points); if one fires, the answer is [`REFUSAL`]; otherwise the
//! model generates with the clamping guardrails active. A refusal is decided on the prompt only:
//! a refusing gate that would switch on during generation does not cut the answer short.

use super::{generate_marked, GenerateOptions, Generation, Prompt};
use crate::guard::{GateDecision, Guardrail, Intervention, REFUSAL};
use crate::model::{Batch, ForwardOptions, HookList, LoadedModel, Logits, Model};
use crate::Result;

/// One guarded answer.
#[derive(Debug, Clone)]
pub struct GuardedAnswer {
    /// The answer's text ([`REFUSAL`] when refused; special tokens dropped).
    pub text: String,
    /// The generated ids (empty when refused).
    pub tokens: Vec<u32>,
    /// The first refusing guardrail (index into the guards given) that fired on the prompt.
    pub refused_by: Option<usize>,
    /// Per guardrail, its decision on the prompt.
    pub prompt_decisions: Vec<GateDecision>,
    /// Per guardrail, its decision over prompt and answer (the prompt's, for a refusing one).
    pub final_decisions: Vec<GateDecision>,
    /// The generation, when not refused.
    pub generation: Option<Generation>,
}

/// Runs `prompt` (its user text marked as evidence) through the model only up to the deepest of
/// `guards`' hook points, without logits, so that each guardrail records its decision on the
/// prompt; does nothing without guardrails.
pub fn screen_prompt(model: &Model, prompt: &Prompt, guards: &mut [&mut Guardrail]) -> Result<()> {
    let Some(deepest) = guards.iter().map(|g| g.file().hook_point.layer).max() else {
        return Ok(());
    };
    let batch = Batch::single(prompt.ids.clone(), model.device())?
        .with_evidence(vec![prompt.evidence.clone()])?;
    let opts = ForwardOptions {
        logits: Logits::None,
        stop_after: Some(deepest),
        quantized: false,
    };
    let mut hooks = HookList::new();
    for g in guards.iter_mut() {
        hooks.push(&mut **g);
    }
    model.forward(&batch, &opts, &mut hooks, None)?;
    Ok(())
}

/// Answers `prompt` under `guards` (each acting by its [`Guardrail::intervention`]); `on_token`
/// sees each generated id as it comes (none when refused).
pub fn answer(
    lm: &LoadedModel,
    prompt: &Prompt,
    opts: &GenerateOptions,
    guards: &mut [Guardrail],
    on_token: &mut dyn FnMut(u32),
) -> Result<GuardedAnswer> {
    let refusing: Vec<bool> = guards
        .iter()
        .map(|g| g.intervention() == Intervention::Refuse)
        .collect();
    let mut prompt_decisions = vec![
        GateDecision {
            score: 0.0,
            fired: false
        };
        guards.len()
    ];
    let mut refused_by = None;
    if refusing.contains(&true) {
        let mut screening: Vec<&mut Guardrail> = guards
            .iter_mut()
            .zip(&refusing)
            .filter(|(_, &r)| r)
            .map(|(g, _)| g)
            .collect();
        screen_prompt(&lm.model, prompt, &mut screening)?;
        for (i, g) in guards.iter_mut().enumerate().filter(|(i, _)| refusing[*i]) {
            g.take_records();
            prompt_decisions[i] = g.decisions()[0];
            if prompt_decisions[i].fired && refused_by.is_none() {
                refused_by = Some(i);
            }
        }
    }
    if refused_by.is_some() {
        return Ok(GuardedAnswer {
            text: REFUSAL.to_string(),
            tokens: Vec::new(),
            refused_by,
            final_decisions: prompt_decisions.clone(),
            prompt_decisions,
            generation: None,
        });
    }
    let mut hooks = HookList::new();
    for (g, _) in guards.iter_mut().zip(&refusing).filter(|(_, &r)| !r) {
        hooks.push(g);
    }
    let generation = generate_marked(
        &lm.model,
        &prompt.ids,
        Some(&prompt.evidence),
        opts,
        &mut hooks,
        on_token,
    )?;
    drop(hooks);
    let mut final_decisions = prompt_decisions.clone();
    for (i, g) in guards.iter_mut().enumerate().filter(|(i, _)| !refusing[*i]) {
        if let Some(first) = g.take_records().first() {
            prompt_decisions[i] = first.rows[0].decision;
        }
        final_decisions[i] = g.decisions()[0];
    }
    Ok(GuardedAnswer {
        text: lm.tokenizer.decode(&generation.tokens, true)?,
        tokens: generation.tokens.clone(),
        refused_by: None,
        prompt_decisions,
        final_decisions,
        generation: Some(generation),
    })
}
