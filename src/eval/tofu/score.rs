//! Teacher-forced answer probabilities, batched, with guardrails active in the scored pass.
//!
//! Each (question, answer) pair becomes the row [`encode_chat_qa`] gives. Rows run `batch` at a time,
//! longest first (right-padded; a row's numbers do not depend on its neighbours), and each row's
//! answer log-probabilities are read from the residual stream at the answer positions only, so the
//! output head runs only there. Every guardrail visits every pass: a clamping one edits the pass
//! it scores, a refusing one only records its decision. The question's tokens are the gates'
//! evidence and the answer's are not, so a gate decides on the question alone and decides alike
//! for every answer scored against it; once it fires, active answer tokens are clamped too (as in
//! the MCQ scoring of [`crate::eval::mcq::score`]).

use candle_core::{DType, IndexOp, Tensor};

use super::encode::encode_chat_qa;
use super::metrics::{probability, Prob};
use crate::generate::user_prompt;
use crate::guard::{GateDecision, Guardrail};
use crate::model::{Batch, ForwardOptions, HookList, Hooks, LoadedModel, Logits, Model};
use crate::{Error, Result};

/// One scored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredAnswer {
    /// Its probability.
    pub prob: Prob,
    /// Per guardrail (in the order given), its decision on the scored row.
    pub decisions: Vec<GateDecision>,
}

struct Row {
    ids: Vec<u32>,
    evidence: Vec<bool>,
    answer_start: usize,
}

fn row(lm: &LoadedModel, system: Option<&str>, question: &str, answer: &str) -> Result<Row> {
    let ex = encode_chat_qa(&lm.tokenizer, system, question, answer)?;
    let prompt = user_prompt(&lm.tokenizer, question, system, false)?;
    if prompt.ids[..] != ex.ids[..ex.answer_start] {
        return Err(Error::Invalid(format!(
            "the prompt of {question:?} encodes differently with and without its evidence marks"
        )));
    }
    let mut evidence = prompt.evidence;
    evidence.resize(ex.ids.len(), false);
    Ok(Row {
        ids: ex.ids,
        evidence,
        answer_start: ex.answer_start,
    })
}

/// Per row: the answer tokens' log-probabilities.
fn run_batch(model: &Model, rows: &[&Row], hooks: &mut dyn Hooks) -> Result<Vec<Vec<f64>>> {
    let batch = Batch::new(rows.iter().map(|r| r.ids.clone()).collect(), model.device())?
        .with_evidence(rows.iter().map(|r| r.evidence.clone()).collect())?;
    let opts = ForwardOptions {
        logits: Logits::None,
        stop_after: None,
        quantized: false,
    };
    let out = model.forward(&batch, &opts, hooks, None)?;
    rows.iter()
        .enumerate()
        .map(|(b, r)| {
            let (start, len) = (r.answer_start, r.ids.len());
            let h = out.residual.i((b, start - 1..len - 1))?;
            let logp = candle_nn::ops::log_softmax(&model.logits_of(&h, false)?, 1)?;
            let targets = Tensor::from_slice(&r.ids[start..], (len - start, 1), model.device())?;
            let picked = logp.gather(&targets, 1)?.to_dtype(DType::F64)?;
            Ok(picked.flatten_all()?.to_vec1::<f64>()?)
        })
        .collect()
}

/// The probability of each `(question, answer)` pair (after the `system` message, if given)
/// under `guards`, `batch` rows per pass; `progress` is told how many pairs are done after each
/// pass.
pub fn score_answers(
    lm: &LoadedModel,
    pairs: &[(&str, &str)],
    system: Option<&str>,
    batch: usize,
    guards: &mut [Guardrail],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<ScoredAnswer>> {
    let rows = pairs
        .iter()
        .map(|(q, a)| row(lm, system, q, a))
        .collect::<Result<Vec<_>>>()?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].ids.len()));
    let mut out: Vec<Option<ScoredAnswer>> = vec![None; rows.len()];
    let mut done = 0;
    for chunk in order.chunks(batch.max(1)) {
        let chunk_rows: Vec<&Row> = chunk.iter().map(|&i| &rows[i]).collect();
        let logprobs = {
            let mut hooks = HookList::new();
            for g in guards.iter_mut() {
                hooks.push(g);
            }
            run_batch(&lm.model, &chunk_rows, &mut hooks)?
        };
        let per_guard: Vec<Vec<GateDecision>> = guards
            .iter_mut()
            .map(|g| {
                let records = g.take_records();
                let pass = records
                    .last()
                    .map(|p| p.rows.as_slice())
                    .unwrap_or_default();
                pass.iter().map(|r| r.decision).collect()
            })
            .collect();
        for (k, (&i, lp)) in chunk.iter().zip(logprobs).enumerate() {
            out[i] = Some(ScoredAnswer {
                prob: probability(&lp),
                decisions: per_guard
                    .iter()
                    .map(|d| {
                        d.get(k).copied().unwrap_or(GateDecision {
                            score: 0.0,
                            fired: false,
                        })
                    })
                    .collect(),
            });
        }
        done += chunk.len();
        progress(done);
    }
    Ok(out
        .into_iter()
        .map(|s| s.expect("every row scored"))
        .collect())
}
