//! The forward passes of an MCQ evaluation: requests become token rows, rows are run `batch` at a
//! time (right-padded; a row's numbers do not depend on its neighbours), and each row's
//! log-probabilities are read from the residual stream at the positions it needs, so the output
//! head runs only there.

use candle_core::{DType, IndexOp, Tensor};

use super::protocol::Request;
use crate::guard::{GateDecision, Guardrail};
use crate::model::{Batch, ForwardOptions, HookList, Hooks, Logits, Model};
use crate::Result;

/// One forward row and what to read from it.
struct Row {
    tokens: Vec<u32>,
    /// Per token, whether gates count it.
    evidence: Vec<bool>,
    /// Read the log-softmax at the last position for these ids; otherwise the summed
    /// log-probability of the tokens from `from` on.
    next: Option<Vec<u32>>,
    from: usize,
}

/// The scores of one request's options and what the guardrails decided on its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Per option, per candidate token: its log-probability (one candidate for a continuation: the
    /// continuation's summed log-likelihood).
    pub logprobs: Vec<Vec<f64>>,
    /// Per option, the continuation's length in tokens (1 for a next-token candidate).
    pub tokens: Vec<usize>,
    /// Per guardrail, its decision on each of the request's rows (one row, or one per option).
    pub decisions: Vec<Vec<GateDecision>>,
}

fn rows_of(req: &Request) -> Vec<Row> {
    match req {
        Request::Next {
            context,
            evidence,
            candidates,
        } => vec![Row {
            tokens: context.clone(),
            evidence: evidence.clone(),
            next: Some(candidates.iter().flatten().copied().collect()),
            from: context.len(),
        }],
        Request::Continuations {
            context,
            evidence,
            continuations,
        } => continuations
            .iter()
            .map(|c| Row {
                tokens: [context.as_slice(), c].concat(),
                evidence: [evidence.as_slice(), &vec![false; c.len()]].concat(),
                next: None,
                from: context.len(),
            })
            .collect(),
    }
}

/// Per row of one batch: the values `Row` asks for.
fn run_batch(model: &Model, rows: &[&Row], hooks: &mut dyn Hooks) -> Result<Vec<Vec<f64>>> {
    let batch = Batch::new(
        rows.iter().map(|r| r.tokens.clone()).collect(),
        model.device(),
    )?
    .with_evidence(rows.iter().map(|r| r.evidence.clone()).collect())?;
    let opts = ForwardOptions {
        logits: Logits::None,
        stop_after: None,
        quantized: false,
    };
    let out = model.forward(&batch, &opts, hooks, None)?;
    let mut values = Vec::with_capacity(rows.len());
    for (b, row) in rows.iter().enumerate() {
        let len = row.tokens.len();
        let (start, targets) = match &row.next {
            Some(ids) => (len - 1, Some(ids.clone())),
            None => (row.from - 1, None),
        };
        let h = out.residual.i((b, start..len))?;
        let logp = candle_nn::ops::log_softmax(&model.logits_of(&h, false)?, 1)?;
        let v: Vec<f64> = match targets {
            Some(ids) => {
                let idx = Tensor::from_slice(&ids, ids.len(), model.device())?;
                logp.i(0)?
                    .index_select(&idx, 0)?
                    .to_dtype(DType::F64)?
                    .to_vec1()?
            }
            None => {
                let m = len - row.from;
                let idx = Tensor::from_slice(&row.tokens[row.from..], (m, 1), model.device())?;
                let picked = logp.i(0..m)?.gather(&idx, 1)?.to_dtype(DType::F64)?;
                vec![picked.flatten_all()?.to_vec1::<f64>()?.iter().sum()]
            }
        };
        values.push(v);
    }
    Ok(values)
}

/// Scores `requests`, `batch` rows per forward pass, with `guards` active (in order); `progress`
/// is told how many requests are done after each pass.
pub fn score(
    model: &Model,
    requests: &[Request],
    batch: usize,
    guards: &mut [Guardrail],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Scored>> {
    let per_request: Vec<Vec<Row>> = requests.iter().map(rows_of).collect();
    let flat: Vec<(usize, &Row)> = per_request
        .iter()
        .enumerate()
        .flat_map(|(q, rows)| rows.iter().map(move |r| (q, r)))
        .collect();
    let mut values: Vec<Vec<f64>> = Vec::with_capacity(flat.len());
    let mut decisions: Vec<Vec<GateDecision>> = vec![Vec::new(); guards.len()];
    for chunk in flat.chunks(batch.max(1)) {
        let rows: Vec<&Row> = chunk.iter().map(|(_, r)| *r).collect();
        {
            let mut hooks = HookList::new();
            for g in guards.iter_mut() {
                hooks.push(g);
            }
            values.extend(run_batch(model, &rows, &mut hooks)?);
        }
        for (g, d) in guards.iter_mut().zip(decisions.iter_mut()) {
            let records = g.take_records();
            let pass = records
                .last()
                .map(|p| p.rows.as_slice())
                .unwrap_or_default();
            d.extend(pass.iter().map(|r| r.decision));
        }
        progress(chunk.last().map_or(0, |(q, _)| q + 1));
    }
    let mut values = values.into_iter();
    let mut decisions: Vec<_> = decisions.into_iter().map(Vec::into_iter).collect();
    Ok(requests
        .iter()
        .zip(&per_request)
        .map(|(req, rows)| {
            let row_values: Vec<Vec<f64>> = values.by_ref().take(rows.len()).collect();
            let decisions = decisions
                .iter_mut()
                .map(|d| d.by_ref().take(rows.len()).collect())
                .collect();
            match req {
                Request::Next { candidates, .. } => {
                    let mut all = row_values.into_iter().flatten();
                    Scored {
                        logprobs: candidates
                            .iter()
                            .map(|c| all.by_ref().take(c.len()).collect())
                            .collect(),
                        tokens: vec![1; candidates.len()],
                        decisions,
                    }
                }
                Request::Continuations { continuations, .. } => Scored {
                    logprobs: row_values,
                    tokens: continuations.iter().map(Vec::len).collect(),
                    decisions,
                },
            }
        })
        .collect())
}
